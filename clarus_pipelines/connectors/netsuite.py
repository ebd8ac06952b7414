"""NetSuite SuiteTalk REST connector: sales orders, fulfilments, returns and their receipts, credits, items.

`NetSuiteResource` is a Dagster resource; every method also works on a plain instance.
Every request is signed with OAuth 1.0a token-based authentication (HMAC-SHA256, realm
= account id) by oauthlib, freshly per attempt (NetSuite refuses a reused nonce), and
goes through `send_with_retries`: 429 (including CONCURRENCY_LIMIT_EXCEEDED, NetSuite's
account-wide concurrency governance), 5xx and timeouts back off with jitter.

Creates are idempotent through NetSuite's external ids, which it keeps unique per record
type: `ensure_sales_order` looks the order up by `externalId` first, sends the create
once, and after an ambiguous failure looks again before resending; the item fulfilment,
return authorisation, item receipt (returned goods received) and credit memo creates
carry our own reference (shipment id, refund id) as their `externalId` the same way. An
error answer raises `NetSuiteError` with NetSuite's `o:errorCode` and detail.
"""

from __future__ import annotations

import logging
from collections.abc import Generator, Iterable, Iterator, Mapping
from typing import Any
from urllib.parse import quote

import httpx
from oauthlib.oauth1 import Client as OAuth1Client
from oauthlib.oauth1.rfc5849 import SIGNATURE_HMAC_SHA256
from pydantic import Field

from clarus_pipelines.connectors.http import ConnectorError, HttpConnector, RetryPolicy, send_with_retries
from clarus_pipelines.connectors.writes import SINGLE_ATTEMPT, write_once
from clarus_pipelines.domain.netsuite_orders import allocate_to_lines, sales_order_line_changes, shipping_address_change

log = logging.getLogger(__name__)

SYSTEM = "netsuite"
RECORD_PATH = "/services/rest/record/v1"
# approved: Pending Fulfillment, Partially Fulfilled, Pending Billing/Partially Fulfilled, Pending Billing, Billed
COMMITTED_STATUSES = frozenset({"B", "D", "E", "F", "G"})
CLOSED_STATUSES = frozenset({"C", "H"})  # Cancelled, Closed: no line can change any more
ITEM_FIELDS = ("itemId", "upcCode", "displayName", "isInactive", "lastModifiedDate")


class NetSuiteError(ConnectorError):
    """NetSuite answered an error: `code` is its o:errorCode, `detail` its message."""

    def __init__(self, message: str, *, status: int | None, code: str | None, detail: str | None,
                 path: str | None = None, body: Any = None):
        super().__init__(SYSTEM, message, status, body)
        self.code = code
        self.detail = detail
        self.path = path


class NetSuiteTBA(httpx.Auth):
    """OAuth 1.0a token-based authentication, signed per request (new nonce and timestamp)."""

    def __init__(self, account_id: str, consumer_key: str, consumer_secret: str, token_id: str, token_secret: str):
        self._client_args = dict(
            client_key=consumer_key, client_secret=consumer_secret, resource_owner_key=token_id,
            resource_owner_secret=token_secret, signature_method=SIGNATURE_HMAC_SHA256, realm=account_id,
        )

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        # JSON bodies are not part of the signature base string; only form bodies would be
        _, headers, _ = OAuth1Client(**self._client_args).sign(str(request.url), http_method=request.method)
        request.headers["Authorization"] = headers["Authorization"]
        yield request


def _error(response: httpx.Response, what: str) -> NetSuiteError:
    code = detail = path = None
    body: Any
    try:
        body = response.json()
        details = body.get("o:errorDetails") or []
        if details:
            code, detail, path = details[0].get("o:errorCode"), details[0].get("detail"), details[0].get("o:errorPath")
    except ValueError:
        body = response.text[:1000]
    return NetSuiteError(f"{what}: HTTP {response.status_code} {code or ''} {detail or ''}".strip(),
                         status=response.status_code, code=code, detail=detail, path=path, body=body)


