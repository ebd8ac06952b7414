"""NetSuite SuiteTalk REST connector: sales orders, fulfilments, returns and their receipts, credits, items.

`NetSuiteResource` is a Dagster resource; every method also works on a plain instance.
Two ways to authenticate, chosen by `auth_method`:

- `oauth2_m2m` (OAuth 2.0 client credentials, what NetSuite 2027.1 requires of new
  integrations): a JWT client assertion (header `typ=JWT`, `alg` PS256 for an RSA key or
  ES256 for an EC key, `kid` = the certificate id; claims `iss` = client id, `scope`,
  `aud` = the token URL, `iat`, `exp` five minutes on) signed by PyJWT with the private
  key of the certificate uploaded to NetSuite, exchanged at
  `/services/rest/auth/oauth2/v1/token` for a 60-minute bearer token. The token is kept
  until two minutes before it expires, and renewed at once when NetSuite answers 401.
- `tba` (OAuth 1.0a token-based authentication, HMAC-SHA256, realm = account id), signed
  by oauthlib freshly per attempt (NetSuite refuses a reused nonce).

Every call goes through `send_with_retries`: 429 (including CONCURRENCY_LIMIT_EXCEEDED,
NetSuite's account-wide concurrency governance), 5xx and timeouts back off with jitter.

Creates are idempotent through NetSuite's external ids, which it keeps unique per record
type: `ensure_sales_order` looks the order up by `externalId` first and otherwise
upserts it with `PUT salesOrder/eid:{externalId}` (NetSuite's documented idempotent
create: a resend updates the same record, never makes a second); the item fulfilment,
return authorisation, item receipt (returned goods received) and credit memo creates
carry our own reference (shipment id, refund id) as their `externalId` the same way. An
error answer raises `NetSuiteError` with NetSuite's `o:errorCode` and detail.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Generator, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import httpx
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from oauthlib.oauth1 import Client as OAuth1Client
from oauthlib.oauth1.rfc5849 import SIGNATURE_HMAC_SHA256
from pydantic import Field

from clarus_pipelines.connectors.http import ConnectorError, HttpConnector, RetryPolicy, send_with_retries
from clarus_pipelines.connectors.writes import SINGLE_ATTEMPT, write_once
from clarus_pipelines.domain.netsuite_orders import allocate_to_lines, sales_order_line_changes, shipping_address_change

log = logging.getLogger(__name__)

SYSTEM = "netsuite"
RECORD_PATH = "/services/rest/record/v1"
TOKEN_PATH = "/services/rest/auth/oauth2/v1/token"
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
M2M_ALGORITHMS = ("PS256", "PS384", "PS512", "ES256", "ES384", "ES512")
EXTERNAL_ID = re.compile(r"^[A-Za-z0-9_-]+$")  # what NetSuite accepts in an eid: URL
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


AUTH_CREDENTIALS = {
    "tba": ("consumer_key", "consumer_secret", "token_id", "token_secret"),
    "oauth2_m2m": ("client_id", "certificate_id", "private_key"),
}


def missing_credentials(auth_method: str, values: Mapping[str, Any]) -> list[str]:
    """The credentials `auth_method` needs that `values` lacks (names as in AUTH_CREDENTIALS)."""
    if auth_method not in AUTH_CREDENTIALS:
        return [f"a known auth method (tba or oauth2_m2m, not {auth_method!r})"]
    return [name for name in AUTH_CREDENTIALS[auth_method] if not values.get(name)]


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


def load_private_key(pem: str) -> rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey:
    """The certificate's private key from PEM text (literal `\\n` accepted, as env files hold it)."""
    text = pem.strip().replace("\\n", "\n")
    key = serialization.load_pem_private_key(text.encode("ascii"), password=None)
    if not isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
        raise ValueError("the NetSuite certificate key must be RSA (PS256) or EC (ES256)")
    return key


_TOKENS: dict[tuple[str, str, str], tuple[str, float]] = {}  # (token URL, client, certificate) -> (token, renew at)
_TOKENS_LOCK = threading.Lock()


