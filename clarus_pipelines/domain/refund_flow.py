"""Refunds in the state database, and the follow-ups in Clarus and NetSuite.

1. `take_in_refunds` (no network): new landed `refunds/create` webhooks, refunds found in
   landed order bodies (the reconciliation read and every orders/* webhook carry the
   order's refunds, so a lost refund webhook is caught) and Clarus goods-in events. Each
   refund not seen before is classified (`clarus_pipelines.domain.refunds`) against what
   the state knows of its order (Clarus status and shipments first, then the Shopify
   order), stored in `refunds` / `refund_lines` / `refund_steps`, and explained in the
   order's history (`order_events`) so finance can see why. A refund seen again changes
   nothing. Refunds left UNCLASSIFIED are classified again with the current rules, so a
   rule added by finance settles them.
2. `run_refund_steps`: the planned actions, one remote write at a time, never holding the
   state's write lock across a call. Each remote write is keyed in `outbound_writes` and
   carries our reference (receipt reference, NetSuite externalId), so a retry or re-run
   never posts twice. Quantities sent to Clarus and NetSuite for cancellations are
   absolute (ordered minus everything cancelled), so running a step again, or the
   order-changes flow having already applied the same change, changes nothing.
   A return's NetSuite item receipt waits ("waiting", not retried) until Clarus has booked
   every returned item in; `apply_receipt` then makes it pending, and the next run
   receives the goods against the return authorisation.
3. `sweep_return_receipts`: asks Clarus about returns still expected (safety net behind
   the goods-in webhooks).
4. `sync_refund_exceptions`: REFUND_UNCLASSIFIED and RETURN_NOT_RECEIVED as findings;
   each clears itself once the refund is classified or the goods are received.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

import duckdb

from clarus_pipelines.connectors.clarus_model import GoodsOutStatus
from clarus_pipelines.domain.goods_out import (
    AlreadyDispatched,
    Cancelled,
    NotFound,
    Reduced,
    Refused,
    cancel_or_reduce,
    clarus_quantities,
)
from clarus_pipelines.domain.ports import ConnectorError
from clarus_pipelines.domain.netsuite_orders import allocate_to_lines
from clarus_pipelines.domain import refunds as R
from clarus_pipelines.domain.order_flow import (
    begin_outbound,
    done_outbound,
    finish_outbound,
    outbound_key,
    record_event,
)
from clarus_pipelines.exception_queue import Finding, clear_exception, raise_exception, sync_exceptions, utcnow
from clarus_pipelines.state.event_log import advance_consumer
from clarus_pipelines.connectors.clarus_model import clarus_record
from clarus_pipelines.policies import Policies
from clarus_pipelines.state import StateStore

log = logging.getLogger(__name__)

CONSUMER = "refunds"
REFUND_TOPIC = "refunds/create"
ORDER_TOPICS = ("orders/create", "orders/updated", "orders/edited", "orders/paid", "orders/cancelled")
RECEIPT_TOPICS = ("goods_in/completed", "goods_in/moved_to_part", "goods_in/updated")
RETURN_KINDS = (R.RefundKind.RETURN.value, R.RefundKind.EXCHANGE.value)
# Orders that never reached Clarus / NetSuite: the orders flow sends only what is left.
NOT_IN_WMS = ("RECEIVED", "HELD", "READY", "SENT_TO_ERP", "WMS_REJECTED", "CANCELLED")
NOT_IN_ERP = ("RECEIVED", "HELD", "READY", "CANCELLED")

LOCAL_ACTIONS = frozenset({
    R.WATCH_RETURN_RECEIPT, R.RAISE_CANCEL_AFTER_DISPATCH, R.RAISE_REFUND_UNCLASSIFIED, R.AWAIT_REPLACEMENT_ORDER,
    R.RAISE_RETURN_NEEDS_REVIEW,
})
RETRYABLE = ("pending", "blocked")  # a step in these states is tried again on the next run
WAITING = "waiting"  # a step that starts only when something happens (the goods are back), never retried as is
CANCEL_STEPS = (R.CLARUS_CANCEL_GOODS_OUT, R.CLARUS_REDUCE_GOODS_OUT)


class RefundState(StrEnum):
    UNCLASSIFIED = "UNCLASSIFIED"
    IN_PROGRESS = "IN_PROGRESS"          # follow-ups still to do (or waiting for data)
    AWAITING_RETURN = "AWAITING_RETURN"  # postings done, goods not yet back in Clarus
    RETURN_RECEIVED = "RETURN_RECEIVED"
    DONE = "DONE"
    ATTENTION = "ATTENTION"              # a follow-up was refused or raised an exception


def return_reference(refund_id: str) -> str:
    """The Clarus goods-in receipt reference of a return (our id, unique per refund)."""
    return f"RET-{refund_id}"


def netsuite_external_id(refund_id: str) -> str:
    return f"shopify-refund-{refund_id}"


def netsuite_receipt_external_id(refund_id: str) -> str:
    """The externalId of a return's NetSuite item receipt (one per refund)."""
    return f"{netsuite_external_id(refund_id)}-receipt"


def _outbound(action: str, refund_id: str) -> str:
    return outbound_key("refund", action.lower(), refund_id)


# =============================================================================== intake


@dataclass
class IntakeReport:
    events: int = 0
    new: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0
    unparseable: int = 0
    reclassified: int = 0
    receipts: int = 0

    def as_metadata(self) -> dict[str, Any]:
        return {**{k: v for k, v in asdict(self).items() if k != "new"}, **{f"new_{k.lower()}": v for k, v in self.new.items()}}


def _new_events(con: duckdb.DuckDBPyConnection, limit: int) -> tuple[list[dict[str, Any]], int]:
    """(events for this flow after our cursor, highest seq looked at)."""
    row = con.execute("SELECT last_seq FROM event_consumers WHERE consumer = ?", [CONSUMER]).fetchone()
    last = row[0] if row else 0
    upper = con.execute("SELECT coalesce(max(seq), 0) FROM landed_events").fetchone()[0]
    cur = con.execute(
        "SELECT seq, landing_id, source, topic, via, payload::VARCHAR AS payload FROM landed_events"
        " WHERE seq > ? AND seq <= ? AND ("
        "  (source = 'shopify' AND topic = ?)"
        "  OR (source = 'shopify' AND topic IN (SELECT unnest(?::VARCHAR[]))"
        "      AND coalesce(json_array_length(payload, '$.refunds'), 0) > 0)"
        "  OR (source = 'clarus' AND topic IN (SELECT unnest(?::VARCHAR[]))))"
        " ORDER BY seq LIMIT ?",
        [last, upper, REFUND_TOPIC, list(ORDER_TOPICS), list(RECEIPT_TOPICS), limit],
    )
    names = [d[0] for d in cur.description]
    events = [dict(zip(names, r)) for r in cur.fetchall()]
    return events, (events[-1]["seq"] if len(events) >= limit else upper)


def take_in_refunds(store: StateStore, policies: Policies, *, now: datetime | None = None,
                    batch_size: int = 1000) -> IntakeReport:
    """Classify and record every new refund and goods-in event (no network)."""
    report = IntakeReport()
    while True:
        now_ = now or utcnow()
        with store.write() as con:
            events, cursor = _new_events(con, batch_size)
            for event in events:
                _take_in_event(con, event, policies, now_, report)
            advance_consumer(con, CONSUMER, cursor, now=now_)
            if len(events) < batch_size:
                report.reclassified += reclassify_unclassified(con, policies, now=now_)
        report.events += len(events)
        if len(events) < batch_size:
            break
    if report.events:
        log.info("refund intake: %s", report)
    return report


