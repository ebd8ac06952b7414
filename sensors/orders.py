"""Orders that need attention after intake: held orders re-checked, edits and cancellations applied.

- `recheck_held_orders`: every `timings.recheck_held_minutes`, read each held order again
  from Shopify (the source may have been fixed without a webhook reaching us), re-validate
  it against the current item master and ship-method table, release it when complete, and
  raise its hold to the owner once it has been held past `timings.held_alert_minutes`.
- `apply_order_changes`: orders flagged at intake because Shopify changed them after they
  reached NetSuite or Clarus. An edit, while Clarus's goods out is DRAFT or PENDING, is
  applied by `order_edit_policy` (amend the lines through `lines_changes`, or cancel and
  re-create under a replacement reference such as "#1001-R1"); later, or by policy, it is
  ORDER_EDIT_NEEDS_REVIEW with the difference. A cancellation cancels the goods out and
  closes the NetSuite sales order's lines; if Clarus already dispatched, it is
  CANCEL_AFTER_DISPATCH for CX and finance.

Sensors start the jobs; the work is in plain functions. The state file is never held
across a call to another system.
"""

import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

import dagster as dg
import polars as pl

from clarus_pipelines.assets.orders import (
    CONSUMER,
    OrdersConfig,
    intake_batch,
    orders_job,
    record_sent_lines,
    refresh_carriers,
    revalidate,
    send_ready_orders,
)
from clarus_pipelines.connectors.clarus import ClarusRejected, ClarusResource
from clarus_pipelines.connectors.clarus_model import EDITABLE_STATUSES, GoodsOutStatus
from clarus_pipelines.domain.ports import ConnectorError
from clarus_pipelines.connectors.netsuite import NetSuiteError, NetSuiteResource
from clarus_pipelines.connectors.shopify import ShopifyResource
from clarus_pipelines.domain import order_flow as flow
from clarus_pipelines.domain.goods_out import (
    amendment_body,
    body_dicts,
    build_goods_outs,
    describe_diff,
    diff_lines,
    lines_changes_for,
    replacement_reference,
    sent_lines_frame,
)
from clarus_pipelines.domain.netsuite_orders import sales_order_edits
from clarus_pipelines.domain.order_flow import OrderStatus
from clarus_pipelines.domain.orders import HOLD_CODES, parse_orders, validate_orders
from clarus_pipelines.exception_queue import clear_exception, raise_exception, utcnow
from clarus_pipelines.state.event_log import new_events
from clarus_pipelines.resources import PoliciesResource, StateStoreResource
from clarus_pipelines.sensors.event_path import event_path_active
from clarus_pipelines.settings import get_policies
from clarus_pipelines.policies import Policies
from clarus_pipelines.state import StateStore

log = logging.getLogger(__name__)

DISPATCHED = frozenset({GoodsOutStatus.COMPLETED, GoodsOutStatus.PART})


# --------------------------------------------------------------------- held re-check


@dataclass
class RecheckReport:
    held: int = 0
    fetched: int = 0
    fetch_failed: int = 0
    released: int = 0
    still_held: int = 0
    raised: int = 0


def recheck_held_orders(store: StateStore, policies: Policies, *, shopify: ShopifyResource,
                        now: datetime | None = None, limit: int = 500) -> RecheckReport:
    """Re-read held orders from Shopify, re-validate them, release the complete ones."""
    now = now or utcnow()
    report = RecheckReport()
    with store.read() as con:
        held = flow.frame(
            con, "SELECT order_id FROM orders WHERE status = 'HELD' ORDER BY held_since, order_id LIMIT ?", [limit]
        )["order_id"].to_list()
    report.held = len(held)
    if not held:
        return report
    fetched: list[dict[str, Any]] = []
    for order_id in held:
        try:
            order = shopify.get_order(order_id)
        except ConnectorError as exc:
            report.fetch_failed += 1
            log.warning("re-check of held order %s: Shopify read failed: %s", order_id, exc)
            continue
        if order is not None:
            fetched.append(order)
    report.fetched = len(fetched)
    with store.write() as con:
        if fetched:
            landed = pl.DataFrame(
                {
                    "landing_id": [f"recheck:{o.get('id')}:{now.isoformat()}" for o in fetched],
                    "topic": ["orders/recheck"] * len(fetched),
                    "received_at": [now] * len(fetched),
                    "payload": [json.dumps(o) for o in fetched],
                },
                schema={"landing_id": pl.Utf8, "topic": pl.Utf8, "received_at": pl.Datetime, "payload": pl.Utf8},
            )
            intake_batch(con, policies, landed, now=now, record_landings=False, sync_holds=False)
        # Also re-validate unchanged orders: the item master or the ship-method table may be fixed.
        _, transitions = revalidate(con, policies, held, now=now, cause="held re-check")
        outcome = flow.sync_hold_exceptions(con, policies, now=now)
        states = flow.frame(con, "SELECT status, count(*) AS n FROM orders WHERE order_id IN (SELECT unnest(?::VARCHAR[])) GROUP BY status", [held])
    counts = dict(zip(states["status"].to_list(), states["n"].to_list()))
    report.still_held = counts.get(OrderStatus.HELD.value, 0)
    report.released = counts.get(OrderStatus.READY.value, 0) + counts.get(OrderStatus.SENT_TO_ERP.value, 0)
    report.raised = sum(1 for per_code in outcome.values() for v in per_code.values() if v in ("raised", "reopened"))
    return report


