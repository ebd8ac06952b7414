"""Orders into the warehouse: landed Shopify orders -> held or released -> NetSuite -> Clarus.

Three assets, each a thin wrapper over a plain function that tests and the CLI can call:

- `shopify_orders` (`intake_landed_orders`): new `landed_events` rows of the Shopify order
  topics (webhooks and reconciliation reads), in batches: parse, validate and map with
  polars, keep the newest payload per order, hold or release, flag edits and
  cancellations of orders that already reached NetSuite or Clarus.
- `netsuite_sales_orders` + `clarus_goods_outs` (`send_ready_orders`): for released
  orders, create the NetSuite sales order and then the Clarus goods out; NetSuite being
  unreachable does not hold the goods out (the sales order follows in a later run, and the
  dispatch flow keeps the ERP gate; see docs/architecture.md). Idempotent: the
  bindings and `outbound_writes` say what was done, and the connectors' `ensure_*`
  look the record up by our reference before creating it, so a retry, a re-run or a
  duplicate webhook never makes a second one. A 422 from Clarus is WMS_REJECTED with
  Clarus's code and message.

The state file is never held across a network call: read, close, call, then write.
"""


import json
import logging
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import dagster as dg
import polars as pl

from clarus_pipelines.connectors.clarus import ClarusRejected, ClarusResource
from clarus_pipelines.domain.ports import ConnectorError
from clarus_pipelines.connectors.netsuite import NetSuiteResource
from clarus_pipelines.domain import order_flow as flow
from clarus_pipelines.domain.goods_out import body_dicts, build_goods_outs
from clarus_pipelines.domain.netsuite_orders import build_sales_orders, sales_order_dicts
from clarus_pipelines.domain.order_flow import OrderStatus
from clarus_pipelines.domain.orders import OrderVerdicts, parse_orders, validate_orders
from clarus_pipelines.exception_queue import clear_exception, raise_exception, utcnow
from clarus_pipelines.state.event_log import advance_consumer, new_events
from clarus_pipelines.resources import NetSuiteCustomerConfig, PoliciesResource, StateStoreResource
from clarus_pipelines.policies import Policies
from clarus_pipelines.state import StateStore

log = logging.getLogger(__name__)

CONSUMER = "orders"
# "Anonymous Customer", the web-order customer of NetSuite's published examples (and the sandbox).
SEND_CHUNK = 25  # orders per write -> calls -> write round


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


def _count(transitions: pl.DataFrame, status: str, prev: str | None = None) -> int:
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
        report.held = _count(transitions, OrderStatus.HELD.value)
        report.released = _count(transitions, OrderStatus.READY.value, OrderStatus.HELD.value)
        report.ready = _count(transitions, OrderStatus.READY.value)
    return report


# ------------------------------------------------------------------------------- send


@dataclass
class SendReport:
    considered: int = 0
    held_on_recheck: int = 0
    erp_created: int = 0
    erp_found: int = 0
    erp_failed: int = 0
    wms_created: int = 0
    wms_found: int = 0
    wms_rejected: int = 0
    wms_failed: int = 0
    skipped_systems: list[str] = field(default_factory=list)


def refresh_carriers(store: StateStore, clarus: ClarusResource, *, now: datetime | None = None) -> int:
    """Copy Clarus's (carrier, service) codes -> ids into the state (read by the mapping)."""
    ids = clarus.carrier_service_ids(refresh=True)
    rows = [[carrier, service, cid, sid, now or utcnow()] for (carrier, service), (cid, sid) in ids.items()]
    with store.write() as con:
        con.execute("DELETE FROM clarus_carriers")
        if rows:
            con.executemany(
                "INSERT INTO clarus_carriers (carrier, service, carrier_id, carrier_service_id, read_at) VALUES (?, ?, ?, ?, ?)",
                rows,
            )
    return len(rows)


