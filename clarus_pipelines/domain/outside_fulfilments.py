"""Fulfilments made outside the warehouse: Clarus decides fulfilment, Shopify only records it.

A fulfilment created by hand in Shopify admin, or by another app, lands as a
`fulfillments/create` webhook like ours does. Left alone, Shopify says the goods went while
the Clarus goods out may still be picked and shipped (sent twice), and stock in Shopify and
the warehouse disagree.

1. `take_in_fulfilments` (no network): each landed `fulfillments/create` is recorded once
   in `channel_fulfilments`.
2. `judge_fulfilments` (no network): once a fulfilment is older than
   `outside_fulfilment.grace_minutes` (our own fulfilment is recorded by the dispatch flow
   right after Shopify answers, so a short grace covers that race), it is *ours* when a
   shipment we know carries its id or its tracking number, else *outside*: it raises
   FULFILLED_OUTSIDE_WMS on the order and records the policy's action (`hold` or `cancel`).
3. `act_on_outside_fulfilments`: `cancel` cancels the order's Clarus goods out while Clarus
   still allows it (idempotent: Clarus answers a cancelled goods out as cancelled); `hold`
   writes nothing to Clarus (it has no hold on a goods out) and leaves the decision, with
   the goods out's current status, to ops. Too late (already dispatched) is said plainly:
   the goods went out twice.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from clarus_pipelines.connectors.clarus_model import GoodsOutStatus
from clarus_pipelines.domain.ports import ConnectorError
from clarus_pipelines.domain.order_flow import record_event
from clarus_pipelines.exception_queue import raise_exception, utcnow
from clarus_pipelines.state.event_log import advance_consumer
from clarus_pipelines.policies import Policies
from clarus_pipelines.state import StateStore

log = logging.getLogger(__name__)

CODE = "FULFILLED_OUTSIDE_WMS"
CONSUMER = "outside_fulfilments"
TOPIC = "fulfillments/create"


@dataclass
class OutsideReport:
    taken_in: int = 0
    ours: int = 0
    outside: int = 0
    cancelled: int = 0
    held: int = 0
    too_late: int = 0
    failed: int = 0
    details: list[str] = field(default_factory=list)

    def as_metadata(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "details"}


def _shopify_id(value: Any) -> str | None:
    if value is None or value == "":
        return None
    text = str(value)
    return text.rsplit("/", 1)[-1] if text.startswith("gid://") else text


def _time(value: Any) -> datetime | None:
    from clarus_pipelines.domain.refunds import parse_shopify_time

    return parse_shopify_time(value)


def fulfilment_facts(payload: Mapping[str, Any]) -> dict[str, Any] | None:
    """Id, order, tracking and creation time of a fulfillments/create body (REST shape)."""
    body = payload.get("fulfillment") if isinstance(payload.get("fulfillment"), Mapping) else payload
    fulfilment_id = _shopify_id(body.get("id") or body.get("admin_graphql_api_id"))
    if fulfilment_id is None:
        return None
    numbers = [n for n in body.get("tracking_numbers") or [] if n]
    tracking = body.get("tracking_number") or (numbers[0] if numbers else None)
    return {
        "fulfilment_id": fulfilment_id,
        "order_id": _shopify_id(body.get("order_id")),
        "tracking_number": str(tracking).replace(" ", "").upper() if tracking else None,
        "created_at": _time(body.get("created_at")),
    }


def take_in_fulfilments(store: StateStore, *, now: datetime | None = None, batch_size: int = 1000) -> int:
    """Record each new landed fulfillments/create once; returns how many were new."""
    now = now or utcnow()
    new = 0
    while True:
        with store.write() as con:
            row = con.execute("SELECT last_seq FROM event_consumers WHERE consumer = ?", [CONSUMER]).fetchone()
            last = row[0] if row else 0
            events = con.execute(
                "SELECT seq, landing_id, payload::VARCHAR FROM landed_events"
                " WHERE seq > ? AND source = 'shopify' AND topic = ? ORDER BY seq LIMIT ?",
                [last, TOPIC, batch_size],
            ).fetchall()
            for seq, landing_id, raw in events:
                try:
                    facts = fulfilment_facts(json.loads(raw))
                except (TypeError, ValueError):
                    facts = None
                if facts is None:
                    log.warning("landing %s: fulfillments/create without a fulfilment id", landing_id)
                    continue
                inserted = con.execute(
                    "INSERT INTO channel_fulfilments (fulfilment_id, order_id, tracking_number, shopify_created_at,"
                    " seen_at, landing_id, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING RETURNING 1",
                    [facts["fulfilment_id"], facts["order_id"], facts["tracking_number"], facts["created_at"], now,
                     landing_id, now],
                ).fetchall()
                new += len(inserted)
            upper = events[-1][0] if events else last
            advance_consumer(con, CONSUMER, upper, now=now)
        if len(events) < batch_size:
            return new


def judge_fulfilments(store: StateStore, policies: Policies, *, now: datetime | None = None) -> OutsideReport:
    """Decide ours / outside for fulfilments past the grace period; raise FULFILLED_OUTSIDE_WMS."""
    now = now or utcnow()
    report = OutsideReport()
    grace = timedelta(minutes=policies.outside_fulfilment.grace_minutes)
    with store.write() as con:
        rows = con.execute(
            "SELECT c.fulfilment_id, c.order_id, c.tracking_number, o.order_name, b.clarus_id,"
            "  EXISTS (SELECT 1 FROM shipments s WHERE s.shopify_fulfilment_id = c.fulfilment_id"
            "     OR (c.tracking_number IS NOT NULL AND s.order_id = c.order_id"
            "         AND upper(replace(s.tracking_number, ' ', '')) = c.tracking_number)) AS ours,"
            "  EXISTS (SELECT 1 FROM outbound_writes w WHERE w.status = 'pending'"
            "     AND w.idempotency_key IN (SELECT 'shopify:fulfilment:' || s.shipment_id FROM shipments s"
            "                                WHERE s.order_id = c.order_id)) AS in_flight"
            " FROM channel_fulfilments c LEFT JOIN orders o USING (order_id)"
            " LEFT JOIN bindings b ON b.entity_type = 'order' AND b.our_id = c.order_id"
            " WHERE c.verdict IS NULL AND c.seen_at <= ? ORDER BY c.seen_at, c.fulfilment_id",
            [now - grace],
        ).fetchall()
        action = policies.outside_fulfilment.action
        for fulfilment_id, order_id, tracking, order_name, goods_out_id, ours, in_flight in rows:
            if ours:
                con.execute("UPDATE channel_fulfilments SET verdict = 'ours', decided_at = ?, updated_at = ?"
                            " WHERE fulfilment_id = ?", [now, now, fulfilment_id])
                report.ours += 1
                continue
            if in_flight:  # our own create is still being recorded: judge it next time
                continue
            label = order_name or order_id or "?"
            if goods_out_id is None:
                status, detail = "nothing_to_do", "the order has no Clarus goods out: nothing to stop in the warehouse"
            elif action == "cancel":
                status, detail = "pending", f"policy: cancel Clarus goods out {goods_out_id}"
            else:
                status, detail = "held", (f"policy: hold for a person; Clarus goods out {goods_out_id} is still open "
                                          "(cancel it in Clarus, or cancel the Shopify fulfilment)")
            con.execute(
                "UPDATE channel_fulfilments SET verdict = 'outside', decided_at = ?, action = ?, action_status = ?,"
                " action_detail = ?, updated_at = ? WHERE fulfilment_id = ?",
                [now, action, status, detail, now, fulfilment_id],
            )
            report.outside += 1
            report.held += status == "held"
            message = (f"order {label}: Shopify fulfilment {fulfilment_id} was not made by the warehouse"
                       f"{f' (tracking {tracking})' if tracking else ''}; {detail}")
            raise_exception(con, CODE, order_id or f"fulfilment:{fulfilment_id}", message,
                            {"fulfilment_id": fulfilment_id, "order_name": order_name, "tracking_number": tracking,
                             "goods_out_id": goods_out_id, "policy": action, "action_status": status},
                            policies=policies, now=now)
            if order_id:
                record_event(con, order_id, CODE, message, system="shopify",
                             details={"fulfilment_id": fulfilment_id, "policy": action, "action_status": status}, now=now)
            report.details.append(message)
    return report


def act_on_outside_fulfilments(store: StateStore, policies: Policies, *, clarus: Any,
                               now: datetime | None = None) -> OutsideReport:
    """Cancel the goods out of orders fulfilled outside the warehouse (policy `cancel`)."""
    report = OutsideReport()
    with store.read() as con:
        work = con.execute(
            "SELECT c.fulfilment_id, c.order_id, o.order_name, b.clarus_id FROM channel_fulfilments c"
            " LEFT JOIN orders o USING (order_id)"
            " LEFT JOIN bindings b ON b.entity_type = 'order' AND b.our_id = c.order_id"
            " WHERE c.verdict = 'outside' AND c.action = 'cancel' AND c.action_status = 'pending'"
            " ORDER BY c.decided_at",
        ).fetchall()
    for fulfilment_id, order_id, order_name, goods_out_id in work:
        label = order_name or order_id
        try:
            current = clarus.get_goods_out(goods_out_id)
            status_code = ((current or {}).get("goods_out_status") or {}).get("code")
            status = GoodsOutStatus.from_code(status_code) if status_code else None
            if current is None:
                outcome, detail = "refused", f"Clarus goods out {goods_out_id} not found"
            elif status == GoodsOutStatus.CANCELLED:
                outcome, detail = "done", f"Clarus goods out {goods_out_id} is cancelled"
            elif status in (GoodsOutStatus.COMPLETED, GoodsOutStatus.PART):
                outcome, detail = "too_late", (f"Clarus already dispatched goods out {goods_out_id} "
                                               f"({status.name}): the goods went out twice")
            else:
                clarus.cancel_goods_out(goods_out_id)
                outcome, detail = "done", f"cancelled Clarus goods out {goods_out_id} (was {status.name if status else '?'})"
        except ConnectorError as exc:
            if not exc.refused:
                report.failed += 1
                log.warning("outside fulfilment %s: Clarus unavailable, retried next run: %s", fulfilment_id, exc)
                continue
            outcome, detail = "refused", f"Clarus refused to cancel goods out {goods_out_id}: {exc}"[:500]
        now_ = now or utcnow()
        with store.write() as con:
            con.execute("UPDATE channel_fulfilments SET action_status = ?, action_detail = ?, updated_at = ?"
                        " WHERE fulfilment_id = ?", [outcome, detail, now_, fulfilment_id])
            state = "GOODS_OUT_CANCELLED" if outcome == "done" else CODE
            record_event(con, order_id, state, f"fulfilled outside the warehouse in Shopify ({fulfilment_id}): {detail}",
                         system="clarus" if outcome == "done" else "pipeline",
                         details={"fulfilment_id": fulfilment_id, "goods_out_id": goods_out_id, "outcome": outcome},
                         now=now_)
            raise_exception(con, CODE, order_id,
                            f"order {label}: Shopify fulfilment {fulfilment_id} was not made by the warehouse; {detail}",
                            {"fulfilment_id": fulfilment_id, "order_name": order_name, "goods_out_id": goods_out_id,
                             "policy": "cancel", "action_status": outcome},
                            policies=policies, now=now_)
        report.cancelled += outcome == "done"
        report.too_late += outcome == "too_late"
        report.failed += outcome == "refused"
        report.details.append(detail)
    return report


def outside_fulfilment_summary(con) -> dict[str, int]:
    rows = con.execute(
        "SELECT coalesce(verdict, 'undecided') || coalesce(':' || action_status, ''), count(*) FROM channel_fulfilments"
        " GROUP BY ALL").fetchall()
    return {k: int(v) for k, v in rows}
