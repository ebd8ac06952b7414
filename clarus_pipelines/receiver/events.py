"""Landed webhooks into the state store: `landed_events`, rejection counts, reconciliation records.

Plain functions over a DuckDB connection (inside `StateStore.write()`), used by the
ingest and reconciliation assets. Reading landing files happens before the write
transaction (`load_landings`), so the single-writer lock is held only for the inserts.

Downstream flows read what landed through the event log of the state layer
(`clarus_pipelines.state.event_log`).
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from clarus_pipelines.catalogue import SOURCE_NAMES, SOURCES
from clarus_pipelines.exception_queue import Finding, raise_exception, sync_exceptions, utcnow
from clarus_pipelines.receiver import contract
from clarus_pipelines.receiver.landing import (
    LandingPathError, LandingRef, LandingZone, Rejection, landing_id_at, landing_time,
)
from clarus_pipelines.receiver.inbox import Inbox
from clarus_pipelines.receiver.topics import entity_of, parse_timestamp
from clarus_pipelines.policies import Policies

log = logging.getLogger(__name__)

# Where ingest takes landings from: the landing zone's files (file mode, "<source>/<topic>/<day>/<id>.json")
# or the PostgreSQL webhook inbox (CLARUS_PIPELINES_STATE_URL=postgresql://..., "inbox:<seq>"). Both
# list landings by receive-time id (`list_landings`), read them, and keep the refusals at the door.
LandingSource = LandingZone | Inbox

REJECTION_WINDOW = timedelta(minutes=15)
REJECTION_THRESHOLD = 3  # refusals of one source within the window that raise WEBHOOK_REJECTED

_EVENT_COLUMNS = (
    "landing_id", "source", "topic", "known_topic", "entity_type", "entity_id", "parent_id", "entity_updated_at",
    "received_at", "webhook_id", "dedupe_key", "payload", "via", "replay_of",
)
_SCHEMA = pa.schema([
    ("landing_id", pa.string()), ("source", pa.string()), ("topic", pa.string()), ("known_topic", pa.bool_()),
    ("entity_type", pa.string()), ("entity_id", pa.string()), ("parent_id", pa.string()),
    ("entity_updated_at", pa.timestamp("us")), ("received_at", pa.timestamp("us")), ("webhook_id", pa.string()),
    ("dedupe_key", pa.string()), ("payload", pa.string()), ("via", pa.string()), ("replay_of", pa.string()),
])


@dataclass(frozen=True)
class SetAside:
    """A landing ingest cannot store, and the first cause (short, no body content)."""

    landing_id: str
    source: str
    topic: str
    reason: str


@dataclass
class LoadedLandings:
    rows: list[dict[str, Any]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # pruned or never there
    unreadable: list[str] = field(default_factory=list)  # paths that do not name a landing
    set_aside: list[SetAside] = field(default_factory=list)  # landings that cannot be stored


@dataclass
class IngestReport:
    ingested: int = 0
    already_processed: int = 0
    duplicate_events: int = 0  # a second landing of an event already ingested (same dedupe key)
    missing: int = 0
    unreadable: int = 0
    set_aside: int = 0  # landings stored in landings_set_aside instead, each with its reason
    unknown_topics: int = 0
    by_topic: Counter = field(default_factory=Counter)

    def as_metadata(self) -> dict[str, Any]:
        doc = {k: v for k, v in self.__dict__.items() if k != "by_topic"}
        doc["by_topic"] = dict(sorted(self.by_topic.items()))
        return doc


def event_row(landing_id: str, envelope) -> dict[str, Any]:
    """The `landed_events` row of one landing (its envelope read from the zone).

    Raises `contract.BodyRefused` for a body outside the receiver's contract (landed by
    an older receiver, or written by hand): such a landing is set aside, not stored.
    """
    for name in ("topic", "dedupe_key"):
        if not isinstance(getattr(envelope, name), str):
            raise contract.BodyRefused(f"landing file lacks its {name}")
    payload = contract.parse_body(envelope.body)
    entity = entity_of(envelope.source, envelope.topic, payload)
    payload_text = envelope.body.decode("utf-8")  # the contract guarantees UTF-8
    return {
        "landing_id": landing_id,
        "source": envelope.source,
        "topic": envelope.topic,
        "known_topic": envelope.known_topic,
        "entity_type": entity.entity_type,
        "entity_id": entity.entity_id,
        "parent_id": entity.parent_id,
        "entity_updated_at": entity.updated_at,
        # the landing id encodes the receive time: a garbled field in the file cannot stop the batch
        "received_at": parse_timestamp(envelope.received_at) or landing_time(landing_id),
        "webhook_id": envelope.webhook_id,
        "dedupe_key": envelope.dedupe_key,
        "payload": payload_text,
        "via": envelope.via,
        "replay_of": envelope.replay_of,
    }


def load_landings(zone: LandingSource, relpaths: Iterable[str]) -> LoadedLandings:
    """Read and parse landing files, or inbox rows in PostgreSQL mode (outside any state transaction).

    A landing that cannot become a row is set aside on its own with its first cause;
    it never stops the others.
    """
    if isinstance(zone, Inbox):
        return _load_inbox(zone, relpaths)
    loaded = LoadedLandings()
    for relpath in relpaths:
        try:
            path = zone.resolve(relpath)
        except LandingPathError:
            log.error("%r does not name a landing; skipped", relpath)
            loaded.unreadable.append(relpath)
            continue
        ref = LandingRef(path.stem, path.parent.parent.parent.name, path.parent.parent.name, relpath)
        try:
            envelope = zone.read(relpath)
        except FileNotFoundError:
            loaded.missing.append(relpath)
            continue
        except (ValueError, KeyError, TypeError) as exc:
            loaded.set_aside.append(_set_aside(ref, ref.topic_dir, f"unreadable landing file: {type(exc).__name__}"))
            continue
        try:
            loaded.rows.append(event_row(ref.landing_id, envelope))
        except contract.BodyRefused as exc:
            loaded.set_aside.append(_set_aside(ref, envelope.topic, exc.reason))
        except Exception as exc:  # noqa: BLE001 - one bad landing must not stop the batch
            loaded.set_aside.append(_set_aside(ref, envelope.topic, f"cannot parse: {type(exc).__name__}: {exc}"[:200]))
    return loaded


def _load_inbox(inbox: Inbox, refs: Iterable[str]) -> LoadedLandings:
    """`load_landings` for "inbox:<seq>" references: one query for the batch, then the same
    per-landing set-aside as for files."""
    refs = list(refs)
    loaded = LoadedLandings()
    found, unreadable = inbox.read_many(refs)
    for ref in unreadable:
        log.error("%r does not name an inbox landing; skipped", ref)
        loaded.unreadable.append(ref)
    for key in refs:
        if key in unreadable:
            continue
        if key not in found:
            loaded.missing.append(key)
            continue
        landing_id, envelope = found[key]
        if isinstance(envelope, Exception):
            ref = LandingRef(landing_id, "", "", key)
            loaded.set_aside.append(_set_aside(ref, "unknown", f"unreadable inbox row: {type(envelope).__name__}"))
            continue
        ref = LandingRef(landing_id, envelope.source, envelope.topic, key)
        if envelope.quarantine_reason:  # refused at the door: never an event
            loaded.set_aside.append(_set_aside(ref, envelope.topic, f"quarantined: {envelope.quarantine_reason}"[:200]))
            continue
        try:
            loaded.rows.append(event_row(landing_id, envelope))
        except contract.BodyRefused as exc:
            loaded.set_aside.append(_set_aside(ref, envelope.topic, exc.reason))
        except Exception as exc:  # noqa: BLE001 - one bad landing must not stop the batch
            loaded.set_aside.append(_set_aside(ref, envelope.topic, f"cannot parse: {type(exc).__name__}: {exc}"[:200]))
    return loaded


def _set_aside(ref: LandingRef, topic: str, reason: str) -> SetAside:
    log.error("landing %s (%s %s) set aside: %s", ref.landing_id, ref.source, topic, reason)
    return SetAside(ref.landing_id, ref.source, topic, reason)


def _storable_table(rows: list[dict[str, Any]], set_aside: list[SetAside]) -> pa.Table:
    """The rows as one Arrow table; a row Arrow refuses is set aside alone (first cause logged)."""
    def table(batch):
        return pa.Table.from_pylist([{c: r[c] for c in _EVENT_COLUMNS} for r in batch], schema=_SCHEMA)

    try:
        return table(rows)
    except (pa.ArrowException, UnicodeError, ValueError, TypeError):
        pass
    good = []
    for row in rows:
        try:
            table([row])
        except (pa.ArrowException, UnicodeError, ValueError, TypeError) as exc:
            ref = LandingRef(row["landing_id"], row["source"], row["topic"], "")
            set_aside.append(_set_aside(ref, row["topic"], f"cannot stage: {type(exc).__name__}: {exc}"[:200]))
        else:
            good.append(row)
    return table(good)


def store_events(
    con: duckdb.DuckDBPyConnection, loaded: LoadedLandings, *, run_id: str | None = None, now: datetime | None = None,
    policies: Policies | None = None,
) -> IngestReport:
    """Insert new events and mark every landing processed; a landing or an event never lands twice.

    A landing that cannot be stored (its body outside the contract, or refused by Arrow
    or DuckDB's JSON type) is set aside alone: recorded in `landings_set_aside` with its
    reason, marked processed, and raised as LANDING_SET_ASIDE. The rest go on.
    """
    now = now or utcnow()
    set_aside = list(loaded.set_aside)
    report = IngestReport(missing=len(loaded.missing), unreadable=len(loaded.unreadable))
    inserted: list[tuple[str, bool]] = []
    table = _storable_table(loaded.rows, set_aside) if loaded.rows else None
    if table is not None and table.num_rows:
        con.register("_staged_landings", table)
        try:
            invalid = con.execute(
                "SELECT landing_id, source, topic FROM _staged_landings WHERE NOT json_valid(payload)"
            ).fetchall()
            if invalid:  # DuckDB's JSON type is the last judge: what it refuses is set aside alone
                bad = {landing_id for landing_id, _, _ in invalid}
                for landing_id, source, topic in invalid:
                    set_aside.append(_set_aside(LandingRef(landing_id, source, topic, ""), topic,
                                                "payload refused by DuckDB's JSON type"))
                con.unregister("_staged_landings")
                table = table.filter(pc.invert(pc.is_in(table["landing_id"], pa.array(sorted(bad)))))
                con.register("_staged_landings", table)
            report.already_processed = con.execute(
                "SELECT count(*) FROM _staged_landings s JOIN processed_landings p USING (landing_id)"
            ).fetchone()[0]
            inserted = con.execute(
                f"""
                INSERT INTO landed_events ({", ".join(_EVENT_COLUMNS)}, ingested_at)
                SELECT {", ".join("s." + c if c != "payload" else "s.payload::JSON" for c in _EVENT_COLUMNS)}, ?
                FROM (
                    SELECT *, row_number() OVER (PARTITION BY source, dedupe_key ORDER BY landing_id) AS nth
                    FROM _staged_landings
                ) s
                WHERE s.nth = 1
                  AND NOT EXISTS (SELECT 1 FROM processed_landings p WHERE p.landing_id = s.landing_id)
                  AND NOT EXISTS (SELECT 1 FROM landed_events e WHERE e.landing_id = s.landing_id)
                  AND NOT EXISTS (SELECT 1 FROM landed_events e WHERE e.source = s.source AND e.dedupe_key = s.dedupe_key)
                ORDER BY s.landing_id
                RETURNING topic, known_topic
                """,
                [now],
            ).fetchall()
            con.execute(
                "INSERT INTO processed_landings (landing_id, source, topic, processed_at, run_id)"
                " SELECT landing_id, source, topic, ?, ? FROM _staged_landings ON CONFLICT DO NOTHING",
                [now, run_id],
            )
        finally:
            # after a failed statement the transaction is aborted and unregister fails too:
            # never let that follow-on error hide the first cause
            with contextlib.suppress(duckdb.Error):
                con.unregister("_staged_landings")
        report.ingested = len(inserted)
        report.duplicate_events = table.num_rows - report.already_processed - report.ingested
    report.by_topic.update(topic for topic, _ in inserted)
    report.unknown_topics = sum(1 for _, known in inserted if not known)
    report.set_aside = record_set_aside(con, set_aside, run_id=run_id, now=now, policies=policies)
    return report


def record_set_aside(con: duckdb.DuckDBPyConnection, set_aside: Sequence[SetAside], *, run_id: str | None,
                     now: datetime, policies: Policies | None = None) -> int:
    """Keep each set-aside landing with its reason, mark it processed, raise LANDING_SET_ASIDE; returns how many."""
    if not set_aside:
        return 0
    rows = [(s.landing_id, s.source, s.topic, s.reason, now, run_id) for s in set_aside]
    con.executemany(
        "INSERT INTO landings_set_aside (landing_id, source, topic, reason, set_aside_at, run_id)"
        " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING", rows,
    )
    con.executemany(
        "INSERT INTO processed_landings (landing_id, source, topic, processed_at, run_id) VALUES (?, ?, ?, ?, ?)"
        " ON CONFLICT DO NOTHING",
        [(s.landing_id, s.source, s.topic, now, run_id) for s in set_aside],
    )
    for item in set_aside:
        raise_exception(
            con, "LANDING_SET_ASIDE", f"{item.source}:{item.landing_id}",
            f"{SOURCE_NAMES[item.source]} webhook {item.landing_id} ({item.topic}) set aside: {item.reason}",
            {"landing_id": item.landing_id, "source": item.source, "topic": item.topic, "reason": item.reason},
            policies=policies, now=now,
        )
    return len(set_aside)


def ingest_landings(zone: LandingSource, store, relpaths: Sequence[str], *, run_id: str | None = None,
                    policies: Policies | None = None) -> tuple[IngestReport, LoadedLandings]:
    """Take landings into the state store: the one path of the ingest asset and `clarus-pipelines ingest`.

    If the batch's transaction fails all the same (a constraint no check foresaw), each
    landing is retried in a transaction of its own and one that still fails is set aside
    with that first cause, so one landing can never hold the others back.
    """
    loaded = load_landings(zone, relpaths)
    try:
        with store.write() as con:
            return store_events(con, loaded, run_id=run_id, policies=policies), loaded
    except duckdb.Error as exc:
        log.error("ingest batch of %d landing(s) failed (%s: %s); storing them one by one",
                  len(loaded.rows), type(exc).__name__, str(exc).splitlines()[0][:200])
    total = IngestReport(missing=len(loaded.missing), unreadable=len(loaded.unreadable))
    singles = [LoadedLandings(rows=[row]) for row in loaded.rows]
    if loaded.set_aside:
        singles.append(LoadedLandings(set_aside=list(loaded.set_aside)))
    for single in singles:
        try:
            with store.write() as con:
                report = store_events(con, single, run_id=run_id, policies=policies)
        except duckdb.Error as exc:
            row = single.rows[0]
            ref = LandingRef(row["landing_id"], row["source"] or "", row["topic"] or "", "")
            item = _set_aside(ref, str(row["topic"]), f"cannot store: {type(exc).__name__}: {str(exc).splitlines()[0]}"[:200])
            loaded.set_aside.append(item)
            with store.write() as con:
                report = store_events(con, LoadedLandings(set_aside=[item]), run_id=run_id, policies=policies)
        for name in ("ingested", "already_processed", "duplicate_events", "set_aside", "unknown_topics"):
            setattr(total, name, getattr(total, name) + getattr(report, name))
        total.by_topic.update(report.by_topic)
    return total, loaded


def unprocessed_landings(zone: LandingSource, store, since: datetime, until: datetime | None = None,
                         *, limit: int | None = None) -> list[str]:
    """Paths of landings received in [since, until) that no ingest has processed yet."""
    refs = zone.list_landings(after=landing_id_at(since), until=landing_id_at(until) if until else None)
    with store.read() as con:
        done = processed_ids(con, [r.landing_id for r in refs])
    pending = [r.relpath for r in refs if r.landing_id not in done]
    return pending[:limit] if limit else pending


def processed_ids(con: duckdb.DuckDBPyConnection, landing_ids: Sequence[str]) -> set[str]:
    if not landing_ids:
        return set()
    rows = con.execute(
        "SELECT landing_id FROM processed_landings WHERE landing_id IN (SELECT unnest(?))", [list(landing_ids)]
    ).fetchall()
    return {r[0] for r in rows}


# ---------------------------------------------------------------------------- intake status

STALL_AFTER = timedelta(minutes=10)  # a landing not ingested this long after arriving is stalled
_ALL_TIME = datetime(2000, 1, 1)


def unread_landings(zone: LandingSource, store, *, since: datetime | None = None, limit: int | None = None) -> list[str]:
    """Every landing in the zone (received since `since`, default all) that ingest has neither stored nor set aside."""
    return unprocessed_landings(zone, store, since or _ALL_TIME, limit=limit)


def intake_status(zone: LandingSource, store, *, now: datetime | None = None,
                  stall_after: timedelta = STALL_AFTER) -> dict[str, dict[str, Any]]:
    """Per source: acknowledged (landed), ingested, set aside with reasons, refused at the door
    (quarantined), the oldest landing not yet read, and whether intake is stalled (a landing
    waits longer than `stall_after`)."""
    now = now or utcnow()
    refs = zone.list_landings()
    quarantined = Counter(r.source for r in zone.list_landings(quarantined=True))
    with store.read() as con:
        done = processed_ids(con, [r.landing_id for r in refs])
        aside_rows = con.execute(
            "SELECT source, reason, count(*) FROM landings_set_aside GROUP BY ALL ORDER BY 3 DESC"
        ).fetchall()
        aside_ids = {r[0] for r in con.execute("SELECT landing_id FROM landings_set_aside").fetchall()}
    status: dict[str, dict[str, Any]] = {}
    for source in SOURCES:
        mine = [r for r in refs if r.source == source]
        unread = [r for r in mine if r.landing_id not in done]
        oldest = unread[0] if unread else None
        waited = (now - oldest.received).total_seconds() if oldest else 0.0
        reasons = {reason: n for s, reason, n in aside_rows if s == source}
        status[source] = {
            "acknowledged": len(mine),
            "ingested": sum(1 for r in mine if r.landing_id in done and r.landing_id not in aside_ids),
            "set_aside": sum(reasons.values()),
            "set_aside_reasons": reasons,
            "refused_at_door": quarantined.get(source, 0),
            "unread": len(unread),
            "oldest_unread": oldest.landing_id if oldest else None,
            "oldest_unread_age_s": round(waited, 1),
            "stalled": bool(oldest) and waited > stall_after.total_seconds(),
        }
    return status


# ---------------------------------------------------------------------------- rejections


@dataclass
class RejectionReport:
    new_rejections: int
    repeating_sources: dict[str, int]
    outcome: dict[str, str]


def _minute(at: str) -> datetime:
    moment = parse_timestamp(at) or utcnow()
    return moment.replace(second=0, microsecond=0)


def count_rejections(con: duckdb.DuckDBPyConnection, rejections: Sequence[Rejection]) -> None:
    counts = Counter((_minute(r.at), r.source, r.reason) for r in rejections)
    if counts:
        con.executemany(
            "INSERT INTO webhook_rejections (minute, source, reason, count) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (minute, source, reason) DO UPDATE SET count = webhook_rejections.count + excluded.count",
            [(m, s, r, n) for (m, s, r), n in counts.items()],
        )


def ingest_rejections(
    con: duckdb.DuckDBPyConnection,
    zone: LandingZone,
    *,
    policies: Policies | None = None,
    now: datetime | None = None,
    window: timedelta = REJECTION_WINDOW,
    threshold: int = REJECTION_THRESHOLD,
) -> RejectionReport:
    """Count new lines of the rejection logs, then raise or clear WEBHOOK_REJECTED per source.

    Runs inside one write transaction, so two runs never count the same line twice.
    """
    now = now or utcnow()
    offsets = dict(con.execute("SELECT log_file, bytes_read FROM webhook_rejection_offsets").fetchall())
    rejections, new_offsets = zone.read_rejections(offsets)
    count_rejections(con, rejections)
    changed = [(name, size) for name, size in new_offsets.items() if offsets.get(name) != size]
    if changed:
        con.executemany(
            "INSERT INTO webhook_rejection_offsets (log_file, bytes_read) VALUES (?, ?)"
            " ON CONFLICT (log_file) DO UPDATE SET bytes_read = excluded.bytes_read",
            changed,
        )
    recent = con.execute(
        "SELECT source, reason, sum(count)::INTEGER FROM webhook_rejections WHERE minute >= ? GROUP BY ALL",
        [(now - window).replace(second=0, microsecond=0)],
    ).fetchall()
    by_source: dict[str, dict[str, int]] = {}
    for source, reason, n in recent:
        by_source.setdefault(source, {})[reason] = n
    findings = []
    repeating = {}
    for source, reasons in sorted(by_source.items()):
        total = sum(reasons.values())
        if total >= threshold:
            repeating[source] = total
            findings.append(Finding(
                source,
                f"{total} {source} webhooks refused in the last {int(window.total_seconds() // 60)} minutes",
                {"reasons": reasons, "window_minutes": int(window.total_seconds() // 60)},
            ))
    outcome = sync_exceptions(con, "WEBHOOK_REJECTED", findings, scope=list(SOURCES), policies=policies, now=now)
    return RejectionReport(len(rejections), repeating, outcome)


# ---------------------------------------------------------------------------- retention


def prune_state(con: duckdb.DuckDBPyConnection, older_than: datetime) -> dict[str, int]:
    """Delete intake rows older than the landing retention (naive UTC cutoff)."""
    cutoff_id = landing_id_at(older_than)
    removed = {}
    for table, where, param in (
        ("landed_events", "received_at < ?", older_than),
        ("processed_landings", "landing_id < ?", cutoff_id),
        ("webhook_rejections", "minute < ?", older_than),
        ("reconciliation_runs", "run_at < ?", older_than),
        ("reconciliation_findings", "found_at < ?", older_than),
    ):
        removed[table] = len(con.execute(f"DELETE FROM {table} WHERE {where} RETURNING 1", [param]).fetchall())
    return removed