def _prepare(con, policies: Policies, order_ids: list[str], now: datetime, customer_id: str) -> dict[str, Any]:
    """Re-validate the chunk, then build both bodies for what is still ready (local only)."""
    verdicts, transitions = revalidate(con, policies, order_ids, now=now, cause="re-checked before sending")
    bodies: dict[str, dict] = {}
    sales_orders: dict[str, dict] = {}
    names: dict[str, str] = {}
    if verdicts is not None:
        names = dict(zip(verdicts.orders["order_id"].to_list(), verdicts.orders["order_name"].to_list()))
        ready = OrderVerdicts(
            orders=verdicts.orders.filter(pl.col("status") == "ready"), lines=verdicts.lines, reasons=verdicts.reasons
        )
        if ready.orders.height:
            bodies = body_dicts(build_goods_outs(ready, policies=policies, now=now, carriers=flow.carriers_table(con)))
            sales_orders = sales_order_dicts(
                build_sales_orders(ready, items=flow.netsuite_items_table(con), customer_id=customer_id)
            )
    # An order already requested from Clarus is resent exactly as first sent.
    stored = flow.frame(
        con,
        "SELECT order_id, order_name, sent_body::VARCHAR AS body FROM orders"
        " WHERE order_id IN (SELECT unnest(?::VARCHAR[])) AND sent_body IS NOT NULL",
        [order_ids],
    )
    for row in stored.iter_rows(named=True):
        bodies[row["order_id"]] = json.loads(row["body"])
        names.setdefault(row["order_id"], row["order_name"])
    statuses = dict(con.execute(
        "SELECT order_id, status FROM orders WHERE order_id IN (SELECT unnest(?::VARCHAR[]))", [order_ids]).fetchall())
    # Orders the goods out reached while NetSuite was down: their sales order from the stored order.
    owing = flow.frame(
        con,
        "SELECT o.order_id, o.order_name, o.payload::VARCHAR AS payload FROM orders o"
        " LEFT JOIN bindings b ON b.entity_type = 'order' AND b.our_id = o.order_id"
        " WHERE o.order_id IN (SELECT unnest(?::VARCHAR[])) AND o.status IN (SELECT unnest(?::VARCHAR[]))"
        " AND b.netsuite_id IS NULL",
        [order_ids, [s.value for s in flow.OWE_ERP]],
    )
    if not owing.is_empty():
        late = validate_orders(parse_orders(owing["payload"], policies.sku_cleaning), products=flow.products_table(con),
                               policies=policies, known_carriers=flow.carriers_table(con))
        late_ready = OrderVerdicts(orders=late.orders.filter(pl.col("status") == "ready"), lines=late.lines, reasons=late.reasons)
        if late_ready.orders.height:
            sales_orders.update(sales_order_dicts(
                build_sales_orders(late_ready, items=flow.netsuite_items_table(con), customer_id=customer_id)))
        for row in owing.iter_rows(named=True):
            names.setdefault(row["order_id"], row["order_name"])
    held = 0 if transitions.is_empty() else _count(transitions, OrderStatus.HELD.value)
    return {"bodies": bodies, "sales_orders": sales_orders, "names": names, "held": held, "statuses": statuses}


def send_ready_orders(
    store: StateStore,
    policies: Policies,
    *,
    netsuite: NetSuiteResource,
    clarus: ClarusResource,
    customer_id: str,
    now: datetime | None = None,
    limit: int = 2000,
) -> SendReport:
    """Create the NetSuite sales order, then the Clarus goods out, of every released order.

    NetSuite unreachable (connection error, 5xx, 429) does not hold the goods out: Clarus gets
    it in the same run and the sales order is created by a later run (`OWE_ERP`); the dispatch
    flow keeps the ERP gate (no Shopify fulfilment before NetSuite's item fulfilment). NetSuite
    refusing the order (ERP_REJECTED, a data problem a person must fix) still holds it.
    """
    report = SendReport()
    now = now or utcnow()
    with store.read() as con:
        pending = flow.due_for_sending(con, limit)
    report.considered = len(pending)
    down: set[str] = set()
    for start in range(0, len(pending), SEND_CHUNK):
        if {"netsuite", "clarus"} <= down:
            break
        _send_chunk(store, policies, pending[start:start + SEND_CHUNK], netsuite, clarus, customer_id, now, report, down)
    report.skipped_systems = sorted(down)
    return report


