"""Each order's journey in the state database: the state machine and its DuckDB writes.

Statuses (`orders.status`):

    RECEIVED -> HELD <-> READY -> SENT_TO_ERP -> SENT_TO_WMS -> ACKNOWLEDGED -> (dispatch flow)
                  \\        \\          \\              \\
                   +--------+----------+--------------+--> CANCELLED
    SENT_TO_WMS -> WMS_REJECTED (Clarus answered 422; re-validated and re-sent on the next landing)
    READY -> SENT_TO_WMS directly when NetSuite is unreachable; the sales order is then owed
    (`OWE_ERP`) and created by a later send, recorded as a SENT_TO_ERP event, status unchanged.

Edits and cancellations of an order Clarus already has are not applied at intake: they
set `change_pending` ('edit' or 'cancel') and the order-changes step applies them.
Every transition is an `order_events` row with time and cause, and is checked against
`TRANSITIONS` first (`IllegalTransition` otherwise): this module is the only writer of
`orders` rows. Functions here take an open connection inside `StateStore.write()` and
never call other systems; the steps that call them (intake, send, re-check, apply
changes) live in `order_intake`, `order_send` and `order_changes`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

import duckdb
import polars as pl

from clarus_pipelines.domain.orders import HOLD_CODES, OrderVerdicts, ParsedOrders
from clarus_pipelines.exception_queue import Finding, clear_exception, raise_exception, sync_exceptions, utcnow
from clarus_pipelines.policies import Policies


class OrderStatus(StrEnum):
    RECEIVED = "RECEIVED"
    HELD = "HELD"
    READY = "READY"
    SENT_TO_ERP = "SENT_TO_ERP"
    SENT_TO_WMS = "SENT_TO_WMS"
    ACKNOWLEDGED = "ACKNOWLEDGED"
    WMS_REJECTED = "WMS_REJECTED"
    CANCELLED = "CANCELLED"


_S = OrderStatus
# Every move an order may make (a status may also stay where it is, with a new event).
TRANSITIONS: dict[OrderStatus, frozenset[OrderStatus]] = {
    _S.RECEIVED: frozenset({_S.HELD, _S.READY, _S.SENT_TO_ERP, _S.CANCELLED}),
    _S.HELD: frozenset({_S.READY, _S.SENT_TO_ERP, _S.CANCELLED}),
    _S.READY: frozenset({_S.HELD, _S.SENT_TO_ERP, _S.SENT_TO_WMS, _S.CANCELLED}),
    _S.SENT_TO_ERP: frozenset({_S.HELD, _S.READY, _S.SENT_TO_WMS, _S.CANCELLED}),
    _S.SENT_TO_WMS: frozenset({_S.ACKNOWLEDGED, _S.WMS_REJECTED, _S.CANCELLED}),
    # an acknowledged order edited by replacement goes back to SENT_TO_WMS under its new reference
    _S.ACKNOWLEDGED: frozenset({_S.SENT_TO_WMS, _S.CANCELLED}),
    _S.WMS_REJECTED: frozenset({_S.HELD, _S.READY, _S.SENT_TO_ERP, _S.SENT_TO_WMS, _S.CANCELLED}),
    _S.CANCELLED: frozenset(),
}


class IllegalTransition(ValueError):
    """An order asked to move where its state machine does not go (a bug, never data)."""

    def __init__(self, order_id: str, current: str | None, wanted: str):
        super().__init__(f"order {order_id}: {current or 'unknown'} -> {wanted} is not a legal transition")
        self.order_id, self.current, self.wanted = order_id, current, wanted


def can_move(current: OrderStatus | str | None, wanted: OrderStatus | str) -> bool:
    """Whether an order in `current` may move to `wanted` (staying put is allowed, except
    for an order we do not have)."""
    if current is None:
        return False
    current, wanted = OrderStatus(current), OrderStatus(wanted)
    return current is wanted or wanted in TRANSITIONS[current]


def check_transition(order_id: str, current: OrderStatus | str | None, wanted: OrderStatus | str) -> None:
    if not can_move(current, wanted):
        raise IllegalTransition(order_id, None if current is None else str(current), str(wanted))


# Not yet in the warehouse: intake may re-validate these and replace their lines.
PRE_WMS = (OrderStatus.RECEIVED, OrderStatus.HELD, OrderStatus.READY, OrderStatus.SENT_TO_ERP, OrderStatus.WMS_REJECTED)
# Waiting for the send step.
SENDABLE = (OrderStatus.READY, OrderStatus.SENT_TO_ERP, OrderStatus.SENT_TO_WMS)
# In the warehouse (or on its way) while NetSuite was unreachable: the sales order is still owed.
OWE_ERP = (OrderStatus.SENT_TO_WMS, OrderStatus.ACKNOWLEDGED)

# Orders the send step has work for: a goods out or a sales order to create. The goods out does
# not wait for NetSuite (Clarus decides fulfilment; the ERP gate is on the dispatch side), so
# an order can be acknowledged by Clarus and still owe its sales order after a NetSuite outage.
_DUE_FOR_SENDING = """
    SELECT o.order_id FROM orders o
    LEFT JOIN bindings b ON b.entity_type = 'order' AND b.our_id = o.order_id
    WHERE o.change_pending IS NULL
      AND (o.status IN (SELECT unnest(?::VARCHAR[]))
           OR (o.status IN (SELECT unnest(?::VARCHAR[])) AND b.netsuite_id IS NULL))
    ORDER BY o.received_at, o.order_id
    LIMIT ?
