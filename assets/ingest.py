"""Webhook intake assets: landed webhooks into `landed_events`, refusals into exceptions.

- `landed_events`: the landing files (or, in PostgreSQL mode, `inbox:<seq>` rows of the
  webhook inbox) a sensor batch names (run config `landings`), parsed
  into the DuckDB table the order, dispatch and refund flows read. Idempotent: a landing
  already in `processed_landings`, or a second landing of the same event, adds nothing.
  Run by hand with no `landings` it catches up on whatever recent landings were missed.
  A landing that cannot be stored is set aside alone (LANDING_SET_ASIDE); the batch goes on.
- `webhook_rejections`: counts the receiver's rejection log and raises WEBHOOK_REJECTED
  for a source whose webhooks keep being refused (auto-cleared when they stop).
- checks: no landing waits unprocessed for long; no unknown topics arrive unnoticed.
"""


from datetime import timedelta

import dagster as dg

from clarus_pipelines.exception_queue import utcnow
from clarus_pipelines.receiver.events import STALL_AFTER, ingest_landings, ingest_rejections, unprocessed_landings
from clarus_pipelines.resources import LandingZoneResource, PoliciesResource, StateStoreResource

STALL_LOOKBACK = timedelta(hours=24)

landing_zone = dg.AssetSpec(
    "landing_zone",
    group_name="intake",
    kinds={"file"},
    description="Webhooks the receiver accepted (and reconciliation reads), one durable JSON file each.",
)


class IngestConfig(dg.Config):
    landings: list[str] = []  # landing paths relative to the zone, or "inbox:<seq>"; set by the sensors
    catch_up_hours: int = 48  # with no landings given: look this far back for unprocessed ones
    catch_up_limit: int = 5000


@dg.asset(
    group_name="intake",
    deps=[landing_zone],
    kinds={"duckdb"},
    description="Every landed webhook once, parsed: source, topic, entity, payload, via. "
    "Flows select new rows by `seq` and topic.",
)
def landed_events(
    context: dg.AssetExecutionContext, config: IngestConfig, state: StateStoreResource, landing: LandingZoneResource
) -> dg.MaterializeResult:
    zone = landing.source()
    store = state.store()
    relpaths = list(config.landings)
    if not relpaths:
        since = utcnow() - timedelta(hours=config.catch_up_hours)
        relpaths = unprocessed_landings(zone, store, since, limit=config.catch_up_limit)
        context.log.info("catch-up: %d unprocessed landing(s) in the last %dh", len(relpaths), config.catch_up_hours)
    report, loaded = ingest_landings(zone, store, relpaths, run_id=context.run_id)
    if loaded.set_aside:
        context.log.warning("%d landing(s) set aside (LANDING_SET_ASIDE), the rest stored; first: %s: %s",
                            len(loaded.set_aside), loaded.set_aside[0].landing_id, loaded.set_aside[0].reason)
    with store.read() as con:
        rows = con.execute("SELECT count(*) FROM landed_events").fetchone()[0]
    if loaded.missing:
        context.log.warning("%d landing(s) no longer in the zone (pruned?): %s", len(loaded.missing), loaded.missing[:5])
    if report.unknown_topics:
        context.log.warning("%d event(s) with a topic no flow handles were stored and flagged", report.unknown_topics)
    context.log.info("ingested %d event(s) from %d landing(s)", report.ingested, len(relpaths))
    return dg.MaterializeResult(metadata={**report.as_metadata(), "landings": len(relpaths), "dagster/row_count": rows})


@dg.asset(
    group_name="intake",
    deps=[landing_zone],
    kinds={"duckdb"},
    description="Webhooks refused at the door (bad signature or token), counted per minute; "
    "raises WEBHOOK_REJECTED for a source while refusals repeat.",
)
def webhook_rejections(
    context: dg.AssetExecutionContext, state: StateStoreResource, landing: LandingZoneResource, policies: PoliciesResource
) -> dg.MaterializeResult:
    zone = landing.source()
    with state.store().write() as con:
        report = ingest_rejections(con, zone, policies=policies.load())
    for source, total in report.repeating_sources.items():
        context.log.warning("%s: %d webhooks refused recently; WEBHOOK_REJECTED raised", source, total)
    return dg.MaterializeResult(metadata={
        "new_rejections": report.new_rejections,
        "repeating_sources": report.repeating_sources,
        "exceptions": report.outcome,
    })


@dg.asset_check(
    asset=landed_events,
    description=f"No landing waits more than {int(STALL_AFTER.total_seconds() // 60)} minutes to be ingested.",
)
def landings_not_stalled(state: StateStoreResource, landing: LandingZoneResource) -> dg.AssetCheckResult:
    now = utcnow()
    stalled = unprocessed_landings(landing.source(), state.store(), now - STALL_LOOKBACK, now - STALL_AFTER)
    return dg.AssetCheckResult(
        passed=not stalled,
        metadata={"stalled": len(stalled), "oldest": stalled[0] if stalled else ""},
        description=f"{len(stalled)} landing(s) older than {STALL_AFTER} not ingested" if stalled else None,
    )


@dg.asset_check(asset=landed_events, description="Webhooks of topics no flow handles (stored and flagged) in the last 24 hours.")
def no_unknown_topics(state: StateStoreResource) -> dg.AssetCheckResult:
    with state.store().read() as con:
        rows = con.execute(
            "SELECT source, topic, count(*) FROM landed_events WHERE NOT known_topic AND received_at >= ?"
            " GROUP BY ALL ORDER BY 3 DESC",
            [utcnow() - timedelta(hours=24)],
        ).fetchall()
    return dg.AssetCheckResult(
        passed=not rows,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"unknown_topics": {f"{s}:{t}": n for s, t, n in rows}},
    )


ingest_landings_job = dg.define_asset_job(
    "ingest_landings",
    selection=dg.AssetSelection.assets(landed_events).without_checks(),
    description="Parse a batch of landed webhooks into landed_events (started by the webhook sensors).",
    tags={"intake": "landings", "flow": "ingest"},
)
webhook_rejections_job = dg.define_asset_job(
    "count_webhook_rejections",
    selection=dg.AssetSelection.assets(webhook_rejections),
    description="Count refused webhooks and raise or clear WEBHOOK_REJECTED.",
)
intake_checks_job = dg.define_asset_job(
    "intake_checks",
    selection=dg.AssetSelection.checks(landings_not_stalled, no_unknown_topics),
    description="Is every landing ingested, and did any webhook arrive with an unknown topic?",
)

defs = dg.Definitions(
    assets=[landing_zone, landed_events, webhook_rejections],
    asset_checks=[landings_not_stalled, no_unknown_topics],
    jobs=[ingest_landings_job, webhook_rejections_job, intake_checks_job],
)
