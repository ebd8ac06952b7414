"""Clarus WMS connector: OAuth2 client credentials, JSON:API writes, GraphQL reads.

`ClarusResource` is a Dagster resource; every method also works on a plain instance
(tests, scripts). It keeps one `httpx.Client`, caches the access token until shortly
before it expires (and fetches a new one once on a 401), spaces calls by
`min_interval_s`, and retries transient failures through `send_with_retries`.

Writes that create records are idempotent: `ensure_goods_out` looks the order up by its
reference first, and when a create times out or fails with a 5xx after the request may
have landed, it looks again before retrying, so a retry never makes a second order.
A 422 raises `ClarusRejected` with Clarus's error code, symbol and message.

Records come back in the GraphQL node shape with ids as strings (see the `*_FIELDS`
selections below); REST bodies take integer ids, converted here.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime
from typing import Any

import httpx
from pydantic import Field, PrivateAttr

from clarus_pipelines.connectors.clarus_model import (
    ERROR_CODES,
    GoodsOutStatus,
    build_product_body,
    clarus_datetime,
)
from clarus_pipelines.connectors.writes import write_once
from clarus_pipelines.connectors.http import ConnectorError, HttpConnector, RetryPolicy, send_with_retries

log = logging.getLogger(__name__)

SYSTEM = "clarus"

STATUS_FIELDS = "goods_out_status { id code name }"
PRODUCT_FIELDS = (
    "id code barcode case_barcode description long_description product_type stock_unit_type_id "
    "country_of_manufacture commodity_code external_system_reference1 external_system_reference2 created_at updated_at"
)
LINE_FIELDS = (
    "id order_quantity allocated_quantity pick_quantity dispatch_quantity short_status product { id code } "
    "external_system_reference1 external_system_reference2 created_at updated_at"
)
PACKAGE_FIELDS = "id reference tracking_number weight"
SHIPMENT_FIELDS = (
    "id reference status tracking_number dispatched_at collection_datetime packages_count "
    "carrier { id code name } carrier_service { id code name } "
    f"goods_out {{ id reference external_system_reference1 {STATUS_FIELDS} }} "
    f"packages {{ {PACKAGE_FIELDS} }} lines {{ goods_out_line_id external_system_reference1 product {{ id code }} quantity }} "
    "external_system_reference1 created_at updated_at"
)
ADDRESS_FIELDS = "name address_1 address_2 address_3 address_4 address_5 postcode country_code email_address phone_number"
GOODS_OUT_FIELDS = (
    f"id reference goods_out_type priority expected_date_of_dispatch actual_date_of_dispatch {STATUS_FIELDS} "
    "account { id code } warehouse { id code } carrier { id code } carrier_service { id code } "
    "external_system_reference1 external_system_reference2 external_system_reference3 "
    f"delivery_address {{ {ADDRESS_FIELDS} }} lines {{ {LINE_FIELDS} }} shipments {{ {SHIPMENT_FIELDS} }} "
    "created_at updated_at"
)
GOODS_OUT_LINE_FIELDS = f"{LINE_FIELDS} goods_out {{ id reference external_system_reference1 {STATUS_FIELDS} }}"
STOCK_BALANCE_FIELDS = "id available allocated ordered received picked on_hand product { id code } account { id code } warehouse { id code } updated_at"
TRANSACTION_FIELDS = (
    "id subtype category quantity created_at product { id code } account { id code } warehouse { id code } "
    "goods_out { id reference } goods_in_receipt { id reference } location_from { id code } location_to { id code }"
)
RECEIPT_FIELDS = (
    "id reference status receipt_type expected_date_of_receipt actual_date_of_receipt notes account { id code } "
    "warehouse { id code } external_system_reference1 lines { id product { id code } expected_quantity received_quantity "
    "external_system_reference1 } created_at updated_at"
)
CARRIER_SERVICE_FIELDS = "id code name active is_default carrier { id code name }"

# root field -> filter input type, as named in Clarus's GraphQL schema
_FILTER_TYPES = {
    "goods_outs": "GoodsOutsFilterType",
    "goods_out_lines": "GoodsOutLineFilterType",
    "products": "ProductsFilterType",
    "stock_balances": "StockBalancesFilterType",
    "shipments": "ShipmentFilterType",
    "packages": "PackageFilterType",
    "transactions": "TransactionFilterType",
    "goods_in_receipts": "InboundGoodFilterType",
    "carriers": "CarrierFilterType",
    "carrier_services": "CarrierServiceFilterType",
}


class ClarusRejected(ConnectorError):
    """Clarus refused a request (422): its error `code`, `message` and all error `details`."""

    def __init__(self, code: int | None, message: str, details: list[dict], *, status: int = 422):
        first = details[0] if details else {}
        self.code = code
        self.message = message
        self.details = details
        self.symbol: str | None = first.get("symbol")
        self.source: str | None = first.get("source")
        super().__init__(SYSTEM, f"rejected ({self.symbol or code}): {message}", status, details)


class ClarusNotFound(ConnectorError):
    """The record addressed by id does not exist in Clarus (404)."""


class ClarusQueryError(ConnectorError):
    """A GraphQL read answered with errors."""


def _as_iso(value: datetime | str | None) -> str | None:
    return clarus_datetime(value)


def _int(value: str | int) -> int:
    return int(value)


def _rejection(response: httpx.Response) -> ClarusRejected:
    try:
        errors = response.json().get("errors") or []
    except ValueError:
        errors = []
    if not isinstance(errors, list):
        errors = [{"details": str(errors)}]
    errors = [e if isinstance(e, dict) else {"details": str(e)} for e in errors]
    first = errors[0] if errors else {}
    message = "; ".join(str(e.get("details") or e.get("title") or e) for e in errors) or response.text[:500]
    return ClarusRejected(first.get("code"), message, errors, status=response.status_code)


class ClarusResource(HttpConnector):
    """Clarus WMS API client for one tenant (subdomain)."""

    base_url: str = Field(description="Clarus API root, e.g. https://clarus-api.com (no trailing /api).")
    subdomain: str = Field(description="Tenant name sent as X-Clarus-Subdomain on every call.")
    client_id: str = Field(description="OAuth2 client id.")
    client_secret: str = Field(description="OAuth2 client secret (wire it with dg.EnvVar).")
    timeout_s: float = Field(default=30.0, description="Per-request timeout in seconds.")
    min_interval_s: float = Field(default=0.05, description="Minimum spacing between calls (Clarus documents no rate limit: be polite).")
    max_elapsed_s: float = Field(default=120.0, description="Give up retrying a call after this long.")

    _token: str | None = PrivateAttr(default=None)
    _token_expires_at: float = PrivateAttr(default=0.0)
    _last_call_at: float = PrivateAttr(default=0.0)
    _carrier_services: dict[tuple[str, str], tuple[str, str]] | None = PrivateAttr(default=None)

    def _throttle(self) -> None:
        with self._lock:
            wait = self._last_call_at + self.min_interval_s - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            self._last_call_at = time.monotonic()

    # ------------------------------------------------------------------ auth and transport

    def _access_token(self, *, refresh: bool = False) -> str:
        with self._lock:
            if not refresh and self._token and time.monotonic() < self._token_expires_at:
                return self._token
            self._throttle()
            response = send_with_retries(
                self._http(), "POST", "/oauth/token", system=SYSTEM, policy=self._policy(),
                data={"grant_type": "client_credentials", "client_id": self.client_id, "client_secret": self.client_secret},
                headers={"X-Clarus-Subdomain": self.subdomain},
            )
            if response.status_code != 200:
                raise ConnectorError(SYSTEM, f"token request refused ({response.status_code}): {response.text[:300]}", response.status_code)
            payload = response.json()
            lifetime = float(payload.get("expires_in") or 3600)
            self._token = payload["access_token"]
            # renew a little before Clarus would reject it
            self._token_expires_at = time.monotonic() + max(lifetime - min(60.0, lifetime / 10), 1.0)
            return self._token

    def _request(self, method: str, path: str, *, retry: bool = True, **kwargs: Any) -> httpx.Response:
        """One API call (with retries unless `retry=False`); a 401 fetches a new token once."""
        policy = self._policy() if retry else RetryPolicy(attempts=1)
        for refreshed in (False, True):
            token = self._access_token(refresh=refreshed)
            self._throttle()
            response = send_with_retries(
                self._http(), method, path, system=SYSTEM, policy=policy,
                headers={"Authorization": f"Bearer {token}", "X-Clarus-Subdomain": self.subdomain}, **kwargs,
            )
            if response.status_code != 401:
                return response
            log.info("clarus answered 401 to %s %s; fetching a new token", method, path)
        raise ConnectorError(SYSTEM, f"{method} {path}: still unauthorized after a fresh token", 401, response.text[:500])

    def _check(self, response: httpx.Response, what: str) -> dict:
        if response.status_code == 422:
            raise _rejection(response)
        if response.status_code == 404:
            raise ClarusNotFound(SYSTEM, f"{what}: not found", 404, response.text[:500])
        if response.status_code >= 400:
            raise ConnectorError(SYSTEM, f"{what}: HTTP {response.status_code}", response.status_code, response.text[:1000])
        return response.json() if response.content else {}

    def _write_with_recovery(
        self,
        method: str,
        path: str,
        body: dict | None,
        *,
        recover: Callable[[], Any],
        what: str,
    ) -> tuple[httpx.Response | None, Any]:
        """Send a non-idempotent write; after an ambiguous failure call `recover()`.

        `recover` looks at Clarus to decide whether the write landed: it returns the record
        to stop (the write is done), or None to resend (`writes.write_once`). Returns (response, None)
        when Clarus answered, or (None, outcome) when recovery found the write applied.
        """
        return write_once(lambda: self._request(method, path, retry=False, json=body), recover,
                          system=SYSTEM, what=what, policy=self._policy())

    # ------------------------------------------------------------------ GraphQL

    def graphql(self, query: str, variables: Mapping[str, Any] | None = None) -> dict:
        """Run a GraphQL read; returns `data` or raises `ClarusQueryError`."""
        response = self._request("POST", "/graphql", json={"query": query, "variables": dict(variables or {})})
        body = self._check(response, "graphql")
        if body.get("errors"):
            messages = "; ".join(str(e.get("message", e)) for e in body["errors"])
            raise ClarusQueryError(SYSTEM, f"graphql: {messages}", response.status_code, body["errors"])
        return body.get("data") or {}

    def _iter_connection(self, root: str, fields: str, filter: Mapping[str, Any] | None = None, page_size: int = 100) -> Iterator[dict]:
        query = (
            f"query($filter: {_FILTER_TYPES[root]}, $first: Int, $after: String) {{ {root} {{ "
            f"all(filter: $filter, first: $first, after: $after) {{ edges {{ cursor node {{ {fields} }} }} "
            "pageInfo { hasNextPage endCursor } } } }"
        )
        after: str | None = None
        while True:
            data = self.graphql(query, {"filter": dict(filter or {}), "first": page_size, "after": after})
            connection = data[root]["all"]
            for edge in connection["edges"]:
                yield edge["node"]
            info = connection.get("pageInfo") or {}
            if not info.get("hasNextPage"):
                return
            if not info.get("endCursor") or info["endCursor"] == after:
                raise ClarusQueryError(SYSTEM, f"{root}: paging did not advance (cursor {after!r})")
            after = info["endCursor"]

    # ------------------------------------------------------------------ products

    def iter_products(self, updated_since: datetime | str | None = None, page_size: int = 100) -> Iterator[dict]:
        filter = {"updated_at": {"from": _as_iso(updated_since)}} if updated_since else {}
        return self._iter_connection("products", PRODUCT_FIELDS, filter, page_size)

    def find_products(self, skus: Iterable[str] | None = None) -> list[dict]:
        """Products with these exact SKUs (Clarus `code`), or all products."""
        if skus is None:
            return list(self.iter_products())
        wanted = list(dict.fromkeys(skus))
        found: list[dict] = []
        for start in range(0, len(wanted), 100):
            chunk = wanted[start:start + 100]
            found += [p for p in self._iter_connection("products", PRODUCT_FIELDS, {"code": {"in": chunk}}) if p["code"] in chunk]
        return found

    def find_product_by_sku(self, sku: str) -> dict | None:
        matches = [p for p in self._iter_connection("products", PRODUCT_FIELDS, {"code": {"eq": sku}}) if p["code"] == sku]
        return matches[0] if matches else None

    def get_product(self, product_id: str | int) -> dict | None:
        matches = list(self._iter_connection("products", PRODUCT_FIELDS, {"id": {"eq": str(product_id)}}))
        return matches[0] if matches else None

    def create_product(self, attributes: Mapping[str, Any]) -> str:
        """Create a product; returns its Clarus id. A SKU already taken raises `ClarusRejected`."""
        sku = attributes.get("code")
        if not sku:
            raise ValueError("a Clarus product needs its SKU in 'code'")
        response, found = self._write_with_recovery(
            "POST", "/api/products", build_product_body(attributes),
            recover=lambda: self.find_product_by_sku(sku), what=f"create product {sku}",
        )
        if found:
            return str(found["id"])
        return str(self._check(response, f"create product {sku}")["data"]["id"])

    def ensure_product(self, attributes: Mapping[str, Any]) -> tuple[str, bool]:
        """The product with this SKU, created if missing: (Clarus id, created)."""
        existing = self.find_product_by_sku(attributes["code"])
        if existing:
            return str(existing["id"]), False
        try:
            return self.create_product(attributes), True
        except ClarusRejected as exc:
            if exc.symbol == "taken" or exc.code == ERROR_CODES["taken"]:
                existing = self.find_product_by_sku(attributes["code"])
                if existing:
                    return str(existing["id"]), False
            raise

    def update_product(self, product_id: str | int, attributes: Mapping[str, Any]) -> dict:
        """Change a product's attributes (idempotent). Returns Clarus's `data` document."""
        attrs = dict(attributes)
        if "description" not in attrs or "stock_unit_type_id" not in attrs:  # the spec requires both on PATCH
            current = self.get_product(product_id)
            if current is None:
                raise ClarusNotFound(SYSTEM, f"product {product_id}: not found", 404)
            attrs.setdefault("description", current.get("description"))
            attrs.setdefault("stock_unit_type_id", _int(current.get("stock_unit_type_id") or 1))
        response = self._request("PATCH", f"/api/products/{_int(product_id)}", json=build_product_body(attrs))
        return self._check(response, f"update product {product_id}")["data"]

    # ------------------------------------------------------------------ goods outs

    def iter_goods_outs(
        self,
        updated_since: datetime | str | None = None,
        status: GoodsOutStatus | str | Iterable[GoodsOutStatus | str] | None = None,
        page_size: int = 100,
        *,
        reference: str | None = None,
        external_system_reference1: str | None = None,
        sku: str | None = None,
    ) -> Iterator[dict]:
        """Goods outs, oldest id first, filtered as given; pages through all of them."""
        filter: dict[str, Any] = {}
        if updated_since:
            filter["updated_at"] = {"from": _as_iso(updated_since)}
        if status is not None:
            statuses = [status] if isinstance(status, (str, GoodsOutStatus)) else list(status)
            codes = [s.name if isinstance(s, GoodsOutStatus) else GoodsOutStatus.from_code(s).name for s in statuses]
            filter["goods_out_status_code"] = {"in": codes}
        if reference is not None:
            filter["reference"] = {"eq": reference}
        if external_system_reference1 is not None:
            filter["external_system_reference1"] = {"eq": external_system_reference1}
        if sku is not None:
            filter["product_code"] = {"eq": sku}
        return self._iter_connection("goods_outs", GOODS_OUT_FIELDS, filter, page_size)

    def find_goods_out_by_reference(self, reference: str) -> dict | None:
        matches = [g for g in self.iter_goods_outs(reference=reference) if g["reference"] == reference]
        return matches[0] if matches else None

    def get_goods_out(self, goods_out_id: str | int) -> dict | None:
        matches = list(self._iter_connection("goods_outs", GOODS_OUT_FIELDS, {"id": {"eq": str(goods_out_id)}}))
        return matches[0] if matches else None

    def ensure_goods_out(self, body: Mapping[str, Any]) -> tuple[str, bool]:
        """Create the goods out unless one with its reference exists: (Clarus id, created).

        Safe to call again after any failure: a timeout or 5xx after the request may have
        landed is followed by a lookup, not a blind resend.
        """
        reference = body["data"]["attributes"]["reference"]
        existing = self.find_goods_out_by_reference(reference)
        if existing:
            return str(existing["id"]), False
        response, found = self._write_with_recovery(
            "POST", "/api/goods_outs", dict(body),
            recover=lambda: self.find_goods_out_by_reference(reference), what=f"create goods out {reference}",
        )
        if found:
            log.info("clarus goods out %s had been created by an earlier attempt (id %s)", reference, found["id"])
            return str(found["id"]), True
        assert response is not None
        if response.status_code == 422:
            rejected = _rejection(response)
            if rejected.symbol == "taken" and (rejected.source or "").endswith("reference"):
                existing = self.find_goods_out_by_reference(reference)
                if existing:
                    return str(existing["id"]), False
            log.warning("clarus refused goods out %s: %s", reference, rejected.message)
            raise rejected
        return str(self._check(response, f"create goods out {reference}")["data"]["id"]), True

    def _with_full_header(self, goods_out_id: str | int, body: Mapping[str, Any]) -> dict:
        """The spec requires the header's required attributes on PATCH too: fill them from Clarus."""
        data = dict(body["data"])
        attrs = dict(data.get("attributes") or {})
        required = ("goods_out_type", "account_id", "reference", "expected_date_of_dispatch")
        if any(k not in attrs for k in required):
            current = self.get_goods_out(goods_out_id)
            if current is None:
                raise ClarusNotFound(SYSTEM, f"goods out {goods_out_id}: not found", 404)
            attrs.setdefault("goods_out_type", current.get("goods_out_type") or "sales_order")
            attrs.setdefault("account_id", _int(current["account"]["id"]))
            attrs.setdefault("reference", current["reference"])
            attrs.setdefault("expected_date_of_dispatch", current["expected_date_of_dispatch"])
        data["attributes"] = attrs
        data.setdefault("type", "goods_outs")
        return {**body, "data": data}

    def _pending_line_changes(self, goods_out_id: str | int, changes: list[dict]) -> list[dict] | None:
        """The part of `changes` not yet applied to the goods out (after an ambiguous PATCH)."""
        current = self.get_goods_out(goods_out_id)
        if current is None:
            raise ClarusNotFound(SYSTEM, f"goods out {goods_out_id}: not found", 404)
        line_ids = {str(line["id"]) for line in current.get("lines") or []}
        line_refs = {line.get("external_system_reference1") for line in current.get("lines") or []} - {None}
        remaining = []
        for change in changes:
            if change["type"] == "ADD":
                ref = (change.get("attributes") or {}).get("external_system_reference1")
                if not ref:
                    raise ConnectorError(SYSTEM, f"goods out {goods_out_id}: cannot tell whether an ADD landed; "
                                         "give each added line an external_system_reference1")
                if ref not in line_refs:
                    remaining.append(change)
            elif change["type"] == "DESTROY":
                if str(change["id"]) in line_ids:
                    remaining.append(change)
            else:
                remaining.append(change)  # UPDATE sets values: applying it twice is harmless
        return remaining

    def update_goods_out(self, goods_out_id: str | int, body: Mapping[str, Any]) -> dict:
        """PATCH a goods out (header attributes, `lines_changes`, address). Returns Clarus's document.

        After an ambiguous failure the goods out is re-read and only the line changes that
        did not land are resent (ADD lines are matched on `external_system_reference1`).
        """
        full = self._with_full_header(goods_out_id, body)
        path = f"/api/goods_outs/{_int(goods_out_id)}"
        state = {"body": full}

        def recover() -> Any:
            attrs = state["body"]["data"]["attributes"]
            changes = attrs.get("lines_changes")
            if changes:
                remaining = self._pending_line_changes(goods_out_id, changes)
                state["body"] = {**state["body"], "data": {**state["body"]["data"], "attributes": {**attrs, "lines_changes": remaining}}}
            return None  # resend whatever is still needed (the header part is idempotent)

        response, _ = write_once(lambda: self._request("PATCH", path, retry=False, json=state["body"]), recover,
                                 system=SYSTEM, what=f"update goods out {goods_out_id}", policy=self._policy())
        return self._check(response, f"update goods out {goods_out_id}")

    def cancel_goods_out(self, goods_out_id: str | int) -> dict:
        """Cancel a goods out; returns its record. Idempotent: already CANCELLED is fine.

        A COMPLETED (dispatched) goods out cannot be cancelled: `ClarusRejected` with
        symbol ``invalid_state``.
        """
        path = f"/api/goods_outs/{_int(goods_out_id)}/cancel"

        def cancelled() -> dict | None:
            current = self.get_goods_out(goods_out_id)
            return current if current and current["goods_out_status"]["code"] == GoodsOutStatus.CANCELLED.name else None

        response, found = self._write_with_recovery("POST", path, None, recover=cancelled, what=f"cancel goods out {goods_out_id}")
        if found:
            return found
        assert response is not None
        if response.status_code == 422:
            already = cancelled()
            if already:
                return already
            raise _rejection(response)
        self._check(response, f"cancel goods out {goods_out_id}")
        current = self.get_goods_out(goods_out_id)
        if current is None:
            raise ClarusNotFound(SYSTEM, f"goods out {goods_out_id}: not found after cancel", 404)
        return current

    def iter_goods_out_lines(self, goods_out_id: str | int | None = None, updated_since: datetime | str | None = None,
                             page_size: int = 100) -> Iterator[dict]:
        filter: dict[str, Any] = {}
        if goods_out_id is not None:
            filter["goods_out_id"] = {"eq": str(goods_out_id)}
        if updated_since:
            filter["updated_at"] = {"from": _as_iso(updated_since)}
        return self._iter_connection("goods_out_lines", GOODS_OUT_LINE_FIELDS, filter, page_size)

    # ------------------------------------------------------------------ stock, shipments, transactions

    def iter_stock_balances(self, skus: Iterable[str] | None = None, *, warehouse_id: str | int | None = None,
                            updated_since: datetime | str | None = None, page_size: int = 100) -> Iterator[dict]:
        """Stock balances per product/account/warehouse (available, allocated, ...)."""
        filter: dict[str, Any] = {}
        if skus is not None:
            filter["product_code"] = {"in": list(skus)}
        if warehouse_id is not None:
            filter["warehouse_id"] = {"eq": str(warehouse_id)}
        if updated_since:
            filter["updated_at"] = {"from": _as_iso(updated_since)}
        return self._iter_connection("stock_balances", STOCK_BALANCE_FIELDS, filter, page_size)

    def iter_shipments(self, goods_out_id: str | int | None = None, updated_since: datetime | str | None = None,
                       status: str | None = None, page_size: int = 100) -> Iterator[dict]:
        """Shipments with packages, tracking numbers and the goods out lines they carried."""
        filter: dict[str, Any] = {}
        if goods_out_id is not None:
            filter["goods_out_id"] = {"eq": str(goods_out_id)}
        if updated_since:
            filter["updated_at"] = {"from": _as_iso(updated_since)}
        if status is not None:
            filter["status"] = {"eq": status}
        return self._iter_connection("shipments", SHIPMENT_FIELDS, filter, page_size)

    def update_shipment(self, shipment_id: str | int, attributes: Mapping[str, Any]) -> dict:
        """Correct a shipment (tracking number, references). Idempotent."""
        body = {"data": {"type": "shipments", "attributes": dict(attributes)}}
        response = self._request("PATCH", f"/api/shipments/{_int(shipment_id)}", json=body)
        return self._check(response, f"update shipment {shipment_id}")["data"]

    def iter_transactions(self, since: datetime | str | None = None, *, subtype: str | None = None,
                          goods_out_id: str | int | None = None, page_size: int = 100) -> Iterator[dict]:
        filter: dict[str, Any] = {}
        if since:
            filter["created_at"] = {"from": _as_iso(since)}
        if subtype is not None:
            filter["subtype"] = {"eq": subtype}
        if goods_out_id is not None:
            filter["goods_out_id"] = {"eq": str(goods_out_id)}
        return self._iter_connection("transactions", TRANSACTION_FIELDS, filter, page_size)

    # ------------------------------------------------------------------ goods in (returns)

    def iter_goods_in_receipts(self, updated_since: datetime | str | None = None, *, status: str | None = None,
                               reference: str | None = None, page_size: int = 100) -> Iterator[dict]:
        filter: dict[str, Any] = {}
        if updated_since:
            filter["updated_at"] = {"from": _as_iso(updated_since)}
        if status is not None:
            filter["status"] = {"eq": status}
        if reference is not None:
            filter["reference"] = {"eq": reference}
        return self._iter_connection("goods_in_receipts", RECEIPT_FIELDS, filter, page_size)

    def find_goods_in_receipt_by_reference(self, reference: str) -> dict | None:
        matches = [r for r in self.iter_goods_in_receipts(reference=reference) if r["reference"] == reference]
        return matches[0] if matches else None

    def create_goods_in_receipt(
        self,
        *,
        reference: str,
        account_id: str | int,
        warehouse_id: str | int,
        lines: Iterable[Mapping[str, Any]],
        expected_date_of_arrival: datetime | str | None = None,
        notes: str | None = None,
        external_system_reference1: str | None = None,
    ) -> tuple[str, bool]:
        """Expect stock back (a return): (Clarus receipt id, created). Idempotent by `reference`.

        `lines` are ``{"product_id", "quantity", "external_system_reference1"?}``.
        """
        existing = self.find_goods_in_receipt_by_reference(reference)
        if existing:
            return str(existing["id"]), False
        attributes: dict[str, Any] = {
            "account_id": _int(account_id),
            "warehouse_id": _int(warehouse_id),
            "reference": reference,
            "lines_changes": [
                {"type": "ADD", "attributes": {"product_id": _int(line["product_id"]), "expected_quantity": line["quantity"],
                                               **{k: v for k, v in line.items() if k not in ("product_id", "quantity") and v is not None}}}
                for line in lines
            ],
        }
        if expected_date_of_arrival is not None:
            attributes["expected_date_of_arrival"] = _as_iso(expected_date_of_arrival)
        if notes is not None:
            attributes["notes"] = notes
        if external_system_reference1 is not None:
            attributes["external_system_reference1"] = external_system_reference1
        body = {"data": {"type": "goods_in_receipts", "attributes": attributes}}
        response, found = self._write_with_recovery(
            "POST", "/api/goods_in_receipts", body,
            recover=lambda: self.find_goods_in_receipt_by_reference(reference), what=f"create goods in receipt {reference}",
        )
        if found:
            return str(found["id"]), True
        return str(self._check(response, f"create goods in receipt {reference}")["data"]["id"]), True

    # ------------------------------------------------------------------ carriers

    def list_carrier_services(self) -> list[dict]:
        return list(self._iter_connection("carrier_services", CARRIER_SERVICE_FIELDS))

    def carrier_service_ids(self, *, refresh: bool = False) -> dict[tuple[str, str], tuple[str, str]]:
        """(carrier code, service code) -> (carrier id, service id), cached per resource instance."""
        with self._lock:
            if self._carrier_services is None or refresh:
                self._carrier_services = {
                    (s["carrier"]["code"], s["code"]): (str(s["carrier"]["id"]), str(s["id"])) for s in self.list_carrier_services()
                }
            return dict(self._carrier_services)

    def probe(self) -> None:
        """A cheap authenticated read for live health: a fresh token and a one-row query.
        Returns None, or raises the connector's error (ConnectorError)."""
        self._access_token(refresh=True)
        self.graphql("query { carriers { all(first: 1) { edges { node { id } } } } }")

    def check_connection(self) -> dict[str, Any]:
        """Fetch a token and run a one-row query; returns latency for the health view."""
        started = time.monotonic()
        self._access_token(refresh=True)
        self.graphql("query { carriers { all(first: 1) { edges { node { id } } } } }")
        return {"ok": True, "latency_ms": round((time.monotonic() - started) * 1000, 1)}
