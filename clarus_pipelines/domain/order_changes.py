"""Step 4 of the orders flow, apply changes: Shopify edits and cancellations of orders already sent.

Orders flagged at intake because Shopify changed them after they reached NetSuite or
Clarus. An edit, while Clarus's goods out is DRAFT or PENDING, is applied by
`order_edit_policy` (amend the lines through `lines_changes`, or cancel and re-create under
a replacement reference such as "#1001-R1"); later, or by policy, it is
ORDER_EDIT_NEEDS_REVIEW with the difference. A cancellation cancels the goods out
(`goods_out.cancel_or_reduce`, the same rule the refund flow uses) and closes the NetSuite
sales order's lines; if Clarus already dispatched, it is CANCEL_AFTER_DISPATCH for CX and
finance.

Intent is recorded (`outbound_writes`, pending) before the calls of each order and the
outcome after; the state file is never held across a call. Replacements are sent by the
send step (`order_send.send_ready_orders`), never here.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import polars as pl

from clarus_pipelines.connectors.clarus_model import GoodsOutStatus
from clarus_pipelines.domain import order_flow as flow
from clarus_pipelines.domain.goods_out import (
    AlreadyDispatched,
    Cancelled,
    NotFound,
    Refused,
    amendment_body,
    body_dicts,
    build_goods_outs,
    cancel_or_reduce,
    describe_diff,
    diff_lines,
    lines_changes_for,
    replacement_reference,
    sent_lines_frame,
)
from clarus_pipelines.domain.netsuite_orders import sales_order_edits
from clarus_pipelines.domain.order_flow import OrderStatus
from clarus_pipelines.domain.order_send import record_sent_lines
from clarus_pipelines.domain.orders import HOLD_CODES, parse_orders, validate_orders
from clarus_pipelines.domain.ports import ConnectorError, Erp, Warehouse, refusal_text
from clarus_pipelines.exception_queue import clear_exception, raise_exception, utcnow
from clarus_pipelines.policies import Policies
from clarus_pipelines.state import StateStore

log = logging.getLogger(__name__)


@dataclass
class ChangesReport:
    pending: int = 0
    cancelled: int = 0
    cancel_after_dispatch: int = 0
    amended: int = 0
    replaced: int = 0
    no_change: int = 0
    needs_review: int = 0
    failed: int = 0


def _sent_lines(goods_out: dict) -> pl.DataFrame:
    """What Clarus has, per Shopify line (our line id is each line's external_system_reference1)."""
    return sent_lines_frame([
        {
            "line_id": line.get("external_system_reference1"),
            "clarus_line_id": str(line["id"]),
            "clarus_product_id": str((line.get("product") or {}).get("id")) if line.get("product") else None,
            "quantity": int(round(float(line.get("order_quantity") or 0))),
        }
        for line in goods_out.get("lines") or []
    ])


_status = GoodsOutStatus.of


def _find_goods_out(clarus: Warehouse, row: dict) -> dict | None:
    if row["clarus_id"]:
        return clarus.get_goods_out(row["clarus_id"])
    if row["clarus_reference"]:  # requested, never acknowledged: Clarus may have it anyway
        return clarus.find_goods_out_by_reference(row["clarus_reference"])
    return None


def _cancel(row: dict, clarus: Warehouse, netsuite: Erp) -> dict:
    """Cancel the goods out (one rule with the refund flow), then close the sales order's lines."""
    goods_out = _find_goods_out(clarus, row)
    match cancel_or_reduce(clarus, row["clarus_id"], goods_out=goods_out) if goods_out is not None else NotFound(None):
        case AlreadyDispatched(goods_out=current, status=status):
            return {"goods_out": current, "status": status, "outcome": "after_dispatch"}
        case Refused(goods_out=current, status=status, reason=reason):
            return {"goods_out": current, "status": status, "outcome": "review", "error": reason}
        case Cancelled(goods_out=current):
            result: dict[str, Any] = {"goods_out": current, "status": _status(current)}
        case _:  # NotFound: never reached Clarus
            result = {"goods_out": None, "status": None}
    closed = netsuite.close_open_lines(row["netsuite_id"]) if row["netsuite_id"] else []
    return {**result, "outcome": "cancelled", "closed_lines": closed}


def _sync_erp(row: dict, erp_edits: dict, erp_missing: dict, netsuite: Erp) -> dict:
    """Bring the NetSuite sales order's lines and address in line with the edit, before Clarus is changed.

    NetSuite first: a failure here leaves the edit pending (retried, nothing half-done);
    once both are written, the warehouse never ships a line the ERP cannot fulfil.
    """
    order_id = row["order_id"]
    if not row["netsuite_id"]:
        return {}
    if order_id in erp_missing:
        return {"erp_error": f"no NetSuite item id for SKU(s) {sorted(set(erp_missing[order_id]))}"}
    edit = erp_edits.get(order_id) or {}
    try:
        changes = netsuite.sync_sales_order(row["netsuite_id"], edit.get("lines", []), edit.get("shippingAddress"))
    except ConnectorError as exc:
        if exc.refused:
            # a refusal (e.g. the order was closed in NetSuite) will not pass on a retry: a person decides
            return {"erp_error": f"NetSuite refused to change sales order {row['netsuite_id']}: {refusal_text(exc)}"}
        raise  # unavailable: the edit stays pending and the next run retries it
    return {"erp_changes": changes}


def _edit(row: dict, verdicts, new_body: dict | None, policies: Policies, clarus: Warehouse,
          sync_erp: Callable[[], dict]) -> dict:
    order_id = row["order_id"]
    reasons = verdicts.reasons_for(order_id)
    goods_out = _find_goods_out(clarus, row)
    status = _status(goods_out)
    result: dict[str, Any] = {"goods_out": goods_out, "status": status}
    sent_body = json.loads(row["sent_body"]) if row["sent_body"] else None
    if goods_out is None:
        # Not in Clarus after all (requested, never created): send the new version instead.
        if new_body is None:
            return {**result, "outcome": "review", "reasons": reasons}
        erp = sync_erp()
        if erp.get("erp_error"):
            return {**result, **erp, "outcome": "review", "error": erp["erp_error"]}
        return {**result, **erp, "outcome": "resend", "reasons": reasons}
    lines = verdicts.lines.filter(pl.col("order_id") == order_id)
    diff = diff_lines(_sent_lines(goods_out), lines)
    if status is GoodsOutStatus.COMPLETED:
        # After dispatch, fewer units means a refund or a return (the refunds flow's business);
        # only more goods than were shipped is an edit someone must look at.
        diff = diff.filter(
            (pl.col("change") == "ADD")
            | ((pl.col("change") == "UPDATE") & (pl.col("new_quantity") > pl.col("old_quantity")))
        )
    difference = describe_diff(diff, sent_body, new_body)
    result["difference"] = difference
    if new_body is None:
        return {**result, "outcome": "review", "reasons": reasons}
    if diff.is_empty() and not difference["address_fields_changed"] and not difference["carrier_changed"]:
        return {**result, "outcome": "no_change"}
    if not status.is_editable or policies.order_edit_policy == "manual_review":
        return {**result, "outcome": "review"}
    changes: list = []
    if policies.order_edit_policy == "amend_lines":
        try:
            changes = lines_changes_for(diff)
        except ValueError as exc:
            return {**result, "outcome": "review", "error": str(exc)}
    erp = sync_erp()
    result.update(erp)
    if erp.get("erp_error"):
        return {**result, "outcome": "review", "error": erp["erp_error"]}
    if policies.order_edit_policy != "amend_lines":  # cancel and re-create under a replacement reference
        match cancel_or_reduce(clarus, goods_out["id"], goods_out=goods_out):
            case Cancelled():
                return {**result, "outcome": "replace"}
            case AlreadyDispatched(goods_out=current, status=now_status):
                return {**result, "goods_out": current, "status": now_status, "outcome": "review",
                        "error": f"dispatched meanwhile ({now_status.name})"}
            case Refused(reason=reason):
                return {**result, "outcome": "review", "error": reason}
            case _:  # NotFound: gone from Clarus between our read and the cancel
                return {**result, "outcome": "review", "error": f"goods out {goods_out['id']} not found in Clarus"}
    try:
        clarus.update_goods_out(goods_out["id"], amendment_body(sent_body or new_body, new_body, changes))
        return {**result, "outcome": "amended", "changes": len(changes)}
    except ConnectorError as exc:  # e.g. the warehouse started work between our read and the write
        if not exc.refused:
            raise
        return {**result, "outcome": "review", "error": refusal_text(exc)}


def apply_order_changes(store: StateStore, policies: Policies, *, clarus: Warehouse, netsuite: Erp,
                        now: datetime | None = None, limit: int = 200) -> ChangesReport:
    """Apply pending edits and cancellations of orders that reached NetSuite or Clarus."""
    now = now or utcnow()
    report = ChangesReport()
    with store.read() as con:
        rows = flow.frame(
            con,
            "SELECT o.order_id, o.order_name, o.status, o.change_pending, o.change_cause, o.payload::VARCHAR AS payload,"
            " o.sent_body::VARCHAR AS sent_body, o.clarus_reference, coalesce(o.replacement_count, 0) AS replacement_count,"
            " o.payload_hash,"
            " b.clarus_id, b.netsuite_id FROM orders o"
            " LEFT JOIN bindings b ON b.entity_type = 'order' AND b.our_id = o.order_id"
            " WHERE o.change_pending IS NOT NULL ORDER BY o.updated_at, o.order_id LIMIT ?",
            [limit],
        )
        products = flow.products_table(con)
        carriers = flow.carriers_table(con)
        netsuite_items = flow.netsuite_items_table(con)
    report.pending = rows.height
    if rows.is_empty():
        return report
    edits = rows.filter(pl.col("change_pending") == "edit")
    verdicts = None
    new_bodies: dict[str, dict] = {}
    erp_edits: dict[str, dict] = {}
    erp_missing: dict[str, list] = {}
    if edits.height:
        parsed = parse_orders(edits["payload"], policies.sku_cleaning)
        verdicts = validate_orders(parsed, products=products, policies=policies, known_carriers=carriers)
        references = {r["order_id"]: r["clarus_reference"] or r["order_name"] for r in edits.iter_rows(named=True)}
        new_bodies = body_dicts(build_goods_outs(verdicts, policies=policies, now=now, carriers=carriers, references=references))
        erp_edits, erp_missing = sales_order_edits(verdicts, netsuite_items)

    # intent first: what this run is about to change in Clarus and NetSuite, per order and version
    with store.write() as con:
        intents = {k: v for row in rows.iter_rows(named=True) for k, v in change_keys(row).items()}
        for key in intents:  # an intent of an older version, left pending by a run that died, is over
            flow.supersede_outbound(con, key.rsplit(":", 1)[0] + ":", key, now=now)
        flow.begin_outbound(con, intents, now=now)
    results: list[tuple[dict, dict]] = []
    failures: list[tuple[dict, str]] = []
    for row in rows.iter_rows(named=True):
        try:
            if row["change_pending"] == "cancel":
                results.append((row, _cancel(row, clarus, netsuite)))
            else:
                def sync_erp(row=row) -> dict:
                    return _sync_erp(row, erp_edits, erp_missing, netsuite)

                results.append((row, _edit(row, verdicts, new_bodies.get(row["order_id"]), policies, clarus, sync_erp)))
        except ConnectorError as exc:
            report.failed += 1
            failures.append((row, str(exc)[:500]))
            log.warning("order %s: %s not applied yet (%s); retried on the next run", row["order_id"], row["change_pending"], exc)

    with store.write() as con:
        for row, result in results:
            _record_change(con, row, result, verdicts, new_bodies.get(row["order_id"]), policies, now, report)
            for key, (system, _) in change_keys(row).items():
                remote = (result.get("goods_out") or {}).get("id") if system == "clarus" else row["netsuite_id"]
                flow.finish_outbound(con, key, status="done", remote_id=None if remote is None else str(remote),
                                     error=result.get("error"), now=now)
        for row, error in failures:
            for key in change_keys(row):
                flow.finish_outbound(con, key, status="failed", error=error, now=now)
    return report


def change_keys(row: dict) -> dict[str, tuple[str, str]]:
    """`outbound_writes` keys (-> system, operation) of one pending change: one per system it
    may write to, per order version (a later edit of the same order is a new intent)."""
    change = "cancel" if row["change_pending"] == "cancel" else "edit"
    mark = f"{row['order_id']}:{row.get('payload_hash') or ''}"
    keys = {flow.outbound_key("clarus", f"goods_out_{change}", mark): ("clarus", f"{change}_goods_out")}
    if row.get("netsuite_id"):
        keys[flow.outbound_key("netsuite", f"sales_order_{change}", mark)] = ("netsuite", f"{change}_sales_order")
    return keys


def _refresh_lines(con, order_id: str, verdicts, body: dict) -> None:
    flow.replace_lines(con, verdicts, [order_id])
    record_sent_lines(con, order_id, body)


def _erp_note(row: dict, result: dict) -> str:
    changes = result.get("erp_changes")
    if changes is None:
        return ""
    if not changes:
        return f"; NetSuite sales order {row['netsuite_id']} already matched"
    parts = []
    if changes.get("item"):
        parts.append(f"{len(changes['item']['items'])} line change(s)")
    if changes.get("shippingAddress"):
        parts.append("shipping address updated")
    return f"; NetSuite sales order {row['netsuite_id']}: " + ", ".join(parts)


def _record_change(con, row, result, verdicts, new_body, policies: Policies, now: datetime, report: ChangesReport) -> None:
    order_id, name = row["order_id"], row["order_name"]
    outcome = result["outcome"]
    goods_out = result.get("goods_out") or {}
    status: GoodsOutStatus | None = result.get("status")
    status_name = status.name if status else "unknown"
    cause = row["change_cause"] or row["change_pending"]
    flow.clear_change_pending(con, order_id, now=now, clarus_status=status)

    if outcome == "after_dispatch":
        raise_exception(
            con, "CANCEL_AFTER_DISPATCH", order_id,
            f"order {name} was cancelled in Shopify after Clarus dispatched it (goods out {goods_out.get('id')}, {status_name})",
            {"order_name": name, "clarus_id": goods_out.get("id"), "clarus_status": status_name}, policies=policies, now=now,
        )
        flow.record_event(con, order_id, "CANCEL_AFTER_DISPATCH", f"{cause}: goods already dispatched ({status_name})", system="clarus", now=now)
        report.cancel_after_dispatch += 1
    elif outcome == "cancelled":
        parts = [f"goods out {goods_out.get('id')} cancelled in Clarus" if goods_out else "never reached Clarus"]
        if row["netsuite_id"]:
            parts.append(f"NetSuite sales order {row['netsuite_id']} lines {result.get('closed_lines')} closed")
        flow.set_status(con, order_id, OrderStatus.CANCELLED, f"{cause}: " + "; ".join(parts), system="pipeline",
                        details={"clarus_id": goods_out.get("id"), "netsuite_id": row["netsuite_id"]}, now=now)
        for code in (*HOLD_CODES, "WMS_REJECTED", "ERP_REJECTED", "ORDER_EDIT_NEEDS_REVIEW", "ORDER_NOT_ACKNOWLEDGED"):
            clear_exception(con, code, order_id, now=now)
        report.cancelled += 1
    elif outcome == "no_change":
        why = ("only refunds or returns after dispatch (the refunds flow handles them)"
               if status is GoodsOutStatus.COMPLETED else "nothing the warehouse needs changed")
        flow.record_event(con, order_id, "EDIT_IGNORED", f"{cause}: {why}", now=now)
        report.no_change += 1
    elif outcome == "amended":
        body = json.loads(row["sent_body"]) if row["sent_body"] else new_body
        stored = {**new_body, "data": {**new_body["data"], "attributes": {
            **new_body["data"]["attributes"], "reference": body["data"]["attributes"]["reference"],
            "expected_date_of_dispatch": body["data"]["attributes"]["expected_date_of_dispatch"]}}}
        flow.record_sent_body(con, order_id, stored)
        _refresh_lines(con, order_id, verdicts, stored)
        flow.record_event(con, order_id, "AMENDED", f"{cause}: goods out {goods_out.get('id')} amended while {status_name}"
                          + _erp_note(row, result), system="clarus",
                          details={**(result.get("difference") or {}), "netsuite_changes": result.get("erp_changes")}, now=now)
        clear_exception(con, "ORDER_EDIT_NEEDS_REVIEW", order_id, now=now)
        report.amended += 1
    elif outcome in ("replace", "resend"):
        attempt = int(row["replacement_count"]) + (1 if outcome == "replace" else 0)
        reference = replacement_reference(name, attempt) if attempt else (row["clarus_reference"] or name)
        body = {**new_body, "data": {**new_body["data"], "attributes": {**new_body["data"]["attributes"], "reference": reference}}}
        flow.record_sent_body(con, order_id, body, replacement_count=attempt)
        flow.bind(con, "order", order_id, clarus_id=None, replace_clarus=True, now=now)
        _refresh_lines(con, order_id, verdicts, body)
        what = (f"goods out {goods_out.get('id')} ({row['clarus_reference']}) cancelled in Clarus; replacement {reference} requested"
                if outcome == "replace" else f"goods out {reference} not found in Clarus; the edited order will be sent")
        flow.set_status(con, order_id, OrderStatus.SENT_TO_WMS, f"{cause}: {what}" + _erp_note(row, result), system="clarus",
                        details={"replaced_clarus_id": goods_out.get("id"), "reference": reference, **(result.get("difference") or {}),
                                 "netsuite_changes": result.get("erp_changes")},
                        event_state="REPLACEMENT_REQUESTED" if outcome == "replace" else "SENT_TO_WMS", now=now)
        clear_exception(con, "ORDER_EDIT_NEEDS_REVIEW", order_id, now=now)
        report.replaced += 1
    else:  # review
        difference = result.get("difference") or {}
        reasons = result.get("reasons") or []
        why = (
            f"the edited order is incomplete: {'; '.join(r['message'] for r in reasons)}" if reasons
            else f"{result['error']}" if result.get("erp_error")
            else f"Clarus refused the change: {result['error']}" + _erp_note(row, result) if result.get("error")
            else f"order edits are reviewed by hand (policy {policies.order_edit_policy})" if policies.order_edit_policy == "manual_review" and status is not None and status.is_editable
            else f"Clarus status is {status_name}"
        )
        raise_exception(
            con, "ORDER_EDIT_NEEDS_REVIEW", order_id, f"order {name} changed in Shopify after reaching the warehouse; {why}",
            {"order_name": name, "clarus_id": goods_out.get("id"), "clarus_status": status_name, "difference": difference,
             "reasons": reasons}, policies=policies, now=now,
        )
        flow.record_event(con, order_id, "EDIT_NEEDS_REVIEW", f"{cause}: {why}", details=difference, now=now)
        report.needs_review += 1
