"""Shopify Admin REST connector: orders, fulfilment orders, fulfilments, inventory, variants.

`ShopifyResource` is a Dagster resource; every method also works on a plain instance.
It keeps one `httpx.Client` with the `X-Shopify-Access-Token` header, pages lists by
following the `Link: <...>; rel="next"` cursor, and goes through `send_with_retries`, so
429s wait the `Retry-After` Shopify asks for and 5xx/timeouts back off with jitter.

`create_fulfillment` never double-fulfils: it looks for a fulfilment with the same
tracking number and quantities first, sends the create once, and after an ambiguous
failure (timeout, 5xx) re-reads the order's fulfilments before resending. Shopify
itself refuses (422) to fulfil quantities that are already fulfilled.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx
from pydantic import Field

from clarus_pipelines.connectors.http import ConnectorError, HttpConnector, RetryPolicy, send_with_retries
from clarus_pipelines.connectors.writes import SINGLE_ATTEMPT, write_once

log = logging.getLogger(__name__)

SYSTEM = "shopify"
OPEN_FULFILLMENT_STATUSES = frozenset({"success", "open", "pending"})


class ShopifyError(ConnectorError):
    """Shopify refused a request (4xx): `errors` is Shopify's `errors` member."""

    def __init__(self, message: str, status: int | None = None, errors: Any = None):
        super().__init__(SYSTEM, message, status, errors)
        self.errors = errors


@dataclass(frozen=True)
class FulfillmentResult:
    fulfillment: dict[str, Any]
    created: bool  # False when an identical fulfilment already existed


def _iso(value: datetime | str | None) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return value.isoformat()


def _line_quantities(fulfillment: Mapping[str, Any]) -> dict[int, int]:
    quantities: dict[int, int] = {}
    for item in fulfillment.get("line_items") or []:
        quantities[int(item["id"])] = quantities.get(int(item["id"]), 0) + int(item.get("quantity") or 0)
    return quantities


def _same_shipment(fulfillment: Mapping[str, Any], quantities: Mapping[int, int], tracking_number: str | None) -> bool:
    if fulfillment.get("status") not in OPEN_FULFILLMENT_STATUSES:
        return False
    if (fulfillment.get("tracking_number") or None) != (tracking_number or None):
        return False
    return _line_quantities(fulfillment) == dict(quantities)


