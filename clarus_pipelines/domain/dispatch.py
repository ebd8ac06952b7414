"""Dispatch back to the channel, held for the ERP: the fix for the seed's race condition.

Clarus may report a goods out as dispatched before NetSuite has (or has committed) the
sales order. Each Clarus shipment therefore walks, in order and one step at a time:

    DISPATCHED_IN_WMS      Clarus shipped it; we recorded lines, carrier and tracking
      -> ERP_ORDER_CONFIRMED     NetSuite has the sales order and it is committed
      -> ITEM_FULFILMENT_POSTED  item fulfilment created from the sales order (transform),
                                 for exactly the lines and quantities of this shipment
      -> CHANNEL_FULFILLED       Shopify fulfilment created with tracking, carrier and URL
      -> CHANNEL_CONFIRMED       the fulfilment read back from Shopify, tracking as sent

The Shopify fulfilment is never created before the NetSuite item fulfilment is posted.
Several shipments of one order (partial or split dispatches) are each a shipment here and
each produce their own partial item fulfilment and partial Shopify fulfilment.

Resumable and idempotent: every remote write has an `outbound_writes` row keyed by the
shipment (intent recorded before the call, result after, each in its own short write;
no write lock is held across a network call). The connectors' writes are themselves
idempotent per our shipment id, so a run that crashed after the remote write but before
recording it repeats nothing: the re-run finds the record the first call made. State
changes are compare-and-set on the expected state, and one advancing pass runs at a
time per state database (an advisory lock file), so two runs cannot both fulfil a
shipment. A goods out event arriving twice changes nothing.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from enum import StrEnum
from typing import Any, Protocol

import duckdb

from clarus_pipelines.domain.ports import ConnectorError
from clarus_pipelines.domain.skus import clean_sku
from clarus_pipelines.domain.tracking import TrackingRules, shopify_tracking_company
from clarus_pipelines.exception_queue import Finding, utcnow
from clarus_pipelines.state.event_log import advance_consumer, new_events, record_reconciliation
from clarus_pipelines.policies import SkuCleaning
from clarus_pipelines.state import StateStore

log = logging.getLogger(__name__)


class DispatchState(StrEnum):
    DISPATCHED_IN_WMS = "DISPATCHED_IN_WMS"
    ERP_ORDER_CONFIRMED = "ERP_ORDER_CONFIRMED"
    ITEM_FULFILMENT_POSTED = "ITEM_FULFILMENT_POSTED"
    CHANNEL_FULFILLED = "CHANNEL_FULFILLED"
    CHANNEL_CONFIRMED = "CHANNEL_CONFIRMED"


SEQUENCE: tuple[DispatchState, ...] = tuple(DispatchState)
FINAL = DispatchState.CHANNEL_CONFIRMED
# which system each state is news from (order_events.system)
_STATE_SYSTEM = {
    DispatchState.DISPATCHED_IN_WMS: "clarus",
    DispatchState.ERP_ORDER_CONFIRMED: "netsuite",
    DispatchState.ITEM_FULFILMENT_POSTED: "netsuite",
    DispatchState.CHANNEL_FULFILLED: "shopify",
    DispatchState.CHANNEL_CONFIRMED: "shopify",
}
DISPATCHED_SHIPMENT_STATUSES = frozenset({"dispatched", "despatched", "shipped", "completed", "complete"})
DISPATCH_EVENTS = frozenset({"completed", "updated"})  # goods out events that may carry shipments


def next_state(state: DispatchState | str) -> DispatchState | None:
    index = SEQUENCE.index(DispatchState(state))
    return SEQUENCE[index + 1] if index + 1 < len(SEQUENCE) else None


# ------------------------------------------------------------------------ connectors


class NetSuitePort(Protocol):
    """What the dispatch flow needs from `NetSuiteResource`."""

    def get_sales_order_by_external_id(self, external_id: str) -> Mapping[str, Any] | None: ...

    def is_committed(self, so_id: str) -> bool: ...

    def transform_to_item_fulfilment(
        self, so_id: str, lines: Iterable[Mapping[str, Any]], *, shipment_id: str, memo: str | None = None,
        tracking_numbers: Iterable[str] = (),
    ) -> tuple[str, bool]: ...


class ShopifyPort(Protocol):
    """What the dispatch flow needs from `ShopifyResource`."""

    def get_fulfillment_orders(self, order_id: str) -> list[Mapping[str, Any]]: ...

    def list_fulfillments(self, order_id: str) -> list[Mapping[str, Any]]: ...

    def create_fulfillment(
        self, order_id: str, lines: Mapping[str, int], tracking_number: str | None = None,
        company: str | None = None, url: str | None = None,
    ) -> Any: ...

    def get_fulfillment(self, order_id: str, fulfillment_id: str) -> Mapping[str, Any] | None: ...

    def update_tracking(
        self, fulfillment_id: str, tracking_number: str, company: str | None = None, url: str | None = None,
    ) -> Mapping[str, Any]: ...


class DispatchBlocked(RuntimeError):
    """A step cannot be done with what the other system shows now: data a person must fix
    (a sales order without the line, Shopify with less left to fulfil). Retried later."""


BLOCKED = "blocked: "  # prefix of `shipments.last_error` for DispatchBlocked


# --------------------------------------------------------------------- parsing Clarus


@dataclass(frozen=True)
class ShipmentLine:
    sku: str
    quantity: int
    line_id: str | None = None  # the Shopify line item id, when Clarus carried it


@dataclass(frozen=True)
class ClarusShipment:
    shipment_id: str
    carrier: str | None
    service: str | None
    tracking_number: str | None
    dispatched_at: datetime | None
    lines: tuple[ShipmentLine, ...]


@dataclass(frozen=True)
class GoodsOutDispatch:
    goods_out_id: str
    reference: str | None
    external_ref: str | None  # external_system_reference1: our (Shopify) order id
    status_code: str | None
    shipments: tuple[ClarusShipment, ...]


class UnparseableDispatch(ValueError):
    """A goods out record that cannot be read as a dispatch (named field and why)."""


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _code(obj: Any) -> str | None:
    if isinstance(obj, Mapping):
        return _text(obj.get("code")) or _text(obj.get("name"))
    return _text(obj)


def _quantity(value: Any, where: str) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise UnparseableDispatch(f"{where}: quantity {value!r} is not a number") from None
    if number != int(number) or number < 0:
        raise UnparseableDispatch(f"{where}: quantity {value!r} is not a whole number of units")
    return int(number)


def parse_timestamp(value: Any) -> datetime | None:
    """A Clarus/Shopify ISO 8601 time as naive UTC (how the state database stores times)."""
    if value in (None, ""):
        return None
    if isinstance(value, datetime):
        moment = value
    else:
        moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    if moment.tzinfo is not None:
        moment = moment.astimezone(timezone.utc).replace(tzinfo=None)
    return moment


def parse_goods_out(record: Mapping[str, Any], sku_rule: SkuCleaning) -> GoodsOutDispatch:
    """The dispatched shipments in a Clarus goods out record (webhook `data` or GraphQL node)."""
    goods_out_id = _text(record.get("id"))
    if goods_out_id is None:
        raise UnparseableDispatch("goods out without an id")
    status = record.get("goods_out_status")
    status_code = _code(status) if isinstance(status, Mapping) else _text(status)
    completed = (status_code or "").upper() == "COMPLETED"
    shipments = []
    for index, raw in enumerate(record.get("shipments") or []):
        shipment_id = _text(raw.get("id"))
        if shipment_id is None:
            raise UnparseableDispatch(f"goods out {goods_out_id}: shipments[{index}] has no id")
        status_text = (_text(raw.get("status")) or "").lower()
        dispatched_at = parse_timestamp(raw.get("dispatched_at"))
        if not (status_text in DISPATCHED_SHIPMENT_STATUSES or dispatched_at or (completed and not status_text)):
            continue  # packed or manifested but not yet handed to the carrier
        tracking = _text(raw.get("tracking_number"))
        if tracking is None:
            tracking = next((_text(p.get("tracking_number")) for p in raw.get("packages") or [] if _text(p.get("tracking_number"))), None)
        lines: dict[str, list] = {}
        for line_index, line in enumerate(raw.get("lines") or []):
            where = f"goods out {goods_out_id} shipment {shipment_id} line {line_index}"
            product = line.get("product") or {}
            sku = clean_sku(_text(product.get("code")) or _text(line.get("sku")), sku_rule)
            if sku is None:
                raise UnparseableDispatch(f"{where}: no product code")
            quantity = _quantity(line.get("quantity"), where)
            if quantity == 0:
                continue
            entry = lines.setdefault(sku, [0, set()])
            entry[0] += quantity
            entry[1].add(_text(line.get("external_system_reference1")))
        if not lines:
            raise UnparseableDispatch(f"goods out {goods_out_id}: shipment {shipment_id} has no dispatched lines")
        shipments.append(
            ClarusShipment(
                shipment_id=shipment_id,
                carrier=_code(raw.get("carrier")) or _code(record.get("carrier")),
                service=_code(raw.get("carrier_service")) or _code(record.get("carrier_service")),
                tracking_number=tracking,
                dispatched_at=dispatched_at or parse_timestamp(record.get("actual_date_of_dispatch")),
                lines=tuple(
                    ShipmentLine(sku, qty, next(iter(ids)) if len(ids) == 1 and None not in ids else None)
                    for sku, (qty, ids) in sorted(lines.items())
                ),
            )
        )
    return GoodsOutDispatch(
        goods_out_id=goods_out_id,
        reference=_text(record.get("reference")),
        external_ref=_text(record.get("external_system_reference1")),
        status_code=status_code,
        shipments=tuple(shipments),
    )


# ------------------------------------------------------------------ recording dispatches


@dataclass
class RecordResult:
    outcome: str  # recorded, duplicate, no_shipments, order_unknown
    order_id: str | None = None
    new: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)


def add_order_event(
    con: duckdb.DuckDBPyConnection, order_id: str, system: str, state: str, cause: str, details: Mapping[str, Any], now: datetime
) -> None:
    con.execute(
        "INSERT INTO order_events (order_id, occurred_at, system, state, cause, details) VALUES (?, ?, ?, ?, ?, ?)",
        [order_id, now, system, state, cause, json.dumps(details, default=str, sort_keys=True)],
    )


def resolve_order_id(con: duckdb.DuckDBPyConnection, goods_out: GoodsOutDispatch) -> str | None:
    """Our (Shopify) order id for a Clarus goods out: its binding first, then its references."""
    row = con.execute(
        "SELECT our_id FROM bindings WHERE entity_type = 'order' AND clarus_id = ?", [goods_out.goods_out_id]
    ).fetchone()
    if row:
        return row[0]
    candidates = [c for c in (goods_out.external_ref,) if c]
    if candidates:
        row = con.execute("SELECT order_id FROM orders WHERE order_id = ?", [candidates[0]]).fetchone()
        if row:
            return row[0]
    if goods_out.reference:
        row = con.execute(
            "SELECT order_id FROM orders WHERE clarus_reference = ? OR order_name = ? ORDER BY clarus_reference = ? DESC LIMIT 1",
            [goods_out.reference, goods_out.reference, goods_out.reference],
        ).fetchone()
        if row:
            return row[0]
    return None


def record_goods_out(
    con: duckdb.DuckDBPyConnection,
    goods_out: GoodsOutDispatch,
    rules: TrackingRules,
    *,
    now: datetime,
    source: str,
    cause: str,
) -> RecordResult:
    """Store the goods out's dispatched shipments not seen before (inside a write).

    A shipment already stored is left alone, except that a corrected tracking number is
    taken while the Shopify fulfilment has not been created yet.
    """
    if not goods_out.shipments:
        return RecordResult("no_shipments")
    order_id = resolve_order_id(con, goods_out)
    if order_id is None:
        return RecordResult("order_unknown")
    result = RecordResult("duplicate", order_id)
    for shipment in goods_out.shipments:
        verdict = rules.check(shipment.carrier, shipment.tracking_number)
        existing = con.execute(
            "SELECT state, tracking_number, carrier_raw FROM shipments WHERE shipment_id = ?", [shipment.shipment_id]
        ).fetchone()
        if existing is None:
            con.execute(
                "INSERT INTO shipments (shipment_id, order_id, clarus_goods_out_id, clarus_reference, carrier, carrier_raw,"
                " service, tracking_number, tracking_raw, tracking_url, tracking_status, tracking_reason, state,"
                " dispatched_at, first_seen_at, source, attempts, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?)",
                [
                    shipment.shipment_id, order_id, goods_out.goods_out_id, goods_out.reference, verdict.carrier,
                    shipment.carrier, shipment.service, verdict.number, shipment.tracking_number, verdict.url,
                    verdict.status, verdict.reason, DispatchState.DISPATCHED_IN_WMS.value,
                    shipment.dispatched_at or now, now, source, now,
                ],
            )
            con.executemany(
                "INSERT INTO shipment_lines (shipment_id, sku, quantity, line_id) VALUES (?, ?, ?, ?)",
                [(shipment.shipment_id, line.sku, line.quantity, line.line_id) for line in shipment.lines],
            )
            add_order_event(
                con, order_id, "clarus", DispatchState.DISPATCHED_IN_WMS.value, cause,
                {
                    "shipment_id": shipment.shipment_id, "goods_out_id": goods_out.goods_out_id,
                    "carrier": verdict.carrier, "tracking_number": verdict.number, "tracking_status": verdict.status,
                    "lines": [{"sku": line.sku, "quantity": line.quantity} for line in shipment.lines],
                },
                now,
            )
            result.new.append(shipment.shipment_id)
            continue
        state, stored_number, stored_carrier = existing
        if (verdict.number, shipment.carrier) == (stored_number, stored_carrier):
            continue
        fulfilled = SEQUENCE.index(DispatchState(state)) >= SEQUENCE.index(DispatchState.CHANNEL_FULFILLED)
        if fulfilled and verdict.number is None:
            continue  # Shopify keeps the number it has: a fulfilment's tracking can be corrected, not removed
        # after the Shopify fulfilment exists, the corrected number is sent with update_tracking (see advance)
        con.execute(
            "UPDATE shipments SET carrier = ?, carrier_raw = ?, tracking_number = ?, tracking_raw = ?, tracking_url = ?,"
            " tracking_status = ?, tracking_reason = ?, attempts = 0, next_attempt_at = NULL, updated_at = ?"
            " WHERE shipment_id = ?",
            [
                verdict.carrier, shipment.carrier, verdict.number, shipment.tracking_number, verdict.url,
                verdict.status, verdict.reason, now, shipment.shipment_id,
            ],
        )
        add_order_event(
            con, order_id, "clarus", "TRACKING_UPDATED", cause,
            {"shipment_id": shipment.shipment_id, "from": stored_number, "to": verdict.number}, now,
        )
        result.updated.append(shipment.shipment_id)
    if result.new or result.updated:
        result.outcome = "recorded"
    return result


CONSUMER = "dispatch"  # our watermark in event_consumers
DISPATCH_TOPICS = tuple(f"goods_out/{event}" for event in sorted(DISPATCH_EVENTS))


def goods_out_record(payload: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The goods out a Clarus webhook body ``{"resource_name", "event", "data"}`` carries."""
    if not isinstance(payload, Mapping):
        return None
    data = payload.get("data")
    if isinstance(data, Mapping):
        return data
    return payload if "goods_out_status" in payload else None


