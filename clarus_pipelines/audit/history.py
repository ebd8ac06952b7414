"""Audits kept in state (`audit_reports`), so each one shows its trend against the previous one."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import duckdb


def previous_report(con: duckdb.DuckDBPyConnection, before: datetime) -> dict[str, Any] | None:
    """The newest stored audit generated before `before`, or None."""
    row = con.execute(
        "SELECT report FROM audit_reports WHERE generated_at < ? ORDER BY generated_at DESC LIMIT 1", [before]
    ).fetchone()
    return json.loads(row[0]) if row else None


def save_report(con: duckdb.DuckDBPyConnection, report: Mapping[str, Any], markdown: str, *, origin: str,
                run_id: str | None = None) -> str:
    """Store one audit (idempotent per generated_at and origin); returns its id."""
    generated_at = datetime.fromisoformat(report["generated_at"])
    audit_id = f"{report['generated_at']}/{origin}"
    con.execute(
        "INSERT OR REPLACE INTO audit_reports (audit_id, generated_at, since, origin, blockers, warnings, go_live,"
        " report, markdown, run_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [audit_id, generated_at, datetime.fromisoformat(report["since"]), origin, report["blockers"],
         report["warnings"], report["go_live"], json.dumps(report, default=str), markdown, run_id],
    )
    return audit_id


def reports(con: duckdb.DuckDBPyConnection, limit: int = 52) -> list[dict[str, Any]]:
    """The newest stored audits (newest first): id, when, counts, verdict and the report."""
    cur = con.execute(
        "SELECT audit_id, generated_at, since, origin, blockers, warnings, go_live, report, markdown"
        " FROM audit_reports ORDER BY generated_at DESC LIMIT ?", [limit])
    names = [d[0] for d in cur.description]
    return [{**dict(zip(names, row)), "report": json.loads(row[names.index("report")])} for row in cur.fetchall()]