def _take_in_event(con, event: Mapping[str, Any], policies: Policies, now: datetime, report: IntakeReport) -> None:
    try:
        payload = json.loads(event["payload"])
    except (TypeError, ValueError):
        report.unparseable += 1
        return
    if event["source"] == "clarus":
        report.receipts += int(apply_receipt(con, clarus_record(payload), now=now, via=event["via"]))
        return
    pairs = R.iter_refunds(payload)
    if event["topic"] == REFUND_TOPIC and not pairs:
        report.unparseable += 1
        log.warning("landing %s: refunds/create body without a refund", event["landing_id"])
    for refund, order in pairs:
        via = event["via"] if event["topic"] == REFUND_TOPIC else f"{event['topic']} ({event['via']})"
        outcome = record_refund(con, refund, policies=policies, order=order, via=via,
                                landing_id=event["landing_id"], now=now)
        if outcome == "duplicate":
            report.duplicates += 1
        elif outcome == "unparseable":
            report.unparseable += 1
        else:
            report.new[outcome] = report.new.get(outcome, 0) + 1


def state_context(con, order_id: str | None, embedded_order: Mapping[str, Any] | None = None
                  ) -> tuple[R.OrderContext | None, Mapping[str, Any] | None, str | None]:
    """(context, Shopify order body, order name) from what the state knows of the order.

    Clarus's goods out status and our shipments say what was dispatched (Clarus runs
    ahead of Shopify, which only hears of a dispatch after NetSuite); the Shopify order
    adds cancellation, tags and its own fulfilments.
    """
    row = None
    if order_id is not None:
        row = con.execute(
            "SELECT payload::VARCHAR, clarus_status, order_name FROM orders WHERE order_id = ?", [order_id]
        ).fetchone()
    order = embedded_order
    if order is None and row and row[0]:
        order = json.loads(row[0])
    wms_status = row[1] if row else None
    order_name = (row[2] if row else None) or (order or {}).get("name")
    if order is None and wms_status is None:
        return None, None, order_name
    source = "Shopify order as received" if order is not None else "state"
    ctx = R.order_context_from_shopify(order or {"id": order_id}, wms_status=wms_status, source=source)
    # Shipments come from Clarus's dispatch events: newer than a goods out status recorded at send time.
    shipped = dict(con.execute(
        "SELECT sl.sku, sum(sl.quantity)::INTEGER FROM shipments s JOIN shipment_lines sl USING (shipment_id)"
        " WHERE s.order_id = ? GROUP BY sl.sku", [order_id],
    ).fetchall())
    if shipped and ctx.wms_status != GoodsOutStatus.COMPLETED:
        dispatched: dict[str, int] = {}
        for line_id, sku, quantity in con.execute(
            "SELECT line_id, sku, quantity FROM order_lines WHERE order_id = ? ORDER BY line_id", [order_id]
        ).fetchall():
            ordered = ctx.ordered.get(line_id, quantity or 0)
            take = min(ordered, shipped.get(sku, 0))
            if take > 0:
                dispatched[line_id] = take
                shipped[sku] -= take
        ctx = replace(ctx, wms_status=None, dispatched=dispatched, source="Clarus shipments")
    return ctx, order, order_name


def _classify(con, refund: Mapping[str, Any], policies: Policies, embedded_order=None):
    order_id = R.shopify_id(refund.get("order_id")) or R.shopify_id((embedded_order or {}).get("id"))
    ctx, order, order_name = state_context(con, order_id, embedded_order)
    result = R.classify_refund(
        refund, order=order, context=ctx, rules=policies.refund_rules,
        return_receipt_days=policies.timings.return_receipt_days, sku_rule=policies.sku_cleaning,
    )
    return result, order_name


def record_refund(con, refund: Mapping[str, Any], *, policies: Policies, order: Mapping[str, Any] | None = None,
                  via: str = "webhook", landing_id: str | None = None, now: datetime | None = None) -> str:
    """Classify and store a refund seen for the first time; returns its kind,
    'duplicate' when it is already known (nothing changes) or 'unparseable'."""
    now = now or utcnow()
    if isinstance(refund.get("refund"), Mapping):
        refund = refund["refund"]
    refund_id = R.shopify_id(refund.get("id"))
    if refund_id is None or R.shopify_id(refund.get("order_id") or (order or {}).get("id")) is None:
        return "unparseable"
    if con.execute("SELECT 1 FROM refunds WHERE refund_id = ?", [refund_id]).fetchone():
        return "duplicate"
    result, order_name = _classify(con, refund, policies, order)
    _store_classification(con, refund, result, order_name=order_name, policies=policies, via=via,
                          landing_id=landing_id, now=now, first=True)
    return result.kind.value


def reclassify_unclassified(con, policies: Policies, *, now: datetime | None = None) -> int:
    """Classify again the refunds left UNCLASSIFIED (rules or order data may have changed)."""
    now = now or utcnow()
    changed = 0
    rows = con.execute(  # a refund finance resolved by hand was posted by hand: never post it again
        "SELECT r.refund_id, r.payload::VARCHAR, r.via, r.landing_id FROM refunds r WHERE r.kind = 'UNCLASSIFIED'"
        " AND NOT EXISTS (SELECT 1 FROM exceptions e WHERE e.code = 'REFUND_UNCLASSIFIED' AND e.entity_id = r.refund_id"
        "   AND e.status = 'resolved' AND e.resolved_by <> 'auto')"
    ).fetchall()
    for refund_id, payload, via, landing_id in rows:
        refund = json.loads(payload)
        result, order_name = _classify(con, refund, policies)
        if result.kind == R.RefundKind.UNCLASSIFIED:
            continue
        _store_classification(con, refund, result, order_name=order_name, policies=policies, via=via,
                              landing_id=landing_id, now=now, first=False)
        changed += 1
    return changed


def _ordered_quantities(refund: Mapping[str, Any], result: R.RefundClassification,
                        ctx_ordered: Mapping[str, int] | None = None) -> dict[str, int]:
    out: dict[str, int] = {}
    for rli in refund.get("refund_line_items") or []:
        li = rli.get("line_item") if isinstance(rli, Mapping) else None
        line_id = R.shopify_id(rli.get("line_item_id")) or R.shopify_id((li or {}).get("id"))
        if line_id and li and li.get("quantity") is not None:
            out[line_id] = int(li["quantity"])
    for line in result.lines:
        if line.line_id and line.line_id not in out and ctx_ordered and line.line_id in ctx_ordered:
            out[line.line_id] = ctx_ordered[line.line_id]
    return out