"""


def open_exception_ids(con: duckdb.DuckDBPyConnection, code: str, order_ids: Sequence[str]) -> set[str]:
    """Which of these orders have an open exception of `code`."""
    return {r[0] for r in con.execute(
        "SELECT entity_id FROM exceptions WHERE code = ? AND status <> 'resolved' AND entity_id IN (SELECT unnest(?::VARCHAR[]))",
        [code, list(order_ids)]).fetchall()}


def due_for_sending(con: duckdb.DuckDBPyConnection, limit: int = 2000) -> list[str]:
    """Orders with a goods out or a NetSuite sales order still to create, oldest first."""
    return [r[0] for r in con.execute(
        _DUE_FOR_SENDING, [[s.value for s in SENDABLE], [s.value for s in OWE_ERP], limit]).fetchall()]

ORDER_TOPICS = ("orders/create", "orders/updated", "orders/edited", "orders/paid", "orders/cancelled")
CANCEL_TOPIC = "orders/cancelled"
_TOPIC_RANK = {"orders/create": 0, "orders/paid": 1, "orders/updated": 2, "orders/edited": 3, "orders/cancelled": 4}


def payload_hash(payload: str | Mapping[str, Any]) -> str:
    """SHA-256 of a payload's text (a dict is serialised canonically first)."""
    text = payload if isinstance(payload, str) else json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def payload_hashes(payloads: pl.Series) -> pl.Series:
    """`payload_hash` of every text in a column, computed by DuckDB in one vectorised pass."""
    texts = payloads.cast(pl.Utf8).alias("payload").to_frame()
    with duckdb.connect() as con:
        con.register("texts", texts)
        return con.sql("SELECT sha256(payload) AS payload_hash FROM texts").pl()["payload_hash"]


def frame(con: duckdb.DuckDBPyConnection, query: str, params: Sequence[Any] | None = None) -> pl.DataFrame:
    """A query's result as a polars frame.

    DuckDB refuses a new query while an earlier `execute()` result is half-fetched (a
    caller's `fetchone()`), so that result is run to its end first.
    """
    con.complete()
    return con.sql(query, params=list(params) if params is not None else None).pl()


# ------------------------------------------------------------------------------ events


def record_event(
    con: duckdb.DuckDBPyConnection,
    order_id: str,
    state: str,
    cause: str,
    *,
    system: str = "pipeline",
    details: Mapping[str, Any] | None = None,
    now: datetime | None = None,
) -> None:
    con.execute(
        "INSERT INTO order_events (order_id, occurred_at, system, state, cause, details) VALUES (?, ?, ?, ?, ?, ?)",
        [order_id, now or utcnow(), system, state, cause, json.dumps(details, default=str) if details else None],
    )


def record_events(con: duckdb.DuckDBPyConnection, events: pl.DataFrame, *, now: datetime, system: str = "pipeline") -> int:
    """Insert many events: `events` has `order_id`, `state`, `cause` (and optional `details` JSON text)."""
    if events.is_empty():
        return 0
    if "details" not in events.columns:
        events = events.with_columns(pl.lit(None, dtype=pl.Utf8).alias("details"))
    batch = events.select("order_id", "state", "cause", "details")
    con.register("_order_events_batch", batch)
    try:
        con.execute(
            "INSERT INTO order_events (order_id, occurred_at, system, state, cause, details)"
            " SELECT order_id, ?, ?, state, cause, details::JSON FROM _order_events_batch",
            [now, system],
        )
    finally:
        con.unregister("_order_events_batch")
    return batch.height


def set_status(
    con: duckdb.DuckDBPyConnection,
    order_id: str,
    status: OrderStatus,
    cause: str,
    *,
    system: str = "pipeline",
    details: Mapping[str, Any] | None = None,
    event_state: str | None = None,
    now: datetime | None = None,
) -> None:
    """Move one order to `status` and record the transition; `IllegalTransition` when the
    state machine does not allow it (nothing written)."""
    now = now or utcnow()
    con.complete()
    current = con.execute("SELECT status FROM orders WHERE order_id = ?", [order_id]).fetchone()
    check_transition(order_id, current[0] if current else None, status)
    con.execute(
        "UPDATE orders SET status = ?, updated_at = ?,"
        " held_since = CASE WHEN ? = 'HELD' THEN coalesce(held_since, ?) ELSE NULL END WHERE order_id = ?",
        [status.value, now, status.value, now, order_id],
    )
    if status is not OrderStatus.HELD:
        con.execute("DELETE FROM order_holds WHERE order_id = ?", [order_id])
    record_event(con, order_id, event_state or status.value, cause, system=system, details=details, now=now)


