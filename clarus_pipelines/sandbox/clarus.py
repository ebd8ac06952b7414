"""A local Clarus WMS for development, tests and the demo.

`ClarusSandbox` serves the part of Clarus's API this project uses, per the committed
OpenAPI subset (`clarus_openapi_subset.json`):

- ``POST /oauth/token``: OAuth2 client credentials (form, JSON or HTTP Basic); every other
  call needs ``Authorization: Bearer`` and ``X-Clarus-Subdomain``.
- JSON:API writes: products, goods outs (create / update with ``lines_changes`` / cancel),
  shipments (tracking corrections), goods in receipts (expected returns). Every request
  body is validated against the spec; a non-conforming body, a duplicate reference, an
  unknown product or a change not allowed in the current status is a 422 in Clarus's
  error shape ``{"errors": [{"code", "symbol", "details", "source"}]}``.
- ``POST /graphql``: the spec's list operations, relay paging with ``first``/``after``.
- Warehouse behaviour over time (`tick`): DRAFT -> PENDING -> ALLOCATED -> PICK ->
  COMPLETED, allocation against stock (PART_ALLOCATED, partial dispatch as PART),
  dispatch with shipments and carrier tracking numbers in each carrier's real format.
- Webhooks (Clarus "automations", unsigned, full record, identity headers) through a
  `WebhookSender` that can duplicate, reorder and lose them.
- ``/_sandbox/*`` inspection API (never faulted): records, the ordered request log, reset,
  tick/advance, faults, stock. The same operations are Python methods on the object.

Time is the sandbox's own clock (wall time plus an offset): `advance(seconds)` and
`tick(now)` move it forward, so tests are deterministic without sleeping.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import logging
import random
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, fields as dataclass_fields
from datetime import datetime, timezone
from typing import Any
from urllib.parse import parse_qsl

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from clarus_pipelines.connectors.clarus_model import (
    EDITABLE_STATUSES,
    ERROR_CODES,
    FINAL_STATUSES,
    HEADER_API_DOMAIN,
    HEADER_AUTOMATION_ID,
    HEADER_DOMAIN,
    HEADER_INTEGRATION_ID,
    HEADER_SUBDOMAIN,
    WEBHOOK_EVENTS,
    GoodsOutStatus,
)
from clarus_pipelines.sandbox import clarus_graphql
from clarus_pipelines.sandbox.clarus_graphql import FilterField, Listing, parse_datetime
from clarus_pipelines.sandbox.faults import FaultConfig, FaultMiddleware, WebhookSender
from clarus_pipelines.sandbox.openapi import graphql_path, request_problems, response_problems

log = logging.getLogger(__name__)

DEFAULT_TENANT: dict[str, Any] = {
    "clarus_domain": "sandbox.clarus-wms.test",
    "clarus_api_domain": "127.0.0.1",
    "clarus_subdomain": "sandbox",
    "clarus_automation_ids": ["101", "102", "103", "104"],
    "clarus_integration_id": "7",
    "account_id": 1,
    "warehouse_id": 1,
}

# carrier code, name, [(service code, service name)]; codes match config/sandbox.yaml
CARRIERS: tuple[tuple[str, str, tuple[tuple[str, str], ...]], ...] = (
    ("ROYAL_MAIL", "Royal Mail", (("TRACKED_24", "Tracked 24"), ("TRACKED_48", "Tracked 48"), ("SPECIAL_DELIVERY", "Special Delivery Guaranteed"))),
    ("DPD", "DPD", (("NEXT_DAY", "Next Day"), ("TWO_DAY", "Two Day"))),
    ("DHL", "DHL Express", (("EXPRESS", "Express Worldwide"), ("ECONOMY", "Economy Select"))),
    ("UPS", "UPS", (("STANDARD", "Standard"), ("EXPRESS_SAVER", "Express Saver"))),
    ("EVRI", "Evri", (("STANDARD_48", "Standard 48"), ("NEXT_DAY", "Next Day"))),
    ("FEDEX", "FedEx", (("INTERNATIONAL_PRIORITY", "International Priority"), ("INTERNATIONAL_ECONOMY", "International Economy"))),
)
STOCK_UNIT_TYPES = {1: "EACH", 2: "CASE", 3: "PALLET"}

ISO_COUNTRIES = frozenset(
    "AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ BR BS BT BV BW BY BZ "
    "CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ DK DM DO DZ EC EE EG EH ER ES ET FI FJ FK FM FO FR "
    "GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS GT GU GW GY HK HM HN HR HT HU ID IE IL IM IN IO IQ IR IS IT JE JM JO "
    "JP KE KG KH KI KM KN KP KR KW KY KZ LA LB LC LI LK LR LS LT LU LV LY MA MC MD ME MF MG MH MK ML MM MN MO MP MQ MR "
    "MS MT MU MV MW MX MY MZ NA NC NE NF NG NI NL NO NP NR NU NZ OM PA PE PF PG PH PK PL PM PN PR PS PT PW PY QA RE RO "
    "RS RU RW SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV SX SY SZ TC TD TF TG TH TJ TK TL TM TN TO TR TT TV "
    "TW TZ UA UG UM US UY UZ VA VC VE VG VI VN VU WF WS YE YT ZA ZM ZW".split()
)
# countries where addresses carry no postcode (Clarus does not require one there)
NO_POSTCODE_COUNTRIES = frozenset(
    "AE AG AO AW BF BI BJ BO BS BW BZ CD CF CG CI CK CM DJ DM ER FJ GA GD GH GM GQ GY HK IE KI KM KN KP LC ML MO MR MW "
    "NR NU QA RW SB SC SL SR ST SY TD TF TG TK TL TO TV UG VU YE ZW".split()
)


# ----------------------------------------------------------------------------- tracking numbers


def _royal_mail(rng: random.Random) -> str:
    # UPU S10: 2 service letters, 8 digits, a mod-11 check digit, country "GB"
    digits = [rng.randrange(10) for _ in range(8)]
    check = 11 - sum(d * w for d, w in zip(digits, (8, 6, 4, 2, 3, 5, 9, 7))) % 11
    check = {10: 0, 11: 5}.get(check, check)
    prefix = rng.choice(("TT", "JY", "RV", "SD", "LE", "FE", "JB", "KG"))
    return f"{prefix}{''.join(map(str, digits))}{check}GB"


def _dpd(rng: random.Random) -> str:
    return "15" + "".join(str(rng.randrange(10)) for _ in range(12))


def _dhl(rng: random.Random) -> str:
    # DHL Express waybill: 9 digits and a mod-7 check digit
    body = str(rng.randrange(100_000_000, 1_000_000_000))
    return body + str(int(body) % 7)


def _ups(rng: random.Random) -> str:
    alnum = "ABCDEFGHJKLMNPRSTVWXY0123456789"
    body = "".join(rng.choice(alnum) for _ in range(6)) + rng.choice(("01", "02", "03", "12", "13")) + "".join(
        str(rng.randrange(10)) for _ in range(7)
    )
    values = [int(c) if c.isdigit() else (ord(c) - 63) % 10 for c in body]
    total = sum(values[0::2]) + 2 * sum(values[1::2])
    return f"1Z{body}{(10 - total % 10) % 10}"


def _evri(rng: random.Random) -> str:
    chars = "ABCDEFGHJKLMNPQRSTUVWXYZ0123456789"
    return "H" + "".join(rng.choice(chars) for _ in range(15))


def _fedex(rng: random.Random) -> str:
    return str(rng.randrange(10**11, 10**12))


TRACKING_GENERATORS: dict[str, Callable[[random.Random], str]] = {
    "ROYAL_MAIL": _royal_mail,
    "DPD": _dpd,
    "DHL": _dhl,
    "UPS": _ups,
    "EVRI": _evri,
    "FEDEX": _fedex,
}


def generate_tracking_number(carrier_code: str, rng: random.Random) -> str:
    """A tracking number in `carrier_code`'s real format (Royal Mail S10, UPS 1Z, ...)."""
    try:
        return TRACKING_GENERATORS[carrier_code](rng)
    except KeyError:
        raise ValueError(f"no tracking format for carrier {carrier_code!r}") from None


# ----------------------------------------------------------------------------- records


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _qty(value: float) -> float:
    return float(round(value, 6))


@dataclass
class _Product:
    id: int
    code: str
    attributes: dict[str, Any]
    created_at: float
    updated_at: float


@dataclass
class _Line:
    id: int
    goods_out_id: int
    product_id: int
    order_quantity: float
    attributes: dict[str, Any]
    created_at: float
    updated_at: float
    allocated: float = 0.0  # cumulative; dispatched <= picked <= allocated <= order_quantity
    picked: float = 0.0
    dispatched: float = 0.0

    @property
    def unallocated(self) -> float:
        return max(0.0, self.order_quantity - self.allocated)


@dataclass
class _GoodsOut:
    id: int
    reference: str
    account_id: int
    warehouse_id: int
    attributes: dict[str, Any]
    address: dict[str, Any] | None
    address_id: int | None
    lines: list[_Line]
    created_at: float
    updated_at: float
    status: GoodsOutStatus = GoodsOutStatus.DRAFT
    next_at: float | None = None  # when the warehouse next acts on it
    part_since: float | None = None
    stalled: bool = False  # never dispatched: "failed to manifest"
    shipment_ids: list[int] = field(default_factory=list)
    dispatched_at: float | None = None


@dataclass
class _Balance:
    id: int
    product_id: int
    account_id: int
    warehouse_id: int
    on_hand: float = 0.0
    allocated: float = 0.0
    picked: float = 0.0
    received: float = 0.0
    updated_at: float = 0.0

    @property
    def available(self) -> float:
        return self.on_hand - self.allocated - self.picked


@dataclass
class _Package:
    id: int
    reference: str
    tracking_number: str | None
    weight: float | None


@dataclass
class _Shipment:
    id: int
    reference: str
    goods_out_id: int
    carrier_id: int
    carrier_service_id: int | None
    warehouse_id: int
    tracking_number: str | None
    packages: list[_Package]
    lines: list[dict[str, Any]]
    dispatched_at: float
    created_at: float
    updated_at: float
    status: str = "dispatched"
    attributes: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Transaction:
    id: int
    subtype: str
    quantity: float
    product_id: int
    account_id: int
    warehouse_id: int
    created_at: float
    goods_out_id: int | None = None
    goods_in_receipt_id: int | None = None
    location_from: tuple[int, str] | None = None
    location_to: tuple[int, str] | None = None


@dataclass
class _ReceiptLine:
    id: int
    product_id: int
    expected_quantity: float
    attributes: dict[str, Any]
    received_quantity: float = 0.0


@dataclass
class _Receipt:
    id: int
    reference: str | None
    account_id: int
    warehouse_id: int
    attributes: dict[str, Any]
    lines: list[_ReceiptLine]
    created_at: float
    updated_at: float
    status: str = "draft"
    received_at: float | None = None


LOCATIONS = {"pick": (318, "AISLE-04-BAY-12"), "pack": (990, "PACK-STATION-02"), "goods_in": (12, "GOODS-IN-01"), "dispatch": (995, "DISPATCH-BAY-1")}