def _store_classification(con, refund: Mapping[str, Any], result: R.RefundClassification, *, order_name: str | None,
                          policies: Policies, via: str | None, landing_id: str | None, now: datetime, first: bool) -> None:
    refund_id, order_id = result.refund_id, result.order_id
    processed = R.parse_shopify_time(result.processed_at) or now
    is_return = result.kind.value in RETURN_KINDS
    due = R.return_due_at(processed, policies.timings.return_receipt_days) if is_return else None
    reference = return_reference(refund_id) if is_return else None
    state = RefundState.UNCLASSIFIED if result.kind == R.RefundKind.UNCLASSIFIED else RefundState.IN_PROGRESS
    con.execute(
        "INSERT INTO refunds (refund_id, order_id, kind, reasons, amount, state, payload, received_at, updated_at,"
        " order_name, candidates, actions, currency, shipping_amount, processed_at, via, landing_id, classified_at,"
        " return_reference, return_due_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (refund_id) DO UPDATE SET kind = excluded.kind, reasons = excluded.reasons,"
        " state = excluded.state, updated_at = excluded.updated_at, order_name = excluded.order_name,"
        " candidates = excluded.candidates, actions = excluded.actions, classified_at = excluded.classified_at,"
        " return_reference = excluded.return_reference, return_due_at = excluded.return_due_at",
        [refund_id, order_id, result.kind.value, list(result.reasons), result.refunded_amount, state.value,
         json.dumps(refund, default=str), now, now, order_name, list(result.candidates),
         json.dumps([dict(a) for a in result.actions], default=str), result.currency, result.shipping_amount,
         processed, via, landing_id, now, reference, due],
    )
    con.execute("DELETE FROM refund_lines WHERE refund_id = ?", [refund_id])
    con.execute("DELETE FROM refund_steps WHERE refund_id = ?", [refund_id])
    ordered = _ordered_quantities(refund, result)
    if result.lines:
        con.executemany(
            "INSERT INTO refund_lines (refund_id, line_id, sku, quantity, ordered_quantity, restock_type, dispatch,"
            " physical, kind, amount) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            [[refund_id, ln.line_id or f"?{i}", ln.sku, ln.quantity, ordered.get(ln.line_id or ""), ln.restock_type,
              ln.dispatch, ln.physical, ln.kind.value if ln.kind else None, ln.amount]
             for i, ln in enumerate(result.lines)],
        )

    label = order_name or order_id
    money = f"{R.money_text(result.refunded_amount)} {result.currency or ''}".strip()
    already_received = con.execute(
        "SELECT return_received_at IS NOT NULL FROM refunds WHERE refund_id = ?", [refund_id]).fetchone()[0]
    steps = []
    for seq, action in enumerate(result.actions, start=1):
        code = action["action"]
        status, detail = "pending", action.get("description")
        if code == R.WATCH_RETURN_RECEIPT:
            detail = f"goods expected back in Clarus by {due:%Y-%m-%d}"
        elif code == R.NETSUITE_RETURN_RECEIPT and not already_received:
            status, detail = WAITING, "waits until Clarus has booked all the returned goods in"
        elif code == R.AWAIT_REPLACEMENT_ORDER:
            status = "done"
        elif code == R.RAISE_CANCEL_AFTER_DISPATCH:
            status = "exception"
            goods = ", ".join(f"{g['sku']} x{g['quantity']}" for g in action.get("lines") or [])
            raise_exception(
                con, "CANCEL_AFTER_DISPATCH", order_id,
                f"order {label}: Shopify refund {refund_id} cancels {goods}, already dispatched by Clarus",
                {"order_name": order_name, "refund_id": refund_id, "lines": action.get("lines"), "amount": money},
                policies=policies, now=now,
            )
        elif code == R.RAISE_RETURN_NEEDS_REVIEW:
            status = "exception"
            unnamed = "; ".join(
                f"line {g['line_id']} ({g.get('title') or 'untitled'} x{g['quantity']})" for g in action.get("lines") or [])
            raise_exception(
                con, "RETURN_NEEDS_REVIEW", refund_id,
                f"order {label}: Shopify refund {refund_id} restocks {unnamed} as a return, but the line has no SKU "
                "to tell the warehouse",
                {"order_id": order_id, "order_name": order_name, "lines": action.get("lines"), "amount": money},
                policies=policies, now=now,
            )
        elif code == R.RAISE_REFUND_UNCLASSIFIED:
            status = "exception"
            raise_exception(con, "REFUND_UNCLASSIFIED", refund_id, _unclassified_message(refund_id, label, money, result.candidates),
                            {"order_id": order_id, "order_name": order_name, "amount": money,
                             "candidates": list(result.candidates), "reasons": list(result.reasons)},
                            policies=policies, now=now)
        steps.append([refund_id, seq, code, action.get("system", "pipeline"), status, detail, now])
    con.executemany(
        "INSERT INTO refund_steps (refund_id, seq, action, system, status, detail, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
        steps,
    )
    if not first:
        clear_exception(con, "REFUND_UNCLASSIFIED", refund_id, now=now)
    event_state = (
        "REFUND_UNCLASSIFIED" if result.kind == R.RefundKind.UNCLASSIFIED
        else "REFUND_CLASSIFIED" if first else "REFUND_RECLASSIFIED"
    )
    verb = "could not be classified" if result.kind == R.RefundKind.UNCLASSIFIED else f"classified {result.kind.value}"
    record_event(
        con, order_id, event_state,
        f"Shopify refund {refund_id} ({money}) {verb}: " + "; ".join(result.reasons)[:600],
        system="pipeline",
        details={"refund_id": refund_id, "kind": result.kind.value, "candidates": list(result.candidates),
                 "reasons": list(result.reasons), "actions": [a["action"] for a in result.actions],
                 "amount": R.money_text(result.refunded_amount), "currency": result.currency, "via": via},
        now=now,
    )
    refresh_state(con, refund_id, now=now)


def _unclassified_message(refund_id: str, label: str | None, money: str, candidates: Sequence[str]) -> str:
    fits = f"fits {' and '.join(candidates)}" if candidates else "fits no kind"
    return f"Shopify refund {refund_id} on order {label} ({money}) {fits}: nothing posted"


def refresh_state(con, refund_id: str, *, now: datetime | None = None) -> str:
    """Derive the refund's state from its kind, steps and receipt; returns it."""
    row = con.execute("SELECT kind, return_received_at FROM refunds WHERE refund_id = ?", [refund_id]).fetchone()
    if row is None:
        raise KeyError(refund_id)
    kind, received = row
    statuses = Counter(
        s for (s,) in con.execute(
            "SELECT status FROM refund_steps WHERE refund_id = ? AND action <> ?", [refund_id, R.WATCH_RETURN_RECEIPT]
        ).fetchall()
    )
    if kind == R.RefundKind.UNCLASSIFIED:
        state = RefundState.UNCLASSIFIED
    elif statuses["pending"] or statuses["blocked"]:
        state = RefundState.IN_PROGRESS
    elif statuses["rejected"] or statuses["exception"]:
        state = RefundState.ATTENTION
    elif kind in RETURN_KINDS:
        state = RefundState.RETURN_RECEIVED if received else RefundState.AWAITING_RETURN
    else:
        state = RefundState.DONE
    con.execute("UPDATE refunds SET state = ?, updated_at = ? WHERE refund_id = ? AND state IS DISTINCT FROM ?",
                [state.value, now or utcnow(), refund_id, state.value])
    return state.value


# ============================================================================== receipts


