"""Shopify connector on the GraphQL Admin API: orders, refunds, fulfilment, stock, variants, webhooks.

`ShopifyResource` is a Dagster resource; every method also works on a plain instance.
It keeps one `httpx.Client` with the `X-Shopify-Access-Token` header and posts every
call to `/admin/api/<api_version>/graphql.json` (Shopify made REST a legacy API in
2024-10). Lists page with Relay cursors (`first`/`after`, `pageInfo.endCursor`).
Throttling follows the query cost Shopify reports (`extensions.cost.throttleStatus`):
a `THROTTLED` answer waits until the bucket holds the requested cost again; transport
errors, 5xx and HTTP 429 are retried by `send_with_retries` as before.

The flows were written against Shopify's REST shapes, which are also the shapes of the
webhooks we receive. Reads are therefore mapped back to that shape here (numeric ids,
snake_case, `line_items`, `fulfillments`, `refunds`...), so an order read for
reconciliation lands exactly like the webhook it replaces.

Large backfills use a bulk operation (`iter_orders_bulk`: `bulkOperationRunQuery`, poll,
download the JSONL from the signed URL without our token, rebuild each order from its
`__parentId` lines) instead of thousands of pages.

Writes are idempotent: `create_fulfillment` looks for a fulfilment with the same
tracking number and quantities first and, after an ambiguous failure, re-reads before
resending (Shopify refuses to fulfil the same units twice anyway);
`inventorySetQuantities` and `inventoryAdjustQuantities` carry an `@idempotent` key,
the same on every resend of one call, so a lost response is never applied twice.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import httpx
from pydantic import Field

from clarus_pipelines.connectors.http import ConnectorError, HttpConnector, RetryPolicy, send_with_retries
from clarus_pipelines.connectors.writes import SINGLE_ATTEMPT, write_once

log = logging.getLogger(__name__)

SYSTEM = "shopify"
API_VERSION = "2026-10"
OPEN_FULFILLMENT_STATUSES = frozenset({"success", "open", "pending"})
INVENTORY_BATCH = 250  # Shopify's limit of quantities per inventorySetQuantities
REFERENCE_APP = "clarus-pipelines"


class ShopifyError(ConnectorError):
    """Shopify refused a request: `errors` is the GraphQL `errors` or the mutation's `userErrors`.
    `status` is the HTTP status, 400 for a document Shopify rejects, 422 for `userErrors`."""

    def __init__(self, message: str, status: int | None = None, errors: Any = None):
        super().__init__(SYSTEM, message, status, errors)
        self.errors = errors


@dataclass(frozen=True)
class FulfillmentResult:
    fulfillment: dict[str, Any]
    created: bool  # False when an identical fulfilment already existed


# ---------------------------------------------------------------------------- ids and shapes


def gid(kind: str, value: int | str) -> str:
    """Shopify's global id for a numeric REST id (a gid is passed through)."""
    text = str(value)
    return text if text.startswith("gid://") else f"gid://shopify/{kind}/{text}"


def legacy_id(value: Any) -> int | None:
    """The numeric id of `gid://shopify/Kind/123` (or of a plain number)."""
    if value is None:
        return None
    tail = str(value).rsplit("/", 1)[-1].split("?", 1)[0]
    return int(tail) if tail.isdigit() else None


def _iso(value: datetime | str | None) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.isoformat()


def _lower(value: str | None) -> str | None:
    return value.lower() if isinstance(value, str) else None


