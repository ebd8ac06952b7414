"""Our sample payloads stand in for the published ones: same cases, same shapes, and the
realpayloads lane says plainly when the published ones are not there."""

from __future__ import annotations

import base64
import hashlib
import hmac
import importlib.util
import os
import subprocess
import sys
from typing import Any

import pytest

from payloads import OUR_FILES, OURS, PUBLISHED, PUBLISHED_FILES, SKIP_REASON

# provenance notes in the published HMAC vector, not part of any payload
PROVENANCE = {".commit", ".file_last_changed_in", ".hex_published_in", ".licence", ".published_in", ".verified_locally"}


def key_kinds(value: Any, prefix: str = "") -> dict[str, set[str]]:
    """Every key path in a JSON document (lists merged as `[]`) -> the JSON kinds seen there."""
    found: dict[str, set[str]] = {}
    if isinstance(value, dict):
        for key, child in value.items():
            path = f"{prefix}.{key}"
            found.setdefault(path, set()).add(type(child).__name__)
            for sub, kinds in key_kinds(child, path).items():
                found.setdefault(sub, set()).update(kinds)
    elif isinstance(value, list):
        for child in value:
            for sub, kinds in key_kinds(child, prefix + "[]").items():
                found.setdefault(sub, set()).update(kinds)
    return found


def test_every_case_has_our_own_file_and_it_parses():
    assert set(OUR_FILES) == set(PUBLISHED_FILES)
    for case in OUR_FILES:
        path = OURS.path(case)
        assert path.is_file(), path
        if case != "hmac_vector_body":
            assert OURS.json(case), case


def test_our_facts_name_values_that_are_in_our_files():
    order = OURS.order("order_rest_2025_07")
    assert (str(order["id"]), order["name"], order["currency"]) == (OURS["order_id"], OURS["order_name"], OURS["currency"])
    assert [line["sku"] for line in order["line_items"]] == OURS["skus"]
    assert [str(line["id"]) for line in order["line_items"]] == OURS["line_ids"]
    assert set(OURS["skus"]) <= set(OURS["products"])
    assert str(OURS.json("refund_legacy_restock")["refund"]["id"]) == OURS["refund_id"]
    # the published facts are ours' counterparts: same keys
    assert set(OURS.facts) == set(PUBLISHED.facts)


def test_our_hmac_vector_is_a_true_signature():
    vector = OURS.json("hmac_vector")
    body = OURS.bytes("hmac_vector_body")
    assert body.decode() == vector["raw_body"] and not body.endswith(b"\n")
    digest = hmac.new(vector["secret"].encode(), body, hashlib.sha256).digest()
    assert base64.b64encode(digest).decode() == vector["expected_x_shopify_hmac_sha256"]
    assert digest.hex() == vector["same_digest_hex"]


@pytest.mark.realpayloads
@pytest.mark.parametrize("case", sorted(set(OUR_FILES) - {"hmac_vector_body"}))
def test_our_sample_has_every_field_of_the_published_one(published, case):
    """Same field names and nesting, and the same kinds of values (ids as numbers, money as strings...)."""
    ours, theirs = key_kinds(OURS.json(case)), key_kinds(published.json(case))
    missing = sorted(set(theirs) - set(ours) - PROVENANCE)
    assert missing == [], f"{case}: our sample lacks {missing}"
    differ = {path: (theirs[path], ours[path]) for path in theirs.keys() & ours.keys()
              if (theirs[path] - {"NoneType"}) and (ours[path] - {"NoneType"})
              and not (theirs[path] - {"NoneType"}) & (ours[path] - {"NoneType"})}
    assert differ == {}, f"{case}: kinds differ (published, ours): {differ}"


def test_without_the_published_payloads_the_lane_is_skipped_with_its_reason(tmp_path):
    nowhere = tmp_path / "no-shared" / "fixtures"
    env = {**os.environ, "CLARUS_PUBLISHED_FIXTURES": str(nowhere)}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "tests/unit/test_tracking.py", "-k", "fixture_tracking", "-rs", "-q", "-p", "no:cacheprovider"],
        capture_output=True, text=True, env=env, cwd=OURS.root.parents[1], timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed, 1 skipped" in done.stdout
    assert f"published payloads not found at {nowhere}: realpayloads lane skipped" in done.stdout
    assert SKIP_REASON.startswith("published payloads not found at ")


def test_committed_samples_are_what_the_builder_writes(tmp_path):
    spec = importlib.util.spec_from_file_location("build_fixtures", OURS.root / "build_fixtures.py")
    builder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(builder)
    builder.build(tmp_path)
    written = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert written == sorted(OURS.path(case).relative_to(OURS.root) for case in OUR_FILES)
    for relative in written:
        assert (tmp_path / relative).read_bytes() == (OURS.root / relative).read_bytes(), relative