def apply_receipt(con, record: Any, *, now: datetime | None = None, via: str = "webhook") -> bool:
    """Record a Clarus goods-in receipt (webhook record or GraphQL node) against its return.

    Once every returned item is back, the return's NetSuite item receipt step goes from
    waiting to pending (same transaction), so the next `run_refund_steps` posts it. A part
    receipt posts nothing: NetSuite receives the whole return once, when it is complete
    (a return that never completes is RETURN_NOT_RECEIVED, for a person to settle).
    Returns True when it belongs to one of our returns and changed what we know.
    """
    if not isinstance(record, Mapping):
        return False
    now = now or utcnow()
    attrs = record.get("attributes") if isinstance(record.get("attributes"), Mapping) else record
    receipt_id = R.shopify_id(record.get("id"))
    reference = attrs.get("reference")
    ext = R.shopify_id(attrs.get("external_system_reference1"))
    row = con.execute(
        "SELECT refund_id, order_id, order_name, return_due_at, return_received_at, return_reference FROM refunds"
        " WHERE kind IN ('RETURN', 'EXCHANGE') AND (clarus_receipt_id = ? OR return_reference = ? OR refund_id = ?)"
        " LIMIT 1",
        [receipt_id, reference, ext],
    ).fetchone()
    if row is None:
        return False
    refund_id, order_id, order_name, due, received_at, reference = row
    received: Counter[str] = Counter()
    for line in attrs.get("lines") or []:
        product = line.get("product") if isinstance(line.get("product"), Mapping) else {}
        sku = product.get("code") or line.get("sku")
        if sku is not None:
            received[str(sku)] += int(float(line.get("received_quantity") or 0))
    lines = con.execute(
        "SELECT line_id, sku, quantity, received_quantity FROM refund_lines"
        " WHERE refund_id = ? AND physical AND sku IS NOT NULL ORDER BY line_id", [refund_id],
    ).fetchall()
    changed = False
    complete = bool(lines)
    for line_id, sku, quantity, before in lines:
        take = min(quantity, received.get(sku, 0))
        received[sku] -= take
        if take != before:
            con.execute("UPDATE refund_lines SET received_quantity = ? WHERE refund_id = ? AND line_id = ?",
                        [take, refund_id, line_id])
            changed = True
        complete = complete and take >= quantity
    if receipt_id:
        con.execute("UPDATE refunds SET clarus_receipt_id = coalesce(clarus_receipt_id, ?) WHERE refund_id = ?",
                    [receipt_id, refund_id])
    if complete and received_at is None:
        at = R.parse_shopify_time(attrs.get("actual_date_of_receipt")) or now
        con.execute("UPDATE refunds SET return_received_at = ?, updated_at = ? WHERE refund_id = ?", [at, now, refund_id])
        con.execute("UPDATE refund_steps SET status = 'done', detail = ?, updated_at = ? WHERE refund_id = ? AND action = ?",
                    [f"received in Clarus {at:%Y-%m-%d %H:%M}", now, refund_id, R.WATCH_RETURN_RECEIPT])
        con.execute("UPDATE refund_steps SET status = 'pending', detail = ?, updated_at = ?"
                    " WHERE refund_id = ? AND action = ? AND status = ?",
                    ["goods back in Clarus: to receive against the return authorisation", now, refund_id,
                     R.NETSUITE_RETURN_RECEIPT, WAITING])
        late = f", {(at - due).days} day(s) after it was due" if due and at > due else ""
        record_event(con, order_id, "RETURN_RECEIVED",
                     f"return for Shopify refund {refund_id} received in Clarus (receipt {reference}){late}",
                     system="clarus", details={"refund_id": refund_id, "receipt_id": receipt_id, "via": via}, now=now)
        refresh_state(con, refund_id, now=now)
        return True
    if changed and not complete:
        got = sum(min(q, r) for _, _, q, r in con.execute(
            "SELECT line_id, sku, quantity, received_quantity FROM refund_lines WHERE refund_id = ? AND physical"
            " AND sku IS NOT NULL", [refund_id]).fetchall())
        expected = sum(q for _, _, q, _ in lines)
        record_event(con, order_id, "RETURN_PART_RECEIVED",
                     f"return for Shopify refund {refund_id}: {got} of {expected} item(s) received in Clarus",
                     system="clarus", details={"refund_id": refund_id, "receipt_id": receipt_id, "via": via}, now=now)
    return changed


def sweep_return_receipts(store: StateStore, clarus: Any, *, now: datetime | None = None, limit: int = 500) -> int:
    """Ask Clarus for each return still expected; returns how many changed."""
    with store.read() as con:
        refs = [r[0] for r in con.execute(
            "SELECT return_reference FROM refunds WHERE kind IN ('RETURN', 'EXCHANGE') AND return_received_at IS NULL"
            " AND clarus_receipt_id IS NOT NULL ORDER BY return_due_at LIMIT ?", [limit],
        ).fetchall()]
    found = []
    for reference in refs:
        try:
            receipt = clarus.find_goods_in_receipt_by_reference(reference)
        except ConnectorError as exc:
            log.warning("return receipt sweep stopped at %s: %s", reference, exc)
            break
        if receipt:
            found.append(receipt)
    if not found:
        return 0
    with store.write() as con:
        return sum(int(apply_receipt(con, r, now=now or utcnow(), via="sweep")) for r in found)


# =============================================================================== steps


@dataclass
class StepsReport:
    done: int = 0
    skipped: int = 0
    pending: int = 0
    blocked: int = 0
    rejected: int = 0
    exceptions: int = 0
    manual: int = 0
    calls: dict[str, int] = field(default_factory=dict)

    def count(self, status: str) -> None:
        attr = {"exception": "exceptions"}.get(status, status)
        setattr(self, attr, getattr(self, attr) + 1)

    def as_metadata(self) -> dict[str, Any]:
        return {**{k: v for k, v in asdict(self).items() if k != "calls"}, **{f"calls_{k}": v for k, v in self.calls.items()}}


@dataclass
class Outcome:
    status: str                        # done, skipped, manual, pending, blocked, rejected, exception
    detail: str
    remote_id: str | None = None
    event: tuple[str, str, str] | None = None          # (state, system, cause) for the order's history
    exception: tuple[str, str, str, dict] | None = None  # (code, entity id, message, details)
    receipt_id: str | None = None


@dataclass
class Work:
    """Everything a refund's steps need, read before any call."""

    refund: dict[str, Any]
    steps: list[dict[str, Any]]
    lines: list[dict[str, Any]]
    order_status: str | None
    goods_out_id: str | None
    sales_order_id: str | None
    products: dict[str, str | None]       # sku -> Clarus product id
    netsuite_items: dict[str, str | None]  # sku -> NetSuite item id
    cancelled: dict[str, int]             # line id -> quantity cancelled by every cancellation refund of the order
    done_remote: dict[str, str | None]    # outbound key -> remote id (already written)

    @property
    def label(self) -> str:
        return self.refund["order_name"] or self.refund["order_id"]

    def action(self, code: str) -> dict[str, Any]:
        return next((a for a in self.refund["actions"] if a["action"] == code), {"action": code})


def _rows(con, query: str, params: Sequence[Any]) -> list[dict[str, Any]]:
    cur = con.execute(query, list(params))
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r)) for r in cur.fetchall()]


