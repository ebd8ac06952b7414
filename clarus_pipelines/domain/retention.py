"""Retention for every class of record in the state file, configurable per class.

`prune_records(con, policies, now)` deletes what is past its retention
(`policies.retention`, plus `timings.landing_retention_days` for the landing bookkeeping)
and returns the rows removed per table. Only finished records go: an order still moving
through the warehouse, anything with an open exception, and an unresolved exception stay
whatever their age, so pruning never hides work a person still has to do.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import duckdb

from clarus_pipelines.connectors.clarus_model import FINAL_STATUS_IDS
from clarus_pipelines.state.alert_history import prune_alert_history
from clarus_pipelines.policies import Policies

# An order is finished when it was cancelled, or Clarus completed or cancelled its goods out
# (its `clarus_status` one of FINAL_STATUS_IDS, passed as a parameter).
_FINISHED_ORDER = "(o.status = 'CANCELLED' OR o.clarus_status IN (SELECT unnest(?::INTEGER[])))"
_OPEN_EXCEPTION = "SELECT 1 FROM exceptions e WHERE e.status <> 'resolved' AND e.entity_id = {}"


def cutoffs(policies: Policies, now: datetime) -> dict[str, datetime]:
    keep = policies.retention
    days = {
        "orders": keep.orders_days, "order_events": keep.order_events_days, "shipments": keep.shipments_days,
        "exceptions": keep.exceptions_days, "alerts": keep.alerts_days, "health": keep.health_days,
        "landings": policies.timings.landing_retention_days,
    }
    return {name: now - timedelta(days=d) for name, d in days.items()}


def _delete(con: duckdb.DuckDBPyConnection, sql: str, params: list) -> int:
    return len(con.execute(sql + " RETURNING 1", params).fetchall())


def prune_records(con: duckdb.DuckDBPyConnection, policies: Policies, now: datetime) -> dict[str, int]:
    """Delete records past their retention; rows removed per table."""
    cut = cutoffs(policies, now)
    removed: dict[str, int] = {}
    old_orders = [r[0] for r in con.execute(
        f"SELECT o.order_id FROM orders o WHERE o.updated_at < ? AND {_FINISHED_ORDER}"
        f" AND NOT EXISTS ({_OPEN_EXCEPTION.format('o.order_id')})"
        " AND NOT EXISTS (SELECT 1 FROM refunds r WHERE r.order_id = o.order_id"
        "   AND r.state NOT IN ('DONE', 'RETURN_RECEIVED'))",
        [cut["orders"], FINAL_STATUS_IDS],
    ).fetchall()]
    for table, column in (("order_lines", "order_id"), ("order_holds", "order_id")):
        removed[table] = _delete(con, f"DELETE FROM {table} WHERE {column} IN (SELECT unnest(?::VARCHAR[]))", [old_orders])
    removed["bindings"] = _delete(
        con, "DELETE FROM bindings WHERE entity_type = 'order' AND our_id IN (SELECT unnest(?::VARCHAR[]))", [old_orders])
    removed["orders"] = _delete(con, "DELETE FROM orders WHERE order_id IN (SELECT unnest(?::VARCHAR[]))", [old_orders])
    removed["order_events"] = _delete(
        con, "DELETE FROM order_events WHERE occurred_at < ?"
        " AND order_id NOT IN (SELECT entity_id FROM exceptions WHERE status <> 'resolved')", [cut["order_events"]])

    old_shipments = [r[0] for r in con.execute(
        "SELECT s.shipment_id FROM shipments s WHERE s.state = 'CHANNEL_CONFIRMED' AND s.updated_at < ?"
        f" AND NOT EXISTS ({_OPEN_EXCEPTION.format('s.shipment_id')})"
        f" AND NOT EXISTS ({_OPEN_EXCEPTION.format('s.order_id')})",
        [cut["shipments"]],
    ).fetchall()]
    removed["shipment_lines"] = _delete(
        con, "DELETE FROM shipment_lines WHERE shipment_id IN (SELECT unnest(?::VARCHAR[]))", [old_shipments])
    removed["shipments"] = _delete(
        con, "DELETE FROM shipments WHERE shipment_id IN (SELECT unnest(?::VARCHAR[]))", [old_shipments])
    removed["channel_fulfilments"] = _delete(
        con, "DELETE FROM channel_fulfilments WHERE verdict IS NOT NULL AND updated_at < ?"
        f" AND NOT EXISTS ({_OPEN_EXCEPTION.format('channel_fulfilments.order_id')})", [cut["shipments"]])

    removed["exception_events"] = _delete(
        con, "DELETE FROM exception_events ev WHERE ev.occurred_at < ? AND NOT EXISTS (SELECT 1 FROM exceptions e"
        " WHERE e.code = ev.code AND e.entity_id = ev.entity_id AND e.status <> 'resolved')", [cut["exceptions"]])
    removed["exceptions"] = _delete(
        con, "DELETE FROM exceptions WHERE status = 'resolved' AND resolved_at < ?", [cut["exceptions"]])

    before = {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
              for t in ("alerts", "alert_deliveries", "alert_messages")}
    prune_alert_history(con, now, keep=timedelta(days=policies.retention.alerts_days))
    for table, count in before.items():
        removed[table] = count - con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]

    removed["health_snapshots"] = _delete(con, "DELETE FROM health_snapshots WHERE taken_at < ?", [cut["health"]])
    for table in ("order_landings", "dispatch_landings"):
        removed[table] = _delete(con, f"DELETE FROM {table} WHERE processed_at < ?", [cut["landings"]])
    return removed