class ClarusError(Exception):
    """A Clarus error response: `errors` are (symbol, details, source) triples."""

    def __init__(self, status: int, errors: list[tuple[str, str, str | None]]):
        super().__init__("; ".join(d for _, d, _ in errors))
        self.status = status
        self.errors = errors

    def body(self) -> dict:
        return {
            "errors": [
                {"code": ERROR_CODES.get(symbol, self.status), "symbol": symbol, "details": details, "source": source}
                for symbol, details, source in self.errors
            ]
        }


def _unauthorized(message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=401, headers={"WWW-Authenticate": 'Bearer realm="ClarusWMS", error="invalid_token"'})


# ----------------------------------------------------------------------------- request log


def _loggable_body(path: str, raw: bytes) -> Any:
    """The request body as the inspection log shows it: JSON parsed, credentials redacted."""
    if not raw:
        return None
    if path == "/oauth/token":
        try:
            params = json.loads(raw) if raw.lstrip().startswith(b"{") else dict(parse_qsl(raw.decode("utf-8")))
        except (ValueError, UnicodeDecodeError):
            return "<unreadable>"
        return {k: ("<redacted>" if k == "client_secret" else v) for k, v in params.items()} if isinstance(params, dict) else "<unreadable>"
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", "replace")[:2000]


class _RequestLog:
    """Outermost ASGI layer: records every API call in arrival order (faulted ones too)."""

    def __init__(self, app: ASGIApp, sandbox: "ClarusSandbox", max_entries: int = 20_000):
        self.app = app
        self.sandbox = sandbox
        self.entries: deque[dict[str, Any]] = deque(maxlen=max_entries)
        self._seq = itertools.count(1)
        self._lock = threading.Lock()

    def clear(self) -> None:
        with self._lock:
            self.entries.clear()

    def snapshot(self, since: int = 0) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(e) for e in self.entries if e["seq"] > since]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith("/_sandbox"):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        raw = b"".join(chunks)
        body = _loggable_body(scope["path"], raw)
        entry = {
            "seq": next(self._seq),
            "method": scope["method"],
            "path": scope["path"],
            "query": scope.get("query_string", b"").decode("latin-1"),
            "time": self.sandbox.now(),
            "status": None,
            "handled": False,  # True when the request reached the sandbox's logic (not a fault)
            "operation": None,
            "body": body,
        }
        scope.setdefault("state", {})["clarus_log_entry"] = entry
        with self._lock:
            self.entries.append(entry)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": raw, "more_body": False}
            return await receive()

        async def capture(message: Message) -> None:
            if message["type"] == "http.response.start":
                entry["status"] = message["status"]
            await send(message)

        await self.app(scope, replay, capture)


# ----------------------------------------------------------------------------- the sandbox


