"""Dispatch back to the channel: Clarus shipments -> NetSuite item fulfilments -> Shopify.

- `dispatch_reconciliation`: reads Clarus shipments changed since the last sweep (GraphQL)
  and records any dispatch no webhook brought; the safety net behind webhooks.
- `shipments`: takes in new landed goods out events (webhooks), then advances every due
  shipment one step at a time, ERP-gated (see `clarus_pipelines.domain.dispatch`).
- checks on `shipments` (non-blocking; each syncs its exceptions so they auto-clear):
  tracking present (TRACKING_MISSING), tracking fits its carrier (TRACKING_INVALID),
  no tracking number on two orders (TRACKING_INVALID), no SKU dispatched above the
  quantity ordered (OVER_DISPATCHED).
- `dispatch_work` sensor: starts a `dispatch` run when goods out events landed or a
  shipment is due for its next step (waiting for the ERP, or retrying after a failure),
  or a NetSuite sales order webhook (the commit it waits for) landed; runs tagged
  `flow=dispatch` run one at a time by the instance's tag concurrency limit. The
  `dispatch_sweep` schedule runs the sweep. While an `event_path` run is queued or running it
  skips: that run takes goods outs in and moves shipments on itself (sensors/event_path.py).
"""

import json
from datetime import datetime, timedelta

import dagster as dg
from pydantic import Field

from clarus_pipelines.assets.exception_checks import exception_check

from clarus_pipelines.connectors.clarus import ClarusResource
from clarus_pipelines.connectors.netsuite import NetSuiteResource
from clarus_pipelines.connectors.shopify import ShopifyResource
from clarus_pipelines.domain.dispatch import (
    CHECK_WINDOW,
    CONSUMER,
    DISPATCH_TOPICS,
    ERP_CONSUMER,
    FINAL,
    DispatchConfig,
    advance_all,
    due_shipments,
    erp_news_for_waiting,
    over_dispatch_findings,
    record_sweep,
    shipment_state_counts,
    sweep_window_start,
    take_in_landings,
    tracking_findings,
)
from clarus_pipelines.domain.tracking import TrackingRules
from clarus_pipelines.exception_queue import sync_exceptions, utcnow
from clarus_pipelines.resources import PoliciesResource, StateStoreResource
from clarus_pipelines.sensors.cursor import consumer_watermark, new_events_since
from clarus_pipelines.sensors.event_path import event_path_active

GROUP = "dispatch"


class SweepConfig(dg.Config):
    lookback_hours: float = Field(default=48.0, description="How far back the first sweep (or one after a long gap) reads.")
    overlap_minutes: float = Field(default=15.0, description="Each sweep re-reads this much before the previous one.")


@dg.asset(
    group_name=GROUP,
    kinds={"duckdb"},
    description="Clarus shipments read back through GraphQL since the last sweep; records dispatches no webhook brought.",
)
def dispatch_reconciliation(
    context: dg.AssetExecutionContext, config: SweepConfig, state: StateStoreResource, policies: PoliciesResource,
    clarus: ClarusResource,
) -> dg.MaterializeResult:
    store = state.store()
    policy = policies.load()
    now = utcnow()
    with store.read() as con:
        window_start = sweep_window_start(
            con, now, lookback=timedelta(hours=config.lookback_hours), overlap=timedelta(minutes=config.overlap_minutes)
        )
    shipments = list(clarus.iter_shipments(updated_since=window_start))
    result = record_sweep(
        store, shipments, TrackingRules.from_policies(policy), policy.sku_cleaning, window_start=window_start,
        now=now, run_id=context.run_id,
    )
    if result.new_shipments:
        context.log.warning("sweep found %d shipment(s) no webhook brought: %s", len(result.new_shipments), result.new_shipments[:10])
    return dg.MaterializeResult(
        metadata={
            "window_start": window_start.isoformat(),
            "shipments_read": result.checked,
            "shipments_new": len(result.new_shipments),
            "outcomes": dict(result.outcomes),
        }
    )


class DispatchRunConfig(dg.Config):
    erp_recheck_s: float = Field(default=60.0, description="First re-check of a dispatch held for NetSuite (doubles each time).")
    erp_recheck_max_s: float = Field(default=600.0, description="Longest wait between NetSuite re-checks.")
    retry_base_s: float = Field(default=30.0, description="Wait after a failed call (doubles each attempt).")
    retry_max_s: float = Field(default=1800.0, description="Longest wait between retries.")
    workers: int = Field(default=4, description="Orders advanced in parallel.")

    def dispatch_config(self) -> DispatchConfig:
        return DispatchConfig(
            erp_recheck_s=self.erp_recheck_s, erp_recheck_max_s=self.erp_recheck_max_s, retry_base_s=self.retry_base_s,
            retry_max_s=self.retry_max_s, workers=self.workers,
        )