def _status_code(value: Any) -> str | None:
    """orderStatus arrives as "B" or as {"id": "B", "refName": "Pending Fulfillment"}."""
    if isinstance(value, Mapping):
        value = value.get("id")
    return str(value) if value is not None else None


def _sublist(record: Mapping[str, Any], name: str = "item") -> list[dict[str, Any]]:
    sub = record.get(name)
    if isinstance(sub, Mapping):
        return list(sub.get("items") or [])
    return list(sub or []) if isinstance(sub, list) else []


def transform_lines(record: Mapping[str, Any], specs: Iterable[Mapping[str, Any]], *, done_field: str, short: str,
                    what: str) -> list[dict[str, Any]]:
    """The `item.items` of a transform (sales order -> item fulfilment, return -> item receipt).

    `specs`: `{"order_line": n, "quantity": q}` or `{"item_id": id, "quantity": q}`; by item,
    quantities go to the open lines with room left (`quantity - done_field`). Every line is
    named, `itemReceive: false` for the ones not taken: NetSuite takes unnamed lines in full.
    Raises ValueError when an item has too little left.
    """
    record_lines = _sublist(record)
    room = {int(ln["line"]): float(ln.get("quantity") or 0) - float(ln.get(done_field) or 0)
            for ln in record_lines if not ln.get("isClosed")}
    specs = list(specs)
    by_line: dict[int, float] = {}
    for spec in specs:
        if spec.get("order_line") is not None:
            by_line[int(spec["order_line"])] = by_line.get(int(spec["order_line"]), 0.0) + float(spec["quantity"])
    taken, missing = allocate_to_lines(
        record_lines, [(str(s["item_id"]), float(s["quantity"])) for s in specs if s.get("order_line") is None], room)
    if missing:
        item_id, left = missing[0]
        raise ValueError(f"{what} {short} {item_id} for {left:g} more")
    for number, quantity in taken.items():
        by_line[number] = by_line.get(number, 0.0) + quantity
    return [{"orderLine": int(ln["line"]), "quantity": by_line[int(ln["line"])], "itemReceive": True}
            if int(ln["line"]) in by_line else {"orderLine": int(ln["line"]), "itemReceive": False}
            for ln in record_lines]