class NetSuiteM2M(httpx.Auth):
    """OAuth 2.0 client credentials with a JWT client assertion; the bearer token is cached
    (per process, per integration) until shortly before it expires and renewed once when
    NetSuite answers 401."""

    requires_response_body = True

    def __init__(self, token_url: str, client_id: str, certificate_id: str, private_key: str, *,
                 scope: str = "rest_webservices", algorithm: str | None = None, renew_before_s: float = 120.0):
        self.token_url, self.client_id, self.certificate_id, self.scope = token_url, client_id, certificate_id, scope
        self._key = load_private_key(private_key)
        default = "ES256" if isinstance(self._key, ec.EllipticCurvePrivateKey) else "PS256"
        self.algorithm = algorithm or default
        if self.algorithm not in M2M_ALGORITHMS:
            raise ValueError(f"NetSuite accepts {', '.join(M2M_ALGORITHMS)} for the client assertion, not {self.algorithm}")
        self.renew_before_s = renew_before_s
        # the token outlives this client: Dagster closes the client after each step
        self._cache_key = (token_url, client_id, certificate_id)
        self.tokens_fetched = 0

    def assertion(self) -> str:
        now = int(time.time())
        claims = {"iss": self.client_id, "scope": self.scope, "aud": self.token_url, "iat": now, "exp": now + 300}
        return jwt.encode(claims, self._key, algorithm=self.algorithm, headers={"kid": self.certificate_id, "typ": "JWT"})

    def _token_request(self) -> httpx.Request:
        return httpx.Request("POST", self.token_url, data={
            "grant_type": "client_credentials", "client_assertion_type": JWT_BEARER, "client_assertion": self.assertion(),
        })

    def _cached(self) -> str | None:
        with _TOKENS_LOCK:
            token, expires_at = _TOKENS.get(self._cache_key, (None, 0.0))
            return token if token and time.monotonic() < expires_at else None

    def _drop(self, token: str) -> None:
        with _TOKENS_LOCK:
            if _TOKENS.get(self._cache_key, (None, 0.0))[0] == token:
                del _TOKENS[self._cache_key]

    def _keep(self, response: httpx.Response) -> str | None:
        """The new token; None when the endpoint failed transiently (the caller retries that
        response); raises NetSuiteError when NetSuite refused the credentials."""
        if response.status_code in (429,) or response.status_code >= 500:
            return None
        try:
            body = response.json()
        except ValueError:
            body = {}
        if response.status_code != 200 or not body.get("access_token"):
            code, detail = body.get("error") or "INVALID_LOGIN", body.get("error_description")
            raise NetSuiteError(f"OAuth 2.0 token request refused: HTTP {response.status_code} {code} {detail or ''}".strip(),
                                status=401, code=code, detail=detail, body=body)
        lifetime = float(body.get("expires_in") or 3600)
        token = str(body["access_token"])
        with _TOKENS_LOCK:
            _TOKENS[self._cache_key] = (token, time.monotonic() + max(0.0, lifetime - self.renew_before_s))
            self.tokens_fetched += 1
        return token

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        token = self._cached()
        if token is None:
            token = self._keep((yield self._token_request()))
            if token is None:
                return  # the token endpoint's 429/5xx goes back to send_with_retries
        request.headers["Authorization"] = f"Bearer {token}"
        response = yield request
        if response.status_code == 401:  # revoked or expired early: renew once
            self._drop(token)
            token = self._keep((yield self._token_request()))
            if token is None:
                return
            request.headers["Authorization"] = f"Bearer {token}"
            yield request


