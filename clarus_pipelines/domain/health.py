"""Health of each flow and each connection, computed from the state database.

Plain SQL over an open DuckDB connection (a `StateStore.read()` connection, or a
`snapshot()` copy for the dashboard); every function returns a polars frame or a dict
and writes nothing, except `store_snapshot`.

Per **flow** (`flow_health`): intake, item master, orders, dispatch, stock, refunds.

- `last_success`: the newest piece of work the flow finished (an order's goods out
  created, a fulfilment posted, a stock level set, an item created in Clarus...);
- `backlog`: landed events the flow has not read yet (`landed_events` after its
  `event_consumers` watermark), with the oldest one's landing time; `work_waiting`:
  records waiting for their next step (orders not yet in Clarus, shipments not yet
  confirmed in Shopify, refund steps pending, stock levels not yet pushed...);
- `error_rate`: failed attempts / attempts of the flow's writes to other systems in the
  window (`outbound_writes`: every attempt but the one that succeeded failed);
- lag: seconds from the webhook landing to the record reaching its target system
  (order -> goods out accepted by Clarus; dispatch -> fulfilment created in Shopify;
  refund -> its postings done; intake -> landing ingested), as p50 / p90 / max over the
  records that reached it in the window;
- `open_exceptions` of the flow's exception codes, and a `status`: ok, idle, degraded or
  failing, by the thresholds in `HealthThresholds`.

Per **connection** (`connection_health`): Shopify, Clarus, NetSuite and every alert
channel: last success, webhooks received / rejected / missed (found only by the
reconciliation reads), writes and their error rate, writes pending, the last error, and
open CONNECTOR_FAILING / WEBHOOK_REJECTED exceptions, and the live probe: the last
authenticated read that succeeded (`last_probe_ok_at`), the last probe and its error.
A system whose last `PROBE_FAILURES` probes all failed is failing and raises
CONNECTOR_FAILING (`connector_findings`), even when nothing is being written to it.

`lag_samples` gives the per-record lags behind the percentiles (for charts).
Times are naive UTC, as everywhere in the state database.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import duckdb
import polars as pl

from clarus_pipelines.state.alert_history import channel_status
from clarus_pipelines.domain import dispatch as dispatch_flow
from clarus_pipelines.domain import order_flow, refund_flow
from clarus_pipelines.catalogue import SOURCE_NAMES, SOURCES
from clarus_pipelines.exception_queue import Finding, utcnow

SYSTEMS = SOURCES  # the systems we connect; alert channels are listed apart
PROBE_FAILURES = 2  # consecutive failed probes that make a system failing
DEFAULT_WINDOW = timedelta(hours=24)
STATUS_RANK = {"ok": 0, "idle": 0, "degraded": 1, "failing": 2}


@dataclass(frozen=True)
class FlowSpec:
    name: str
    title: str
    consumer: str | None  # event_consumers watermark
    source: str | None  # landed_events.source it reads (None: several)
    topics: tuple[str, ...]
    operations: tuple[str, ...]  # its outbound_writes operations
    key_prefix: str | None  # or its outbound_writes key prefix
    codes: tuple[str, ...]  # exception codes it raises


ORDERS_CONSUMER = "orders"  # assets/orders.py reads landed_events under this name

FLOWS: tuple[FlowSpec, ...] = (
    FlowSpec("intake", "Webhook intake", None, None, (), (), None, ("WEBHOOK_REJECTED",)),
    FlowSpec("item_master", "Item master", None, None, (), (), None,
             ("SKU_NOT_IN_MASTER", "SKU_LEADING_ZEROS_LOST", "BARCODE_INVALID")),
    FlowSpec("orders", "Orders into the warehouse", ORDERS_CONSUMER, "shopify", order_flow.ORDER_TOPICS,
             ("create_sales_order", "create_goods_out", "cancel_goods_out", "edit_goods_out", "cancel_sales_order",
              "edit_sales_order"), None,
             ("ORDER_INCOMPLETE", "SHIP_METHOD_UNMAPPED", "SKU_UNKNOWN", "WMS_REJECTED", "ERP_REJECTED", "ORDER_NOT_ACKNOWLEDGED",
              "ORDER_EDIT_NEEDS_REVIEW", "CANCEL_AFTER_DISPATCH", "ORPHAN_ORDER")),
    FlowSpec("dispatch", "Dispatch to NetSuite and Shopify", dispatch_flow.CONSUMER, "clarus", dispatch_flow.DISPATCH_TOPICS,
             ("transform_item_fulfilment", "create_fulfillment"), None,
             ("NOT_DISPATCHED_BY_CUTOFF", "DISPATCH_AWAITING_ERP", "TRACKING_MISSING", "TRACKING_INVALID",
              "TRACKING_NOT_POSTED", "OVER_DISPATCHED", "FULFILLED_OUTSIDE_WMS")),
    FlowSpec("stock", "Stock to Shopify", None, None, (), (), None, ("STOCK_MISMATCH", "STRANDED_STOCK")),
    FlowSpec("refunds", "Refunds and returns", refund_flow.CONSUMER, None,
             (refund_flow.REFUND_TOPIC, *refund_flow.ORDER_TOPICS, *refund_flow.RECEIPT_TOPICS), (), "refund:",
             ("RETURN_NOT_RECEIVED", "REFUND_UNCLASSIFIED", "RETURN_NEEDS_REVIEW", "RECONCILIATION_MISMATCH")),
)
FLOWS_BY_NAME = {f.name: f for f in FLOWS}


@dataclass(frozen=True)
class HealthThresholds:
    degraded_error_rate: float = 0.10
    failing_error_rate: float = 0.50
    min_attempts: int = 3  # fewer attempts than this never make a flow failing
    degraded_backlog_age: timedelta = timedelta(minutes=15)
    failing_backlog_age: timedelta = timedelta(minutes=60)
    degraded_lag_p90_s: float = 3600.0


def _rows(con: duckdb.DuckDBPyConnection, query: str, params: Sequence[Any] | None = None) -> list[dict[str, Any]]:
    con.complete()  # a caller's half-read result would block the next query
    cur = con.execute(query, list(params or []))
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row)) for row in cur.fetchall()]


def _one(con: duckdb.DuckDBPyConnection, query: str, params: Sequence[Any] | None = None) -> dict[str, Any]:
    rows = _rows(con, query, params)
    return rows[0] if rows else {}


# -------------------------------------------------------------------------------- backlog


def backlog(con: duckdb.DuckDBPyConnection) -> pl.DataFrame:
    """Per flow reading landed events: events landed but not yet read, and the oldest one's landing time."""
    rows = []
    for flow in FLOWS:
        if flow.consumer is None:
            continue
        query = (
            "SELECT count(*) AS events, min(received_at) AS oldest_received_at FROM landed_events"
            " WHERE seq > coalesce((SELECT last_seq FROM event_consumers WHERE consumer = ?), 0)"
            " AND topic IN (SELECT unnest(?::VARCHAR[]))"
        )
        params: list[Any] = [flow.consumer, list(flow.topics)]
        if flow.source:
            query += " AND source = ?"
            params.append(flow.source)
        row = _one(con, query, params)
        last_read = _one(con, "SELECT updated_at FROM event_consumers WHERE consumer = ?", [flow.consumer])
        rows.append({"flow": flow.name, "consumer": flow.consumer, "events": int(row["events"]),
                     "oldest_received_at": row["oldest_received_at"], "last_read_at": last_read.get("updated_at")})
    return pl.DataFrame(rows, schema={"flow": pl.Utf8, "consumer": pl.Utf8, "events": pl.Int64,
                                      "oldest_received_at": pl.Datetime("us"), "last_read_at": pl.Datetime("us")})


