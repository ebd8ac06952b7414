"""Refunds and returns: every Shopify refund classified and routed to Clarus and NetSuite.

- `refunds` (`clarus_pipelines.domain.refund_flow`): takes in new landed refunds/create
  webhooks, refunds carried in landed order bodies (orders/* webhooks and the
  reconciliation read, so a lost refund webhook is still caught) and Clarus goods-in
  events; classifies each new refund (RETURN, CANCELLATION, GOODWILL, SHIPPING_ONLY,
  EXCHANGE or UNCLASSIFIED) and explains why in the order's history; runs the follow-ups
  (expected goods-in receipt + return authorisation, and the NetSuite item receipt once
  the goods are back; goods out cancel/reduce + closed sales order lines; credit memos),
  idempotently; asks Clarus about returns still expected.
- checks on `refunds`, each syncing its exception so it clears itself:
  `refunds_classified` (REFUND_UNCLASSIFIED) and `returns_received_in_time`
  (RETURN_NOT_RECEIVED after `timings.return_receipt_days`).
- `refund_work` sensor: a run when refund or goods-in events landed or follow-ups wait;
  the `refunds_sweep` schedule runs it regularly anyway (due dates pass without events).
"""

import json

import dagster as dg
from pydantic import Field

from clarus_pipelines.assets.exception_checks import exception_check

from clarus_pipelines.connectors.clarus import ClarusResource
from clarus_pipelines.connectors.netsuite import NetSuiteResource
from clarus_pipelines.domain import refund_flow as flow
from clarus_pipelines.exception_queue import utcnow
from clarus_pipelines.resources import NetSuiteCustomerConfig, PoliciesResource, StateStoreResource
from clarus_pipelines.sensors.cursor import new_events_since

GROUP = "refunds"


class RefundsConfig(NetSuiteCustomerConfig):
    sweep_receipts: bool = Field(default=True, description="Ask Clarus about every return still expected.")
    max_refunds: int = Field(default=500, description="Refunds whose follow-ups are run per materialisation.")


@dg.asset(
    group_name=GROUP,
    deps=["landed_events"],
    kinds={"duckdb"},
    description="Each Shopify refund classified (return, cancellation, goodwill, shipping-only, exchange) with the "
    "reasons, and its follow-ups in Clarus and NetSuite: expected returns, cancelled lines, credit memos.",
)
def refunds(
    context: dg.AssetExecutionContext, config: RefundsConfig, state: StateStoreResource, policies: PoliciesResource,
    clarus: ClarusResource, netsuite: NetSuiteResource,
) -> dg.MaterializeResult:
    store = state.store()
    policy = policies.load()
    intake = flow.take_in_refunds(store, policy)
    steps = flow.run_refund_steps(store, policy, clarus=clarus, netsuite=netsuite,
                                  customer_id=config.customer_id(policy), limit=config.max_refunds)
    received = flow.sweep_return_receipts(store, clarus) if config.sweep_receipts else 0
    with store.read() as con:
        summary = flow.refund_summary(con)
    context.log.info("refund intake %s; steps %s; receipts found by the sweep %d; %s", intake, steps, received, summary)
    return dg.MaterializeResult(metadata={
        **intake.as_metadata(),
        **{f"steps_{k}": v for k, v in steps.as_metadata().items()},
        "receipts_swept": received,
        "by_kind": summary["by_kind"],
        "by_state": summary["by_state"],
    })


@dg.asset_check(
    asset=refunds,
    description="Every refund fits exactly one of return, cancellation, goodwill, shipping-only, exchange (REFUND_UNCLASSIFIED).",
)
def refunds_classified(state: StateStoreResource, policies: PoliciesResource) -> dg.AssetCheckResult:
    store = state.store()
    outcome = flow.sync_refund_exceptions(store, policies.load(), codes=("REFUND_UNCLASSIFIED",))["REFUND_UNCLASSIFIED"]
    with store.read() as con:
        findings = flow.unclassified_findings(con)
    return exception_check(findings, outcome, what="refund(s) for finance to post by hand", unclassified=len(findings))


@dg.asset_check(
    asset=refunds,
    description="Every return is received in Clarus within timings.return_receipt_days (RETURN_NOT_RECEIVED).",
)
def returns_received_in_time(state: StateStoreResource, policies: PoliciesResource) -> dg.AssetCheckResult:
    store = state.store()
    now = utcnow()
    outcome = flow.sync_refund_exceptions(store, policies.load(), now=now, codes=("RETURN_NOT_RECEIVED",))["RETURN_NOT_RECEIVED"]
    with store.read() as con:
        findings = flow.return_not_received_findings(con, now)
        awaiting = con.execute(
            "SELECT count(*) FROM refunds WHERE kind IN ('RETURN', 'EXCHANGE') AND return_received_at IS NULL").fetchone()[0]
    return exception_check(findings, outcome, what="return(s) overdue", awaiting=int(awaiting), overdue=len(findings))


refunds_job = dg.define_asset_job(
    "refunds_job",
    selection=dg.AssetSelection.assets(refunds).without_checks() | dg.AssetSelection.checks(refunds_classified, returns_received_in_time),
    description="Classify new Shopify refunds, run their follow-ups in Clarus and NetSuite, check returns came back.",
    tags={"flow": "refunds"},
)

refunds_schedule = dg.ScheduleDefinition(
    name="refunds_sweep",
    job=refunds_job,
    cron_schedule="*/15 * * * *",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Every 15 minutes: retry waiting follow-ups, ask Clarus about expected returns, raise overdue ones.",
)

def pending_refund_work(state: StateStoreResource) -> dict[str, int]:
    """New refund / goods-in events not yet taken in."""
    with state.store().read() as con:
        work = new_events_since(con, {"shopify": [flow.REFUND_TOPIC], "clarus": flow.RECEIPT_TOPICS}, consumer=flow.CONSUMER)
    return {"new_events": work.count, "newest_seq": int(work.last or 0)}


@dg.sensor(
    name="refund_work",
    job=refunds_job,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Starts a refunds run when Shopify refunds or Clarus goods-in receipts landed.",
)
def refund_work_sensor(context: dg.SensorEvaluationContext, state: StateStoreResource) -> dg.SensorResult | dg.SkipReason:
    work = pending_refund_work(state)
    if not work["new_events"]:
        return dg.SkipReason("No new refund or goods-in events")
    # No overlap check here: runs tagged flow=refunds run one at a time (the instance's tag
    # concurrency limit), and the run key of the newest event keeps a queued request single.
    return dg.SensorResult(
        run_requests=[dg.RunRequest(run_key=f"refunds:{work['newest_seq']}", tags={"refunds/new_events": str(work["new_events"])})],
        cursor=json.dumps(work, sort_keys=True),
    )


defs = dg.Definitions(
    assets=[refunds],
    asset_checks=[refunds_classified, returns_received_in_time],
    jobs=[refunds_job],
    schedules=[refunds_schedule],
    sensors=[refund_work_sensor],
)
