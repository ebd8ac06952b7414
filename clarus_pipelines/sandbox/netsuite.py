"""A local NetSuite account: the SuiteTalk REST record API subset the pipelines use.

Shapes follow Oracle's published examples (`shared/fixtures/netsuite/`) and NetSuite's
documented behaviour:

- `POST /services/rest/record/v1/salesOrder` answers 204 with the new record's URL in
  `Location`; `externalId` is unique per record type, and a second create with the same
  one fails with NetSuite's error shape
  `{"type", "title", "status", "o:errorDetails": [{"detail", "o:errorCode"}]}`;
- `GET salesOrder/{id}` and `GET salesOrder/eid:{externalId}` return sublists as links
  unless `expandSubResources=true`; `fields=` limits the body fields;
- `PATCH salesOrder/{id}` merges sublist lines: a line with `line` updates it (e.g.
  `isclosed`), a line without is added;
- `POST salesOrder/{id}/!transform/itemFulfillment` (body like Oracle's example: lines by
  `orderLine` with `quantity`, `itemreceive: false` to leave a line out; lines not named
  are fulfilled in full, NetSuite's default) is refused unless the order is approved
  ("committed"), and never fulfils more than is left; also `!transform/returnAuthorization`;
- `POST returnAuthorization`, `POST creditMemo`; return lines carry `quantityReceived`;
- `POST returnAuthorization/{id}/!transform/itemReceipt` receives returned goods the same
  way (lines by `orderLine`, `itemReceive: false` to leave one out, lines not named
  received in full): refused unless the return is Pending Receipt (B) or Partially
  Received (D), and never receives more than is left; the return then becomes Pending
  Refund (F) when everything is back, else Partially Received (D);
- `GET` of every record by id or `eid:`;
- `GET inventoryItem` (the item master) pages with `limit`/`offset` and answers ids and
  links (`hasMore`, `items`, `links`, `totalResults`), like every NetSuite collection:
  the fields come from `GET inventoryItem/{id}`.

Sales orders always start in orderStatus A (Pending Approval): this account's approval
workflow approves them, and NetSuite commits their stock (orderStatus B, Pending
Fulfillment), `commit_delay_s` after creation, whatever status the request asked for.
`tick(now)` applies that, so tests are deterministic; `delay_commit_for(ref, s)` makes
one order slow (the "dispatch before the ERP has the order" race).

Every call needs either OAuth 1.0a token-based authentication (HMAC-SHA256, `realm` =
account id), verified with oauthlib (bad signature, unknown token or a replayed nonce ->
401 INVALID_LOGIN), or an OAuth 2.0 bearer token from the client-credentials (M2M) token
endpoint `POST /services/rest/auth/oauth2/v1/token`: the form carries
`grant_type=client_credentials`, `client_assertion_type=...:jwt-bearer` and a JWT
`client_assertion` whose header names the uploaded certificate (`kid`) and a PS256-512 or
ES256-512 `alg`; the sandbox verifies the signature with that certificate's public key
(PyJWT) and the claims (`iss` = client id, `aud` = the token URL, `scope` including
`rest_webservices`, `exp` at most 60 minutes after `iat`), and answers a bearer token
valid `access_token_ttl_s` (3600 s, no refresh token). `PUT salesOrder/eid:{externalId}`
is NetSuite's upsert: it creates the order, or on an existing one updates its body fields. More than `concurrency_limit` requests in flight for the account ->
429 CONCURRENCY_LIMIT_EXCEEDED. `/_sandbox/` serves the records, the request log,
`tick` and `reset`, and is never faulted or authenticated.

With `webhook_url` and `webhook_secret` the account also posts the events a SuiteScript
user-event script would (`salesorder/create`, `salesorder/update`,
`itemfulfillment/create`, `returnauthorization/create`, `creditmemo/create`), signed as
`clarus_pipelines.receiver.auth` expects. Item receipts post none (no script on them).
"""

from __future__ import annotations

import asyncio
import hmac
import itertools
import json
import logging
import random
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from typing import Any
from urllib.parse import parse_qs, quote, unquote

import jwt
from cryptography.hazmat.primitives import serialization
from oauthlib.oauth1 import RequestValidator, ResourceEndpoint
from oauthlib.oauth1.rfc5849 import SIGNATURE_HMAC_SHA256
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from clarus_pipelines.sandbox.catalog_data import (
    GOODWILL_ITEM_ID,
    NETSUITE_LOCATION_ID,
    NETSUITE_WEB_CUSTOMER_ID,
    SHIPPING_REFUND_ITEM_ID,
    Catalog,
    build_catalog,
)
from clarus_pipelines.sandbox.faults import FaultConfig, FaultMiddleware, WebhookSender
from clarus_pipelines.sandbox.request_log import RequestLog, RequestLogMiddleware

log = logging.getLogger(__name__)

API_PREFIX = "/services/rest/record/v1"
TOKEN_PATH = "/services/rest/auth/oauth2/v1/token"
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
M2M_ALGORITHMS = ("PS256", "PS384", "PS512", "ES256", "ES384", "ES512")
COMMITTED_STATUSES = frozenset({"B", "D", "E", "F", "G"})
ORDER_STATUS_NAMES = {
    "A": "Pending Approval", "B": "Pending Fulfillment", "C": "Cancelled", "D": "Partially Fulfilled",
    "E": "Pending Billing/Partially Fulfilled", "F": "Pending Billing", "G": "Billed", "H": "Closed",
}
_ERROR_TYPES = {
    400: ("https://www.rfc-editor.org/rfc/rfc9110.html#section-15.5.1", "Bad Request"),
    401: ("https://www.rfc-editor.org/rfc/rfc9110.html#section-15.5.2", "Unauthorized"),
    404: ("https://www.rfc-editor.org/rfc/rfc9110.html#section-15.5.5", "Not Found"),
    405: ("https://www.rfc-editor.org/rfc/rfc9110.html#section-15.5.6", "Method Not Allowed"),
    429: ("https://www.rfc-editor.org/rfc/rfc6585.html#section-4", "Too Many Requests"),
}
INVALID_LOGIN_DETAIL = (
    "Invalid login attempt. For more details, see the Login Audit Trail in the NetSuite UI at "
    "Setup > Users/Roles > User Management > View Login Audit Trail."
)

