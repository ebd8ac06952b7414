"""Every query the dashboard runs, and the one write it makes.

Reads never touch the pipelines' state file directly: `current_snapshot()` copies it with
`StateStore.snapshot()` (a shared lock held for the few milliseconds of the copy) at
most every `SNAPSHOT_MAX_AGE_S` seconds, and the query functions open that copy
read-only. So a slow dashboard query can never hold up, or break, a pipeline write.
Each query function is cached with `st.cache_data` for a few seconds, keyed on the
snapshot file it read, so a new snapshot means fresh results.

With the state in PostgreSQL (CLARUS_PIPELINES_STATE_URL=postgresql://...) nothing is
copied: the "snapshot" is the database itself and every query is one ordinary read
transaction (REPEATABLE READ, no lock), so writers are never held up either.

The only write is a person acknowledging or resolving an exception: `record_decision`
goes through `clarus_pipelines.exception_queue` inside a short `StateStore.write()`.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from hashlib import sha256
from pathlib import Path
from typing import Any, Literal

import duckdb
import pandas as pd
import streamlit as st

from clarus_pipelines import alerts, data_quality, exception_queue
from clarus_pipelines.state import alert_history
from clarus_pipelines.domain import health
from clarus_pipelines.domain import payouts
from clarus_pipelines.domain import reconciliation as finance
from clarus_pipelines.exception_queue import utcnow
from clarus_pipelines.settings import Settings
from clarus_pipelines.state.pg import is_postgres_url, masked_url
from clarus_pipelines.state.store import LockTimeout, StateStore, open_state

SNAPSHOT_MAX_AGE_S = 5.0  # how stale the copy the dashboard reads may get
QUERY_TTL_S = 10  # cache lifetime of one query result
SNAPSHOT_LOCK_TIMEOUT_S = 3.0  # past this, a busy pipeline writer means "show the previous copy"
WRITE_LOCK_TIMEOUT_S = 15.0  # a person acknowledging or resolving waits this long for the writer
SNAPSHOTS_KEPT = 2  # the newest copies stay on disk, so a query started on the previous one finishes

ORDER_ENTITY_CODES = (
    "ORDER_INCOMPLETE", "SHIP_METHOD_UNMAPPED", "SKU_UNKNOWN", "WMS_REJECTED", "ERP_REJECTED", "ORDER_NOT_ACKNOWLEDGED",
    "NOT_DISPATCHED_BY_CUTOFF", "DISPATCH_AWAITING_ERP", "ORDER_EDIT_NEEDS_REVIEW", "CANCEL_AFTER_DISPATCH",
    "ORPHAN_ORDER", "RECONCILIATION_MISMATCH", "FULFILLED_OUTSIDE_WMS",
)


# ---------------------------------------------------------------------------- snapshots


@dataclass(frozen=True)
class Snapshot:
    """A read-only copy of the state file."""

    path: str
    taken_at: datetime  # UTC
    error: str | None = None  # set when the latest refresh failed and this older copy is served


def state_path() -> Path | str:
    """The pipelines' state file (CLARUS_PIPELINES_STATE_DB, or state.duckdb under CLARUS_PIPELINES_HOME);
    in PostgreSQL mode the database URL without its password (shown on the pages)."""
    settings = Settings()
    if settings.state_is_postgres:
        return masked_url(settings.state_target)
    return settings.state_db_path.expanduser().resolve()


def state_target() -> str:
    """Where the state lives: the DuckDB file's path or the postgresql:// URL."""
    return Settings().state_target