def _load_work(con, limit: int, refund_ids: Sequence[str] | None = None) -> list[Work]:
    query = (
        "SELECT r.refund_id, r.order_id, r.order_name, r.kind, r.amount, r.currency, r.shipping_amount,"
        " r.processed_at, r.return_reference, r.return_due_at, r.actions::VARCHAR AS actions, o.status AS order_status,"
        " b.clarus_id AS goods_out_id, b.netsuite_id AS sales_order_id"
        " FROM refunds r LEFT JOIN orders o USING (order_id)"
        " LEFT JOIN bindings b ON b.entity_type = 'order' AND b.our_id = r.order_id"
        " WHERE r.kind <> 'UNCLASSIFIED' AND EXISTS (SELECT 1 FROM refund_steps s WHERE s.refund_id = r.refund_id"
        "   AND s.status IN ('pending', 'blocked') AND s.action NOT IN (SELECT unnest(?::VARCHAR[])))"
    )
    params: list[Any] = [sorted(LOCAL_ACTIONS)]
    if refund_ids is not None:
        query += " AND r.refund_id IN (SELECT unnest(?::VARCHAR[]))"
        params.append(list(refund_ids))
    query += " ORDER BY r.received_at, r.refund_id LIMIT ?"
    params.append(limit)
    work = []
    for refund in _rows(con, query, params):
        refund["actions"] = json.loads(refund["actions"] or "[]")
        rid = refund["refund_id"]
        steps = _rows(con, "SELECT seq, action, system, status, remote_id, detail, attempts FROM refund_steps"
                           " WHERE refund_id = ? ORDER BY seq", [rid])
        lines = _rows(con, "SELECT line_id, sku, quantity, ordered_quantity, dispatch, amount, received_quantity"
                           " FROM refund_lines WHERE refund_id = ? AND physical ORDER BY line_id", [rid])
        if refund["kind"] in RETURN_KINDS:  # a return line with no SKU is RETURN_NEEDS_REVIEW's, not the warehouse's
            lines = [ln for ln in lines if ln["sku"] is not None]
        skus = sorted({ln["sku"] for ln in lines if ln["sku"]})
        items = {r["sku"]: r for r in _rows(
            con, "SELECT sku, clarus_product_id, netsuite_item_id FROM items WHERE sku IN (SELECT unnest(?::VARCHAR[]))", [skus])}
        cancelled = dict(con.execute(
            "SELECT l.line_id, sum(l.quantity)::INTEGER FROM refund_lines l JOIN refunds r USING (refund_id)"
            " WHERE r.order_id = ? AND r.kind = 'CANCELLATION' AND l.physical AND l.dispatch <> 'dispatched'"
            " GROUP BY l.line_id", [refund["order_id"]],
        ).fetchall())
        keys = [_outbound(s["action"], rid) for s in steps]
        work.append(Work(
            refund=refund, steps=steps, lines=lines, order_status=refund["order_status"],
            goods_out_id=refund["goods_out_id"], sales_order_id=refund["sales_order_id"],
            products={s: (items.get(s) or {}).get("clarus_product_id") for s in skus},
            netsuite_items={s: (items.get(s) or {}).get("netsuite_item_id") for s in skus},
            cancelled=cancelled, done_remote=done_outbound(con, keys),
        ))
    return work


def run_refund_steps(store: StateStore, policies: Policies, *, clarus: Any, netsuite: Any, customer_id: str,
                     now: datetime | None = None, limit: int = 200, refund_ids: Sequence[str] | None = None) -> StepsReport:
    """Carry out the pending follow-ups of classified refunds, one remote write at a time."""
    report = StepsReport()
    with store.read() as con:
        work = _load_work(con, limit, refund_ids)
    for item in work:
        for step in item.steps:
            if step["status"] not in RETRYABLE or step["action"] in LOCAL_ACTIONS:
                continue
            _run_step(store, policies, item, step, clarus=clarus, netsuite=netsuite, customer_id=customer_id,
                      now=now, report=report)
    return report


def _run_step(store, policies, item: Work, step: dict[str, Any], *, clarus, netsuite, customer_id, now, report) -> None:
    refund_id = item.refund["refund_id"]
    action = step["action"]
    key = _outbound(action, refund_id)
    if key in item.done_remote:  # the write landed in an earlier run that stopped before recording it
        outcome = Outcome("done", "written in an earlier run", item.done_remote[key])
    else:
        runner = _RUNNERS.get(action)
        if runner is None:
            outcome = Outcome("blocked", f"no automatic handling for {action}: do it by hand")
        else:
            ready = runner.precheck(item, step) if runner.precheck else None
            if ready is not None:
                outcome = ready
            else:
                with store.write() as con:
                    begin_outbound(con, {key: (step["system"], action.lower())}, now=now or utcnow())
                    con.execute("UPDATE refund_steps SET attempts = attempts + 1 WHERE refund_id = ? AND action = ?",
                                [refund_id, action])
                report.calls[step["system"]] = report.calls.get(step["system"], 0) + 1
                try:
                    outcome = runner.call(item, policies=policies, clarus=clarus, netsuite=netsuite, customer_id=customer_id)
                except ConnectorError as exc:
                    outcome = _connector_failure(exc, step["system"], action)
    _record_outcome(store, policies, item, step, key, outcome, now=now or utcnow())
    step["status"] = outcome.status
    step["remote_id"] = outcome.remote_id or step.get("remote_id")
    report.count(outcome.status)


def _connector_failure(exc: ConnectorError, system: str, action: str) -> Outcome:
    """A refusal is final until someone fixes the data; anything else is retried next run."""
    symbol = getattr(exc, "symbol", None) or getattr(exc, "code", None)
    message = getattr(exc, "message", None) or getattr(exc, "detail", None) or str(exc)
    if exc.refused:
        return Outcome("rejected", f"{system} refused {action}: {symbol or exc.status} {message}"[:500])
    return Outcome("pending", f"{system} unavailable, retried next run: {exc}"[:500])


def _record_outcome(store, policies, item: Work, step, key: str, outcome: Outcome, *, now: datetime) -> None:
    refund_id, order_id = item.refund["refund_id"], item.refund["order_id"]
    with store.write() as con:
        previous = con.execute("SELECT status, detail FROM refund_steps WHERE refund_id = ? AND action = ?",
                               [refund_id, step["action"]]).fetchone()
        con.execute(
            "UPDATE refund_steps SET status = ?, detail = ?, remote_id = coalesce(?, remote_id), updated_at = ?"
            " WHERE refund_id = ? AND action = ?",
            [outcome.status, outcome.detail, outcome.remote_id, now, refund_id, step["action"]],
        )
        if outcome.status in ("done", "skipped", "manual", "exception"):
            finish_outbound(con, key, status="done", remote_id=outcome.remote_id, now=now)
        elif outcome.status == "rejected":
            finish_outbound(con, key, status="failed", error=outcome.detail, now=now)
        elif outcome.status == "pending" and con.execute(
                "SELECT 1 FROM outbound_writes WHERE idempotency_key = ?", [key]).fetchone():
            finish_outbound(con, key, status="failed", error=outcome.detail, now=now)
        if outcome.receipt_id:
            con.execute("UPDATE refunds SET clarus_receipt_id = ? WHERE refund_id = ?", [outcome.receipt_id, refund_id])
        if outcome.status in ("rejected", "pending", "blocked"):
            con.execute("UPDATE refunds SET last_error = ? WHERE refund_id = ?", [outcome.detail, refund_id])
        if outcome.exception:
            code, entity, message, details = outcome.exception
            raise_exception(con, code, entity, message, details, policies=policies, now=now)
        # the history gets an entry when something happened, not on every retry of the same wait
        if outcome.event and (previous is None or (previous[0], previous[1]) != (outcome.status, outcome.detail)):
            state, system, cause = outcome.event
            record_event(con, order_id, state, cause, system=system,
                         details={"refund_id": refund_id, "action": step["action"], "status": outcome.status,
                                  "remote_id": outcome.remote_id}, now=now)
        refresh_state(con, refund_id, now=now)