class ClarusSandbox:
    """An in-memory Clarus tenant behind a Starlette app; see the module docstring."""

    def __init__(
        self,
        *,
        seed: int = 0,
        faults: FaultConfig = FaultConfig(),
        webhook_url: str | None = None,
        webhook_sender: WebhookSender | None = None,
        tenant: dict | None = None,
        client_id: str = "clarus-pipelines-sandbox",
        client_secret: str | None = None,
        subdomain: str = "sandbox",
        dispatch_after_s: float = 120.0,
        missing_tracking_rate: float = 0.0,
        partial_dispatch: bool = True,
        stall_rate: float = 0.0,
        initial_stock: tuple[int, int] = (5, 250),
        out_of_stock_rate: float = 0.1,
        token_ttl_s: float = 7200.0,
        auto_tick: bool = False,
        tick_interval_s: float = 0.5,
        validate_responses: bool = False,
    ):
        if dispatch_after_s <= 0:
            raise ValueError("dispatch_after_s must be > 0")
        self.seed = seed
        self.client_id = client_id
        # no secret in code: without one given, the sandbox makes one up (read `.client_secret`)
        self.client_secret = client_secret or secrets.token_urlsafe(24)
        self.subdomain = subdomain
        self.tenant = {**DEFAULT_TENANT, "clarus_subdomain": subdomain, **(tenant or {})}
        self.dispatch_after_s = dispatch_after_s
        self.missing_tracking_rate = missing_tracking_rate
        # goods out id -> the tracking number its packer keys in (a typo, or a label already used
        # on another parcel): the warehouse faults TRACKING_INVALID is about
        self.keyed_tracking: dict[int, str] = {}
        self.partial_dispatch = partial_dispatch
        self.stall_rate = stall_rate
        self.initial_stock = initial_stock
        self.out_of_stock_rate = out_of_stock_rate
        self.token_ttl_s = token_ttl_s
        self.auto_tick = auto_tick
        self.tick_interval_s = tick_interval_s
        self.validate_responses = validate_responses
        self.response_problems: list[dict[str, Any]] = []

        self._lock = threading.RLock()
        self._offset = 0.0
        self._tokens: dict[str, float] = {}
        self._webhook_url = webhook_url
        self._own_sender = webhook_sender is None
        self._sender = webhook_sender
        self._faults = faults
        self._lose: list[dict[str, Any]] = []
        self._ticker: threading.Thread | None = None
        self._ticker_stop = threading.Event()

        self.account_ids = {int(self.tenant["account_id"])}
        self.warehouse_ids = {int(self.tenant["warehouse_id"])}
        self._carriers: dict[int, dict[str, Any]] = {}
        self._services: dict[int, dict[str, Any]] = {}
        for c_index, (code, name, services) in enumerate(CARRIERS, start=1):
            self._carriers[c_index] = {"id": c_index, "code": code, "name": name}
            for s_index, (s_code, s_name) in enumerate(services):
                service_id = 800 + c_index * 10 + s_index
                self._services[service_id] = {"id": service_id, "code": s_code, "name": s_name, "carrier_id": c_index, "is_default": s_index == 0}
        self._reset_state()

        self._schema = clarus_graphql.build_clarus_schema(self._listing)
        self._starlette = Starlette(routes=self._routes(), lifespan=self._lifespan)
        self.fault_middleware = FaultMiddleware(self._starlette, faults, seed=seed, system="clarus")
        self._request_log = _RequestLog(self.fault_middleware, self)

    # ------------------------------------------------------------------ public surface

    @property
    def app(self) -> ASGIApp:
        """The ASGI app: request log -> `FaultMiddleware` -> Clarus routes."""
        return self._request_log

    @property
    def webhook_url(self) -> str | None:
        return self._webhook_url

    @webhook_url.setter
    def webhook_url(self, url: str | None) -> None:
        self._webhook_url = url

    @property
    def webhook_sender(self) -> WebhookSender | None:
        return self._sender

    def now(self) -> float:
        """The sandbox clock (epoch seconds)."""
        return time.time() + self._offset

    def tick(self, now: float | None = None) -> list[dict[str, Any]]:
        """Let the warehouse act on everything due by `now` (default: the sandbox clock).

        Moves the clock forward to `now` if it is later. Returns the status changes made.
        """
        with self._lock:
            current = self.now()
            if now is not None and now > current:
                self._offset += now - current
                current = now
            changes: list[dict[str, Any]] = []
            for go in sorted(self._goods_outs.values(), key=lambda g: g.id):
                for _ in range(50):  # bounded: each step moves next_at forward
                    if go.next_at is None or go.next_at > current:
                        break
                    before = go.status
                    self._advance_goods_out(go, go.next_at)
                    if go.status != before:
                        changes.append({"goods_out_id": str(go.id), "reference": go.reference, "from": before.name, "to": go.status.name, "at": _iso(go.updated_at)})
            self._flush_stock_events()
            return changes

    def advance(self, seconds: float) -> list[dict[str, Any]]:
        """Move the sandbox clock forward and tick."""
        if seconds < 0:
            raise ValueError("time only moves forward")
        return self.tick(self.now() + seconds)

    def reset(self) -> None:
        """Forget every record, request and webhook (tokens and configuration stay)."""
        with self._lock:
            self._reset_state()
            self._request_log.clear()
            self.response_problems.clear()
            self._lose.clear()

    def set_faults(self, faults: FaultConfig) -> None:
        """Change HTTP and webhook fault injection from now on."""
        self._faults = faults
        self.fault_middleware.config = faults
        if self._sender is not None:
            self._sender.config = faults

    @property
    def faults(self) -> FaultConfig:
        return self._faults

    def lose_next_responses(self, count: int = 1, *, status: int = 502, delay_s: float = 0.0, path_prefix: str = "/api/") -> None:
        """The next `count` writes under `path_prefix` are committed but answered `status`
        after `delay_s` (set it past the client's timeout to make the client time out):
        the "did my request land?" case an idempotent client must survive."""
        with self._lock:
            self._lose.append({"remaining": count, "status": status, "delay_s": delay_s, "path_prefix": path_prefix})

    def expire_tokens(self) -> None:
        """Expire every issued access token (clients must fetch a new one)."""
        with self._lock:
            self._tokens.clear()

    def requests(self, since: int = 0, path_prefix: str | None = None) -> list[dict[str, Any]]:
        """API calls in arrival order: seq, method, path, query, time, status, handled, operation, body."""
        entries = self._request_log.snapshot(since)
        return [e for e in entries if path_prefix is None or e["path"].startswith(path_prefix)]

    def goods_outs(self) -> list[dict]:
        with self._lock:
            return [self._goods_out_record(g) for g in sorted(self._goods_outs.values(), key=lambda g: g.id)]

    def goods_out(self, goods_out_id: int | str | None = None, *, reference: str | None = None) -> dict | None:
        with self._lock:
            go = self._find_goods_out(goods_out_id, reference)
            return self._goods_out_record(go) if go else None

    def products(self) -> list[dict]:
        with self._lock:
            return [self._product_record(p) for p in sorted(self._products.values(), key=lambda p: p.id)]

    def shipments(self) -> list[dict]:
        with self._lock:
            return [self._shipment_record(s) for s in sorted(self._shipments.values(), key=lambda s: s.id)]

    def stock_balances(self) -> list[dict]:
        with self._lock:
            return [self._balance_record(b) for b in sorted(self._balances.values(), key=lambda b: b.id)]

    def goods_in_receipts(self) -> list[dict]:
        with self._lock:
            return [self._receipt_record(r) for r in sorted(self._receipts.values(), key=lambda r: r.id)]

    def transactions(self) -> list[dict]:
        with self._lock:
            return [self._transaction_record(t) for t in self._transactions]

    def webhooks_emitted(self) -> list[dict]:
        """Every webhook the sandbox raised (before delivery faults): resource, event, record id, time."""
        with self._lock:
            return list(self._emitted)

    def records(self) -> dict[str, Any]:
        return {
            "products": self.products(),
            "goods_outs": self.goods_outs(),
            "shipments": self.shipments(),
            "stock_balances": self.stock_balances(),
            "goods_in_receipts": self.goods_in_receipts(),
            "transactions": self.transactions(),
            "carriers": [self._carrier_record(c) for c in self._carriers.values()],
            "carrier_services": [self._service_record(s) for s in self._services.values()],
        }

    def carrier_ids(self) -> dict[tuple[str, str], tuple[int, int]]:
        """(carrier code, service code) -> (carrier id, service id)."""
        return {(self._carriers[s["carrier_id"]]["code"], s["code"]): (s["carrier_id"], s["id"]) for s in self._services.values()}

    def seed_product(self, code: str, description: str | None = None, *, barcode: str | None = None,
                     available: float | None = None, **attributes: Any) -> dict:
        """Create a product directly (no HTTP), optionally with a given available stock."""
        body = {"data": {"type": "products", "attributes": {"code": code, "description": description or code, "stock_unit_type_id": 1, **({"barcode": barcode} if barcode else {}), **attributes}}}
        with self._lock:
            data = self._create_product(body)
            if available is not None:
                self._set_stock(self._products[data["data"]["id"]], available=available)
            self._flush_stock_events()
            return self._product_record(self._products[data["data"]["id"]])

    def set_stock(self, product: str | int, *, available: float | None = None, on_hand: float | None = None,
                  account_id: int | None = None, warehouse_id: int | None = None, emit: bool = True) -> dict:
        """Set a product's stock (by SKU or Clarus id) as a stock adjustment; returns the balance."""
        with self._lock:
            p = self._product_by_sku_or_id(product)
            balance = self._set_stock(p, available=available, on_hand=on_hand, account_id=account_id, warehouse_id=warehouse_id)
            if emit:
                self._flush_stock_events()
            else:
                self._dirty_balances.discard(balance.id)
            return self._balance_record(balance)

    def record_movement(self, product: str | int, subtype: str, quantity: float) -> dict:
        """A warehouse movement of `subtype` logged in the transaction history only (e.g. a
        quarantine move the integration does not know); returns the transaction record."""
        with self._lock:
            p = self._product_by_sku_or_id(product)
            balance = self._balance(p.id, None, None)
            self._transaction(subtype, quantity, balance, self.now())
            return self._transaction_record(self._transactions[-1])

    def receive_goods_in_receipt(self, receipt_id: int | str, quantities: dict[str, float] | None = None) -> dict:
        """Receive a goods in receipt (all expected, or `quantities` by product id/SKU)."""
        with self._lock:
            receipt = self._receipts.get(int(receipt_id))
            if receipt is None:
                raise KeyError(f"no goods in receipt {receipt_id}")
            self._receive(receipt, quantities)
            self._flush_stock_events()
            return self._receipt_record(receipt)

    def stall_goods_out(self, goods_out_id: int | str, stalled: bool = True) -> None:
        """Make a goods out never dispatch (it stops at PICK): a "failed to manifest" order."""
        with self._lock:
            go = self._goods_outs[int(goods_out_id)]
            go.stalled = stalled
            if not stalled and go.next_at is None and go.status not in FINAL_STATUSES:
                go.next_at = self.now()

    def start_ticker(self, interval_s: float | None = None) -> None:
        """Tick from a background thread (for a long-running server; tests call `tick`)."""
        if self._ticker and self._ticker.is_alive():
            return
        interval = interval_s or self.tick_interval_s
        self._ticker_stop.clear()

        def run() -> None:
            while not self._ticker_stop.wait(interval):
                try:
                    self.tick()
                except Exception:  # keep the warehouse running; the log says what broke
                    log.exception("clarus sandbox tick failed")

        self._ticker = threading.Thread(target=run, name="clarus-sandbox-ticker", daemon=True)
        self._ticker.start()

    @property
    def ticking(self) -> bool:
        """Whether the background ticker thread is running."""
        return self._ticker is not None and self._ticker.is_alive()

    def stop_ticker(self) -> None:
        self._ticker_stop.set()
        if self._ticker:
            self._ticker.join(timeout=5)
            self._ticker = None

    def close(self) -> None:
        self.stop_ticker()
        if self._sender is not None and self._own_sender:
            self._sender.close()

    # ------------------------------------------------------------------ state

    def _reset_state(self) -> None:
        self._rng = random.Random(f"clarus:{self.seed}")
        self._ids = {name: itertools.count(start) for name, start in (
            ("product", 1001), ("goods_out", 3001), ("line", 60001), ("address", 5001), ("balance", 1),
            ("shipment", 1501), ("package", 4801), ("transaction", 900001), ("receipt", 201), ("receipt_line", 7001),
        )}
        self._products: dict[int, _Product] = {}
        self._goods_outs: dict[int, _GoodsOut] = {}
        self._balances: dict[tuple[int, int, int], _Balance] = {}
        self._shipments: dict[int, _Shipment] = {}
        self._transactions: list[_Transaction] = []
        self._receipts: dict[int, _Receipt] = {}
        self._dirty_balances: set[int] = set()
        self._emitted: list[dict[str, Any]] = []

    def _next_id(self, kind: str) -> int:
        return next(self._ids[kind])

    @property
    def _step_s(self) -> float:
        return self.dispatch_after_s / 4  # DRAFT->PENDING->ALLOCATED->PICK->COMPLETED

    def _find_goods_out(self, goods_out_id: int | str | None, reference: str | None) -> _GoodsOut | None:
        if goods_out_id is not None:
            return self._goods_outs.get(int(goods_out_id))
        return next((g for g in self._goods_outs.values() if g.reference == reference), None)

    def _product_by_sku_or_id(self, product: str | int) -> _Product:
        """An int is a Clarus id; a string is a SKU first (SKUs may be all digits), else an id."""
        if isinstance(product, str):
            for p in self._products.values():
                if p.code == product:
                    return p
        found = self._products.get(int(product)) if str(product).isdigit() else None
        if found is None:
            raise KeyError(f"no product with SKU or id {product!r}")
        return found

    def _balance(self, product_id: int, account_id: int | None = None, warehouse_id: int | None = None) -> _Balance:
        key = (product_id, account_id or int(self.tenant["account_id"]), warehouse_id or int(self.tenant["warehouse_id"]))
        balance = self._balances.get(key)
        if balance is None:
            balance = _Balance(self._next_id("balance"), *key, updated_at=self.now())
            self._balances[key] = balance
        return balance

    def _touch_balance(self, balance: _Balance, at: float) -> None:
        balance.updated_at = at
        self._dirty_balances.add(balance.id)

    def _transaction(self, subtype: str, quantity: float, balance: _Balance, at: float, **kwargs: Any) -> None:
        self._transactions.append(_Transaction(self._next_id("transaction"), subtype, _qty(quantity), balance.product_id,
                                               balance.account_id, balance.warehouse_id, at, **kwargs))

    def _set_stock(self, product: _Product, *, available: float | None = None, on_hand: float | None = None,
                   account_id: int | None = None, warehouse_id: int | None = None) -> _Balance:
        if (available is None) == (on_hand is None):
            raise ValueError("give exactly one of available or on_hand")
        balance = self._balance(product.id, account_id, warehouse_id)
        target = on_hand if on_hand is not None else available + balance.allocated + balance.picked  # type: ignore[operator]
        if target < balance.allocated + balance.picked:
            raise ValueError(f"on hand {target} would be below allocated + picked ({balance.allocated + balance.picked})")
        delta = target - balance.on_hand
        if delta:
            at = self.now()
            balance.on_hand = target
            if delta > 0:
                balance.received += delta
            self._transaction("ADJ", delta, balance, at, location_to=LOCATIONS["pick"])
            self._touch_balance(balance, at)
        return balance

    # ------------------------------------------------------------------ webhooks

    def _automation_id(self, resource_name: str, event: str) -> str:
        ids = self.tenant.get("clarus_automation_ids") or ["1"]
        if isinstance(ids, dict):
            return str(ids.get(f"{resource_name}.{event}", next(iter(ids.values()))))
        index = WEBHOOK_EVENTS.index((resource_name, event)) if (resource_name, event) in WEBHOOK_EVENTS else 0
        return str(ids[index % len(ids)])

    def _emit(self, resource_name: str, event: str, record: dict) -> None:
        self._emitted.append({"resource_name": resource_name, "event": event, "id": record.get("id"), "at": _iso(self.now())})
        url = self._webhook_url
        if not url:
            return
        if self._sender is None:
            self._sender = WebhookSender(self._faults, seed=self.seed, system="clarus")
            self._own_sender = True
        body = json.dumps({"resource_name": resource_name, "event": event, "data": record}, separators=(",", ":")).encode()
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "ClarusWMS-Automations/1.0",
            HEADER_DOMAIN: str(self.tenant["clarus_domain"]),
            HEADER_API_DOMAIN: str(self.tenant["clarus_api_domain"]),
            HEADER_SUBDOMAIN: str(self.tenant["clarus_subdomain"]),
            HEADER_AUTOMATION_ID: self._automation_id(resource_name, event),
            HEADER_INTEGRATION_ID: str(self.tenant["clarus_integration_id"]),
        }
        self._sender.post(url, body, headers)

    def _flush_stock_events(self) -> None:
        dirty, self._dirty_balances = self._dirty_balances, set()
        for balance in sorted((b for b in self._balances.values() if b.id in dirty), key=lambda b: b.id):
            self._emit("stock_balance", "updated", self._balance_record(balance))

    def _emit_goods_out(self, go: _GoodsOut, event: str) -> None:
        self._emit("goods_out", event, self._goods_out_record(go))

    # ------------------------------------------------------------------ warehouse behaviour

    def _set_status(self, go: _GoodsOut, status: GoodsOutStatus, at: float) -> None:
        go.status = status
        go.updated_at = at
        event = {GoodsOutStatus.COMPLETED: "completed", GoodsOutStatus.CANCELLED: "cancelled"}.get(status, "updated")
        self._emit_goods_out(go, event)

    def _allocate(self, go: _GoodsOut, at: float) -> None:
        for line in go.lines:
            need = line.unallocated
            if need <= 0:
                continue
            balance = self._balance(line.product_id, go.account_id, go.warehouse_id)
            take = min(need, max(0.0, balance.available))
            if take > 0:
                line.allocated += take
                line.updated_at = at
                balance.allocated += take
                self._touch_balance(balance, at)

    def _pick(self, go: _GoodsOut, at: float) -> None:
        for line in go.lines:
            qty = line.allocated - line.picked
            if qty <= 0:
                continue
            balance = self._balance(line.product_id, go.account_id, go.warehouse_id)
            line.picked += qty
            line.updated_at = at
            balance.allocated -= qty
            balance.picked += qty
            self._touch_balance(balance, at)
            self._transaction("PICK", qty, balance, at, goods_out_id=go.id, location_from=LOCATIONS["pick"], location_to=LOCATIONS["pack"])

    def _dispatch(self, go: _GoodsOut, at: float) -> _Shipment | None:
        shipped: list[dict[str, Any]] = []
        for line in go.lines:
            qty = line.picked - line.dispatched
            if qty <= 0:
                continue
            balance = self._balance(line.product_id, go.account_id, go.warehouse_id)
            line.dispatched += qty
            line.updated_at = at
            balance.picked -= qty
            balance.on_hand -= qty
            self._touch_balance(balance, at)
            self._transaction("DESP", -qty, balance, at, goods_out_id=go.id, location_from=LOCATIONS["dispatch"])
            shipped.append({"goods_out_line_id": line.id, "product_id": line.product_id, "quantity": _qty(qty),
                            "external_system_reference1": line.attributes.get("external_system_reference1")})
        if not shipped:
            return None
        carrier_id = go.attributes.get("carrier_id") or 1
        service_id = go.attributes.get("carrier_service_id") or next(
            (s["id"] for s in self._services.values() if s["carrier_id"] == carrier_id and s["is_default"]), None)
        carrier_code = self._carriers[carrier_id]["code"]
        missing = self._rng.random() < self.missing_tracking_rate
        shipment_id = self._next_id("shipment")
        packages = []
        for n in range(1 if self._rng.random() < 0.8 else 2):
            package_id = self._next_id("package")
            tracking = None if missing else generate_tracking_number(carrier_code, self._rng)
            if n == 0 and go.id in self.keyed_tracking:
                tracking = self.keyed_tracking[go.id]
            packages.append(_Package(package_id, f"PKG{package_id:08d}", tracking, round(self._rng.uniform(0.2, 12.0), 2)))
        shipment = _Shipment(
            id=shipment_id, reference=f"SHP-{shipment_id:06d}", goods_out_id=go.id, carrier_id=carrier_id,
            carrier_service_id=service_id, warehouse_id=go.warehouse_id, tracking_number=packages[0].tracking_number,
            packages=packages, lines=shipped, dispatched_at=at, created_at=at, updated_at=at,
        )
        self._shipments[shipment_id] = shipment
        go.shipment_ids.append(shipment_id)
        go.dispatched_at = at
        return shipment

    def _fully_allocated(self, go: _GoodsOut) -> bool:
        return all(line.unallocated <= 0 for line in go.lines)

    def _advance_goods_out(self, go: _GoodsOut, at: float) -> None:
        step = self._step_s
        status = go.status
        go.next_at = at + step
        if status == GoodsOutStatus.DRAFT:
            self._set_status(go, GoodsOutStatus.PENDING, at)
        elif status in (GoodsOutStatus.PENDING, GoodsOutStatus.PART_ALLOCATED, GoodsOutStatus.PART):
            self._allocate(go, at)
            if self._fully_allocated(go):
                self._set_status(go, GoodsOutStatus.ALLOCATED, at)
                return
            waiting = any(line.allocated > line.picked for line in go.lines)
            if status == GoodsOutStatus.PENDING and waiting:
                go.part_since = at
                self._set_status(go, GoodsOutStatus.PART_ALLOCATED, at)
            elif self.partial_dispatch and waiting and go.part_since is not None and at - go.part_since >= 2 * step and not go.stalled:
                self._pick(go, at)
                self._dispatch(go, at)
                go.part_since = at
                self._set_status(go, GoodsOutStatus.PART, at)
        elif status == GoodsOutStatus.ALLOCATED:
            self._pick(go, at)
            self._set_status(go, GoodsOutStatus.PICK, at)
        elif status == GoodsOutStatus.PICK:
            if go.stalled:
                go.next_at = None
                return
            self._dispatch(go, at)
            if all(line.dispatched >= line.order_quantity for line in go.lines):
                go.attributes["actual_date_of_dispatch"] = _iso(at)
                go.next_at = None
                self._set_status(go, GoodsOutStatus.COMPLETED, at)
            else:
                go.part_since = at
                self._set_status(go, GoodsOutStatus.PART, at)
        else:
            go.next_at = None

    def _release(self, go: _GoodsOut, at: float) -> None:
        """Give back stock held by a cancelled goods out."""
        for line in go.lines:
            held_allocated = line.allocated - line.picked
            held_picked = line.picked - line.dispatched
            if held_allocated <= 0 and held_picked <= 0:
                continue
            balance = self._balance(line.product_id, go.account_id, go.warehouse_id)
            balance.allocated -= held_allocated
            balance.picked -= held_picked
            line.allocated = line.picked = line.dispatched
            self._touch_balance(balance, at)

    def _receive(self, receipt: _Receipt, quantities: dict[str, float] | None) -> None:
        at = self.now()
        wanted: dict[int, float] = {}
        if quantities:
            for key, qty in quantities.items():
                wanted[self._product_by_sku_or_id(key).id] = float(qty)
        for line in receipt.lines:
            qty = wanted.get(line.product_id, 0.0) if quantities else line.expected_quantity - line.received_quantity
            if qty <= 0:
                continue
            line.received_quantity += qty
            balance = self._balance(line.product_id, receipt.account_id, receipt.warehouse_id)
            balance.on_hand += qty
            balance.received += qty
            self._touch_balance(balance, at)
            self._transaction("RCV", qty, balance, at, goods_in_receipt_id=receipt.id, location_to=LOCATIONS["goods_in"])
        receipt.updated_at = at
        complete = all(line.received_quantity >= line.expected_quantity for line in receipt.lines)
        receipt.status = "completed" if complete else "receiving"
        if complete:
            receipt.received_at = at
            self._emit("goods_in", "completed", self._receipt_record(receipt))

    # ------------------------------------------------------------------ API operations (under the lock)

    def _create_product(self, body: dict) -> dict:
        attrs = dict(body["data"]["attributes"])
        code = attrs.get("code")
        errors: list[tuple[str, str, str | None]] = []
        if code is None or not str(code).strip():
            errors.append(("blank", "code can't be blank", "data.attributes.code"))
        elif any(p.code == code for p in self._products.values()):
            errors.append(("taken", f"code {code!r} has already been taken", "data.attributes.code"))
        if not str(attrs.get("description") or "").strip():
            errors.append(("blank", "description can't be blank", "data.attributes.description"))
        if attrs.get("stock_unit_type_id") not in STOCK_UNIT_TYPES:
            errors.append(("not_found", f"stock unit type {attrs.get('stock_unit_type_id')} does not exist", "data.attributes.stock_unit_type_id"))
        if errors:
            raise ClarusError(422, errors)
        at = self.now()
        product = _Product(self._next_id("product"), code, attrs, at, at)
        self._products[product.id] = product
        low, high = self.initial_stock
        if high > 0 and self._rng.random() >= self.out_of_stock_rate:
            quantity = self._rng.randint(low, high)
            balance = self._balance(product.id)
            balance.on_hand += quantity
            balance.received += quantity
            self._transaction("RCV", quantity, balance, at, location_to=LOCATIONS["goods_in"])
            self._touch_balance(balance, at)
        return {"data": {"id": product.id, "type": "products", "attributes": self._product_attributes(product)}}

    def _update_product(self, product_id: int, body: dict) -> dict:
        product = self._products.get(product_id)
        if product is None:
            raise ClarusError(404, [("not_found", f"product {product_id} not found", None)])
        attrs = dict(body["data"]["attributes"])
        code = attrs.get("code", product.code)
        errors: list[tuple[str, str, str | None]] = []
        if code is None or not str(code).strip():
            errors.append(("blank", "code can't be blank", "data.attributes.code"))
        elif code != product.code and any(p.code == code for p in self._products.values()):
            errors.append(("taken", f"code {code!r} has already been taken", "data.attributes.code"))
        if "stock_unit_type_id" in attrs and attrs["stock_unit_type_id"] not in STOCK_UNIT_TYPES:
            errors.append(("not_found", f"stock unit type {attrs['stock_unit_type_id']} does not exist", "data.attributes.stock_unit_type_id"))
        if errors:
            raise ClarusError(422, errors)
        product.attributes.update(attrs)
        product.code = code
        product.updated_at = self.now()
        return {"data": {"id": product.id, "type": "products", "attributes": self._product_attributes(product)}}

    def _check_address(self, relationships: dict | None, required: bool) -> tuple[dict | None, list]:
        address = ((relationships or {}).get("address") or {}).get("data", {}).get("attributes") if relationships else None
        if address is None:
            return None, ([("blank", "delivery address can't be blank", "data.relationships.address")] if required else [])
        errors = []
        src = "data.relationships.address.data.attributes."
        for key in ("name", "address_1"):
            if not str(address.get(key) or "").strip():
                errors.append(("blank", f"{key} can't be blank", src + key))
        country = address.get("country_code")
        if not country:
            errors.append(("blank", "country_code can't be blank", src + "country_code"))
        elif country not in ISO_COUNTRIES:
            errors.append(("invalid", f"country_code {country!r} is not an ISO 3166-1 alpha-2 code", src + "country_code"))
        elif country not in NO_POSTCODE_COUNTRIES and not str(address.get("postcode") or "").strip():
            errors.append(("blank", f"postcode can't be blank for country {country}", src + "postcode"))
        return dict(address), errors

    def _check_carrier(self, attrs: dict) -> list:
        errors = []
        carrier_id, service_id = attrs.get("carrier_id"), attrs.get("carrier_service_id")
        if carrier_id is not None and carrier_id not in self._carriers:
            errors.append(("not_found", f"carrier {carrier_id} does not exist", "data.attributes.carrier_id"))
        if service_id is not None:
            service = self._services.get(service_id)
            if service is None:
                errors.append(("not_found", f"carrier service {service_id} does not exist", "data.attributes.carrier_service_id"))
            elif carrier_id is not None and service["carrier_id"] != carrier_id:
                errors.append(("invalid", f"carrier service {service_id} does not belong to carrier {carrier_id}", "data.attributes.carrier_service_id"))
        return errors

    def _check_line_add(self, index: int, change: dict) -> list:
        src = f"data.attributes.lines_changes.{index}.attributes."
        line_attrs = change.get("attributes") or {}
        errors = []
        product_id = line_attrs.get("product_id")
        if product_id is None:
            errors.append(("blank", "product_id can't be blank", src + "product_id"))
        elif product_id not in self._products:
            errors.append(("not_found", f"product {product_id} does not exist", src + "product_id"))
        if line_attrs.get("order_quantity") is None:
            errors.append(("blank", "order_quantity can't be blank", src + "order_quantity"))
        return errors

    def _new_line(self, go_id: int, change: dict, at: float) -> _Line:
        line_attrs = {k: v for k, v in (change.get("attributes") or {}).items() if k not in ("product_id", "order_quantity")}
        a = change["attributes"]
        return _Line(self._next_id("line"), go_id, a["product_id"], float(a["order_quantity"]), line_attrs, at, at)

    def _create_goods_out(self, body: dict) -> dict:
        data = body["data"]
        attrs = dict(data["attributes"])
        changes = attrs.pop("lines_changes", None) or []
        errors: list[tuple[str, str, str | None]] = []
        account_id = attrs["account_id"]
        if account_id not in self.account_ids:
            errors.append(("not_found", f"account {account_id} does not exist", "data.attributes.account_id"))
        warehouse_id = attrs.get("warehouse_id") or int(self.tenant["warehouse_id"])
        if warehouse_id not in self.warehouse_ids:
            errors.append(("not_found", f"warehouse {warehouse_id} does not exist", "data.attributes.warehouse_id"))
        reference = attrs["reference"]
        if any(g.reference == reference and g.account_id == account_id for g in self._goods_outs.values()):
            errors.append(("taken", f"reference {reference!r} has already been taken", "data.attributes.reference"))
        address, address_errors = self._check_address(data.get("relationships"), required=attrs["goods_out_type"] == "sales_order")
        errors += address_errors
        errors += self._check_carrier(attrs)
        if not changes:
            errors.append(("blank", "a goods out needs at least one line", "data.attributes.lines_changes"))
        for index, change in enumerate(changes):
            if change["type"] != "ADD":
                errors.append(("invalid", f"{change['type']} is not allowed when creating a goods out", f"data.attributes.lines_changes.{index}.type"))
            else:
                errors += self._check_line_add(index, change)
        if errors:
            raise ClarusError(422, errors)
        at = self.now()
        go_id = self._next_id("goods_out")
        attrs["warehouse_id"] = warehouse_id
        attrs.pop("goods_out_status_id", None)
        go = _GoodsOut(
            id=go_id, reference=reference, account_id=account_id, warehouse_id=warehouse_id, attributes=attrs,
            address=address, address_id=self._next_id("address") if address else None,
            lines=[self._new_line(go_id, c, at) for c in changes], created_at=at, updated_at=at,
            next_at=at + self._step_s, stalled=self._rng.random() < self.stall_rate,
        )
        self._goods_outs[go_id] = go
        self._emit_goods_out(go, "created")
        return self._goods_out_document(go)

    def _update_goods_out(self, go_id: int, body: dict) -> dict:
        go = self._goods_outs.get(go_id)
        if go is None:
            raise ClarusError(404, [("not_found", f"goods out {go_id} not found", None)])
        data = body["data"]
        attrs = dict(data["attributes"])
        changes = attrs.pop("lines_changes", None) or []
        relationships = data.get("relationships")
        errors: list[tuple[str, str, str | None]] = []
        if go.status in FINAL_STATUSES:
            raise ClarusError(422, [("invalid_state", f"goods out {go.reference} is {go.status.name} and can no longer be changed", None)])
        if (changes or relationships) and go.status not in EDITABLE_STATUSES:
            raise ClarusError(422, [("invalid_state", f"lines and address of goods out {go.reference} cannot change in status {go.status.name}", "data.attributes.lines_changes" if changes else "data.relationships.address")])
        if attrs.get("account_id", go.account_id) != go.account_id:
            errors.append(("invalid", "account_id cannot be changed", "data.attributes.account_id"))
        reference = attrs.get("reference", go.reference)
        if reference != go.reference and any(g.reference == reference and g.account_id == go.account_id for g in self._goods_outs.values()):
            errors.append(("taken", f"reference {reference!r} has already been taken", "data.attributes.reference"))
        new_status = attrs.pop("goods_out_status_id", None)
        if new_status is not None and new_status != go.status and not (go.status == GoodsOutStatus.DRAFT and new_status == GoodsOutStatus.PENDING):
            errors.append(("invalid_state", f"status cannot be set to {new_status} from {go.status.name}", "data.attributes.goods_out_status_id"))
        errors += self._check_carrier({"carrier_id": attrs.get("carrier_id", go.attributes.get("carrier_id")), "carrier_service_id": attrs.get("carrier_service_id", go.attributes.get("carrier_service_id"))})
        address = None
        if relationships and relationships.get("address"):
            address, address_errors = self._check_address(relationships, required=True)
            errors += address_errors
        line_ids = {line.id for line in go.lines}
        destroyed: set[int] = set()
        for index, change in enumerate(changes):
            kind = change["type"]
            if kind == "ADD":
                errors += self._check_line_add(index, change)
            elif change.get("id") not in line_ids:
                errors.append(("not_found", f"line {change.get('id')} is not a line of goods out {go.reference}", f"data.attributes.lines_changes.{index}.id"))
            elif kind == "DESTROY":
                destroyed.add(change["id"])
            elif (change.get("attributes") or {}).get("product_id") not in (None, *self._products):
                errors.append(("not_found", f"product {change['attributes']['product_id']} does not exist", f"data.attributes.lines_changes.{index}.attributes.product_id"))
        adds = sum(1 for c in changes if c["type"] == "ADD")
        if changes and len(line_ids - destroyed) + adds == 0:
            errors.append(("invalid", "a goods out needs at least one line", "data.attributes.lines_changes"))
        if errors:
            raise ClarusError(422, errors)

        at = self.now()
        by_id = {line.id: line for line in go.lines}
        for change in changes:
            if change["type"] == "ADD":
                go.lines.append(self._new_line(go.id, change, at))
            elif change["type"] == "DESTROY":
                go.lines.remove(by_id[change["id"]])
            else:
                line = by_id[change["id"]]
                update = dict(change.get("attributes") or {})
                if "product_id" in update:
                    line.product_id = update.pop("product_id")
                if "order_quantity" in update:
                    line.order_quantity = float(update.pop("order_quantity"))
                line.attributes.update(update)
                line.updated_at = at
        if address is not None:
            go.address = address
            go.address_id = go.address_id or self._next_id("address")
        go.attributes.update(attrs)
        go.reference = reference
        go.updated_at = at
        if new_status == GoodsOutStatus.PENDING and go.status == GoodsOutStatus.DRAFT:
            go.next_at = at + self._step_s
            self._set_status(go, GoodsOutStatus.PENDING, at)
        else:
            self._emit_goods_out(go, "updated")
        return self._goods_out_document(go)

    def _cancel_goods_out(self, go_id: int) -> dict:
        go = self._goods_outs.get(go_id)
        if go is None:
            raise ClarusError(404, [("not_found", f"goods out {go_id} not found", None)])
        if go.status == GoodsOutStatus.COMPLETED:
            raise ClarusError(422, [("invalid_state", f"goods out {go.reference} is COMPLETED (dispatched) and cannot be cancelled", None)])
        if go.status == GoodsOutStatus.CANCELLED:
            raise ClarusError(422, [("invalid_state", f"goods out {go.reference} is already CANCELLED", None)])
        at = self.now()
        self._release(go, at)
        go.next_at = None
        self._set_status(go, GoodsOutStatus.CANCELLED, at)
        return {"data": {"id": go.id, "type": "goods_outs", "attributes": self._goods_out_attributes(go)}}

    def _update_shipment(self, shipment_id: int, body: dict) -> dict:
        shipment = self._shipments.get(shipment_id)
        if shipment is None:
            raise ClarusError(404, [("not_found", f"shipment {shipment_id} not found", None)])
        attrs = dict(body["data"]["attributes"])
        errors = []
        if attrs.get("goods_out_id", shipment.goods_out_id) != shipment.goods_out_id:
            errors.append(("invalid", "goods_out_id cannot be changed", "data.attributes.goods_out_id"))
        errors += self._check_carrier({"carrier_id": attrs.get("carrier_id"), "carrier_service_id": attrs.get("carrier_service_id")})
        if errors:
            raise ClarusError(422, errors)
        at = self.now()
        if "tracking_number" in attrs:
            shipment.tracking_number = attrs.pop("tracking_number")
            if shipment.packages:
                shipment.packages[0].tracking_number = shipment.tracking_number
        if "packages" in attrs:
            shipment.packages = [
                _Package(self._next_id("package"), p.get("reference") or "", shipment.tracking_number if i == 0 else None, p.get("weight"))
                for i, p in enumerate(attrs.pop("packages"))
            ]
        for key in ("carrier_id", "carrier_service_id"):
            if attrs.get(key) is not None:
                setattr(shipment, key, attrs.pop(key))
        shipment.attributes.update(attrs)
        shipment.updated_at = at
        go = self._goods_outs[shipment.goods_out_id]
        go.updated_at = at
        self._emit_goods_out(go, "updated")
        return {"data": {"id": shipment.id, "type": "shipments", "attributes": self._shipment_attributes(shipment)}}

    def _create_goods_in_receipt(self, body: dict) -> dict:
        attrs = dict(body["data"]["attributes"])
        changes = attrs.pop("lines_changes", None) or []
        errors: list[tuple[str, str, str | None]] = []
        if attrs["account_id"] not in self.account_ids:
            errors.append(("not_found", f"account {attrs['account_id']} does not exist", "data.attributes.account_id"))
        if attrs["warehouse_id"] not in self.warehouse_ids:
            errors.append(("not_found", f"warehouse {attrs['warehouse_id']} does not exist", "data.attributes.warehouse_id"))
        reference = attrs.get("reference")
        if reference and any(r.reference == reference and r.account_id == attrs["account_id"] for r in self._receipts.values()):
            errors.append(("taken", f"reference {reference!r} has already been taken", "data.attributes.reference"))
        for index, change in enumerate(changes):
            src = f"data.attributes.lines_changes.{index}."
            line_attrs = change.get("attributes") or {}
            if change["type"] != "ADD":
                errors.append(("invalid", f"{change['type']} is not allowed when creating a receipt", src + "type"))
            elif line_attrs.get("product_id") not in self._products:
                errors.append(("not_found", f"product {line_attrs.get('product_id')} does not exist", src + "attributes.product_id"))
            elif line_attrs.get("expected_quantity") is None:
                errors.append(("blank", "expected_quantity can't be blank", src + "attributes.expected_quantity"))
        if errors:
            raise ClarusError(422, errors)
        at = self.now()
        lines = [
            _ReceiptLine(self._next_id("receipt_line"), c["attributes"]["product_id"], float(c["attributes"]["expected_quantity"]),
                         {k: v for k, v in c["attributes"].items() if k not in ("product_id", "expected_quantity")})
            for c in changes
        ]
        receipt = _Receipt(self._next_id("receipt"), reference, attrs["account_id"], attrs["warehouse_id"], attrs, lines, at, at)
        self._receipts[receipt.id] = receipt
        return {
            "data": {"id": receipt.id, "type": "goods_in_receipts", "attributes": self._receipt_attributes(receipt)},
            "included": [{"id": line.id, "type": "goods_in_receipt_lines", "attributes": {"product_id": line.product_id, "expected_quantity": line.expected_quantity, **line.attributes}} for line in receipt.lines],
        }

    # ------------------------------------------------------------------ REST attributes

    def _product_attributes(self, p: _Product) -> dict:
        return {**p.attributes, "code": p.code}

    def _goods_out_attributes(self, go: _GoodsOut) -> dict:
        attrs = {k: v for k, v in go.attributes.items() if k != "lines_changes"}
        attrs.update({"reference": go.reference, "account_id": go.account_id, "warehouse_id": go.warehouse_id,
                      "goods_out_status_id": int(go.status)})
        return attrs

    def _goods_out_document(self, go: _GoodsOut) -> dict:
        return {
            "data": {"id": go.id, "type": "goods_outs", "attributes": self._goods_out_attributes(go)},
            "included": [
                {"id": line.id, "type": "goods_out_lines", "attributes": {"product_id": line.product_id, "order_quantity": line.order_quantity, **line.attributes}}
                for line in go.lines
            ],
        }

    def _shipment_attributes(self, s: _Shipment) -> dict:
        return {
            **s.attributes, "goods_out_id": s.goods_out_id, "carrier_id": s.carrier_id, "carrier_service_id": s.carrier_service_id,
            "reference": s.reference, "tracking_number": s.tracking_number,
            "packages": [{"reference": p.reference, "weight": p.weight} for p in s.packages],
        }

    def _receipt_attributes(self, r: _Receipt) -> dict:
        return {**r.attributes, "account_id": r.account_id, "warehouse_id": r.warehouse_id, "reference": r.reference}

    # ------------------------------------------------------------------ records (GraphQL nodes and webhook payloads)

    def _account_record(self, account_id: int) -> dict:
        return {"id": str(account_id), "code": "SANDBOX" if account_id == int(self.tenant["account_id"]) else f"ACC{account_id}", "name": "Sandbox Brand Ltd"}

    def _warehouse_record(self, warehouse_id: int) -> dict:
        return {"id": str(warehouse_id), "code": f"WH{warehouse_id}", "name": "Main Warehouse"}

    def _carrier_record(self, c: dict | None) -> dict | None:
        if c is None:
            return None
        return {"id": str(c["id"]), "code": c["code"], "name": c["name"], "description": f"{c['name']} parcels", "active": True,
                "carrier_type": "custom", "carrier_externally_registered": False, "external_system_reference1": None, "created_at": None}

    def _service_record(self, s: dict | None) -> dict | None:
        if s is None:
            return None
        return {"id": str(s["id"]), "code": s["code"], "name": s["name"], "active": True, "is_default": s["is_default"],
                "carrier": self._carrier_record(self._carriers[s["carrier_id"]])}

    def _status_record(self, status: GoodsOutStatus) -> dict:
        return {"id": str(int(status)), "code": status.name, "name": status.label}

    def _product_record(self, p: _Product) -> dict:
        a = p.attributes
        return {
            "id": str(p.id), "code": p.code, "barcode": a.get("barcode"), "case_barcode": a.get("case_barcode"),
            "description": a.get("description"), "long_description": a.get("long_description"),
            "product_type": a.get("product_type") or "single", "units_per_case": a.get("units_per_case"),
            "shelf_life_min": a.get("shelf_life_min"), "shelf_life_max": a.get("shelf_life_max"),
            "commodity_code": a.get("commodity_code"), "country_of_manufacture": a.get("country_of_manufacture"),
            "stock_unit_type_id": str(a.get("stock_unit_type_id")), "stop": a.get("stop"), "obsolete": a.get("obsolete"),
            "external_system_reference1": a.get("external_system_reference1"),
            "external_system_reference2": a.get("external_system_reference2"),
            "external_system_reference3": a.get("external_system_reference3"),
            "created_at": _iso(p.created_at), "updated_at": _iso(p.updated_at),
        }

    def _goods_out_ref(self, go: _GoodsOut) -> dict:
        return {"id": str(go.id), "reference": go.reference, "external_system_reference1": go.attributes.get("external_system_reference1"),
                "goods_out_status": self._status_record(go.status)}

    def _line_record(self, line: _Line, go: _GoodsOut) -> dict:
        product = self._products.get(line.product_id)
        short = go.status in (GoodsOutStatus.PART_ALLOCATED, GoodsOutStatus.PART) and line.unallocated > 0
        return {
            "id": str(line.id), "order_quantity": _qty(line.order_quantity), "allocated_quantity": _qty(line.allocated),
            "pick_quantity": _qty(line.picked), "dispatch_quantity": _qty(line.dispatched), "short_status": "SHORT" if short else "",
            "product": self._product_record(product) if product else None, "goods_out": self._goods_out_ref(go),
            "carrier": self._carrier_record(self._carriers.get(line.attributes.get("carrier_id") or go.attributes.get("carrier_id"))),
            "external_system_reference1": line.attributes.get("external_system_reference1"),
            "external_system_reference2": line.attributes.get("external_system_reference2"),
            "external_system_reference3": line.attributes.get("external_system_reference3"),
            "alt_line_reference": line.attributes.get("alt_line_reference"),
            "created_at": _iso(line.created_at), "updated_at": _iso(line.updated_at),
        }

    def _package_record(self, p: _Package, s: _Shipment) -> dict:
        return {"id": str(p.id), "reference": p.reference, "tracking_number": p.tracking_number, "weight": p.weight,
                "shipment": {"id": str(s.id), "reference": s.reference, "tracking_number": s.tracking_number},
                "storage_unit_type": {"id": "1", "code": "PARCEL"}}

    def _shipment_record(self, s: _Shipment) -> dict:
        go = self._goods_outs[s.goods_out_id]
        return {
            "id": str(s.id), "reference": s.reference, "name": f"Shipment for {go.reference}", "status": s.status,
            "delivery_notes": go.attributes.get("delivery_notes"), "collection_datetime": _iso(s.dispatched_at),
            "label_filename": f"label-{s.reference}.pdf", "packages_count": len(s.packages), "tracking_number": s.tracking_number,
            "carrier": self._carrier_record(self._carriers.get(s.carrier_id)),
            "carrier_service": self._service_record(self._services.get(s.carrier_service_id)) if s.carrier_service_id else None,
            "warehouse": self._warehouse_record(s.warehouse_id), "goods_out": self._goods_out_ref(go),
            "packages": [self._package_record(p, s) for p in s.packages],
            "lines": [
                {"goods_out_line_id": str(line["goods_out_line_id"]), "external_system_reference1": line["external_system_reference1"],
                 "product": self._product_record(self._products[line["product_id"]]), "quantity": line["quantity"]}
                for line in s.lines
            ],
            "dispatched_at": _iso(s.dispatched_at),
            "external_system_reference1": s.attributes.get("external_system_reference1"),
            "external_system_reference2": s.attributes.get("external_system_reference2"),
            "external_system_reference3": s.attributes.get("external_system_reference3"),
            "created_at": _iso(s.created_at), "updated_at": _iso(s.updated_at),
        }

    def _goods_out_record(self, go: _GoodsOut) -> dict:
        a = go.attributes
        return {
            "id": str(go.id), "reference": go.reference, "goods_out_type": a.get("goods_out_type"), "priority": a.get("priority"),
            "expected_date_of_dispatch": a.get("expected_date_of_dispatch"), "actual_date_of_dispatch": a.get("actual_date_of_dispatch"),
            "goods_out_status": self._status_record(go.status), "account": self._account_record(go.account_id),
            "warehouse": self._warehouse_record(go.warehouse_id),
            "carrier": self._carrier_record(self._carriers.get(a.get("carrier_id"))),
            "carrier_service": self._service_record(self._services.get(a.get("carrier_service_id"))),
            "delivery_address": {**go.address, "code": f"ADDR{go.address_id}"} if go.address else None,
            "external_system_reference1": a.get("external_system_reference1"),
            "external_system_reference2": a.get("external_system_reference2"),
            "external_system_reference3": a.get("external_system_reference3"),
            "order_notes": a.get("order_notes"), "delivery_notes": a.get("delivery_notes"),
            "lines": [self._line_record(line, go) for line in go.lines],
            "shipments": [self._shipment_record(self._shipments[s]) for s in go.shipment_ids],
            "created_at": _iso(go.created_at), "updated_at": _iso(go.updated_at),
        }

    def _ordered(self, balance: _Balance) -> float:
        return sum(
            line.unallocated
            for go in self._goods_outs.values()
            if go.status not in FINAL_STATUSES and go.account_id == balance.account_id and go.warehouse_id == balance.warehouse_id
            for line in go.lines
            if line.product_id == balance.product_id
        )

    def _balance_record(self, b: _Balance) -> dict:
        return {
            "id": str(b.id), "available": _qty(b.available), "allocated": _qty(b.allocated), "ordered": _qty(self._ordered(b)),
            "received": _qty(b.received), "picked": _qty(b.picked), "on_hand": _qty(b.on_hand),
            "product": self._product_record(self._products[b.product_id]), "account": self._account_record(b.account_id),
            "warehouse": self._warehouse_record(b.warehouse_id), "updated_at": _iso(b.updated_at),
        }

    def _transaction_record(self, t: _Transaction) -> dict:
        go = self._goods_outs.get(t.goods_out_id) if t.goods_out_id else None
        receipt = self._receipts.get(t.goods_in_receipt_id) if t.goods_in_receipt_id else None
        return {
            "id": str(t.id), "subtype": t.subtype, "category": {"ADJ": "ADJUSTMENT", "DESP": "DISPATCH", "RCV": "RECEIPT"}.get(t.subtype, t.subtype),
            "quantity": t.quantity, "created_at": _iso(t.created_at), "product": self._product_record(self._products[t.product_id]),
            "account": self._account_record(t.account_id), "warehouse": self._warehouse_record(t.warehouse_id),
            "goods_out": self._goods_out_ref(go) if go else None,
            "goods_in_receipt": {"id": str(receipt.id), "reference": receipt.reference} if receipt else None,
            "location_from": {"id": str(t.location_from[0]), "code": t.location_from[1]} if t.location_from else None,
            "location_to": {"id": str(t.location_to[0]), "code": t.location_to[1]} if t.location_to else None,
            "completing_user": {"id": "210"},
        }

    def _receipt_record(self, r: _Receipt) -> dict:
        a = r.attributes
        return {
            "id": str(r.id), "reference": r.reference, "status": r.status, "receipt_type": "standard",
            "expected_date_of_receipt": a.get("expected_date_of_arrival"), "actual_date_of_receipt": _iso(r.received_at),
            "notes": a.get("notes"), "account": self._account_record(r.account_id), "warehouse": self._warehouse_record(r.warehouse_id),
            "external_system_reference1": a.get("external_system_reference1"),
            "external_system_reference2": a.get("external_system_reference2"),
            "external_system_reference3": a.get("external_system_reference3"),
            "lines": [
                {"id": str(line.id), "product": self._product_record(self._products[line.product_id]),
                 "expected_quantity": _qty(line.expected_quantity), "received_quantity": _qty(line.received_quantity),
                 "external_system_reference1": line.attributes.get("external_system_reference1")}
                for line in r.lines
            ],
            "created_at": _iso(r.created_at), "updated_at": _iso(r.updated_at),
        }

    # ------------------------------------------------------------------ GraphQL listings

    def _listing(self, root: str) -> Listing:
        """Called by the GraphQL layer while the request holds the lock."""
        if root == "goods_outs":
            rows = sorted(self._goods_outs.values(), key=lambda g: g.id)
            return Listing(lambda: rows, lambda g: g.id, self._goods_out_record, {
                "id": FilterField("id", lambda g: g.id),
                "reference": FilterField("str", lambda g: g.reference),
                "goods_out_status_code": FilterField("str", lambda g: g.status.name),
                "goods_out_type": FilterField("str", lambda g: g.attributes.get("goods_out_type")),
                "account_id": FilterField("id", lambda g: g.account_id),
                "warehouse_id": FilterField("id", lambda g: g.warehouse_id),
                "carrier_id": FilterField("id", lambda g: g.attributes.get("carrier_id")),
                "expected_date_of_dispatch": FilterField("dt", lambda g: g.attributes.get("expected_date_of_dispatch")),
                "external_system_reference1": FilterField("str", lambda g: g.attributes.get("external_system_reference1")),
                "external_system_reference2": FilterField("str", lambda g: g.attributes.get("external_system_reference2")),
                "external_system_reference3": FilterField("str", lambda g: g.attributes.get("external_system_reference3")),
                "product_code": FilterField("str", lambda g: [self._products[line.product_id].code for line in g.lines]),
                "created_at": FilterField("dt", lambda g: g.created_at),
                "updated_at": FilterField("dt", lambda g: g.updated_at),
            })
        if root == "goods_out_lines":
            pairs = sorted(((line, go) for go in self._goods_outs.values() for line in go.lines), key=lambda p: p[0].id)
            return Listing(lambda: pairs, lambda p: p[0].id, lambda p: self._line_record(*p), {
                "id": FilterField("id", lambda p: p[0].id),
                "goods_out_id": FilterField("id", lambda p: p[1].id),
                "product_id": FilterField("id", lambda p: p[0].product_id),
                "account_id": FilterField("id", lambda p: p[1].account_id),
                "warehouse_id": FilterField("id", lambda p: p[1].warehouse_id),
                "goods_out_status_code": FilterField("str", lambda p: p[1].status.name),
                "carrier_id": FilterField("id", lambda p: p[0].attributes.get("carrier_id") or p[1].attributes.get("carrier_id")),
                "order_quantity": FilterField("num", lambda p: p[0].order_quantity),
                "pick_quantity": FilterField("num", lambda p: p[0].picked),
                "product_code": FilterField("str", lambda p: self._products[p[0].product_id].code),
                "goods_out_reference": FilterField("str", lambda p: p[1].reference),
                "external_system_reference1": FilterField("str", lambda p: p[0].attributes.get("external_system_reference1")),
                "created_at": FilterField("dt", lambda p: p[0].created_at),
                "updated_at": FilterField("dt", lambda p: p[0].updated_at),
            })
        if root == "products":
            rows = sorted(self._products.values(), key=lambda p: p.id)
            return Listing(lambda: rows, lambda p: p.id, self._product_record, {
                "id": FilterField("id", lambda p: p.id),
                "code": FilterField("str", lambda p: p.code),
                "barcode": FilterField("str", lambda p: p.attributes.get("barcode")),
                "all_codes": FilterField("str", lambda p: [v for v in (p.code, *(p.attributes.get(k) for k in ("barcode", "case_barcode", "inner_barcode", "outer_barcode"))) if v]),
                "description": FilterField("str", lambda p: p.attributes.get("description")),
                "account_id": FilterField("id", lambda p: list(self.account_ids)),
                "product_type": FilterField("str", lambda p: p.attributes.get("product_type") or "single"),
                "external_system_reference1": FilterField("str", lambda p: p.attributes.get("external_system_reference1")),
                "created_at": FilterField("dt", lambda p: p.created_at),
                "updated_at": FilterField("dt", lambda p: p.updated_at),
            })
        if root == "stock_balances":
            rows = sorted(self._balances.values(), key=lambda b: b.id)
            return Listing(lambda: rows, lambda b: b.id, self._balance_record, {
                "product_id": FilterField("id", lambda b: b.product_id),
                "product_code": FilterField("str", lambda b: self._products[b.product_id].code),
                "account_id": FilterField("id", lambda b: b.account_id),
                "warehouse_id": FilterField("id", lambda b: b.warehouse_id),
                "available": FilterField("num", lambda b: b.available),
                "allocated": FilterField("num", lambda b: b.allocated),
                "picked": FilterField("num", lambda b: b.picked),
                "updated_at": FilterField("dt", lambda b: b.updated_at),
            })
        if root == "shipments":
            rows = sorted(self._shipments.values(), key=lambda s: s.id)
            return Listing(lambda: rows, lambda s: s.id, self._shipment_record, {
                "id": FilterField("id", lambda s: s.id),
                "reference": FilterField("str", lambda s: s.reference),
                "status": FilterField("str", lambda s: s.status),
                "carrier_id": FilterField("id", lambda s: s.carrier_id),
                "warehouse_id": FilterField("id", lambda s: s.warehouse_id),
                "goods_out_id": FilterField("id", lambda s: s.goods_out_id),
                "tracking_number": FilterField("str", lambda s: [t for t in (s.tracking_number, *(p.tracking_number for p in s.packages)) if t]),
                "created_at": FilterField("dt", lambda s: s.created_at),
                "updated_at": FilterField("dt", lambda s: s.updated_at),
            })
        if root == "packages":
            pairs = sorted(((p, s) for s in self._shipments.values() for p in s.packages), key=lambda x: x[0].id)
            return Listing(lambda: pairs, lambda x: x[0].id, lambda x: self._package_record(*x), {
                "id": FilterField("id", lambda x: x[0].id),
                "shipment_id": FilterField("id", lambda x: x[1].id),
                "shipment_reference": FilterField("str", lambda x: x[1].reference),
                "storage_unit_id": FilterField("id", lambda x: None),
                "storage_unit_type_code": FilterField("str", lambda x: "PARCEL"),
                "tracking_number": FilterField("str", lambda x: x[0].tracking_number),
            })
        if root == "transactions":
            rows = list(self._transactions)
            return Listing(lambda: rows, lambda t: t.id, self._transaction_record, {
                "id": FilterField("id", lambda t: t.id),
                "subtype": FilterField("str", lambda t: t.subtype),
                "category": FilterField("str", lambda t: self._transaction_record(t)["category"]),
                "product_id": FilterField("id", lambda t: t.product_id),
                "account_id": FilterField("id", lambda t: t.account_id),
                "warehouse_id": FilterField("id", lambda t: t.warehouse_id),
                "created_at": FilterField("dt", lambda t: t.created_at),
                "goods_out_id": FilterField("id", lambda t: t.goods_out_id),
                "goods_in_receipt_id": FilterField("id", lambda t: t.goods_in_receipt_id),
                "location_from_id": FilterField("id", lambda t: t.location_from[0] if t.location_from else None),
                "location_to_id": FilterField("id", lambda t: t.location_to[0] if t.location_to else None),
            })
        if root == "goods_in_receipts":
            rows = sorted(self._receipts.values(), key=lambda r: r.id)
            return Listing(lambda: rows, lambda r: r.id, self._receipt_record, {
                "id": FilterField("id", lambda r: r.id),
                "reference": FilterField("str", lambda r: r.reference),
                "status": FilterField("str", lambda r: r.status),
                "account_id": FilterField("id", lambda r: r.account_id),
                "warehouse_id": FilterField("id", lambda r: r.warehouse_id),
                "expected_date_of_receipt": FilterField("dt", lambda r: r.attributes.get("expected_date_of_arrival")),
                "external_system_reference1": FilterField("str", lambda r: r.attributes.get("external_system_reference1")),
                "created_at": FilterField("dt", lambda r: r.created_at),
                "updated_at": FilterField("dt", lambda r: r.updated_at),
            })
        if root == "carriers":
            rows = sorted(self._carriers.values(), key=lambda c: c["id"])
            return Listing(lambda: rows, lambda c: c["id"], self._carrier_record, {
                "id": FilterField("id", lambda c: c["id"]),
                "code": FilterField("str", lambda c: c["code"]),
                "name": FilterField("str", lambda c: c["name"]),
                "active": FilterField("bool", lambda c: True),
                "carrier_type": FilterField("str", lambda c: "custom"),
                "carrier_externally_registered": FilterField("bool", lambda c: False),
                "external_system_reference1": FilterField("str", lambda c: None),
                "created_at": FilterField("dt", lambda c: None),
            })
        if root == "carrier_services":
            rows = sorted(self._services.values(), key=lambda s: s["id"])
            return Listing(lambda: rows, lambda s: s["id"], self._service_record, {
                "id": FilterField("id", lambda s: s["id"]),
                "code": FilterField("str", lambda s: s["code"]),
                "name": FilterField("str", lambda s: s["name"]),
                "active": FilterField("bool", lambda s: True),
                "carrier_id": FilterField("id", lambda s: s["carrier_id"]),
                "carrier_code": FilterField("str", lambda s: self._carriers[s["carrier_id"]]["code"]),
                "external_preset_id": FilterField("id", lambda s: None),
            })
        raise KeyError(root)

    # ------------------------------------------------------------------ HTTP

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette):
        if self.auto_tick:
            self.start_ticker()
        try:
            yield
        finally:
            if self.auto_tick:
                self.stop_ticker()

    def _routes(self) -> list[Route]:
        api = self._api_endpoint
        return [
            Route("/oauth/token", self._token, methods=["POST"]),
            Route("/api/products", api("createProduct", lambda body, _: self._create_product(body)), methods=["POST"]),
            Route("/api/products/{id:int}", api("updateProduct", lambda body, pp: self._update_product(pp["id"], body)), methods=["PATCH"]),
            Route("/api/goods_outs", api("createGoodsOut", lambda body, _: self._create_goods_out(body)), methods=["POST"]),
            Route("/api/goods_outs/{id:int}", api("updateGoodsOut", lambda body, pp: self._update_goods_out(pp["id"], body)), methods=["PATCH"]),
            Route("/api/goods_outs/{id:int}/cancel", api("cancelGoodsOut", lambda body, pp: self._cancel_goods_out(pp["id"])), methods=["POST"]),
            Route("/api/shipments/{id:int}", api("updateShipment", lambda body, pp: self._update_shipment(pp["id"], body)), methods=["PATCH"]),
            Route("/api/goods_in_receipts", api("createGoodsInReceipt", lambda body, _: self._create_goods_in_receipt(body)), methods=["POST"]),
            Route("/graphql", self._graphql, methods=["POST"]),
            Route("/api/{rest:path}", self._api_not_found, methods=["GET", "POST", "PATCH", "PUT", "DELETE"]),
            # inspection API (never faulted)
            Route("/_sandbox/health", self._sb_health, methods=["GET"]),
            Route("/_sandbox/records", self._sb_records, methods=["GET"]),
            Route("/_sandbox/requests", self._sb_requests, methods=["GET"]),
            Route("/_sandbox/webhooks", self._sb_webhooks, methods=["GET"]),
            Route("/_sandbox/reset", self._sb_reset, methods=["POST"]),
            Route("/_sandbox/tick", self._sb_tick, methods=["POST"]),
            Route("/_sandbox/advance", self._sb_advance, methods=["POST"]),
            Route("/_sandbox/faults", self._sb_faults, methods=["GET", "POST", "PUT"]),
            Route("/_sandbox/stock", self._sb_set_stock, methods=["POST"]),
            Route("/_sandbox/products", self._sb_seed_product, methods=["POST"]),
            Route("/_sandbox/tokens/expire", self._sb_expire_tokens, methods=["POST"]),
            Route("/_sandbox/goods_outs/{id:int}/stall", self._sb_stall, methods=["POST"]),
            Route("/_sandbox/goods_in_receipts/{id:int}/receive", self._sb_receive, methods=["POST"]),
            Route("/_sandbox/{kind:str}", self._sb_kind, methods=["GET"]),
        ]

    def _mark(self, request: Request, operation: str) -> None:
        entry = request.scope.get("state", {}).get("clarus_log_entry")
        if entry is not None:
            entry["handled"] = True
            entry["operation"] = operation

    def _authenticate(self, request: Request) -> Response | None:
        header = request.headers.get("authorization", "")
        if not header.lower().startswith("bearer "):
            return _unauthorized("Authentication required - provide a valid Bearer token")
        token = header[7:].strip()
        with self._lock:
            expires = self._tokens.get(token)
        if expires is None or expires <= self.now():
            return _unauthorized("The access token is invalid or has expired")
        subdomain = request.headers.get("x-clarus-subdomain")
        if not subdomain:
            return _unauthorized("X-Clarus-Subdomain header is required")
        if subdomain != self.subdomain:
            return _unauthorized(f"unknown subdomain {subdomain!r} for this token")
        return None

    async def _token(self, request: Request) -> Response:
        self._mark(request, "oauthToken")
        raw = await request.body()
        content_type = request.headers.get("content-type", "")
        try:
            params = json.loads(raw) if "json" in content_type else dict(parse_qsl(raw.decode("utf-8")))
        except (ValueError, UnicodeDecodeError):
            return JSONResponse({"error": "invalid_request", "error_description": "unreadable body"}, status_code=400)
        if not isinstance(params, dict):
            return JSONResponse({"error": "invalid_request", "error_description": "body must be an object"}, status_code=400)
        client_id, client_secret = params.get("client_id"), params.get("client_secret")
        basic = request.headers.get("authorization", "")
        if basic.lower().startswith("basic "):
            try:
                client_id, _, client_secret = base64.b64decode(basic[6:]).decode("utf-8").partition(":")
            except (ValueError, UnicodeDecodeError):
                return JSONResponse({"error": "invalid_client"}, status_code=401)
        if params.get("grant_type") != "client_credentials":
            return JSONResponse({"error": "unsupported_grant_type", "error_description": "only client_credentials is supported"}, status_code=400)
        if not (secrets.compare_digest(str(client_id or ""), self.client_id) and secrets.compare_digest(str(client_secret or ""), self.client_secret)):
            return JSONResponse({"error": "invalid_client", "error_description": "Client authentication failed due to unknown client or wrong secret."}, status_code=401)
        token = secrets.token_urlsafe(32)
        issued = self.now()
        with self._lock:
            self._tokens[token] = issued + self.token_ttl_s
        return JSONResponse({"access_token": token, "token_type": "Bearer", "expires_in": int(self.token_ttl_s), "created_at": int(issued)})

    async def _read_json(self, request: Request) -> tuple[Any, bytes]:
        raw = await request.body()
        if not raw:
            return None, raw
        try:
            return json.loads(raw), raw
        except ValueError:
            raise ClarusError(422, [("bad_request", "request body is not valid JSON", None)]) from None

    def _api_endpoint(self, operation: str, handler: Callable[[Any, dict], dict]) -> Callable:
        async def endpoint(request: Request) -> Response:
            self._mark(request, operation)
            denied = self._authenticate(request)
            if denied is not None:
                return denied
            path = request.url.path
            try:
                body, raw = await self._read_json(request)
                problems = request_problems(request.method, path, raw or None)
                if problems:
                    raise ClarusError(422, [("validation_failed", p.message, p.source or None) for p in problems])
                with self._lock:
                    result = handler(body, request.path_params)
                    self._flush_stock_events()
                status = 200
            except ClarusError as exc:
                result, status = exc.body(), exc.status
                body = None
            self._check_response(request.method, path, status, result, request_body=body)
            lost = self._take_lost_response(request.method, path, status)
            if lost:
                await asyncio.sleep(lost["delay_s"])
                return JSONResponse({"errors": [{"code": lost["status"], "symbol": "upstream_error", "details": "Bad gateway"}]}, status_code=lost["status"])
            return JSONResponse(result, status_code=status)

        return endpoint

    def _take_lost_response(self, method: str, path: str, status: int) -> dict | None:
        if method == "GET" or status >= 300:
            return None
        with self._lock:
            for rule in self._lose:
                if rule["remaining"] > 0 and path.startswith(rule["path_prefix"]):
                    rule["remaining"] -= 1
                    return rule
        return None

    def _check_response(self, method: str, path: str, status: int, body: Any, request_body: Any = None) -> None:
        if not self.validate_responses:
            return
        problems = response_problems(method, path, status, body, request_body=request_body)
        if problems:
            record = {"method": method, "path": path, "status": status, "problems": [f"{p.source}: {p.message}" for p in problems]}
            log.error("clarus sandbox answered outside its spec: %s", record)
            self.response_problems.append(record)

    async def _api_not_found(self, request: Request) -> Response:
        self._mark(request, "notFound")
        denied = self._authenticate(request)
        if denied is not None:
            return denied
        return JSONResponse(ClarusError(404, [("not_found", f"no route for {request.method} {request.url.path}", None)]).body(), status_code=404)

    async def _graphql(self, request: Request) -> Response:
        self._mark(request, "graphql")
        denied = self._authenticate(request)
        if denied is not None:
            return denied
        try:
            body, raw = await self._read_json(request)
        except ClarusError as exc:
            return JSONResponse(exc.body(), status_code=exc.status)
        if not isinstance(body, dict) or not isinstance(body.get("query"), str):
            return JSONResponse({"errors": [{"message": "expected a JSON body with a 'query' string"}]}, status_code=400)
        operation = clarus_graphql.spec_operation(body["query"], body.get("operationName"))
        if operation:
            self._mark(request, operation)
            problems = request_problems("POST", graphql_path(operation), raw)
            if problems:
                return JSONResponse({"errors": [{"message": f"{p.source or 'body'}: {p.message}"} for p in problems]}, status_code=400)
        variables = body.get("variables")
        if variables is not None and not isinstance(variables, dict):
            return JSONResponse({"errors": [{"message": "'variables' must be an object"}]}, status_code=400)
        with self._lock:
            result = clarus_graphql.execute(self._schema, body["query"], variables, body.get("operationName"))
        if operation:
            self._check_response("POST", graphql_path(operation), 200, result, request_body=body)
        return JSONResponse(result)

    # ------------------------------------------------------------------ /_sandbox handlers

    async def _sb_health(self, request: Request) -> Response:
        return JSONResponse({"ok": True, "now": _iso(self.now()), "subdomain": self.subdomain})

    async def _sb_records(self, request: Request) -> Response:
        return JSONResponse(self.records())

    async def _sb_kind(self, request: Request) -> Response:
        getters: dict[str, Callable[[], list[dict]]] = {
            "goods_outs": self.goods_outs, "products": self.products, "shipments": self.shipments, "stock": self.stock_balances,
            "goods_in_receipts": self.goods_in_receipts, "transactions": self.transactions,
        }
        kind = request.path_params["kind"]
        if kind not in getters:
            return JSONResponse({"error": f"unknown record kind {kind!r}", "kinds": sorted(getters)}, status_code=404)
        rows = getters[kind]()
        reference = request.query_params.get("reference")
        if reference is not None:
            rows = [r for r in rows if r.get("reference") == reference]
        return JSONResponse(rows)

    async def _sb_webhooks(self, request: Request) -> Response:
        sender = self._sender
        return JSONResponse({
            "url_configured": bool(self._webhook_url),
            "emitted": self.webhooks_emitted(),
            "delivered": list(sender.delivered) if sender else [],
            "lost": list(sender.lost) if sender else [],
            "failed": list(sender.failed) if sender else [],
        })

    async def _sb_requests(self, request: Request) -> Response:
        since = int(request.query_params.get("since", 0))
        return JSONResponse(self.requests(since, request.query_params.get("path_prefix")))

    async def _sb_reset(self, request: Request) -> Response:
        self.reset()
        return JSONResponse({"ok": True})

    async def _json_body(self, request: Request) -> dict:
        raw = await request.body()
        return json.loads(raw) if raw else {}

    async def _sb_tick(self, request: Request) -> Response:
        body = await self._json_body(request)
        now = body.get("now")
        if isinstance(now, str):
            now = parse_datetime(now)
        return JSONResponse({"changes": self.tick(now), "now": _iso(self.now())})

    async def _sb_advance(self, request: Request) -> Response:
        body = await self._json_body(request)
        try:
            changes = self.advance(float(body.get("seconds", 0)))
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse({"changes": changes, "now": _iso(self.now())})

    async def _sb_faults(self, request: Request) -> Response:
        if request.method != "GET":
            body = await self._json_body(request)
            lose = body.pop("lose_next_responses", None)
            try:
                config = FaultConfig.preset(body.pop("level")) if "level" in body else self._faults
                known = {f.name for f in dataclass_fields(FaultConfig)}
                unknown = sorted(set(body) - known)
                if unknown:
                    raise ValueError(f"unknown fault setting(s) {unknown}; known: {sorted(known)}")
                if "latency_ms" in body:
                    body["latency_ms"] = tuple(body["latency_ms"])
                self.set_faults(config.with_(**body))
                if lose:
                    self.lose_next_responses(**lose)
            except (ValueError, TypeError) as exc:
                return JSONResponse({"error": str(exc)}, status_code=400)
        config = self._faults
        return JSONResponse({f.name: getattr(config, f.name) for f in dataclass_fields(FaultConfig)})

    async def _sb_set_stock(self, request: Request) -> Response:
        body = await self._json_body(request)
        product = body.get("sku", body.get("product_id"))
        if product is None:
            return JSONResponse({"error": "give 'sku' or 'product_id'"}, status_code=400)
        try:
            record = self.set_stock(product, available=body.get("available"), on_hand=body.get("on_hand"),
                                    account_id=body.get("account_id"), warehouse_id=body.get("warehouse_id"), emit=body.get("emit", True))
        except (KeyError, ValueError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse(record)

    async def _sb_seed_product(self, request: Request) -> Response:
        body = await self._json_body(request)
        try:
            code = body.pop("code")
            return JSONResponse(self.seed_product(code, body.pop("description", None), **body))
        except ClarusError as exc:
            return JSONResponse(exc.body(), status_code=exc.status)
        except (KeyError, TypeError, ValueError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)

    async def _sb_expire_tokens(self, request: Request) -> Response:
        self.expire_tokens()
        return JSONResponse({"ok": True})

    async def _sb_stall(self, request: Request) -> Response:
        body = await self._json_body(request)
        try:
            self.stall_goods_out(request.path_params["id"], bool(body.get("stalled", True)))
        except KeyError:
            return JSONResponse({"error": "no such goods out"}, status_code=404)
        return JSONResponse({"ok": True})

    async def _sb_receive(self, request: Request) -> Response:
        body = await self._json_body(request)
        try:
            return JSONResponse(self.receive_goods_in_receipt(request.path_params["id"], body.get("quantities")))
        except KeyError as exc:
            return JSONResponse({"error": str(exc)}, status_code=404)
