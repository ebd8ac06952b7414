"""One small API through which every flow raises and clears exceptions.

An exception is keyed by (code, entity_id): raising it again updates `last_seen` and
`occurrences`, never adds a row. A flow that computes the full set of offending entities
for a code calls `sync_exceptions`, which raises the new ones and auto-resolves those
whose condition has cleared, recording who and when in `exception_events`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import duckdb

from clarus_pipelines import catalogue
from clarus_pipelines.policies import Policies


@dataclass(frozen=True)
class Finding:
    """One current occurrence of a problem: the entity and what is wrong with it."""

    entity_id: str
    message: str
    details: dict[str, Any] = field(default_factory=dict)


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def _owner_and_severity(code: str, policies: Policies | None) -> tuple[str, str]:
    kind = catalogue.get(code)
    override = policies.exception_overrides.get(code) if policies else None
    owner = (override.owner if override and override.owner else None) or kind.owner
    severity = (override.severity if override and override.severity else None) or kind.severity
    return owner, severity


def raise_exception(
    con: duckdb.DuckDBPyConnection,
    code: str,
    entity_id: str,
    message: str,
    details: dict[str, Any] | None = None,
    *,
    policies: Policies | None = None,
    now: datetime | None = None,
) -> str:
    """Open (or refresh) the exception; returns 'raised', 'reopened' or 'refreshed'."""
    return sync_exceptions(
        con, code, [Finding(entity_id, message, details or {})], scope=[entity_id], policies=policies, now=now
    )[entity_id]


def clear_exception(
    con: duckdb.DuckDBPyConnection, code: str, entity_id: str, *, now: datetime | None = None
) -> bool:
    """Auto-resolve the exception if it is open; True when something was resolved."""
    catalogue.get(code)
    now = now or utcnow()
    rows = con.execute(
        "UPDATE exceptions SET status = 'resolved', resolved_at = ?, resolved_by = 'auto'"
        " WHERE code = ? AND entity_id = ? AND status <> 'resolved' RETURNING entity_id",
        [now, code, entity_id],
    ).fetchall()
    if rows:
        con.execute(
            "INSERT INTO exception_events (code, entity_id, occurred_at, action, actor) VALUES (?, ?, ?, 'auto_resolved', 'auto')",
            [code, entity_id, now],
        )
    return bool(rows)


def sync_exceptions(
    con: duckdb.DuckDBPyConnection,
    code: str,
    findings: Iterable[Finding],
    *,
    scope: Sequence[str] | None = None,
    policies: Policies | None = None,
    now: datetime | None = None,
) -> dict[str, str]:
    """Make the open exceptions of `code` equal `findings`.

    Entities in `findings` are raised (or refreshed); open exceptions of this code that
    are not in `findings` are auto-resolved, limited to the entity ids in `scope` when
    given (a flow that only looked at some entities must not clear the others).
    Returns entity_id -> 'raised' | 'reopened' | 'refreshed' | 'auto_resolved'.
    """
    kind = catalogue.get(code)
    owner, severity = _owner_and_severity(code, policies)
    now = now or utcnow()
    current = {f.entity_id: f for f in findings}
    outcome: dict[str, str] = {}

    existing = {
        row[0]: row[1]
        for row in con.execute(
            "SELECT entity_id, status FROM exceptions WHERE code = ?"
            + (" AND entity_id IN (SELECT unnest(?))" if current else " AND false"),
            [code, list(current)] if current else [code],
        ).fetchall()
    }
    inserts, refreshes, reopens = [], [], []
    for entity_id, finding in current.items():
        details = json.dumps(finding.details, default=str, sort_keys=True)
        status = existing.get(entity_id)
        if status is None:
            inserts.append(
                (code, entity_id, kind.entity, owner, severity, "open", finding.message, details, now, now, 1)
            )
            outcome[entity_id] = "raised"
        elif status == "resolved":
            reopens.append((finding.message, details, now, owner, severity, code, entity_id))
            outcome[entity_id] = "reopened"
        else:
            refreshes.append((finding.message, details, now, code, entity_id))
            outcome[entity_id] = "refreshed"
    if inserts:
        con.executemany(
            "INSERT INTO exceptions (code, entity_id, entity_type, owner, severity, status, message, details,"
            " first_seen, last_seen, occurrences) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            inserts,
        )
    if reopens:
        con.executemany(
            "UPDATE exceptions SET status = 'open', message = ?, details = ?, last_seen = ?, owner = ?,"
            " severity = ?, occurrences = occurrences + 1, resolved_at = NULL, resolved_by = NULL, note = NULL"
            " WHERE code = ? AND entity_id = ?",
            reopens,
        )
    if refreshes:
        con.executemany(
            "UPDATE exceptions SET message = ?, details = ?, last_seen = ?, occurrences = occurrences + 1"
            " WHERE code = ? AND entity_id = ?",
            refreshes,
        )
    events = [(code, e, now, outcome[e], "pipeline") for e in current if outcome[e] != "refreshed"]

    stale_query = "SELECT entity_id FROM exceptions WHERE code = ? AND status <> 'resolved'"
    params: list[Any] = [code]
    if scope is not None:
        stale_query += " AND entity_id IN (SELECT unnest(?))"
        params.append(list(scope))
    stale = [row[0] for row in con.execute(stale_query, params).fetchall() if row[0] not in current]
    if stale:
        con.execute(
            "UPDATE exceptions SET status = 'resolved', resolved_at = ?, resolved_by = 'auto'"
            " WHERE code = ? AND entity_id IN (SELECT unnest(?))",
            [now, code, stale],
        )
        for entity_id in stale:
            outcome[entity_id] = "auto_resolved"
            events.append((code, entity_id, now, "auto_resolved", "auto"))
    if events:
        con.executemany(
            "INSERT INTO exception_events (code, entity_id, occurred_at, action, actor) VALUES (?, ?, ?, ?, ?)", events
        )
    return outcome


def _manual(con, code: str, entity_id: str, action: str, status: str, actor: str, note: str | None, now) -> None:
    if not actor:
        raise ValueError("a person's name is required to acknowledge or resolve an exception")
    now = now or utcnow()
    updated = con.execute(
        "UPDATE exceptions SET status = ?, note = coalesce(?, note),"
        " resolved_at = CASE WHEN ? = 'resolved' THEN ? ELSE resolved_at END,"
        " resolved_by = CASE WHEN ? = 'resolved' THEN ? ELSE resolved_by END"
        " WHERE code = ? AND entity_id = ? RETURNING entity_id",
        [status, note, status, now, status, actor, code, entity_id],
    ).fetchall()
    if not updated:
        raise KeyError(f"no exception {code} for {entity_id}")
    con.execute(
        "INSERT INTO exception_events (code, entity_id, occurred_at, action, actor, note) VALUES (?, ?, ?, ?, ?, ?)",
        [code, entity_id, now, action, actor, note],
    )


def acknowledge(con, code: str, entity_id: str, actor: str, note: str | None = None, now=None) -> None:
    _manual(con, code, entity_id, "acknowledged", "acknowledged", actor, note, now)


def resolve(con, code: str, entity_id: str, actor: str, note: str | None = None, now=None) -> None:
    _manual(con, code, entity_id, "resolved", "resolved", actor, note, now)


def open_exceptions(con: duckdb.DuckDBPyConnection, owner: str | None = None) -> list[dict[str, Any]]:
    query = (
        "SELECT code, entity_id, entity_type, owner, severity, status, message, details, first_seen, last_seen,"
        " occurrences FROM exceptions WHERE status <> 'resolved'"
    )
    params: list[Any] = []
    if owner:
        query += " AND owner = ?"
        params.append(owner)
    query += " ORDER BY first_seen"
    cur = con.execute(query, params)
    cols = [d[0] for d in cur.description]
    return [dict(zip(cols, row)) for row in cur.fetchall()]