def warehouse_fingerprint(payload: str | Mapping[str, Any] | None) -> str | None:
    """What of a Shopify order the warehouse acts on: each line (id, variant, SKU, quantities),
    the shipping address and the shipping lines. Two versions with the same fingerprint are the
    same order to Clarus and NetSuite (a fulfilment or a tag changes the order, not the goods out)."""
    if payload is None:
        return None
    try:
        doc = json.loads(payload) if isinstance(payload, str) else payload
    except ValueError:
        return None
    order = doc.get("order", doc) if isinstance(doc, Mapping) else None
    if not isinstance(order, Mapping):
        return None
    lines = sorted(
        (str(li.get("id")), str(li.get("variant_id")), str(li.get("sku")), li.get("quantity"), li.get("current_quantity"))
        for li in order.get("line_items") or [] if isinstance(li, Mapping)
    )
    shipping = sorted(
        (str(sl.get("code")), str(sl.get("title")), bool(sl.get("is_removed")))
        for sl in order.get("shipping_lines") or [] if isinstance(sl, Mapping)
    )
    return payload_hash({"lines": lines, "shipping_address": order.get("shipping_address"), "shipping_lines": shipping})


# ---------------------------------------------------------------------------- reading


def warehouse_fingerprints(con: duckdb.DuckDBPyConnection, order_ids: Iterable[str]) -> pl.DataFrame:
    """`warehouse_fingerprint` of each given order's stored Shopify body (order_id, prev_fingerprint)."""
    rows = con.execute(
        "SELECT order_id, payload::VARCHAR FROM orders WHERE order_id IN (SELECT unnest(?::VARCHAR[]))", [list(order_ids)]
    ).fetchall()
    return pl.DataFrame([(order_id, warehouse_fingerprint(body)) for order_id, body in rows],
                        schema={"order_id": pl.Utf8, "prev_fingerprint": pl.Utf8}, orient="row")


def order_states(con: duckdb.DuckDBPyConnection, order_ids: Iterable[str]) -> pl.DataFrame:
    """Current status, Shopify timestamp, payload hash and bindings of the given orders."""
    return frame(
        con,
        "SELECT o.order_id, o.status AS prev_status, o.shopify_updated_at AS prev_updated_at,"
        " o.payload_hash AS prev_hash, o.hold_reasons AS prev_hold_codes, o.change_pending AS prev_change,"
        " b.netsuite_id, b.clarus_id"
        " FROM orders o LEFT JOIN bindings b ON b.entity_type = 'order' AND b.our_id = o.order_id"
        " WHERE o.order_id IN (SELECT unnest(?::VARCHAR[]))",
        [list(order_ids)],
    )


def products_table(con: duckdb.DuckDBPyConnection) -> pl.DataFrame:
    """Cleaned SKU -> Clarus product id (null until the product exists in Clarus)."""
    return frame(con, "SELECT sku, clarus_product_id FROM items")


def netsuite_items_table(con: duckdb.DuckDBPyConnection) -> pl.DataFrame:
    return frame(con, "SELECT sku, netsuite_item_id FROM items WHERE netsuite_item_id IS NOT NULL")


def carriers_table(con: duckdb.DuckDBPyConnection) -> pl.DataFrame:
    return frame(
        con,
        "SELECT carrier, service, carrier_id::BIGINT AS carrier_id, carrier_service_id::BIGINT AS carrier_service_id"
        " FROM clarus_carriers",
    )


# ----------------------------------------------------------------------------- intake


@dataclass(frozen=True)
class IntakePlan:
    """What intake will write, decided from a batch of landings and the stored state."""

    landings: pl.DataFrame  # landing_id, order_id, topic, outcome
    validate_ids: list[str]  # orders to (re)validate: new or not yet in the warehouse
    cancel_now: list[str]  # cancelled before anything reached another system
    cancel_pending: list[str]  # cancelled after reaching NetSuite or Clarus
    edit_pending: list[str]  # changed after reaching Clarus
    fulfilment_updates: list[str]  # fulfilled in Shopify, nothing changed for the warehouse: stored, not an edit
    latest: ParsedOrders  # one payload per order (the newest)
    payloads: pl.DataFrame  # order_id, topic, payload, payload_hash of `latest`


