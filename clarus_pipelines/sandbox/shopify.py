"""A local Shopify store: the GraphQL Admin API the pipelines use, the legacy REST subset, and signed webhooks.

The pipelines talk to `POST /admin/api/<version>/graphql.json` only (`shopify_graphql.py`):
every document is validated against Shopify's published Admin GraphQL schema (2026-10),
throttled by calculated query cost, and mutations Shopify marks idempotent need their
`@idempotent(key:)`. The REST routes stay for the sandbox's own tests and for tools that
still read REST; their shapes follow Shopify's published REST payloads for API 2025-07
(see `shared/fixtures/shopify/`), which are also the webhook payloads Shopify sends:
orders with line items, shipping lines, fulfilments and refunds; FulfillmentOrder-based
fulfilment; inventory levels; products with variants; locations. Behaviour worth testing
against is real too:

- `X-Shopify-Access-Token` is required (401 otherwise);
- REST: the leaky bucket (default 40 calls, leaking 2 per second) answers 429 with
  `Retry-After` when full and reports `X-Shopify-Shop-Api-Call-Limit` on every call;
  list endpoints page with cursors in the `Link` header (`page_info`);
- GraphQL: a cost bucket (`graphql_points`, refilled at `graphql_restore_rate`/s) answers
  `THROTTLED` and reports `extensions.cost.throttleStatus`; connections page with cursors;
- a fulfilment for quantities that are already fulfilled is refused (422 / `userErrors`);
- webhooks (orders/create, orders/updated, orders/edited, orders/cancelled,
  refunds/create) are signed with `X-Shopify-Hmac-Sha256` (base64 HMAC-SHA256 of the raw
  body) and carry `X-Shopify-Webhook-Id` (kept on duplicate deliveries), topic, shop
  domain, API version, triggered-at and event id headers. They go to `webhook_url`;
  subscriptions made with `webhookSubscriptionCreate` are recorded (and listed, deleted)
  but do not redirect deliveries.

Orders are placed, edited, cancelled and refunded in-process (`create_order`,
`edit_order`, `update_shipping_address`, `cancel_order`, `refund_order`), which is what
the traffic generator and tests do, and also over `/_sandbox/` for other processes.
`/_sandbox/` also serves the records (orders, fulfilments with their creation time,
inventory levels, webhooks sent, the ordered request log) and `POST /_sandbox/reset`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import json
import logging
import random
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import ROUND_HALF_UP, Decimal
from typing import Any
from zoneinfo import ZoneInfo

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from clarus_pipelines.sandbox.catalog_data import SHOPIFY_LOCATION_ID, Catalog, CatalogItem, build_catalog
from clarus_pipelines.sandbox.faults import FaultConfig, FaultMiddleware, WebhookSender
from clarus_pipelines.sandbox.request_log import RequestLog, RequestLogMiddleware
from clarus_pipelines.sandbox.shopify_graphql import CostBucket, ShopifyGraphQL, root_fields

log = logging.getLogger(__name__)

SHOP_TIMEZONE = ZoneInfo("Europe/London")
CENT = Decimal("0.01")
VAT_RATE = Decimal("0.20")
WEBHOOK_TOPICS = ("orders/create", "orders/updated", "orders/edited", "orders/cancelled", "refunds/create")
RESTOCK_TYPES = ("no_restock", "cancel", "return", "legacy_restock")
MAX_LIMIT = 250

_UNAUTHORIZED = {"errors": "[API] Invalid API key or access token (unrecognized login or wrong password)"}
_THROTTLED = {"errors": "Exceeded 2 calls per second for api client. Reduce request rates to resume uninterrupted service."}
_NOT_FOUND = {"errors": "Not Found"}

_TRACKING_URLS = {
    "royal mail": "https://www.royalmail.com/track-your-item#/tracking-results/{n}",
    "dpd": "https://track.dpd.co.uk/parcels/{n}",
    "dpd uk": "https://track.dpd.co.uk/parcels/{n}",
    "dhl express": "https://www.dhl.com/gb-en/home/tracking.html?tracking-id={n}",
    "dhl": "https://www.dhl.com/gb-en/home/tracking.html?tracking-id={n}",
    "ups": "https://www.ups.com/WebTracking?loc=en_US&requester=ST&trackNums={n}",
    "evri": "https://www.evri.com/track/parcel/{n}",
    "fedex": "https://www.fedex.com/fedextrack/?trknbr={n}",
}


class ShopifyError(ValueError):
    """An in-process change Shopify would refuse (the REST API answers 422 for these)."""


# ---------------------------------------------------------------------------- helpers


def _money(value: Decimal) -> str:
    return str(value.quantize(CENT, rounding=ROUND_HALF_UP))


def _included_vat(gross: Decimal) -> Decimal:
    return (gross * VAT_RATE / (1 + VAT_RATE)).quantize(CENT, rounding=ROUND_HALF_UP)


def _parse_time(value: str) -> datetime:
    parsed = datetime.fromisoformat(value.strip().replace(" ", "+").replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def _micros(dt: datetime) -> int:
    return int(dt.timestamp() * 1_000_000)


class LeakyBucket:
    """Shopify's REST rate limit: each call adds one; the bucket leaks `leak_rate` per second."""

    def __init__(self, size: int = 40, leak_rate: float = 2.0, clock: Callable[[], float] = time.monotonic):
        if size < 1 or leak_rate <= 0:
            raise ValueError("bucket size must be >= 1 and leak rate > 0")
        self.size = size
        self.leak_rate = leak_rate
        self.clock = clock
        self._level = 0.0
        self._at = clock()
        self._lock = threading.Lock()

    def take(self) -> tuple[bool, int, float]:
        """(allowed, level after the call, seconds to wait when refused)."""
        with self._lock:
            now = self.clock()
            self._level = max(0.0, self._level - (now - self._at) * self.leak_rate)
            self._at = now
            if self._level + 1 > self.size + 1e-9:  # tolerate float drift in the leak
                wait = (self._level + 1 - self.size) / self.leak_rate
                return False, self.size, wait
            self._level += 1
            return True, min(self.size, int(self._level + 0.999)), 0.0

    def reset(self) -> None:
        with self._lock:
            self._level, self._at = 0.0, self.clock()


# ---------------------------------------------------------------------------- records


@dataclass
class _Line:
    id: int
    variant_id: int | None
    product_id: int | None
    inventory_item_id: int | None
    sku: str | None
    title: str
    variant_title: str | None
    price: Decimal
    quantity: int  # as placed (or as added by an edit)
    ordered: int  # after edits
    fo_line_id: int
    grams: int = 250
    fulfilled: int = 0
    refunded_unfulfilled: int = 0  # removed before dispatch (restock cancel / no_restock)
    refunded_fulfilled: int = 0  # refunded after dispatch (returns, goodwill on goods)

    @property
    def current_quantity(self) -> int:
        return max(0, self.ordered - self.refunded_unfulfilled - self.refunded_fulfilled)

    @property
    def to_fulfil(self) -> int:
        """Units the fulfilment order still expects (ordered less cancelled)."""
        return max(0, self.ordered - self.refunded_unfulfilled)

    @property
    def fulfillable(self) -> int:
        return max(0, self.to_fulfil - self.fulfilled)


@dataclass
class _ShippingLine:
    id: int
    code: str | None
    title: str | None
    price: Decimal
    source: str = "shopify"
    refunded: Decimal = Decimal("0")


@dataclass
class _Order:
    id: int
    number: int
    token: str
    created_at: datetime
    updated_at: datetime
    email: str | None
    phone: str | None
    customer: dict[str, Any] | None
    shipping_address: dict[str, Any] | None
    billing_address: dict[str, Any] | None
    lines: list[_Line]
    shipping_lines: list[_ShippingLine]
    tags: str
    note: str | None
    fo_id: int
    location_id: int
    paid: Decimal = Decimal("0")
    refunded: Decimal = Decimal("0")
    cancelled_at: datetime | None = None
    cancel_reason: str | None = None
    closed_at: datetime | None = None
    fulfillment_ids: list[int] = field(default_factory=list)
    refund_ids: list[int] = field(default_factory=list)
    fo_created_at: datetime | None = None

    @property
    def name(self) -> str:
        return f"#{self.number}"

    def line(self, line_id: int) -> _Line | None:
        return next((ln for ln in self.lines if ln.id == line_id), None)


@dataclass
class _Fulfillment:
    id: int
    order_id: int
    record: dict[str, Any]
    quantities: dict[int, int]  # line item id -> units
    recorded_at: float  # epoch seconds


# ---------------------------------------------------------------------------- the sandbox


