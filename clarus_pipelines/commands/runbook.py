"""`clarus-pipelines runbook`: write docs/runbook.md from the exception catalogue, or `--check` that it matches.

The text itself comes from `clarus_pipelines.runbook`, which the dashboard uses too.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from clarus_pipelines.catalogue import CATALOGUE
from clarus_pipelines.runbook import DEFAULT_OUTPUT, REPO_ROOT, differences, write_runbook


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--output", type=Path, default=DEFAULT_OUTPUT, metavar="PATH",
        help=f"where the runbook goes (default: {DEFAULT_OUTPUT.relative_to(REPO_ROOT)} in the repository)",
    )
    parser.add_argument(
        "--check", action="store_true",
        help="write nothing; exit 1 with the differences when the file does not match the catalogue",
    )


def run(args: argparse.Namespace) -> int:
    path: Path = args.output
    if path == DEFAULT_OUTPUT and not (REPO_ROOT / "pyproject.toml").is_file():
        # an installed wheel: the default would write into site-packages
        print("no source tree here (an installed package): pass --output PATH", file=sys.stderr)
        return 2
    if args.check:
        diff = differences(path)
        print(json.dumps({"ok": not diff, "path": str(path), "up_to_date": not diff}))
        if not diff:
            return 0
        shown = diff[:80]
        print("\n".join(shown + (["..."] if len(diff) > len(shown) else [])), file=sys.stderr)
        print(
            f"{path} is out of date with clarus_pipelines/catalogue.py; "
            "run `clarus-pipelines runbook` to regenerate it.",
            file=sys.stderr,
        )
        return 1
    changed = write_runbook(path)
    print(json.dumps({"ok": True, "path": str(path), "changed": changed, "exception_types": len(CATALOGUE)}))
    return 0