def plan_intake(landed: pl.DataFrame, parsed: ParsedOrders, states: pl.DataFrame) -> IntakePlan:
    """Decide, for a batch of landed order payloads, what happens to each order.

    `landed` (`landing_id`, `topic`, `received_at`, `payload`) is row-aligned with
    `parsed` (payload_index = row). `states` is `order_states` for the batch's orders,
    optionally with `prev_fingerprint` (`warehouse_fingerprints`): an order already in the
    warehouse whose new version is fulfilled in Shopify and unchanged for the warehouse is
    a fulfilment update (stored, not an edit: no order-changes run).
    """
    rows = (
        landed.with_row_index("payload_index")
        .with_columns(pl.col("payload_index").cast(pl.Int64))
        .join(
            parsed.orders.select("payload_index", "order_id", "updated_at", "cancelled_at", "fulfillment_status"),
            on="payload_index", how="left", maintain_order="left",
        )
        .with_columns(
            pl.col("updated_at").str.to_datetime(time_zone="UTC", strict=False).alias("_updated"),
            pl.col("topic").replace_strict(_TOPIC_RANK, default=-1, return_dtype=pl.Int64).alias("_topic_rank"),
        )
        .with_columns(payload_hashes(landed["payload"]).alias("payload_hash"))
    )
    unparseable = rows.filter(pl.col("order_id").is_null())
    rows = rows.filter(pl.col("order_id").is_not_null())
    newest = (
        rows.sort(["order_id", "_updated", "received_at", "_topic_rank"], nulls_last=False)
        .group_by("order_id", maintain_order=True)
        .last()
        .join(states, on="order_id", how="left", maintain_order="left")
        .with_columns(pl.col("prev_updated_at").str.to_datetime(time_zone="UTC", strict=False).alias("_prev_updated"))
    )
    is_stale = pl.col("_prev_updated").is_not_null() & pl.col("_updated").is_not_null() & (pl.col("_updated") < pl.col("_prev_updated"))
    is_duplicate = pl.col("prev_hash").is_not_null() & (pl.col("prev_hash") == pl.col("payload_hash"))
    # Shopify signs the body only, not the topic header: a cancellation is what the body
    # says (`cancelled_at`), never the topic alone (an orders/cancelled body without it is
    # handled as an update).
    is_cancel = pl.col("cancelled_at").is_not_null()
    fulfilled = pl.col("fulfillment_status").is_in(["fulfilled", "partial"]).fill_null(False)
    if "prev_fingerprint" in newest.columns:
        candidates = newest.filter(fulfilled & pl.col("prev_fingerprint").is_not_null())
        unchanged = [
            order_id for order_id, payload, before in candidates.select("order_id", "payload", "prev_fingerprint").iter_rows()
            if warehouse_fingerprint(payload) == before
        ]
    else:
        unchanged = []
    is_fulfilment_update = pl.col("order_id").is_in(unchanged)
    pre_wms = pl.col("prev_status").is_null() | pl.col("prev_status").is_in([s.value for s in PRE_WMS])
    reached_other_system = pl.col("netsuite_id").is_not_null() | pl.col("clarus_id").is_not_null()
    newest = newest.with_columns(
        pl.when(is_stale).then(pl.lit("stale"))
        .when(pl.col("prev_status") == OrderStatus.CANCELLED.value).then(pl.lit("ignored"))
        .when(is_duplicate & (pl.col("prev_status") != OrderStatus.WMS_REJECTED.value)).then(pl.lit("duplicate"))
        .when(is_cancel & pre_wms & reached_other_system.not_()).then(pl.lit("cancel_now"))
        .when(is_cancel).then(pl.lit("cancel_pending"))
        .when(pre_wms).then(pl.lit("validate"))
        .when(pl.col("prev_change") == "cancel").then(pl.lit("ignored"))
        .when(is_fulfilment_update & pl.col("prev_change").is_null()).then(pl.lit("fulfilment_update"))
        .otherwise(pl.lit("edit_pending"))
        .alias("decision")
    )
    winners = newest.filter(
        pl.col("decision").is_in(["cancel_now", "cancel_pending", "validate", "edit_pending", "fulfilment_update"]))
    winner_index = set(winners["payload_index"].to_list())
    # Every other landing of an order is stale (an older version) or a duplicate (the same one).
    reference = newest.select(
        "order_id", pl.col("decision").alias("_decision"), pl.col("_updated").alias("_newest"),
        pl.col("_prev_updated"),
    )
    outcome = (
        pl.when(pl.col("payload_index").is_in(list(winner_index))).then(pl.lit("applied"))
        .when(pl.col("_decision") == "stale").then(pl.lit("stale"))
        .when(pl.col("_updated") < pl.max_horizontal(pl.col("_newest"), pl.col("_prev_updated"))).then(pl.lit("stale"))
        .when(pl.col("_decision") == "ignored").then(pl.lit("ignored"))
        .otherwise(pl.lit("duplicate"))
    )
    rows = rows.join(reference, on="order_id", how="left", maintain_order="left")
    # orders/edited carries the `order_edit`, not the order: the orders/updated Shopify sends
    # with it (or the reconciliation read) brings the edited order itself.
    landings = pl.concat(
        [
            rows.select("landing_id", "order_id", "topic", outcome.alias("outcome")),
            unparseable.select(
                "landing_id", "order_id", "topic",
                pl.when(pl.col("topic") == "orders/edited").then(pl.lit("edit_notice")).otherwise(pl.lit("unparseable")).alias("outcome"),
            ),
        ]
    )

    def ids(decision: str) -> list[str]:
        return winners.filter(pl.col("decision") == decision)["order_id"].to_list()

    return IntakePlan(
        landings=landings,
        validate_ids=ids("validate"),
        cancel_now=ids("cancel_now"),
        cancel_pending=ids("cancel_pending"),
        edit_pending=ids("edit_pending"),
        fulfilment_updates=ids("fulfilment_update"),
        latest=parsed.take(winner_index),
        payloads=winners.select("order_id", "topic", "payload", "payload_hash"),
    )