_WORK_WAITING = {
    "item_master": "SELECT count(*) FROM items WHERE clarus_product_id IS NULL",
    "orders": "SELECT count(*) FROM orders WHERE status IN ('READY', 'SENT_TO_ERP', 'SENT_TO_WMS')",
    "dispatch": "SELECT count(*) FROM shipments WHERE state <> 'CHANNEL_CONFIRMED'",
    "refunds": "SELECT count(DISTINCT refund_id) FROM refund_steps WHERE status IN ('pending', 'blocked')",
    "stock": (
        "SELECT count(*) FROM available_to_sell a JOIN stock_inventory_items i ON i.sku = a.sku"
        " LEFT JOIN stock_pushes p ON p.inventory_item_id = i.inventory_item_id AND p.location_id = a.location_id"
        " WHERE p.quantity IS DISTINCT FROM a.quantity"
    ),
}

_LAST_SUCCESS = {
    "intake": "SELECT max(ingested_at) FROM landed_events",
    "item_master": "SELECT max(updated_at) FROM items WHERE clarus_product_id IS NOT NULL",
    "stock": "SELECT max(pushed_at) FROM stock_push_log",
}


def _outbound_filter(flow: FlowSpec) -> tuple[str, list[Any]] | None:
    if flow.key_prefix:
        return "starts_with(idempotency_key, ?)", [flow.key_prefix]
    if flow.operations:
        return "operation IN (SELECT unnest(?::VARCHAR[]))", [list(flow.operations)]
    return None