@dg.asset(
    group_name=GROUP,
    deps=["landed_events", dispatch_reconciliation],
    kinds={"duckdb"},
    description="Each Clarus shipment's progress: DISPATCHED_IN_WMS -> ERP_ORDER_CONFIRMED -> ITEM_FULFILMENT_POSTED "
    "-> CHANNEL_FULFILLED -> CHANNEL_CONFIRMED. The Shopify fulfilment waits for the NetSuite item fulfilment.",
)
def shipments(
    context: dg.AssetExecutionContext, config: DispatchRunConfig, state: StateStoreResource, policies: PoliciesResource,
    netsuite: NetSuiteResource, shopify: ShopifyResource,
) -> dg.MaterializeResult:
    store = state.store()
    policy = policies.load()
    taken = take_in_landings(store, TrackingRules.from_policies(policy), policy.sku_cleaning)
    advanced = advance_all(store, netsuite, shopify, config=config.dispatch_config())
    with store.read() as con:
        by_state = shipment_state_counts(con)
        unmatched = con.execute("SELECT count(*) FROM dispatch_unmatched").fetchone()[0]
    context.log.info("took in %s; advanced %s; shipments by state %s", dict(taken), dict(advanced), by_state)
    return dg.MaterializeResult(
        metadata={
            "events": dict(taken),
            "steps": dict(advanced),
            "dagster/row_count": sum(by_state.values()),
            "by_state": by_state,
            "in_flight": sum(n for s, n in by_state.items() if s != FINAL.value),
            "unmatched_goods_outs": int(unmatched),
        }
    )


# --------------------------------------------------------------------------- checks


TRACKING_CHECKS = [
    dg.AssetCheckSpec("tracking_present", asset="shipments",
                      description="Every shipment dispatched in the last 30 days has a tracking number (TRACKING_MISSING)."),
    dg.AssetCheckSpec("tracking_format", asset="shipments",
                      description="Every tracking number fits its carrier's format and check digit (TRACKING_INVALID)."),
    dg.AssetCheckSpec("tracking_unique", asset="shipments",
                      description="No tracking number is on two different orders (TRACKING_INVALID)."),
]


@dg.multi_asset_check(specs=TRACKING_CHECKS, description="The three tracking checks, from one sync of the tracking findings.")
def tracking_checks(state: StateStoreResource, policies: PoliciesResource):
    """Recompute every tracking finding once, sync TRACKING_MISSING and TRACKING_INVALID, and
    report present / format / unique from that one pass."""
    policy = policies.load()
    now = utcnow()
    store = state.store()
    with store.check_reader(("shipments", "orders(order_id, order_name)")) as con:  # PostgreSQL: the check reads a DuckDB copy
        found = tracking_findings(con, TrackingRules.from_policies(policy), now)
    with store.write() as con:
        missing = sync_exceptions(con, "TRACKING_MISSING", found.missing, scope=found.scope, policies=policy, now=now)
        invalid = sync_exceptions(con, "TRACKING_INVALID", found.invalid(), scope=found.scope, policies=policy, now=now)
    checked = len(found.scope)
    yield exception_check(found.missing, missing, check_name="tracking_present", asset_key=shipments.key,
                          what=f"of {checked} shipment(s) without tracking", shipments_checked=checked)
    yield exception_check(found.malformed, invalid, check_name="tracking_format", asset_key=shipments.key,
                          what="malformed tracking number(s)", shipments_checked=checked)
    numbers = sorted({f.details["tracking_number"] for f in found.reused})
    yield exception_check(found.reused, invalid, check_name="tracking_unique", asset_key=shipments.key,
                          what="shipment(s) sharing a tracking number with another order", shipments_checked=checked,
                          shared_numbers=len(numbers))


# what `over_dispatch_findings` reads (its DuckDB SQL parses the orders' JSON line items)
OVER_DISPATCH_TABLES = ("shipments(shipment_id, order_id, first_seen_at)", "shipment_lines(shipment_id, sku, quantity)",
                        "orders(order_id, order_name, payload)", "order_lines(order_id, line_id, sku, quantity)")


@dg.asset_check(
    asset=shipments,
    description="No SKU of an order is dispatched in a larger quantity than ordered (OVER_DISPATCHED).",
)
def dispatched_within_ordered(state: StateStoreResource, policies: PoliciesResource) -> dg.AssetCheckResult:
    policy = policies.load()
    now = utcnow()
    store = state.store()
    with store.check_reader(OVER_DISPATCH_TABLES) as con:  # PostgreSQL: the check reads a DuckDB copy
        scope, findings = over_dispatch_findings(con, now, CHECK_WINDOW)
    with store.write() as con:
        outcome = sync_exceptions(con, "OVER_DISPATCHED", findings, scope=scope, policies=policy, now=now)
    return exception_check(findings, outcome, severity=dg.AssetCheckSeverity.ERROR,
                           what="order(s) dispatched above the ordered quantity", orders_checked=len(scope))


DISPATCH_CHECKS = [tracking_checks, dispatched_within_ordered]
# Our checks only: other suites that target `shipments` run on their own schedules, not on every dispatch run.
_CHECKS = dg.AssetSelection.checks(*DISPATCH_CHECKS)