class ShopifySandbox:
    """In-memory Shopify store with the Admin REST API as an ASGI app (`.app`)."""

    system = "shopify"

    def __init__(
        self,
        *,
        seed: int = 0,
        faults: FaultConfig = FaultConfig(),
        access_token: str,
        webhook_secret: str,
        webhook_url: str | None = None,
        webhook_sender: WebhookSender | None = None,
        api_version: str = "2026-10",
        shop_domain: str = "sandbox.myshopify.com",
        catalog: Catalog | None = None,
        bucket_size: int = 40,
        leak_rate_per_s: float = 2.0,
        graphql_points: float = 2000.0,
        graphql_restore_rate: float = 100.0,
        location_id: int = SHOPIFY_LOCATION_ID,
        currency: str = "GBP",
        clock: Callable[[], datetime] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ):
        if not access_token or not webhook_secret:
            raise ValueError("the Shopify sandbox needs an access token and a webhook secret")
        self.seed = seed
        self.faults = faults
        self.access_token = access_token
        self.webhook_secret = webhook_secret
        self.webhook_url = webhook_url
        self._owns_sender = webhook_sender is None and webhook_url is not None
        self.webhook_sender = webhook_sender or (
            WebhookSender(faults, seed=seed, system="shopify") if webhook_url else None
        )
        self.api_version = api_version
        self.shop_domain = shop_domain
        self.catalog = catalog or build_catalog(seed)
        self.location_id = location_id
        self.currency = currency
        self.clock = clock or (lambda: datetime.now(timezone.utc))
        self.bucket = LeakyBucket(bucket_size, leak_rate_per_s, monotonic)
        self.request_log = RequestLog()
        self._lock = threading.RLock()
        self.graphql = ShopifyGraphQL(self, bucket=CostBucket(graphql_points, graphql_restore_rate, monotonic))
        self._reset_state()
        router = Starlette(routes=self._routes())
        self.app = RequestLogMiddleware(FaultMiddleware(router, faults, seed=seed, system="shopify"), self.request_log)

    # ------------------------------------------------------------------ state

    def _reset_state(self) -> None:
        self._random = random.Random(f"shopify:{self.seed}")
        self._ids = {
            "order": itertools.count(5_900_000_000_001),
            "line": itertools.count(13_700_000_000_001),
            "shipping_line": itertools.count(4_200_000_000_001),
            "fo": itertools.count(6_400_000_000_001),
            "fo_line": itertools.count(14_100_000_000_001),
            "fulfillment": itertools.count(5_300_000_000_001),
            "refund": itertools.count(9_100_000_000_001),
            "refund_line": itertools.count(3_600_000_000_001),
            "adjustment": itertools.count(2_700_000_000_001),
            "transaction": itertools.count(7_400_000_000_001),
            "edit": itertools.count(1_500_000_000_001),
            "customer": itertools.count(8_800_000_000_001),
        }
        self._order_numbers = itertools.count(1001)
        self._orders: dict[int, _Order] = {}
        self._fo_index: dict[int, int] = {}  # fulfillment order id -> order id
        self._fulfillments: dict[int, _Fulfillment] = {}
        self._refunds: dict[int, dict[str, Any]] = {}
        started = self.clock()
        self._inventory: dict[tuple[int, int], dict[str, Any]] = {
            (item.inventory_item_id, self.location_id): {"available": item.initial_available, "updated_at": started}
            for item in self.catalog.variants
        }
        self.webhooks: list[dict[str, Any]] = []
        self.bucket.reset()
        self.graphql.reset()

    def reset(self) -> None:
        """Back to the seeded catalogue and stock, with no orders, requests or webhooks."""
        with self._lock:
            self._reset_state()
            self.request_log.clear()

    def close(self) -> None:
        if self._owns_sender and self.webhook_sender:
            self.webhook_sender.close()

    def _next(self, kind: str) -> int:
        return next(self._ids[kind])

    def _uuid(self) -> str:
        return str(uuid.UUID(int=self._random.getrandbits(128), version=4))

    # ------------------------------------------------------------------ rendering

    def _iso(self, dt: datetime | None) -> str | None:
        return dt.astimezone(SHOP_TIMEZONE).isoformat(timespec="seconds") if dt else None

    def _money_set(self, amount: Decimal | str) -> dict[str, Any]:
        value = amount if isinstance(amount, str) else _money(amount)
        bag = {"amount": value, "currency_code": self.currency}
        return {"shop_money": dict(bag), "presentment_money": dict(bag)}

    def _render_line(self, line: _Line, *, quantity: int | None = None) -> dict[str, Any]:
        qty = line.ordered if quantity is None else quantity
        if line.fulfilled and line.fulfillable == 0:
            status = "fulfilled"
        elif line.fulfilled:
            status = "partial"
        else:
            status = None
        tax = _included_vat(line.price * qty)
        return {
            "id": line.id,
            "admin_graphql_api_id": f"gid://shopify/LineItem/{line.id}",
            "attributed_staffs": [],
            "current_quantity": line.current_quantity,
            "fulfillable_quantity": line.fulfillable,
            "fulfillment_service": "manual",
            "fulfillment_status": status,
            "gift_card": False,
            "grams": line.grams,
            "name": line.title + (f" - {line.variant_title}" if line.variant_title else ""),
            "price": _money(line.price),
            "price_set": self._money_set(line.price),
            "product_exists": line.product_id is not None,
            "product_id": line.product_id,
            "properties": [],
            "quantity": qty,
            "requires_shipping": True,
            "sku": line.sku,
            "taxable": True,
            "title": line.title,
            "total_discount": "0.00",
            "total_discount_set": self._money_set(Decimal("0")),
            "variant_id": line.variant_id,
            "variant_inventory_management": "shopify" if line.variant_id else None,
            "variant_title": line.variant_title,
            "vendor": "Clarus Sandbox Co",
            "tax_lines": [
                {"channel_liable": False, "price": _money(tax), "price_set": self._money_set(tax), "rate": float(VAT_RATE), "title": "GB VAT"}
            ],
            "duties": [],
            "discount_allocations": [],
        }

    def _render_shipping_line(self, sl: _ShippingLine) -> dict[str, Any]:
        return {
            "id": sl.id,
            "carrier_identifier": None,
            "code": sl.code,
            "discounted_price": _money(sl.price),
            "discounted_price_set": self._money_set(sl.price),
            "is_removed": False,
            "phone": None,
            "price": _money(sl.price),
            "price_set": self._money_set(sl.price),
            "requested_fulfillment_service_id": None,
            "source": sl.source,
            "title": sl.title,
            "tax_lines": [],
            "discount_allocations": [],
        }

    def _totals(self, order: _Order) -> dict[str, Decimal]:
        lines_total = sum((ln.price * ln.ordered for ln in order.lines), Decimal("0"))
        current_lines = sum((ln.price * ln.current_quantity for ln in order.lines), Decimal("0"))
        shipping = sum((sl.price for sl in order.shipping_lines), Decimal("0"))
        shipping_left = sum((sl.price - sl.refunded for sl in order.shipping_lines), Decimal("0"))
        total = lines_total + shipping
        current_total = current_lines + shipping_left
        if order.cancelled_at is not None:
            current_total = current_lines = Decimal("0")
        return {
            "lines": lines_total, "current_lines": current_lines, "shipping": shipping,
            "total": total, "current_total": current_total,
            "outstanding": max(Decimal("0"), total - order.paid),
        }

    def _financial_status(self, order: _Order, totals: dict[str, Decimal]) -> str:
        if order.paid > 0 and order.refunded >= order.paid:
            return "refunded"
        if order.refunded > 0:
            return "partially_refunded"
        if order.cancelled_at is not None and order.paid == 0:
            return "voided"
        if totals["outstanding"] > 0:
            return "partially_paid" if order.paid > 0 else "pending"
        return "paid"

    def _fulfillment_status(self, order: _Order) -> str | None:
        fulfilled = sum(ln.fulfilled for ln in order.lines)
        if not fulfilled:
            return None
        return "fulfilled" if all(ln.fulfillable == 0 for ln in order.lines) else "partial"

    def _render_order(self, order: _Order) -> dict[str, Any]:
        totals = self._totals(order)
        tax = _included_vat(totals["total"])
        current_tax = _included_vat(totals["current_total"])
        gateway = "shopify_payments"
        return {
            "id": order.id,
            "admin_graphql_api_id": f"gid://shopify/Order/{order.id}",
            "app_id": 580111,
            "browser_ip": "203.0.113.10",
            "buyer_accepts_marketing": False,
            "cancel_reason": order.cancel_reason,
            "cancelled_at": self._iso(order.cancelled_at),
            "cart_token": order.token[:32],
            "checkout_id": order.id + 11,
            "checkout_token": order.token[::-1][:32],
            "client_details": {"accept_language": "en-GB", "browser_height": None, "browser_ip": "203.0.113.10",
                               "browser_width": None, "session_hash": None, "user_agent": None},
            "closed_at": self._iso(order.closed_at),
            "confirmation_number": order.token[:9].upper(),
            "confirmed": True,
            "contact_email": order.email,
            "created_at": self._iso(order.created_at),
            "currency": self.currency,
            "current_subtotal_price": _money(totals["current_lines"]),
            "current_subtotal_price_set": self._money_set(totals["current_lines"]),
            "current_total_additional_fees_set": None,
            "current_total_discounts": "0.00",
            "current_total_discounts_set": self._money_set(Decimal("0")),
            "current_total_duties_set": None,
            "current_total_price": _money(totals["current_total"]),
            "current_total_price_set": self._money_set(totals["current_total"]),
            "current_total_tax": _money(current_tax),
            "current_total_tax_set": self._money_set(current_tax),
            "customer_locale": "en-GB",
            "device_id": None,
            "discount_codes": [],
            "duties_included": False,
            "email": order.email,
            "estimated_taxes": False,
            "financial_status": self._financial_status(order, totals),
            "fulfillment_status": self._fulfillment_status(order),
            "landing_site": "/",
            "landing_site_ref": None,
            "location_id": None,
            "merchant_business_entity_id": "MTU0ODM4MDAwOQ",
            "merchant_of_record_app_id": None,
            "name": order.name,
            "note": order.note,
            "note_attributes": [],
            "number": order.number - 1000,
            "order_number": order.number,
            "order_status_url": f"https://{self.shop_domain}/orders/{order.token}/authenticate?key={order.token[:16]}",
            "original_total_additional_fees_set": None,
            "original_total_duties_set": None,
            "payment_gateway_names": [gateway],
            "phone": order.phone,
            "po_number": None,
            "presentment_currency": self.currency,
            "processed_at": self._iso(order.created_at),
            "reference": None,
            "referring_site": None,
            "source_identifier": None,
            "source_name": "web",
            "source_url": None,
            "subtotal_price": _money(totals["lines"]),
            "subtotal_price_set": self._money_set(totals["lines"]),
            "tags": order.tags,
            "tax_exempt": False,
            "tax_lines": [{"price": _money(tax), "rate": float(VAT_RATE), "title": "GB VAT",
                           "price_set": self._money_set(tax), "channel_liable": False}],
            "taxes_included": True,
            "test": False,
            "token": order.token,
            "total_cash_rounding_payment_adjustment_set": self._money_set(Decimal("0")),
            "total_cash_rounding_refund_adjustment_set": self._money_set(Decimal("0")),
            "total_discounts": "0.00",
            "total_discounts_set": self._money_set(Decimal("0")),
            "total_line_items_price": _money(totals["lines"]),
            "total_line_items_price_set": self._money_set(totals["lines"]),
            "total_outstanding": _money(totals["outstanding"]),
            "total_price": _money(totals["total"]),
            "total_price_set": self._money_set(totals["total"]),
            "total_shipping_price_set": self._money_set(totals["shipping"]),
            "total_tax": _money(tax),
            "total_tax_set": self._money_set(tax),
            "total_tip_received": "0.00",
            "total_weight": sum(ln.grams * ln.ordered for ln in order.lines),
            "updated_at": self._iso(order.updated_at),
            "user_id": None,
            "billing_address": order.billing_address,
            "customer": order.customer,
            "discount_applications": [],
            "fulfillments": [self._fulfillments[f].record for f in order.fulfillment_ids],
            "line_items": [self._render_line(ln) for ln in order.lines],
            "payment_terms": None,
            "refunds": [self._refunds[r] for r in order.refund_ids],
            "shipping_address": order.shipping_address,
            "shipping_lines": [self._render_shipping_line(sl) for sl in order.shipping_lines],
        }

    def _fo_status(self, order: _Order) -> str:
        fulfilled = sum(ln.fulfilled for ln in order.lines)
        if order.cancelled_at is not None and not fulfilled:
            return "cancelled"
        if all(ln.fulfillable == 0 for ln in order.lines) or order.cancelled_at is not None:
            return "closed"
        return "in_progress" if fulfilled else "open"

    def _render_fulfillment_order(self, order: _Order) -> dict[str, Any]:
        status = self._fo_status(order)
        address = order.shipping_address or {}
        return {
            "id": order.fo_id,
            "created_at": self._iso(order.fo_created_at or order.created_at),
            "updated_at": self._iso(order.updated_at),
            "shop_id": 548380009,
            "order_id": order.id,
            "assigned_location_id": order.location_id,
            "request_status": "unsubmitted",
            "status": status,
            "fulfill_at": None,
            "fulfill_by": None,
            "supported_actions": ["create_fulfillment", "hold", "move"] if status in ("open", "in_progress") else [],
            "destination": {
                "id": order.fo_id + 7,
                **{k: address.get(k) for k in ("address1", "address2", "city", "company", "country", "first_name",
                                               "last_name", "phone", "province", "zip")},
                "email": order.email,
            } if order.shipping_address else None,
            "line_items": [
                {
                    "id": ln.fo_line_id,
                    "shop_id": 548380009,
                    "fulfillment_order_id": order.fo_id,
                    "quantity": ln.to_fulfil,
                    "line_item_id": ln.id,
                    "inventory_item_id": ln.inventory_item_id,
                    "fulfillable_quantity": ln.fulfillable if status in ("open", "in_progress") else 0,
                    "variant_id": ln.variant_id,
                }
                for ln in order.lines
                if ln.to_fulfil > 0
            ],
            "international_duties": None,
            "fulfillment_holds": [],
            "delivery_method": {"id": order.fo_id + 3, "method_type": "shipping", "min_delivery_date_time": None,
                                "max_delivery_date_time": None},
            "assigned_location": {"address1": "Unit 4, Sandbox Park", "address2": None, "city": "Northampton",
                                  "country_code": "GB", "location_id": order.location_id, "name": "Clarus DC",
                                  "phone": None, "province": None, "zip": "NN4 7PA"},
            "merchant_requests": [],
        }

    def _render_variant(self, item: CatalogItem) -> dict[str, Any]:
        level = self._inventory.get((item.inventory_item_id, self.location_id), {"available": 0})
        created = self._iso(datetime(2025, 3, 1, 9, 0, tzinfo=timezone.utc))
        title = item.display_name.split(" - ", 1)[1] if " - " in item.display_name else "Default Title"
        return {
            "id": item.variant_id,
            "product_id": item.product_id,
            "title": title,
            "price": _money(item.price),
            "position": 1,
            "inventory_policy": "deny",
            "compare_at_price": None,
            "option1": title,
            "option2": None,
            "option3": None,
            "created_at": created,
            "updated_at": created,
            "taxable": True,
            "barcode": item.upc,
            "fulfillment_service": "manual",
            "grams": 250,
            "inventory_management": "shopify",
            "requires_shipping": True,
            "sku": item.shopify_sku,
            "weight": 0.25,
            "weight_unit": "kg",
            "inventory_item_id": item.inventory_item_id,
            "inventory_quantity": level["available"],
            "old_inventory_quantity": level["available"],
            "admin_graphql_api_id": f"gid://shopify/ProductVariant/{item.variant_id}",
            "image_id": None,
        }

    def _render_products(self) -> list[dict[str, Any]]:
        created = self._iso(datetime(2025, 3, 1, 9, 0, tzinfo=timezone.utc))
        products = []
        for product_id, title in sorted(self.catalog.products.items()):
            variants = [self._render_variant(i) for i in self.catalog.variants if i.product_id == product_id]
            for position, variant in enumerate(variants, start=1):
                variant["position"] = position
            products.append({
                "id": product_id,
                "title": title,
                "body_html": f"<p>{title}</p>",
                "vendor": "Clarus Sandbox Co",
                "product_type": "Apparel",
                "created_at": created,
                "handle": title.lower().replace(" ", "-"),
                "updated_at": created,
                "published_at": created,
                "template_suffix": None,
                "published_scope": "global",
                "tags": "",
                "status": "active",
                "admin_graphql_api_id": f"gid://shopify/Product/{product_id}",
                "variants": variants,
                "options": [{"id": product_id + 1, "product_id": product_id, "name": "Title", "position": 1,
                             "values": [v["option1"] for v in variants]}],
                "images": [],
                "image": None,
            })
        return products

    def _render_level(self, key: tuple[int, int], level: dict[str, Any]) -> dict[str, Any]:
        item_id, location_id = key
        return {
            "inventory_item_id": item_id,
            "location_id": location_id,
            "available": level["available"],
            "updated_at": self._iso(level["updated_at"]),
            "admin_graphql_api_id": f"gid://shopify/InventoryLevel/{location_id}?inventory_item_id={item_id}",
        }

    # ------------------------------------------------------------------ webhooks

    def sign(self, body: bytes) -> str:
        """The `X-Shopify-Hmac-Sha256` value for a raw body."""
        digest = hmac.new(self.webhook_secret.encode("utf-8"), body, hashlib.sha256).digest()
        return base64.b64encode(digest).decode("ascii")

    def _emit(self, topic: str, payload: dict[str, Any], resource_id: int) -> None:
        body = json.dumps(payload, separators=(",", ":")).encode("utf-8")
        webhook_id, event_id = self._uuid(), self._uuid()
        triggered_at = datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        headers = {
            "Content-Type": "application/json",
            "X-Shopify-Topic": topic,
            "X-Shopify-Hmac-Sha256": self.sign(body),
            "X-Shopify-Shop-Domain": self.shop_domain,
            "X-Shopify-API-Version": self.api_version,
            "X-Shopify-Webhook-Id": webhook_id,
            "X-Shopify-Triggered-At": triggered_at,
            "X-Shopify-Event-Id": event_id,
        }
        self.webhooks.append({
            "topic": topic, "webhook_id": webhook_id, "event_id": event_id, "resource_id": resource_id,
            "triggered_at": triggered_at, "queued": bool(self.webhook_sender and self.webhook_url),
        })
        if self.webhook_sender and self.webhook_url:
            self.webhook_sender.post(self.webhook_url, body, headers)

    def _order_changed(self, order: _Order, *topics: str) -> dict[str, Any]:
        rendered = self._render_order(order)
        for topic in topics:
            self._emit(topic, rendered, order.id)
        return rendered

    # ------------------------------------------------------------------ in-process API (traffic, tests)

    def _variant_for(self, spec: Mapping[str, Any]) -> CatalogItem | None:
        if spec.get("variant_id") is not None:
            return self.catalog.by_variant_id(int(spec["variant_id"]))
        if spec.get("sku") is not None:
            return self.catalog.by_shopify_sku(str(spec["sku"]))
        return None

    def _new_line(self, spec: Mapping[str, Any]) -> _Line:
        quantity = int(spec.get("quantity", 1))
        if quantity < 1:
            raise ShopifyError("line item quantity must be at least 1")
        item = self._variant_for(spec)
        if item is not None:
            title, _, variant_title = item.display_name.partition(" - ")
            line = _Line(
                id=self._next("line"), variant_id=item.variant_id, product_id=item.product_id,
                inventory_item_id=item.inventory_item_id, sku=item.shopify_sku, title=title,
                variant_title=variant_title or None, price=Decimal(str(spec.get("price", item.price))),
                quantity=quantity, ordered=quantity, fo_line_id=self._next("fo_line"),
            )
            return line
        if spec.get("variant_id") is not None:
            raise ShopifyError(f"variant {spec['variant_id']} does not exist")
        # a custom line item (no variant), e.g. a SKU typed in by staff
        return _Line(
            id=self._next("line"), variant_id=None, product_id=None, inventory_item_id=None,
            sku=spec.get("sku"), title=str(spec.get("title") or spec.get("sku") or "Custom item"),
            variant_title=None, price=Decimal(str(spec.get("price", "10.00"))), quantity=quantity,
            ordered=quantity, fo_line_id=self._next("fo_line"),
        )

    def _take_stock(self, line: _Line, quantity: int) -> None:
        key = (line.inventory_item_id, self.location_id)
        if line.inventory_item_id is not None and key in self._inventory:
            self._inventory[key]["available"] -= quantity
            self._inventory[key]["updated_at"] = self.clock()

    def create_order(
        self,
        *,
        line_items: Sequence[Mapping[str, Any]],
        shipping_address: Mapping[str, Any] | None,
        shipping_lines: Sequence[Mapping[str, Any]] = (),
        email: str | None = None,
        phone: str | None = None,
        customer: Mapping[str, Any] | None = None,
        billing_address: Mapping[str, Any] | None = None,
        tags: str = "",
        note: str | None = None,
        paid: bool = True,
    ) -> dict[str, Any]:
        """Place an order (line items by `variant_id` or Shopify `sku`, with `quantity`).

        Emits orders/create; returns the order as the REST API renders it.
        """
        if not line_items:
            raise ShopifyError("an order needs at least one line item")
        with self._lock:
            now = self.clock()
            order_id = self._next("order")
            lines = [self._new_line(spec) for spec in line_items]
            for line in lines:
                self._take_stock(line, line.quantity)
            shipping = [
                _ShippingLine(id=self._next("shipping_line"), code=s.get("code"), title=s.get("title"),
                              price=Decimal(str(s.get("price", "0.00"))), source=s.get("source", "shopify"))
                for s in shipping_lines
            ]
            customer_record = None
            if customer is not None or email:
                customer_record = {
                    "id": self._next("customer"),
                    "email": email,
                    "created_at": self._iso(now),
                    "updated_at": self._iso(now),
                    "first_name": (customer or {}).get("first_name"),
                    "last_name": (customer or {}).get("last_name"),
                    "state": "disabled",
                    "note": None,
                    "verified_email": True,
                    "multipass_identifier": None,
                    "tax_exempt": False,
                    "phone": phone,
                    "tags": "",
                    "currency": self.currency,
                    "tax_exemptions": [],
                    "admin_graphql_api_id": None,
                    "default_address": dict(shipping_address) if shipping_address else None,
                }
                customer_record["admin_graphql_api_id"] = f"gid://shopify/Customer/{customer_record['id']}"
            order = _Order(
                id=order_id, number=next(self._order_numbers), token=uuid.UUID(int=self._random.getrandbits(128)).hex,
                created_at=now, updated_at=now, email=email, phone=phone, customer=customer_record,
                shipping_address=dict(shipping_address) if shipping_address is not None else None,
                billing_address=dict(billing_address or shipping_address) if (billing_address or shipping_address) else None,
                lines=lines, shipping_lines=shipping, tags=tags, note=note, fo_id=self._next("fo"),
                location_id=self.location_id, fo_created_at=now,
            )
            if paid:
                order.paid = self._totals(order)["total"]
            self._orders[order.id] = order
            self._fo_index[order.fo_id] = order.id
            return self._order_changed(order, "orders/create")

    def _order(self, order_id: int) -> _Order:
        order = self._orders.get(int(order_id))
        if order is None:
            raise KeyError(f"order {order_id} does not exist")
        return order

    def _touch(self, order: _Order) -> None:
        now = self.clock()
        # updated_at must move forward even when the clock is coarse: reconciliation reads rely on it
        order.updated_at = now if now > order.updated_at else order.updated_at.replace(
            microsecond=min(order.updated_at.microsecond + 1, 999_999))

    def update_shipping_address(self, order_id: int, shipping_address: Mapping[str, Any] | None) -> dict[str, Any]:
        """Replace the shipping address (e.g. CX completing a held order); emits orders/updated."""
        with self._lock:
            order = self._order(order_id)
            if order.cancelled_at is not None:
                raise ShopifyError("a cancelled order cannot be changed")
            order.shipping_address = dict(shipping_address) if shipping_address is not None else None
            self._touch(order)
            return self._order_changed(order, "orders/updated")

    def edit_order(
        self,
        order_id: int,
        *,
        quantities: Mapping[int, int] | None = None,
        add: Sequence[Mapping[str, Any]] = (),
        staff_note: str | None = None,
    ) -> dict[str, Any]:
        """Edit an order like Shopify's order editing: change line quantities, add lines.

        Emits orders/edited (the `order_edit` payload) and orders/updated.
        """
        with self._lock:
            order = self._order(order_id)
            if order.cancelled_at is not None:
                raise ShopifyError("a cancelled order cannot be edited")
            additions: list[dict[str, int]] = []
            removals: list[dict[str, int]] = []
            changes: list[tuple[_Line, int]] = []
            for line_id, new_quantity in (quantities or {}).items():
                line = order.line(int(line_id))
                if line is None:
                    raise ShopifyError(f"line item {line_id} is not on order {order.id}")
                if int(new_quantity) < line.fulfilled + line.refunded_unfulfilled:
                    raise ShopifyError(f"line item {line_id}: cannot go below the {line.fulfilled} unit(s) already fulfilled")
                changes.append((line, int(new_quantity) - line.ordered))
            added = [self._new_line(spec) for spec in add]  # validates before anything changes
            for line, delta in changes:
                if delta > 0:
                    additions.append({"id": line.id, "delta": delta})
                elif delta < 0:
                    removals.append({"id": line.id, "delta": -delta})
                self._take_stock(line, delta)
                line.ordered += delta
            for line in added:
                self._take_stock(line, line.quantity)
                order.lines.append(line)
                additions.append({"id": line.id, "delta": line.quantity})
            if not additions and not removals:
                raise ShopifyError("the edit changes nothing")
            self._touch(order)
            now_iso = self._iso(order.updated_at)
            edit = {
                "order_edit": {
                    "id": self._next("edit"),
                    "app_id": None,
                    "created_at": now_iso,
                    "committed_at": now_iso,
                    "notify_customer": False,
                    "order_id": order.id,
                    "staff_note": staff_note or "",
                    "user_id": None,
                    "line_items": {"additions": additions, "removals": removals},
                    "discounts": {"line_item": {"additions": [], "removals": []}},
                    "shipping_lines": {"additions": [], "removals": []},
                }
            }
            self._emit("orders/edited", edit, order.id)
            return self._order_changed(order, "orders/updated")

    def cancel_order(self, order_id: int, *, reason: str = "customer", refund: bool = True, restock: bool = True) -> dict[str, Any]:
        """Cancel an order (refused, like Shopify, once it has a fulfilment).

        With `refund`, the unfulfilled lines are refunded with restock type `cancel`
        (refunds/create) first. Emits orders/cancelled and orders/updated.
        """
        with self._lock:
            order = self._order(order_id)
            if order.cancelled_at is not None:
                raise ShopifyError(f"order {order.name} is already cancelled")
            if order.fulfillment_ids:
                raise ShopifyError(f"order {order.name} has fulfilments and cannot be cancelled")
            if reason not in ("customer", "fraud", "inventory", "declined", "other", "staff"):
                raise ShopifyError(f"unknown cancel reason {reason!r}")
            lines = [{"line_item_id": ln.id, "quantity": ln.fulfillable,
                      "restock_type": "cancel" if restock else "no_restock"}
                     for ln in order.lines if ln.fulfillable > 0]
            if refund and order.paid > order.refunded and lines:
                self._refund(order, lines=lines, shipping_full=True, note="Order cancelled", cap_to_paid=True)
            else:
                for ln in order.lines:  # the cancelled units leave the order (and go back to stock)
                    key = (ln.inventory_item_id, self.location_id)
                    if restock and ln.fulfillable and key in self._inventory:
                        self._inventory[key]["available"] += ln.fulfillable
                    ln.refunded_unfulfilled += ln.fulfillable
            now = self.clock()
            order.cancelled_at = now
            order.closed_at = now
            order.cancel_reason = reason
            self._touch(order)
            return self._order_changed(order, "orders/cancelled", "orders/updated")

    def refund_order(
        self,
        order_id: int,
        *,
        line_items: Sequence[Mapping[str, Any]] = (),
        shipping_amount: Decimal | str | None = None,
        shipping_full: bool = False,
        amount: Decimal | str | None = None,
        note: str | None = None,
    ) -> dict[str, Any]:
        """Refund an order the way the Shopify admin does.

        `line_items`: `{"line_item_id", "quantity", "restock_type"}` with restock type
        `return` (goods came back), `cancel` (not yet dispatched) or `no_restock`.
        `shipping_amount` / `shipping_full` refund shipping (refund_shipping_lines and a
        `shipping_refund` order adjustment). `amount` refunds money beyond the lines and
        shipping: with no lines it is a goodwill gesture (Shopify records the difference
        as a `refund_discrepancy` adjustment). Emits refunds/create and orders/updated;
        returns the refund.
        """
        with self._lock:
            order = self._order(order_id)
            refund = self._refund(
                order, lines=line_items, shipping_amount=None if shipping_amount is None else Decimal(str(shipping_amount)),
                shipping_full=shipping_full, extra=None if amount is None else Decimal(str(amount)), note=note,
            )
            self._touch(order)
            self._order_changed(order, "orders/updated")
            return refund

    def _refund(
        self,
        order: _Order,
        *,
        lines: Sequence[Mapping[str, Any]],
        shipping_amount: Decimal | None = None,
        shipping_full: bool = False,
        extra: Decimal | None = None,
        note: str | None = None,
        cap_to_paid: bool = False,
    ) -> dict[str, Any]:
        """Validate the whole refund first, then apply it: a refused refund changes nothing."""
        planned: list[tuple[_Line, int, str]] = []
        for spec in lines:
            line = order.line(int(spec["line_item_id"]))
            if line is None:
                raise ShopifyError(f"line item {spec['line_item_id']} is not on order {order.id}")
            qty = int(spec.get("quantity", 1))
            restock_type = spec.get("restock_type", "no_restock")
            if restock_type not in RESTOCK_TYPES or qty < 1:
                raise ShopifyError(f"invalid refund line {dict(spec)}")
            if restock_type == "cancel" and qty > line.fulfillable:
                raise ShopifyError(f"line {line.id}: only {line.fulfillable} unfulfilled unit(s) can be cancelled")
            if restock_type == "return" and qty > line.fulfilled - line.refunded_fulfilled:
                raise ShopifyError(f"line {line.id}: only {line.fulfilled - line.refunded_fulfilled} fulfilled unit(s) can be returned")
            if qty > line.current_quantity:
                raise ShopifyError(f"line {line.id}: only {line.current_quantity} unit(s) left to refund")
            planned.append((line, qty, restock_type))
        shipping_takes: list[tuple[_ShippingLine, Decimal]] = []
        if shipping_full or shipping_amount:
            remaining = shipping_amount
            for sl in order.shipping_lines:
                left = sl.price - sl.refunded
                take = left if remaining is None else min(left, remaining)
                if take > 0:
                    shipping_takes.append((sl, take))
                    if remaining is not None:
                        remaining -= take
            if remaining:
                raise ShopifyError(f"shipping refund exceeds the {order.name} shipping paid")
        total = sum((line.price * qty for line, qty, _ in planned), Decimal("0"))
        total += sum((take for _, take in shipping_takes), Decimal("0")) + (extra or Decimal("0"))
        if total <= 0 and not planned:
            raise ShopifyError("the refund refunds nothing")
        refundable = order.paid - order.refunded
        if total > refundable:
            if not cap_to_paid:
                raise ShopifyError(f"refund of {_money(total)} exceeds the {_money(refundable)} left to refund")
            total = max(Decimal("0"), refundable)

        now = self.clock()
        refund_id = self._next("refund")
        refund_lines: list[dict[str, Any]] = []
        restocked = False
        for line, qty, restock_type in planned:
            if restock_type == "cancel" or (restock_type == "no_restock" and line.fulfillable >= qty):
                line.refunded_unfulfilled += qty
            elif restock_type in ("no_restock", "legacy_restock") and line.fulfillable > 0:
                from_unfulfilled = min(qty, line.fulfillable)
                line.refunded_unfulfilled += from_unfulfilled
                line.refunded_fulfilled += qty - from_unfulfilled
            else:
                line.refunded_fulfilled += qty
            restocks = restock_type in ("cancel", "return", "legacy_restock")
            if restocks:
                restocked = True
                key = (line.inventory_item_id, self.location_id)
                if key in self._inventory:
                    self._inventory[key]["available"] += qty
                    self._inventory[key]["updated_at"] = now
            subtotal = line.price * qty
            tax = _included_vat(subtotal)
            refund_lines.append({
                "id": self._next("refund_line"),
                "line_item_id": line.id,
                "location_id": self.location_id if restocks else None,
                "quantity": qty,
                "restock_type": restock_type,
                "subtotal": float(subtotal),
                "subtotal_set": self._money_set(subtotal),
                "total_tax": float(tax),
                "total_tax_set": self._money_set(tax),
                "line_item": self._render_line(line),
            })
        adjustments: list[dict[str, Any]] = []
        shipping_refunds: list[dict[str, Any]] = []
        for sl, take in shipping_takes:
            sl.refunded += take
            shipping_refunds.append({"id": self._next("refund_line"), "shipping_line_id": sl.id,
                                     "subtotal_amount_set": self._money_set(take),
                                     "shipping_line": self._render_shipping_line(sl)})
            adjustments.append(self._adjustment(order, refund_id, -take, "shipping_refund", "Shipping refund"))
        if extra:
            adjustments.append(self._adjustment(order, refund_id, -extra, "refund_discrepancy", "Refund discrepancy"))
        order.refunded += total
        transactions = []
        if total > 0:
            transaction_id = self._next("transaction")
            transactions.append({
                "id": transaction_id,
                "admin_graphql_api_id": f"gid://shopify/OrderTransaction/{transaction_id}",
                "order_id": order.id,
                "kind": "refund",
                "gateway": "shopify_payments",
                "status": "success",
                "message": "Transaction approved",
                "created_at": self._iso(now),
                "test": False,
                "authorization": None,
                "location_id": None,
                "user_id": None,
                "parent_id": order.id + 17,
                "processed_at": self._iso(now),
                "device_id": None,
                "error_code": None,
                "source_name": "1830279",
                "receipt": {},
                "amount": _money(total),
                "currency": self.currency,
                "payment_id": f"c{order.id + 11}.2",
                "manual_payment_gateway": False,
                "amount_rounding": None,
            })
        refund = {
            "id": refund_id,
            "admin_graphql_api_id": f"gid://shopify/Refund/{refund_id}",
            "order_id": order.id,
            "created_at": self._iso(now),
            "note": note,
            "user_id": None,
            "processed_at": self._iso(now),
            "restock": restocked,
            "duties": [],
            "total_duties_set": self._money_set(Decimal("0")),
            "return": None,
            "additional_fees": [],
            "total_additional_fees_set": self._money_set(Decimal("0")),
            "refund_shipping_lines": shipping_refunds,
            "order_adjustments": adjustments,
            "refund_line_items": refund_lines,
            "transactions": transactions,
        }
        self._refunds[refund_id] = refund
        order.refund_ids.append(refund_id)
        self._emit("refunds/create", refund, refund_id)
        return refund

    def _adjustment(self, order: _Order, refund_id: int, amount: Decimal, kind: str, reason: str) -> dict[str, Any]:
        return {
            "id": self._next("adjustment"), "order_id": order.id, "refund_id": refund_id,
            "amount": _money(amount), "tax_amount": "0.00", "kind": kind, "reason": reason,
            "amount_set": self._money_set(amount), "tax_amount_set": self._money_set(Decimal("0")),
        }

    # ------------------------------------------------------------------ fulfilment

    def _tracking_url(self, company: str | None, number: str | None) -> str | None:
        if not company or not number:
            return None
        template = _TRACKING_URLS.get(company.strip().lower())
        return template.format(n=number) if template else None

    def _create_fulfillment(self, payload: Mapping[str, Any]) -> tuple[int, dict[str, Any]]:
        """Validate and record a fulfilment; (status, body) like the REST endpoint answers."""
        groups = payload.get("line_items_by_fulfillment_order")
        if not isinstance(groups, list) or not groups:
            return 400, {"errors": {"fulfillment": "Required parameter missing or invalid"}}
        order: _Order | None = None
        allocations: dict[int, int] = {}
        for group in groups:
            try:
                fo_id = int(group["fulfillment_order_id"])
            except (KeyError, TypeError, ValueError):
                return 400, {"errors": {"fulfillment_order_id": "Required parameter missing or invalid"}}
            order_id = self._fo_index.get(fo_id)
            if order_id is None:
                return 404, _NOT_FOUND
            fo_order = self._orders[order_id]
            if order is not None and fo_order is not order:
                return 422, {"errors": ["All fulfillment orders must belong to the same order."]}
            order = fo_order
            status = self._fo_status(order)
            if status not in ("open", "in_progress"):
                return 422, {"errors": [f"Fulfillment order {fo_id} has an unfulfillable status= {status}."]}
            requested = group.get("fulfillment_order_line_items")
            if not requested:
                for line in order.lines:
                    if line.fulfillable - allocations.get(line.id, 0) > 0:
                        allocations[line.id] = line.fulfillable
                continue
            for item in requested:
                line = next((ln for ln in order.lines if ln.fo_line_id == int(item.get("id", 0))), None)
                try:
                    qty = int(item.get("quantity"))
                except (TypeError, ValueError):
                    qty = 0
                if line is None:
                    return 422, {"errors": [f"Fulfillment order line item {item.get('id')} does not belong to fulfillment order {fo_id}."]}
                if qty < 1 or qty > line.fulfillable - allocations.get(line.id, 0):
                    return 422, {"errors": ["Invalid fulfillment order line item quantity requested."]}
                allocations[line.id] = allocations.get(line.id, 0) + qty
        if order is None or not allocations:
            return 422, {"errors": ["Fulfillment order has no fulfillable line items."]}
        tracking = payload.get("tracking_info") or {}
        number = tracking.get("number")
        number = str(number) if number not in (None, "") else None
        company = tracking.get("company") or None
        url = tracking.get("url") or self._tracking_url(company, number)
        fulfillment_id = self._next("fulfillment")
        now = self.clock()
        for line in order.lines:
            line.fulfilled += allocations.get(line.id, 0)
        record = {
            "id": fulfillment_id,
            "admin_graphql_api_id": f"gid://shopify/Fulfillment/{fulfillment_id}",
            "created_at": self._iso(now),
            "location_id": order.location_id,
            "name": f"{order.name}.{len(order.fulfillment_ids) + 1}",
            "order_id": order.id,
            "origin_address": None,
            "receipt": {},
            "service": "manual",
            "shipment_status": None,
            "status": "success",
            "tracking_company": company,
            "tracking_number": number,
            "tracking_numbers": [number] if number else [],
            "tracking_url": url,
            "tracking_urls": [url] if url else [],
            "updated_at": self._iso(now),
            "line_items": [self._render_line(ln, quantity=allocations[ln.id]) for ln in order.lines if ln.id in allocations],
        }
        self._fulfillments[fulfillment_id] = _Fulfillment(fulfillment_id, order.id, record, dict(allocations), time.time())
        order.fulfillment_ids.append(fulfillment_id)
        self._touch(order)
        self._order_changed(order, "orders/updated")
        return 201, {"fulfillment": record}

    def create_fulfillment(
        self,
        order_id: int,
        lines: Mapping[int, int] | None = None,
        *,
        tracking_number: str | None = None,
        company: str | None = None,
    ) -> dict[str, Any]:
        """Fulfil an order in-process (line item id -> quantity; all that is left by default)."""
        with self._lock:
            order = self._order(order_id)
            group: dict[str, Any] = {"fulfillment_order_id": order.fo_id}
            if lines:
                by_line = {ln.id: ln.fo_line_id for ln in order.lines}
                group["fulfillment_order_line_items"] = [{"id": by_line[int(k)], "quantity": int(q)} for k, q in lines.items()]
            status, body = self._create_fulfillment({
                "line_items_by_fulfillment_order": [group],
                "tracking_info": {"number": tracking_number, "company": company},
            })
            if status != 201:
                raise ShopifyError(f"fulfilment refused ({status}): {body.get('errors')}")
            return body["fulfillment"]

    def fulfil_by_hand(
        self, order_id: int, lines: Mapping[int, int] | None = None, *, tracking_number: str | None = None,
        company: str | None = None,
    ) -> dict[str, Any]:
        """A merchant marks the order fulfilled in Shopify admin (not through the warehouse):
        the fulfilment is recorded and Shopify sends `fulfillments/create` for it."""
        with self._lock:
            record = self.create_fulfillment(order_id, lines, tracking_number=tracking_number, company=company)
            self._emit("fulfillments/create", dict(record), int(record["id"]))
            return record

    def _update_tracking(self, fulfillment_id: int, payload: Mapping[str, Any]) -> tuple[int, dict[str, Any]]:
        found = self._fulfillments.get(fulfillment_id)
        if found is None:
            return 404, _NOT_FOUND
        tracking = payload.get("tracking_info") or {}
        number = tracking.get("number")
        number = str(number) if number not in (None, "") else None
        company = tracking.get("company") or found.record["tracking_company"]
        url = tracking.get("url") or self._tracking_url(company, number)
        found.record.update({
            "tracking_company": company, "tracking_number": number, "tracking_numbers": [number] if number else [],
            "tracking_url": url, "tracking_urls": [url] if url else [], "updated_at": self._iso(self.clock()),
        })
        order = self._orders[found.order_id]
        self._touch(order)
        self._order_changed(order, "orders/updated")
        return 200, {"fulfillment": found.record}

    # ------------------------------------------------------------------ inspection (Python)

    def orders(self) -> list[dict[str, Any]]:
        with self._lock:
            return [self._render_order(o) for o in self._orders.values()]

    def order(self, order_id: int) -> dict[str, Any]:
        with self._lock:
            return self._render_order(self._order(order_id))

    def fulfillment_order(self, order_id: int) -> dict[str, Any]:
        with self._lock:
            return self._render_fulfillment_order(self._order(order_id))

    def fulfillments(self, order_id: int | None = None) -> list[dict[str, Any]]:
        """Every fulfilment (optionally of one order) with `recorded_at` (epoch seconds)."""
        with self._lock:
            return [
                {**f.record, "recorded_at": f.recorded_at}
                for f in self._fulfillments.values()
                if order_id is None or f.order_id == int(order_id)
            ]

    def refunds(self, order_id: int | None = None) -> list[dict[str, Any]]:
        with self._lock:
            return [r for r in self._refunds.values() if order_id is None or r["order_id"] == int(order_id)]

    def inventory_levels(self) -> list[dict[str, Any]]:
        with self._lock:
            return [self._render_level(k, v) for k, v in sorted(self._inventory.items())]

    def requests(self, since: int = 0) -> list[dict[str, Any]]:
        return [r.to_dict() for r in self.request_log.entries(since=since)]

    @property
    def payments(self) -> Any:
        """The Shopify Payments account (payouts, balance transactions; `inject` a discrepancy)."""
        return self.graphql.payments

    def graphql_calls(self, root_field: str, since: int = 0) -> list[dict[str, Any]]:
        """Logged GraphQL requests whose operation selects `root_field` (e.g. `fulfillmentCreate`)."""
        return [r for r in self.requests(since) if r["path"].endswith("/graphql.json") and isinstance(r["body"], dict)
                and root_field in root_fields(str(r["body"].get("query") or ""))]

    # ------------------------------------------------------------------ HTTP plumbing

    def _routes(self) -> list[Route]:
        api = "/admin/api/{version}"
        return [
            Route(f"{api}/graphql.json", self._graphql_endpoint, methods=["POST"]),
            Route("/bulk-results/{number:int}.jsonl", self._bulk_result),
            Route(f"{api}/orders.json", self._admin(self._list_orders)),
            Route(f"{api}/orders/count.json", self._admin(self._count_orders)),
            Route(f"{api}/orders/{{order_id:int}}.json", self._admin(self._get_order)),
            Route(f"{api}/orders/{{order_id:int}}/fulfillment_orders.json", self._admin(self._list_fulfillment_orders)),
            Route(f"{api}/orders/{{order_id:int}}/fulfillments.json", self._admin(self._list_fulfillments)),
            Route(f"{api}/orders/{{order_id:int}}/fulfillments/{{fulfillment_id:int}}.json", self._admin(self._get_fulfillment)),
            Route(f"{api}/orders/{{order_id:int}}/refunds.json", self._admin(self._list_refunds)),
            Route(f"{api}/orders/{{order_id:int}}/refunds/{{refund_id:int}}.json", self._admin(self._get_refund)),
            Route(f"{api}/fulfillment_orders/{{fo_id:int}}.json", self._admin(self._get_fulfillment_order)),
            Route(f"{api}/fulfillments.json", self._admin(self._post_fulfillment), methods=["POST"]),
            Route(f"{api}/fulfillments/{{fulfillment_id:int}}/update_tracking.json", self._admin(self._post_update_tracking),
                  methods=["POST"]),
            Route(f"{api}/inventory_levels.json", self._admin(self._list_inventory_levels)),
            Route(f"{api}/inventory_levels/set.json", self._admin(self._post_inventory_set), methods=["POST"]),
            Route(f"{api}/inventory_levels/adjust.json", self._admin(self._post_inventory_adjust), methods=["POST"]),
            Route(f"{api}/products.json", self._admin(self._list_products)),
            Route(f"{api}/products/{{product_id:int}}/variants.json", self._admin(self._list_product_variants)),
            Route(f"{api}/variants/{{variant_id:int}}.json", self._admin(self._get_variant)),
            Route(f"{api}/locations.json", self._admin(self._list_locations)),
            Route("/_sandbox/health", self._sb_health),
            Route("/_sandbox/orders", self._sb_orders, methods=["GET", "POST"]),
            Route("/_sandbox/orders/{order_id:int}/{action}", self._sb_order_action, methods=["POST"]),
            Route("/_sandbox/fulfillments", self._sb_fulfillments),
            Route("/_sandbox/refunds", self._sb_refunds),
            Route("/_sandbox/inventory_levels", self._sb_inventory),
            Route("/_sandbox/requests", self._sb_requests),
            Route("/_sandbox/webhooks", self._sb_webhooks),
            Route("/_sandbox/reset", self._sb_reset, methods=["POST"]),
        ]

    def _admin(self, handler: Callable[[Request], Any]) -> Callable[[Request], Any]:
        async def endpoint(request: Request) -> Response:
            given = request.headers.get("x-shopify-access-token", "")
            if not hmac.compare_digest(given.encode("utf-8"), self.access_token.encode("utf-8")):
                return JSONResponse(_UNAUTHORIZED, status_code=401)
            allowed, level, wait = self.bucket.take()
            headers = {
                "X-Shopify-Shop-Api-Call-Limit": f"{level}/{self.bucket.size}",
                "X-Shopify-API-Version": self.api_version,
                "X-Request-Id": str(uuid.uuid4()),
            }
            if not allowed:
                headers["Retry-After"] = f"{max(wait, 0.1):.1f}"
                return JSONResponse(_THROTTLED, status_code=429, headers=headers)
            payload: Any = None
            if request.method in ("POST", "PUT"):
                try:
                    payload = json.loads(await request.body() or b"{}")
                except ValueError:
                    return JSONResponse({"errors": "Bad Request: the body is not valid JSON"}, status_code=400, headers=headers)
                if not isinstance(payload, dict):
                    return JSONResponse({"errors": "Bad Request"}, status_code=400, headers=headers)
            with self._lock:
                result = handler(request, payload) if payload is not None else handler(request)
            status, body, extra = result if len(result) == 3 else (*result, {})
            return JSONResponse(body, status_code=status, headers={**headers, **extra})

        return endpoint

    async def _graphql_endpoint(self, request: Request) -> Response:
        """The GraphQL Admin API: schema-validated, throttled by query cost (not by call count)."""
        given = request.headers.get("x-shopify-access-token", "")
        if not hmac.compare_digest(given.encode("utf-8"), self.access_token.encode("utf-8")):
            return JSONResponse(_UNAUTHORIZED, status_code=401)
        headers = {"X-Shopify-API-Version": self.api_version, "X-Request-Id": str(uuid.uuid4())}
        try:
            body = json.loads(await request.body() or b"null")
        except ValueError:
            return JSONResponse({"errors": "Bad Request: the body is not valid JSON"}, status_code=400, headers=headers)
        with self._lock:
            self.graphql.base_url = f"{request.url.scheme}://{request.headers.get('host', 'localhost')}"
            status, answer = self.graphql.handle(body)
        return JSONResponse(answer, status_code=status, headers=headers)

    async def _bulk_result(self, request: Request) -> Response:
        """A finished bulk operation's JSONL (a signed storage URL at Shopify: no access token)."""
        self.graphql.bulk_downloads.append({"number": request.path_params["number"],
                                            "with_access_token": "x-shopify-access-token" in request.headers})
        body = self.graphql.bulk_results.get(request.path_params["number"])
        if body is None:
            return JSONResponse(_NOT_FOUND, status_code=404)
        return Response(body, media_type="application/jsonl")

    def _limit(self, request: Request, default: int = 50) -> int | None:
        raw = request.query_params.get("limit")
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            return None
        return value if 1 <= value <= MAX_LIMIT else None

    @staticmethod
    def _fields(request: Request, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        raw = request.query_params.get("fields")
        if not raw:
            return records
        wanted = [f.strip() for f in raw.split(",") if f.strip()]
        return [{k: r.get(k) for k in wanted if k in r} for r in records]

    @staticmethod
    def _encode_cursor(state: dict[str, Any]) -> str:
        raw = json.dumps(state, separators=(",", ":"), sort_keys=True).encode("utf-8")
        return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")

    @staticmethod
    def _decode_cursor(token: str) -> dict[str, Any] | None:
        try:
            padded = token + "=" * (-len(token) % 4)
            state = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
        except (ValueError, UnicodeError):
            return None
        return state if isinstance(state, dict) and state.get("d") in ("next", "prev") else None

    def _page(
        self,
        request: Request,
        records: list[Any],
        key: Callable[[Any], list[Any]],
        *,
        filters: dict[str, str],
        cursor: dict[str, Any] | None,
        limit: int,
        reverse: bool = False,
    ) -> tuple[list[Any], dict[str, str]]:
        """Keyset paging with Shopify's `Link` header (rel previous / next, page_info cursors)."""
        ordered = sorted(records, key=key, reverse=reverse)
        keys = [key(r) for r in ordered]

        def after(k: list[Any], anchor: list[Any]) -> bool:
            return k < anchor if reverse else k > anchor

        total = len(ordered)
        if cursor is None:
            start = 0
            stop = min(limit, total)
        elif cursor["d"] == "next":
            start = next((i for i, k in enumerate(keys) if after(k, cursor["k"])), total)
            stop = min(start + limit, total)
        else:
            stop = next((i for i, k in enumerate(keys) if not after(cursor["k"], k)), total)
            start = max(0, stop - limit)
        page = ordered[start:stop]
        page_keys = keys[start:stop]
        links = []
        base = f"{str(request.base_url).rstrip('/')}{request.url.path}"
        fields = request.query_params.get("fields")
        extra = f"&fields={fields}" if fields else ""
        if page and start > 0:
            token = self._encode_cursor({"f": filters, "k": page_keys[0], "d": "prev"})
            links.append(f'<{base}?limit={limit}{extra}&page_info={token}>; rel="previous"')
        if page and stop < total:
            token = self._encode_cursor({"f": filters, "k": page_keys[-1], "d": "next"})
            links.append(f'<{base}?limit={limit}{extra}&page_info={token}>; rel="next"')
        return page, ({"Link": ", ".join(links)} if links else {})

    def _paging_request(self, request: Request, allowed_filters: Sequence[str]) -> tuple[dict[str, str], dict[str, Any] | None, int] | tuple[int, dict]:
        """(filters, cursor, limit) or an error (status, body)."""
        limit = self._limit(request)
        if limit is None:
            return 400, {"errors": {"limit": ["must be between 1 and 250"]}}
        token = request.query_params.get("page_info")
        if token:
            extra = set(request.query_params) - {"page_info", "limit", "fields"}
            if extra:
                return 400, {"errors": {"page_info": [f"cannot be combined with {', '.join(sorted(extra))}"]}}
            cursor = self._decode_cursor(token)
            if cursor is None:
                return 400, {"errors": {"page_info": ["Invalid value."]}}
            return dict(cursor.get("f") or {}), cursor, limit
        return {k: v for k, v in request.query_params.items() if k in allowed_filters}, None, limit

    # ------------------------------------------------------------------ Admin API handlers (under the lock)

    _ORDER_FILTERS = ("status", "financial_status", "fulfillment_status", "created_at_min", "created_at_max",
                      "updated_at_min", "updated_at_max", "since_id", "ids")

    def _filter_orders(self, filters: Mapping[str, str]) -> list[_Order] | tuple[int, dict]:
        orders = list(self._orders.values())
        status = filters.get("status", "open")
        if status == "open":
            orders = [o for o in orders if o.closed_at is None]
        elif status == "closed":
            orders = [o for o in orders if o.closed_at is not None]
        elif status == "cancelled":
            orders = [o for o in orders if o.cancelled_at is not None]
        elif status != "any":
            return 400, {"errors": {"status": ["is not included in the list"]}}
        for name, attr, cmp in (
            ("created_at_min", "created_at", lambda v, b: v >= b), ("created_at_max", "created_at", lambda v, b: v <= b),
            ("updated_at_min", "updated_at", lambda v, b: v >= b), ("updated_at_max", "updated_at", lambda v, b: v <= b),
        ):
            if name in filters:
                try:
                    bound = _parse_time(filters[name])
                except ValueError:
                    return 400, {"errors": {name: ["is invalid"]}}
                orders = [o for o in orders if cmp(getattr(o, attr), bound)]
        if "since_id" in filters:
            try:
                since = int(filters["since_id"])
            except ValueError:
                return 400, {"errors": {"since_id": ["is invalid"]}}
            orders = [o for o in orders if o.id > since]
        if "ids" in filters:
            try:
                wanted = {int(x) for x in filters["ids"].split(",") if x.strip()}
            except ValueError:
                return 400, {"errors": {"ids": ["is invalid"]}}
            orders = [o for o in orders if o.id in wanted]
        fs = filters.get("financial_status")
        if fs and fs != "any":
            orders = [o for o in orders if self._financial_status(o, self._totals(o)) == fs]
        ful = filters.get("fulfillment_status")
        if ful and ful != "any":
            wanted_status = {"shipped": "fulfilled", "unshipped": None, "unfulfilled": None, "partial": "partial"}.get(ful, ful)
            if ful == "unfulfilled":
                orders = [o for o in orders if self._fulfillment_status(o) in (None, "partial")]
            else:
                orders = [o for o in orders if self._fulfillment_status(o) == wanted_status]
        return orders

    def _list_orders(self, request: Request):
        parsed = self._paging_request(request, self._ORDER_FILTERS)
        if isinstance(parsed[0], int):
            return parsed
        filters, cursor, limit = parsed
        orders = self._filter_orders(filters)
        if isinstance(orders, tuple):
            return orders
        page, headers = self._page(request, orders, lambda o: [o.id], filters=filters, cursor=cursor, limit=limit)
        return 200, {"orders": self._fields(request, [self._render_order(o) for o in page])}, headers

    def _count_orders(self, request: Request):
        orders = self._filter_orders({k: v for k, v in request.query_params.items() if k in self._ORDER_FILTERS})
        if isinstance(orders, tuple):
            return orders
        return 200, {"count": len(orders)}

    def _get_order(self, request: Request):
        order = self._orders.get(request.path_params["order_id"])
        if order is None:
            return 404, _NOT_FOUND
        return 200, {"order": self._fields(request, [self._render_order(order)])[0]}

    def _list_fulfillment_orders(self, request: Request):
        order = self._orders.get(request.path_params["order_id"])
        if order is None:
            return 404, _NOT_FOUND
        return 200, {"fulfillment_orders": [self._render_fulfillment_order(order)]}

    def _get_fulfillment_order(self, request: Request):
        order_id = self._fo_index.get(request.path_params["fo_id"])
        if order_id is None:
            return 404, _NOT_FOUND
        return 200, {"fulfillment_order": self._render_fulfillment_order(self._orders[order_id])}

    def _list_fulfillments(self, request: Request):
        order = self._orders.get(request.path_params["order_id"])
        if order is None:
            return 404, _NOT_FOUND
        return 200, {"fulfillments": [self._fulfillments[f].record for f in order.fulfillment_ids]}

    def _get_fulfillment(self, request: Request):
        found = self._fulfillments.get(request.path_params["fulfillment_id"])
        if found is None or found.order_id != request.path_params["order_id"]:
            return 404, _NOT_FOUND
        return 200, {"fulfillment": found.record}

    def _list_refunds(self, request: Request):
        order = self._orders.get(request.path_params["order_id"])
        if order is None:
            return 404, _NOT_FOUND
        return 200, {"refunds": [self._refunds[r] for r in order.refund_ids]}

    def _get_refund(self, request: Request):
        refund = self._refunds.get(request.path_params["refund_id"])
        if refund is None or refund["order_id"] != request.path_params["order_id"]:
            return 404, _NOT_FOUND
        return 200, {"refund": refund}

    def _post_fulfillment(self, request: Request, payload: dict[str, Any]):
        body = payload.get("fulfillment")
        if not isinstance(body, dict):
            return 400, {"errors": {"fulfillment": "Required parameter missing or invalid"}}
        return self._create_fulfillment(body)

    def _post_update_tracking(self, request: Request, payload: dict[str, Any]):
        body = payload.get("fulfillment")
        if not isinstance(body, dict):
            return 400, {"errors": {"fulfillment": "Required parameter missing or invalid"}}
        return self._update_tracking(request.path_params["fulfillment_id"], body)

    @staticmethod
    def _id_list(raw: str | None) -> set[int] | None:
        if raw is None:
            return None
        return {int(x) for x in raw.split(",") if x.strip()}

    def _list_inventory_levels(self, request: Request):
        parsed = self._paging_request(request, ("inventory_item_ids", "location_ids", "updated_at_min"))
        if isinstance(parsed[0], int):
            return parsed
        filters, cursor, limit = parsed
        try:
            items = self._id_list(filters.get("inventory_item_ids"))
            locations = self._id_list(filters.get("location_ids"))
        except ValueError:
            return 400, {"errors": "inventory_item_ids and location_ids are comma-separated ids"}
        if items is None and locations is None:
            return 422, {"errors": ["Must specify at least one of: inventory_item_ids, location_ids"]}
        rows = [
            (k, v) for k, v in self._inventory.items()
            if (items is None or k[0] in items) and (locations is None or k[1] in locations)
        ]
        if "updated_at_min" in filters:
            bound = _parse_time(filters["updated_at_min"])
            rows = [(k, v) for k, v in rows if v["updated_at"] >= bound]
        page, headers = self._page(request, rows, lambda r: [r[0][0], r[0][1]], filters=filters, cursor=cursor, limit=limit)
        return 200, {"inventory_levels": [self._render_level(k, v) for k, v in page]}, headers

    def _inventory_key(self, payload: Mapping[str, Any]) -> tuple[int, int] | tuple[int, dict]:
        try:
            key = (int(payload["inventory_item_id"]), int(payload["location_id"]))
        except (KeyError, TypeError, ValueError):
            return 400, {"errors": "inventory_item_id and location_id are required"}
        if key[1] != self.location_id:
            return 422, {"errors": ["Location does not exist"]}
        if key not in self._inventory:
            return 422, {"errors": ["Inventory item does not have inventory tracking enabled or does not exist"]}
        return key

    def _post_inventory_set(self, request: Request, payload: dict[str, Any]):
        key = self._inventory_key(payload)
        if isinstance(key[1], dict):
            return key
        try:
            available = int(payload["available"])
        except (KeyError, TypeError, ValueError):
            return 400, {"errors": {"available": ["is required and must be an integer"]}}
        level = self._inventory[key]
        level.update(available=available, updated_at=self.clock())
        return 200, {"inventory_level": self._render_level(key, level)}

    def _post_inventory_adjust(self, request: Request, payload: dict[str, Any]):
        key = self._inventory_key(payload)
        if isinstance(key[1], dict):
            return key
        try:
            delta = int(payload["available_adjustment"])
        except (KeyError, TypeError, ValueError):
            return 400, {"errors": {"available_adjustment": ["is required and must be an integer"]}}
        level = self._inventory[key]
        level.update(available=level["available"] + delta, updated_at=self.clock())
        return 200, {"inventory_level": self._render_level(key, level)}

    def _list_products(self, request: Request):
        parsed = self._paging_request(request, ("ids", "since_id", "status"))
        if isinstance(parsed[0], int):
            return parsed
        filters, cursor, limit = parsed
        products = self._render_products()
        if "ids" in filters:
            wanted = self._id_list(filters["ids"]) or set()
            products = [p for p in products if p["id"] in wanted]
        if "since_id" in filters:
            products = [p for p in products if p["id"] > int(filters["since_id"])]
        page, headers = self._page(request, products, lambda p: [p["id"]], filters=filters, cursor=cursor, limit=limit)
        return 200, {"products": self._fields(request, page)}, headers

    def _list_product_variants(self, request: Request):
        product_id = request.path_params["product_id"]
        if product_id not in self.catalog.products:
            return 404, _NOT_FOUND
        variants = [self._render_variant(i) for i in self.catalog.variants if i.product_id == product_id]
        return 200, {"variants": variants}

    def _get_variant(self, request: Request):
        item = self.catalog.by_variant_id(request.path_params["variant_id"])
        if item is None:
            return 404, _NOT_FOUND
        return 200, {"variant": self._render_variant(item)}

    def _list_locations(self, request: Request):
        return 200, {"locations": [{
            "id": self.location_id, "name": "Clarus DC", "address1": "Unit 4, Sandbox Park", "address2": None,
            "city": "Northampton", "zip": "NN4 7PA", "province": None, "country": "GB", "phone": None,
            "created_at": "2025-03-01T09:00:00+00:00", "updated_at": "2025-03-01T09:00:00+00:00",
            "country_code": "GB", "country_name": "United Kingdom", "province_code": None, "legacy": False,
            "active": True, "admin_graphql_api_id": f"gid://shopify/Location/{self.location_id}",
            "localized_country_name": "United Kingdom", "localized_province_name": None,
        }]}

    # Topics the sandbox sends webhooks for, when it has a webhook URL: the shop's subscriptions
    # as its owner left them (served over GraphQL, `shopify_graphql.ShopifyGraphQL`).
    SUBSCRIBED_TOPICS = ("orders/create", "orders/updated", "orders/edited", "orders/cancelled", "refunds/create")

    # ------------------------------------------------------------------ /_sandbox/ handlers

    async def _sb_health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok", "system": self.system, "orders": len(self._orders)})

    async def _sb_orders(self, request: Request) -> Response:
        if request.method == "GET":
            return JSONResponse({"orders": self.orders()})
        body = await request.json()
        try:
            order = self.create_order(
                line_items=body.get("line_items") or [], shipping_address=body.get("shipping_address"),
                shipping_lines=body.get("shipping_lines") or [], email=body.get("email"), phone=body.get("phone"),
                customer=body.get("customer"), tags=body.get("tags", ""), note=body.get("note"),
            )
        except ShopifyError as exc:
            return JSONResponse({"errors": [str(exc)]}, status_code=422)
        return JSONResponse({"order": order}, status_code=201)

    async def _sb_order_action(self, request: Request) -> Response:
        order_id, action = request.path_params["order_id"], request.path_params["action"]
        body = await request.json() if await request.body() else {}
        try:
            if action == "edit":
                quantities = {int(k): int(v) for k, v in (body.get("quantities") or {}).items()}
                result = {"order": self.edit_order(order_id, quantities=quantities, add=body.get("add") or [])}
            elif action == "cancel":
                result = {"order": self.cancel_order(order_id, reason=body.get("reason", "customer"),
                                                     refund=body.get("refund", True))}
            elif action == "refund":
                result = {"refund": self.refund_order(
                    order_id, line_items=body.get("line_items") or [], shipping_amount=body.get("shipping_amount"),
                    shipping_full=bool(body.get("shipping_full")), amount=body.get("amount"), note=body.get("note"))}
            elif action == "shipping_address":
                result = {"order": self.update_shipping_address(order_id, body.get("shipping_address"))}
            else:
                return JSONResponse(_NOT_FOUND, status_code=404)
        except KeyError:
            return JSONResponse(_NOT_FOUND, status_code=404)
        except ShopifyError as exc:
            return JSONResponse({"errors": [str(exc)]}, status_code=422)
        return JSONResponse(result)

    async def _sb_fulfillments(self, request: Request) -> Response:
        order_id = request.query_params.get("order_id")
        return JSONResponse({"fulfillments": self.fulfillments(int(order_id) if order_id else None)})

    async def _sb_refunds(self, request: Request) -> Response:
        return JSONResponse({"refunds": self.refunds()})

    async def _sb_inventory(self, request: Request) -> Response:
        return JSONResponse({"inventory_levels": self.inventory_levels()})

    async def _sb_requests(self, request: Request) -> Response:
        since = int(request.query_params.get("since", "0"))
        return JSONResponse({"requests": self.requests(since)})

    async def _sb_webhooks(self, request: Request) -> Response:
        with self._lock:
            return JSONResponse({"webhooks": list(self.webhooks)})

    async def _sb_reset(self, request: Request) -> Response:
        self.reset()
        return JSONResponse({"status": "reset"})