def _writes(con: duckdb.DuckDBPyConnection, where: str, params: list[Any], since: datetime) -> dict[str, Any]:
    """Attempts and failures of outbound writes settled since a time, the last success and error."""
    return _one(
        con,
        "SELECT coalesce(sum(attempts) FILTER (WHERE status <> 'pending' AND updated_at >= ?), 0)::BIGINT AS attempts,"
        " coalesce(sum(CASE WHEN status = 'done' THEN attempts - 1 ELSE attempts END)"
        "   FILTER (WHERE status <> 'pending' AND updated_at >= ?), 0)::BIGINT AS failures,"
        " count(*) FILTER (WHERE status = 'done' AND updated_at >= ?) AS succeeded,"
        " count(*) FILTER (WHERE status = 'pending') AS pending,"
        " max(updated_at) FILTER (WHERE status = 'done') AS last_success,"
        " max(updated_at) FILTER (WHERE status = 'failed') AS last_failure_at,"
        " arg_max(last_error, updated_at) FILTER (WHERE status = 'failed') AS last_error"
        f" FROM outbound_writes WHERE {where}",
        [since, since, since, *params],
    )


# ------------------------------------------------------------------------------------ lag


def lag_samples(con: duckdb.DuckDBPyConnection, *, since: datetime, until: datetime | None = None) -> pl.DataFrame:
    """One row per record that reached its target system in [since, until): flow, entity,
    when it landed, when it reached the target, and the lag in seconds."""
    until = until or datetime.max
    dispatch_topics = list(dispatch_flow.DISPATCH_TOPICS)
    order_topics = list(order_flow.ORDER_TOPICS)
    query = (
        # intake: landing received -> ingested into landed_events
        "SELECT 'intake' AS flow, source || ':' || topic AS entity_type, landing_id AS entity_id,"
        "   received_at AS landed_at, ingested_at AS reached_at FROM landed_events"
        "   WHERE via = 'webhook' AND ingested_at >= ? AND ingested_at < ?"
        # orders: first order webhook landed -> Clarus accepted the goods out
        " UNION ALL SELECT 'orders', 'order', o.order_id, l.landed_at, a.reached_at FROM orders o"
        "   JOIN (SELECT entity_id, min(received_at) AS landed_at FROM landed_events WHERE source = 'shopify'"
        "     AND topic IN (SELECT unnest(?::VARCHAR[])) GROUP BY entity_id) l ON l.entity_id = o.order_id"
        "   JOIN (SELECT order_id, min(occurred_at) AS reached_at FROM order_events WHERE state = 'ACKNOWLEDGED'"
        "     GROUP BY order_id) a ON a.order_id = o.order_id"
        "   WHERE a.reached_at >= ? AND a.reached_at < ?"
        # dispatch: goods out webhook that brought the shipment -> fulfilment created in Shopify
        " UNION ALL SELECT 'dispatch', 'shipment', s.shipment_id,"
        "   coalesce((SELECT min(e.received_at) FROM landed_events e WHERE e.source = 'clarus'"
        "     AND e.entity_id = s.clarus_goods_out_id AND e.topic IN (SELECT unnest(?::VARCHAR[]))"
        "     AND e.received_at <= s.first_seen_at"
        "     AND e.received_at >= coalesce(s.dispatched_at, s.first_seen_at) - INTERVAL 10 MINUTE), s.first_seen_at),"
        "   s.channel_fulfilled_at FROM shipments s"
        "   WHERE s.channel_fulfilled_at >= ? AND s.channel_fulfilled_at < ? AND s.first_seen_at IS NOT NULL"
        # refunds: refund webhook landed -> its last posting to Clarus / NetSuite / Shopify done
        # (not the return's item receipt: that waits for the customer to send the goods back)
        " UNION ALL SELECT 'refunds', 'refund', r.refund_id, coalesce(e.received_at, r.received_at), d.reached_at"
        "   FROM refunds r LEFT JOIN landed_events e ON e.landing_id = r.landing_id"
        "   JOIN (SELECT refund_id, max(updated_at) AS reached_at FROM refund_steps"
        "     WHERE status = 'done' AND system IN ('clarus', 'netsuite', 'shopify')"
        "       AND action <> 'NETSUITE_RETURN_RECEIPT' GROUP BY refund_id) d"
        "     ON d.refund_id = r.refund_id"
        "   WHERE NOT EXISTS (SELECT 1 FROM refund_steps p WHERE p.refund_id = r.refund_id"
        "     AND p.status IN ('pending', 'blocked') AND p.action <> 'NETSUITE_RETURN_RECEIPT')"
        "   AND d.reached_at >= ? AND d.reached_at < ?"
    )
    con.complete()
    frame = con.sql(
        f"SELECT flow, entity_type, entity_id, landed_at, reached_at,"
        f" greatest(date_diff('millisecond', landed_at, reached_at) / 1000.0, 0) AS lag_s FROM ({query})"
        f" WHERE landed_at IS NOT NULL ORDER BY flow, reached_at",
        params=[since, until, order_topics, since, until, dispatch_topics, since, until, since, until],
    ).pl()
    return frame