# canonical spelling of the field ids we interpret (NetSuite matches them without regard to case)
_FIELDS = {name.lower(): name for name in (
    "externalId", "entity", "tranDate", "otherRefNum", "memo", "orderStatus", "shippingAddress", "billingAddress",
    "item", "location", "shipMethod", "currency", "customForm", "createdFrom", "shipStatus", "package",
    "isClosed", "quantity", "rate", "amount", "description", "line", "orderLine", "itemReceive", "items",
)}
RECORD_TYPES = {
    "salesorder": "salesOrder", "itemfulfillment": "itemFulfillment", "returnauthorization": "returnAuthorization",
    "creditmemo": "creditMemo", "itemreceipt": "itemReceipt", "inventoryitem": "inventoryItem",
    "otherchargeitem": "otherChargeItem", "customer": "customer",
}
TRANSACTIONS = ("salesOrder", "itemFulfillment", "returnAuthorization", "itemReceipt", "creditMemo")
RETURN_RECEIVABLE = ("B", "D")  # return authorisation: Pending Receipt, Partially Received


class NetSuiteRecordError(Exception):
    """A request NetSuite refuses: becomes its error JSON."""

    def __init__(self, status: int, code: str, detail: str, path: str | None = None):
        super().__init__(detail)
        self.status, self.code, self.detail, self.path = status, code, detail, path


def netsuite_error(status: int, code: str, detail: str, path: str | None = None, headers: Mapping[str, str] | None = None) -> JSONResponse:
    type_url, title = _ERROR_TYPES.get(status, ("https://www.rfc-editor.org/rfc/rfc9110.html", "Error"))
    detail_entry = {"detail": detail, "o:errorCode": code}
    if path:
        detail_entry["o:errorPath"] = path
    return JSONResponse(
        {"type": type_url, "title": title, "status": status, "o:errorDetails": [detail_entry]},
        status_code=status, headers=dict(headers or {}), media_type="application/vnd.oracle.resource+json",
    )


