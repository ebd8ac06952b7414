"""The event log: what landed, read by the flows that act on it.

`landed_events` is append-only and its `seq` only grows. A flow reads the events after its
last read with `new_events(con, consumer, topics=...)` and records how far it got with
`advance_consumer`, in the same transaction as the work it did; or it anti-joins
`landed_events` on its own processed table. Reconciliation reads record what they found
with `record_reconciliation`. Plain functions over a connection inside `StateStore.write()`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import duckdb

from clarus_pipelines.exception_queue import utcnow

# ---------------------------------------------------------------------------- consumers


def new_events(
    con: duckdb.DuckDBPyConnection,
    consumer: str,
    *,
    source: str | None = None,
    topics: Sequence[str] | None = None,
    limit: int = 1000,
) -> list[dict[str, Any]]:
    """Events after the consumer's last read, oldest first (payload as text)."""
    row = con.execute("SELECT last_seq FROM event_consumers WHERE consumer = ?", [consumer]).fetchone()
    query = (
        "SELECT seq, landing_id, source, topic, known_topic, entity_type, entity_id, parent_id, entity_updated_at,"
        " received_at, webhook_id, payload::VARCHAR AS payload, via, replay_of FROM landed_events WHERE seq > ?"
    )
    params: list[Any] = [row[0] if row else 0]
    if source:
        query += " AND source = ?"
        params.append(source)
    if topics:
        query += " AND topic IN (SELECT unnest(?))"
        params.append(list(topics))
    query += " ORDER BY seq LIMIT ?"
    params.append(limit)
    cur = con.execute(query, params)
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]


def advance_consumer(con: duckdb.DuckDBPyConnection, consumer: str, last_seq: int, now: datetime | None = None) -> None:
    con.execute(
        "INSERT INTO event_consumers (consumer, last_seq, updated_at) VALUES (?, ?, ?)"
        " ON CONFLICT (consumer) DO UPDATE SET last_seq = greatest(event_consumers.last_seq, excluded.last_seq),"
        " updated_at = excluded.updated_at",
        [consumer, last_seq, now or utcnow()],
    )


# ---------------------------------------------------------------------------- reconciliation


def entity_versions(
    con: duckdb.DuckDBPyConnection, source: str, entity_type: str, entity_ids: Sequence[str]
) -> list[dict[str, Any]]:
    """Per entity and topic: the newest `entity_updated_at` landed (rows for `reconcile.merge_known`)."""
    if not entity_ids:
        return []
    cur = con.execute(
        "SELECT source, entity_type, entity_id, topic, max(entity_updated_at) AS entity_updated_at FROM landed_events"
        " WHERE source = ? AND entity_type = ? AND entity_id IN (SELECT unnest(?)) GROUP BY ALL",
        [source, entity_type, list(entity_ids)],
    )
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]


def record_reconciliation(
    con: duckdb.DuckDBPyConnection,
    *,
    source: str,
    entity_type: str,
    window_start: datetime,
    checked: int,
    findings: Sequence[Mapping[str, Any]],
    run_id: str | None = None,
    now: datetime | None = None,
) -> int:
    """Record one reconciliation read and what it found; returns how many findings were new."""
    now = now or utcnow()
    before = con.execute("SELECT count(*) FROM reconciliation_findings").fetchone()[0]
    if findings:
        con.executemany(
            "INSERT INTO reconciliation_findings (source, entity_type, entity_id, version, topic, found_at, landing_id)"
            " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            [(source, entity_type, f["entity_id"], f["version"], f["topic"], now, f.get("landing_id")) for f in findings],
        )
    new = con.execute("SELECT count(*) FROM reconciliation_findings").fetchone()[0] - before
    con.execute(
        "INSERT INTO reconciliation_runs (run_at, source, entity_type, window_start, checked, missed, run_id)"
        " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
        [now, source, entity_type, window_start, checked, new, run_id],
    )
    return new
