"""Reconciliation: which records read back from an API no webhook has brought.

Webhooks are not guaranteed by Shopify or Clarus, so a schedule reads recent orders,
refunds and dispatched or cancelled goods outs back from the APIs. A record version is
covered when an event for the same entity, at least as new, is in `landed_events` or
still waiting in the landing zone; anything else is landed like a webhook with
`via='reconciliation'` (and counted). Plain functions: no Dagster, no HTTP.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from clarus_pipelines.receiver.landing import Envelope, LandingZone, LandResult
from clarus_pipelines.receiver.topics import KNOWN_TOPICS, parse_timestamp

# Clarus goods out status code -> the automation event that reports it
CLARUS_DISPATCH_EVENTS = {"COMPLETED": "completed", "CANCELLED": "cancelled", "PART": "updated"}


@dataclass(frozen=True)
class Known:
    """What has already arrived for one entity."""

    updated_at: datetime | None
    topics: frozenset[str]


@dataclass(frozen=True)
class Missed:
    """A record version no webhook brought, ready to land."""

    source: str
    topic: str
    entity_type: str
    entity_id: str
    version: str
    body: bytes

    @property
    def dedupe_key(self) -> str:
        return f"reconciliation:{self.source}:{self.entity_type}:{self.entity_id}:{self.version}"

    def envelope(self) -> Envelope:
        return Envelope(source=self.source, topic=self.topic, body=self.body, dedupe_key=self.dedupe_key,
                        via="reconciliation", known_topic=self.topic in KNOWN_TOPICS[self.source])


def merge_known(*sources: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str, str], Known]:
    """(source, entity_type, entity_id) -> newest version and topics, from event rows of any origin.

    Rows need `source`, `entity_type`, `entity_id`, `topic` and `entity_updated_at`.
    """
    merged: dict[tuple[str, str, str], Known] = {}
    for rows in sources:
        for row in rows:
            if not row.get("entity_id"):
                continue
            key = (row["source"], row["entity_type"], str(row["entity_id"]))
            seen = merged.get(key)
            updated = row.get("entity_updated_at")
            topics = frozenset({row["topic"]}) | (seen.topics if seen else frozenset())
            newest = max((t for t in (updated, seen.updated_at if seen else None) if t is not None), default=None)
            merged[key] = Known(newest, topics)
    return merged


def _covered(known: Known | None, updated_at: datetime | None) -> bool:
    if known is None:
        return False
    if updated_at is None:
        return True  # nothing to compare: having the entity at all is all we can check
    return known.updated_at is not None and known.updated_at >= updated_at


def _body(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def plan_shopify(
    orders: Sequence[Mapping[str, Any]],
    known: Mapping[tuple[str, str, str], Known],
    *,
    settled_before: datetime,
) -> tuple[list[Missed], int, int]:
    """Orders and refunds (embedded in each order) no webhook brought; also (orders, refunds) checked.

    Changes after `settled_before` are left alone: their webhook may still be on its way.
    """
    missed: list[Missed] = []
    checked_orders = checked_refunds = 0
    for order in orders:
        order_id = str(order["id"])
        updated = parse_timestamp(order.get("updated_at"))
        if updated is not None and updated <= settled_before:
            checked_orders += 1
            seen = known.get(("shopify", "order", order_id))
            if not _covered(seen, updated):
                if order.get("cancelled_at") and not (seen and "orders/cancelled" in seen.topics):
                    topic = "orders/cancelled"
                else:
                    topic = "orders/updated" if seen else "orders/create"
                missed.append(Missed("shopify", topic, "order", order_id, order.get("updated_at") or "", _body(order)))
        for refund in order.get("refunds") or []:
            created = parse_timestamp(refund.get("created_at")) or parse_timestamp(refund.get("processed_at"))
            if created is not None and created > settled_before:
                continue
            checked_refunds += 1
            refund_id = str(refund["id"])
            if ("shopify", "refund", refund_id) not in known:
                body = dict(refund)
                body.setdefault("order_id", order["id"])
                missed.append(Missed("shopify", "refunds/create", "refund", refund_id, refund.get("created_at") or "",
                                     _body(body)))
    return missed, checked_orders, checked_refunds


def plan_clarus(
    goods_outs: Sequence[Mapping[str, Any]],
    known: Mapping[tuple[str, str, str], Known],
    *,
    settled_before: datetime,
) -> tuple[list[Missed], int]:
    """Dispatched, part-dispatched and cancelled goods outs no webhook brought; also how many were checked."""
    missed: list[Missed] = []
    checked = 0
    for record in goods_outs:
        status = (record.get("goods_out_status") or {}).get("code")
        event = CLARUS_DISPATCH_EVENTS.get(str(status or "").upper())
        updated = parse_timestamp(record.get("updated_at"))
        if event is None or (updated is not None and updated > settled_before):
            continue
        checked += 1
        goods_out_id = str(record["id"])
        if _covered(known.get(("clarus", "goods_out", goods_out_id)), updated):
            continue
        body = _body({"resource_name": "goods_out", "event": event, "data": record})
        missed.append(Missed("clarus", f"goods_out/{event}", "goods_out", goods_out_id,
                             f"{status}@{record.get('updated_at') or ''}", body))
    return missed, checked


def land_missed(zone: LandingZone, missed: Iterable[Missed]) -> list[tuple[Missed, LandResult]]:
    """Land each missed record (idempotent: the same version lands once however often it is found)."""
    return [(m, zone.land(m.envelope())) for m in missed]