def _park(con, goods_out: GoodsOutDispatch, record: Mapping[str, Any], source: str, now: datetime) -> None:
    con.execute(
        "INSERT INTO dispatch_unmatched (goods_out_id, reference, record, source, first_seen_at, last_tried_at, tries)"
        " VALUES (?, ?, ?, ?, ?, ?, 1) ON CONFLICT (goods_out_id) DO UPDATE SET record = excluded.record,"
        " reference = excluded.reference, last_tried_at = excluded.last_tried_at, tries = dispatch_unmatched.tries + 1",
        [goods_out.goods_out_id, goods_out.reference, json.dumps(record, default=str), source, now, now],
    )


def record_goods_out_record(
    con: duckdb.DuckDBPyConnection, record: Mapping[str, Any], rules: TrackingRules, sku_rule: SkuCleaning,
    *, now: datetime, source: str, cause: str,
) -> RecordResult:
    """Parse and record one goods out; one not tied to an order yet is parked for retries."""
    goods_out = parse_goods_out(record, sku_rule)
    result = record_goods_out(con, goods_out, rules, now=now, source=source, cause=cause)
    if result.outcome == "order_unknown":
        _park(con, goods_out, record, source, now)
    else:
        con.execute("DELETE FROM dispatch_unmatched WHERE goods_out_id = ?", [goods_out.goods_out_id])
    return result


