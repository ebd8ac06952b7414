"""Step 2 of the orders flow, send: released orders -> NetSuite sales order, then Clarus goods out.

For released orders, create the NetSuite sales order and then the Clarus goods out;
NetSuite being unreachable does not hold the goods out (the sales order follows in a later
run, and the dispatch flow keeps the ERP gate; see docs/architecture.md). Idempotent: the
bindings and `outbound_writes` say what was done (intent recorded before each call, the
outcome after), and the ports' `ensure_*` look the record up by our reference before
creating it, so a retry, a re-run, a crash between intent and call or a duplicate webhook
never makes a second one. A refusal from Clarus is WMS_REJECTED with Clarus's code and message.

This is the only sender: the `clarus_goods_outs` / `netsuite_sales_orders` asset calls it,
and so do the jobs that re-check held orders and apply order changes (which record a
materialization of those assets). The state file is never held across a network call:
read, close, call, then write.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import polars as pl

from clarus_pipelines.domain import order_flow as flow
from clarus_pipelines.domain.goods_out import body_dicts, build_goods_outs
from clarus_pipelines.domain.netsuite_orders import build_sales_orders, sales_order_dicts
from clarus_pipelines.domain.order_flow import OrderStatus
from clarus_pipelines.domain.order_intake import count_transitions, revalidate
from clarus_pipelines.domain.orders import OrderVerdicts, parse_orders, validate_orders
from clarus_pipelines.domain.ports import ConnectorError, Erp, Warehouse, refusal_text
from clarus_pipelines.exception_queue import clear_exception, raise_exception, utcnow
from clarus_pipelines.policies import Policies
from clarus_pipelines.state import StateStore

log = logging.getLogger(__name__)

SEND_CHUNK = 25  # orders per write -> calls -> write round


# ------------------------------------------------------------------------------- send


@dataclass
class SendReport:
    considered: int = 0
    held_on_recheck: int = 0
    erp_created: int = 0
    erp_found: int = 0
    erp_failed: int = 0
    wms_created: int = 0
    wms_found: int = 0
    wms_rejected: int = 0
    wms_failed: int = 0
    skipped_systems: list[str] = field(default_factory=list)


def refresh_carriers(store: StateStore, clarus: Warehouse, *, now: datetime | None = None) -> int:
    """Copy Clarus's (carrier, service) codes -> ids into the state (read by the mapping)."""
    ids = clarus.carrier_service_ids(refresh=True)
    rows = [[carrier, service, cid, sid, now or utcnow()] for (carrier, service), (cid, sid) in ids.items()]
    with store.write() as con:
        con.execute("DELETE FROM clarus_carriers")
        if rows:
            con.executemany(
                "INSERT INTO clarus_carriers (carrier, service, carrier_id, carrier_service_id, read_at) VALUES (?, ?, ?, ?, ?)",
                rows,
            )
    return len(rows)


def _prepare(con, policies: Policies, order_ids: list[str], now: datetime, customer_id: str) -> dict[str, Any]:
    """Re-validate the chunk, then build both bodies for what is still ready (local only)."""
    verdicts, transitions = revalidate(con, policies, order_ids, now=now, cause="re-checked before sending")
    bodies: dict[str, dict] = {}
    sales_orders: dict[str, dict] = {}
    names: dict[str, str] = {}
    if verdicts is not None:
        names = dict(zip(verdicts.orders["order_id"].to_list(), verdicts.orders["order_name"].to_list()))
        ready = OrderVerdicts(
            orders=verdicts.orders.filter(pl.col("status") == "ready"), lines=verdicts.lines, reasons=verdicts.reasons
        )
        if ready.orders.height:
            bodies = body_dicts(build_goods_outs(ready, policies=policies, now=now, carriers=flow.carriers_table(con)))
            sales_orders = sales_order_dicts(
                build_sales_orders(ready, items=flow.netsuite_items_table(con), customer_id=customer_id)
            )
    # An order already requested from Clarus is resent exactly as first sent.
    stored = flow.frame(
        con,
        "SELECT order_id, order_name, sent_body::VARCHAR AS body FROM orders"
        " WHERE order_id IN (SELECT unnest(?::VARCHAR[])) AND sent_body IS NOT NULL",
        [order_ids],
    )
    for row in stored.iter_rows(named=True):
        bodies[row["order_id"]] = json.loads(row["body"])
        names.setdefault(row["order_id"], row["order_name"])
    statuses = dict(con.execute(
        "SELECT order_id, status FROM orders WHERE order_id IN (SELECT unnest(?::VARCHAR[]))", [order_ids]).fetchall())
    # Orders the goods out reached while NetSuite was down: their sales order from the stored order.
    owing = flow.frame(
        con,
        "SELECT o.order_id, o.order_name, o.payload::VARCHAR AS payload FROM orders o"
        " LEFT JOIN bindings b ON b.entity_type = 'order' AND b.our_id = o.order_id"
        " WHERE o.order_id IN (SELECT unnest(?::VARCHAR[])) AND o.status IN (SELECT unnest(?::VARCHAR[]))"
        " AND b.netsuite_id IS NULL",
        [order_ids, [s.value for s in flow.OWE_ERP]],
    )
    if not owing.is_empty():
        late = validate_orders(parse_orders(owing["payload"], policies.sku_cleaning), products=flow.products_table(con),
                               policies=policies, known_carriers=flow.carriers_table(con))
        late_ready = OrderVerdicts(orders=late.orders.filter(pl.col("status") == "ready"), lines=late.lines, reasons=late.reasons)
        if late_ready.orders.height:
            sales_orders.update(sales_order_dicts(
                build_sales_orders(late_ready, items=flow.netsuite_items_table(con), customer_id=customer_id)))
        for row in owing.iter_rows(named=True):
            names.setdefault(row["order_id"], row["order_name"])
    held = 0 if transitions.is_empty() else count_transitions(transitions, OrderStatus.HELD.value)
    return {"bodies": bodies, "sales_orders": sales_orders, "names": names, "held": held, "statuses": statuses}