# ----------------------------------------------------------------------- step runners


@dataclass(frozen=True)
class _Runner:
    call: Any
    precheck: Any = None


def _goods(item: Work) -> list[dict[str, Any]]:
    return [ln for ln in item.lines if ln["quantity"] > 0]


def _missing(item: Work, mapping: Mapping[str, str | None], what: str) -> Outcome | None:
    missing = sorted({ln["sku"] or "?" for ln in _goods(item) if not mapping.get(ln["sku"])})
    if missing:
        return Outcome("blocked", f"no {what} for SKU {', '.join(missing)} yet (item master)")
    return None


# --- returns: expected goods-in receipt in Clarus


def _expect_precheck(item: Work, step) -> Outcome | None:
    return _missing(item, item.products, "Clarus product")


def _expect_goods_in(item: Work, *, policies: Policies, clarus, **_) -> Outcome:
    refund = item.refund
    lines = [{"product_id": item.products[ln["sku"]], "quantity": ln["quantity"], "external_system_reference1": ln["line_id"]}
             for ln in _goods(item)]
    receipt_id, created = clarus.create_goods_in_receipt(
        reference=refund["return_reference"], account_id=policies.tenant.account_id,
        warehouse_id=policies.tenant.warehouse_id, lines=lines, expected_date_of_arrival=refund["return_due_at"],
        notes=f"Customer return: order {item.label}, Shopify refund {refund['refund_id']}",
        external_system_reference1=refund["refund_id"],
    )
    goods = ", ".join(f"{ln['sku']} x{ln['quantity']}" for ln in _goods(item))
    detail = f"goods-in receipt {refund['return_reference']} ({receipt_id}) expects {goods}"
    return Outcome("done", detail if created else detail + " (already there)", receipt_id,
                   event=("RETURN_EXPECTED", "clarus", f"{detail} back by {refund['return_due_at']:%Y-%m-%d}"),
                   receipt_id=receipt_id)


# --- returns: NetSuite return authorisation


def _ra_precheck(item: Work, step) -> Outcome | None:
    return _missing(item, item.netsuite_items, "NetSuite item")


def _allocate_order_lines(so: Mapping[str, Any], wanted: list[tuple[str, int]], *, field_name: str) -> list[dict[str, Any]] | None:
    """(item id, quantity) -> [{"orderLine", "quantity"}] over the order's lines with that item,
    limited by `field_name` on each line ('quantityFulfilled' for returns); None when short."""
    lines = ((so.get("item") or {}).get("items") if isinstance(so.get("item"), Mapping) else so.get("item")) or []
    room = {int(ln["line"]): float(ln.get(field_name) or 0) for ln in lines}
    taken, short = allocate_to_lines(lines, wanted, room)
    if short:
        return None
    return [{"orderLine": n, "quantity": q} for n, q in sorted(taken.items())]


def _return_authorisation(item: Work, *, netsuite, customer_id: str, **_) -> Outcome:
    refund = item.refund
    memo = f"Shopify refund {refund['refund_id']} on order {item.label}: customer return"
    wanted = [(item.netsuite_items[ln["sku"]], ln["quantity"]) for ln in _goods(item)]
    external_id = netsuite_external_id(refund["refund_id"])
    if item.sales_order_id:
        so = netsuite.get_sales_order(item.sales_order_id)
        if so is None:
            return Outcome("blocked", f"NetSuite sales order {item.sales_order_id} not found")
        lines = _allocate_order_lines(so, wanted, field_name="quantityFulfilled")
        if lines is None:
            return Outcome("pending", f"waiting for NetSuite to fulfil sales order {item.sales_order_id} "
                                      "before the return is authorised against it")
        body = {"memo": memo, "otherRefNum": item.label, "item": {"items": lines}}
        ra_id, created = netsuite.create_return_authorisation(external_id, body, from_sales_order=item.sales_order_id)
    else:
        body = {
            "entity": {"id": customer_id}, "memo": memo, "otherRefNum": item.label,
            "item": {"items": [
                {"item": {"id": item_id}, "quantity": qty,
                 **({"amount": float(ln["amount"])} if ln.get("amount") is not None else {})}
                for (item_id, qty), ln in zip(wanted, _goods(item))
            ]},
        }
        ra_id, created = netsuite.create_return_authorisation(external_id, body)
    detail = f"return authorisation {ra_id}" + ("" if created else " (already there)")
    return Outcome("done", detail, ra_id, event=("RETURN_AUTHORISED", "netsuite", f"{detail} for Shopify refund {refund['refund_id']}"))


# --- returns: NetSuite item receipt, once the goods are back


def _receipt_precheck(item: Work, step) -> Outcome | None:
    ra_step = next((s for s in item.steps if s["action"] == R.NETSUITE_RETURN_AUTHORISATION), None)
    if ra_step is None or ra_step["status"] in ("rejected", "exception", "skipped", "manual"):
        return Outcome("skipped", "no return authorisation in NetSuite to receive the goods against")
    if ra_step["status"] != "done" or not ra_step.get("remote_id"):
        return Outcome("pending", "waiting for the return authorisation")
    return _missing(item, item.netsuite_items, "NetSuite item")


def _return_receipt(item: Work, *, netsuite, **_) -> Outcome:
    refund = item.refund
    ra_id = next(s["remote_id"] for s in item.steps if s["action"] == R.NETSUITE_RETURN_AUTHORISATION)
    received = [ln for ln in _goods(item) if (ln.get("received_quantity") or 0) > 0]
    if not received:
        return Outcome("blocked", "Clarus has booked none of the returned goods in: nothing to receive")
    lines = [{"item_id": item.netsuite_items[ln["sku"]], "quantity": ln["received_quantity"]} for ln in received]
    try:
        receipt_id, created = netsuite.receive_return(
            ra_id, lines, external_id=netsuite_receipt_external_id(refund["refund_id"]),
            memo=f"Shopify refund {refund['refund_id']} on order {item.label}: returned goods received in Clarus")
    except ValueError as exc:
        return Outcome("rejected", f"return authorisation {ra_id}: {exc}"[:500])
    goods = ", ".join(f"{ln['sku']} x{ln['received_quantity']}" for ln in received)
    detail = f"item receipt {receipt_id} for return authorisation {ra_id}" + ("" if created else " (already there)")
    return Outcome("done", detail, receipt_id,
                   event=("RETURN_RECEIVED_IN_ERP", "netsuite",
                          f"{detail}: {goods} received back for Shopify refund {refund['refund_id']}"))


# --- money only: NetSuite credit memo