# ------------------------------------------------------------------------ changes


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


def _status(goods_out: dict | None) -> GoodsOutStatus | None:
    if not goods_out:
        return None
    return GoodsOutStatus.from_code(goods_out["goods_out_status"]["code"])


def _find_goods_out(clarus: ClarusResource, row: dict) -> dict | None:
    if row["clarus_id"]:
        return clarus.get_goods_out(row["clarus_id"])
    if row["clarus_reference"]:  # requested, never acknowledged: Clarus may have it anyway
        return clarus.find_goods_out_by_reference(row["clarus_reference"])
    return None


def _cancel(row: dict, clarus: ClarusResource, netsuite: NetSuiteResource) -> dict:
    goods_out = _find_goods_out(clarus, row)
    status = _status(goods_out)
    result: dict[str, Any] = {"goods_out": goods_out, "status": status}
    if status in DISPATCHED:
        return {**result, "outcome": "after_dispatch"}
    if goods_out is not None and status is not GoodsOutStatus.CANCELLED:
        try:
            goods_out = clarus.cancel_goods_out(goods_out["id"])
            result.update(goods_out=goods_out, status=_status(goods_out))
        except ClarusRejected as exc:
            current = clarus.get_goods_out(goods_out["id"])
            if _status(current) in DISPATCHED:  # dispatched between our read and the cancel
                return {**result, "goods_out": current, "status": _status(current), "outcome": "after_dispatch"}
            return {**result, "outcome": "review", "error": f"{exc.code} {exc.message}"}
    closed = netsuite.close_open_lines(row["netsuite_id"]) if row["netsuite_id"] else []
    return {**result, "outcome": "cancelled", "closed_lines": closed}


def _sync_erp(row: dict, erp_edits: dict, erp_missing: dict, netsuite: NetSuiteResource) -> dict:
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
    except NetSuiteError as exc:
        if exc.refused:
            # a refusal (e.g. the order was closed in NetSuite) will not pass on a retry: a person decides
            return {"erp_error": f"NetSuite refused to change sales order {row['netsuite_id']}: {exc.code or exc.status} {exc.detail or exc}"}
        raise  # unavailable: the edit stays pending and the next run retries it
    return {"erp_changes": changes}


