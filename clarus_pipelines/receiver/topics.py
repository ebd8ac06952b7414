"""What a webhook is about: its topic, its dedupe identity and the entity it concerns.

Plain functions over a parsed body and its headers, shared by the receiver (topic and
dedupe key at the door), the ingest assets (entity columns of `landed_events`) and
reconciliation (which lands API reads in the shape a webhook would have had).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from clarus_pipelines.connectors.clarus_model import clarus_record

UNKNOWN_TOPIC = "unknown"

# Topics the flows act on or knowingly ignore; anything else is stored and flagged.
SHOPIFY_TOPICS = frozenset({
    "orders/create", "orders/updated", "orders/edited", "orders/cancelled", "orders/paid",
    "orders/fulfilled", "orders/partially_fulfilled", "orders/delete", "refunds/create",
    "fulfillments/create", "fulfillments/update", "fulfillment_orders/hold_released",
    "fulfillment_orders/placed_on_hold", "products/create", "products/update", "products/delete",
    "inventory_levels/update", "inventory_items/update", "app/uninstalled",
})
CLARUS_TOPICS = frozenset({
    "goods_out/created", "goods_out/updated", "goods_out/processed", "goods_out/completed",
    "goods_out/cancelled", "goods_in/created", "goods_in/completed", "goods_in/cancelled",
    "goods_in/moved_to_part", "stock_balance/updated", "stock/updated", "goods_out_pick_list/created",
    "goods_out_pick_list/completed",
})
NETSUITE_TOPICS = frozenset({
    "salesorder/create", "salesorder/update", "salesorder/delete", "itemfulfillment/create",
    "itemfulfillment/update", "returnauthorization/create", "returnauthorization/update",
    "creditmemo/create", "inventoryitem/create", "inventoryitem/update",
})
KNOWN_TOPICS: dict[str, frozenset[str]] = {
    "shopify": SHOPIFY_TOPICS, "clarus": CLARUS_TOPICS, "netsuite": NETSUITE_TOPICS,
}

SHOPIFY_TOPIC_HEADERS = ("x-shopify-topic", "shopify-topic")
SHOPIFY_WEBHOOK_ID_HEADERS = ("x-shopify-webhook-id", "shopify-webhook-id")
NETSUITE_TOPIC_HEADER = "x-netsuite-topic"
NETSUITE_EVENT_ID_HEADER = "x-netsuite-event-id"

# Headers kept with a landing: what replay and re-verification need, nothing personal.
KEPT_HEADERS: dict[str, tuple[str, ...]] = {
    "shopify": (
        "content-type", "x-shopify-topic", "x-shopify-hmac-sha256", "x-shopify-webhook-id",
        "x-shopify-shop-domain", "x-shopify-api-version", "x-shopify-triggered-at", "x-shopify-event-id",
        "x-shopify-sub-topic", "x-shopify-name", "shopify-topic", "shopify-hmac-sha256", "shopify-webhook-id",
        "shopify-shop-domain", "shopify-api-version", "shopify-event-id", "shopify-triggered-at",
    ),
    "clarus": (
        "content-type", "x-claruswms-domain", "x-claruswms-api-domain", "x-claruswms-subdomain",
        "x-claruswms-automation-id", "x-claruswms-integration-id",
    ),
    "netsuite": (
        "content-type", "x-netsuite-topic", "x-netsuite-event-id", "x-netsuite-timestamp", "x-netsuite-signature",
    ),
}


class LowerCaseHeaders(dict):
    """Headers whose names are lower case already (ASGI gives them so): not copied again."""


def lower_case(headers: Mapping[str, str]) -> LowerCaseHeaders:
    """`headers` with lower-case names; the same object if it is `LowerCaseHeaders` already."""
    if type(headers) is LowerCaseHeaders:
        return headers
    return LowerCaseHeaders((k.lower(), v) for k, v in headers.items())


def kept_headers(source: str, headers: Mapping[str, str]) -> dict[str, str]:
    wanted = KEPT_HEADERS[source]
    return {k: v for k, v in lower_case(headers).items() if k in wanted}


def _first_header(headers: Mapping[str, str], names: tuple[str, ...]) -> str | None:
    """The first of `names` (lower case) with a non-blank value, whatever the case of `headers`' names."""
    for name in names:  # the receiver's headers are already lower case: no copy needed
        value = (headers.get(name) or "").strip()
        if value:
            return value
    lowered = {k.lower(): v for k, v in headers.items()}
    for name in names:
        value = (lowered.get(name) or "").strip()
        if value:
            return value
    return None


def header_topic(source: str, headers: Mapping[str, str]) -> str | None:
    """The topic a Shopify or NetSuite webhook names in its headers (Clarus names it in the body)."""
    if source == "shopify":
        return _first_header(headers, SHOPIFY_TOPIC_HEADERS)
    if source == "netsuite":
        return _first_header(headers, (NETSUITE_TOPIC_HEADER,))
    return None