def _credit_memo(item: Work, *, policies: Policies, netsuite, customer_id: str, **_) -> Outcome:
    refund = item.refund
    action = item.action(R.NETSUITE_CREDIT_MEMO)
    amount = Decimal(str(action.get("amount") or refund["amount"] or "0"))
    if amount <= 0:
        return Outcome("skipped", "nothing to credit (amount 0)")
    shipping = refund["kind"] == R.RefundKind.SHIPPING_ONLY.value
    rules = policies.refund_rules
    what = "shipping refund" if shipping else "goodwill"
    body = {
        "entity": {"id": customer_id},
        "memo": f"Shopify refund {refund['refund_id']} on order {item.label}: {what}",
        "otherRefNum": item.label,
        "item": {"items": [{
            "item": {"id": rules.netsuite_shipping_item if shipping else rules.netsuite_goodwill_item},
            "quantity": 1, "rate": float(amount), "description": f"{what} ({refund['currency'] or ''})".strip(),
        }]},
    }
    memo_id, created = netsuite.create_credit_memo(netsuite_external_id(refund["refund_id"]), body)
    detail = f"credit memo {memo_id} for {amount} ({what})" + ("" if created else " (already there)")
    return Outcome("done", detail, memo_id, event=("CREDIT_MEMO_POSTED", "netsuite", f"{detail}, Shopify refund {refund['refund_id']}"))


# --- cancellations: Clarus goods out


def _targets(item: Work, current: Mapping[str, int]) -> dict[str, int]:
    """Shopify line id -> quantity the line should have now (never more than it has)."""
    out = {}
    for ln in _goods(item):
        if ln["dispatch"] == "dispatched":
            continue
        ordered = ln["ordered_quantity"] if ln["ordered_quantity"] is not None else current.get(ln["line_id"], 0)
        target = max(0, ordered - item.cancelled.get(ln["line_id"], ln["quantity"]))
        out[ln["line_id"]] = min(target, current.get(ln["line_id"], target))
    return out


def _cancel_precheck(item: Work, step) -> Outcome | None:
    if item.goods_out_id:
        return None
    if item.order_status in NOT_IN_WMS:
        return Outcome("skipped", f"order {item.label} never reached Clarus ({item.order_status}): "
                                  "nothing to cancel there; the orders flow sends only what is left")
    if item.order_status is None:
        return Outcome("blocked", f"order {item.label} not known yet: waiting for it to land")
    return Outcome("blocked", f"order {item.label} is {item.order_status} but its Clarus goods out id is not known yet")


def _dispatched_exception(item: Work, why: str) -> Outcome:
    goods = ", ".join(f"{ln['sku']} x{ln['quantity']}" for ln in _goods(item))
    message = f"order {item.label}: Shopify refund {item.refund['refund_id']} cancels {goods}, but Clarus {why}"
    return Outcome("exception", f"Clarus {why}: CANCEL_AFTER_DISPATCH raised",
                   event=("CANCEL_AFTER_DISPATCH", "clarus", message),
                   exception=("CANCEL_AFTER_DISPATCH", item.refund["order_id"], message,
                              {"order_name": item.label, "refund_id": item.refund["refund_id"], "lines": _goods(item)}))


def _cancel_or_reduce(item: Work, *, clarus, **_) -> Outcome:
    whole = any(s["action"] == R.CLARUS_CANCEL_GOODS_OUT for s in item.steps)
    result = cancel_or_reduce(clarus, item.goods_out_id, reduce_to=None if whole else (lambda current: _targets(item, current)))
    refund_id = item.refund["refund_id"]
    match result:
        case NotFound():
            return Outcome("blocked", f"Clarus goods out {item.goods_out_id} not found")
        case Cancelled(goods_out=goods_out, already=True):
            return Outcome("done", f"goods out {goods_out['reference']} already cancelled in Clarus", item.goods_out_id)
        case Cancelled(goods_out=goods_out, was=was):
            detail = f"goods out {goods_out['reference']} cancelled in Clarus (was {was.name})"
            return Outcome("done", detail, item.goods_out_id,
                           event=("GOODS_OUT_CANCELLED", "clarus", f"{detail} for Shopify refund {refund_id}"))
        case AlreadyDispatched(goods_out=goods_out, meanwhile=meanwhile):
            why = "dispatched goods out {} meanwhile" if meanwhile else "already dispatched goods out {}"
            return _dispatched_exception(item, why.format(goods_out["reference"]))
        case Reduced(goods_out=goods_out, changes=()):
            return Outcome("done", f"goods out {goods_out['reference']} already has the reduced quantities", item.goods_out_id)
        case Reduced(goods_out=goods_out, changes=changes):
            detail = f"goods out {goods_out['reference']} reduced in Clarus: {_described(changes)}"
            return Outcome("done", detail, item.goods_out_id,
                           event=("GOODS_OUT_REDUCED", "clarus", f"{detail} for Shopify refund {refund_id}"))
        case Refused(error=error) if error is not None:
            return _connector_failure(error, "clarus", R.CLARUS_CANCEL_GOODS_OUT if whole else R.CLARUS_REDUCE_GOODS_OUT)
        case Refused(goods_out=goods_out, status=status):
            current = clarus_quantities(goods_out)
            described = _described(tuple((lid, current[lid], t) for lid, t in _targets(item, current).items()
                                         if current.get(lid, 0) > t))
            message = (f"order {item.label}: Shopify refund {refund_id} cancels {described}, but the "
                       f"warehouse is already working on goods out {goods_out['reference']} ({status.name}): short it by hand")
            return Outcome("exception", f"goods out is {status.name}: ORDER_EDIT_NEEDS_REVIEW raised",
                           event=("ORDER_EDIT_NEEDS_REVIEW", "clarus", message),
                           exception=("ORDER_EDIT_NEEDS_REVIEW", item.refund["order_id"], message,
                                      {"order_name": item.label, "refund_id": refund_id, "changes": described}))
    raise AssertionError(f"unhandled goods out change {result!r}")


def _described(changes: Sequence[tuple[str, int, int]]) -> str:
    return ", ".join(f"line {line} {was} -> {now}" for line, was, now in changes)


# --- cancellations: NetSuite sales order lines


def _close_precheck(item: Work, step) -> Outcome | None:
    clarus_step = next((s for s in item.steps if s["action"] in CANCEL_STEPS), None)
    if clarus_step is not None:
        if clarus_step["status"] == "exception":
            return Outcome("skipped", "Clarus could not cancel (dispatched or picking): NetSuite lines left open")
        if clarus_step["status"] in RETRYABLE:
            return Outcome("pending", "waits for the Clarus cancellation first")
    if item.sales_order_id:
        return _missing(item, item.netsuite_items, "NetSuite item")
    if item.order_status in NOT_IN_ERP:
        return Outcome("skipped", f"order {item.label} never reached NetSuite ({item.order_status}): nothing to close")
    return Outcome("blocked", f"order {item.label}: NetSuite sales order id not known yet")


