"""Reconciliation reads: land what the webhooks missed, and count it.

Every 15 minutes the `webhook_reconciliation` schedule reads back the last two hours from the
APIs: Shopify orders (with their refunds) and Clarus goods outs that were dispatched,
part dispatched or cancelled. A record version no webhook brought is landed in the
landing zone with `via='reconciliation'` (the sensors ingest it like any webhook) and
recorded in `reconciliation_findings`; `reconciliation_runs` keeps what each read checked.
The API is read before the state store is opened, never while holding its lock.
"""

from datetime import datetime, timedelta
from typing import Any

import dagster as dg

from clarus_pipelines.connectors.clarus import ClarusResource
from clarus_pipelines.connectors.shopify import ShopifyResource
from clarus_pipelines.exception_queue import utcnow
from clarus_pipelines.receiver.events import load_landings, unprocessed_landings
from clarus_pipelines.state.event_log import entity_versions, record_reconciliation
from clarus_pipelines.receiver.reconcile import Missed, land_missed, merge_known, plan_clarus, plan_shopify
from clarus_pipelines.resources import LandingZoneResource, StateStoreResource


class ReconciliationConfig(dg.Config):
    lookback_minutes: int = 120  # how far back each read goes (overlapping runs catch late changes)
    grace_minutes: int = 5  # changes younger than this are left for their webhook
    # A look-back longer than this (a backfill launched from the UI, e.g. days after an outage) reads
    # Shopify's orders with one bulk operation instead of paging through them.
    bulk_after_minutes: int = 24 * 60


def _known(zone, store, since: datetime, source: str, entity_ids: dict[str, list[str]]):
    """What already arrived for these entities: ingested events plus landings still waiting for ingest."""
    waiting = load_landings(zone, unprocessed_landings(zone, store, since - timedelta(minutes=30))).rows
    with store.read() as con:
        ingested = [row for entity_type, ids in entity_ids.items() for row in entity_versions(con, source, entity_type, ids)]
    return merge_known(ingested, (r for r in waiting if r["source"] == source))


def _record(context, store, source: str, counts: dict[str, int], landed: list[tuple[Missed, object]],
            window_start: datetime) -> dict[str, int]:
    new_by_type: dict[str, int] = {}
    with store.write() as con:
        for entity_type, checked in counts.items():
            findings = [
                {"entity_id": m.entity_id, "version": m.version, "topic": m.topic, "landing_id": result.landing_id}
                for m, result in landed if m.entity_type == entity_type
            ]
            new_by_type[entity_type] = record_reconciliation(
                con, source=source, entity_type=entity_type, window_start=window_start, checked=checked,
                findings=findings, run_id=context.run_id,
            )
    return new_by_type


def _result(asset: str, source: str, counts: dict[str, int], new_by_type: dict[str, int],
            extra: dict[str, Any] | None = None) -> dg.MaterializeResult:
    missed = sum(new_by_type.values())
    return dg.MaterializeResult(
        metadata={"checked": counts, "missed_by_webhooks": new_by_type, **(extra or {})},
        check_results=[dg.AssetCheckResult(
            asset_key=asset,
            check_name="no_missed_webhooks",
            passed=missed == 0,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={"missed": missed, **{f"missed_{k}": v for k, v in new_by_type.items()}},
            description=f"{missed} {source} change(s) reached us only through reconciliation" if missed else None,
        )],
    )


@dg.asset(
    group_name="intake",
    kinds={"shopify", "duckdb"},
    check_specs=[dg.AssetCheckSpec("no_missed_webhooks", asset="shopify_missed_webhooks",
                                   description="Every recent Shopify order change and refund came by webhook.")],
    description="Recent Shopify orders and refunds read back from the API; what no webhook brought is landed and counted.",
)
def shopify_missed_webhooks(
    context: dg.AssetExecutionContext,
    config: ReconciliationConfig,
    shopify: ShopifyResource,
    state: StateStoreResource,
    landing: LandingZoneResource,
) -> dg.MaterializeResult:
    now = utcnow()
    window_start = now - timedelta(minutes=config.lookback_minutes)
    bulk = config.lookback_minutes > config.bulk_after_minutes
    read = shopify.iter_orders_bulk if bulk else shopify.iter_orders
    orders = list(read(updated_at_min=window_start))
    context.log.info("read %d Shopify order(s) changed since %s%s", len(orders), window_start, " (bulk operation)" if bulk else "")
    zone, store = landing.source(), state.store()
    ids = {
        "order": [str(o["id"]) for o in orders],
        "refund": [str(r["id"]) for o in orders for r in o.get("refunds") or []],
    }
    known = _known(zone, store, window_start, "shopify", ids)
    missed, checked_orders, checked_refunds = plan_shopify(
        orders, known, settled_before=now - timedelta(minutes=config.grace_minutes))
    landed = land_missed(zone, missed)
    for m, r in landed:
        context.log.warning("no webhook brought shopify %s %s (%s); landed as %s",
                            m.entity_type, m.entity_id, m.topic, r.landing_id)
    counts = {"order": checked_orders, "refund": checked_refunds}
    return _result("shopify_missed_webhooks", "Shopify", counts, _record(context, store, "shopify", counts, landed, window_start),
                   {"read": "bulk operation" if bulk else "paged"})


@dg.asset(
    group_name="intake",
    kinds={"clarus", "duckdb"},
    check_specs=[dg.AssetCheckSpec("no_missed_webhooks", asset="clarus_missed_webhooks",
                                   description="Every recent Clarus dispatch and cancellation came by webhook.")],
    description="Recent Clarus goods outs (dispatched, part dispatched, cancelled) read back through GraphQL; "
    "what no webhook brought is landed and counted.",
)
def clarus_missed_webhooks(
    context: dg.AssetExecutionContext,
    config: ReconciliationConfig,
    clarus: ClarusResource,
    state: StateStoreResource,
    landing: LandingZoneResource,
) -> dg.MaterializeResult:
    now = utcnow()
    window_start = now - timedelta(minutes=config.lookback_minutes)
    goods_outs = list(clarus.iter_goods_outs(updated_since=window_start, status=["COMPLETED", "PART", "CANCELLED"]))
    zone, store = landing.source(), state.store()
    known = _known(zone, store, window_start, "clarus", {"goods_out": [str(g["id"]) for g in goods_outs]})
    missed, checked = plan_clarus(goods_outs, known, settled_before=now - timedelta(minutes=config.grace_minutes))
    landed = land_missed(zone, missed)
    for m, r in landed:
        context.log.warning("no webhook brought clarus goods out %s (%s); landed as %s", m.entity_id, m.topic, r.landing_id)
    counts = {"goods_out": checked}
    return _result("clarus_missed_webhooks", "Clarus", counts, _record(context, store, "clarus", counts, landed, window_start))


reconciliation_job = dg.define_asset_job(
    "webhook_reconciliation",
    selection=dg.AssetSelection.assets(shopify_missed_webhooks, clarus_missed_webhooks),
    description="Read recent orders, refunds and dispatches back from Shopify and Clarus; land what webhooks missed.",
)

reconciliation_schedule = dg.ScheduleDefinition(
    name="webhook_reconciliation",
    job=reconciliation_job,
    cron_schedule="*/15 * * * *",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Every 15 minutes: land what the webhooks missed (webhooks are not guaranteed).",
)

defs = dg.Definitions(
    assets=[shopify_missed_webhooks, clarus_missed_webhooks],
    jobs=[reconciliation_job],
    schedules=[reconciliation_schedule],
)