def _send_chunk(store, policies, order_ids, netsuite, clarus, customer_id, now, report: SendReport, down: set[str]) -> None:
    # 1. local: re-validate, build bodies, mark the ERP writes pending
    with store.write() as con:
        prepared = _prepare(con, policies, order_ids, now, customer_id)
        report.held_on_recheck += prepared["held"]
        states = flow.order_states(con, order_ids).filter(
            pl.col("prev_status").is_in([s.value for s in (*flow.SENDABLE, *flow.OWE_ERP)]) & pl.col("prev_change").is_null()
        )
        need_erp = [
            r["order_id"] for r in states.iter_rows(named=True)
            if r["netsuite_id"] is None and r["order_id"] in prepared["sales_orders"]
        ]
        if "netsuite" not in down:
            flow.begin_outbound(con, {flow.outbound_key("netsuite", "sales_order", o): ("netsuite", "create_sales_order") for o in need_erp}, now=now)
    names = prepared["names"]

    # 2. NetSuite, one call per order (nothing held open)
    erp_results: list[tuple[str, str | None, bool | None, str | None, ConnectorError | None]] = []
    for order_id in need_erp:
        if "netsuite" in down:
            break
        try:
            ns_id, created = netsuite.ensure_sales_order(order_id, prepared["sales_orders"][order_id])
            erp_results.append((order_id, str(ns_id), created, None, None))
        except ConnectorError as exc:
            erp_results.append((order_id, None, None, str(exc)[:500], exc if exc.refused else None))
            if exc.status is None or exc.status >= 500 or exc.status == 429:
                down.add("netsuite")  # the system is unwell: stop calling it this run
    with store.write() as con:
        for order_id, ns_id, created, error, refusal in erp_results:
            key = flow.outbound_key("netsuite", "sales_order", order_id)
            if ns_id is None:
                flow.finish_outbound(con, key, status="failed", error=error, now=now)
                report.erp_failed += 1
                log.warning("netsuite sales order for order %s failed: %s", order_id, error)
                if refusal is not None:  # the data, not the connection: tried again each run, a person is told now
                    code, detail = getattr(refusal, "code", None), getattr(refusal, "detail", None) or str(refusal)
                    name = names.get(order_id, order_id)
                    raise_exception(
                        con, "ERP_REJECTED", order_id,
                        f"NetSuite refused the sales order of order {name}: {code or refusal.status} {detail}"[:500],
                        {"order_name": name, "status": refusal.status, "netsuite_code": code, "detail": detail},
                        policies=policies, now=now,
                    )
                continue
            clear_exception(con, "ERP_REJECTED", order_id, now=now)
            flow.finish_outbound(con, key, status="done", remote_id=ns_id, now=now)
            flow.bind(con, "order", order_id, netsuite_id=ns_id, shopify_id=order_id, now=now)
            what = f"NetSuite sales order {ns_id} {'created' if created else 'already existed (bound)'}"
            if prepared["statuses"].get(order_id) in (OrderStatus.READY, OrderStatus.SENT_TO_ERP):
                flow.set_status(con, order_id, OrderStatus.SENT_TO_ERP, what, system="netsuite",
                                details={"netsuite_id": ns_id, "created": created}, now=now)
            else:  # the goods out went ahead while NetSuite was down: the status stays where Clarus has it
                flow.record_event(con, order_id, OrderStatus.SENT_TO_ERP.value, what + " after the goods out",
                                  system="netsuite", details={"netsuite_id": ns_id, "created": created}, now=now)
            report.erp_created += int(bool(created))
            report.erp_found += int(not created)
        # 3. local: which orders go to Clarus now; mark them SENT_TO_WMS before the call
        states = flow.order_states(con, order_ids)
        refused = flow.open_exception_ids(con, "ERP_REJECTED", order_ids)
        need_wms = [
            r for r in states.iter_rows(named=True)
            if r["prev_change"] is None and r["clarus_id"] is None
            and r["prev_status"] in (OrderStatus.READY.value, OrderStatus.SENT_TO_ERP.value, OrderStatus.SENT_TO_WMS.value)
            and r["order_id"] in prepared["bodies"]
            # NetSuite refused the order's data: a person fixes it before the goods move
            and (r["netsuite_id"] is not None or r["order_id"] not in refused)
        ]
        if "clarus" in down:
            need_wms = []
        flow.begin_outbound(con, {flow.outbound_key("clarus", "goods_out", r["order_id"]): ("clarus", "create_goods_out") for r in need_wms}, now=now)
        for r in need_wms:
            body = prepared["bodies"][r["order_id"]]
            reference = body["data"]["attributes"]["reference"]
            con.execute(
                "UPDATE orders SET sent_body = ?::JSON, clarus_reference = ? WHERE order_id = ?",
                [json.dumps(body), reference, r["order_id"]],
            )
            if r["prev_status"] != OrderStatus.SENT_TO_WMS.value:
                flow.set_status(con, r["order_id"], OrderStatus.SENT_TO_WMS, f"goods out {reference} requested", system="clarus", now=now)

    # 4. Clarus, one call per order
    wms_results: list[tuple[str, str | None, bool | None, ClarusRejected | None, str | None]] = []
    for r in need_wms:
        if "clarus" in down:
            break
        order_id = r["order_id"]
        try:
            go_id, created = clarus.ensure_goods_out(prepared["bodies"][order_id])
            wms_results.append((order_id, go_id, created, None, None))
        except ClarusRejected as exc:
            wms_results.append((order_id, None, None, exc, None))
        except ConnectorError as exc:
            wms_results.append((order_id, None, None, None, str(exc)[:500]))
            down.add("clarus")
    with store.write() as con:
        for order_id, go_id, created, rejected, error in wms_results:
            key = flow.outbound_key("clarus", "goods_out", order_id)
            body = prepared["bodies"][order_id]
            reference = body["data"]["attributes"]["reference"]
            name = names.get(order_id, reference)
            if rejected is not None:
                flow.finish_outbound(con, key, status="failed", error=f"{rejected.code} {rejected.message}"[:500], now=now)
                flow.set_status(
                    con, order_id, OrderStatus.WMS_REJECTED, f"Clarus rejected goods out {reference}: {rejected.message}",
                    system="clarus", details={"clarus_code": rejected.code, "symbol": rejected.symbol, "source": rejected.source}, now=now,
                )
                con.execute("UPDATE orders SET sent_body = NULL WHERE order_id = ?", [order_id])
                flow.raise_wms_rejected(con, order_id, name, rejected.code, rejected.message, rejected.details, policies=policies, now=now)
                report.wms_rejected += 1
                continue
            if go_id is None:
                flow.finish_outbound(con, key, status="failed", error=error, now=now)
                report.wms_failed += 1
                log.warning("clarus goods out for order %s not confirmed: %s", order_id, error)
                continue
            flow.finish_outbound(con, key, status="done", remote_id=go_id, now=now)
            flow.bind(con, "order", order_id, clarus_id=go_id, now=now)
            record_sent_lines(con, order_id, body)
            flow.set_status(
                con, order_id, OrderStatus.ACKNOWLEDGED,
                f"Clarus goods out {go_id} ({reference}) {'created' if created else 'already existed (bound)'}",
                system="clarus", details={"clarus_id": go_id, "reference": reference, "created": created}, now=now,
            )
            clear_exception(con, "WMS_REJECTED", order_id, now=now)
            report.wms_created += int(bool(created))
            report.wms_found += int(not created)


