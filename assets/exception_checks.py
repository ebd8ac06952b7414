"""One way to build an exception check's result: what was found, a few examples, and what
the exception queue did with it (raised, refreshed, auto-resolved), as Dagster metadata."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import dagster as dg

from clarus_pipelines.exception_queue import Finding

SAMPLE = 10  # examples shown in a check's metadata


def sample_of(findings: Sequence[Finding], n: int = SAMPLE) -> dg.MetadataValue:
    """The first findings as `entity: message` lines."""
    return dg.MetadataValue.md("\n".join(f"- `{f.entity_id}`: {f.message}" for f in findings[:n]))


def outcome_counts(outcome: Mapping[str, str] | None) -> dict[str, int]:
    """How many entities the exception queue raised, refreshed, auto-resolved..."""
    return dict(Counter((outcome or {}).values()))


def exception_check(
    findings: Sequence[Finding],
    outcome: Mapping[str, str] | None,
    *,
    what: str,
    severity: dg.AssetCheckSeverity = dg.AssetCheckSeverity.WARN,
    check_name: str | None = None,
    asset_key: Any = None,
    **counts: Any,
) -> dg.AssetCheckResult:
    """Passed when nothing was found; else `<n> <what>` with examples and the queue's outcome.
    `counts` are extra figures for the metadata (how many were checked, ...)."""
    return dg.AssetCheckResult(
        passed=not findings,
        severity=severity,
        check_name=check_name,
        asset_key=asset_key,
        description=f"{len(findings)} {what}" if findings else None,
        metadata={**counts, "found": len(findings), "sample": sample_of(findings),
                  "exceptions": dg.MetadataValue.json(outcome_counts(outcome))},
    )