dispatch_job = dg.define_asset_job(
    "dispatch",
    selection=dg.AssetSelection.assets(shipments).without_checks() | _CHECKS,
    description="Take in landed dispatches and move every due shipment on (ERP-gated), then run the tracking checks.",
    tags={"flow": "dispatch"},
)
dispatch_sweep_job = dg.define_asset_job(
    "dispatch_sweep",
    selection=dg.AssetSelection.assets(dispatch_reconciliation, shipments).without_checks() | _CHECKS,
    description="Read Clarus shipments back (safety net for lost webhooks), then advance the dispatches.",
    tags={"flow": "dispatch"},
)

dispatch_sweep_schedule = dg.ScheduleDefinition(
    name="dispatch_sweep",
    job=dispatch_sweep_job,
    cron_schedule="*/15 * * * *",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Every 15 minutes: read Clarus shipments since the last sweep and record any dispatch no webhook brought.",
)

DUE_REQUEST_EVERY = timedelta(seconds=60)  # shipments only due (no news): at most one request a minute
WAIT_FOR_RUN = timedelta(minutes=2)  # a request whose events are not taken in by then is asked again


def pending_dispatch_work(state: StateStoreResource) -> dict[str, int]:
    """New goods out events not yet taken in, shipments due a step, parked goods outs, and shipments
    held for NetSuite whose sales order has news (a commit webhook wakes them before their back-off ends)."""
    now = utcnow()
    with state.store().read() as con:
        taken = consumer_watermark(con, CONSUMER)
        events = new_events_since(con, {"clarus": DISPATCH_TOPICS}, after=taken)
        due = len(due_shipments(con, now))
        unmatched = con.execute("SELECT count(*) FROM dispatch_unmatched").fetchone()[0]
        erp_news = erp_news_for_waiting(con)
        erp_taken = con.execute("SELECT last_seq FROM event_consumers WHERE consumer = ?", [ERP_CONSUMER]).fetchone()
    return {"new_events": events.count, "newest_seq": int(events.last or 0), "due_shipments": int(due), "unmatched": int(unmatched),
            "erp_news": len(erp_news), "erp_seq": max(erp_news.values(), default=0),
            "taken_seq": taken, "erp_taken_seq": int(erp_taken[0]) if erp_taken else 0}


@dg.sensor(
    name="dispatch_work",
    job=dispatch_job,
    minimum_interval_seconds=10,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Starts a dispatch run when Clarus dispatches landed, shipments are due their next step, or a "
    "NetSuite sales order webhook may have committed an order whose dispatch waits for it.",
)
def dispatch_work_sensor(context: dg.SensorEvaluationContext, state: StateStoreResource) -> dg.SensorResult | dg.SkipReason:
    """Cursor: what the last request covered (newest goods out event, newest NetSuite news, when).

    Overlap is prevented by the instance (runs tagged flow=dispatch run one at a time), not here:
    the sensor asks again only for work newer than its cursor, or, when shipments are merely due,
    once a minute, so a slow run never collects a queue of identical requests behind it.
    """
    if event_path_active(context):  # the running event_path drain moves dispatches on itself
        return dg.SkipReason("an event_path run is queued or running; it moves the dispatches on")
    work = pending_dispatch_work(state)
    if not (work["new_events"] or work["due_shipments"] or work["erp_news"]):
        return dg.SkipReason(
            "No dispatch work: no new Clarus goods out events and no shipment due its next step"
            + (f" ({work['unmatched']} goods out(s) still waiting for their order)" if work["unmatched"] else "")
        )
    cursor = json.loads(context.cursor) if context.cursor else {}
    now = utcnow()
    news = (work["new_events"] and work["newest_seq"] > cursor.get("newest_seq", 0)) or (
        work["erp_news"] and work["erp_seq"] > cursor.get("erp_seq", 0))
    last = datetime.fromisoformat(cursor["requested_at"]) if cursor.get("requested_at") else None
    # the last request's events not yet taken in: its run is queued or running and will take these too
    previous_pending = last is not None and now - last < WAIT_FOR_RUN and (
        cursor.get("newest_seq", 0) > work["taken_seq"] or cursor.get("erp_seq", 0) > work["erp_taken_seq"])
    if previous_pending or (not news and last is not None and now - last < DUE_REQUEST_EVERY):
        return dg.SkipReason(f"Dispatch work already requested at {last:%H:%M:%S} UTC; pending: {work}")
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(
                run_key=f"dispatch:{work['newest_seq']}:{work['erp_seq']}:{work['due_shipments']}:{now:%Y%m%dT%H%M%S}",
                tags={"dispatch/new_events": str(work["new_events"]), "dispatch/due": str(work["due_shipments"]),
                      "dispatch/erp_news": str(work["erp_news"])},
            )
        ],
        cursor=json.dumps({"requested_at": now.isoformat(), **work}, sort_keys=True),
    )


defs = dg.Definitions(
    assets=[dispatch_reconciliation, shipments],
    asset_checks=DISPATCH_CHECKS,
    jobs=[dispatch_job, dispatch_sweep_job],
    schedules=[dispatch_sweep_schedule],
    sensors=[dispatch_work_sensor],
)