def record_sent_lines(con, order_id: str, body: dict) -> None:
    """Remember what Clarus has for each Shopify line (quantity, product)."""
    for change in body["data"]["attributes"].get("lines_changes") or []:
        attrs = change.get("attributes") or {}
        if change["type"] != "ADD" or not attrs.get("external_system_reference1"):
            continue
        con.execute(
            "UPDATE order_lines SET sent_quantity = ?, clarus_product_id = ? WHERE order_id = ? AND line_id = ?",
            [int(attrs["order_quantity"]), str(attrs["product_id"]), order_id, attrs["external_system_reference1"]],
        )


# ----------------------------------------------------------------------------- Dagster


class OrdersConfig(NetSuiteCustomerConfig):
    """Run config of the jobs that send orders (the NetSuite customer web orders go to)."""


@dg.asset(
    group_name="orders",
    deps=["landed_events", "item_master"],
    kinds={"duckdb", "polars"},
    description="Shopify orders as received, validated and mapped: held with every reason, or released.",
)
def shopify_orders(context: dg.AssetExecutionContext, state: StateStoreResource, policies: PoliciesResource) -> dg.MaterializeResult:
    store = state.store()
    report = intake_landed_orders(store, policies.load())
    context.log.info("orders intake: %s", report)
    with store.read() as con:
        rows = con.execute("SELECT count(*) FROM orders").fetchone()[0]
    return dg.MaterializeResult(metadata={**asdict(report), "dagster/row_count": rows})


@dg.multi_asset(
    group_name="orders",
    specs=[
        dg.AssetSpec("netsuite_sales_orders", deps=[shopify_orders], kinds={"netsuite"},
                     description="A NetSuite sales order per released order (externalId = Shopify order id)."),
        dg.AssetSpec("clarus_goods_outs", deps=["netsuite_sales_orders", "clarus_products"], kinds={"clarus"},
                     description="A Clarus goods out per released order (reference = Shopify order name)."),
    ],
)
def orders_to_erp_and_wms(
    context: dg.AssetExecutionContext, config: OrdersConfig, state: StateStoreResource, policies: PoliciesResource,
    netsuite: NetSuiteResource, clarus: ClarusResource,
):
    store = state.store()
    refresh_carriers(store, clarus)
    policy = policies.load()
    report = send_ready_orders(store, policy, netsuite=netsuite, clarus=clarus, customer_id=config.customer_id(policy))
    context.log.info("orders sent: %s", report)
    meta = asdict(report)
    yield dg.MaterializeResult(asset_key="netsuite_sales_orders", metadata={k: v for k, v in meta.items() if k.startswith("erp") or k in ("considered", "held_on_recheck")})
    yield dg.MaterializeResult(asset_key="clarus_goods_outs", metadata={k: v for k, v in meta.items() if k.startswith("wms") or k == "skipped_systems"})


orders_job = dg.define_asset_job(
    "orders_into_warehouse",
    # no checks: the orders' data-quality suites run in the `data_quality` job, off the critical path
    selection=dg.AssetSelection.assets(shopify_orders, "netsuite_sales_orders", "clarus_goods_outs").without_checks(),
    description="Take in landed Shopify orders, hold or release them, and send the released ones to NetSuite and Clarus.",
    tags={"flow": "orders"},  # one orders run at a time (the instance's tag concurrency limit)
)

defs = dg.Definitions(assets=[shopify_orders, orders_to_erp_and_wms], jobs=[orders_job])