def _lag_stats(samples: pl.DataFrame) -> dict[str, dict[str, Any]]:
    if samples.is_empty():
        return {}
    stats = samples.group_by("flow").agg(
        pl.len().alias("lag_samples"),
        pl.col("lag_s").quantile(0.5, "linear").alias("lag_p50_s"),
        pl.col("lag_s").quantile(0.9, "linear").alias("lag_p90_s"),
        pl.col("lag_s").max().alias("lag_max_s"),
    )
    return {row["flow"]: row for row in stats.iter_rows(named=True)}


# ---------------------------------------------------------------------------------- flows


def _status(
    *, last_success: datetime | None, attempts: int, error_rate: float | None, oldest_backlog: datetime | None,
    lag_p90: float | None, busy: bool, now: datetime, since: datetime, limits: HealthThresholds,
) -> tuple[str, list[str]]:
    """(status, reasons in words)."""
    failing, degraded = [], []
    if error_rate is not None and attempts >= limits.min_attempts:
        if error_rate >= limits.failing_error_rate:
            failing.append(f"{error_rate:.0%} of {attempts} write attempts failed")
        elif error_rate >= limits.degraded_error_rate:
            degraded.append(f"{error_rate:.0%} of {attempts} write attempts failed")
    if oldest_backlog is not None:
        waited = now - oldest_backlog
        minutes = int(waited.total_seconds() // 60)
        if waited >= limits.failing_backlog_age:
            failing.append(f"oldest unread event waiting {minutes} min")
        elif waited >= limits.degraded_backlog_age:
            degraded.append(f"oldest unread event waiting {minutes} min")
    if lag_p90 is not None and lag_p90 >= limits.degraded_lag_p90_s:
        degraded.append(f"p90 lag {lag_p90 / 60:.0f} min")
    if failing:
        return "failing", failing + degraded
    if degraded:
        return "degraded", degraded
    if not busy and (last_success is None or last_success < since):
        return "idle", ["no activity in the window"]
    return "ok", []


def _open_by_code(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    return dict(con.execute("SELECT code, count(*) FROM exceptions WHERE status <> 'resolved' GROUP BY code").fetchall())


FLOW_SCHEMA = {
    "flow": pl.Utf8, "title": pl.Utf8, "status": pl.Utf8, "reasons": pl.Utf8, "last_success": pl.Datetime("us"),
    "backlog": pl.Int64, "oldest_backlog_at": pl.Datetime("us"), "work_waiting": pl.Int64, "attempts": pl.Int64,
    "failures": pl.Int64, "error_rate": pl.Float64, "last_error": pl.Utf8, "last_failure_at": pl.Datetime("us"),
    "lag_samples": pl.Int64, "lag_p50_s": pl.Float64, "lag_p90_s": pl.Float64, "lag_max_s": pl.Float64,
    "open_exceptions": pl.Int64,
}


def flow_health(
    con: duckdb.DuckDBPyConnection,
    *,
    now: datetime | None = None,
    window: timedelta = DEFAULT_WINDOW,
    thresholds: HealthThresholds = HealthThresholds(),
) -> pl.DataFrame:
    """One row per flow (see the module docstring for the columns)."""
    now = now or utcnow()
    since = now - window
    pending = {row["flow"]: row for row in backlog(con).iter_rows(named=True)}
    lags = _lag_stats(lag_samples(con, since=since, until=now + timedelta(seconds=1)))
    open_codes = _open_by_code(con)
    rows = []
    for flow in FLOWS:
        writes: dict[str, Any] = {}
        where = _outbound_filter(flow)
        if where is not None:
            writes = _writes(con, where[0], where[1], since)
        last_success = writes.get("last_success")
        if flow.name in _LAST_SUCCESS:
            last_success = con.execute(_LAST_SUCCESS[flow.name]).fetchall()[0][0]
        attempts = int(writes.get("attempts") or 0)
        failures = int(writes.get("failures") or 0)
        error_rate = failures / attempts if attempts else None
        queue = pending.get(flow.name, {})
        work = con.execute(_WORK_WAITING[flow.name]).fetchall()[0][0] if flow.name in _WORK_WAITING else None
        lag = lags.get(flow.name, {})
        status, reasons = _status(
            last_success=last_success, attempts=attempts, error_rate=error_rate,
            oldest_backlog=queue.get("oldest_received_at"), lag_p90=lag.get("lag_p90_s"),
            busy=bool(queue.get("events") or work), now=now, since=since, limits=thresholds,
        )
        rows.append({
            "flow": flow.name, "title": flow.title, "status": status, "reasons": "; ".join(reasons),
            "last_success": last_success, "backlog": queue.get("events"), "oldest_backlog_at": queue.get("oldest_received_at"),
            "work_waiting": work, "attempts": attempts if where else None, "failures": failures if where else None,
            "error_rate": error_rate, "last_error": writes.get("last_error"), "last_failure_at": writes.get("last_failure_at"),
            "lag_samples": lag.get("lag_samples"), "lag_p50_s": lag.get("lag_p50_s"), "lag_p90_s": lag.get("lag_p90_s"),
            "lag_max_s": lag.get("lag_max_s"), "open_exceptions": sum(open_codes.get(c, 0) for c in flow.codes),
        })
    return pl.DataFrame(rows, schema=FLOW_SCHEMA)


# ---------------------------------------------------------------------------- connections


CONNECTION_SCHEMA = {
    "connection": pl.Utf8, "kind": pl.Utf8, "status": pl.Utf8, "reasons": pl.Utf8, "last_success": pl.Datetime("us"),
    "last_webhook_at": pl.Datetime("us"), "webhooks": pl.Int64, "webhooks_rejected": pl.Int64,
    "missed_by_webhooks": pl.Int64, "last_read_at": pl.Datetime("us"), "writes_ok": pl.Int64, "attempts": pl.Int64,
    "failures": pl.Int64, "error_rate": pl.Float64, "pending": pl.Int64, "last_error": pl.Utf8,
    "last_failure_at": pl.Datetime("us"), "open_exceptions": pl.Int64,
    "last_probe_ok_at": pl.Datetime("us"), "last_probe_at": pl.Datetime("us"), "probe_error": pl.Utf8,
    "probe_latency_ms": pl.Float64,
}


def record_probe(con: duckdb.DuckDBPyConnection, system: str, *, ok: bool, at: datetime,
                 latency_ms: float | None = None, error: str | None = None) -> None:
    """Record one live probe of a system (an authenticated read)."""
    con.execute("INSERT INTO connector_probes (system, probed_at, ok, latency_ms, error) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT DO NOTHING", [system, at, ok, latency_ms, (error or "")[:500] or None])


def probe_state(con: duckdb.DuckDBPyConnection, system: str) -> dict[str, Any]:
    """The system's last probe, last successful probe, and how many probes failed in a row since."""
    return _one(
        con,
        "WITH p AS (SELECT * FROM connector_probes WHERE system = ?),"
        " good AS (SELECT max(probed_at) AS ok_at FROM p WHERE ok)"
        " SELECT (SELECT ok_at FROM good) AS last_probe_ok_at, max(probed_at) AS last_probe_at,"
        "  arg_max(error, probed_at) AS last_error, arg_max(latency_ms, probed_at) AS latency_ms,"
        "  arg_max(ok, probed_at) AS last_ok,"
        "  count(*) FILTER (WHERE NOT ok AND probed_at > coalesce((SELECT ok_at FROM good), TIMESTAMP '1970-01-01'))"
        "   AS failures_since_ok FROM p",
        [system],
    )


def _open_for(con: duckdb.DuckDBPyConnection, entity: str) -> dict[str, int]:
    return dict(con.execute(
        "SELECT code, count(*) FROM exceptions WHERE status <> 'resolved' AND code IN ('CONNECTOR_FAILING', 'WEBHOOK_REJECTED')"
        " AND (entity_id = ? OR starts_with(entity_id, ? || ':')) GROUP BY code",
        [entity, entity],
    ).fetchall())


def _connection_status(open_codes: dict[str, int], error_rate: float | None, attempts: int, missed: int,
                       active: bool, limits: HealthThresholds) -> tuple[str, list[str]]:
    failing, degraded = [], []
    if open_codes.get("CONNECTOR_FAILING"):
        failing.append("CONNECTOR_FAILING open")
    if error_rate is not None and attempts >= limits.min_attempts:
        if error_rate >= limits.failing_error_rate:
            failing.append(f"{error_rate:.0%} of {attempts} attempts failed")
        elif error_rate >= limits.degraded_error_rate:
            degraded.append(f"{error_rate:.0%} of {attempts} attempts failed")
    if open_codes.get("WEBHOOK_REJECTED"):
        degraded.append("webhooks being rejected")
    if missed:
        degraded.append(f"{missed} change(s) only found by the reconciliation read")
    if failing:
        return "failing", failing + degraded
    if degraded:
        return "degraded", degraded
    if not active:
        return "idle", ["no activity in the window"]
    return "ok", []


def connector_findings(
    con: duckdb.DuckDBPyConnection,
    *,
    now: datetime | None = None,
    window: timedelta = timedelta(hours=1),
    min_failures: int = 3,
) -> list[Finding]:
    """CONNECTOR_FAILING findings for Shopify, Clarus and NetSuite (entity = the system).

    A system is failing when its last `PROBE_FAILURES` live probes (scheduled authenticated
    reads) all failed; the next probe that succeeds clears it. Or, from its writes, when
    within `window` its newest settled write failed and at
    least `min_failures` writes of at least two different records failed after its last
    success: an outage or revoked credentials, not one record the system keeps refusing
    (that record has its own exception). The first write that succeeds clears it.
    """
    now = now or utcnow()
    rows = _rows(
        con,
        "WITH recent AS (SELECT * FROM outbound_writes WHERE status <> 'pending' AND updated_at >= ?),"
        " last_ok AS (SELECT system, max(updated_at) AS at FROM recent WHERE status = 'done' GROUP BY system)"
        " SELECT r.system, count(*) AS failures, count(DISTINCT r.idempotency_key) AS records,"
        "   min(r.updated_at) AS since, max(r.updated_at) AS last_failure_at,"
        "   arg_max(r.last_error, r.updated_at) AS last_error, any_value(o.at) AS last_success"
        " FROM recent r LEFT JOIN last_ok o USING (system)"
        " WHERE r.status = 'failed' AND (o.at IS NULL OR r.updated_at > o.at) AND r.system IN (SELECT unnest(?))"
        " GROUP BY r.system",
        [now - window, list(SYSTEMS)],
    )
    findings = {}
    for system in SYSTEMS:
        probe = probe_state(con, system)
        if probe.get("last_ok") is False and (probe.get("failures_since_ok") or 0) >= PROBE_FAILURES:
            name = SOURCE_NAMES.get(system, system)
            since_ok = (f"since {probe['last_probe_ok_at']:%Y-%m-%d %H:%M} UTC" if probe.get("last_probe_ok_at")
                        else "ever")
            findings[system] = Finding(
                system,
                f"{name} does not answer an authenticated read: {probe['failures_since_ok']} live probe(s) failed, "
                f"no successful read {since_ok}; last error: {probe.get('last_error') or 'unknown'}"[:500],
                {"system": system, "probe_failures": probe["failures_since_ok"],
                 "last_probe_ok_at": probe.get("last_probe_ok_at"), "last_probe_at": probe.get("last_probe_at"),
                 "last_error": probe.get("last_error")},
            )
    for row in rows:
        if row["failures"] < min_failures or row["records"] < 2:
            continue
        name = SOURCE_NAMES.get(row["system"], row["system"])
        since_success = (f"since the last success at {row['last_success']:%H:%M} UTC" if row["last_success"]
                         else f"and none succeeded in the last {int(window.total_seconds() // 60)} min")
        text = f"{row['failures']} write(s) to {name} failed {since_success}; last error: {row['last_error'] or 'unknown'}"
        details = {"system": row["system"], "failures": row["failures"], "records": row["records"], "since": row["since"],
                   "last_failure_at": row["last_failure_at"], "last_success": row["last_success"],
                   "last_error": row["last_error"]}
        probed = findings.get(row["system"])
        if probed is not None:
            text, details = f"{probed.message}; {text}", {**probed.details, **details}
        findings[row["system"]] = Finding(row["system"], text[:500], details)
    return list(findings.values())


def connection_health(
    con: duckdb.DuckDBPyConnection,
    *,
    now: datetime | None = None,
    window: timedelta = DEFAULT_WINDOW,
    thresholds: HealthThresholds = HealthThresholds(),
) -> pl.DataFrame:
    """One row per system (Shopify, Clarus, NetSuite) and per alert channel."""
    now = now or utcnow()
    since = now - window
    rows = []
    for system in SYSTEMS:
        writes = _writes(con, "system = ?", [system], since)
        inbound = _one(
            con,
            "SELECT max(received_at) FILTER (WHERE via = 'webhook') AS last_webhook_at,"
            " count(*) FILTER (WHERE via = 'webhook' AND received_at >= ?) AS webhooks"
            " FROM landed_events WHERE source = ?",
            [since, system],
        )
        rejected = con.execute(
            "SELECT coalesce(sum(count), 0) FROM webhook_rejections WHERE source = ? AND minute >= ?", [system, since]
        ).fetchall()[0][0]
        missed = con.execute(
            "SELECT count(*) FROM reconciliation_findings WHERE source = ? AND found_at >= ?", [system, since]
        ).fetchall()[0][0]
        reads = [con.execute("SELECT max(run_at) FROM reconciliation_runs WHERE source = ?", [system]).fetchall()[0][0]]
        if system == "clarus":
            reads.append(con.execute("SELECT max(run_at) FROM dispatch_sweeps").fetchall()[0][0])
        last_read = max((r for r in reads if r is not None), default=None)
        attempts = int(writes.get("attempts") or 0)
        failures = int(writes.get("failures") or 0)
        error_rate = failures / attempts if attempts else None
        probe = probe_state(con, system)
        successes = [t for t in (writes.get("last_success"), inbound.get("last_webhook_at"), last_read,
                                 probe.get("last_probe_ok_at")) if t is not None]
        last_success = max(successes, default=None)
        open_codes = _open_for(con, system)
        probed = probe.get("last_probe_at") is not None and probe["last_probe_at"] >= since
        active = bool(inbound.get("webhooks") or attempts or (last_read and last_read >= since) or probed)
        status, reasons = _connection_status(open_codes, error_rate, attempts, int(missed), active, thresholds)
        if probe.get("last_ok") is False:
            reason = f"live probe failed: {probe.get('last_error') or 'no answer'}"
            if (probe.get("failures_since_ok") or 0) >= PROBE_FAILURES:
                status = "failing"
            elif status in ("ok", "idle"):
                status = "degraded"
            reasons = [reason, *reasons]
        rows.append({
            "connection": system, "kind": "system", "status": status, "reasons": "; ".join(reasons),
            "last_success": last_success, "last_webhook_at": inbound.get("last_webhook_at"),
            "webhooks": inbound.get("webhooks"), "webhooks_rejected": int(rejected), "missed_by_webhooks": int(missed),
            "last_read_at": last_read, "writes_ok": writes.get("succeeded"), "attempts": attempts, "failures": failures,
            "error_rate": error_rate, "pending": writes.get("pending"), "last_error": writes.get("last_error"),
            "last_failure_at": writes.get("last_failure_at"), "open_exceptions": sum(open_codes.values()),
            "last_probe_ok_at": probe.get("last_probe_ok_at"), "last_probe_at": probe.get("last_probe_at"),
            "probe_error": probe.get("last_error") if probe.get("last_ok") is False else None,
            "probe_latency_ms": probe.get("latency_ms"),
        })
    con.complete()
    channels = channel_status(con, since)
    for ch in channels:
        entity = f"alerts:{ch['channel']}"
        attempts = int(ch["sent"] + ch["failed"])
        error_rate = ch["failed"] / attempts if attempts else None
        open_codes = _open_for(con, entity)
        status, reasons = _connection_status(open_codes, error_rate, attempts, 0, attempts > 0 or ch["waiting"] > 0,
                                             thresholds)
        rows.append({
            "connection": entity, "kind": "alert_channel", "status": status, "reasons": "; ".join(reasons),
            "last_success": ch["last_sent"], "last_webhook_at": None, "webhooks": None, "webhooks_rejected": None,
            "missed_by_webhooks": None, "last_read_at": None, "writes_ok": int(ch["sent"]), "attempts": attempts,
            "failures": int(ch["failed"]), "error_rate": error_rate, "pending": int(ch["waiting"]),
            "last_error": ch["last_error"], "last_failure_at": ch["last_failed"],
            "open_exceptions": sum(open_codes.values()),
            "last_probe_ok_at": None, "last_probe_at": None, "probe_error": None, "probe_latency_ms": None,
        })
    return pl.DataFrame(rows, schema=CONNECTION_SCHEMA)


# ------------------------------------------------------------------------------- snapshot


def _plain(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def health_summary(
    con: duckdb.DuckDBPyConnection, *, now: datetime | None = None, window: timedelta = DEFAULT_WINDOW,
    thresholds: HealthThresholds = HealthThresholds(),
) -> dict[str, Any]:
    """Everything at once as plain JSON-able data: overall status, flows, connections."""
    now = now or utcnow()
    flows = flow_health(con, now=now, window=window, thresholds=thresholds)
    connections = connection_health(con, now=now, window=window, thresholds=thresholds)
    statuses = flows["status"].to_list() + connections["status"].to_list()
    overall = max(statuses, key=lambda s: STATUS_RANK[s], default="ok")
    if overall in ("ok", "idle"):
        overall = "ok"
    return {
        "taken_at": now.isoformat(),
        "window_hours": window.total_seconds() / 3600,
        "status": overall,
        "flows": [{k: _plain(v) for k, v in r.items()} for r in flows.iter_rows(named=True)],
        "connections": [{k: _plain(v) for k, v in r.items()} for r in connections.iter_rows(named=True)],
    }


def store_snapshot(con: duckdb.DuckDBPyConnection, summary: dict[str, Any]) -> int:
    """Append a `health_summary` to `health_snapshots` (one row per flow and connection)."""
    taken_at = datetime.fromisoformat(summary["taken_at"])
    rows = []
    for kind, items, key in (("flow", summary["flows"], "flow"), ("connection", summary["connections"], "connection")):
        for item in items:
            details = {k: v for k, v in item.items() if v is not None}
            rows.append((
                taken_at, kind, item[key], item["status"], item.get("last_success"),
                item.get("backlog") if kind == "flow" else item.get("pending"), item.get("error_rate"),
                item.get("lag_p50_s"), item.get("lag_p90_s"), int(item.get("open_exceptions") or 0),
                json.dumps(details, default=str, sort_keys=True),
            ))
    con.executemany(
        "INSERT INTO health_snapshots (taken_at, kind, name, status, last_success, backlog, error_rate, lag_p50_s,"
        " lag_p90_s, open_exceptions, details) VALUES (?, ?, ?, ?, ?::TIMESTAMP, ?, ?, ?, ?, ?, ?::JSON)"
        " ON CONFLICT DO NOTHING",
        rows,
    )
    return len(rows)


def health_history(con: duckdb.DuckDBPyConnection, since: datetime, kind: str | None = None) -> pl.DataFrame:
    """Stored snapshots since a time (for charts of status, backlog, error rate and lag over time)."""
    query = ("SELECT taken_at, kind, name, status, last_success, backlog, error_rate, lag_p50_s, lag_p90_s,"
             " open_exceptions FROM health_snapshots WHERE taken_at >= ?")
    params: list[Any] = [since]
    if kind:
        query += " AND kind = ?"
        params.append(kind)
    con.complete()
    return con.sql(query + " ORDER BY taken_at, kind, name", params=params).pl()