class _SnapshotKeeper:
    """Takes and rotates the snapshots of one state file; shared by all sessions of the server."""

    def __init__(self, source: Path):
        self.source = source
        self.store: StateStore | None = None
        digest = sha256(str(source).encode()).hexdigest()[:12]
        self.directory = Path(tempfile.gettempdir()) / f"clarus-dashboard-{os.getpid()}" / digest
        self.lock = threading.Lock()
        self.current: Snapshot | None = None
        self.taken_monotonic = 0.0
        self.counter = 0

    def get(self, force: bool = False) -> Snapshot | None:
        if not self.source.exists():
            return None
        with self.lock:
            fresh = self.current and time.monotonic() - self.taken_monotonic < SNAPSHOT_MAX_AGE_S
            if fresh and not force:
                return self.current
            try:
                if self.store is None:
                    self.store = StateStore(self.source, lock_timeout_s=SNAPSHOT_LOCK_TIMEOUT_S)
                self.directory.mkdir(parents=True, exist_ok=True)
                self.counter += 1
                target = self.directory / f"snapshot-{self.counter:08d}.duckdb"
                self.store.snapshot(target)
            except (LockTimeout, duckdb.Error, OSError) as exc:
                if self.current is None:
                    raise
                self.current = replace(self.current, error=f"{type(exc).__name__}: {exc}")
                return self.current
            self.current = Snapshot(str(target), utcnow())
            self.taken_monotonic = time.monotonic()
            for old in sorted(self.directory.glob("snapshot-*.duckdb"))[:-SNAPSHOTS_KEPT]:
                old.unlink(missing_ok=True)
            return self.current


_KEEPER_DIRS: set[Path] = set()


@atexit.register
def _remove_snapshots() -> None:
    for directory in _KEEPER_DIRS:
        shutil.rmtree(directory.parent, ignore_errors=True)


@st.cache_resource(show_spinner=False)
def _keeper(source: str) -> _SnapshotKeeper:
    keeper = _SnapshotKeeper(Path(source))
    _KEEPER_DIRS.add(keeper.directory)
    return keeper


def current_snapshot(force: bool = False) -> Snapshot | None:
    """The latest snapshot of the state file, refreshed when older than a few seconds; None if no state yet.

    In PostgreSQL there is no file to copy: the snapshot names the database, read live.
    """
    target = state_target()
    if is_postgres_url(target):
        return Snapshot(target, utcnow())
    return _keeper(str(state_path())).get(force=force)


def _frame(db: str, sql: str, params: Sequence[Any] = ()) -> pd.DataFrame:
    if is_postgres_url(db):
        with open_state(db).read() as pg:
            return pg.execute(sql, list(params)).df()
    con = duckdb.connect(db, read_only=True)
    try:
        return con.execute(sql, list(params)).df()
    finally:
        con.close()


