"""docs/runbook.md is generated from the exception catalogue and must never drift from it."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest

from clarus_pipelines import catalogue, runbook
from clarus_pipelines.cli import main as cli_main

REPO = Path(__file__).resolve().parents[2]
RUNBOOK = REPO / "docs" / "runbook.md"


def test_docs_runbook_matches_the_catalogue() -> None:
    assert RUNBOOK.exists(), "docs/runbook.md is missing: run `clarus-pipelines runbook`"
    diff = runbook.differences(RUNBOOK)
    assert not diff, (
        "docs/runbook.md differs from what clarus_pipelines/catalogue.py generates; "
        "run `clarus-pipelines runbook` and commit the result:\n" + "\n".join(diff[:60])
    )


def _section(text: str, code: str) -> str:
    match = re.search(rf"^### {code}\n(.*?)(?=^##|\Z)", text, flags=re.S | re.M)
    assert match, f"no section for {code}"
    return match.group(1)


def test_every_type_has_owner_severity_sla_meaning_resolution_and_escalation() -> None:
    text = runbook.render_runbook()
    for kind in catalogue.CATALOGUE.values():
        section = _section(text, kind.code)
        assert f"(`{kind.owner}`) | {kind.severity} | {runbook.format_minutes(kind.sla_minutes)} |" in section
        assert kind.title in section
        assert f"**What it means for the business.** {kind.meaning}" in section
        assert f"**How to resolve.** {kind.resolution}" in section
        assert f"**When to escalate.** {kind.escalation}" in section


def test_types_are_grouped_under_their_owner_and_listed_in_who_owns_what() -> None:
    text = runbook.render_runbook()
    owner_headings = {title: owner for owner, (title, _) in runbook.OWNERS.items()}
    current_owner = None
    for line in text.splitlines():
        if line.startswith("## ") and line[3:] in owner_headings:
            current_owner = owner_headings[line[3:]]
        elif line.startswith("### "):
            assert catalogue.get(line[4:]).owner == current_owner, line
    ownership = text.split("## Who owns what", 1)[1].split("\n## ", 1)[0]
    for kind in catalogue.CATALOGUE.values():
        row = next(r for r in ownership.splitlines() if f"(`{kind.owner}`)" in r)
        assert f"[{kind.code}](#{kind.code.lower()})" in row


def test_a_catalogue_change_changes_the_runbook() -> None:
    changed = dict(catalogue.CATALOGUE)
    kind = changed["TRACKING_MISSING"]
    changed[kind.code] = dataclasses.replace(kind, resolution="Phone the carrier's depot.", sla_minutes=90)
    text = runbook.render_runbook(changed)
    assert text != runbook.render_runbook()
    assert "Phone the carrier's depot." in _section(text, "TRACKING_MISSING")
    assert "| 1 h 30 min |" in _section(text, "TRACKING_MISSING")


@pytest.mark.parametrize(("minutes", "words"), [(15, "15 min"), (60, "1 h"), (90, "1 h 30 min"), (240, "4 h"),
                                                 (1440, "1 day"), (2880, "2 days")])
def test_sla_in_words(minutes: int, words: str) -> None:
    assert runbook.format_minutes(minutes) == words


def test_check_fails_on_a_stale_file_and_writing_fixes_it(tmp_path, capsys) -> None:
    target = tmp_path / "runbook.md"
    target.write_text(runbook.render_runbook().replace("Phone", "Ring").replace("SLA", "deadline", 1))
    assert cli_main(["runbook", "--check", "--output", str(target)]) == 1
    err = capsys.readouterr().err
    assert "out of date" in err and "clarus-pipelines runbook" in err

    assert cli_main(["runbook", "--output", str(target)]) == 0
    assert target.read_text() == runbook.render_runbook()
    assert cli_main(["runbook", "--check", "--output", str(target)]) == 0


def test_check_fails_when_the_file_is_missing(tmp_path) -> None:
    assert cli_main(["runbook", "--check", "--output", str(tmp_path / "nope.md")]) == 1


def test_console_script_check_passes_on_the_repository() -> None:
    result = subprocess.run([sys.executable, "-m", "clarus_pipelines.cli", "runbook", "--check"],
                            cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert '"up_to_date": true' in result.stdout