def _edit(row: dict, verdicts, new_body: dict | None, policies: Policies, clarus: ClarusResource,
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
    if status not in EDITABLE_STATUSES or policies.order_edit_policy == "manual_review":
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
    try:
        if policies.order_edit_policy == "amend_lines":
            clarus.update_goods_out(goods_out["id"], amendment_body(sent_body or new_body, new_body, changes))
            return {**result, "outcome": "amended", "changes": len(changes)}
        clarus.cancel_goods_out(goods_out["id"])
        return {**result, "outcome": "replace"}
    except ClarusRejected as exc:  # e.g. the warehouse started work between our read and the write
        return {**result, "outcome": "review", "error": f"{exc.code} {exc.message}"}


def apply_order_changes(store: StateStore, policies: Policies, *, clarus: ClarusResource, netsuite: NetSuiteResource,
                        now: datetime | None = None, limit: int = 200) -> ChangesReport:
    """Apply pending edits and cancellations of orders that reached NetSuite or Clarus."""
    now = now or utcnow()
    report = ChangesReport()
    with store.read() as con:
        rows = flow.frame(
            con,
            "SELECT o.order_id, o.order_name, o.status, o.change_pending, o.change_cause, o.payload::VARCHAR AS payload,"
            " o.sent_body::VARCHAR AS sent_body, o.clarus_reference, coalesce(o.replacement_count, 0) AS replacement_count,"
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

    results: list[tuple[dict, dict]] = []
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
            log.warning("order %s: %s not applied yet (%s); retried on the next run", row["order_id"], row["change_pending"], exc)

    with store.write() as con:
        for row, result in results:
            _record_change(con, row, result, verdicts, new_bodies.get(row["order_id"]), policies, now, report)
    return report


def _clear_pending(con, order_id: str, now: datetime, clarus_status: GoodsOutStatus | None) -> None:
    con.execute(
        "UPDATE orders SET change_pending = NULL, change_cause = NULL, updated_at = ?,"
        " clarus_status = coalesce(?, clarus_status) WHERE order_id = ?",
        [now, int(clarus_status) if clarus_status is not None else None, order_id],
    )


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
    _clear_pending(con, order_id, now, status)

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
        con.execute("UPDATE orders SET sent_body = ?::JSON WHERE order_id = ?", [json.dumps(stored), order_id])
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
        con.execute(
            "UPDATE orders SET sent_body = ?::JSON, clarus_reference = ?, replacement_count = ? WHERE order_id = ?",
            [json.dumps(body), reference, attempt, order_id],
        )
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
            else f"order edits are reviewed by hand (policy {policies.order_edit_policy})" if policies.order_edit_policy == "manual_review" and status in EDITABLE_STATUSES
            else f"Clarus status is {status_name}"
        )
        raise_exception(
            con, "ORDER_EDIT_NEEDS_REVIEW", order_id, f"order {name} changed in Shopify after reaching the warehouse; {why}",
            {"order_name": name, "clarus_id": goods_out.get("id"), "clarus_status": status_name, "difference": difference,
             "reasons": reasons}, policies=policies, now=now,
        )
        flow.record_event(con, order_id, "EDIT_NEEDS_REVIEW", f"{cause}: {why}", details=difference, now=now)
        report.needs_review += 1


# ------------------------------------------------------------------------- Dagster


@dg.op(description="Re-read held orders from Shopify, re-validate them, release the complete ones, raise the old ones.")
def recheck_held_orders_op(context: dg.OpExecutionContext, state: StateStoreResource, policies: PoliciesResource,
                           shopify: ShopifyResource) -> dg.Nothing:
    report = recheck_held_orders(state.store(), policies.load(), shopify=shopify)
    context.log.info("held re-check: %s", report)
    context.add_output_metadata(asdict(report))


@dg.op(description="Apply Shopify edits and cancellations of orders already in NetSuite or Clarus.")
def apply_order_changes_op(context: dg.OpExecutionContext, state: StateStoreResource, policies: PoliciesResource,
                           clarus: ClarusResource, netsuite: NetSuiteResource) -> dg.Nothing:
    report = apply_order_changes(state.store(), policies.load(), clarus=clarus, netsuite=netsuite)
    context.log.info("order changes: %s", report)
    context.add_output_metadata(asdict(report))


@dg.op(ins={"after": dg.In(dg.Nothing)}, description="Send released and replacement orders to NetSuite and Clarus.")
def send_ready_orders_op(context: dg.OpExecutionContext, config: OrdersConfig, state: StateStoreResource,
                         policies: PoliciesResource, clarus: ClarusResource, netsuite: NetSuiteResource) -> None:
    store = state.store()
    refresh_carriers(store, clarus)
    policy = policies.load()
    report = send_ready_orders(store, policy, netsuite=netsuite, clarus=clarus, customer_id=config.customer_id(policy))
    context.log.info("orders sent: %s", report)


@dg.job(description="Re-check held orders against Shopify; send the ones now complete.", tags={"flow": "orders"})
def held_orders_recheck_job():
    send_ready_orders_op(after=recheck_held_orders_op())


@dg.job(description="Apply order edits and cancellations to Clarus and NetSuite; send replacements.", tags={"flow": "orders"})
def order_changes_job():
    send_ready_orders_op(after=apply_order_changes_op())


def _recheck_interval_minutes() -> int:
    try:
        return get_policies().timings.recheck_held_minutes
    except Exception:  # no policies file where the code location loads: the default
        return 15


def _item_master_fingerprint(con) -> str:
    count, latest = con.execute(
        "SELECT count(clarus_product_id), max(updated_at) FROM items WHERE clarus_product_id IS NOT NULL"
    ).fetchall()[0]
    return f"{count}:{latest:%Y%m%dT%H%M%S.%f}" if latest else "empty"


@dg.sensor(job=held_orders_recheck_job, minimum_interval_seconds=60,
           default_status=dg.DefaultSensorStatus.RUNNING,
           description="Re-check held orders every recheck_held_minutes, and at once when the item master "
           "changes (a SKU_UNKNOWN hold may now resolve).")
def held_orders_recheck_sensor(context: dg.SensorEvaluationContext, state: StateStoreResource):
    cursor = json.loads(context.cursor) if context.cursor else {}
    with state.store().read() as con:
        held, oldest = con.execute("SELECT count(*), min(held_since) FROM orders WHERE status = 'HELD'").fetchall()[0]
        master = _item_master_fingerprint(con)
    if not held:
        return dg.SkipReason("no held orders")
    now = utcnow()
    last = datetime.fromisoformat(cursor["last_run"]) if cursor.get("last_run") else None
    due = last is None or now - last >= timedelta(minutes=_recheck_interval_minutes())
    master_changed = cursor.get("master") not in (None, master)
    if not (due or master_changed):
        return dg.SkipReason(
            f"{held} order(s) held; next re-check at {last + timedelta(minutes=_recheck_interval_minutes()):%H:%M} UTC "
            "or when the item master changes"
        )
    reason = "item master changed" if master_changed and not due else "schedule"
    return dg.SensorResult(
        run_requests=[dg.RunRequest(
            run_key=f"recheck:{now:%Y%m%dT%H%M}:{master}",
            tags={"orders/held": str(held), "orders/oldest_hold": f"{oldest:%Y-%m-%dT%H:%M}", "orders/recheck": reason},
        )],
        cursor=json.dumps({"last_run": now.isoformat(), "master": master}),
    )


@dg.sensor(job=order_changes_job, minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING,
           description="Start the order-changes job when edits or cancellations of sent orders wait.")
def order_changes_sensor(context: dg.SensorEvaluationContext, state: StateStoreResource):
    with state.store().read() as con:
        waiting, latest = con.execute(
            "SELECT count(*), max(updated_at) FROM orders WHERE change_pending IS NOT NULL"
        ).fetchall()[0]
    if not waiting:
        return dg.SkipReason("no order edits or cancellations waiting")
    # One run per new change; a change a failed run left behind is retried every few minutes.
    bucket = utcnow().replace(second=0, microsecond=0)
    bucket -= timedelta(minutes=bucket.minute % 5)
    return dg.RunRequest(run_key=f"changes:{latest:%Y%m%dT%H%M%S.%f}:{waiting}:{bucket:%H%M}")


@dg.sensor(job=orders_job, minimum_interval_seconds=10, default_status=dg.DefaultSensorStatus.RUNNING,
           description="Start the orders job when new Shopify order events landed or released orders wait to be sent.")
def orders_sensor(context: dg.SensorEvaluationContext, state: StateStoreResource):
    if event_path_active(context):  # the running event_path drain takes the orders in (sensors/event_path.py)
        return dg.SkipReason("an event_path run is queued or running; it takes new orders in")
    with state.store().read() as con:
        events = new_events(con, CONSUMER, source="shopify", topics=flow.ORDER_TOPICS, limit=1)
        sendable = len(flow.due_for_sending(con))
    if not events and not sendable:
        return dg.SkipReason("no new order events and nothing waiting to be sent")
    bucket = utcnow().replace(second=0, microsecond=0)
    bucket -= timedelta(minutes=bucket.minute % 5)
    key = f"orders:{events[0]['seq']}:{bucket:%H%M}" if events else f"orders:send:{sendable}:{bucket:%Y%m%dT%H%M}"
    return dg.RunRequest(run_key=key)


defs = dg.Definitions(
    jobs=[held_orders_recheck_job, order_changes_job],
    sensors=[held_orders_recheck_sensor, order_changes_sensor, orders_sensor],
)