def _close_lines(item: Work, *, netsuite, **_) -> Outcome:
    so = netsuite.get_sales_order(item.sales_order_id)
    if so is None:
        return Outcome("blocked", f"NetSuite sales order {item.sales_order_id} not found")
    so_lines = ((so.get("item") or {}).get("items") if isinstance(so.get("item"), Mapping) else so.get("item")) or []
    by_item: dict[str, list[dict[str, Any]]] = {}
    for ln in so_lines:
        if not ln.get("isClosed"):
            by_item.setdefault(str((ln.get("item") or {}).get("id")), []).append(ln)
    close, update, notes = [], [], []
    for ln in _goods(item):
        if ln["dispatch"] == "dispatched":
            continue
        candidates = by_item.get(str(item.netsuite_items[ln["sku"]])) or []
        if not candidates:
            notes.append(f"{ln['sku']}: no open line")
            continue
        so_line = candidates.pop(0)
        quantity = int(float(so_line.get("quantity") or 0))
        fulfilled = int(float(so_line.get("quantityFulfilled") or 0))
        ordered = ln["ordered_quantity"] if ln["ordered_quantity"] is not None else quantity
        target = max(fulfilled, min(quantity, ordered - item.cancelled.get(ln["line_id"], ln["quantity"])))
        if target <= 0:
            close.append(int(so_line["line"]))
        elif target < quantity:
            update.append({"line": int(so_line["line"]), "quantity": target})
    if update:
        netsuite.update_sales_order(item.sales_order_id, {"item": {"items": update}})
    if close:
        netsuite.close_sales_order_lines(item.sales_order_id, close)
    if not close and not update:
        return Outcome("done", f"sales order {item.sales_order_id} already reflects the cancellation"
                               + (f" ({'; '.join(notes)})" if notes else ""), item.sales_order_id)
    parts = ([f"closed line(s) {', '.join(map(str, close))}"] if close else []) + \
            ([f"reduced line(s) {', '.join(str(u['line']) + ' to ' + str(u['quantity']) for u in update)}"] if update else [])
    detail = f"sales order {item.sales_order_id}: " + "; ".join(parts)
    return Outcome("done", detail, item.sales_order_id,
                   event=("SALES_ORDER_LINES_CLOSED", "netsuite", f"{detail} for Shopify refund {item.refund['refund_id']}"))


def _replacement_precheck(item: Work, step) -> Outcome | None:
    """Exchange items are added to the original order by Shopify; sending them as a second
    goods out here could ship them twice next to the order-changes flow, so ops decide."""
    action = item.action(R.REPLACEMENT_ORDER)
    goods = ", ".join(f"{g.get('sku') or g.get('variant_id')} x{g['quantity']}" for g in action.get("lines") or [])
    detail = (f"exchange items {goods} for order {item.label}: Shopify adds them to the order; "
              "ops check they reach Clarus (order-changes flow or a new goods out)")
    return Outcome("manual", detail, event=("EXCHANGE_REPLACEMENT_NEEDED", "pipeline", detail))


_RUNNERS: dict[str, _Runner] = {
    R.CLARUS_EXPECT_GOODS_IN: _Runner(_expect_goods_in, _expect_precheck),
    R.NETSUITE_RETURN_AUTHORISATION: _Runner(_return_authorisation, _ra_precheck),
    R.NETSUITE_RETURN_RECEIPT: _Runner(_return_receipt, _receipt_precheck),
    R.NETSUITE_CREDIT_MEMO: _Runner(_credit_memo),
    R.CLARUS_CANCEL_GOODS_OUT: _Runner(_cancel_or_reduce, _cancel_precheck),
    R.CLARUS_REDUCE_GOODS_OUT: _Runner(_cancel_or_reduce, _cancel_precheck),
    R.NETSUITE_CLOSE_LINES: _Runner(_close_lines, _close_precheck),
    R.REPLACEMENT_ORDER: _Runner(None, _replacement_precheck),
}


# ============================================================================ exceptions


def return_not_received_findings(con, now: datetime) -> list[Finding]:
    rows = _rows(
        con,
        "SELECT r.refund_id, r.order_id, r.order_name, r.return_due_at, r.return_reference, r.clarus_receipt_id,"
        " sum(l.quantity)::INTEGER AS expected, sum(l.received_quantity)::INTEGER AS received"
        " FROM refunds r JOIN refund_lines l ON l.refund_id = r.refund_id AND l.physical AND l.sku IS NOT NULL"
        " WHERE r.kind IN ('RETURN', 'EXCHANGE') AND r.return_received_at IS NULL AND r.return_due_at <= ?"
        " GROUP BY ALL ORDER BY r.return_due_at",
        [now],
    )
    return [
        Finding(
            r["refund_id"],
            f"return for Shopify refund {r['refund_id']} on order {r['order_name'] or r['order_id']}: "
            f"{r['received'] or 0} of {r['expected'] or 0} item(s) received in Clarus; due by {r['return_due_at']:%Y-%m-%d}",
            {"order_id": r["order_id"], "order_name": r["order_name"], "due": r["return_due_at"],
             "receipt_reference": r["return_reference"], "clarus_receipt_id": r["clarus_receipt_id"],
             "expected": r["expected"], "received": r["received"],
             "days_late": (now - r["return_due_at"]).days},
        )
        for r in rows
    ]


def unclassified_findings(con) -> list[Finding]:
    """UNCLASSIFIED refunds, except those finance resolved by hand (posted manually)."""
    rows = _rows(
        con,
        "SELECT r.refund_id, r.order_id, r.order_name, r.amount, r.currency, r.candidates, r.reasons FROM refunds r"
        " WHERE r.kind = 'UNCLASSIFIED' AND NOT EXISTS (SELECT 1 FROM exceptions e WHERE e.code = 'REFUND_UNCLASSIFIED'"
        "   AND e.entity_id = r.refund_id AND e.status = 'resolved' AND e.resolved_by <> 'auto')"
        " ORDER BY r.received_at",
        [],
    )
    return [
        Finding(
            r["refund_id"],
            _unclassified_message(r["refund_id"], r["order_name"] or r["order_id"],
                                  f"{R.money_text(r['amount'])} {r['currency'] or ''}".strip(), r["candidates"] or []),
            {"order_id": r["order_id"], "order_name": r["order_name"], "candidates": r["candidates"], "reasons": r["reasons"]},
        )
        for r in rows
    ]


def sync_refund_exceptions(store: StateStore, policies: Policies, *, now: datetime | None = None,
                           codes: Sequence[str] = ("REFUND_UNCLASSIFIED", "RETURN_NOT_RECEIVED")) -> dict[str, dict[str, str]]:
    """Make REFUND_UNCLASSIFIED and RETURN_NOT_RECEIVED match the refunds now."""
    now = now or utcnow()
    outcome: dict[str, dict[str, str]] = {}
    with store.write() as con:
        if "REFUND_UNCLASSIFIED" in codes:
            outcome["REFUND_UNCLASSIFIED"] = sync_exceptions(con, "REFUND_UNCLASSIFIED", unclassified_findings(con),
                                                             policies=policies, now=now)
        if "RETURN_NOT_RECEIVED" in codes:
            outcome["RETURN_NOT_RECEIVED"] = sync_exceptions(con, "RETURN_NOT_RECEIVED",
                                                             return_not_received_findings(con, now),
                                                             policies=policies, now=now)
    return outcome


# =============================================================================== reading


def refund_summary(con) -> dict[str, Any]:
    """Counts by kind and state, for asset metadata and the dashboard."""
    by_kind = dict(con.execute("SELECT kind, count(*) FROM refunds GROUP BY kind").fetchall())
    by_state = dict(con.execute("SELECT state, count(*) FROM refunds GROUP BY state").fetchall())
    return {"by_kind": by_kind, "by_state": by_state}
