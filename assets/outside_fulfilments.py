"""Fulfilments made outside the warehouse (FULFILLED_OUTSIDE_WMS).

- `outside_fulfilments` (`clarus_pipelines.domain.outside_fulfilments`): takes in landed
  Shopify `fulfillments/create` webhooks, judges each (ours: a shipment we know carries its
  id or tracking; else outside) once past `outside_fulfilment.grace_minutes`, raises
  FULFILLED_OUTSIDE_WMS on the order and applies the policy (`hold` for a person, or
  `cancel` the Clarus goods out while Clarus allows it).
- `outside_fulfilments_sweep` schedule: every 5 minutes (the grace period passes without events).
"""

import dagster as dg

from clarus_pipelines.connectors.clarus import ClarusResource
from clarus_pipelines.domain import outside_fulfilments as outside
from clarus_pipelines.resources import PoliciesResource, StateStoreResource

GROUP = "dispatch"


@dg.asset(
    group_name=GROUP,
    deps=["landed_events"],
    kinds={"duckdb"},
    description="Shopify fulfilments, each judged as made by the warehouse or outside it (by hand in Shopify admin, "
    "another app); outside ones raise FULFILLED_OUTSIDE_WMS and are held or have their goods out cancelled.",
)
def outside_fulfilments(context: dg.AssetExecutionContext, state: StateStoreResource, policies: PoliciesResource,
                        clarus: ClarusResource) -> dg.MaterializeResult:
    store = state.store()
    policy = policies.load()
    taken_in = outside.take_in_fulfilments(store)
    judged = outside.judge_fulfilments(store, policy)
    acted = outside.act_on_outside_fulfilments(store, policy, clarus=clarus)
    with store.read() as con:
        summary = outside.outside_fulfilment_summary(con)
    for line in judged.details + acted.details:
        context.log.warning(line)
    return dg.MaterializeResult(metadata={
        "taken_in": taken_in, "ours": judged.ours, "outside": judged.outside, "held": judged.held,
        "cancelled": acted.cancelled, "too_late": acted.too_late, "failed": acted.failed, "by_verdict": summary,
    })


outside_fulfilments_job = dg.define_asset_job(
    "outside_fulfilments_job",
    selection=dg.AssetSelection.assets(outside_fulfilments),
    description="Judge new Shopify fulfilments; raise FULFILLED_OUTSIDE_WMS and apply the policy to the goods out.",
    tags={"flow": "dispatch"},
)

outside_fulfilments_schedule = dg.ScheduleDefinition(
    name="outside_fulfilments_sweep",
    job=outside_fulfilments_job,
    cron_schedule="*/5 * * * *",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Every 5 minutes: fulfilments Shopify made that the warehouse did not.",
)

defs = dg.Definitions(assets=[outside_fulfilments], jobs=[outside_fulfilments_job],
                      schedules=[outside_fulfilments_schedule])