def store_payloads(con: duckdb.DuckDBPyConnection, latest: ParsedOrders, payloads: pl.DataFrame, *, now: datetime) -> None:
    """Insert new orders / refresh the stored Shopify body of existing ones (status untouched)."""
    if payloads.is_empty():
        return
    batch = latest.orders.select(
        "order_id", "order_name", "financial_status", "currency", "total_price", "ship_country_code",
        pl.coalesce("shipping_code", "shipping_title").alias("shipping_method"),
        "created_at", "updated_at", "cancelled_at",
    ).join(payloads.select("order_id", "payload", "payload_hash"), on="order_id", how="inner")
    con.register("_orders_batch", batch)
    try:
        con.execute(
            "INSERT INTO orders (order_id, order_name, status, financial_status, currency, total_price, shipping_country,"
            " shipping_method, payload, payload_hash, created_at, received_at, updated_at, shopify_updated_at,"
            " shopify_cancelled_at)"
            " SELECT order_id, coalesce(order_name, order_id), 'RECEIVED', financial_status, currency,"
            " TRY_CAST(total_price AS DECIMAL(18, 2)), ship_country_code, shipping_method, payload::JSON, payload_hash,"
            " TRY_CAST(created_at AS TIMESTAMPTZ) AT TIME ZONE 'UTC', ?, ?, updated_at, cancelled_at FROM _orders_batch"
            " ON CONFLICT (order_id) DO UPDATE SET order_name = excluded.order_name,"
            " financial_status = excluded.financial_status, currency = excluded.currency,"
            " total_price = excluded.total_price, shipping_country = excluded.shipping_country,"
            " shipping_method = excluded.shipping_method, payload = excluded.payload,"
            " payload_hash = excluded.payload_hash, updated_at = excluded.updated_at,"
            " shopify_updated_at = excluded.shopify_updated_at, shopify_cancelled_at = excluded.shopify_cancelled_at",
            [now, now],
        )
        new_ids = frame(
            con,
            "SELECT b.order_id FROM _orders_batch b WHERE NOT EXISTS"
            " (SELECT 1 FROM order_events e WHERE e.order_id = b.order_id AND e.state = 'RECEIVED')",
        )
    finally:
        con.unregister("_orders_batch")
    record_events(
        con,
        new_ids.join(payloads.select("order_id", "topic"), on="order_id", how="left").select(
            "order_id", pl.lit("RECEIVED").alias("state"), pl.format("first seen in {}", pl.col("topic")).alias("cause")
        ),
        now=now,
        system="shopify",
    )


def replace_lines(con: duckdb.DuckDBPyConnection, verdicts: OrderVerdicts, order_ids: Sequence[str]) -> None:
    """Replace the stored lines of orders not yet in the warehouse with their current lines."""
    if not order_ids:
        return
    con.execute("DELETE FROM order_lines WHERE order_id IN (SELECT unnest(?::VARCHAR[]))", [list(order_ids)])
    lines = verdicts.lines.filter(pl.col("order_id").is_in(list(order_ids)) & pl.col("line_id").is_not_null()).select(
        "order_id", "line_id", "sku", "sku_raw", pl.col("quantity").fill_null(pl.col("ordered_quantity")).fill_null(0),
        "price", "title", "ships", "clarus_product_id",
    ).unique(["order_id", "line_id"], keep="first", maintain_order=True)
    if lines.is_empty():
        return
    con.register("_lines_batch", lines)
    try:
        con.execute(
            "INSERT INTO order_lines (order_id, line_id, sku, sku_raw, quantity, price, title, ships, clarus_product_id)"
            " SELECT order_id, line_id, sku, sku_raw, quantity::INTEGER, TRY_CAST(price AS DECIMAL(18, 2)), title, ships,"
            " clarus_product_id FROM _lines_batch"
        )
    finally:
        con.unregister("_lines_batch")