def retry_unmatched(
    con: duckdb.DuckDBPyConnection, rules: TrackingRules, sku_rule: SkuCleaning, *, now: datetime
) -> Counter:
    """Try the parked goods outs again (their order may be bound by now)."""
    outcomes: Counter = Counter()
    rows = con.execute("SELECT goods_out_id, record::VARCHAR, source FROM dispatch_unmatched ORDER BY first_seen_at").fetchall()
    for goods_out_id, record, source in rows:
        try:
            result = record_goods_out_record(
                con, json.loads(record), rules, sku_rule, now=now, source=source, cause="dispatch matched to its order later"
            )
        except UnparseableDispatch as exc:  # cannot happen for a record parsed before, unless the rules changed
            log.warning("parked goods out %s: %s", goods_out_id, exc)
            continue
        outcomes["matched" if result.outcome != "order_unknown" else "still_unmatched"] += 1
        outcomes["shipments_new"] += len(result.new)
    return outcomes


def take_in_landings(
    store: StateStore, rules: TrackingRules, sku_rule: SkuCleaning, *, now: datetime | None = None, limit: int = 5000
) -> Counter:
    """Turn new landed goods out events into shipments, and retry the parked ones (one write)."""
    now = now or utcnow()
    outcomes: Counter = Counter()
    with store.write() as con:
        outcomes.update(retry_unmatched(con, rules, sku_rule, now=now))
        events = new_events(con, CONSUMER, source="clarus", topics=DISPATCH_TOPICS, limit=limit)
        for event in events:
            landing_id, topic = event["landing_id"], event["topic"]
            record = goods_out_record(json.loads(event["payload"]))
            new = 0
            if record is None:
                outcome = "unparseable"
            else:
                try:
                    result = record_goods_out_record(
                        con, record, rules, sku_rule, now=now, source="webhook", cause=f"clarus {topic} ({landing_id})"
                    )
                except UnparseableDispatch as exc:
                    log.warning("landing %s: %s", landing_id, exc)
                    outcome = "unparseable"
                else:
                    outcome, new = result.outcome, len(result.new)
            con.execute(
                "INSERT INTO dispatch_landings (landing_id, goods_out_id, outcome, shipments_new, processed_at)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (landing_id) DO NOTHING",
                [landing_id, _text(record.get("id")) if record else None, outcome, new, now],
            )
            outcomes[outcome] += 1
            outcomes["shipments_new"] += new
        if events:
            advance_consumer(con, CONSUMER, max(e["seq"] for e in events), now)
    return outcomes