class NetSuiteResource(HttpConnector):
    """NetSuite REST record API client for one account (token-based authentication)."""

    base_url: str = Field(description="REST root, e.g. https://1234567.suitetalk.api.netsuite.com (no path).")
    account_id: str = Field(description="Account id as used in the OAuth realm, e.g. 1234567 or 1234567_SB1.")
    consumer_key: str = Field(description="Integration record consumer key.")
    consumer_secret: str = Field(description="Integration record consumer secret (wire it with dg.EnvVar).")
    token_id: str = Field(description="Access token id.")
    token_secret: str = Field(description="Access token secret (wire it with dg.EnvVar).")
    timeout_s: float = Field(default=60.0, description="Per-request timeout in seconds (NetSuite is slow).")
    max_attempts: int = Field(default=6, description="Attempts per call for transient failures.")
    max_elapsed_s: float = Field(default=180.0, description="Give up retrying a call after this long.")

    # ------------------------------------------------------------------ plumbing

    def _client_options(self) -> dict[str, Any]:
        return {"auth": NetSuiteTBA(self.account_id, self.consumer_key, self.consumer_secret, self.token_id, self.token_secret)}

    def _policy(self) -> RetryPolicy:
        return RetryPolicy(attempts=self.max_attempts, max_elapsed_s=self.max_elapsed_s)

    def _send(self, method: str, path: str, *, policy: RetryPolicy | None = None, **kwargs: Any) -> httpx.Response:
        return send_with_retries(self._http(), method, RECORD_PATH + path, system=SYSTEM, policy=policy or self._policy(), **kwargs)

    def _get(self, path: str, what: str, params: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
        response = self._send("GET", path, params=dict(params or {}))
        if response.status_code == 404:
            return None
        if response.status_code >= 400:
            raise _error(response, what)
        return response.json()

    @staticmethod
    def _created_id(response: httpx.Response, what: str) -> str:
        location = response.headers.get("Location")
        if response.status_code != 204 or not location:
            raise _error(response, what)
        return location.rstrip("/").rsplit("/", 1)[-1]

    def _create_once(self, path: str, body: Mapping[str, Any], *, record_type: str, external_id: str,
                     what: str) -> tuple[str, bool]:
        """POST a record carrying `externalId`; (internal id, created). Never creates two."""
        existing = self._id_by_external_id(record_type, external_id)
        if existing is not None:
            return existing, False

        def landed() -> str | None:
            return self._id_by_external_id(record_type, external_id)

        response, recovered = write_once(
            lambda: self._send("POST", path, policy=SINGLE_ATTEMPT, json=dict(body)),
            landed, system=SYSTEM, what=what, policy=self._policy(),
        )
        if recovered is not None:
            return recovered, True
        assert response is not None
        if response.status_code == 400:
            error = _error(response, what)
            found = landed()  # a resend of a create that landed is refused as a duplicate
            if found is not None:
                log.info("netsuite %s: %s already exists as %s", what, external_id, found)
                return found, False
            raise error
        return self._created_id(response, what), True

    def _id_by_external_id(self, record_type: str, external_id: str) -> str | None:
        record = self._get(f"/{record_type}/eid:{quote(external_id, safe='')}", f"{record_type} eid:{external_id}",
                           {"fields": "externalId"})
        return str(record["id"]) if record else None

    def probe(self) -> None:
        """A cheap authenticated read for live health (one sales order id); raises NetSuiteError."""
        response = self._send("GET", "/salesOrder", params={"limit": 1}, policy=RetryPolicy(attempts=2, max_elapsed_s=10.0))
        if response.status_code >= 400:
            raise _error(response, "probe (salesOrder list)")

    # ------------------------------------------------------------------ sales orders

    def get_sales_order(self, so_id: str) -> dict[str, Any] | None:
        """The sales order with its item lines expanded, or None."""
        return self._get(f"/salesOrder/{quote(str(so_id), safe='')}", f"salesOrder {so_id}", {"expandSubResources": "true"})

    def get_sales_order_by_external_id(self, external_id: str) -> dict[str, Any] | None:
        return self._get(f"/salesOrder/eid:{quote(external_id, safe='')}", f"salesOrder eid:{external_id}",
                         {"expandSubResources": "true"})

    def ensure_sales_order(self, external_id: str, body: Mapping[str, Any]) -> tuple[str, bool]:
        """Create the sales order unless one with `external_id` exists: (internal id, created)."""
        payload = {**body, "externalId": external_id}
        return self._create_once("/salesOrder", payload, record_type="salesOrder", external_id=external_id,
                                 what=f"create salesOrder {external_id}")

    def order_status(self, so_id: str) -> str | None:
        record = self._get(f"/salesOrder/{quote(str(so_id), safe='')}", f"salesOrder {so_id}", {"fields": "orderStatus"})
        return _status_code(record.get("orderStatus")) if record else None

    def is_committed(self, so_id: str) -> bool:
        """True once the order is approved and its stock committed (Pending Fulfillment or later)."""
        return self.order_status(so_id) in COMMITTED_STATUSES

    def update_sales_order(self, so_id: str, body: Mapping[str, Any]) -> None:
        response = self._send("PATCH", f"/salesOrder/{quote(str(so_id), safe='')}", json=dict(body))
        if response.status_code >= 400:
            raise _error(response, f"update salesOrder {so_id}")

    def close_open_lines(self, so_id: str) -> list[int]:
        """Close every line still open (an order cancelled in the channel): the line numbers closed.

        An order already cancelled or closed in NetSuite has nothing left open: nothing is
        sent (NetSuite would refuse the change). Repeating is harmless.
        """
        so = self.get_sales_order(so_id) or {}
        if _status_code(so.get("orderStatus")) in CLOSED_STATUSES:
            return []
        lines = [int(ln["line"]) for ln in _sublist(so) if ln.get("line") is not None and not ln.get("isClosed")]
        self.close_sales_order_lines(so_id, lines)
        return lines

    def close_sales_order_lines(self, so_id: str, lines: Iterable[int]) -> None:
        """Close order lines (by line number) so they are never fulfilled; repeating is harmless."""
        items = [{"line": int(n), "isclosed": True} for n in lines]
        if items:
            self.update_sales_order(so_id, {"item": {"items": items}})

    def sync_sales_order(self, so_id: str, wanted_lines: Iterable[Mapping[str, Any]],
                         shipping_address: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Make the order's item lines (and shipping address, when given) match an edit made
        in Shopify; returns what was changed (`{}` when it already matched).

        Read-then-patch from the order as it stands, so a retry after a lost answer finds
        nothing left to change.
        """
        so = self.get_sales_order(so_id)
        if so is None:
            raise NetSuiteError(f"salesOrder {so_id} not found", status=404, code="NONEXISTENT_ID", detail=None)
        patch: dict[str, Any] = {}
        lines = sales_order_line_changes(_sublist(so), list(wanted_lines))
        if lines:
            patch["item"] = {"items": lines}
        address = shipping_address_change(so.get("shippingAddress"), shipping_address)
        if address is not None:
            patch["shippingAddress"] = address
        if patch:
            self.update_sales_order(so_id, patch)
        return patch

    # ------------------------------------------------------------------ fulfilments

    def get_item_fulfilment(self, if_id: str) -> dict[str, Any] | None:
        return self._get(f"/itemFulfillment/{quote(str(if_id), safe='')}", f"itemFulfillment {if_id}",
                         {"expandSubResources": "true"})

    def get_item_fulfilment_by_external_id(self, external_id: str) -> dict[str, Any] | None:
        return self._get(f"/itemFulfillment/eid:{quote(external_id, safe='')}", f"itemFulfillment eid:{external_id}",
                         {"expandSubResources": "true"})

    @staticmethod
    def _fulfilment_lines(so: Mapping[str, Any], lines: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Every order line, named explicitly: NetSuite fulfils lines left out in full."""
        return transform_lines(so, lines, done_field="quantityFulfilled", short="has no open line of item",
                               what=f"sales order {so.get('id')}")

    def transform_to_item_fulfilment(
        self,
        so_id: str,
        lines: Iterable[Mapping[str, Any]],
        *,
        shipment_id: str,
        memo: str | None = None,
        tracking_numbers: Iterable[str] = (),
        ship_status: str = "C",
    ) -> tuple[str, bool]:
        """Fulfil `lines` of a sales order, once per `shipment_id`: (fulfilment id, created).

        `lines`: `{"order_line": n, "quantity": q}` or `{"item_id": internal id, "quantity": q}`.
        The shipment id becomes the fulfilment's `externalId`, so a retry or a re-run finds
        the fulfilment instead of making another. NetSuite refuses (INVALID_INITIALIZE_REF)
        while the order is not yet approved: check `is_committed` first.
        """
        existing = self._id_by_external_id("itemFulfillment", shipment_id)
        if existing is not None:
            return existing, False
        so = self.get_sales_order(so_id)
        if so is None:
            raise NetSuiteError(f"salesOrder {so_id} not found", status=404, code="NONEXISTENT_ID", detail=None)
        body: dict[str, Any] = {
            "externalId": shipment_id,
            "memo": memo or f"Clarus shipment {shipment_id}",
            "shipStatus": ship_status,
            "item": {"items": self._fulfilment_lines(so, lines)},
        }
        numbers = [n for n in tracking_numbers if n]
        if numbers:
            body["package"] = {"items": [{"packageTrackingNumber": n, "packageWeight": 1.0} for n in numbers]}
        return self._create_once(f"/salesOrder/{quote(str(so_id), safe='')}/!transform/itemFulfillment", body,
                                 record_type="itemFulfillment", external_id=shipment_id,
                                 what=f"fulfil salesOrder {so_id} for {shipment_id}")

    # ------------------------------------------------------------------ returns and credits

    def create_return_authorisation(self, external_id: str, body: Mapping[str, Any], *,
                                    from_sales_order: str | None = None) -> tuple[str, bool]:
        """A return authorisation, once per `external_id` (e.g. the Shopify refund id).

        With `from_sales_order`, the return is transformed from that order (lines by
        `orderLine`), otherwise created on its own (lines by item).
        """
        payload = {**body, "externalId": external_id}
        path = (f"/salesOrder/{quote(str(from_sales_order), safe='')}/!transform/returnAuthorization"
                if from_sales_order else "/returnAuthorization")
        return self._create_once(path, payload, record_type="returnAuthorization", external_id=external_id,
                                 what=f"create returnAuthorization {external_id}")

    def get_return_authorisation(self, ra_id: str) -> dict[str, Any] | None:
        """The return authorisation with its item lines expanded, or None."""
        return self._get(f"/returnAuthorization/{quote(str(ra_id), safe='')}", f"returnAuthorization {ra_id}",
                         {"expandSubResources": "true"})

    def receive_return(self, ra_id: str, lines: Iterable[Mapping[str, Any]], *, external_id: str,
                       memo: str | None = None) -> tuple[str, bool]:
        """Receive returned goods against a return authorisation, once per `external_id`:
        (item receipt id, created).

        `lines`: `{"item_id": internal id, "quantity": q}`, mapped onto the return's lines.
        Transforms the return authorisation into an item receipt; the externalId makes a
        retry or re-run find the receipt instead of making another. A return with less left
        to receive than asked raises ValueError.
        """
        existing = self._id_by_external_id("itemReceipt", external_id)
        if existing is not None:
            return existing, False
        ra = self.get_return_authorisation(ra_id)
        if ra is None:
            raise NetSuiteError(f"returnAuthorization {ra_id} not found", status=404, code="NONEXISTENT_ID", detail=None)
        body = {
            "externalId": external_id,
            "memo": memo or f"return {external_id}",
            "item": {"items": transform_lines(ra, lines, done_field="quantityReceived", short="has nothing left to receive of item",
                                              what=f"return authorisation {ra.get('id')}")},
        }
        return self._create_once(f"/returnAuthorization/{quote(str(ra_id), safe='')}/!transform/itemReceipt", body,
                                 record_type="itemReceipt", external_id=external_id,
                                 what=f"receive returnAuthorization {ra_id} for {external_id}")

    def create_credit_memo(self, external_id: str, body: Mapping[str, Any]) -> tuple[str, bool]:
        """A credit memo (e.g. goodwill or a shipping refund), once per `external_id`."""
        payload = {**body, "externalId": external_id}
        return self._create_once("/creditMemo", payload, record_type="creditMemo", external_id=external_id,
                                 what=f"create creditMemo {external_id}")

    def get_record(self, record_type: str, record_id: str) -> dict[str, Any] | None:
        return self._get(f"/{record_type}/{quote(str(record_id), safe='')}", f"{record_type} {record_id}",
                         {"expandSubResources": "true"})

    # ------------------------------------------------------------------ item master

    def iter_record_ids(self, record_type: str, page_size: int = 1000) -> Iterator[str]:
        offset = 0
        while True:
            page = self._get(f"/{record_type}", f"list {record_type}", {"limit": page_size, "offset": offset})
            if page is None:
                return
            for item in page.get("items") or []:
                yield str(item["id"])
            if not page.get("hasMore"):
                return
            offset += int(page.get("count") or page_size)

    def iter_inventory_items(self, page_size: int = 1000) -> Iterator[dict[str, Any]]:
        """The item master: `id`, `itemId` (the SKU, exactly as stored), `upcCode`, `displayName`...

        NetSuite's record collections list ids only, so each item is read for its fields.
        """
        for item_id in self.iter_record_ids("inventoryItem", page_size):
            record = self._get(f"/inventoryItem/{item_id}", f"inventoryItem {item_id}", {"fields": ",".join(ITEM_FIELDS)})
            if record is None:  # deleted between the list and the read
                continue
            yield {"id": str(record["id"]), **{f: record.get(f) for f in ITEM_FIELDS}}