def apply_verdicts(
    con: duckdb.DuckDBPyConnection, verdicts: OrderVerdicts, *, now: datetime, cause: str | Mapping[str, str] = "validated"
) -> pl.DataFrame:
    """Hold or release each validated order; record the holds and the transitions.

    Only orders not yet in the warehouse are touched. `cause` (text, or order_id -> text)
    says what triggered the check (a webhook topic, the held-orders re-check...).
    Returns `order_id`, `prev_status`, `status`, `hold_codes` of the orders that changed.
    """
    if verdicts.orders.is_empty():
        return pl.DataFrame(schema={"order_id": pl.Utf8, "prev_status": pl.Utf8, "status": pl.Utf8, "hold_codes": pl.List(pl.Utf8)})
    ids = verdicts.orders["order_id"].to_list()
    prev = frame(
        con,
        "SELECT o.order_id, o.status AS prev_status, o.hold_reasons AS prev_codes, b.netsuite_id FROM orders o"
        " LEFT JOIN bindings b ON b.entity_type = 'order' AND b.our_id = o.order_id"
        " WHERE o.order_id IN (SELECT unnest(?::VARCHAR[]))",
        [ids],
    )
    causes = cause if isinstance(cause, Mapping) else {}
    default_cause = cause if isinstance(cause, str) else "validated"
    decided = (
        verdicts.orders.select("order_id", "status", "hold_codes")
        .join(prev, on="order_id", how="inner")
        .filter(pl.col("prev_status").is_in([s.value for s in PRE_WMS]))
        .with_columns(
            # Complete orders whose NetSuite sales order exists go straight back to SENT_TO_ERP.
            pl.when(pl.col("status") == "held").then(pl.lit(OrderStatus.HELD.value))
            .when(pl.col("netsuite_id").is_not_null()).then(pl.lit(OrderStatus.SENT_TO_ERP.value))
            .otherwise(pl.lit(OrderStatus.READY.value))
            .alias("new_status"),
            pl.col("order_id").replace_strict(causes, default=default_cause, return_dtype=pl.Utf8).alias("cause"),
        )
    )
    if decided.is_empty():
        return pl.DataFrame(schema={"order_id": pl.Utf8, "prev_status": pl.Utf8, "status": pl.Utf8, "hold_codes": pl.List(pl.Utf8)})
    for order_id, before, after in decided.select("order_id", "prev_status", "new_status").iter_rows():
        check_transition(order_id, before, after)
    con.register("_verdicts_batch", decided.select("order_id", "new_status", "hold_codes"))
    touched = decided["order_id"].to_list()
    try:
        con.execute(
            "UPDATE orders SET status = v.new_status,"
            " hold_reasons = CASE WHEN v.new_status = 'HELD' THEN v.hold_codes ELSE NULL END,"
            " held_since = CASE WHEN v.new_status = 'HELD' THEN coalesce(orders.held_since, ?) ELSE NULL END,"
            " last_checked_at = ?, updated_at = ?"
            " FROM _verdicts_batch v WHERE orders.order_id = v.order_id",
            [now, now, now],
        )
    finally:
        con.unregister("_verdicts_batch")
    # Holds: every reason of every held order, keeping when each was first seen.
    held_reasons = verdicts.reasons.join(
        decided.filter(pl.col("new_status") == OrderStatus.HELD.value).select("order_id"), on="order_id", how="semi"
    )
    con.register("_holds_batch", held_reasons)
    try:
        con.execute(
            "DELETE FROM order_holds WHERE order_id IN (SELECT unnest(?::VARCHAR[]))"
            " AND (order_id, code, message) NOT IN (SELECT order_id, code, message FROM _holds_batch)",
            [touched],
        )
        con.execute(
            "INSERT INTO order_holds (order_id, code, message, held_since) SELECT order_id, code, message, ?"
            " FROM _holds_batch ON CONFLICT DO NOTHING",
            [now],
        )
    finally:
        con.unregister("_holds_batch")

    reasons_json = held_reasons.group_by("order_id").agg(
        pl.struct("code", "message").alias("reasons")
    ).select("order_id", pl.struct("reasons").struct.json_encode().alias("details"))
    changed = decided.filter(
        (pl.col("prev_status") != pl.col("new_status"))
        | (
            (pl.col("new_status") == OrderStatus.HELD.value)
            & (pl.col("hold_codes").list.join(",") != pl.col("prev_codes").list.join(",").fill_null(""))
        )
    ).join(reasons_json, on="order_id", how="left", maintain_order="left")
    events = changed.select(
        "order_id",
        pl.when(pl.col("new_status") == OrderStatus.HELD.value).then(pl.lit("HELD"))
        .when(pl.col("prev_status") == OrderStatus.HELD.value).then(pl.lit("RELEASED"))
        .otherwise(pl.lit("READY")).alias("state"),
        pl.when(pl.col("new_status") == OrderStatus.HELD.value)
        .then(pl.format("{}: held for {}", pl.col("cause"), pl.col("hold_codes").list.join(", ")))
        .when(pl.col("prev_status") == OrderStatus.HELD.value)
        .then(pl.format("{}: complete now, released to the warehouse flow", pl.col("cause")))
        .otherwise(pl.format("{}: complete", pl.col("cause")))
        .alias("cause"),
        "details",
    )
    # A stale acceptance rejection no longer applies once the order is re-validated.
    for order_id in decided.filter(pl.col("prev_status") == OrderStatus.WMS_REJECTED.value)["order_id"].to_list():
        clear_exception(con, "WMS_REJECTED", order_id, now=now)
    record_events(con, events, now=now)
    return changed.select("order_id", "prev_status", pl.col("new_status").alias("status"), "hold_codes")