def goods_outs_from_shipments(shipments: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Group GraphQL shipment nodes (each naming its goods out) into goods out records."""
    grouped: dict[str, dict[str, Any]] = {}
    for shipment in shipments:
        goods_out = shipment.get("goods_out") or {}
        goods_out_id = _text(goods_out.get("id"))
        if goods_out_id is None:
            log.warning("Clarus shipment %s names no goods out; skipped", shipment.get("id"))
            continue
        entry = grouped.setdefault(goods_out_id, {**goods_out, "id": goods_out_id, "shipments": []})
        entry["shipments"].append(shipment)
    return list(grouped.values())


@dataclass
class SweepResult:
    checked: int
    outcomes: Counter
    new_shipments: list[str]


def record_sweep(
    store: StateStore,
    shipments: Sequence[Mapping[str, Any]],
    rules: TrackingRules,
    sku_rule: SkuCleaning,
    *,
    window_start: datetime,
    now: datetime | None = None,
    run_id: str | None = None,
) -> SweepResult:
    """Record what a sweep of Clarus shipments found that no webhook had brought (one write)."""
    now = now or utcnow()
    outcomes: Counter = Counter()
    new: list[str] = []
    with store.write() as con:
        for record in goods_outs_from_shipments(shipments):
            try:
                result = record_goods_out_record(
                    con, record, rules, sku_rule, now=now, source="sweep", cause="clarus reconciliation sweep"
                )
            except UnparseableDispatch as exc:
                log.warning("sweep: %s", exc)
                outcomes["unparseable"] += 1
                continue
            outcomes[result.outcome] += 1
            new.extend(result.new)
        con.execute(
            "INSERT INTO dispatch_sweeps (run_at, window_start, checked, shipments_new, run_id) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT DO NOTHING",
            [now, window_start, len(shipments), len(new), run_id],
        )
        record_reconciliation(
            con, source="clarus", entity_type="shipment", window_start=window_start, checked=len(shipments),
            findings=[{"entity_id": s, "version": "dispatched", "topic": "goods_out/completed"} for s in new],
            run_id=run_id, now=now,
        )
    return SweepResult(len(shipments), outcomes, new)


def sweep_window_start(con: duckdb.DuckDBPyConnection, now: datetime, *, lookback: timedelta, overlap: timedelta) -> datetime:
    """Where the next sweep starts: the last sweep's time less an overlap, at most `lookback` ago."""
    row = con.execute("SELECT max(run_at) FROM dispatch_sweeps").fetchone()
    last = row[0] if row else None
    earliest = now - lookback
    return max(last - overlap, earliest) if last else earliest


# ----------------------------------------------------------------------- advancing


@dataclass(frozen=True)
class DispatchConfig:
    """Pacing of re-checks and retries (seconds)."""

    erp_recheck_s: float = 60.0  # first re-check of a dispatch held for the ERP
    erp_recheck_max_s: float = 600.0
    retry_base_s: float = 30.0  # after a failed call
    retry_max_s: float = 1800.0
    workers: int = 4  # orders advanced in parallel (shipments of one order go in sequence)

    def erp_delay(self, checks: int) -> timedelta:
        return timedelta(seconds=min(self.erp_recheck_s * 2 ** max(checks - 1, 0), self.erp_recheck_max_s))

    def retry_delay(self, attempts: int) -> timedelta:
        return timedelta(seconds=min(self.retry_base_s * 2 ** max(attempts - 1, 0), self.retry_max_s))


@dataclass(frozen=True)
class Shipment:
    """A shipment's row as the state machine needs it."""

    shipment_id: str
    order_id: str
    state: DispatchState
    carrier: str | None
    carrier_raw: str | None
    tracking_number: str | None
    tracking_url: str | None
    tracking_status: str | None
    netsuite_sales_order_id: str | None
    netsuite_fulfilment_id: str | None
    shopify_fulfilment_id: str | None
    tracking_sent: str | None
    attempts: int
    erp_wait_reason: str | None
    next_attempt_at: datetime | None
    lines: tuple[ShipmentLine, ...]
    order_lines: tuple[tuple[str, str | None, int], ...]  # (line_id, sku, quantity) of the order
    netsuite_items: Mapping[str, str]  # sku -> NetSuite item internal id
    # (status before, stored remote id) of the next remote write's intent, when the write that moved
    # the shipment here recorded it (see `_moved`); None: the step records it itself
    next_intent: tuple[str, str | None] | None = None


_SHIPMENT_COLUMNS = (
    "shipment_id, order_id, state, carrier, carrier_raw, tracking_number, tracking_url, tracking_status,"
    " netsuite_sales_order_id, netsuite_fulfilment_id, shopify_fulfilment_id, tracking_sent, coalesce(attempts, 0),"
    " erp_wait_reason, next_attempt_at"
)


def load_shipment(con: duckdb.DuckDBPyConnection, shipment_id: str, *, lines_of: Shipment | None = None) -> Shipment | None:
    """The shipment's row and lines; `lines_of`: the same shipment read earlier in this pass, whose
    lines, order lines and NetSuite item ids are kept (advancing changes only the row)."""
    row = con.execute(f"SELECT {_SHIPMENT_COLUMNS} FROM shipments WHERE shipment_id = ?", [shipment_id]).fetchone()
    if row is None:
        return None
    if lines_of is not None:
        lines = [(line.sku, line.quantity, line.line_id) for line in lines_of.lines]
        order_lines = list(lines_of.order_lines)
        items = list(lines_of.netsuite_items.items())
    else:
        lines = con.execute(
            "SELECT sku, quantity, line_id FROM shipment_lines WHERE shipment_id = ? ORDER BY sku", [shipment_id]
        ).fetchall()
        order_lines = con.execute(
            "SELECT line_id, sku, quantity FROM order_lines WHERE order_id = ? ORDER BY line_id", [row[1]]
        ).fetchall()
        items = con.execute(
            "SELECT sku, netsuite_item_id FROM items WHERE netsuite_item_id IS NOT NULL"
            " AND sku IN (SELECT sku FROM shipment_lines WHERE shipment_id = ?)",
            [shipment_id],
        ).fetchall()
    ns_so = row[8]
    if ns_so is None:
        bound = con.execute(
            "SELECT netsuite_id FROM bindings WHERE entity_type = 'order' AND our_id = ?", [row[1]]
        ).fetchone()
        ns_so = bound[0] if bound else None
    return Shipment(
        shipment_id=row[0], order_id=row[1], state=DispatchState(row[2]), carrier=row[3], carrier_raw=row[4],
        tracking_number=row[5], tracking_url=row[6], tracking_status=row[7], netsuite_sales_order_id=ns_so,
        netsuite_fulfilment_id=row[9], shopify_fulfilment_id=row[10], tracking_sent=row[11], attempts=row[12],
        erp_wait_reason=row[13], next_attempt_at=row[14],
        lines=tuple(ShipmentLine(sku, qty, line_id) for sku, qty, line_id in lines),
        order_lines=tuple((line_id, sku, qty) for line_id, sku, qty in order_lines),
        netsuite_items=dict(items),
    )


def _transition(
    con: duckdb.DuckDBPyConnection, shipment: Shipment, to: DispatchState, now: datetime, cause: str,
    details: Mapping[str, Any], **columns: Any,
) -> bool:
    """Move a shipment from the state we read to `to`; False when another run already did."""
    assert next_state(shipment.state) == to, f"{shipment.state} -> {to} is not a step of the sequence"
    stamp = {
        DispatchState.ERP_ORDER_CONFIRMED: "erp_confirmed_at",
        DispatchState.ITEM_FULFILMENT_POSTED: "fulfilment_posted_at",
        DispatchState.CHANNEL_FULFILLED: "channel_fulfilled_at",
        DispatchState.CHANNEL_CONFIRMED: "channel_confirmed_at",
    }[to]
    assignments = {
        "state": to.value, stamp: now, "updated_at": now, "attempts": 0, "last_error": None,
        "next_attempt_at": None, **columns,
    }
    names = list(assignments)
    # column names come from this module only; values are parameters
    moved = con.execute(
        "UPDATE shipments SET " + ", ".join(f"{name} = ?" for name in names)
        + " WHERE shipment_id = ? AND state = ? RETURNING shipment_id",
        [*assignments.values(), shipment.shipment_id, shipment.state.value],
    ).fetchall()
    if moved:
        add_order_event(
            con, shipment.order_id, _STATE_SYSTEM[to], to.value, cause, {"shipment_id": shipment.shipment_id, **details}, now
        )
    return bool(moved)


def _begin_outbound(con, key: str, system: str, operation: str, now: datetime) -> tuple[str, str | None]:
    """Record the intent of a remote write; returns (status before, stored remote id)."""
    row = con.execute("SELECT status, remote_id FROM outbound_writes WHERE idempotency_key = ?", [key]).fetchone()
    if row is None:
        con.execute(
            "INSERT INTO outbound_writes (idempotency_key, system, operation, status, attempts, created_at, updated_at)"
            " VALUES (?, ?, ?, 'pending', 1, ?, ?)",
            [key, system, operation, now, now],
        )
        return "new", None
    if row[0] != "done":
        con.execute(
            "UPDATE outbound_writes SET status = 'pending', attempts = attempts + 1, updated_at = ? WHERE idempotency_key = ?",
            [now, key],
        )
    return row[0], row[1]


def _finish_outbound(con, key: str, remote_id: str | None, now: datetime) -> None:
    con.execute(
        "UPDATE outbound_writes SET status = 'done', remote_id = ?, last_error = NULL, updated_at = ? WHERE idempotency_key = ?",
        [remote_id, now, key],
    )


def _fail_outbound(con, key: str, error: str, now: datetime) -> None:
    con.execute(
        "UPDATE outbound_writes SET status = 'failed', last_error = ?, updated_at = ? WHERE idempotency_key = ? AND status <> 'done'",
        [error[:2000], now, key],
    )


def item_fulfilment_key(shipment_id: str) -> str:
    return f"netsuite:item_fulfilment:{shipment_id}"


def shopify_fulfilment_key(shipment_id: str) -> str:
    return f"shopify:fulfilment:{shipment_id}"


def _remote_id(result: Any) -> str | None:
    if result is None:
        return None
    if isinstance(result, Mapping):
        for key in ("id", "internalId", "fulfillment_id"):
            if result.get(key) is not None:
                return str(result[key])
        inner = result.get("fulfillment")
        if isinstance(inner, Mapping) and inner.get("id") is not None:
            return str(inner["id"])
        return None
    return str(result)


# -- Shopify lines


def shopify_line_quantities(
    lines: Sequence[ShipmentLine],
    order_lines: Sequence[tuple[str, str | None, int]],
    fulfillment_orders: Iterable[Mapping[str, Any]] | None,
) -> dict[str, int]:
    """Shopify line item id -> quantity for a shipment.

    Clarus carries our Shopify line id on each shipped line, which is used as is. A line
    without it is matched by SKU to the order lines that still have that much left to
    fulfil in Shopify (`fulfillment_orders` is then required). Raises DispatchBlocked
    when Shopify has less left to fulfil than the shipment carries.
    """
    quantities: dict[str, int] = {}
    by_sku = [line for line in lines if line.line_id is None]
    for line in lines:
        if line.line_id is not None:
            quantities[line.line_id] = quantities.get(line.line_id, 0) + line.quantity
    if not by_sku:
        return quantities
    if fulfillment_orders is None:
        raise ValueError("fulfilment orders are needed to place lines without a Shopify line id")
    sku_of_line = {str(line_id): sku for line_id, sku, _ in order_lines}
    left: dict[str, int] = defaultdict(int)
    for fo in fulfillment_orders:
        if str(fo.get("status", "open")).lower() not in ("open", "in_progress"):
            continue
        for item in fo.get("line_items") or []:
            left[str(item.get("line_item_id"))] += int(item.get("fulfillable_quantity") or 0)
    for line_id in quantities:
        left[line_id] -= quantities[line_id]
    for line in by_sku:
        wanted = line.quantity
        for line_id, sku in sku_of_line.items():
            if sku != line.sku or left[line_id] <= 0 or wanted == 0:
                continue
            take = min(wanted, left[line_id])
            quantities[line_id] = quantities.get(line_id, 0) + take
            left[line_id] -= take
            wanted -= take
        if wanted:
            raise DispatchBlocked(f"Shopify has only {line.quantity - wanted} of {line.quantity} x {line.sku} left to fulfil")
    return quantities


def _fulfilment_line_quantities(fulfilment: Mapping[str, Any]) -> dict[str, int]:
    quantities: dict[str, int] = {}
    for item in fulfilment.get("line_items") or []:
        key = str(item.get("id"))
        quantities[key] = quantities.get(key, 0) + int(item.get("quantity") or 0)
    return quantities


def find_landed_fulfilment(
    fulfilments: Iterable[Mapping[str, Any]], quantities: Mapping[str, int], tracking_number: str | None, claimed: set[str]
) -> Mapping[str, Any] | None:
    """A live Shopify fulfilment with exactly this shipment's lines and tracking, not yet ours."""
    for fulfilment in fulfilments:
        if str(fulfilment.get("id")) in claimed:
            continue
        if str(fulfilment.get("status") or "").lower() in ("cancelled", "error", "failure"):
            continue
        if _tracking_numbers(fulfilment) != ({tracking_number} if tracking_number else set()):
            continue
        if _fulfilment_line_quantities(fulfilment) == {k: v for k, v in quantities.items() if v}:
            return fulfilment
    return None


# -- the steps


def _moved(con: duckdb.DuckDBPyConnection, shipment: Shipment, moved: bool, now: datetime) -> Shipment | None:
    """The shipment as the write that moved it left it, or None when another run moved it first.

    Read in that write, which also records the intent of the shipment's next remote write (the
    item fulfilment, the Shopify fulfilment): the next step makes its call without a transaction
    of its own first, and the intent is still recorded before the call.
    """
    if not moved:
        return None
    after = load_shipment(con, shipment.shipment_id, lines_of=shipment)
    if after is None or after.netsuite_sales_order_id is None:
        return after
    if after.state == DispatchState.ERP_ORDER_CONFIRMED:
        intent = _begin_outbound(con, item_fulfilment_key(after.shipment_id), "netsuite", "transform_item_fulfilment", now)
    elif after.state == DispatchState.ITEM_FULFILMENT_POSTED:
        intent = _begin_outbound(con, shopify_fulfilment_key(after.shipment_id), "shopify", "create_fulfillment", now)
    else:
        return after
    return replace(after, next_intent=intent)


def _confirm_erp(
    store: StateStore, shipment: Shipment, netsuite: NetSuitePort, config: DispatchConfig, now: datetime
) -> Shipment | str | None:
    """The shipment moved on when NetSuite committed its sales order; 'waiting_erp' when it has not
    (the re-check is scheduled); None when another run moved it."""
    sales_order_id = shipment.netsuite_sales_order_id
    if sales_order_id is None:
        found = netsuite.get_sales_order_by_external_id(shipment.order_id)
        sales_order_id = _remote_id(found) if found else None
    committed = bool(sales_order_id) and netsuite.is_committed(sales_order_id)
    with store.write() as con:
        if committed:
            return _moved(con, shipment, _transition(
                con, shipment, DispatchState.ERP_ORDER_CONFIRMED, now, "NetSuite sales order committed",
                {"sales_order_id": sales_order_id}, netsuite_sales_order_id=sales_order_id, erp_wait_reason=None,
                erp_checked_at=now,
            ), now)
        reason = "no sales order in NetSuite yet" if sales_order_id is None else "sales order not committed yet"
        checks = shipment.attempts + 1
        held = con.execute(
            "UPDATE shipments SET erp_checked_at = ?, erp_wait_reason = ?, netsuite_sales_order_id = ?, attempts = ?,"
            " next_attempt_at = ?, updated_at = ? WHERE shipment_id = ? AND state = ? RETURNING shipment_id",
            [
                now, reason, sales_order_id, checks, now + config.erp_delay(checks), now, shipment.shipment_id,
                DispatchState.DISPATCHED_IN_WMS.value,
            ],
        ).fetchall()
        if not held:
            return None
        if reason != shipment.erp_wait_reason:
            add_order_event(
                con, shipment.order_id, "pipeline", "DISPATCH_AWAITING_ERP", reason,
                {"shipment_id": shipment.shipment_id, "sales_order_id": sales_order_id}, now,
            )
    return "waiting_erp"


def netsuite_lines(shipment: Shipment) -> list[dict[str, Any]]:
    """The shipment's lines for the item fulfilment transform, by NetSuite item id."""
    missing = sorted(line.sku for line in shipment.lines if line.sku not in shipment.netsuite_items)
    if missing:
        raise DispatchBlocked(f"no NetSuite item id for SKU(s) {missing}: the item master has not synced them")
    return [{"item_id": shipment.netsuite_items[line.sku], "quantity": line.quantity} for line in shipment.lines]


def _post_item_fulfilment(store: StateStore, shipment: Shipment, netsuite: NetSuitePort, now: datetime) -> Shipment | None:
    key = item_fulfilment_key(shipment.shipment_id)
    if shipment.next_intent is not None:
        status, remote_id = shipment.next_intent
    else:
        with store.write() as con:
            status, remote_id = _begin_outbound(con, key, "netsuite", "transform_item_fulfilment", now)
    if status != "done" or remote_id is None:
        try:
            remote_id, _created = netsuite.transform_to_item_fulfilment(
                shipment.netsuite_sales_order_id, netsuite_lines(shipment), shipment_id=shipment.shipment_id,
                memo=f"Clarus shipment {shipment.shipment_id}",
                tracking_numbers=[shipment.tracking_number] if shipment.tracking_number else [],
            )
        except ValueError as exc:  # the sales order has no open line for a shipped item
            raise DispatchBlocked(str(exc)) from exc
        remote_id = _remote_id(remote_id)
        if remote_id is None:
            raise DispatchBlocked("NetSuite returned no item fulfilment id")
    return _record_step_result(
        store, shipment, key, remote_id, DispatchState.ITEM_FULFILMENT_POSTED, now, "NetSuite item fulfilment posted",
        {"item_fulfilment_id": remote_id, "sales_order_id": shipment.netsuite_sales_order_id},
        netsuite_fulfilment_id=remote_id,
    )


def _create_channel_fulfilment(store: StateStore, shipment: Shipment, shopify: ShopifyPort, now: datetime) -> Shipment | None:
    key = shopify_fulfilment_key(shipment.shipment_id)
    if shipment.next_intent is not None:
        status, remote_id = shipment.next_intent
    else:
        with store.write() as con:
            status, remote_id = _begin_outbound(con, key, "shopify", "create_fulfillment", now)
    if status == "done" and remote_id is not None:
        pass  # recorded as created; only the state change was lost
    else:
        needs_fos = any(line.line_id is None for line in shipment.lines)
        quantities = shopify_line_quantities(
            shipment.lines, shipment.order_lines, shopify.get_fulfillment_orders(shipment.order_id) if needs_fos else None
        )
        landed = None
        if status != "new":  # an earlier attempt may have created it before we could record it
            with store.read() as con:
                claimed = {
                    r[0] for r in con.execute(
                        "SELECT shopify_fulfilment_id FROM shipments WHERE order_id = ? AND shopify_fulfilment_id IS NOT NULL",
                        [shipment.order_id],
                    ).fetchall()
                }
            landed = find_landed_fulfilment(
                shopify.list_fulfillments(shipment.order_id), quantities, shipment.tracking_number, claimed
            )
        if landed is not None:
            remote_id = str(landed["id"])
            log.info("shipment %s: Shopify fulfilment %s already landed; recorded, not re-sent", shipment.shipment_id, remote_id)
        else:
            tracked = shipment.tracking_number is not None
            result = shopify.create_fulfillment(
                shipment.order_id, quantities, shipment.tracking_number,
                shopify_tracking_company(shipment.carrier, shipment.carrier_raw) if tracked else None,
                shipment.tracking_url if tracked else None,
            )
            remote_id = _remote_id(getattr(result, "fulfillment", result))
        if remote_id is None:
            raise DispatchBlocked("Shopify returned no fulfilment id")
    return _record_step_result(
        store, shipment, key, remote_id, DispatchState.CHANNEL_FULFILLED, now, "Shopify fulfilment created",
        {"fulfilment_id": remote_id, "tracking_number": shipment.tracking_number},
        shopify_fulfilment_id=remote_id, tracking_sent=shipment.tracking_number,
    )


def _record_step_result(
    store: StateStore, shipment: Shipment, key: str, remote_id: str, to: DispatchState, now: datetime, cause: str,
    details: Mapping[str, Any], **columns: Any,
) -> Shipment | None:
    """Record a remote write's result and move the shipment on, in one write; the shipment as moved."""
    with store.write() as con:
        _finish_outbound(con, key, remote_id, now)
        return _moved(con, shipment, _transition(con, shipment, to, now, cause, details, **columns), now)


def _tracking_numbers(fulfilment: Mapping[str, Any]) -> set[str]:
    numbers = {str(n) for n in fulfilment.get("tracking_numbers") or [] if n}
    if fulfilment.get("tracking_number"):
        numbers.add(str(fulfilment["tracking_number"]))
    info = fulfilment.get("tracking_info")
    if isinstance(info, Mapping) and info.get("number"):
        numbers.add(str(info["number"]))
    return {n.replace(" ", "").upper() for n in numbers}


def _confirm_channel(store: StateStore, shipment: Shipment, shopify: ShopifyPort, now: datetime) -> Shipment | None:
    fulfilment = shopify.get_fulfillment(shipment.order_id, shipment.shopify_fulfilment_id)
    if isinstance(fulfilment, Mapping) and isinstance(fulfilment.get("fulfillment"), Mapping):
        fulfilment = fulfilment["fulfillment"]
    if not fulfilment:
        raise DispatchBlocked(f"Shopify has no fulfilment {shipment.shopify_fulfilment_id}")
    status = str(fulfilment.get("status") or "").lower()
    if status in ("cancelled", "error", "failure"):
        raise DispatchBlocked(f"Shopify fulfilment {shipment.shopify_fulfilment_id} is {status}")
    if shipment.tracking_number and shipment.tracking_number not in _tracking_numbers(fulfilment):
        raise DispatchBlocked(
            f"Shopify fulfilment {shipment.shopify_fulfilment_id} does not show tracking {shipment.tracking_number}"
        )
    with store.write() as con:
        return _moved(con, shipment, _transition(
            con, shipment, DispatchState.CHANNEL_CONFIRMED, now, "Shopify fulfilment read back",
            {"fulfilment_id": shipment.shopify_fulfilment_id, "status": status or None},
        ), now)


def tracking_update_pending(shipment: Shipment) -> bool:
    """The Shopify fulfilment exists but Clarus has since given (or corrected) the tracking number."""
    return (
        shipment.shopify_fulfilment_id is not None
        and shipment.tracking_number is not None
        and shipment.tracking_number != shipment.tracking_sent
    )


def _send_tracking(store: StateStore, shipment: Shipment, shopify: ShopifyPort, now: datetime) -> Shipment | None:
    """Put the shipment's current tracking number on its Shopify fulfilment (setting it is idempotent)."""
    shopify.update_tracking(
        shipment.shopify_fulfilment_id, shipment.tracking_number,
        shopify_tracking_company(shipment.carrier, shipment.carrier_raw), shipment.tracking_url,
    )
    with store.write() as con:
        updated = con.execute(
            "UPDATE shipments SET tracking_sent = ?, attempts = 0, last_error = NULL, next_attempt_at = NULL, updated_at = ?"
            " WHERE shipment_id = ? AND tracking_number = ? RETURNING shipment_id",
            [shipment.tracking_number, now, shipment.shipment_id, shipment.tracking_number],
        ).fetchall()
        if updated:
            add_order_event(
                con, shipment.order_id, "shopify", "TRACKING_POSTED", "tracking added to the Shopify fulfilment",
                {"shipment_id": shipment.shipment_id, "fulfilment_id": shipment.shopify_fulfilment_id,
                 "from": shipment.tracking_sent, "to": shipment.tracking_number},
                now,
            )
        return _moved(con, shipment, bool(updated), now)


def _record_failure(store: StateStore, shipment: Shipment, error: str, config: DispatchConfig, now: datetime) -> None:
    attempts = shipment.attempts + 1
    key = {
        DispatchState.ERP_ORDER_CONFIRMED: item_fulfilment_key(shipment.shipment_id),
        DispatchState.ITEM_FULFILMENT_POSTED: shopify_fulfilment_key(shipment.shipment_id),
    }.get(shipment.state)
    with store.write() as con:
        con.execute(
            "UPDATE shipments SET attempts = ?, last_error = ?, next_attempt_at = ?, updated_at = ?"
            " WHERE shipment_id = ? AND state = ?",
            [attempts, error[:2000], now + config.retry_delay(attempts), now, shipment.shipment_id, shipment.state.value],
        )
        if key:
            _fail_outbound(con, key, error, now)


Clock = Callable[[], datetime]


def _next_step(store: StateStore, shipment: Shipment, netsuite: NetSuitePort, shopify: ShopifyPort, now: datetime) -> Shipment | None:
    """The step after the ERP confirmation for the shipment's state."""
    if shipment.netsuite_sales_order_id is None:  # recorded at confirmation; its absence is a data error
        raise DispatchBlocked("no NetSuite sales order id recorded")
    if shipment.state == DispatchState.ERP_ORDER_CONFIRMED:
        return _post_item_fulfilment(store, shipment, netsuite, now)
    if shipment.state == DispatchState.ITEM_FULFILMENT_POSTED:
        return _create_channel_fulfilment(store, shipment, shopify, now)
    return _confirm_channel(store, shipment, shopify, now)


def advance_shipment(
    store: StateStore,
    shipment_id: str,
    netsuite: NetSuitePort,
    shopify: ShopifyPort,
    *,
    config: DispatchConfig = DispatchConfig(),
    clock: Clock = utcnow,
    force: bool = False,
) -> str:
    """Take one shipment as far as it can go now; returns where it stopped.

    'CHANNEL_CONFIRMED', 'waiting_erp', 'deferred' (not due yet), 'failed' (error recorded,
    retried after a backoff), 'raced' (another run moved it) or 'missing'. A tracking
    number Clarus gave or corrected after the Shopify fulfilment was created is sent to
    Shopify first.
    """
    # Read once; each step's own write reads the shipment as it left it (one transaction per step).
    with store.read() as con:
        shipment = load_shipment(con, shipment_id)
    if shipment is None:
        return "missing"
    for _ in SEQUENCE:
        if shipment.state == FINAL and not tracking_update_pending(shipment):
            return FINAL.value
        now = clock()
        if not force and shipment.next_attempt_at is not None and shipment.next_attempt_at > now:
            return "deferred"
        force = False
        try:
            if tracking_update_pending(shipment):
                moved = _send_tracking(store, shipment, shopify, now)
            elif shipment.state == DispatchState.DISPATCHED_IN_WMS:
                moved = _confirm_erp(store, shipment, netsuite, config, now)
                if moved == "waiting_erp":
                    return "waiting_erp"
            else:
                moved = _next_step(store, shipment, netsuite, shopify, now)
            if moved is None:
                return "raced"
            shipment = moved
        except (ConnectorError, DispatchBlocked) as exc:
            log.warning("shipment %s at %s: %s", shipment_id, shipment.state.value, exc)
            # "blocked:" marks what a person must fix (the stuck-state sync raises it at once);
            # a connector error is retried quietly until the alert time has passed
            error = f"{BLOCKED}{exc}" if isinstance(exc, DispatchBlocked) else f"{type(exc).__name__}: {exc}"
            _record_failure(store, shipment, error, config, now)
            return "failed"
    return "incomplete"


ERP_CONSUMER = "dispatch_erp"  # our watermark over NetSuite sales order webhooks
ERP_TOPICS = ("salesorder/create", "salesorder/update")

_ERP_EVENTS_FOR_WAITING_SQL = """
    SELECT s.shipment_id, max(e.seq) AS seq
    FROM landed_events e
    JOIN shipments s ON s.state = ? AND (s.order_id = e.parent_id OR s.netsuite_sales_order_id = e.entity_id)
    WHERE e.source = 'netsuite' AND e.topic IN (SELECT unnest(?)) AND e.seq > ?
    GROUP BY s.shipment_id
"""


def _erp_watermark(con: duckdb.DuckDBPyConnection) -> int:
    row = con.execute("SELECT last_seq FROM event_consumers WHERE consumer = ?", [ERP_CONSUMER]).fetchone()
    return int(row[0]) if row else 0


def erp_news_for_waiting(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    """Shipments held for NetSuite whose sales order changed (a webhook landed) since we last looked,
    with the newest such event's seq: the commit they wait for may have happened, so they should
    not sit out their re-check back-off."""
    return dict(con.execute(
        _ERP_EVENTS_FOR_WAITING_SQL, [DispatchState.DISPATCHED_IN_WMS.value, list(ERP_TOPICS), _erp_watermark(con)]
    ).fetchall())


def wake_on_erp_news(con: duckdb.DuckDBPyConnection, now: datetime) -> int:
    """Make every shipment with NetSuite news due at once (`next_attempt_at` cleared) and move the
    watermark past the sales order webhooks read; returns how many shipments were woken."""
    woken = list(erp_news_for_waiting(con))
    if woken:
        con.execute(
            "UPDATE shipments SET next_attempt_at = NULL, updated_at = ? WHERE shipment_id IN (SELECT unnest(?)) AND state = ?",
            [now, woken, DispatchState.DISPATCHED_IN_WMS.value],
        )
    newest = con.execute(
        "SELECT max(seq) FROM landed_events WHERE source = 'netsuite' AND topic IN (SELECT unnest(?))", [list(ERP_TOPICS)]
    ).fetchone()[0]
    if newest is not None:
        advance_consumer(con, ERP_CONSUMER, int(newest), now)
    return len(woken)


def due_shipments(con: duckdb.DuckDBPyConnection, now: datetime) -> list[tuple[str, str]]:
    """(order_id, shipment_id) of shipments due a step: not yet confirmed, or with a tracking
    number Shopify does not have yet."""
    return con.execute(
        "SELECT order_id, shipment_id FROM shipments"
        " WHERE (state <> ? OR (shopify_fulfilment_id IS NOT NULL AND tracking_number IS DISTINCT FROM tracking_sent"
        "   AND tracking_number IS NOT NULL))"
        " AND (next_attempt_at IS NULL OR next_attempt_at <= ?) ORDER BY first_seen_at, shipment_id",
        [FINAL.value, now],
    ).fetchall()


@contextlib.contextmanager
def advancing_lock(store: StateStore) -> Iterator[bool]:
    """One advancing pass at a time per state database (yields False when another holds it).

    Two runs moving the same shipment at once could both pass the "not yet fulfilled"
    look-up and fulfil units of another shipment of the order. The store's named lock
    (a lock file beside a DuckDB file, an advisory lock in PostgreSQL; released if the
    process dies) keeps passes apart.
    """
    with store.try_lock("dispatch") as held:
        yield held


def advance_all(
    store: StateStore,
    netsuite: NetSuitePort,
    shopify: ShopifyPort,
    *,
    config: DispatchConfig = DispatchConfig(),
    clock: Clock = utcnow,
) -> Counter:
    """Advance every due shipment; orders in parallel, one order's shipments in sequence.

    Returns outcome -> count; {'busy': 1} when another pass is running (it takes them all).
    """
    with advancing_lock(store) as mine:
        if not mine:
            log.info("another run is advancing the dispatches; leaving them to it")
            return Counter({"busy": 1})
        return _advance_all(store, netsuite, shopify, config=config, clock=clock)


def _advance_all(store: StateStore, netsuite: NetSuitePort, shopify: ShopifyPort, *, config: DispatchConfig, clock: Clock) -> Counter:
    with store.write() as con:  # a NetSuite commit webhook ends its shipments' ERP back-off now
        woken = wake_on_erp_news(con, clock())
    if woken:
        log.info("%d shipment(s) held for NetSuite have sales order news: re-checking them now", woken)
    with store.read() as con:
        due = due_shipments(con, clock())
    by_order: dict[str, list[str]] = defaultdict(list)
    for order_id, shipment_id in due:
        by_order[order_id].append(shipment_id)

    def run_order(shipment_ids: list[str]) -> list[str]:
        return [advance_shipment(store, s, netsuite, shopify, config=config, clock=clock) for s in shipment_ids]

    outcomes: Counter = Counter()
    if not by_order:
        return outcomes
    with ThreadPoolExecutor(max_workers=max(1, config.workers), thread_name_prefix="dispatch") as pool:
        for results in pool.map(run_order, by_order.values()):
            outcomes.update(results)
    return outcomes


# ------------------------------------------------------------------------ data checks

CHECK_WINDOW = timedelta(days=30)  # shipments first seen this recently are checked (and their exceptions synced)


@dataclass
class TrackingFindings:
    scope: list[str]  # shipment ids examined
    missing: list[Finding]
    malformed: list[Finding]
    reused: list[Finding]

    def invalid(self) -> list[Finding]:
        """TRACKING_INVALID findings: malformed and reused merged per shipment."""
        merged: dict[str, Finding] = {}
        for finding in [*self.malformed, *self.reused]:
            if finding.entity_id in merged:
                first = merged[finding.entity_id]
                finding = Finding(
                    finding.entity_id, f"{first.message}; {finding.message}", {**first.details, **finding.details}
                )
            merged[finding.entity_id] = finding
        return list(merged.values())


def tracking_findings(
    con: duckdb.DuckDBPyConnection, rules: TrackingRules, now: datetime, window: timedelta = CHECK_WINDOW
) -> TrackingFindings:
    """Shipments dispatched without tracking, with a malformed number, or with a number on another order."""
    rows = con.execute(
        "SELECT s.shipment_id, s.order_id, o.order_name, s.carrier_raw, s.tracking_raw, s.tracking_number"
        " FROM shipments s LEFT JOIN orders o USING (order_id) WHERE s.first_seen_at >= ? ORDER BY s.shipment_id",
        [now - window],
    ).fetchall()
    scope, missing, malformed = [], [], []
    for shipment_id, order_id, name, carrier, raw, _ in rows:
        scope.append(shipment_id)
        order = name or order_id
        details = {"order_id": order_id, "order_name": name, "carrier": carrier}
        verdict = rules.check(carrier, raw)
        if verdict.status == "missing":
            missing.append(Finding(shipment_id, f"shipment {shipment_id} of order {order} dispatched by {carrier or 'an unnamed carrier'} with no tracking number", details))
        elif verdict.status == "invalid":
            malformed.append(
                Finding(
                    shipment_id, f"shipment {shipment_id} of order {order}: {carrier} tracking {verdict.number}: {verdict.reason}",
                    {**details, "tracking_number": verdict.number, "problem": "malformed", "reason": verdict.reason},
                )
            )
    shared = con.execute(
        "SELECT tracking_number, list(DISTINCT order_id ORDER BY order_id), list(shipment_id ORDER BY shipment_id)"
        " FROM shipments WHERE tracking_number IS NOT NULL AND tracking_number IN ("
        "   SELECT tracking_number FROM shipments WHERE first_seen_at >= ? AND tracking_number IS NOT NULL)"
        " GROUP BY tracking_number HAVING count(DISTINCT order_id) > 1",
        [now - window],
    ).fetchall()
    in_scope = set(scope)
    reused = []
    for number, order_ids, shipment_ids in shared:
        for shipment_id in shipment_ids:
            if shipment_id in in_scope:
                reused.append(
                    Finding(
                        shipment_id,
                        f"tracking {number} is on {len(order_ids)} different orders",
                        {"tracking_number": number, "orders": order_ids, "shipments": shipment_ids, "problem": "reused"},
                    )
                )
    return TrackingFindings(scope, missing, malformed, reused)


def over_dispatch_findings(
    con: duckdb.DuckDBPyConnection, now: datetime, window: timedelta = CHECK_WINDOW
) -> tuple[list[str], list[Finding]]:
    """(orders examined, orders with a SKU dispatched in a larger quantity than ordered).

    "Ordered" is what the customer bought: a line's quantity as placed (Shopify keeps it in
    `quantity`), not what is left after refunds, returns or removals (`current_quantity`).
    """
    rows = con.execute(
        "WITH recent AS (SELECT DISTINCT order_id FROM shipments WHERE first_seen_at >= ?),"
        " shipped AS (SELECT s.order_id, l.sku, sum(l.quantity)::INTEGER AS shipped FROM shipment_lines l"
        "   JOIN shipments s USING (shipment_id) WHERE s.order_id IN (SELECT order_id FROM recent) GROUP BY ALL),"
        " placed AS (SELECT o.order_id, unnest(from_json(json_extract(o.payload, '$.line_items'),"
        "   '[{\"id\": \"VARCHAR\", \"quantity\": \"INTEGER\", \"current_quantity\": \"INTEGER\"}]'), recursive := true)"
        "   FROM orders o WHERE o.order_id IN (SELECT order_id FROM recent) AND o.payload IS NOT NULL),"
        " ordered AS (SELECT ol.order_id, ol.sku,"
        "   sum(greatest(ol.quantity, coalesce(p.quantity, 0), coalesce(p.current_quantity, 0)))::INTEGER AS ordered"
        "   FROM order_lines ol LEFT JOIN placed p ON p.order_id = ol.order_id AND p.id = ol.line_id"
        "   WHERE ol.order_id IN (SELECT order_id FROM recent) GROUP BY ALL)"
        " SELECT r.order_id, any_value(o.order_name),"
        "   list(struct_pack(sku := sh.sku, shipped := sh.shipped, ordered := coalesce(od.ordered, 0)) ORDER BY sh.sku)"
        "     FILTER (WHERE sh.shipped > coalesce(od.ordered, 0))"
        " FROM recent r LEFT JOIN orders o USING (order_id)"
        " LEFT JOIN shipped sh ON sh.order_id = r.order_id"
        " LEFT JOIN ordered od ON od.order_id = sh.order_id AND od.sku = sh.sku"
        " GROUP BY r.order_id ORDER BY r.order_id",
        [now - window],
    ).fetchall()
    scope, findings = [], []
    for order_id, name, excess in rows:
        scope.append(order_id)
        if not excess:
            continue
        text = ", ".join(f"{e['sku']} {e['shipped']} shipped / {e['ordered']} ordered" for e in excess)
        findings.append(Finding(order_id, f"order {name or order_id} dispatched more than ordered: {text}", {"order_name": name, "lines": excess}))
    return scope, findings


def shipment_state_counts(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    counts = dict(con.execute("SELECT state, count(*) FROM shipments GROUP BY state").fetchall())
    return {state.value: int(counts.get(state.value, 0)) for state in SEQUENCE}
