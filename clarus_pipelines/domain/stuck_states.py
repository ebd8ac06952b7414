"""Stuck states: orders and dispatches that stopped moving, found from the state database.

Each rule returns the full current set of offending entities for its exception code,
so syncing them raises the new ones and auto-resolves the ones that moved on:

- ORDER_NOT_ACKNOWLEDGED (order): sent to Clarus (status SENT_TO_WMS) and no Clarus goods
  out id bound `timings.ack_timeout_minutes` after sending.
- NOT_DISPATCHED_BY_CUTOFF (order): accepted by Clarus (ACKNOWLEDGED) but nothing
  dispatched by its expected date of dispatch: the goods out's
  `expected_date_of_dispatch` as sent, else the cut-off rule applied to the time Clarus
  accepted it. The seed's "failed to manifest".
- DISPATCH_AWAITING_ERP (order): Clarus dispatched a shipment more than
  `timings.erp_wait_alert_minutes` ago and NetSuite has not confirmed the sales order
  (or refused the item fulfilment), so the customer's shipping notice is held back; at
  once when the item fulfilment is blocked by data (the sales order lacks a shipped line).
- TRACKING_NOT_POSTED (shipment): the NetSuite item fulfilment is posted but Shopify has
  not confirmed the fulfilment with tracking `timings.tracking_post_alert_minutes` later;
  at once when Shopify's data blocks it (less left to fulfil, fulfilment cancelled).
  Not for an order cancelled in Shopify after Clarus dispatched it: CANCEL_AFTER_DISPATCH
  already says why Shopify will not take the fulfilment, and one cause gets one alert.

Times in the state database are naive UTC; the cut-off is read in `tz` (UTC unless given).
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone, tzinfo
from typing import Any

import duckdb

from clarus_pipelines.connectors.clarus_model import FINAL_STATUS_IDS
from clarus_pipelines.domain.dispatch import BLOCKED, DispatchState, parse_timestamp
from clarus_pipelines.domain.goods_out import expected_dispatch
from clarus_pipelines.exception_queue import Finding
from clarus_pipelines.policies import Timings

STUCK_CODES = ("ORDER_NOT_ACKNOWLEDGED", "NOT_DISPATCHED_BY_CUTOFF", "DISPATCH_AWAITING_ERP", "TRACKING_NOT_POSTED")


def _age(since: datetime, now: datetime) -> str:
    minutes = max(int((now - since).total_seconds() // 60), 0)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes:02d} min"
    return f"{hours // 24} days {hours % 24} h"


def _naive_utc(moment: datetime) -> datetime:
    return moment.astimezone(timezone.utc).replace(tzinfo=None) if moment.tzinfo else moment


def not_acknowledged(con: duckdb.DuckDBPyConnection, timings: Timings, now: datetime) -> list[Finding]:
    threshold = now - timedelta(minutes=timings.ack_timeout_minutes)
    rows = con.execute(
        "SELECT o.order_id, o.order_name, coalesce(max(e.occurred_at), o.updated_at) AS sent_at"
        " FROM orders o"
        " LEFT JOIN order_events e ON e.order_id = o.order_id AND e.state = 'SENT_TO_WMS'"
        " LEFT JOIN bindings b ON b.entity_type = 'order' AND b.our_id = o.order_id"
        " WHERE o.status = 'SENT_TO_WMS' AND b.clarus_id IS NULL"
        # HAVING repeats the expression: PostgreSQL does not see select aliases there
        " GROUP BY o.order_id, o.order_name, o.updated_at HAVING coalesce(max(e.occurred_at), o.updated_at) <= ?"
        " ORDER BY sent_at",
        [threshold],
    ).fetchall()
    return [
        Finding(
            order_id,
            f"order {name} sent to Clarus {_age(sent_at, now)} ago; no goods out id came back",
            {"order_name": name, "sent_at": sent_at, "ack_timeout_minutes": timings.ack_timeout_minutes},
        )
        for order_id, name, sent_at in rows
    ]


def _due_at(sent_body: Any, accepted_at: datetime, timings: Timings, tz: tzinfo) -> datetime:
    if sent_body:
        body = json.loads(sent_body) if isinstance(sent_body, str) else sent_body
        expected = ((body or {}).get("data") or {}).get("attributes", {}).get("expected_date_of_dispatch")
        if expected:
            return parse_timestamp(expected)
    return _naive_utc(expected_dispatch(accepted_at, timings.dispatch_cutoff, tz))


def not_dispatched_by_cutoff(
    con: duckdb.DuckDBPyConnection, timings: Timings, now: datetime, tz: tzinfo = timezone.utc
) -> list[Finding]:
    rows = con.execute(
        "SELECT o.order_id, o.order_name, o.sent_body::VARCHAR, b.clarus_id,"
        " coalesce((SELECT max(e.occurred_at) FROM order_events e WHERE e.order_id = o.order_id"
        "   AND e.state = 'ACKNOWLEDGED'), b.updated_at) AS accepted_at"
        " FROM orders o"
        " JOIN bindings b ON b.entity_type = 'order' AND b.our_id = o.order_id AND b.clarus_id IS NOT NULL"
        " WHERE o.status = 'ACKNOWLEDGED' AND coalesce(o.clarus_status, 0) NOT IN (SELECT unnest(?::INTEGER[]))"
        "   AND NOT EXISTS (SELECT 1 FROM shipments s WHERE s.order_id = o.order_id)"
        " ORDER BY accepted_at",
        [FINAL_STATUS_IDS],
    ).fetchall()
    findings = []
    for order_id, name, sent_body, goods_out_id, accepted_at in rows:
        due = _due_at(sent_body, accepted_at, timings, tz)
        if now <= due:
            continue
        findings.append(
            Finding(
                order_id,
                f"order {name} accepted by Clarus but not dispatched by {due:%Y-%m-%d %H:%M} UTC ({_age(due, now)} late)",
                {"order_name": name, "clarus_goods_out_id": goods_out_id, "accepted_at": accepted_at, "due": due},
            )
        )
    return findings


def awaiting_erp(con: duckdb.DuckDBPyConnection, timings: Timings, now: datetime) -> list[Finding]:
    threshold = now - timedelta(minutes=timings.erp_wait_alert_minutes)
    # one row per shipment, grouped per order here (plain SQL both state backends run)
    shipment_rows = con.execute(
        "SELECT s.order_id, o.order_name, s.first_seen_at, s.shipment_id, s.state,"
        " coalesce(s.last_error, s.erp_wait_reason), s.netsuite_sales_order_id"
        " FROM shipments s LEFT JOIN orders o USING (order_id)"
        " WHERE s.state IN (?, ?) AND (s.first_seen_at <= ? OR starts_with(s.last_error, ?))"
        " ORDER BY s.order_id, s.shipment_id",
        [DispatchState.DISPATCHED_IN_WMS.value, DispatchState.ERP_ORDER_CONFIRMED.value, threshold, BLOCKED],
    ).fetchall()
    by_order: dict[str, dict[str, Any]] = {}
    for order_id, name, first_seen, shipment_id, state, waiting_for, sales_order_id in shipment_rows:
        entry = by_order.setdefault(order_id, {"name": name, "since": first_seen, "shipments": []})
        entry["name"] = entry["name"] or name
        if entry["since"] is None or (first_seen is not None and first_seen < entry["since"]):
            entry["since"] = first_seen  # the earliest first sighting, as min() would
        entry["shipments"].append({"shipment_id": shipment_id, "state": state, "waiting_for": waiting_for,
                                   "sales_order_id": sales_order_id})
    rows = sorted(((order_id, e["name"], e["since"], e["shipments"]) for order_id, e in by_order.items()),
                  key=lambda row: (row[2] is None, row[2] or datetime.min))
    findings = []
    for order_id, name, since, shipments in rows:
        reasons = sorted({s["waiting_for"] or "not yet checked" for s in shipments})
        findings.append(
            Finding(
                order_id,
                f"order {name or order_id} dispatched {_age(since, now)} ago; held for NetSuite: " + "; ".join(reasons),
                {"order_name": name, "dispatched_seen_at": since, "shipments": shipments},
            )
        )
    return findings


def tracking_not_posted(con: duckdb.DuckDBPyConnection, timings: Timings, now: datetime) -> list[Finding]:
    threshold = now - timedelta(minutes=timings.tracking_post_alert_minutes)
    rows = con.execute(
        "SELECT s.shipment_id, s.order_id, o.order_name, s.state, s.fulfilment_posted_at, s.tracking_number, s.carrier,"
        " s.shopify_fulfilment_id, s.last_error"
        " FROM shipments s LEFT JOIN orders o USING (order_id)"
        " WHERE s.state IN (?, ?) AND (s.fulfilment_posted_at <= ? OR starts_with(s.last_error, ?))"
        "   AND NOT EXISTS (SELECT 1 FROM exceptions x WHERE x.code = 'CANCEL_AFTER_DISPATCH' AND x.entity_id = s.order_id)"
        " ORDER BY s.fulfilment_posted_at",
        [DispatchState.ITEM_FULFILMENT_POSTED.value, DispatchState.CHANNEL_FULFILLED.value, threshold, BLOCKED],
    ).fetchall()
    findings = []
    for shipment_id, order_id, name, state, posted_at, number, carrier, fulfilment_id, error in rows:
        step = "not created" if state == DispatchState.ITEM_FULFILMENT_POSTED.value else "created but not confirmed"
        findings.append(
            Finding(
                shipment_id,
                f"shipment {shipment_id} of order {name or order_id}: Shopify fulfilment {step};"
                f" NetSuite item fulfilment posted {_age(posted_at, now)} ago" + (f" ({error})" if error else ""),
                {
                    "order_id": order_id, "order_name": name, "state": state, "fulfilment_posted_at": posted_at,
                    "tracking_number": number, "carrier": carrier, "shopify_fulfilment_id": fulfilment_id,
                    "last_error": error,
                },
            )
        )
    return findings


def stuck_findings(
    con: duckdb.DuckDBPyConnection, timings: Timings, now: datetime, tz: tzinfo = timezone.utc
) -> dict[str, list[Finding]]:
    """Every stuck-state code with its current findings."""
    return {
        "ORDER_NOT_ACKNOWLEDGED": not_acknowledged(con, timings, now),
        "NOT_DISPATCHED_BY_CUTOFF": not_dispatched_by_cutoff(con, timings, now, tz),
        "DISPATCH_AWAITING_ERP": awaiting_erp(con, timings, now),
        "TRACKING_NOT_POSTED": tracking_not_posted(con, timings, now),
    }
