"""Step 1 of the orders flow, intake: landed Shopify order events -> orders held or released.

New `landed_events` rows of the Shopify order topics (webhooks and reconciliation reads),
in batches: parse, validate and map with polars, keep the newest payload per order, hold or
release, flag edits and cancellations of orders that already reached NetSuite or Clarus
(the order-changes step applies them). No network; every write goes through `order_flow`.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from datetime import datetime

import polars as pl

from clarus_pipelines.domain import order_flow as flow
from clarus_pipelines.domain.order_flow import OrderStatus
from clarus_pipelines.domain.orders import OrderVerdicts, parse_orders, validate_orders
from clarus_pipelines.exception_queue import utcnow
from clarus_pipelines.policies import Policies
from clarus_pipelines.state import StateStore
from clarus_pipelines.state.event_log import advance_consumer, new_events

log = logging.getLogger(__name__)

CONSUMER = "orders"  # the event-log consumer of the orders flow


# ----------------------------------------------------------------------------- intake


@dataclass
class IntakeReport:
    landings: int = 0
    applied: int = 0
    stale: int = 0
    duplicate: int = 0
    unparseable: int = 0
    held: int = 0
    released: int = 0
    ready: int = 0
    cancelled: int = 0
    edits_pending: int = 0
    cancels_pending: int = 0
    fulfilment_updates: int = 0  # fulfilled in Shopify, unchanged for the warehouse: not an edit

    def add(self, other: "IntakeReport") -> None:
        for name, value in asdict(other).items():
            setattr(self, name, getattr(self, name) + value)


def count_transitions(transitions: pl.DataFrame, status: str, prev: str | None = None) -> int:
    """How many orders moved to `status` (from `prev`, when given)."""
    rows = transitions.filter(pl.col("status") == status)
    if prev is not None:
        rows = rows.filter(pl.col("prev_status") == prev)
    return rows.height


def revalidate(
    con, policies: Policies, order_ids: list[str], *, now: datetime, cause: str | dict[str, str]
) -> tuple[OrderVerdicts | None, pl.DataFrame]:
    """Validate stored orders (not yet in the warehouse) against the current item master,
    ship-method table and Clarus carriers; hold or release them. Returns (verdicts, transitions)."""
    if not order_ids:
        return None, pl.DataFrame()
    stored = flow.frame(
        con,
        "SELECT order_id, payload::VARCHAR AS payload FROM orders WHERE order_id IN (SELECT unnest(?::VARCHAR[]))"
        " AND status IN (SELECT unnest(?::VARCHAR[]))",
        [order_ids, [s.value for s in flow.PRE_WMS]],
    )
    if stored.is_empty():
        return None, pl.DataFrame()
    parsed = parse_orders(stored["payload"], policies.sku_cleaning)
    verdicts = validate_orders(
        parsed, products=flow.products_table(con), policies=policies, known_carriers=flow.carriers_table(con)
    )
    flow.replace_lines(con, verdicts, verdicts.orders["order_id"].to_list())
    transitions = flow.apply_verdicts(con, verdicts, now=now, cause=cause)
    return verdicts, transitions


def intake_landed_orders(store: StateStore, policies: Policies, *, now: datetime | None = None,
                         batch_size: int = 5000, max_batches: int | None = None) -> IntakeReport:
    """Take in every new landed Shopify order event, `batch_size` at a time (no network)."""
    total = IntakeReport()
    batches = 0
    while max_batches is None or batches < max_batches:
        batches += 1
        now_ = now or utcnow()
        with store.write() as con:
            events = new_events(con, CONSUMER, source="shopify", topics=flow.ORDER_TOPICS, limit=batch_size)
            if not events:
                break
            landed = pl.DataFrame(
                [{k: e[k] for k in ("seq", "landing_id", "topic", "received_at", "payload")} for e in events],
                schema={"seq": pl.Int64, "landing_id": pl.Utf8, "topic": pl.Utf8, "received_at": pl.Datetime, "payload": pl.Utf8},
            )
            report = intake_batch(con, policies, landed, now=now_)
            advance_consumer(con, CONSUMER, int(landed["seq"].max()), now=now_)
        total.add(report)
        log.info("orders intake: %s", report)
        if len(events) < batch_size:
            break
    return total


def intake_batch(con, policies: Policies, landed: pl.DataFrame, *, now: datetime, record_landings: bool = True,
                 sync_holds: bool = True) -> IntakeReport:
    """Apply one batch of order payloads (`landing_id`, `topic`, `received_at`, `payload`)."""
    parsed = parse_orders(landed["payload"], policies.sku_cleaning)
    ids = parsed.orders["order_id"].drop_nulls().unique().to_list()
    fulfilled = parsed.orders.filter(pl.col("fulfillment_status").is_in(["fulfilled", "partial"]))["order_id"].drop_nulls()
    states = flow.order_states(con, ids).join(
        flow.warehouse_fingerprints(con, fulfilled.unique().to_list()), on="order_id", how="left")
    plan = flow.plan_intake(landed, parsed, states)
    flow.store_payloads(con, plan.latest, plan.payloads, now=now)
    causes = dict(zip(plan.payloads["order_id"].to_list(), plan.payloads["topic"].to_list()))
    _, transitions = revalidate(con, policies, plan.validate_ids, now=now, cause=causes)
    flow.cancel_before_warehouse(con, plan.cancel_now, now=now)
    flow.mark_change_pending(con, plan.cancel_pending, "cancel", causes=causes, now=now)
    flow.mark_change_pending(con, plan.edit_pending, "edit", causes=causes, now=now)
    if record_landings:
        flow.mark_landings(con, plan.landings, now=now)
    if sync_holds:
        flow.sync_hold_exceptions(con, policies, now=now)
    outcomes = plan.landings["outcome"].value_counts()
    counts = dict(zip(outcomes["outcome"].to_list(), outcomes["count"].to_list()))
    report = IntakeReport(
        landings=landed.height, applied=counts.get("applied", 0), stale=counts.get("stale", 0),
        duplicate=counts.get("duplicate", 0), unparseable=counts.get("unparseable", 0),
        cancelled=len(plan.cancel_now), edits_pending=len(plan.edit_pending), cancels_pending=len(plan.cancel_pending),
        fulfilment_updates=len(plan.fulfilment_updates),
    )
    if not transitions.is_empty():
        report.held = count_transitions(transitions, OrderStatus.HELD.value)
        report.released = count_transitions(transitions, OrderStatus.READY.value, OrderStatus.HELD.value)
        report.ready = count_transitions(transitions, OrderStatus.READY.value)
    return report