class ShopifyResource(HttpConnector):
    """Shopify Admin REST API client for one shop."""

    base_url: str = Field(description="The shop's admin root, e.g. https://my-shop.myshopify.com.")
    access_token: str = Field(description="Admin API access token (wire it with dg.EnvVar).")
    api_version: str = Field(default="2025-07", description="Admin API version in the URL.")
    timeout_s: float = Field(default=30.0, description="Per-request timeout in seconds.")
    max_attempts: int = Field(default=6, description="Attempts per call for transient failures.")
    max_elapsed_s: float = Field(default=120.0, description="Give up retrying a call after this long.")
    page_size: int = Field(default=250, description="Records per page for list reads (Shopify allows up to 250).")

    # ------------------------------------------------------------------ plumbing

    def _client_options(self) -> dict[str, Any]:
        return {"headers": {"X-Shopify-Access-Token": self.access_token}}

    def _policy(self) -> RetryPolicy:
        return RetryPolicy(attempts=self.max_attempts, max_elapsed_s=self.max_elapsed_s)

    def _path(self, resource: str) -> str:
        return f"/admin/api/{self.api_version}/{resource}"

    def _send(self, method: str, url: str, *, policy: RetryPolicy | None = None, **kwargs: Any) -> httpx.Response:
        return send_with_retries(self._http(), method, url, system=SYSTEM, policy=policy or self._policy(), **kwargs)

    @staticmethod
    def _check(response: httpx.Response, what: str) -> dict[str, Any]:
        if response.status_code >= 400:
            try:
                errors = response.json().get("errors")
            except ValueError:
                errors = response.text[:500]
            raise ShopifyError(f"{what}: HTTP {response.status_code}: {errors}", response.status_code, errors)
        return response.json() if response.content else {}

    def _get(self, resource: str, what: str, params: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
        response = self._send("GET", self._path(resource), params=dict(params or {}))
        if response.status_code == 404:
            return None
        return self._check(response, what)

    def _iter_pages(self, resource: str, key: str, params: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
        """Every record of a list endpoint, following `Link: rel="next"` cursors."""
        url: str | None = self._path(resource)
        query: dict[str, Any] | None = {k: v for k, v in params.items() if v is not None}
        seen: set[str] = set()
        while url:
            response = self._send("GET", url, params=query)
            body = self._check(response, f"list {resource}")
            yield from body.get(key) or []
            following = response.links.get("next", {}).get("url")
            if following in seen:
                raise ShopifyError(f"list {resource}: paging did not advance")
            if following:
                seen.add(following)
            url, query = following, None  # the next URL carries page_info and limit

    # ------------------------------------------------------------------ orders

    def iter_orders(
        self,
        updated_at_min: datetime | str | None = None,
        *,
        status: str = "any",
        fields: Iterable[str] | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Orders (any status by default) updated at or after `updated_at_min`."""
        params = {"status": status, "limit": self.page_size, "updated_at_min": _iso(updated_at_min),
                  "fields": ",".join(fields) if fields else None}
        return self._iter_pages("orders.json", "orders", params)

    def get_order(self, order_id: int | str) -> dict[str, Any] | None:
        """The order, or None when Shopify does not know it."""
        body = self._get(f"orders/{order_id}.json", f"get order {order_id}")
        return body["order"] if body else None

    def list_refunds(self, order_id: int | str) -> list[dict[str, Any]]:
        body = self._get(f"orders/{order_id}/refunds.json", f"refunds of order {order_id}")
        return body["refunds"] if body else []

    # ------------------------------------------------------------------ fulfilment

    def get_fulfillment_orders(self, order_id: int | str) -> list[dict[str, Any]]:
        body = self._get(f"orders/{order_id}/fulfillment_orders.json", f"fulfillment orders of {order_id}")
        if body is None:
            raise ShopifyError(f"order {order_id} not found", 404)
        return body["fulfillment_orders"]

    def list_fulfillments(self, order_id: int | str) -> list[dict[str, Any]]:
        body = self._get(f"orders/{order_id}/fulfillments.json", f"fulfillments of {order_id}")
        if body is None:
            raise ShopifyError(f"order {order_id} not found", 404)
        return body["fulfillments"]

    def get_fulfillment(self, order_id: int | str, fulfillment_id: int | str) -> dict[str, Any] | None:
        """One fulfilment (Shopify's REST API addresses it under its order)."""
        body = self._get(f"orders/{order_id}/fulfillments/{fulfillment_id}.json", f"fulfillment {fulfillment_id}")
        return body["fulfillment"] if body else None

    @staticmethod
    def _allocate(fulfillment_orders: list[dict[str, Any]], quantities: Mapping[int, int]) -> list[dict[str, Any]]:
        """`line_items_by_fulfillment_order` for the wanted line quantities; raises if short."""
        left = dict(quantities)
        groups: dict[int, list[dict[str, int]]] = {}
        for fo in fulfillment_orders:
            if fo.get("status") not in ("open", "in_progress"):
                continue
            for item in fo.get("line_items") or []:
                line_id = int(item["line_item_id"])
                take = min(left.get(line_id, 0), int(item.get("fulfillable_quantity") or 0))
                if take > 0:
                    groups.setdefault(int(fo["id"]), []).append({"id": int(item["id"]), "quantity": take})
                    left[line_id] -= take
        short = {line: qty for line, qty in left.items() if qty > 0}
        if short:
            raise ShopifyError(f"not enough fulfillable quantity for line item(s) {short}", 422, {"short": short})
        return [{"fulfillment_order_id": fo_id, "fulfillment_order_line_items": items} for fo_id, items in groups.items()]

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
        """Fulfil `lines` (Shopify line item id -> quantity) of an order, with tracking.

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
        body = {"fulfillment": {"notify_customer": notify_customer, "tracking_info": tracking,
                                "line_items_by_fulfillment_order": groups}}
        response, recovered = write_once(
            lambda: self._send("POST", self._path("fulfillments.json"), policy=SINGLE_ATTEMPT, json=body),
            landed, system=SYSTEM, what=f"fulfil order {order_id}", policy=self._policy(),
        )
        if recovered is not None:
            return FulfillmentResult(recovered, True)
        assert response is not None
        if response.status_code == 422:
            found = landed()  # a resend after a lost response is refused: the first one landed
            if found is not None:
                return FulfillmentResult(found, True)
        return FulfillmentResult(self._check(response, f"fulfil order {order_id}")["fulfillment"], True)

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
        response = self._send("POST", self._path(f"fulfillments/{fulfillment_id}/update_tracking.json"),
                              json={"fulfillment": {"notify_customer": notify_customer, "tracking_info": tracking}})
        return self._check(response, f"update tracking of {fulfillment_id}")["fulfillment"]

    # ------------------------------------------------------------------ inventory and catalogue

    def iter_inventory_levels(
        self, location_ids: Iterable[int | str], inventory_item_ids: Iterable[int | str] | None = None,
    ) -> Iterator[dict[str, Any]]:
        params = {"location_ids": ",".join(str(x) for x in location_ids), "limit": self.page_size,
                  "inventory_item_ids": ",".join(str(x) for x in inventory_item_ids) if inventory_item_ids else None}
        return self._iter_pages("inventory_levels.json", "inventory_levels", params)

    def set_inventory_levels(self, levels: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Set absolute `available` per (`inventory_item_id`, `location_id`); safe to repeat."""
        results = []
        for level in levels:
            body = {"location_id": int(level["location_id"]), "inventory_item_id": int(level["inventory_item_id"]),
                    "available": int(level["available"])}
            response = self._send("POST", self._path("inventory_levels/set.json"), json=body)
            results.append(self._check(response, f"set inventory of {body['inventory_item_id']}")["inventory_level"])
        return results

    def adjust_inventory_level(self, inventory_item_id: int | str, location_id: int | str, delta: int) -> dict[str, Any]:
        """Add `delta` to `available`. Not idempotent: prefer `set_inventory_levels`."""
        body = {"location_id": int(location_id), "inventory_item_id": int(inventory_item_id),
                "available_adjustment": int(delta)}

        def ambiguous() -> None:
            # an adjustment cannot be looked up: resending could apply it twice
            raise ShopifyError(f"adjust inventory of {inventory_item_id}: outcome unknown; re-read and set the level instead")

        response, _ = write_once(
            lambda: self._send("POST", self._path("inventory_levels/adjust.json"), policy=SINGLE_ATTEMPT, json=body),
            ambiguous, system=SYSTEM, what=f"adjust inventory of {inventory_item_id}", policy=self._policy(),
        )
        assert response is not None
        return self._check(response, f"adjust inventory of {inventory_item_id}")["inventory_level"]

    def iter_products(self) -> Iterator[dict[str, Any]]:
        return self._iter_pages("products.json", "products", {"limit": self.page_size})

    def iter_variants(self) -> Iterator[dict[str, Any]]:
        """Every variant of every product, with `product_title` added."""
        for product in self.iter_products():
            for variant in product.get("variants") or []:
                yield {**variant, "product_title": product.get("title")}

    def probe(self) -> None:
        """A cheap authenticated read for live health (one location); raises ShopifyError."""
        response = self._send("GET", self._path("locations.json"), params={"limit": 1},
                              policy=RetryPolicy(attempts=2, max_elapsed_s=10.0))
        self._check(response, "probe (locations)")
        if response.status_code != 200:
            raise ShopifyError(f"probe (locations): HTTP {response.status_code}", response.status_code)

    def list_locations(self) -> list[dict[str, Any]]:
        body = self._get("locations.json", "locations")
        return body["locations"] if body else []

    def list_webhook_subscriptions(self) -> list[dict[str, Any]]:
        """The shop's webhook subscriptions as `{"id", "topic", "uri"}` (REST `webhooks.json`; read-only)."""
        return [
            {"id": str(w.get("id")), "topic": w.get("topic"), "uri": w.get("address")}
            for w in self._iter_pages("webhooks.json", "webhooks", {"limit": self.page_size})
        ]