def clarus_topic(payload: Any) -> str:
    """`<resource>/<event>` of a Clarus automation webhook, e.g. 'goods_out/completed'.

    Accepts `{"resource_name": "goods_out", "event": "completed", "data": {...}}`, an
    `event` of 'goods_out.completed' or 'goods_out/completed', and a JSON:API record
    (`data.type` 'goods_outs') with the event beside it.
    """
    if not isinstance(payload, dict):
        return UNKNOWN_TOPIC
    meta = payload.get("meta") if isinstance(payload.get("meta"), dict) else {}
    event = str(payload.get("event") or meta.get("event") or "").strip().lower()
    resource = str(payload.get("resource_name") or payload.get("resource") or meta.get("resource_name") or "").strip().lower()
    if not resource:
        record = clarus_record(payload)
        kind = record.get("type") if isinstance(record, dict) else None
        if isinstance(kind, str) and kind:
            resource = kind.lower().removesuffix("s")  # JSON:API types are plural: goods_outs
    for sep in ("/", "."):
        if sep in event:
            head, _, tail = event.partition(sep)
            return f"{head}/{tail}"
    if resource and event:
        return f"{resource}/{event}"
    return UNKNOWN_TOPIC


def canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str).encode("utf-8")


def content_hash(*parts: Any) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part if isinstance(part, bytes) else canonical_json(part))
        digest.update(b"\0")
    return digest.hexdigest()


def dedupe_identity(source: str, topic: str, headers: Mapping[str, str], payload: Any, body: bytes) -> tuple[str, str | None]:
    """(dedupe key, webhook id) of a delivery. The same event delivered twice has the same key.

    Shopify: X-Shopify-Webhook-Id (the same across Shopify's retries). NetSuite: our
    X-NetSuite-Event-Id. Clarus sends no id, so the key is a hash of the event and the
    record (key order ignored). Without an id, the raw body with its topic is the key.
    """
    if source == "shopify":
        webhook_id = _first_header(headers, SHOPIFY_WEBHOOK_ID_HEADERS)
        if webhook_id:
            return f"shopify:webhook:{webhook_id}", webhook_id
    elif source == "netsuite":
        event_id = _first_header(headers, (NETSUITE_EVENT_ID_HEADER,))
        if event_id:
            return f"netsuite:event:{event_id}", event_id
    elif source == "clarus":
        digest = content_hash(topic, clarus_record(payload))
        return f"clarus:content:{digest}", f"sha256:{digest[:32]}"
    return f"{source}:body:{content_hash(topic, body)}", None


# ---------------------------------------------------------------------------- entities


@dataclass(frozen=True)
class EntityRef:
    entity_type: str
    entity_id: str | None
    parent_id: str | None = None  # e.g. the Shopify order of a refund; our reference on a goods out
    updated_at: datetime | None = None  # the entity's own last-change time, naive UTC


def parse_timestamp(value: Any) -> datetime | None:
    """ISO 8601 (with 'Z' or an offset) -> naive UTC; None when absent or unreadable."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(timezone.utc).replace(tzinfo=None)
    return parsed


def _id(value: Any) -> str | None:
    if value is None or value == "":
        return None
    return str(value)  # ids stay strings: Shopify ids overflow JavaScript numbers


_SHOPIFY_ENTITY = {
    "orders": "order", "refunds": "refund", "fulfillments": "fulfillment", "fulfillment_orders": "fulfillment_order",
    "products": "product", "inventory_levels": "inventory_level", "inventory_items": "inventory_item", "app": "app",
}


def entity_of(source: str, topic: str, payload: Any) -> EntityRef:
    """Which entity a webhook body is about, from its source, topic and payload."""
    family = topic.split("/", 1)[0]
    body = payload if isinstance(payload, dict) else {}
    if source == "shopify":
        kind = _SHOPIFY_ENTITY.get(family, family or UNKNOWN_TOPIC)
        if kind == "fulfillment_order" and isinstance(body.get("fulfillment_order"), dict):
            body = body["fulfillment_order"]
        if kind == "inventory_level":
            item, location = _id(body.get("inventory_item_id")), _id(body.get("location_id"))
            entity_id = f"{item}:{location}" if item and location else item
        else:
            entity_id = _id(body.get("id"))
        parent = _id(body.get("order_id")) if kind in ("refund", "fulfillment", "fulfillment_order") else None
        updated = parse_timestamp(body.get("updated_at")) or parse_timestamp(body.get("processed_at")) \
            or parse_timestamp(body.get("created_at"))
        return EntityRef(kind, entity_id, parent, updated)
    if source == "clarus":
        record = clarus_record(payload)
        record = record if isinstance(record, dict) else {}
        attributes = record.get("attributes") if isinstance(record.get("attributes"), dict) else record
        parent = _id(attributes.get("external_system_reference1") or attributes.get("reference"))
        updated = parse_timestamp(attributes.get("updated_at")) or parse_timestamp(attributes.get("created_at"))
        return EntityRef(family or UNKNOWN_TOPIC, _id(record.get("id")), parent, updated)
    if source == "netsuite":
        record = body.get("record") if isinstance(body.get("record"), dict) else body
        updated = parse_timestamp(record.get("lastModifiedDate")) or parse_timestamp(record.get("createdDate"))
        return EntityRef(family or UNKNOWN_TOPIC, _id(record.get("id") or record.get("internalId")),
                         _id(record.get("externalId")), updated)
    return EntityRef(UNKNOWN_TOPIC, None)