def mark_change_pending(
    con: duckdb.DuckDBPyConnection, order_ids: Sequence[str], change: str, *, causes: Mapping[str, str], now: datetime
) -> None:
    """Flag orders that reached another system for the order-changes step ('edit' or 'cancel')."""
    if not order_ids:
        return
    con.executemany(
        "UPDATE orders SET change_pending = ?, change_cause = ?, updated_at = ? WHERE order_id = ?",
        [[change, causes.get(o, change), now, o] for o in order_ids],
    )
    state = "CANCEL_REQUESTED" if change == "cancel" else "EDIT_RECEIVED"
    record_events(
        con,
        pl.DataFrame({"order_id": list(order_ids)}, schema={"order_id": pl.Utf8}).with_columns(
            pl.lit(state).alias("state"),
            pl.col("order_id").replace_strict(dict(causes), default=change, return_dtype=pl.Utf8).alias("cause"),
        ),
        now=now,
        system="shopify",
    )


def mark_landings(con: duckdb.DuckDBPyConnection, landings: pl.DataFrame, *, now: datetime) -> None:
    if landings.is_empty():
        return
    con.register("_landings_batch", landings.select("landing_id", "order_id", "topic", "outcome"))
    try:
        con.execute(
            "INSERT INTO order_landings (landing_id, order_id, topic, outcome, processed_at)"
            " SELECT landing_id, order_id, topic, outcome, ? FROM _landings_batch ON CONFLICT DO NOTHING",
            [now],
        )
    finally:
        con.unregister("_landings_batch")


def cancel_before_warehouse(con: duckdb.DuckDBPyConnection, order_ids: Sequence[str], *, now: datetime) -> None:
    """Orders cancelled in Shopify before reaching NetSuite or Clarus: nothing to undo."""
    for order_id in order_ids:
        set_status(
            con, order_id, OrderStatus.CANCELLED, "cancelled in Shopify before reaching the warehouse",
            system="shopify", now=now,
        )
        for code in HOLD_CODES:
            clear_exception(con, code, order_id, now=now)


# --------------------------------------------------------------- what Clarus was sent


def record_sent_body(con: duckdb.DuckDBPyConnection, order_id: str, body: Mapping[str, Any], *,
                     replacement_count: int | None = None) -> None:
    """Remember the goods out body sent (or about to be sent) to Clarus, and its reference.
    A replacement also stores which attempt it is ("#1001-R1" is attempt 1)."""
    reference = body["data"]["attributes"]["reference"]
    con.execute(
        "UPDATE orders SET sent_body = ?::JSON, clarus_reference = ?,"
        " replacement_count = coalesce(?, replacement_count) WHERE order_id = ?",
        [json.dumps(body), reference, replacement_count, order_id],
    )


def forget_sent_body(con: duckdb.DuckDBPyConnection, order_id: str) -> None:
    """Clarus refused the body: the next send builds it afresh."""
    con.execute("UPDATE orders SET sent_body = NULL WHERE order_id = ?", [order_id])


def clear_change_pending(con: duckdb.DuckDBPyConnection, order_id: str, *, now: datetime,
                         clarus_status: int | None = None) -> None:
    """The order-changes step is done with this order's edit or cancellation; keep the
    goods out status it read (a `GoodsOutStatus` number) when known."""
    con.execute(
        "UPDATE orders SET change_pending = NULL, change_cause = NULL, updated_at = ?,"
        " clarus_status = coalesce(?, clarus_status) WHERE order_id = ?",
        [now, None if clarus_status is None else int(clarus_status), order_id],
    )


# ---------------------------------------------------------------------- bindings etc.


def binding(con: duckdb.DuckDBPyConnection, entity_type: str, our_id: str) -> dict[str, Any] | None:
    rows = con.execute(
        "SELECT clarus_id, netsuite_id, shopify_id FROM bindings WHERE entity_type = ? AND our_id = ?",
        [entity_type, our_id],
    ).fetchall()
    return None if not rows else {"clarus_id": rows[0][0], "netsuite_id": rows[0][1], "shopify_id": rows[0][2]}


def bind(
    con: duckdb.DuckDBPyConnection,
    entity_type: str,
    our_id: str,
    *,
    clarus_id: str | None = None,
    netsuite_id: str | None = None,
    shopify_id: str | None = None,
    now: datetime | None = None,
    replace_clarus: bool = False,
) -> None:
    """Record remote ids for one of our entities; ids already known are kept unless replaced."""
    now = now or utcnow()
    con.execute(
        "INSERT INTO bindings (entity_type, our_id, clarus_id, netsuite_id, shopify_id, created_at, updated_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (entity_type, our_id) DO UPDATE SET"
        " clarus_id = CASE WHEN ? THEN excluded.clarus_id ELSE coalesce(excluded.clarus_id, bindings.clarus_id) END,"
        " netsuite_id = coalesce(excluded.netsuite_id, bindings.netsuite_id),"
        " shopify_id = coalesce(excluded.shopify_id, bindings.shopify_id), updated_at = excluded.updated_at",
        [entity_type, our_id, clarus_id, netsuite_id, shopify_id, now, now, replace_clarus],
    )


