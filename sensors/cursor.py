"""The one question every work sensor asks: is there new work since my cursor?

Work is rows ordered by a mark that only grows (`landed_events.seq`, a time) and an id;
a sensor remembers the newest mark it asked a run for, in a JSON cursor. `new_work_since`
runs the sensor's query for the rows after that mark and answers with a `NewWork`: the
rows, the first and newest mark, how many, the next cursor and a run key named after the
marks (a daemon that restarts before saving its cursor re-derives the same key, and
Dagster skips a key it launched already). `new_events_since` is the same question over the
event log, for the flows that read `landed_events` (orders, dispatch, refunds, stock).

Used by: the orders, order-changes, dispatch, refund and stock-webhook sensors; the landing
sensors read their cursor with `read_cursor` (their work is files, listed by the zone).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import duckdb


def read_cursor(raw: str | None) -> dict[str, Any]:
    """A sensor's JSON cursor as a dict; empty when unset or unreadable (the sensor starts over)."""
    if not raw:
        return {}
    try:
        doc = json.loads(raw)
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


@dataclass(frozen=True)
class NewWork:
    """What is new since a cursor: `rows` (mark, id, ...) oldest first, up to the query's limit;
    `count` and `last` cover everything new (beyond the limit too) when the helper knows it."""

    rows: list[tuple] = field(default_factory=list)
    count: int = 0
    first: Any = None
    last: Any = None

    def __bool__(self) -> bool:
        return self.count > 0

    def run_key(self, name: str) -> str:
        """`name:first-last`: the same work asked twice gets the same key."""
        return f"{name}:{self.first}-{self.last}"

    def next_cursor(self, mark: str = "after", **extra: Any) -> str:
        """The cursor to store once a run is requested for this work."""
        return json.dumps({mark: self.last, **extra}, sort_keys=True, default=str)


def new_work_since(con: duckdb.DuckDBPyConnection, query: str, after: Any, params: Sequence[Any] = (), *,
                   limit: int = 1000) -> NewWork:
    """Rows of `query` after the mark `after`. The query takes `after` as its first parameter,
    then `params`, then the limit as its last; it returns (mark, id, ...) ordered by mark."""
    con.complete()
    rows = con.execute(query, [after, *params, limit]).fetchall()
    if not rows:
        return NewWork()
    return NewWork(rows=rows, count=len(rows), first=rows[0][0], last=rows[-1][0])


def consumer_watermark(con: duckdb.DuckDBPyConnection, consumer: str) -> int:
    """The newest event `consumer` has taken in (0 before its first read)."""
    con.complete()
    row = con.execute("SELECT last_seq FROM event_consumers WHERE consumer = ?", [consumer]).fetchone()
    return int(row[0]) if row else 0


def new_events_since(con: duckdb.DuckDBPyConnection, topics: Mapping[str, Sequence[str]], *, after: int = 0,
                     consumer: str | None = None, limit: int = 1) -> NewWork:
    """Landed events of the given `source -> topics` after `after` (and after what `consumer`
    already took in): (seq, topic) rows up to `limit`, with the count and newest seq of all."""
    if consumer is not None:
        after = max(after, consumer_watermark(con, consumer))
    sources = [(source, list(names)) for source, names in topics.items()]
    where = " OR ".join("(source = ? AND topic IN (SELECT unnest(?::VARCHAR[])))" for _ in sources)
    params: list[Any] = [after, *(p for pair in sources for p in pair)]
    con.complete()
    count, first, last = con.execute(
        f"SELECT count(*), min(seq), max(seq) FROM landed_events WHERE seq > ? AND ({where})", params
    ).fetchone()
    if not count:
        return NewWork()
    rows = con.execute(
        f"SELECT seq, topic FROM landed_events WHERE seq > ? AND ({where}) ORDER BY seq LIMIT ?", [*params, limit]
    ).fetchall()
    return NewWork(rows=rows, count=int(count), first=int(first), last=int(last))