def _read(db: str, read: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run one of the pipelines' own read functions on a read-only connection to the snapshot
    (PostgreSQL: in one read transaction)."""
    if is_postgres_url(db):
        with open_state(db).read() as pg:
            return read(pg, *args, **kwargs)
    con = duckdb.connect(db, read_only=True)
    try:
        return read(con, *args, **kwargs)
    finally:
        con.close()


def _cached(func):
    return st.cache_data(ttl=QUERY_TTL_S, show_spinner=False)(func)


# ---------------------------------------------------------------------------- health


@_cached
def order_status_counts(db: str) -> pd.DataFrame:
    return _frame(db, "SELECT status, count(*) AS orders FROM orders GROUP BY status ORDER BY orders DESC, status")


@_cached
def orders_per_hour(db: str, since: datetime, until: datetime) -> pd.DataFrame:
    """Orders placed per hour between two whole hours, with the empty hours as zero."""
    return _frame(
        db,
        "WITH hours AS (SELECT unnest(generate_series(?::TIMESTAMP, ?::TIMESTAMP, INTERVAL 1 HOUR)) AS hour)"
        " SELECT h.hour, count(o.order_id) AS orders FROM hours h"
        " LEFT JOIN orders o ON date_trunc('hour', coalesce(o.created_at, o.received_at)) = h.hour"
        " GROUP BY h.hour ORDER BY h.hour",
        [since, until],
    )


@_cached
def dispatch_sla(db: str, since: datetime, sla_hours: int = 24) -> pd.DataFrame:
    """Per day an order was placed: how many were dispatched within the SLA, later, or not yet
    (cancelled orders left out)."""
    return _frame(
        db,
        "WITH first_dispatch AS (SELECT order_id, min(dispatched_at) AS at FROM shipments"
        "  WHERE dispatched_at IS NOT NULL GROUP BY order_id),"
        " placed AS (SELECT o.order_id, coalesce(o.created_at, o.received_at) AS placed_at, d.at AS dispatched_at"
        "  FROM orders o LEFT JOIN first_dispatch d USING (order_id)"
        "  WHERE coalesce(o.created_at, o.received_at) >= ? AND o.status <> 'CANCELLED')"
        " SELECT date_trunc('day', placed_at)::DATE AS day,"
        "  CASE WHEN dispatched_at IS NULL THEN 'not dispatched yet'"
        "       WHEN dispatched_at <= placed_at + to_hours(?) THEN 'within SLA'"
        "       ELSE 'late' END AS outcome,"
        "  count(*) AS orders"
        " FROM placed GROUP BY ALL ORDER BY day, outcome",
        [since, sla_hours],
    )


@_cached
def order_summary(db: str, since: datetime) -> dict[str, Any]:
    """Headline numbers: orders since a time, orders held now, median and p90 hours from order to dispatch."""
    row = _frame(
        db,
        "SELECT (SELECT count(*) FROM orders WHERE coalesce(created_at, received_at) >= ?) AS orders_since,"
        " (SELECT count(*) FROM orders WHERE status = 'HELD') AS held,"
        " (SELECT count(*) FROM orders) AS orders_total,"
        " (SELECT quantile_cont(date_diff('second', o.created_at, s.first_dispatch) / 3600.0, 0.5)"
        "    FROM orders o JOIN (SELECT order_id, min(dispatched_at) AS first_dispatch FROM shipments"
        "    WHERE dispatched_at IS NOT NULL GROUP BY order_id) s USING (order_id)"
        "    WHERE s.first_dispatch >= ?) AS dispatch_hours_median,"
        " (SELECT quantile_cont(date_diff('second', o.created_at, s.first_dispatch) / 3600.0, 0.9)"
        "    FROM orders o JOIN (SELECT order_id, min(dispatched_at) AS first_dispatch FROM shipments"
        "    WHERE dispatched_at IS NOT NULL GROUP BY order_id) s USING (order_id)"
        "    WHERE s.first_dispatch >= ?) AS dispatch_hours_p90",
        [since, since, since],
    )
    return row.iloc[0].to_dict()


@_cached
def open_exceptions_by_owner_severity(db: str) -> pd.DataFrame:
    return _frame(
        db,
        "SELECT owner, severity, count(*) AS open FROM exceptions WHERE status <> 'resolved'"
        " GROUP BY owner, severity ORDER BY owner, severity",
    )


@_cached
def open_exceptions_over_time(db: str, since: datetime, until: datetime) -> pd.DataFrame:
    """Exceptions open at the end of each hour, per owner, from the exception history."""
    return _frame(
        db,
        "WITH changes AS ("
        "   SELECT code, entity_id, occurred_at, event_id,"
        "     CASE WHEN action IN ('raised', 'reopened') THEN 'open' ELSE 'closed' END AS change"
        "   FROM exception_events WHERE action IN ('raised', 'reopened', 'resolved', 'auto_resolved')),"
        " spans AS ("
        "   SELECT code, entity_id, change, occurred_at AS opened,"
        "     lead(occurred_at) OVER (PARTITION BY code, entity_id ORDER BY occurred_at, event_id) AS closed"
        "   FROM changes),"
        " open_spans AS ("
        "   SELECT s.opened, s.closed, e.owner FROM spans s JOIN exceptions e USING (code, entity_id)"
        "   WHERE s.change = 'open'),"
        " hours AS (SELECT unnest(generate_series(?::TIMESTAMP, ?::TIMESTAMP, INTERVAL 1 HOUR)) AS hour),"
        " owners AS (SELECT DISTINCT owner FROM exceptions)"
        " SELECT h.hour, o.owner, count(sp.opened) AS open_exceptions"
        " FROM hours h CROSS JOIN owners o"
        " LEFT JOIN open_spans sp ON sp.owner = o.owner AND sp.opened < h.hour + INTERVAL 1 HOUR"
        "   AND (sp.closed IS NULL OR sp.closed >= h.hour + INTERVAL 1 HOUR)"
        " GROUP BY h.hour, o.owner ORDER BY h.hour, o.owner",
        [since, until],
    )


@_cached
def open_exceptions_by_code(db: str) -> pd.DataFrame:
    """Per exception type: how many are open and since when the oldest one is."""
    return _frame(
        db,
        "SELECT code, any_value(owner) AS owner, count(*) AS open,"
        " count(*) FILTER (WHERE status = 'acknowledged') AS acknowledged, min(first_seen) AS oldest_first_seen"
        " FROM exceptions WHERE status <> 'resolved' GROUP BY code ORDER BY oldest_first_seen",
    )


@_cached
def last_event_per_system(db: str, since: datetime) -> pd.DataFrame:
    return _frame(
        db,
        "SELECT system, max(occurred_at) AS last_event, arg_max(state, occurred_at) AS last_state,"
        " count(*) FILTER (WHERE occurred_at >= ?) AS events_24h"
        " FROM order_events GROUP BY system ORDER BY system",
        [since],
    )





# The flow, connection, alert and data-quality figures come from the monitoring back end's own
# functions (the ones behind the health snapshots and alerts), so the dashboard never has a
# second formula that could disagree with them.


@_cached
def flow_health(db: str, now: datetime, window_hours: int = 24) -> pd.DataFrame:
    """`health.flow_health` as of `now`: one row per flow with status, reasons, backlog, error rate, lag."""
    return _read(db, health.flow_health, now=now, window=timedelta(hours=window_hours)).to_pandas()


@_cached
def connection_health(db: str, now: datetime, window_hours: int = 24) -> pd.DataFrame:
    """`health.connection_health` as of `now`: Shopify, Clarus, NetSuite and every alert channel."""
    return _read(db, health.connection_health, now=now, window=timedelta(hours=window_hours)).to_pandas()


@_cached
def lag_samples(db: str, since: datetime, until: datetime) -> pd.DataFrame:
    """`health.lag_samples`: per record, seconds from landing to reaching its target system."""
    return _read(db, health.lag_samples, since=since, until=until).to_pandas()


@_cached
def data_quality_results(db: str) -> list[dict[str, Any]]:
    """The latest result of each data-quality suite (`data_quality.latest_results`)."""
    return _read(db, data_quality.latest_results)


@_cached
def alert_deliveries(db: str, since: datetime) -> pd.DataFrame:
    """Alerts due since a time with their delivery per channel (`alerts.alert_history`)."""
    rows = _read(db, alerts.alert_history, since)
    columns = ["due_at", "code", "entity_id", "reason", "owner", "severity", "title", "channel", "status", "attempts",
               "last_error", "sent_at"]
    return pd.DataFrame(rows, columns=columns)


@_cached
def alert_channels(db: str, since: datetime) -> pd.DataFrame:
    """Per alert channel: messages sent and failed since a time, alerts waiting (`alert_history.channel_status`)."""
    rows = _read(db, alert_history.channel_status, since)
    return pd.DataFrame(rows, columns=["channel", "last_sent", "last_failed", "sent", "failed", "last_error", "waiting"])


# ---------------------------------------------------------------------------- exception queue


@_cached
def exception_filter_options(db: str) -> dict[str, list[str]]:
    frame = _frame(db, "SELECT DISTINCT owner, code, status FROM exceptions")
    return {col: sorted(frame[col].dropna().unique().tolist()) for col in ("owner", "code", "status")}


@_cached
def exceptions(db: str, owners: tuple[str, ...] = (), codes: tuple[str, ...] = (),
               statuses: tuple[str, ...] = (), entity_ids: tuple[str, ...] = ()) -> pd.DataFrame:
    """Exceptions matching the filters (an empty filter matches everything), with the order name for orders
    and, for one still open, how many times it was escalated in its current episode (alerts reason escalation:N)."""
    sql = (
        "WITH episodes AS (SELECT code, entity_id, max(occurred_at) AS started FROM exception_events"
        "   WHERE action IN ('raised', 'reopened') GROUP BY code, entity_id),"
        " escalations AS (SELECT code, entity_id, episode_started_at, count(*)::INTEGER AS escalations,"
        "   max(due_at) AS last_escalated_at FROM alerts WHERE reason LIKE 'escalation:%' GROUP BY ALL)"
        " SELECT e.code, e.entity_id, e.entity_type, o.order_name, e.owner, e.severity, e.status, e.message, e.details,"
        " e.first_seen, e.last_seen, e.occurrences, e.resolved_at, e.resolved_by, e.note,"
        " CASE WHEN e.status = 'resolved' THEN 0 ELSE coalesce(x.escalations, 0) END AS escalations,"
        " CASE WHEN e.status = 'resolved' THEN NULL ELSE x.last_escalated_at END AS last_escalated_at"
        " FROM exceptions e LEFT JOIN orders o ON e.entity_type = 'order'"
        "   AND (o.order_id = e.entity_id OR o.order_name = e.entity_id)"
        " LEFT JOIN episodes p ON p.code = e.code AND p.entity_id = e.entity_id"
        " LEFT JOIN escalations x ON x.code = e.code AND x.entity_id = e.entity_id"
        "   AND x.episode_started_at = greatest(coalesce(p.started, e.first_seen), e.first_seen)"
        " WHERE true"
    )
    params: list[Any] = []
    for clause, values in (
        (" AND e.owner IN (SELECT unnest(?::VARCHAR[]))", owners),
        (" AND e.code IN (SELECT unnest(?::VARCHAR[]))", codes),
        (" AND e.status IN (SELECT unnest(?::VARCHAR[]))", statuses),
        (" AND e.entity_id IN (SELECT unnest(?::VARCHAR[]))", entity_ids),
    ):
        if values:
            sql += clause
            params.append(list(values))
    return _frame(db, sql + " ORDER BY e.first_seen, e.code, e.entity_id", params)


@_cached
def exception_history(db: str, code: str, entity_id: str) -> pd.DataFrame:
    return _frame(
        db,
        "SELECT occurred_at, action, actor, note FROM exception_events WHERE code = ? AND entity_id = ?"
        " ORDER BY occurred_at, event_id",
        [code, entity_id],
    )


Decision = Literal["acknowledge", "resolve"]
_ALLOWED_FROM: dict[str, tuple[str, ...]] = {"acknowledge": ("open",), "resolve": ("open", "acknowledged")}


def record_decision(action: Decision, code: str, entity_id: str, actor: str, note: str | None) -> str:
    """Acknowledge or resolve an exception in the state file; returns the status it had.

    Checked against the live row inside the write, because the page showed a snapshot:
    an exception the pipeline resolved meanwhile is not flipped back. Raises ValueError
    (with a message for the person) when the action no longer applies.
    """
    actor = actor.strip()
    if not actor:
        raise ValueError("Enter your name: every acknowledgement and resolution records who made it.")
    store = open_state(state_target(), lock_timeout_s=WRITE_LOCK_TIMEOUT_S)
    with store.write() as con:
        row = con.execute(
            "SELECT status, resolved_by FROM exceptions WHERE code = ? AND entity_id = ?", [code, entity_id]
        ).fetchone()
        if row is None:
            raise ValueError(f"{code} for {entity_id} no longer exists.")
        status, resolved_by = row
        if status not in _ALLOWED_FROM[action]:
            by = f" by {resolved_by}" if status == "resolved" and resolved_by else ""
            raise ValueError(f"{code} for {entity_id} is already {status}{by}; nothing was changed.")
        if action == "acknowledge":
            exception_queue.acknowledge(con, code, entity_id, actor, note or None)
        else:
            exception_queue.resolve(con, code, entity_id, actor, note or None)
    current_snapshot(force=True)
    return status


# ---------------------------------------------------------------------------- order journey


@_cached
def find_orders(db: str, term: str) -> pd.DataFrame:
    """Orders whose name, Shopify id, Clarus or NetSuite id, shipment id or tracking number equals `term`."""
    term = term.strip()
    return _frame(
        db,
        "WITH t AS (SELECT lower(?) AS term),"
        " hits AS ("
        "   SELECT o.order_id, 'order name' AS matched_on FROM orders o, t"
        "     WHERE lower(o.order_name) IN (t.term, '#' || t.term)"
        "   UNION ALL SELECT o.order_id, 'Shopify order id' FROM orders o, t WHERE o.order_id = t.term"
        "   UNION ALL SELECT o.order_id, CASE WHEN lower(b.clarus_id) = t.term THEN 'Clarus id' ELSE 'NetSuite id' END"
        "     FROM bindings b JOIN orders o ON b.our_id IN (o.order_id, o.order_name), t"
        "     WHERE b.entity_type = 'order' AND t.term IN (lower(b.clarus_id), lower(b.netsuite_id))"
        "   UNION ALL SELECT s.order_id, 'Clarus id' FROM shipments s, t WHERE lower(s.clarus_goods_out_id) = t.term"
        "   UNION ALL SELECT s.order_id, 'shipment id' FROM shipments s, t WHERE lower(s.shipment_id) = t.term"
        "   UNION ALL SELECT s.order_id, 'tracking number' FROM shipments s, t"
        "     WHERE replace(lower(s.tracking_number), ' ', '') = replace(t.term, ' ', ''))"
        " SELECT o.order_id, o.order_name, o.status, o.created_at, string_agg(DISTINCT h.matched_on, ', ') AS matched_on"
        " FROM hits h JOIN orders o USING (order_id)"
        " GROUP BY o.order_id, o.order_name, o.status, o.created_at ORDER BY o.created_at DESC",
        [term],
    )


@_cached
def order(db: str, order_id: str) -> dict[str, Any] | None:
    frame = _frame(
        db,
        "SELECT o.*, b.clarus_id, b.netsuite_id FROM orders o"
        " LEFT JOIN bindings b ON b.entity_type = 'order' AND b.our_id IN (o.order_id, o.order_name)"
        " WHERE o.order_id = ? LIMIT 1",
        [order_id],
    )
    return None if frame.empty else frame.iloc[0].to_dict()


@_cached
def order_holds(db: str, order_id: str) -> pd.DataFrame:
    """Every reason an order is held, with since when."""
    return _frame(db, "SELECT code, message, held_since FROM order_holds WHERE order_id = ? ORDER BY held_since, code",
                  [order_id])


@_cached
def order_lines(db: str, order_id: str) -> pd.DataFrame:
    return _frame(
        db,
        "SELECT l.line_id, l.sku, l.title, l.quantity, l.price, l.quantity * l.price AS value,"
        " coalesce(sum(sl.quantity), 0) AS shipped"
        " FROM order_lines l LEFT JOIN shipments s ON s.order_id = l.order_id"
        " LEFT JOIN shipment_lines sl ON sl.shipment_id = s.shipment_id AND sl.sku = l.sku"
        " WHERE l.order_id = ? GROUP BY ALL ORDER BY l.line_id",
        [order_id],
    )


@_cached
def order_shipments(db: str, order_id: str) -> pd.DataFrame:
    return _frame(
        db,
        "SELECT shipment_id, clarus_goods_out_id, carrier, service, tracking_number, state, dispatched_at,"
        " netsuite_fulfilment_id, shopify_fulfilment_id, updated_at FROM shipments WHERE order_id = ?"
        " ORDER BY dispatched_at NULLS LAST, shipment_id",
        [order_id],
    )


@_cached
def order_timeline(db: str, order_id: str, order_name: str) -> pd.DataFrame:
    """Everything that happened to one order, in time order: its events, shipments, refunds and exceptions."""
    return _frame(
        db,
        "WITH ship AS (SELECT * FROM shipments WHERE order_id = ?)"
        " SELECT occurred_at, system, state AS event, cause, details, event_id AS seq FROM order_events WHERE order_id = ?"
        " UNION ALL SELECT dispatched_at, 'clarus', 'SHIPMENT_DISPATCHED',"
        "   'shipment ' || shipment_id || ' by ' || coalesce(carrier, 'unknown carrier')"
        "   || ', tracking ' || coalesce(tracking_number, 'none'),"
        "   json_object('tracking_number', tracking_number, 'tracking_url', tracking_url, 'service', service), NULL"
        "   FROM ship WHERE dispatched_at IS NOT NULL"
        " UNION ALL SELECT updated_at, CASE WHEN state IN ('CHANNEL_FULFILLED', 'CHANNEL_CONFIRMED') THEN 'shopify'"
        "   WHEN state IN ('ERP_ORDER_CONFIRMED', 'ITEM_FULFILMENT_POSTED') THEN 'netsuite' ELSE 'clarus' END,"
        "   'SHIPMENT_' || state, 'shipment ' || shipment_id || ' is now ' || state,"
        "   json_object('netsuite_fulfilment_id', netsuite_fulfilment_id, 'shopify_fulfilment_id', shopify_fulfilment_id), NULL"
        "   FROM ship WHERE updated_at > coalesce(dispatched_at, updated_at - INTERVAL 1 SECOND)"
        " UNION ALL SELECT received_at, source, 'WEBHOOK ' || topic,"
        "   'landed via ' || via || coalesce(' (replay of ' || replay_of || ')', ''), NULL, NULL"
        "   FROM landed_events WHERE entity_id IN (?, ?) OR parent_id IN (?, ?)"
        "     OR entity_id IN (SELECT clarus_goods_out_id FROM ship)"
        " UNION ALL SELECT received_at, 'shopify', 'REFUND_' || coalesce(kind, 'RECEIVED'),"
        "   'refund ' || refund_id || ' of ' || coalesce(CAST(amount AS VARCHAR), '?') || ' (' || state || ')', payload, NULL"
        "   FROM refunds WHERE order_id = ?"
        " UNION ALL SELECT ev.occurred_at, 'pipeline', 'EXCEPTION_' || upper(ev.action), ev.code"
        "   || coalesce(' by ' || nullif(ev.actor, 'pipeline'), '') || coalesce(': ' || ev.note, ''), NULL, NULL"
        "   FROM exception_events ev"
        "   WHERE ev.entity_id IN (?, ?) OR ev.entity_id IN (SELECT shipment_id FROM ship)"
        "     OR ev.entity_id IN (SELECT refund_id FROM refunds WHERE order_id = ?)"
        " ORDER BY occurred_at, seq NULLS LAST",
        [order_id, order_id, order_id, order_name, order_id, order_name, order_id, order_id, order_name, order_id],
    )


# ---------------------------------------------------------------------------- stock


@_cached
def latest_stock(db: str) -> pd.DataFrame:
    """The latest snapshot row per SKU and warehouse, with item master facts, what the channel was
    told and shows (all Shopify locations together), the stock's value and open stock exceptions."""
    return _frame(
        db,
        "WITH latest AS (SELECT * FROM stock_snapshots WHERE coalesce(source, 'read') = 'read'"
        "   QUALIFY row_number() OVER (PARTITION BY sku, warehouse_id ORDER BY taken_at DESC, snapshot_hour DESC) = 1),"
        " open_exc AS (SELECT entity_id, string_agg(code, ', ' ORDER BY code) AS open_exceptions FROM exceptions"
        "   WHERE entity_type = 'sku' AND status <> 'resolved' GROUP BY entity_id),"
        " to_sell AS (SELECT sku, sum(quantity) AS to_sell FROM available_to_sell GROUP BY sku),"
        " pushed AS (SELECT sku, sum(quantity) AS last_pushed FROM stock_pushes GROUP BY sku),"
        " shown AS (SELECT i.sku, sum(l.available) AS shopify_shows FROM stock_shopify_levels l"
        "   JOIN stock_inventory_items i USING (inventory_item_id) GROUP BY i.sku)"
        " SELECT l.sku, i.description, i.sku IS NOT NULL AS in_item_master, l.warehouse_id, l.available,"
        " l.allocated, l.on_hold, ts.to_sell, p.last_pushed, sh.shopify_shows,"
        " CAST(l.available * v.unit_value AS DOUBLE) AS available_value, l.taken_at,"
        " coalesce(x.open_exceptions, '') AS open_exceptions"
        " FROM latest l LEFT JOIN items i ON i.sku = l.sku LEFT JOIN open_exc x ON x.entity_id = l.sku"
        " LEFT JOIN to_sell ts ON ts.sku = l.sku LEFT JOIN pushed p ON p.sku = l.sku"
        " LEFT JOIN shown sh ON sh.sku = l.sku LEFT JOIN stock_sku_values v ON v.sku = l.sku"
        " ORDER BY x.open_exceptions IS NULL, l.sku, l.warehouse_id",
    )


@_cached
def stock_history(db: str, sku: str) -> pd.DataFrame:
    return _frame(
        db,
        "SELECT snapshot_hour, sum(available) AS available, sum(allocated) AS allocated, sum(on_hold) AS on_hold"
        " FROM stock_snapshots WHERE sku = ? GROUP BY snapshot_hour ORDER BY snapshot_hour",
        [sku],
    )


# ---------------------------------------------------------------------------- reconciliation
# Same code as the daily finance report (`domain.reconciliation`), so the figures always match it.


@_cached
def reconciliation_reports(db: str, limit: int = 60) -> pd.DataFrame:
    """The stored daily reports, newest first (`reconciliation.reports`)."""
    return _read(db, finance.reports, limit).to_pandas()


@_cached
def report_bytes(path: str, generated_at: datetime) -> bytes | None:
    """A report file exactly as finance gets it; None when it is not (or no longer) on this machine.
    `generated_at` keys the cache: a re-run replaces the file."""
    try:
        return Path(path).read_bytes()
    except OSError:
        return None


@_cached
def report_rows(path: str, generated_at: datetime) -> pd.DataFrame | None:
    """A report's rows as written (`reconciliation.read_report`), all text; None when the file is missing."""
    try:
        return finance.read_report(path).to_pandas()
    except OSError:
        return None


@_cached
def reconcile_touched(db: str, since: datetime, until: datetime, now: datetime) -> pd.DataFrame:
    """`reconciliation.reconcile` as of `now` for the orders with a dispatch, a return refund or a
    return receipt in [since, until): the rows a report for those days would hold if run now."""

    def run(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
        return finance.reconcile(con, finance.orders_touched(con, since, until), now=now).rows.to_pandas()

    if is_postgres_url(db):  # the check runs in DuckDB on the tables it reads
        with open_state(db).check_reader(finance.CHECK_TABLES) as con:
            return run(con)
    return _read(db, run)

@_cached
def payout_matches(db: str, since, until) -> pd.DataFrame:
    """Shopify Payments payouts issued in [since, until] and their match rows (`payouts.payout_matches`)."""
    rows = _read(db, payouts.payout_matches, since, until).to_pandas()
    for column in (*payouts.MONEY,):
        rows[column] = pd.to_numeric(rows[column], errors="coerce")
    return rows


@_cached
def refunds_by_kind(db: str, since: datetime, until: datetime) -> pd.DataFrame:
    return _frame(
        db,
        "SELECT coalesce(r.kind, 'UNCLASSIFIED') AS kind, coalesce(r.currency, o.currency) AS currency,"
        " count(*) AS refunds, sum(r.amount) AS amount,"
        " count(*) FILTER (WHERE r.kind = 'RETURN' AND r.return_received_at IS NULL) AS goods_not_back,"
        " sum(r.amount) FILTER (WHERE r.kind = 'RETURN' AND r.return_received_at IS NULL) AS refunded_goods_not_back"
        " FROM refunds r LEFT JOIN orders o USING (order_id)"
        " WHERE r.received_at >= ? AND r.received_at < ? GROUP BY ALL ORDER BY amount DESC",
        [since, until],
    )


# ---------------------------------------------------------------------------- integration audit


@_cached
def audit_reports(db: str, limit: int = 52) -> list[dict[str, Any]]:
    """The stored integration audits, newest first (`audit.history.reports`): counts, verdict and the report."""
    from clarus_pipelines.audit import history

    return _read(db, history.reports, limit)