def send_ready_orders(
    store: StateStore,
    policies: Policies,
    *,
    netsuite: Erp,
    clarus: Warehouse,
    customer_id: str,
    now: datetime | None = None,
    limit: int = 2000,
) -> SendReport:
    """Create the NetSuite sales order, then the Clarus goods out, of every released order.

    NetSuite unreachable (connection error, 5xx, 429) does not hold the goods out: Clarus gets
    it in the same run and the sales order is created by a later run (`OWE_ERP`); the dispatch
    flow keeps the ERP gate (no Shopify fulfilment before NetSuite's item fulfilment). NetSuite
    refusing the order (ERP_REJECTED, a data problem a person must fix) still holds it.
    """
    report = SendReport()
    now = now or utcnow()
    with store.read() as con:
        pending = flow.due_for_sending(con, limit)
    report.considered = len(pending)
    down: set[str] = set()
    for start in range(0, len(pending), SEND_CHUNK):
        if {"netsuite", "clarus"} <= down:
            break
        _send_chunk(store, policies, pending[start:start + SEND_CHUNK], netsuite, clarus, customer_id, now, report, down)
    report.skipped_systems = sorted(down)
    return report


def _send_chunk(store, policies, order_ids, netsuite, clarus, customer_id, now, report: SendReport, down: set[str]) -> None:
    # 1. local: re-validate, build bodies, mark the ERP writes pending
    with store.write() as con:
        prepared = _prepare(con, policies, order_ids, now, customer_id)
        report.held_on_recheck += prepared["held"]
        states = flow.order_states(con, order_ids).filter(
            pl.col("prev_status").is_in([s.value for s in (*flow.SENDABLE, *flow.OWE_ERP)]) & pl.col("prev_change").is_null()
        )
        need_erp = [
            r["order_id"] for r in states.iter_rows(named=True)
            if r["netsuite_id"] is None and r["order_id"] in prepared["sales_orders"]
        ]
        if "netsuite" not in down:
            flow.begin_outbound(con, {flow.outbound_key("netsuite", "sales_order", o): ("netsuite", "create_sales_order") for o in need_erp}, now=now)
    names = prepared["names"]

    # 2. NetSuite, one call per order (nothing held open)
    erp_results: list[tuple[str, str | None, bool | None, str | None, ConnectorError | None]] = []
    for order_id in need_erp:
        if "netsuite" in down:
            break
        try:
            ns_id, created = netsuite.ensure_sales_order(order_id, prepared["sales_orders"][order_id])
            erp_results.append((order_id, str(ns_id), created, None, None))
        except ConnectorError as exc:
            erp_results.append((order_id, None, None, str(exc)[:500], exc if exc.refused else None))
            if exc.status is None or exc.status >= 500 or exc.status == 429:
                down.add("netsuite")  # the system is unwell: stop calling it this run
    with store.write() as con:
        for order_id, ns_id, created, error, refusal in erp_results:
            key = flow.outbound_key("netsuite", "sales_order", order_id)
            if ns_id is None:
                flow.finish_outbound(con, key, status="failed", error=error, now=now)
                report.erp_failed += 1
                log.warning("netsuite sales order for order %s failed: %s", order_id, error)
                if refusal is not None:  # the data, not the connection: tried again each run, a person is told now
                    code, detail = getattr(refusal, "code", None), getattr(refusal, "detail", None) or str(refusal)
                    name = names.get(order_id, order_id)
                    raise_exception(
                        con, "ERP_REJECTED", order_id,
                        f"NetSuite refused the sales order of order {name}: {code or refusal.status} {detail}"[:500],
                        {"order_name": name, "status": refusal.status, "netsuite_code": code, "detail": detail},
                        policies=policies, now=now,
                    )
                continue
            clear_exception(con, "ERP_REJECTED", order_id, now=now)
            flow.finish_outbound(con, key, status="done", remote_id=ns_id, now=now)
            flow.bind(con, "order", order_id, netsuite_id=ns_id, shopify_id=order_id, now=now)
            what = f"NetSuite sales order {ns_id} {'created' if created else 'already existed (bound)'}"
            if prepared["statuses"].get(order_id) in (OrderStatus.READY, OrderStatus.SENT_TO_ERP):
                flow.set_status(con, order_id, OrderStatus.SENT_TO_ERP, what, system="netsuite",
                                details={"netsuite_id": ns_id, "created": created}, now=now)
            else:  # the goods out went ahead while NetSuite was down: the status stays where Clarus has it
                flow.record_event(con, order_id, OrderStatus.SENT_TO_ERP.value, what + " after the goods out",
                                  system="netsuite", details={"netsuite_id": ns_id, "created": created}, now=now)
            report.erp_created += int(bool(created))
            report.erp_found += int(not created)
        # 3. local: which orders go to Clarus now; mark them SENT_TO_WMS before the call
        states = flow.order_states(con, order_ids)
        refused = flow.open_exception_ids(con, "ERP_REJECTED", order_ids)
        need_wms = [
            r for r in states.iter_rows(named=True)
            if r["prev_change"] is None and r["clarus_id"] is None
            and r["prev_status"] in (OrderStatus.READY.value, OrderStatus.SENT_TO_ERP.value, OrderStatus.SENT_TO_WMS.value)
            and r["order_id"] in prepared["bodies"]
            # NetSuite refused the order's data: a person fixes it before the goods move
            and (r["netsuite_id"] is not None or r["order_id"] not in refused)
        ]
        if "clarus" in down:
            need_wms = []
        flow.begin_outbound(con, {flow.outbound_key("clarus", "goods_out", r["order_id"]): ("clarus", "create_goods_out") for r in need_wms}, now=now)
        for r in need_wms:
            body = prepared["bodies"][r["order_id"]]
            reference = body["data"]["attributes"]["reference"]
            flow.record_sent_body(con, r["order_id"], body)
            if r["prev_status"] != OrderStatus.SENT_TO_WMS.value:
                flow.set_status(con, r["order_id"], OrderStatus.SENT_TO_WMS, f"goods out {reference} requested", system="clarus", now=now)

    # 4. Clarus, one call per order
    wms_results: list[tuple[str, str | None, bool | None, ConnectorError | None, str | None]] = []
    for r in need_wms:
        if "clarus" in down:
            break
        order_id = r["order_id"]
        try:
            go_id, created = clarus.ensure_goods_out(prepared["bodies"][order_id])
            wms_results.append((order_id, go_id, created, None, None))
        except ConnectorError as exc:
            if exc.refused:  # Clarus refused this body (its 422): a person fixes the data
                wms_results.append((order_id, None, None, exc, None))
                continue
            wms_results.append((order_id, None, None, None, str(exc)[:500]))
            down.add("clarus")
    with store.write() as con:
        for order_id, go_id, created, rejected, error in wms_results:
            key = flow.outbound_key("clarus", "goods_out", order_id)
            body = prepared["bodies"][order_id]
            reference = body["data"]["attributes"]["reference"]
            name = names.get(order_id, reference)
            if rejected is not None:
                code, message = getattr(rejected, "code", rejected.status), getattr(rejected, "message", str(rejected))
                flow.finish_outbound(con, key, status="failed", error=refusal_text(rejected)[:500], now=now)
                flow.set_status(
                    con, order_id, OrderStatus.WMS_REJECTED, f"Clarus rejected goods out {reference}: {message}",
                    system="clarus", details={"clarus_code": code, "symbol": getattr(rejected, "symbol", None),
                                              "source": getattr(rejected, "source", None)}, now=now,
                )
                flow.forget_sent_body(con, order_id)
                flow.raise_wms_rejected(con, order_id, name, code, message, getattr(rejected, "details", rejected.body),
                                        policies=policies, now=now)
                report.wms_rejected += 1
                continue
            if go_id is None:
                flow.finish_outbound(con, key, status="failed", error=error, now=now)
                report.wms_failed += 1
                log.warning("clarus goods out for order %s not confirmed: %s", order_id, error)
                continue
            flow.finish_outbound(con, key, status="done", remote_id=go_id, now=now)
            flow.bind(con, "order", order_id, clarus_id=go_id, now=now)
            record_sent_lines(con, order_id, body)
            flow.set_status(
                con, order_id, OrderStatus.ACKNOWLEDGED,
                f"Clarus goods out {go_id} ({reference}) {'created' if created else 'already existed (bound)'}",
                system="clarus", details={"clarus_id": go_id, "reference": reference, "created": created}, now=now,
            )
            clear_exception(con, "WMS_REJECTED", order_id, now=now)
            report.wms_created += int(bool(created))
            report.wms_found += int(not created)


def record_sent_lines(con, order_id: str, body: dict) -> None:
    """Remember what Clarus has for each Shopify line (quantity, product)."""
    for change in body["data"]["attributes"].get("lines_changes") or []:
        attrs = change.get("attributes") or {}
        if change["type"] != "ADD" or not attrs.get("external_system_reference1"):
            continue
        con.execute(
            "UPDATE order_lines SET sent_quantity = ?, clarus_product_id = ? WHERE order_id = ? AND line_id = ?",
            [int(attrs["order_quantity"]), str(attrs["product_id"]), order_id, attrs["external_system_reference1"]],
        )