def outbound_key(system: str, operation: str, our_id: str) -> str:
    return f"{system}:{operation}:{our_id}"


def begin_outbound(con: duckdb.DuckDBPyConnection, keys: Mapping[str, tuple[str, str]], *, now: datetime) -> None:
    """Mark outbound writes as pending (key -> (system, operation)) before calling out."""
    if not keys:
        return
    con.executemany(
        "INSERT INTO outbound_writes (idempotency_key, system, operation, status, attempts, created_at, updated_at)"
        " VALUES (?, ?, ?, 'pending', 1, ?, ?) ON CONFLICT (idempotency_key) DO UPDATE SET"
        " status = CASE WHEN outbound_writes.status = 'done' THEN 'done' ELSE 'pending' END,"
        " attempts = outbound_writes.attempts + 1, updated_at = excluded.updated_at",
        [[key, system, operation, now, now] for key, (system, operation) in keys.items()],
    )


def supersede_outbound(con: duckdb.DuckDBPyConnection, prefix: str, keep: str, *, now: datetime) -> int:
    """Intents under `prefix` still pending from an earlier version (a run died before their
    call) are failed as superseded; `keep` is the current one. Returns how many."""
    con.complete()
    stale = [r[0] for r in con.execute(
        "SELECT idempotency_key FROM outbound_writes WHERE status = 'pending' AND starts_with(idempotency_key, ?)"
        " AND idempotency_key <> ?", [prefix, keep]).fetchall()]
    for key in stale:
        finish_outbound(con, key, status="failed", error="superseded by a newer version of the order", now=now)
    return len(stale)


def finish_outbound(
    con: duckdb.DuckDBPyConnection, key: str, *, status: str, remote_id: str | None = None,
    error: str | None = None, now: datetime | None = None,
) -> None:
    con.execute(
        "UPDATE outbound_writes SET status = ?, remote_id = coalesce(?, remote_id), last_error = ?, updated_at = ?"
        " WHERE idempotency_key = ?",
        [status, remote_id, error, now or utcnow(), key],
    )


def done_outbound(con: duckdb.DuckDBPyConnection, keys: Iterable[str]) -> dict[str, str | None]:
    """Keys already completed -> remote id (a retry reuses the stored result)."""
    rows = con.execute(
        "SELECT idempotency_key, remote_id FROM outbound_writes WHERE status = 'done'"
        " AND idempotency_key IN (SELECT unnest(?::VARCHAR[]))",
        [list(keys)],
    ).fetchall()
    return dict(rows)


# ------------------------------------------------------------------------ exceptions


def sync_hold_exceptions(con: duckdb.DuckDBPyConnection, policies: Policies, *, now: datetime) -> dict[str, dict[str, str]]:
    """Raise a hold's exception to its owner once the order is held past `held_alert_minutes`;
    clear it once the order is released or cancelled. Covers every order (full sync)."""
    threshold = now - timedelta(minutes=policies.timings.held_alert_minutes)
    held = frame(
        con,
        "SELECT h.order_id, o.order_name, h.code, list(h.message ORDER BY h.message) AS messages,"
        " min(o.held_since) AS held_since"
        " FROM order_holds h JOIN orders o USING (order_id)"
        " WHERE o.status = 'HELD' AND o.held_since <= ? GROUP BY h.order_id, o.order_name, h.code",
        [threshold],
    )
    outcome: dict[str, dict[str, str]] = {}
    for code in HOLD_CODES:
        rows = held.filter(pl.col("code") == code)
        findings = [
            Finding(
                r["order_id"],
                f"order {r['order_name']} held since {r['held_since']:%Y-%m-%d %H:%M} UTC: " + "; ".join(r["messages"]),
                {"order_name": r["order_name"], "reasons": r["messages"], "held_since": r["held_since"]},
            )
            for r in rows.iter_rows(named=True)
        ]
        outcome[code] = sync_exceptions(con, code, findings, policies=policies, now=now)
    return outcome


def raise_wms_rejected(
    con: duckdb.DuckDBPyConnection, order_id: str, order_name: str, clarus_code: Any, clarus_message: str,
    details: Any = None, *, policies: Policies | None = None, now: datetime | None = None,
) -> None:
    raise_exception(
        con, "WMS_REJECTED", order_id,
        f"Clarus rejected goods out {order_name}: {clarus_code} {clarus_message}",
        {"order_name": order_name, "clarus_code": clarus_code, "clarus_message": clarus_message, "clarus_details": details},
        policies=policies, now=now,
    )


def order_journey(con: duckdb.DuckDBPyConnection, order_id: str) -> list[dict[str, Any]]:
    """The order's events in time order (for the dashboard and explain)."""
    return frame(
        con,
        "SELECT occurred_at, system, state, cause, details FROM order_events WHERE order_id = ? ORDER BY event_id",
        [order_id],
    ).to_dicts()
