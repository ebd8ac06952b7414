"""Intake upkeep on schedules: landing retention, and the intake health checks.

- `landing_retention` (daily): deletes landings, quarantined bodies, dedupe markers and
  rejection logs older than `timings.landing_retention_days` (default 90), the matching
  intake rows in the state store, and finishes any landing a killed receiver left half
  committed.
  The same job deletes hourly stock snapshots older than `stock.snapshot_retention_days`
  (default 35; the newest hour always stays) and those hours' `stock_hours` partitions
  (so Dagster no longer lists a pruned hour as materialized), and every other class of record past
  `retention.*` (finished orders, order history, shipments, resolved exceptions, alerts,
  health snapshots; see `clarus_pipelines.domain.retention`).
- `intake_checks` (every 10 minutes): every landing ingested in time, no unknown topics.
"""

from datetime import timedelta

import dagster as dg

from clarus_pipelines.assets.ingest import intake_checks_job
from clarus_pipelines.assets.stock import STOCK_PARTITIONS
from clarus_pipelines.domain.retention import prune_records
from clarus_pipelines.domain.stock import expired_hour_keys, prune_snapshots
from clarus_pipelines.exception_queue import utcnow
from clarus_pipelines.receiver.events import prune_state
from clarus_pipelines.resources import LandingZoneResource, PoliciesResource, StateStoreResource


@dg.op(description="Delete landings and intake rows older than the landing retention.")
def prune_landings(
    context: dg.OpExecutionContext, landing: LandingZoneResource, policies: PoliciesResource, state: StateStoreResource
) -> dict:
    days = policies.load().timings.landing_retention_days
    cutoff = utcnow() - timedelta(days=days)
    report = landing.source().prune(cutoff)
    with state.store().write() as con:
        rows = prune_state(con, cutoff)
    summary = {"retention_days": days, **report.as_dict(), "state_rows_removed": rows}
    context.log.info("retention %d days: %s", days, summary)
    context.add_output_metadata({k: v for k, v in summary.items() if k != "cutoff"} | {"cutoff": summary["cutoff"]})
    return summary


@dg.op(description="Delete hourly stock snapshots older than the stock snapshot retention, and those hours' "
       "partitions (`stock_hours`), so the partitions Dagster lists are exactly the stored history.")
def prune_stock_snapshots(context: dg.OpExecutionContext, policies: PoliciesResource, state: StateStoreResource) -> dict:
    days = policies.load().stock.snapshot_retention_days
    cutoff = utcnow() - timedelta(days=days)
    with state.store().write() as con:
        removed = prune_snapshots(con, cutoff)
        kept = {r[0] for r in con.execute("SELECT DISTINCT snapshot_hour FROM stock_snapshots").fetchall()}
    # rows first, keys second; the keys come from what Dagster lists, not from the rows deleted, so
    # keys left by a run that stopped in between (or hours that never had rows) go on the next run
    expired = expired_hour_keys(context.instance.get_dynamic_partitions(STOCK_PARTITIONS.name), cutoff, kept)
    for key in expired:
        context.instance.delete_dynamic_partition(STOCK_PARTITIONS.name, key)
    summary = {"retention_days": days, "cutoff": cutoff.isoformat(), "snapshot_rows_removed": removed,
               "partitions_deleted": len(expired), "oldest_partition_deleted": expired[0] if expired else None,
               "newest_partition_deleted": expired[-1] if expired else None}
    context.log.info("stock snapshots: %s", summary)
    context.add_output_metadata(summary)
    return summary


@dg.op(description="Delete finished orders, order history, shipments, resolved exceptions, alerts and health "
       "snapshots past their retention (policies.retention).")
def prune_state_records(context: dg.OpExecutionContext, policies: PoliciesResource, state: StateStoreResource) -> dict:
    policy = policies.load()
    now = utcnow()
    with state.store().write() as con:
        removed = prune_records(con, policy, now)
    summary = {"retention": policy.retention.model_dump(), "rows_removed": removed, "total_removed": sum(removed.values())}
    context.log.info("state retention: %s", summary)
    context.add_output_metadata({"total_removed": summary["total_removed"], **{f"removed_{k}": v for k, v in removed.items()}})
    return summary


@dg.job(description="Prune every class of record past its retention: landings, quarantine, dedupe markers and intake "
        "rows, stock snapshots, orders, order history, shipments, exceptions, alerts and health snapshots.")
def landing_retention_job():
    prune_landings()
    prune_stock_snapshots()
    prune_state_records()


landing_retention_schedule = dg.ScheduleDefinition(
    name="landing_retention",
    job=landing_retention_job,
    cron_schedule="30 3 * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Daily at 03:30 UTC: delete landings older than timings.landing_retention_days.",
)

intake_checks_schedule = dg.ScheduleDefinition(
    name="intake_checks",
    job=intake_checks_job,
    cron_schedule="*/10 * * * *",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Every 10 minutes: no landing stalled before ingest, no unknown topics unnoticed.",
)

defs = dg.Definitions(jobs=[landing_retention_job], schedules=[landing_retention_schedule, intake_checks_schedule])