def _money_set(bag: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if not bag:
        return None
    out = {}
    for graph, rest in (("shopMoney", "shop_money"), ("presentmentMoney", "presentment_money")):
        money = bag.get(graph)
        if money:
            out[rest] = {"amount": str(money["amount"]), "currency_code": money.get("currencyCode")}
    out.setdefault("presentment_money", out.get("shop_money"))
    return out


def _amount(bag: Mapping[str, Any] | None) -> str | None:
    money = (bag or {}).get("shopMoney") or {}
    return str(money["amount"]) if money.get("amount") is not None else None


def _nodes(connection: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    return list((connection or {}).get("nodes") or [])


_FULFILLMENT_STATUS = {"UNFULFILLED": None, "PARTIALLY_FULFILLED": "partial", "FULFILLED": "fulfilled"}


def line_item_from_graphql(node: Mapping[str, Any]) -> dict[str, Any]:
    variant, product = node.get("variant") or {}, node.get("product") or {}
    return {
        "id": legacy_id(node["id"]),
        "admin_graphql_api_id": node["id"],
        "sku": node.get("sku"),
        "quantity": node.get("quantity"),
        "current_quantity": node.get("currentQuantity"),
        "fulfillable_quantity": node.get("unfulfilledQuantity"),
        "title": node.get("title"),
        "name": node.get("name"),
        "variant_title": node.get("variantTitle"),
        "variant_id": legacy_id(variant.get("id")),
        "product_id": legacy_id(product.get("id")),
        "price": _amount(node.get("originalUnitPriceSet")),
        "price_set": _money_set(node.get("originalUnitPriceSet")),
        "requires_shipping": node.get("requiresShipping"),
        "gift_card": node.get("isGiftCard"),
        "properties": [{"name": a["key"], "value": a.get("value")} for a in node.get("customAttributes") or []],
    }


def fulfillment_from_graphql(node: Mapping[str, Any], order_id: int | None = None) -> dict[str, Any]:
    tracking = list(node.get("trackingInfo") or [])
    numbers = [t["number"] for t in tracking if t.get("number")]
    urls = [t["url"] for t in tracking if t.get("url")]
    return {
        "id": legacy_id(node["id"]),
        "admin_graphql_api_id": node["id"],
        "order_id": order_id if order_id is not None else legacy_id((node.get("order") or {}).get("id")),
        "name": node.get("name"),
        "status": _lower(node.get("status")),
        "created_at": node.get("createdAt"),
        "updated_at": node.get("updatedAt"),
        "tracking_company": next((t["company"] for t in tracking if t.get("company")), None),
        "tracking_number": numbers[0] if numbers else None,
        "tracking_numbers": numbers,
        "tracking_url": urls[0] if urls else None,
        "tracking_urls": urls,
        "line_items": [{**line_item_from_graphql(item["lineItem"]), "quantity": item.get("quantity")}
                       for item in _nodes(node.get("fulfillmentLineItems"))],
    }


def refund_from_graphql(node: Mapping[str, Any], order_id: int | None = None) -> dict[str, Any]:
    refund_id = legacy_id(node["id"])
    order_id = order_id if order_id is not None else legacy_id((node.get("order") or {}).get("id"))
    lines = []
    for item in _nodes(node.get("refundLineItems")):
        line = line_item_from_graphql(item["lineItem"])
        lines.append({
            "id": legacy_id(item.get("id")),
            "line_item_id": line["id"],
            "quantity": item.get("quantity"),
            "restock_type": _lower(item.get("restockType")),
            "location_id": legacy_id((item.get("location") or {}).get("id")),
            "subtotal": _amount(item.get("subtotalSet")),
            "subtotal_set": _money_set(item.get("subtotalSet")),
            "total_tax_set": _money_set(item.get("totalTaxSet")),
            "line_item": line,
        })
    shipping = [{
        "id": legacy_id(s.get("id")),
        "shipping_line_id": legacy_id((s.get("shippingLine") or {}).get("id")),
        "subtotal_amount_set": _money_set(s.get("subtotalAmountSet")),
        "tax_amount_set": _money_set(s.get("taxAmountSet")),
    } for s in _nodes(node.get("refundShippingLines"))]
    adjustments = [{
        "id": legacy_id(a.get("id")), "order_id": order_id, "refund_id": refund_id,
        "kind": _lower(a.get("reason")) or "refund_discrepancy", "reason": a.get("reason"),
        "amount": _amount(a.get("amountSet")), "amount_set": _money_set(a.get("amountSet")),
        "tax_amount_set": _money_set(a.get("taxAmountSet")),
    } for a in _nodes(node.get("orderAdjustments"))]
    transactions = [{
        "id": legacy_id(t.get("id")), "admin_graphql_api_id": t.get("id"), "order_id": order_id,
        "kind": _lower(t.get("kind")), "status": _lower(t.get("status")), "gateway": t.get("gateway"),
        "amount": _amount(t.get("amountSet")),
        "currency": ((t.get("amountSet") or {}).get("shopMoney") or {}).get("currencyCode"),
        "created_at": t.get("createdAt"), "processed_at": t.get("processedAt"),
    } for t in _nodes(node.get("transactions"))]
    ret = node.get("return")
    return {
        "id": refund_id,
        "admin_graphql_api_id": node["id"],
        "order_id": order_id,
        "created_at": node.get("createdAt"),
        "processed_at": node.get("createdAt"),
        "note": node.get("note"),
        "restock": any(item.get("restocked") for item in _nodes(node.get("refundLineItems"))),
        "refund_line_items": lines,
        "refund_shipping_lines": shipping,
        "order_adjustments": adjustments,
        "transactions": transactions,
        "return": {"id": legacy_id(ret.get("id")), "admin_graphql_api_id": ret.get("id"), "name": ret.get("name")} if ret else None,
    }


def _utc(value: str | None) -> datetime | None:
    """A Shopify DateTime as a naive UTC datetime (how the state stores times)."""
    if not value:
        return None
    moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return moment.astimezone(timezone.utc).replace(tzinfo=None) if moment.tzinfo else moment


def payout_from_graphql(node: Mapping[str, Any]) -> dict[str, Any]:
    """A ShopifyPaymentsPayout as the payouts reconciliation reads it (amounts as text, times UTC)."""
    net = node.get("net") or {}
    return {
        "payout_id": str(node.get("legacyResourceId") or legacy_id(node["id"])), "payout_gid": node["id"],
        "issued_at": _utc(node.get("issuedAt")), "status": node.get("status"),
        "transaction_type": node.get("transactionType"), "currency": net.get("currencyCode"),
        "net": None if net.get("amount") is None else str(net["amount"]),
        "summary": {k: {"amount": str(v.get("amount")), "currency": v.get("currencyCode")}
                    for k, v in (node.get("summary") or {}).items() if isinstance(v, Mapping)},
    }


def balance_transaction_from_graphql(node: Mapping[str, Any], payout_id: str | None = None) -> dict[str, Any]:
    """A ShopifyPaymentsBalanceTransaction: ids as text (BigInt may come as a number or a string)."""
    amount = node.get("amount") or {}
    order = node.get("associatedOrder") or {}
    payout = node.get("associatedPayout") or {}
    text = lambda v: None if v is None else str(v)  # noqa: E731
    return {
        "transaction_id": node["id"], "payout_id": payout_id or text(legacy_id(payout.get("id"))),
        "payout_status": payout.get("status"), "type": node.get("type"), "source_type": node.get("sourceType"),
        "source_id": text(node.get("sourceId")), "source_order_transaction_id": text(node.get("sourceOrderTransactionId")),
        "order_id": text(legacy_id(order.get("id"))), "order_name": order.get("name"),
        "transaction_date": _utc(node.get("transactionDate")), "currency": amount.get("currencyCode"),
        "amount": text(amount.get("amount")), "fee": text((node.get("fee") or {}).get("amount")),
        "net": text((node.get("net") or {}).get("amount")), "test": node.get("test"),
        "adjustment_reason": node.get("adjustmentReason"),
    }


def _address_from_graphql(address: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if not address:
        return None
    return {
        "name": address.get("name"), "first_name": address.get("firstName"), "last_name": address.get("lastName"),
        "company": address.get("company"), "address1": address.get("address1"), "address2": address.get("address2"),
        "city": address.get("city"), "province": address.get("province"), "province_code": address.get("provinceCode"),
        "zip": address.get("zip"), "country": address.get("country"), "country_code": address.get("countryCodeV2"),
        "phone": address.get("phone"),
    }


def order_from_graphql(node: Mapping[str, Any]) -> dict[str, Any]:
    """An Order read over GraphQL in the REST/webhook shape the order and refund flows parse."""
    order_id = legacy_id(node["id"])
    by_id = {item["id"]: item for item in _nodes(node.get("lineItems"))}

    def filled(entity: Mapping[str, Any], connection: str) -> dict[str, Any]:
        nodes = [{**n, "lineItem": by_id.get(n["lineItem"]["id"], n["lineItem"])} for n in _nodes(entity.get(connection))]
        return {**entity, connection: {"nodes": nodes}}

    fulfillments = [fulfillment_from_graphql(filled(f, "fulfillmentLineItems"), order_id)
                    for f in node.get("fulfillments") or []]
    fulfilled: dict[int, int] = {}
    for f in fulfillments:
        if f["status"] in OPEN_FULFILLMENT_STATUSES:
            for li in f["line_items"]:
                fulfilled[li["id"]] = fulfilled.get(li["id"], 0) + int(li.get("quantity") or 0)
    lines = []
    for item in _nodes(node.get("lineItems")):
        line = line_item_from_graphql(item)
        done = fulfilled.get(line["id"], 0)
        line["fulfillment_status"] = None if not done else ("fulfilled" if not line["fulfillable_quantity"] else "partial")
        lines.append(line)
    total = node.get("totalPriceSet")
    status = node.get("displayFulfillmentStatus")
    return {
        "id": order_id,
        "admin_graphql_api_id": node["id"],
        "name": node.get("name"),
        "email": node.get("email"),
        "contact_email": node.get("email"),
        "phone": node.get("phone"),
        "created_at": node.get("createdAt"),
        "updated_at": node.get("updatedAt"),
        "processed_at": node.get("processedAt"),
        "cancelled_at": node.get("cancelledAt"),
        "cancel_reason": _lower(node.get("cancelReason")),
        "closed_at": node.get("closedAt"),
        "financial_status": _lower(node.get("displayFinancialStatus")),
        "fulfillment_status": _FULFILLMENT_STATUS.get(status, _lower(status)),
        "currency": node.get("currencyCode"),
        "total_price": _amount(total),
        "total_price_set": _money_set(total),
        "note": node.get("note"),
        "tags": ", ".join(node.get("tags") or []),
        "shipping_address": _address_from_graphql(node.get("shippingAddress")),
        "line_items": lines,
        "shipping_lines": [{
            "id": legacy_id(s.get("id")), "code": s.get("code"), "title": s.get("title"), "source": s.get("source"),
            "is_removed": s.get("isRemoved"), "price": _amount(s.get("originalPriceSet")),
            "price_set": _money_set(s.get("originalPriceSet")),
        } for s in _nodes(node.get("shippingLines"))],
        "fulfillments": fulfillments,
        "refunds": [refund_from_graphql(filled(r, "refundLineItems"), order_id) for r in node.get("refunds") or []],
    }


# ---------------------------------------------------------------------------- documents

_MONEY = "shopMoney { amount currencyCode }"
ORDER_REFUND_LINES = 10  # refund lines read with the order; a refund with more is re-read on its own
_LINE = f"""id sku quantity currentQuantity unfulfilledQuantity title name variantTitle requiresShipping isGiftCard
  variant {{ id }} product {{ id }} originalUnitPriceSet {{ {_MONEY} }} customAttributes {{ key value }}"""
_LINE_REF = "id sku quantity requiresShipping isGiftCard variant { id }"
# Inside an order, nested line items are ids only: the mapper fills them from the order's
# own lines. That keeps a full order under Shopify's 1,000-point single-query cost limit.
_FULFILLMENT_BODY = "id name status createdAt updatedAt trackingInfo(first: 5) { company number url }"
_FULFILLMENT = f"""{_FULFILLMENT_BODY}
  fulfillmentLineItems(first: 50) {{ nodes {{ id quantity lineItem {{ {_LINE_REF} }} }} }}"""
_REFUND_BODY = f"""id createdAt note return {{ id name }}
  refundShippingLines(first: 2) {{ nodes {{ id shippingLine {{ id }} subtotalAmountSet {{ {_MONEY} }} taxAmountSet {{ {_MONEY} }} }} }}
  orderAdjustments(first: 2) {{ nodes {{ id reason amountSet {{ {_MONEY} }} taxAmountSet {{ {_MONEY} }} }} }}
  transactions(first: 3) {{ nodes {{ id kind status gateway createdAt processedAt amountSet {{ {_MONEY} }} }} }}"""
_REFUND_LINES = "refundLineItems({size}) {{ nodes {{ id quantity restockType restocked location {{ id }} subtotalSet {{ {money} }} lineItem {{ {line} }} }} }}"
_REFUND = _REFUND_BODY + "\n  " + _REFUND_LINES.format(size="first: 50", money=_MONEY, line=_LINE_REF)
ORDER_FRAGMENT = f"""fragment OrderFields on Order {{
  id name email phone createdAt updatedAt processedAt cancelledAt cancelReason closedAt
  displayFinancialStatus displayFulfillmentStatus currencyCode note tags totalPriceSet {{ {_MONEY} }}
  shippingAddress {{ name firstName lastName company address1 address2 city province provinceCode zip country countryCodeV2 phone }}
  lineItems(first: 20) {{ nodes {{ {_LINE} }} pageInfo {{ hasNextPage endCursor }} }}
  shippingLines(first: 3, includeRemovals: true) {{ nodes {{ id code title source isRemoved originalPriceSet {{ {_MONEY} }} }} }}
  fulfillments(first: 5) {{ {_FULFILLMENT_BODY} fulfillmentLineItems(first: 20) {{ nodes {{ id quantity lineItem {{ id }} }} }} }}
  refunds(first: 5) {{ {_REFUND_BODY} {_REFUND_LINES.format(size=f"first: {ORDER_REFUND_LINES}", money=_MONEY, line="id")} }}
}}"""

ORDERS_QUERY = ORDER_FRAGMENT + """
query Orders($first: Int!, $after: String, $query: String) {
  orders(first: $first, after: $after, query: $query, sortKey: ID) {
    nodes { ...OrderFields }
    pageInfo { hasNextPage endCursor }
  }
}"""
ORDER_QUERY = ORDER_FRAGMENT + """
query Order($id: ID!) { order(id: $id) { ...OrderFields } }"""
LINE_ITEMS_QUERY = f"""
query OrderLines($id: ID!, $first: Int!, $after: String) {{
  order(id: $id) {{ id lineItems(first: $first, after: $after) {{ nodes {{ {_LINE} }} pageInfo {{ hasNextPage endCursor }} }} }}
}}"""
FULFILLMENT_ORDERS_QUERY = """
query FulfillmentOrders($id: ID!) {
  order(id: $id) {
    id
    fulfillmentOrders(first: 4) {
      nodes { id status lineItems(first: 100) { nodes { id totalQuantity remainingQuantity lineItem { id } } } }
    }
  }
}"""
FULFILLMENTS_QUERY = f"""
query Fulfillments($id: ID!) {{ order(id: $id) {{ id fulfillments(first: 20) {{ {_FULFILLMENT} }} }} }}"""
FULFILLMENT_QUERY = f"""
query Fulfillment($id: ID!) {{ fulfillment(id: $id) {{ {_FULFILLMENT} order {{ id }} }} }}"""
REFUNDS_QUERY = f"""
query Refunds($id: ID!) {{ order(id: $id) {{ id refunds(first: 20) {{ {_REFUND} }} }} }}"""
FULFILLMENT_CREATE = f"""
mutation FulfillmentCreate($fulfillment: FulfillmentInput!) {{
  fulfillmentCreate(fulfillment: $fulfillment) {{
    fulfillment {{ {_FULFILLMENT} }}
    userErrors {{ field message }}
  }}
}}"""
TRACKING_UPDATE = f"""
mutation TrackingUpdate($id: ID!, $tracking: FulfillmentTrackingInput!, $notify: Boolean) {{
  fulfillmentTrackingInfoUpdate(fulfillmentId: $id, trackingInfoInput: $tracking, notifyCustomer: $notify) {{
    fulfillment {{ {_FULFILLMENT} }}
    userErrors {{ field message }}
  }}
}}"""
INVENTORY_SET = """
mutation InventorySet($input: InventorySetQuantitiesInput!, $key: String!) {
  inventorySetQuantities(input: $input) @idempotent(key: $key) {
    inventoryAdjustmentGroup { id }
    userErrors { field message code }
  }
}"""
INVENTORY_ADJUST = """
mutation InventoryAdjust($input: InventoryAdjustQuantitiesInput!, $key: String!) {
  inventoryAdjustQuantities(input: $input) @idempotent(key: $key) {
    inventoryAdjustmentGroup { changes(quantityNames: ["available"]) { name delta quantityAfterChange
      item { id } location { id } } }
    userErrors { field message code }
  }
}"""
INVENTORY_LEVELS_QUERY = """
query InventoryLevels($location: ID!, $first: Int!, $after: String) {
  location(id: $location) {
    id
    inventoryLevels(first: $first, after: $after) {
      nodes { updatedAt item { id } quantities(names: ["available"]) { name quantity } }
      pageInfo { hasNextPage endCursor }
    }
  }
}"""
VARIANTS_QUERY = """
query Variants($first: Int!, $after: String, $query: String) {
  productVariants(first: $first, after: $after, query: $query) {
    nodes { id sku title barcode price inventoryQuantity product { id title } inventoryItem { id } }
    pageInfo { hasNextPage endCursor }
  }
}"""
LOCATIONS_QUERY = """
query Locations($first: Int!, $after: String) {
  locations(first: $first, after: $after) { nodes { id name isActive } pageInfo { hasNextPage endCursor } }
}"""
SHOP_QUERY = "query Probe { shop { name myshopifyDomain } }"
WEBHOOKS_QUERY = """
query WebhookSubscriptions($first: Int!, $after: String) {
  webhookSubscriptions(first: $first, after: $after) {
    nodes { id topic uri format includeFields filter }
    pageInfo { hasNextPage endCursor }
  }
}"""
WEBHOOK_CREATE = """
mutation WebhookCreate($topic: WebhookSubscriptionTopic!, $subscription: WebhookSubscriptionInput!) {
  webhookSubscriptionCreate(topic: $topic, webhookSubscription: $subscription) {
    webhookSubscription { id topic uri }
    userErrors { field message }
  }
}"""
WEBHOOK_DELETE = """
mutation WebhookDelete($id: ID!) {
  webhookSubscriptionDelete(id: $id) { deletedWebhookSubscriptionId userErrors { field message } }
}"""
BULK_RUN = """
mutation BulkRun($query: String!) {
  bulkOperationRunQuery(query: $query, groupObjects: false) {
    bulkOperation { id status }
    userErrors { field message code }
  }
}"""
BULK_STATUS = """
query BulkStatus($id: ID!) {
  bulkOperation(id: $id) { id status errorCode objectCount url partialDataUrl }
}"""
_MONEY_V2 = "amount currencyCode"
_SUMMARY = " ".join(f"{name} {{ {_MONEY_V2} }}" for name in (
    "chargesGross", "chargesFee", "refundsFeeGross", "refundsFee", "adjustmentsGross", "adjustmentsFee",
    "reservedFundsGross", "reservedFundsFee", "retriedPayoutsGross", "retriedPayoutsFee"))
PAYOUTS_QUERY = f"""
query Payouts($first: Int!, $after: String, $query: String) {{
  shopifyPaymentsAccount {{
    payouts(first: $first, after: $after, query: $query, sortKey: ISSUED_AT) {{
      nodes {{ id legacyResourceId issuedAt status transactionType net {{ {_MONEY_V2} }} summary {{ {_SUMMARY} }} }}
      pageInfo {{ hasNextPage endCursor }}
    }}
  }}
}}"""
BALANCE_TRANSACTIONS_QUERY = f"""
query BalanceTransactions($first: Int!, $after: String, $query: String) {{
  shopifyPaymentsAccount {{
    balanceTransactions(first: $first, after: $after, query: $query, sortKey: PROCESSED_AT) {{
      nodes {{
        id type sourceType sourceId sourceOrderTransactionId transactionDate test adjustmentReason
        amount {{ {_MONEY_V2} }} fee {{ {_MONEY_V2} }} net {{ {_MONEY_V2} }}
        associatedOrder {{ id name }} associatedPayout {{ id status }}
      }}
      pageInfo {{ hasNextPage endCursor }}
    }}
  }}
}}"""
# The bulk form of an order read: Shopify allows five connections nested two deep, so the
# lines of fulfilments and refunds (connections inside lists) are read per order afterwards.
BULK_ORDERS_QUERY = f"""{{
  orders(query: QUERY, sortKey: ID) {{ edges {{ node {{
    id name email phone createdAt updatedAt processedAt cancelledAt cancelReason closedAt
    displayFinancialStatus displayFulfillmentStatus currencyCode note tags totalPriceSet {{ {_MONEY} }}
    shippingAddress {{ name firstName lastName company address1 address2 city province provinceCode zip country countryCodeV2 phone }}
    fulfillments {{ id }}
    refunds {{ id }}
    lineItems {{ edges {{ node {{ {_LINE} }} }} }}
    shippingLines(includeRemovals: true) {{ edges {{ node {{ id code title source isRemoved originalPriceSet {{ {_MONEY} }} }} }} }}
  }} }} }}
}}"""
DOCUMENTS = {
    name: value for name, value in dict(globals()).items()
    if name.isupper() and isinstance(value, str) and ("query " in value or "mutation " in value)
}
DOCUMENTS["BULK_ORDERS_QUERY"] = BULK_ORDERS_QUERY.replace("QUERY", json.dumps("updated_at:>='2026-01-01T00:00:00Z'"))


def topic_header_form(topic: str) -> str:
    """`ORDERS_CREATE` -> `orders/create` (the form of the X-Shopify-Topic header)."""
    head, _, rest = topic.lower().partition("_")
    return f"{head}/{rest}"


def topic_enum(topic: str) -> str:
    """`orders/create` -> `ORDERS_CREATE` (GraphQL's WebhookSubscriptionTopic)."""
    return topic.replace("/", "_").upper()


# ---------------------------------------------------------------------------- the resource


def _same_shipment(fulfillment: Mapping[str, Any], quantities: Mapping[int, int], tracking_number: str | None) -> bool:
    if fulfillment.get("status") not in OPEN_FULFILLMENT_STATUSES:
        return False
    if (fulfillment.get("tracking_number") or None) != (tracking_number or None):
        return False
    got: dict[int, int] = {}
    for item in fulfillment.get("line_items") or []:
        got[int(item["id"])] = got.get(int(item["id"]), 0) + int(item.get("quantity") or 0)
    return got == dict(quantities)


class ShopifyResource(HttpConnector):
    """Shopify GraphQL Admin API client for one shop."""

    base_url: str = Field(description="The shop's admin root, e.g. https://my-shop.myshopify.com.")
    access_token: str = Field(description="Admin API access token (wire it with dg.EnvVar).")
    api_version: str = Field(default=API_VERSION, description="Admin API version in the URL (see docs/api-versions.md).")
    timeout_s: float = Field(default=30.0, description="Per-request timeout in seconds.")
    max_elapsed_s: float = Field(default=120.0, description="Give up retrying (or waiting out throttling) after this long.")
    page_size: int = Field(default=50, description="Records per page for simple lists (Shopify allows up to 250).")
    inventory_batch_size: int = Field(default=INVENTORY_BATCH, ge=1, le=INVENTORY_BATCH,
                                      description="Quantities per inventorySetQuantities call (Shopify allows 250).")
    order_page_size: int = Field(default=3, description="Orders per page: a full order with refunds is a costly query.")

    # ------------------------------------------------------------------ plumbing

    def _client_options(self) -> dict[str, Any]:
        return {"headers": {"X-Shopify-Access-Token": self.access_token, "Content-Type": "application/json"}}

    def _endpoint(self) -> str:
        return f"/admin/api/{self.api_version}/graphql.json"

    def execute(self, document: str, variables: Mapping[str, Any] | None = None, *, what: str,
                policy: RetryPolicy | None = None) -> dict[str, Any]:
        """Run one GraphQL document; returns `data`. Waits out `THROTTLED` by the reported
        cost; raises `ShopifyError` when Shopify refuses the document or the call."""
        deadline = time.monotonic() + self.max_elapsed_s
        payload = {"query": document, "variables": dict(variables or {})}
        while True:
            response = send_with_retries(self._http(), "POST", self._endpoint(), system=SYSTEM,
                                         policy=policy or self._policy(), content=json.dumps(payload))
            body = self._body(response, what)
            errors = body.get("errors") or []
            if any((e.get("extensions") or {}).get("code") == "THROTTLED" for e in errors if isinstance(e, Mapping)):
                wait = self._throttle_wait(body)
                cost = (body.get("extensions") or {}).get("cost") or {}
                if float(cost.get("requestedQueryCost") or 0) > float(
                        (cost.get("throttleStatus") or {}).get("maximumAvailable") or float("inf")):
                    raise ShopifyError(f"{what}: the query costs more than the shop's whole bucket", 429, errors)
                if time.monotonic() + wait > deadline:
                    raise ShopifyError(f"{what}: still throttled after {self.max_elapsed_s:.0f}s", 429, errors)
                log.info("shopify %s throttled; waiting %.2fs for the cost bucket", what, wait)
                time.sleep(wait)
                continue
            if errors:
                raise ShopifyError(f"{what}: {_messages(errors)}", 400, errors)
            return body.get("data") or {}

    @staticmethod
    def _body(response: httpx.Response, what: str) -> dict[str, Any]:
        if response.status_code >= 400:
            try:
                errors = response.json().get("errors")
            except ValueError:
                errors = response.text[:500]
            raise ShopifyError(f"{what}: HTTP {response.status_code}: {errors}", response.status_code, errors)
        try:
            body = response.json()
        except ValueError as exc:
            raise ShopifyError(f"{what}: the answer is not JSON", response.status_code, response.text[:500]) from exc
        return body if isinstance(body, dict) else {}

    @staticmethod
    def _throttle_wait(body: Mapping[str, Any]) -> float:
        """Seconds until the bucket holds the requested cost again (what Shopify asks clients to do)."""
        cost = (body.get("extensions") or {}).get("cost") or {}
        status = cost.get("throttleStatus") or {}
        requested = float(cost.get("requestedQueryCost") or 0)
        available = float(status.get("currentlyAvailable") or 0)
        rate = float(status.get("restoreRate") or 50) or 50.0
        return min(30.0, max(0.05, (requested - available) / rate))

    def _mutate(self, document: str, variables: Mapping[str, Any], root: str, *, what: str,
                policy: RetryPolicy | None = None) -> dict[str, Any]:
        result = (self.execute(document, variables, what=what, policy=policy).get(root)) or {}
        user_errors = result.get("userErrors") or []
        if user_errors:
            raise ShopifyError(f"{what}: {_messages(user_errors)}", 422, user_errors)
        return result

    def _pages(self, document: str, variables: Mapping[str, Any], path: Sequence[str], *, what: str,
               first: int, start_after: str | None = None) -> Iterator[dict[str, Any]]:
        """Every node of a connection at `path` in the answer, following `endCursor`."""
        after: str | None = start_after
        seen: set[str] = set()
        while True:
            data = self.execute(document, {**variables, "first": first, "after": after}, what=what)
            connection: Any = data
            for key in path:
                connection = (connection or {}).get(key)
            if connection is None:
                return
            yield from connection.get("nodes") or []
            info = connection.get("pageInfo") or {}
            after = info.get("endCursor")
            if not info.get("hasNextPage") or not after:
                return
            if after in seen:
                raise ShopifyError(f"{what}: paging did not advance")
            seen.add(after)

    def probe(self) -> None:
        """A cheap authenticated read (the shop's name); raises `ShopifyError` on failure."""
        try:
            self.execute(SHOP_QUERY, what="probe", policy=self._policy(attempts=2, max_elapsed_s=10.0))
        except ShopifyError:
            raise
        except ConnectorError as exc:  # transport failure or 5xx after retries
            raise ShopifyError(f"probe: {exc}", exc.status, exc.body) from exc

    # ------------------------------------------------------------------ orders

    def iter_orders(
        self,
        updated_at_min: datetime | str | None = None,
        *,
        status: str = "any",
        fields: Iterable[str] | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Orders (any status by default) updated at or after `updated_at_min`, in REST shape.
        `fields` keeps only those keys of each order (as REST's `fields=` did)."""
        terms = []
        if updated_at_min is not None:
            terms.append(f"updated_at:>='{_iso(updated_at_min)}'")
        if status != "any":
            terms.append(f"status:{status}")
        wanted = list(fields) if fields else None
        for node in self._pages(ORDERS_QUERY, {"query": " ".join(terms) or None}, ["orders"], what="list orders",
                                first=self.order_page_size):
            order = order_from_graphql(self._complete(node))
            yield {k: order.get(k) for k in wanted} if wanted else order

    def get_order(self, order_id: int | str) -> dict[str, Any] | None:
        """The order, or None when Shopify does not know it."""
        node = self.execute(ORDER_QUERY, {"id": gid("Order", order_id)}, what=f"get order {order_id}").get("order")
        return order_from_graphql(self._complete(node)) if node else None

    def _complete(self, node: dict[str, Any]) -> dict[str, Any]:
        """The order with every line item, fulfilment line and refund line: an order read
        carries the first 20 lines and 10 lines per refund, to stay under the cost limit."""
        lines = node.get("lineItems") or {}
        if (lines.get("pageInfo") or {}).get("hasNextPage"):
            rest = self._pages(LINE_ITEMS_QUERY, {"id": node["id"]}, ["order", "lineItems"],
                               what=f"lines of order {node['id']}", first=100, start_after=lines["pageInfo"]["endCursor"])
            node = {**node, "lineItems": {"nodes": [*_nodes(lines), *rest]}}
            full = self.execute(FULFILLMENTS_QUERY, {"id": node["id"]}, what=f"fulfillments of {node['id']}").get("order")
            node["fulfillments"] = (full or {}).get("fulfillments") or node.get("fulfillments")
        if any(len(_nodes(r.get("refundLineItems"))) >= ORDER_REFUND_LINES for r in node.get("refunds") or []):
            full = self.execute(REFUNDS_QUERY, {"id": node["id"]}, what=f"refunds of {node['id']}").get("order")
            node = {**node, "refunds": (full or {}).get("refunds") or node.get("refunds")}
        return node

    def list_refunds(self, order_id: int | str) -> list[dict[str, Any]]:
        node = self.execute(REFUNDS_QUERY, {"id": gid("Order", order_id)}, what=f"refunds of order {order_id}").get("order")
        return [refund_from_graphql(r, legacy_id(node["id"])) for r in node["refunds"]] if node else []

    def run_bulk_query(self, query: str, *, poll_s: float = 1.0, timeout_s: float = 3600.0) -> Iterator[dict[str, Any]]:
        """Run a bulk query (`bulkOperationRunQuery`), wait for it, and yield its JSONL objects.
        The result file is fetched without our access token: Shopify hands out a signed URL
        on its storage, which must not receive the shop's credentials."""
        started = self._mutate(BULK_RUN, {"query": query}, "bulkOperationRunQuery", what="start bulk query")
        op_id = started["bulkOperation"]["id"]
        deadline = time.monotonic() + timeout_s
        while True:
            op = self.execute(BULK_STATUS, {"id": op_id}, what=f"bulk operation {op_id}").get("bulkOperation") or {}
            status = op.get("status")
            if status == "COMPLETED":
                break
            if status in ("FAILED", "CANCELED", "EXPIRED"):
                raise ShopifyError(f"bulk operation {op_id} {status.lower()}: {op.get('errorCode')}", 422, op)
            if time.monotonic() > deadline:
                raise ShopifyError(f"bulk operation {op_id} still {status} after {timeout_s:.0f}s", None, op)
            time.sleep(poll_s)
        if not op.get("url"):
            return  # nothing matched
        with httpx.Client(timeout=httpx.Timeout(self.timeout_s)) as storage:
            response = send_with_retries(storage, "GET", op["url"], system=SYSTEM, policy=self._policy())
        if response.status_code >= 400:
            raise ShopifyError(f"bulk result of {op_id}: HTTP {response.status_code}", response.status_code)
        for line in response.text.splitlines():
            if line.strip():
                yield json.loads(line)

    def iter_orders_bulk(self, updated_at_min: datetime | str | None = None) -> Iterator[dict[str, Any]]:
        """Like `iter_orders`, for large backfills: one bulk operation instead of thousands of
        pages, then one read per order that has fulfilments or refunds (their lines)."""
        search = f"updated_at:>='{_iso(updated_at_min)}'" if updated_at_min is not None else ""
        query = BULK_ORDERS_QUERY.replace("QUERY", json.dumps(search))
        orders: dict[str, dict[str, Any]] = {}
        for obj in self.run_bulk_query(query):
            parent = obj.pop("__parentId", None)
            if parent is None:
                orders[obj["id"]] = {**obj, "lineItems": {"nodes": []}, "shippingLines": {"nodes": []}}
            elif "/LineItem/" in obj["id"]:
                orders[parent]["lineItems"]["nodes"].append(obj)
            elif "/ShippingLine/" in str(obj.get("id")):
                orders[parent]["shippingLines"]["nodes"].append(obj)
        for node in orders.values():
            if node.get("fulfillments"):
                full = self.execute(FULFILLMENTS_QUERY, {"id": node["id"]}, what=f"fulfillments of {node['id']}").get("order")
                node["fulfillments"] = (full or {}).get("fulfillments") or []
            if node.get("refunds"):
                full = self.execute(REFUNDS_QUERY, {"id": node["id"]}, what=f"refunds of {node['id']}").get("order")
                node["refunds"] = (full or {}).get("refunds") or []
            yield order_from_graphql(node)

    # ------------------------------------------------------------------ Shopify Payments

    def iter_payouts(self, issued_from: datetime | str, issued_before: datetime | str) -> Iterator[dict[str, Any]]:
        """Shopify Payments payouts issued in [issued_from, issued_before) (`payout_from_graphql`
        shape); nothing when the shop does not use Shopify Payments."""
        search = f"issued_at:>='{_iso(issued_from)}' issued_at:<'{_iso(issued_before)}'"
        for node in self._pages(PAYOUTS_QUERY, {"query": search}, ["shopifyPaymentsAccount", "payouts"],
                                what="list payouts", first=self.page_size):
            yield payout_from_graphql(node)

    def iter_balance_transactions(self, payout_id: int | str) -> Iterator[dict[str, Any]]:
        """The balance transactions of one payout (`payments_transfer_id` is the payout's id)."""
        search = f"payments_transfer_id:{legacy_id(payout_id) or payout_id}"
        for node in self._pages(BALANCE_TRANSACTIONS_QUERY, {"query": search},
                                ["shopifyPaymentsAccount", "balanceTransactions"],
                                what=f"balance transactions of payout {payout_id}", first=self.page_size):
            yield balance_transaction_from_graphql(node, str(legacy_id(payout_id) or payout_id))

    # ------------------------------------------------------------------ fulfilment

    def get_fulfillment_orders(self, order_id: int | str) -> list[dict[str, Any]]:
        """The order's fulfilment orders (REST shape: `line_items` with `line_item_id`, `fulfillable_quantity`)."""
        node = self.execute(FULFILLMENT_ORDERS_QUERY, {"id": gid("Order", order_id)},
                            what=f"fulfillment orders of {order_id}").get("order")
        if node is None:
            raise ShopifyError(f"order {order_id} not found", 404)
        return [{
            "id": legacy_id(fo["id"]), "admin_graphql_api_id": fo["id"], "order_id": legacy_id(node["id"]),
            "status": _lower(fo["status"]),
            "line_items": [{"id": legacy_id(li["id"]), "line_item_id": legacy_id(li["lineItem"]["id"]),
                            "quantity": li["totalQuantity"], "fulfillable_quantity": li["remainingQuantity"]}
                           for li in _nodes(fo.get("lineItems"))],
        } for fo in _nodes(node.get("fulfillmentOrders"))]

    def list_fulfillments(self, order_id: int | str) -> list[dict[str, Any]]:
        node = self.execute(FULFILLMENTS_QUERY, {"id": gid("Order", order_id)}, what=f"fulfillments of {order_id}").get("order")
        if node is None:
            raise ShopifyError(f"order {order_id} not found", 404)
        return [fulfillment_from_graphql(f, legacy_id(node["id"])) for f in node["fulfillments"]]

    def get_fulfillment(self, order_id: int | str, fulfillment_id: int | str) -> dict[str, Any] | None:
        """One fulfilment of the order, or None."""
        node = self.execute(FULFILLMENT_QUERY, {"id": gid("Fulfillment", fulfillment_id)},
                            what=f"fulfillment {fulfillment_id}").get("fulfillment")
        if node is None or legacy_id((node.get("order") or {}).get("id")) != legacy_id(order_id):
            return None
        return fulfillment_from_graphql(node)

    @staticmethod
    def _allocate(fulfillment_orders: list[dict[str, Any]], quantities: Mapping[int, int]) -> list[dict[str, Any]]:
        """`lineItemsByFulfillmentOrder` for the wanted line quantities; raises if short."""
        left = dict(quantities)
        groups: dict[int, list[dict[str, Any]]] = {}
        for fo in fulfillment_orders:
            if fo.get("status") not in ("open", "in_progress"):
                continue
            for item in fo.get("line_items") or []:
                line_id = int(item["line_item_id"])
                take = min(left.get(line_id, 0), int(item.get("fulfillable_quantity") or 0))
                if take > 0:
                    groups.setdefault(int(fo["id"]), []).append(
                        {"id": gid("FulfillmentOrderLineItem", item["id"]), "quantity": take})
                    left[line_id] -= take
        short = {line: qty for line, qty in left.items() if qty > 0}
        if short:
            raise ShopifyError(f"not enough fulfillable quantity for line item(s) {short}", 422, {"short": short})
        return [{"fulfillmentOrderId": gid("FulfillmentOrder", fo_id), "fulfillmentOrderLineItems": items}
                for fo_id, items in groups.items()]

    def create_fulfillment(
        self,
        order_id: int | str,
        lines: Mapping[int | str, int],
        tracking_number: str | None = None,
        company: str | None = None,
        url: str | None = None,
        *,
        notify_customer: bool = False,
    ) -> FulfillmentResult:
        """Fulfil `lines` (Shopify line item id -> quantity) of an order, with tracking (`fulfillmentCreate`).

        Idempotent: returns the existing fulfilment (created=False) when one with the same
        tracking number and quantities is there, and never resends a create that landed.
        A fulfilment without a tracking number is only matched within this call; across
        runs, Shopify refuses to fulfil the same units twice.
        """
        quantities = {int(k): int(v) for k, v in lines.items() if int(v) > 0}
        if not quantities:
            raise ValueError("a fulfilment needs at least one line with a positive quantity")
        before = self.list_fulfillments(order_id)
        known_ids = {f["id"] for f in before}
        if tracking_number:
            existing = next((f for f in before if _same_shipment(f, quantities, tracking_number)), None)
            if existing is not None:
                log.info("shopify order %s already has fulfilment %s for tracking %s", order_id, existing["id"], tracking_number)
                return FulfillmentResult(existing, False)

        def landed() -> dict[str, Any] | None:
            return next(
                (f for f in self.list_fulfillments(order_id)
                 if f["id"] not in known_ids and _same_shipment(f, quantities, tracking_number)),
                None,
            )

        groups = self._allocate(self.get_fulfillment_orders(order_id), quantities)
        tracking = {k: v for k, v in (("number", tracking_number), ("company", company), ("url", url)) if v}
        variables = {"fulfillment": {"notifyCustomer": notify_customer, "trackingInfo": tracking,
                                     "lineItemsByFulfillmentOrder": groups}}
        what = f"fulfil order {order_id}"
        try:
            result, recovered = write_once(
                lambda: self._mutate(FULFILLMENT_CREATE, variables, "fulfillmentCreate", what=what, policy=SINGLE_ATTEMPT),
                landed, system=SYSTEM, what=what, policy=self._policy(),
            )
        except ShopifyError as exc:
            if exc.status == 422:
                found = landed()  # a resend after a lost response is refused: the first one landed
                if found is not None:
                    return FulfillmentResult(found, True)
            raise
        if recovered is not None:
            return FulfillmentResult(recovered, True)
        assert result is not None
        return FulfillmentResult(fulfillment_from_graphql(result["fulfillment"], legacy_id(order_id)), True)

    def update_tracking(
        self,
        fulfillment_id: int | str,
        tracking_number: str,
        company: str | None = None,
        url: str | None = None,
        *,
        notify_customer: bool = False,
    ) -> dict[str, Any]:
        """Correct or add the tracking of a fulfilment (idempotent: it sets, not adds)."""
        tracking = {k: v for k, v in (("number", tracking_number), ("company", company), ("url", url)) if v}
        result = self._mutate(TRACKING_UPDATE, {"id": gid("Fulfillment", fulfillment_id), "tracking": tracking,
                                                "notify": notify_customer},
                              "fulfillmentTrackingInfoUpdate", what=f"update tracking of {fulfillment_id}")
        return fulfillment_from_graphql(result["fulfillment"])

    # ------------------------------------------------------------------ inventory and catalogue

    def iter_inventory_levels(
        self, location_ids: Iterable[int | str], inventory_item_ids: Iterable[int | str] | None = None,
    ) -> Iterator[dict[str, Any]]:
        """`available` per (inventory item, location), REST-shaped."""
        wanted = {int(legacy_id(x) or 0) for x in inventory_item_ids} if inventory_item_ids is not None else None
        for location_id in location_ids:
            for node in self._pages(INVENTORY_LEVELS_QUERY, {"location": gid("Location", location_id)},
                                    ["location", "inventoryLevels"], what=f"inventory at {location_id}",
                                    first=self.page_size):
                item_id = legacy_id(node["item"]["id"])
                if wanted is not None and item_id not in wanted:
                    continue
                available = next((q["quantity"] for q in node.get("quantities") or [] if q["name"] == "available"), None)
                yield {"inventory_item_id": item_id, "location_id": legacy_id(location_id), "available": available,
                       "updated_at": node.get("updatedAt")}

    def set_inventory_levels(self, levels: Iterable[Mapping[str, Any]], *, reason: str = "correction",
                             reference: str | None = None) -> list[dict[str, Any]]:
        """Set absolute `available` per (`inventory_item_id`, `location_id`) with
        `inventorySetQuantities`, up to 250 per call; safe to repeat. Clarus is the master
        of stock, so no compare-and-swap (`changeFromQuantity: null`)."""
        rows = [{"inventory_item_id": int(legacy_id(lv["inventory_item_id"]) or 0),
                 "location_id": int(legacy_id(lv["location_id"]) or 0), "available": int(lv["available"])} for lv in levels]
        for start in range(0, len(rows), self.inventory_batch_size):
            batch = rows[start:start + self.inventory_batch_size]
            key = str(uuid.uuid4())  # one key per batch, reused by every resend of it
            variables = {"key": key, "input": {
                "name": "available", "reason": reason,
                "referenceDocumentUri": reference or f"gid://{REFERENCE_APP}/StockPush/{key}",
                "quantities": [{"inventoryItemId": gid("InventoryItem", r["inventory_item_id"]),
                                "locationId": gid("Location", r["location_id"]), "quantity": r["available"],
                                "changeFromQuantity": None} for r in batch],
            }}
            self._mutate(INVENTORY_SET, variables, "inventorySetQuantities",
                         what=f"set inventory of {len(batch)} item(s)")
        return rows

    def adjust_inventory_level(self, inventory_item_id: int | str, location_id: int | str, delta: int) -> dict[str, Any]:
        """Add `delta` to `available` (`inventoryAdjustQuantities`). The idempotency key makes
        a resend after a lost response harmless; prefer `set_inventory_levels` all the same."""
        key = str(uuid.uuid4())
        variables = {"key": key, "input": {
            "name": "available", "reason": "correction", "referenceDocumentUri": f"gid://{REFERENCE_APP}/Adjustment/{key}",
            "changes": [{"inventoryItemId": gid("InventoryItem", inventory_item_id), "locationId": gid("Location", location_id),
                         "delta": int(delta), "changeFromQuantity": None}],
        }}
        result = self._mutate(INVENTORY_ADJUST, variables, "inventoryAdjustQuantities",
                              what=f"adjust inventory of {inventory_item_id}")
        change = next(iter((result.get("inventoryAdjustmentGroup") or {}).get("changes") or []), {})
        return {"inventory_item_id": legacy_id(inventory_item_id), "location_id": legacy_id(location_id),
                "available": change.get("quantityAfterChange")}

    def iter_variants(self, *, skus: Iterable[str] | None = None) -> Iterator[dict[str, Any]]:
        """Every variant (or those with the given SKUs), REST-shaped with `product_title` added.
        GraphQL has no 100-variants-per-product limit."""
        queries: list[str | None] = [f"sku:{json.dumps(s)}" for s in skus] if skus is not None else [None]
        for query in queries:
            for node in self._pages(VARIANTS_QUERY, {"query": query}, ["productVariants"], what="list variants",
                                    first=self.page_size):
                product = node.get("product") or {}
                yield {
                    "id": legacy_id(node["id"]), "admin_graphql_api_id": node["id"], "product_id": legacy_id(product.get("id")),
                    "title": node.get("title"), "sku": node.get("sku"), "barcode": node.get("barcode"),
                    "price": node.get("price"), "inventory_item_id": legacy_id((node.get("inventoryItem") or {}).get("id")),
                    "inventory_quantity": node.get("inventoryQuantity"), "product_title": product.get("title"),
                }

    def list_locations(self) -> list[dict[str, Any]]:
        return [{"id": legacy_id(n["id"]), "admin_graphql_api_id": n["id"], "name": n.get("name"), "active": n.get("isActive")}
                for n in self._pages(LOCATIONS_QUERY, {}, ["locations"], what="locations", first=self.page_size)]

    # ------------------------------------------------------------------ webhook subscriptions

    def list_webhook_subscriptions(self) -> list[dict[str, Any]]:
        """The shop's webhook subscriptions: `{"id", "topic" ("orders/create"), "uri"}`."""
        return [{"id": n["id"], "topic": topic_header_form(n["topic"]), "uri": n["uri"]}
                for n in self._pages(WEBHOOKS_QUERY, {}, ["webhookSubscriptions"], what="webhook subscriptions",
                                     first=self.page_size)]

    def create_webhook_subscription(self, topic: str, uri: str) -> dict[str, Any]:
        """Subscribe `uri` to `topic` (header form, e.g. `orders/create`), JSON payloads."""
        result = self._mutate(WEBHOOK_CREATE, {"topic": topic_enum(topic), "subscription": {"uri": uri, "format": "JSON"}},
                              "webhookSubscriptionCreate", what=f"subscribe {topic}")
        sub = result["webhookSubscription"]
        return {"id": sub["id"], "topic": topic_header_form(sub["topic"]), "uri": sub["uri"]}

    def delete_webhook_subscription(self, subscription_id: str) -> None:
        self._mutate(WEBHOOK_DELETE, {"id": gid("WebhookSubscription", subscription_id)}, "webhookSubscriptionDelete",
                     what=f"delete webhook subscription {subscription_id}")


def _messages(errors: Sequence[Any]) -> str:
    return "; ".join(str(e.get("message") if isinstance(e, Mapping) else e) for e in errors)[:1000]