def _canon(data: Mapping[str, Any]) -> dict[str, Any]:
    return {_FIELDS.get(k.lower(), k): v for k, v in data.items()}


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _number(value: Any, what: str, path: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise NetSuiteRecordError(400, "INVALID_CONTENT", f"You have entered an Invalid Field Value {value!r} for the following field: {what}", path) from None
    return number


def _ref_id(value: Any) -> str | None:
    if isinstance(value, Mapping):
        value = value.get("id")
    return None if value is None or value == "" else str(value)


# ---------------------------------------------------------------------------- OAuth 1.0a TBA


class _TokenValidator(RequestValidator):
    """oauthlib's validator for this account's one integration token."""

    def __init__(self, sandbox: "NetSuiteSandbox"):
        super().__init__()
        self.sandbox = sandbox
        self._nonces: OrderedDict[tuple[str, str, str], float] = OrderedDict()
        self._nonce_lock = threading.Lock()

    enforce_ssl = False  # the sandbox speaks plain HTTP on loopback
    allowed_signature_methods = (SIGNATURE_HMAC_SHA256,)
    safe_characters = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.~")
    client_key_length = (3, 256)
    access_token_length = (3, 256)
    nonce_length = (6, 64)
    dummy_client = "dummy-consumer"
    dummy_access_token = "dummy-token"

    def validate_client_key(self, client_key: str, request: Any) -> bool:
        return hmac.compare_digest(client_key.encode(), self.sandbox.consumer_key.encode())

    def validate_access_token(self, client_key: str, token: str, request: Any) -> bool:
        return hmac.compare_digest(token.encode(), self.sandbox.token_id.encode())

    def get_client_secret(self, client_key: str, request: Any) -> str:
        return self.sandbox.consumer_secret if self.validate_client_key(client_key, request) else "dummy-secret"

    def get_access_token_secret(self, client_key: str, token: str, request: Any) -> str:
        return self.sandbox.token_secret if self.validate_access_token(client_key, token, request) else "dummy-secret"

    def validate_realms(self, client_key: str, token: str, request: Any, uri: str | None = None, realms: Any = None) -> bool:
        return (request.realm or "") == self.sandbox.account_id

    def validate_timestamp_and_nonce(self, client_key: str, timestamp: str, nonce: str, request: Any,
                                     request_token: str | None = None, access_token: str | None = None) -> bool:
        now = time.time()
        key = (client_key, timestamp, nonce)
        with self._nonce_lock:
            while self._nonces and next(iter(self._nonces.values())) < now - self.timestamp_lifetime:
                self._nonces.popitem(last=False)
            if key in self._nonces:
                return False
            self._nonces[key] = now
        return True


# ---------------------------------------------------------------------------- concurrency


class ConcurrencyLimitMiddleware:
    """NetSuite's per-account concurrency governance: too many calls in flight -> 429."""

    def __init__(self, app: ASGIApp, sandbox: "NetSuiteSandbox"):
        self.app = app
        self.sandbox = sandbox

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith("/_sandbox"):
            await self.app(scope, receive, send)
            return
        sb = self.sandbox
        with sb._flight_lock:
            if sb._in_flight >= sb.concurrency_limit:
                sb.rejected_for_concurrency += 1
                refused = True
            else:
                sb._in_flight += 1
                refused = False
        if refused:
            response = netsuite_error(429, "CONCURRENCY_LIMIT_EXCEEDED", "Concurrent request limit exceeded. Request blocked.")
            await response(scope, receive, send)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            with sb._flight_lock:
                sb._in_flight -= 1


# ---------------------------------------------------------------------------- the sandbox


class NetSuiteSandbox:
    """In-memory NetSuite account with the REST record API as an ASGI app (`.app`)."""

    system = "netsuite"

    def __init__(
        self,
        *,
        seed: int = 0,
        faults: FaultConfig = FaultConfig(),
        account_id: str = "SANDBOX",
        consumer_key: str,
        consumer_secret: str,
        token_id: str,
        token_secret: str,
        commit_delay_s: float = 30.0,
        concurrency_limit: int = 5,
        catalog: Catalog | None = None,
        latency_s: float = 0.0,
        webhook_url: str | None = None,
        webhook_secret: str | None = None,
        webhook_sender: WebhookSender | None = None,
        clock: Callable[[], float] = time.time,
        m2m_client_id: str | None = None,
        m2m_certificate_id: str | None = None,
        m2m_public_key: str | None = None,
        access_token_ttl_s: float = 3600.0,
    ):
        if not all((consumer_key, consumer_secret, token_id, token_secret)):
            raise ValueError("the NetSuite sandbox needs a consumer key and secret and a token id and secret")
        if concurrency_limit < 1 or commit_delay_s < 0:
            raise ValueError("concurrency_limit must be >= 1 and commit_delay_s >= 0")
        self.seed = seed
        self.faults = faults
        self.account_id = account_id
        self.consumer_key, self.consumer_secret = consumer_key, consumer_secret
        self.token_id, self.token_secret = token_id, token_secret
        self.commit_delay_s = commit_delay_s
        self.concurrency_limit = concurrency_limit
        self.catalog = catalog or build_catalog(seed)
        self.latency_s = latency_s
        self.clock = clock
        self.webhook_url = webhook_url
        self.webhook_secret = webhook_secret
        self._owns_sender = webhook_sender is None and webhook_url is not None
        self.webhook_sender = webhook_sender or (WebhookSender(faults, seed=seed, system="netsuite") if webhook_url else None)
        self.request_log = RequestLog()
        self.rejected_for_concurrency = 0
        self._in_flight = 0
        self._flight_lock = threading.Lock()
        self._gate = threading.Event()
        self._gate.set()
        self._lock = threading.RLock()
        self._oauth = ResourceEndpoint(_TokenValidator(self))
        # OAuth 2.0 M2M: the integration's client id and the certificate the brand uploaded
        self.m2m_client_id, self.m2m_certificate_id = m2m_client_id, m2m_certificate_id
        self._m2m_public_key = (serialization.load_pem_public_key(m2m_public_key.replace("\\n", "\n").encode())
                                if m2m_public_key else None)
        self.access_token_ttl_s = access_token_ttl_s
        self._access_tokens: dict[str, float] = {}  # bearer token -> expiry (self.clock time)
        self.tokens_issued = 0
        self._reset_state()
        router = Starlette(routes=self._routes())
        self.app = RequestLogMiddleware(
            ConcurrencyLimitMiddleware(FaultMiddleware(router, faults, seed=seed, system="netsuite"), self),
            self.request_log,
        )

    # ------------------------------------------------------------------ state

    def _reset_state(self) -> None:
        self._random = random.Random(f"netsuite:{self.seed}")
        self._transaction_ids = itertools.count(10_001)
        self._tran_numbers = {t: itertools.count(1001) for t in TRANSACTIONS}
        self._records: dict[str, dict[str, dict[str, Any]]] = {t: {} for t in RECORD_TYPES.values()}
        self._external: dict[str, dict[str, str]] = {t: {} for t in RECORD_TYPES.values()}
        self._commit_due: dict[str, float] = {}  # sales order id -> when it gets approved and committed
        self._commit_overrides: dict[str, float] = {}  # reference -> delay (s)
        self.webhooks: list[dict[str, Any]] = []
        created = _iso(datetime(2025, 3, 1, 9, 0, tzinfo=timezone.utc).timestamp())
        self._records["customer"][NETSUITE_WEB_CUSTOMER_ID] = {
            "id": NETSUITE_WEB_CUSTOMER_ID, "entityId": "Web Customer", "companyName": "Anonymous Customer",
            "isPerson": False, "createdDate": created, "lastModifiedDate": created,
        }
        for item in self.catalog.master:
            self._records["inventoryItem"][item.internal_id] = {
                "id": item.internal_id, "itemId": item.sku, "displayName": item.display_name, "upcCode": item.upc,
                "itemType": "InvtPart", "isInactive": False, "basePrice": float(item.price), "externalId": None,
                "salesDescription": item.display_name, "createdDate": created, "lastModifiedDate": created,
            }
        for internal_id, name in ((GOODWILL_ITEM_ID, "Goodwill Credit"), (SHIPPING_REFUND_ITEM_ID, "Shipping Refund")):
            self._records["otherChargeItem"][internal_id] = {
                "id": internal_id, "itemId": name.upper().replace(" ", "-"), "displayName": name, "itemType": "OthCharge",
                "isInactive": False, "createdDate": created, "lastModifiedDate": created,
            }

    def reset(self) -> None:
        """Back to the seeded item master, with no transactions, requests or webhooks."""
        with self._lock:
            self._reset_state()
            self.request_log.clear()
            self.rejected_for_concurrency = 0

    def close(self) -> None:
        self.resume()
        if self._owns_sender and self.webhook_sender:
            self.webhook_sender.close()

    # ------------------------------------------------------------------ time and control

    def tick(self, now: float | None = None) -> list[str]:
        """Approve and commit every sales order due by `now`; returns their ids."""
        now = self.clock() if now is None else now
        committed = []
        with self._lock:
            for so_id, due in sorted(self._commit_due.items(), key=lambda kv: (kv[1], int(kv[0]))):
                if due > now:
                    continue
                del self._commit_due[so_id]
                record = self._records["salesOrder"][so_id]
                if record["orderStatus"] != "A":
                    continue
                self._set_order_status(record, "B")
                for line in record["item"]:
                    if not line["isClosed"]:
                        line["quantityCommitted"] = line["quantity"] - line["quantityFulfilled"]
                self._touch(record)
                committed.append(so_id)
                self._emit("salesorder/update", "salesOrder", record)
        return committed

    def delay_commit_for(self, reference: str, delay_s: float) -> None:
        """Sales orders whose externalId or otherRefNum is `reference` commit after `delay_s`."""
        with self._lock:
            self._commit_overrides[str(reference)] = float(delay_s)
            for so_id, record in self._records["salesOrder"].items():
                if so_id in self._commit_due and self._matches(record, str(reference)):
                    self._commit_due[so_id] = record["_created"] + delay_s

    @staticmethod
    def _matches(record: Mapping[str, Any], reference: str) -> bool:
        return reference in (str(record.get("externalId") or ""), str(record.get("otherRefNum") or ""))

    def pause(self) -> None:
        """Hold every API request in flight (inside the concurrency window) until `resume()`."""
        self._gate.clear()

    def resume(self) -> None:
        self._gate.set()

    @property
    def in_flight(self) -> int:
        with self._flight_lock:
            return self._in_flight

    # ------------------------------------------------------------------ inspection

    def records(self, record_type: str) -> list[dict[str, Any]]:
        kind = RECORD_TYPES[record_type.lower()]
        with self._lock:
            return [self._public(kind, r, expand=True) for r in self._records[kind].values()]

    def sales_orders(self) -> list[dict[str, Any]]:
        return self.records("salesOrder")

    def item_fulfillments(self) -> list[dict[str, Any]]:
        return self.records("itemFulfillment")

    def return_authorisations(self) -> list[dict[str, Any]]:
        return self.records("returnAuthorization")

    def credit_memos(self) -> list[dict[str, Any]]:
        return self.records("creditMemo")

    def item_receipts(self) -> list[dict[str, Any]]:
        return self.records("itemReceipt")

    def requests(self, since: int = 0) -> list[dict[str, Any]]:
        return [r.to_dict() for r in self.request_log.entries(since=since)]

    # ------------------------------------------------------------------ records

    def _touch(self, record: dict[str, Any]) -> None:
        record["lastModifiedDate"] = _iso(self.clock())

    @staticmethod
    def _set_order_status(record: dict[str, Any], status: str) -> None:
        record["orderStatus"] = status
        record["status"] = status

    def _new_transaction(self, kind: str, body: Mapping[str, Any]) -> dict[str, Any]:
        external_id = body.get("externalId")
        if external_id is not None:
            external_id = str(external_id)
            if external_id in self._external[kind]:
                raise NetSuiteRecordError(
                    400, "DUP_RCRD",
                    f"Error while accessing a resource. A {kind} record with the external ID {external_id!r} already exists.",
                    "externalId",
                )
        now = self.clock()
        record_id = str(next(self._transaction_ids))
        prefix = {"salesOrder": "SO", "itemFulfillment": "IF", "returnAuthorization": "RMA", "itemReceipt": "IR",
                  "creditMemo": "CM"}[kind]
        record = {
            "id": record_id,
            "externalId": external_id,
            "tranId": f"{prefix}{next(self._tran_numbers[kind])}",
            "tranDate": body.get("tranDate") or datetime.fromtimestamp(now, timezone.utc).strftime("%Y-%m-%d"),
            "createdDate": _iso(now),
            "lastModifiedDate": _iso(now),
            "memo": body.get("memo"),
            "currency": {"id": "1", "refName": "GBP"},
            "subsidiary": {"id": "1", "refName": "Parent Company"},
            "_created": now,
        }
        for key, value in body.items():  # fields we do not interpret are kept as given
            if key not in record and key not in ("item", "id"):
                record[key] = value
        return record

    def _entity(self, body: Mapping[str, Any]) -> dict[str, Any]:
        entity_id = _ref_id(body.get("entity"))
        if entity_id is None:
            raise NetSuiteRecordError(400, "USER_ERROR", "Please enter value(s) for: Customer", "entity")
        customer = self._records["customer"].get(entity_id)
        if customer is None:
            raise NetSuiteRecordError(400, "INVALID_KEY_OR_REF", f"Invalid entity reference key {entity_id}.", "entity")
        return {"id": entity_id, "refName": customer["companyName"]}

    def _item_ref(self, value: Any, path: str) -> dict[str, Any]:
        item_id = _ref_id(value)
        record = self._records["inventoryItem"].get(item_id or "") or self._records["otherChargeItem"].get(item_id or "")
        if record is None:
            raise NetSuiteRecordError(
                400, "INVALID_CONTENT",
                f"Error while accessing resource: You have entered an Invalid Field Value {item_id} for the following field: item",
                path,
            )
        return {"id": record["id"], "refName": record["itemId"]}

    def _item_lines(self, body: Mapping[str, Any], *, required: bool = True) -> list[dict[str, Any]]:
        sublist = body.get("item")
        items = _canon(sublist).get("items") if isinstance(sublist, Mapping) else None
        if not items:
            if required:
                raise NetSuiteRecordError(400, "USER_ERROR", "You must enter at least one line item for this transaction.", "item")
            return []
        lines = []
        for index, raw in enumerate(items):
            raw = _canon(raw)
            path = f"item.items[{index}]"
            quantity = _number(raw.get("quantity", 1), "quantity", f"{path}.quantity")
            if quantity <= 0:
                raise NetSuiteRecordError(400, "INVALID_CONTENT", "Quantity must be greater than 0.", f"{path}.quantity")
            rate = _number(raw["rate"], "rate", f"{path}.rate") if raw.get("rate") is not None else None
            amount = _number(raw["amount"], "amount", f"{path}.amount") if raw.get("amount") is not None else None
            if amount is None and rate is not None:
                amount = round(rate * quantity, 2)
            line = {
                "line": index + 1,
                "item": self._item_ref(raw.get("item"), f"{path}.item"),
                "quantity": quantity,
                "rate": rate,
                "amount": amount,
                "description": raw.get("description"),
                "location": {"id": _ref_id(raw.get("location")) or NETSUITE_LOCATION_ID},
                "isClosed": bool(raw.get("isClosed", False)),
                "quantityFulfilled": 0.0,
                "quantityCommitted": 0.0,
            }
            lines.append(line)
        return lines

    @staticmethod
    def _totals(record: dict[str, Any]) -> None:
        total = round(sum((ln.get("amount") or 0.0) for ln in record["item"]), 2)
        record["subtotal"] = total
        record["total"] = total

    def _register(self, kind: str, record: dict[str, Any]) -> None:
        self._records[kind][record["id"]] = record
        if record.get("externalId") is not None:
            self._external[kind][record["externalId"]] = record["id"]

    def create_sales_order(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Create a sales order in-process (as `POST salesOrder` would); returns it expanded."""
        with self._lock:
            return self._public("salesOrder", self._create_sales_order(body), expand=True)

    def fulfil_sales_order(self, so_id: str, body: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Transform a sales order into an item fulfilment in-process (all open lines by default)."""
        with self._lock:
            so = self._find("salesOrder", str(so_id))
            return self._public("itemFulfillment", self._transform_to_item_fulfillment(so, body or {}), expand=True)

    def _create_sales_order(self, body: Mapping[str, Any]) -> dict[str, Any]:
        body = _canon(body)
        entity = self._entity(body)
        lines = self._item_lines(body)
        record = self._new_transaction("salesOrder", body)
        record.update(entity=entity, item=lines, balance=0.0, needsPick=True, shipComplete=False,
                      shippingAddress=dict(body.get("shippingAddress") or {}),
                      billingAddress=dict(body.get("billingAddress") or body.get("shippingAddress") or {}))
        record["requestedOrderStatus"] = body.get("orderStatus")
        self._set_order_status(record, "A")  # the approval workflow decides, not the request
        self._totals(record)
        self._register("salesOrder", record)
        delay = next((d for ref, d in self._commit_overrides.items() if self._matches(record, ref)), self.commit_delay_s)
        self._commit_due[record["id"]] = record["_created"] + delay
        self._emit("salesorder/create", "salesOrder", record)
        return record

    def _patch_sales_order(self, record: dict[str, Any], body: Mapping[str, Any]) -> None:
        body = _canon(body)
        status = record["orderStatus"]
        if status in ("C", "H"):
            raise NetSuiteRecordError(400, "USER_ERROR", f"Sales order {record['tranId']} is {ORDER_STATUS_NAMES[status]} and cannot be changed.")
        sublist = body.get("item")
        items = (_canon(sublist).get("items") or []) if isinstance(sublist, Mapping) else []
        for index, raw in enumerate(items):
            raw = _canon(raw)
            path = f"item.items[{index}]"
            if raw.get("line") is None:
                added = self._item_lines({"item": {"items": [raw]}})[0]
                added["line"] = max((ln["line"] for ln in record["item"]), default=0) + 1
                if record["orderStatus"] in COMMITTED_STATUSES:
                    added["quantityCommitted"] = added["quantity"]
                record["item"].append(added)
                continue
            line = next((ln for ln in record["item"] if ln["line"] == int(raw["line"])), None)
            if line is None:
                raise NetSuiteRecordError(400, "INVALID_CONTENT", f"Line {raw['line']} does not exist on {record['tranId']}.", f"{path}.line")
            if "quantity" in raw:
                quantity = _number(raw["quantity"], "quantity", f"{path}.quantity")
                if quantity < line["quantityFulfilled"]:
                    raise NetSuiteRecordError(400, "USER_ERROR", f"Line {line['line']}: the quantity cannot be less than the {line['quantityFulfilled']:g} already fulfilled.", f"{path}.quantity")
                line["quantity"] = quantity
                if record["orderStatus"] in COMMITTED_STATUSES and not line["isClosed"]:
                    line["quantityCommitted"] = quantity - line["quantityFulfilled"]
                if line["rate"] is not None:
                    line["amount"] = round(line["rate"] * quantity, 2)
            if "isClosed" in raw:
                line["isClosed"] = bool(raw["isClosed"])
                if line["isClosed"]:
                    line["quantityCommitted"] = 0.0
        requested = body.get("orderStatus")
        if requested is not None and requested != status:
            fulfilled = any(ln["quantityFulfilled"] for ln in record["item"])
            if requested == "B" and status == "A":
                self._commit_due[record["id"]] = 0.0  # approved by hand: commits on the next tick
            elif requested == "C" and not fulfilled:
                self._set_order_status(record, "C")
                self._commit_due.pop(record["id"], None)
            else:
                raise NetSuiteRecordError(400, "USER_ERROR", f"The order status cannot change from {ORDER_STATUS_NAMES[status]} to {ORDER_STATUS_NAMES.get(requested, requested)}.", "orderStatus")
        for key, value in body.items():
            if key not in ("item", "orderStatus", "id", "externalId", "entity"):
                record[key] = value
        self._totals(record)
        self._refresh_fulfilment_status(record)
        self._touch(record)
        self._emit("salesorder/update", "salesOrder", record)

    def _refresh_fulfilment_status(self, record: dict[str, Any]) -> None:
        if record["orderStatus"] in ("A", "C"):
            return
        open_lines = [ln for ln in record["item"] if not ln["isClosed"]]
        fulfilled_any = any(ln["quantityFulfilled"] for ln in record["item"])
        if not open_lines or all(ln["quantityFulfilled"] >= ln["quantity"] for ln in open_lines):
            self._set_order_status(record, "F" if fulfilled_any else "H")
        elif fulfilled_any:
            self._set_order_status(record, "D")
        else:
            self._set_order_status(record, "B")

    @staticmethod
    def _transform_lines(source: dict[str, Any], body: Mapping[str, Any], *, done_field: str, verb: str, what: str,
                         entry: str, done: str) -> list[tuple[dict[str, Any], float, str]]:
        """(source line, quantity, location) an item fulfilment or receipt takes: lines named by
        `orderLine` (`itemReceive: false` leaves one out), unnamed ones in full, never more
        than is left (`quantity - done_field`)."""
        sublist = body.get("item")
        given = (_canon(sublist).get("items") or []) if isinstance(sublist, Mapping) else []
        by_line: dict[int, dict[str, Any]] = {}
        for index, raw in enumerate(given):
            raw = _canon(raw)
            try:
                by_line[int(raw["orderLine"])] = {**raw, "_path": f"item.items[{index}]"}
            except (KeyError, TypeError, ValueError):
                raise NetSuiteRecordError(400, "INVALID_CONTENT", f"Every {entry} line needs its orderLine.", f"item.items[{index}].orderLine") from None
        unknown = sorted(set(by_line) - {ln["line"] for ln in source["item"]})
        if unknown:
            raise NetSuiteRecordError(400, "INVALID_CONTENT", f"{what} {unknown[0]} does not exist on {source['tranId']}.", "item.items")
        taken: list[tuple[dict[str, Any], float, str]] = []
        for line in source["item"]:
            remaining = line["quantity"] - line[done_field]
            raw = by_line.get(line["line"])
            if raw is not None and raw.get("itemReceive") is False:
                continue
            if line.get("isClosed") or remaining <= 0:
                if raw is not None and raw.get("quantity"):
                    raise NetSuiteRecordError(400, "USER_ERROR", f"{what} {line['line']} has nothing left to {verb}.", raw["_path"])
                continue
            quantity = remaining if raw is None or raw.get("quantity") is None else _number(raw["quantity"], "quantity", f"{raw['_path']}.quantity")
            if quantity <= 0:
                continue
            if quantity > remaining:
                raise NetSuiteRecordError(
                    400, "USER_ERROR",
                    f"You cannot {verb} {quantity:g} of {what.lower()} {line['line']}: only {remaining:g} remain to be {done}.",
                    f"{raw['_path']}.quantity" if raw else "item.items",
                )
            location = (_ref_id(raw.get("location")) if raw else None) or _ref_id(line.get("location")) or NETSUITE_LOCATION_ID
            taken.append((line, quantity, location))
        if not taken:
            raise NetSuiteRecordError(400, "USER_ERROR", "You must enter at least one line item for this transaction.", "item")
        return taken

    def _transformed(self, kind: str, source: dict[str, Any], body: Mapping[str, Any],
                     taken: list[tuple[dict[str, Any], float, str]], *, done_field: str, source_label: str) -> dict[str, Any]:
        """The new fulfilment or receipt for the `taken` lines of `source`; the source lines count them as done."""
        record = self._new_transaction(kind, body)
        record.update(
            entity=source["entity"],
            createdFrom={"id": source["id"], "refName": source_label},
            item=[
                {"line": n, "orderLine": line["line"], "item": line["item"], "quantity": qty, "itemReceive": True,
                 "location": {"id": loc}, "description": line.get("description")}
                for n, (line, qty, loc) in enumerate(taken, start=1)
            ],
        )
        for line, qty, _ in taken:
            line[done_field] += qty
        return record

    def _transform_to_item_fulfillment(self, so: dict[str, Any], body: Mapping[str, Any]) -> dict[str, Any]:
        body = _canon(body)
        if so["orderStatus"] not in ("B", "D", "E"):
            raise NetSuiteRecordError(400, "INVALID_INITIALIZE_REF", f"You can not initialize itemfulfillment: invalid reference {so['id']}.")
        shipped = self._transform_lines(so, body, done_field="quantityFulfilled", verb="fulfil", what="Order line",
                                        entry="fulfilment", done="fulfilled")
        record = self._transformed("itemFulfillment", so, body, shipped, done_field="quantityFulfilled",
                                   source_label=f"Sales Order #{so['tranId']}")
        record["shipStatus"] = body.get("shipStatus") or "C"
        for line, qty, _ in shipped:
            line["quantityCommitted"] = max(0.0, line["quantityCommitted"] - qty)
        self._register("itemFulfillment", record)
        self._refresh_fulfilment_status(so)
        self._touch(so)
        self._emit("itemfulfillment/create", "itemFulfillment", record)
        self._emit("salesorder/update", "salesOrder", so)
        return record

    def _transform_to_return_authorization(self, so: dict[str, Any], body: Mapping[str, Any]) -> dict[str, Any]:
        body = _canon(body)
        if so["orderStatus"] in ("A", "C"):
            raise NetSuiteRecordError(400, "INVALID_INITIALIZE_REF", f"You can not initialize returnauthorization: invalid reference {so['id']}.")
        sublist = body.get("item")
        given = {int(_canon(r)["orderLine"]): _canon(r) for r in ((_canon(sublist).get("items") or []) if isinstance(sublist, Mapping) else [])}
        lines = []
        for line in so["item"]:
            raw = given.get(line["line"])
            if given and raw is None or (raw is not None and raw.get("itemReceive") is False):
                continue
            quantity = line["quantityFulfilled"] if raw is None or raw.get("quantity") is None else _number(raw["quantity"], "quantity", "item.items")
            if quantity <= 0:
                continue
            if quantity > line["quantityFulfilled"]:
                raise NetSuiteRecordError(400, "USER_ERROR", f"You cannot return more of order line {line['line']} than was fulfilled ({line['quantityFulfilled']:g}).", "item.items")
            amount = round((line["rate"] or 0.0) * quantity, 2)
            lines.append({"line": len(lines) + 1, "orderLine": line["line"], "item": line["item"], "quantity": quantity,
                          "rate": line["rate"], "amount": amount, "description": line.get("description"), "isClosed": False,
                          "quantityReceived": 0.0})
        if not lines:
            raise NetSuiteRecordError(400, "USER_ERROR", "You must enter at least one line item for this transaction.", "item")
        record = self._new_transaction("returnAuthorization", body)
        record.update(entity=so["entity"], createdFrom={"id": so["id"], "refName": f"Sales Order #{so['tranId']}"}, item=lines)
        self._set_order_status(record, "B")  # Pending Receipt
        self._totals(record)
        self._register("returnAuthorization", record)
        self._emit("returnauthorization/create", "returnAuthorization", record)
        return record

    def _transform_to_item_receipt(self, ra: dict[str, Any], body: Mapping[str, Any]) -> dict[str, Any]:
        """Receive returned goods: lines by `orderLine` (the return's line), unnamed ones in full."""
        body = _canon(body)
        if ra["orderStatus"] not in RETURN_RECEIVABLE:
            raise NetSuiteRecordError(400, "INVALID_INITIALIZE_REF", f"You can not initialize itemreceipt: invalid reference {ra['id']}.")
        received = self._transform_lines(ra, body, done_field="quantityReceived", verb="receive", what="Return line",
                                         entry="receipt", done="received")
        record = self._transformed("itemReceipt", ra, body, received, done_field="quantityReceived",
                                   source_label=f"Return Authorization #{ra['tranId']}")
        self._register("itemReceipt", record)
        open_lines = [ln for ln in ra["item"] if not ln.get("isClosed")]
        self._set_order_status(ra, "F" if all(ln["quantityReceived"] >= ln["quantity"] for ln in open_lines) else "D")
        self._touch(ra)
        return record

    def _kind_of(self, record_id: str) -> str:
        """The transaction type of a record id (ids are unique across transactions)."""
        return next((t for t in TRANSACTIONS if record_id in self._records[t]), "salesOrder")

    def _create_standalone(self, kind: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """POST returnAuthorization / creditMemo (lines by item, optional createdFrom)."""
        body = _canon(body)
        entity = self._entity(body)
        lines = self._item_lines(body)
        created_from = _ref_id(body.get("createdFrom"))
        if created_from is not None and not any(created_from in self._records[t] for t in TRANSACTIONS):
            raise NetSuiteRecordError(400, "INVALID_KEY_OR_REF", f"Invalid createdFrom reference key {created_from}.", "createdFrom")
        record = self._new_transaction(kind, body)
        record.update(entity=entity, item=lines)
        if created_from:
            record["createdFrom"] = {"id": created_from}
        if kind == "returnAuthorization":
            self._set_order_status(record, "B")  # Pending Receipt
            for line in lines:
                line["quantityReceived"] = 0.0
        else:
            record["status"] = "A"  # Open
        self._totals(record)
        self._register(kind, record)
        self._emit(f"{kind.lower()}/create", kind, record)
        return record

    # ------------------------------------------------------------------ rendering

    def _href(self, base: str, *parts: str) -> str:
        return "/".join([base.rstrip("/") + API_PREFIX, *parts])

    def _public(self, kind: str, record: Mapping[str, Any], *, expand: bool, base: str = "http://sandbox.netsuite.test",
                fields: set[str] | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"links": [{"rel": "self", "href": self._href(base, kind, record["id"])}]}
        for key, value in record.items():
            if key.startswith("_") or key == "requestedOrderStatus":
                continue
            if fields is not None and key not in fields and key != "id":
                continue
            if key == "item" and isinstance(value, list):
                href = self._href(base, kind, record["id"], "item")
                if expand:
                    out["item"] = {
                        "links": [{"rel": "self", "href": href}],
                        "items": [{"links": [], **ln} for ln in value],
                        "totalResults": len(value), "count": len(value), "hasMore": False, "offset": 0,
                    }
                else:
                    out["item"] = {"links": [{"rel": "self", "href": href}]}
            elif isinstance(value, dict) and key in ("shippingAddress", "billingAddress") and not expand:
                out[key] = {"links": [{"rel": "self", "href": self._href(base, kind, record["id"], key)}]}
            elif isinstance(value, dict) and "id" in value and key in ("entity", "currency", "subsidiary", "createdFrom"):
                target = {"entity": "customer", "createdFrom": self._kind_of(str(value["id"]))}.get(key, key)
                out[key] = {"links": [{"rel": "self", "href": self._href(base, target, str(value["id"]))}], **value}
            else:
                out[key] = value
        return out

    # ------------------------------------------------------------------ webhooks

    def _emit(self, topic: str, kind: str, record: Mapping[str, Any]) -> None:
        event_id = str(uuid.UUID(int=self._random.getrandbits(128), version=4))
        self.webhooks.append({"topic": topic, "event_id": event_id, "record_id": record["id"], "time": time.time()})
        if not (self.webhook_sender and self.webhook_url and self.webhook_secret):
            return
        from clarus_pipelines.receiver.auth import netsuite_headers  # the receiver's contract for NetSuite scripts

        payload = {"recordType": kind, "eventType": topic.split("/", 1)[1], "record": self._public(kind, record, expand=True)}
        body = json.dumps(payload, separators=(",", ":")).encode("utf-8")
        self.webhook_sender.post(self.webhook_url, body, netsuite_headers(body, self.webhook_secret, topic=topic, event_id=event_id))

    # ------------------------------------------------------------------ HTTP

    def _routes(self) -> list[Route]:
        return [
            Route(API_PREFIX + "/{record}", self._api(self._collection), methods=["GET", "POST"]),
            Route(API_PREFIX + "/{record}/{key}", self._api(self._instance), methods=["GET", "PATCH", "PUT", "DELETE"]),
            Route(TOKEN_PATH, self._token_endpoint, methods=["POST"]),
            Route(API_PREFIX + "/{record}/{key}/!transform/{target}", self._api(self._transform), methods=["POST"]),
            Route("/_sandbox/health", self._sb_health),
            Route("/_sandbox/records/{record}", self._sb_records),
            Route("/_sandbox/requests", self._sb_requests),
            Route("/_sandbox/webhooks", self._sb_webhooks),
            Route("/_sandbox/tick", self._sb_tick, methods=["POST"]),
            Route("/_sandbox/reset", self._sb_reset, methods=["POST"]),
        ]

    def _signed_uri(self, request: Request) -> str:
        """The URL exactly as the client sent it (raw path), which is what it signed."""
        raw_path = request.scope.get("raw_path")
        path = raw_path.decode("latin-1") if raw_path else quote(request.url.path)
        query = request.scope.get("query_string", b"").decode("latin-1")
        host = request.headers.get("host") or f"{request.url.hostname}:{request.url.port}"
        return f"{request.url.scheme}://{host}{path}" + (f"?{query}" if query else "")

    def expire_access_tokens(self) -> None:
        """Every OAuth 2.0 token issued so far stops working (as at the end of its hour)."""
        with self._lock:
            self._access_tokens.clear()

    def _token_error(self, status: int, error: str, description: str) -> JSONResponse:
        return JSONResponse({"error": error, "error_description": description}, status_code=status)

    async def _token_endpoint(self, request: Request) -> Response:
        """OAuth 2.0 client credentials with a JWT assertion, checked as NetSuite documents it."""
        form = {k: v[0] for k, v in parse_qs((await request.body()).decode("utf-8", "replace")).items()}
        if form.get("grant_type") != "client_credentials":
            return self._token_error(400, "unsupported_grant_type", "grant_type must be client_credentials")
        if form.get("client_assertion_type") != JWT_BEARER or not form.get("client_assertion"):
            return self._token_error(400, "invalid_request", "a jwt-bearer client_assertion is required")
        if self._m2m_public_key is None:
            return self._token_error(401, "invalid_client", "no OAuth 2.0 client credentials mapping on this account")
        assertion = str(form["client_assertion"])
        try:
            header = jwt.get_unverified_header(assertion)
        except jwt.PyJWTError as exc:
            return self._token_error(400, "invalid_request", f"client_assertion is not a JWT: {exc}")
        if str(header.get("typ", "")).upper() != "JWT" or header.get("alg") not in M2M_ALGORITHMS:
            return self._token_error(400, "invalid_request", "JWT header needs typ JWT and alg PS256/384/512 or ES256/384/512")
        if header.get("kid") != self.m2m_certificate_id:
            return self._token_error(401, "invalid_client", "unknown certificate id (kid)")
        token_url = f"{request.url.scheme}://{request.headers.get('host', 'localhost')}{TOKEN_PATH}"
        try:
            claims = jwt.decode(assertion, self._m2m_public_key, algorithms=[header["alg"]], audience=token_url,
                                options={"require": ["iss", "aud", "iat", "exp", "scope"]}, leeway=5)
        except jwt.PyJWTError as exc:
            return self._token_error(401, "invalid_grant", f"client_assertion rejected: {exc}")
        if claims["iss"] != self.m2m_client_id:
            return self._token_error(401, "invalid_client", "iss is not this integration's client id")
        if "rest_webservices" not in [s.strip() for s in str(claims["scope"]).split(",")]:
            return self._token_error(400, "invalid_scope", "scope must include rest_webservices")
        if float(claims["exp"]) - float(claims["iat"]) > 3600:
            return self._token_error(400, "invalid_grant", "exp must be at most 60 minutes after iat")
        token = uuid.uuid4().hex + uuid.uuid4().hex
        with self._lock:
            self._access_tokens[token] = self.clock() + self.access_token_ttl_s
            self.tokens_issued += 1
        return JSONResponse({"access_token": token, "expires_in": str(int(self.access_token_ttl_s)), "token_type": "bearer"})

    def _bearer_valid(self, token: str) -> bool:
        with self._lock:
            expiry = self._access_tokens.get(token)
            return expiry is not None and self.clock() < expiry

    def _authenticated(self, request: Request) -> bool:
        authorization = request.headers.get("authorization", "")
        if authorization.lower().startswith("bearer "):
            return self._bearer_valid(authorization[7:].strip())
        if not authorization.lower().startswith("oauth "):
            return False
        try:
            valid, _ = self._oauth.validate_protected_resource_request(
                self._signed_uri(request), http_method=request.method, body=None, headers=dict(request.headers),
            )
        except ValueError:  # malformed Authorization header
            return False
        return bool(valid)

    def _api(self, handler: Callable[..., Any]) -> Callable[[Request], Any]:
        async def endpoint(request: Request) -> Response:
            while not self._gate.is_set():
                await asyncio.sleep(0.01)
            if self.latency_s:
                await asyncio.sleep(self.latency_s)
            if not self._authenticated(request):
                return netsuite_error(401, "INVALID_LOGIN", INVALID_LOGIN_DETAIL)
            kind = RECORD_TYPES.get(request.path_params["record"].lower())
            if kind is None:
                return netsuite_error(404, "INVALID_RCRD_TYPE", f"Record type '{request.path_params['record']}' does not exist.")
            body: Any = None
            if request.method in ("POST", "PATCH", "PUT"):
                raw = await request.body()
                try:
                    body = json.loads(raw) if raw else {}
                except ValueError:
                    return netsuite_error(400, "INVALID_CONTENT", "Invalid content in the request body: not valid JSON.")
                if not isinstance(body, dict):
                    return netsuite_error(400, "INVALID_CONTENT", "The request body must be a JSON object.")
            base = f"{request.url.scheme}://{request.headers.get('host', 'localhost')}"
            try:
                with self._lock:
                    return handler(request, kind, body, base)
            except NetSuiteRecordError as exc:
                return netsuite_error(exc.status, exc.code, exc.detail, exc.path)

        return endpoint

    def _find(self, kind: str, key: str) -> dict[str, Any]:
        key = unquote(key)
        if key.lower().startswith("eid:"):
            record_id = self._external[kind].get(key[4:])
        else:
            record_id = key
        record = self._records[kind].get(record_id or "")
        if record is None:
            raise NetSuiteRecordError(404, "NONEXISTENT_ID", "The record instance does not exist. Provide a valid record instance ID.")
        return record

    def _created(self, kind: str, record: Mapping[str, Any], base: str) -> Response:
        return Response(status_code=204, headers={"Location": self._href(base, kind, record["id"])})

    def _collection(self, request: Request, kind: str, body: Any, base: str) -> Response:
        if request.method == "POST":
            if kind == "salesOrder":
                return self._created(kind, self._create_sales_order(body), base)
            if kind in ("returnAuthorization", "creditMemo"):
                return self._created(kind, self._create_standalone(kind, body), base)
            if kind == "itemFulfillment":
                raise NetSuiteRecordError(400, "USER_ERROR", "Item fulfilments are created by transforming a sales order.")
            if kind == "itemReceipt":
                raise NetSuiteRecordError(400, "USER_ERROR", "Item receipts are created by transforming a return authorization.")
            raise NetSuiteRecordError(405, "METHOD_NOT_ALLOWED", f"The sandbox does not create {kind} records.")
        params = request.query_params
        try:
            limit = int(params.get("limit", "1000"))
            offset = int(params.get("offset", "0"))
        except ValueError:
            raise NetSuiteRecordError(400, "INVALID_PARAMETER", "limit and offset must be integers.") from None
        if not 1 <= limit <= 1000 or offset < 0:
            raise NetSuiteRecordError(400, "INVALID_PARAMETER", "The limit must be between 1 and 1000 and the offset must not be negative.")
        ids = sorted(self._records[kind], key=int)
        page = ids[offset:offset + limit]
        href = self._href(base, kind)
        links = []
        if offset > 0:
            links.append({"rel": "previous", "href": f"{href}?limit={limit}&offset={max(0, offset - limit)}"})
            links.append({"rel": "first", "href": f"{href}?limit={limit}&offset=0"})
        if offset + limit < len(ids):
            links.append({"rel": "next", "href": f"{href}?limit={limit}&offset={offset + limit}"})
            last = ((len(ids) - 1) // limit) * limit
            links.append({"rel": "last", "href": f"{href}?limit={limit}&offset={last}"})
        links.append({"rel": "self", "href": f"{href}?limit={limit}&offset={offset}"})
        return JSONResponse({
            "links": links,
            "count": len(page),
            "hasMore": offset + limit < len(ids),
            "items": [{"links": [{"rel": "self", "href": self._href(base, kind, i)}], "id": i} for i in page],
            "offset": offset,
            "totalResults": len(ids),
        })

    def _upsert(self, kind: str, key: str, body: Mapping[str, Any], base: str) -> Response:
        """`PUT {record}/eid:{externalId}`: create, or update the body fields of the existing record."""
        key = unquote(key)
        if not key.lower().startswith("eid:"):
            raise NetSuiteRecordError(405, "METHOD_NOT_ALLOWED", "PUT (upsert) needs an external id key: eid:{externalId}.")
        external_id = key[4:]
        if not external_id or not all(c.isalnum() or c in "_-" for c in external_id):
            raise NetSuiteRecordError(400, "INVALID_ID", "An external id may contain letters, digits, _ and - only.")
        if kind != "salesOrder":
            raise NetSuiteRecordError(405, "METHOD_NOT_ALLOWED", f"The sandbox does not upsert {kind} records.")
        given = _canon(body).get("externalId")
        if given is not None and str(given) != external_id:
            raise NetSuiteRecordError(400, "INVALID_CONTENT", "externalId in the body differs from the one in the URL.", "externalId")
        existing = self._external[kind].get(external_id)
        if existing is None:
            return self._created(kind, self._create_sales_order({**body, "externalId": external_id}), base)
        record = self._records[kind][existing]
        self._patch_sales_order(record, {k: v for k, v in body.items() if k.lower() not in ("item", "orderstatus")})
        return self._created(kind, record, base)

    def _instance(self, request: Request, kind: str, body: Any, base: str) -> Response:
        if request.method == "PUT":
            return self._upsert(kind, request.path_params["key"], body, base)
        record = self._find(kind, request.path_params["key"])
        if request.method == "GET":
            expand = request.query_params.get("expandSubResources", "false").lower() == "true"
            fields_param = request.query_params.get("fields")
            fields = {f.strip() for f in fields_param.split(",")} if fields_param else None
            return JSONResponse(self._public(kind, record, expand=expand, base=base, fields=fields))
        if request.method == "PATCH":
            if kind != "salesOrder":
                raise NetSuiteRecordError(405, "METHOD_NOT_ALLOWED", f"The sandbox does not update {kind} records.")
            self._patch_sales_order(record, body)
            return Response(status_code=204)
        raise NetSuiteRecordError(405, "METHOD_NOT_ALLOWED", "The sandbox does not delete records.")

    def _transform(self, request: Request, kind: str, body: Any, base: str) -> Response:
        source = self._find(kind, request.path_params["key"])
        target = RECORD_TYPES.get(request.path_params["target"].lower())
        if kind == "salesOrder" and target == "itemFulfillment":
            return self._created(target, self._transform_to_item_fulfillment(source, body), base)
        if kind == "salesOrder" and target == "returnAuthorization":
            return self._created(target, self._transform_to_return_authorization(source, body), base)
        if kind == "returnAuthorization" and target == "itemReceipt":
            return self._created(target, self._transform_to_item_receipt(source, body), base)
        raise NetSuiteRecordError(400, "INVALID_TRANSFORM", f"Transform from {kind} to {request.path_params['target']} is not supported.")

    # ------------------------------------------------------------------ /_sandbox/

    async def _sb_health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok", "system": self.system, "in_flight": self.in_flight})

    async def _sb_records(self, request: Request) -> Response:
        record = request.path_params["record"]
        if record.lower() not in RECORD_TYPES:
            return JSONResponse({"error": f"unknown record type {record}"}, status_code=404)
        return JSONResponse({"records": self.records(record)})

    async def _sb_requests(self, request: Request) -> Response:
        return JSONResponse({"requests": self.requests(int(request.query_params.get("since", "0")))})

    async def _sb_webhooks(self, request: Request) -> Response:
        with self._lock:
            return JSONResponse({"webhooks": list(self.webhooks)})

    async def _sb_tick(self, request: Request) -> Response:
        now = request.query_params.get("now")
        return JSONResponse({"committed": self.tick(float(now) if now else None)})

    async def _sb_reset(self, request: Request) -> Response:
        self.reset()
        return JSONResponse({"status": "reset"})