def _error(response: httpx.Response, what: str) -> NetSuiteError:
    code = detail = path = None
    body: Any
    try:
        body = response.json()
        details = body.get("o:errorDetails") or []
        if details:
            code, detail, path = details[0].get("o:errorCode"), details[0].get("detail"), details[0].get("o:errorPath")
        elif body.get("error"):  # the OAuth 2.0 token endpoint's shape
            code, detail = body.get("error"), body.get("error_description")
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
    """NetSuite REST record API client for one account (OAuth 2.0 M2M or token-based authentication)."""

    base_url: str = Field(description="REST root, e.g. https://1234567.suitetalk.api.netsuite.com (no path).")
    account_id: str = Field(description="Account id as used in the OAuth realm, e.g. 1234567 or 1234567_SB1.")
    auth_method: Literal["tba", "oauth2_m2m"] = Field(
        default="tba", description="tba (OAuth 1.0a tokens) or oauth2_m2m (OAuth 2.0 client credentials, JWT assertion).")
    consumer_key: str = Field(default="", description="TBA: integration record consumer key.")
    consumer_secret: str = Field(default="", description="TBA: integration record consumer secret (wire it with dg.EnvVar).")
    token_id: str = Field(default="", description="TBA: access token id.")
    token_secret: str = Field(default="", description="TBA: access token secret (wire it with dg.EnvVar).")
    client_id: str = Field(default="", description="M2M: the integration record's client id.")
    certificate_id: str = Field(default="", description="M2M: the id NetSuite gave the uploaded certificate (JWT kid).")
    private_key: str = Field(default="", description="M2M: the certificate's private key, PEM (wire it with dg.EnvVar).")
    private_key_file: str = Field(default="", description="M2M: a file holding that key, when private_key is empty.")
    scope: str = Field(default="rest_webservices", description="M2M: comma-separated NetSuite scopes.")
    jwt_algorithm: str = Field(default="", description="M2M: PS256/384/512 or ES256/384/512; empty = from the key type.")
    timeout_s: float = Field(default=60.0, description="Per-request timeout in seconds (NetSuite is slow).")
    max_elapsed_s: float = Field(default=180.0, description="Give up retrying a call after this long.")

    # ------------------------------------------------------------------ plumbing

    def _client_options(self) -> dict[str, Any]:
        return {"auth": self._auth()}

    def _auth(self) -> httpx.Auth:
        private_key = self.private_key
        if not private_key and self.private_key_file:
            private_key = Path(self.private_key_file).read_text()
        missing = missing_credentials(self.auth_method, {
            "consumer_key": self.consumer_key, "consumer_secret": self.consumer_secret, "token_id": self.token_id,
            "token_secret": self.token_secret, "client_id": self.client_id, "certificate_id": self.certificate_id,
            "private_key": private_key})
        if missing:
            raise NetSuiteError(f"{self.auth_method} needs {', '.join(missing)}", status=401, code="INVALID_LOGIN", detail=None)
        if self.auth_method == "oauth2_m2m":
            return NetSuiteM2M(self.base_url.rstrip("/") + TOKEN_PATH, self.client_id, self.certificate_id, private_key,
                               scope=self.scope, algorithm=self.jwt_algorithm or None)
        return NetSuiteTBA(self.account_id, self.consumer_key, self.consumer_secret, self.token_id, self.token_secret)

    def probe(self) -> None:
        """A cheap authenticated read (one item id); raises `NetSuiteError` on failure."""
        try:
            response = self._send("GET", "/inventoryItem", params={"limit": 1},
                                  policy=self._policy(attempts=2, max_elapsed_s=15.0))
        except NetSuiteError:
            raise
        except ConnectorError as exc:  # transport failure or 5xx after retries
            raise NetSuiteError(f"probe: {exc}", status=exc.status, code=None, detail=None, body=exc.body) from exc
        if response.status_code >= 400:
            raise _error(response, "probe")

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

    # ------------------------------------------------------------------ sales orders

    def get_sales_order(self, so_id: str) -> dict[str, Any] | None:
        """The sales order with its item lines expanded, or None."""
        return self._get(f"/salesOrder/{quote(str(so_id), safe='')}", f"salesOrder {so_id}", {"expandSubResources": "true"})

    def get_sales_order_by_external_id(self, external_id: str) -> dict[str, Any] | None:
        return self._get(f"/salesOrder/eid:{quote(external_id, safe='')}", f"salesOrder eid:{external_id}",
                         {"expandSubResources": "true"})

    def ensure_sales_order(self, external_id: str, body: Mapping[str, Any]) -> tuple[str, bool]:
        """Create the sales order unless one with `external_id` exists: (internal id, created).

        An order already there is left as it is. Otherwise `PUT salesOrder/eid:{externalId}`
        (NetSuite's upsert) creates it; a resend after a lost answer updates that same
        record with the same body, so there is never a second order and no need to know
        how NetSuite words a duplicate.
        """
        if not EXTERNAL_ID.match(external_id):
            raise ValueError(f"NetSuite external ids are letters, digits, _ and -; got {external_id!r}")
        what = f"create salesOrder {external_id}"
        existing = self._id_by_external_id("salesOrder", external_id)
        if existing is not None:
            return existing, False
        payload = {k: v for k, v in body.items() if k != "externalId"}
        response = self._send("PUT", f"/salesOrder/eid:{external_id}", json=payload)
        if response.status_code >= 400:
            raise _error(response, what)
        location = response.headers.get("Location")
        if location:
            return location.rstrip("/").rsplit("/", 1)[-1], True
        found = self._id_by_external_id("salesOrder", external_id)
        if found is None:
            raise NetSuiteError(f"{what}: upsert answered {response.status_code} but the order is not there",
                                status=response.status_code, code=None, detail=None)
        return found, True

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
