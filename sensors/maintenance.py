"""Intake upkeep on schedules: landing retention, and the intake health checks.

- `landing_retention` (daily): deletes landings, quarantined bodies, dedupe markers and
  rejection logs older than `timings.landing_retention_days` (default 90), the matching
  intake rows in the state store, and finishes any landing a killed receiver left half
  committed.
  The same job deletes hourly stock snapshots older than `stock.snapshot_retention_days`
  (default 35; the newest hour always stays).
- `intake_checks` (every 10 minutes): every landing ingested in time, no unknown topics.
"""

from datetime import timedelta

import dagster as dg

from clarus_pipelines.assets.ingest import intake_checks_job
from clarus_pipelines.domain.stock import prune_snapshots
from clarus_pipelines.exception_queue import utcnow
from clarus_pipelines.receiver.events import prune_state
from clarus_pipelines.receiver.landing import LandingZone
from clarus_pipelines.resources import LandingZoneResource, PoliciesResource, StateStoreResource


@dg.op(description="Delete landings and intake rows older than the landing retention.")
def prune_landings(
    context: dg.OpExecutionContext, landing: LandingZoneResource, policies: PoliciesResource, state: StateStoreResource
) -> dict:
    days = policies.load().timings.landing_retention_days
    cutoff = utcnow() - timedelta(days=days)
    report = LandingZone(landing.root).prune(cutoff)
    with state.store().write() as con:
        rows = prune_state(con, cutoff)
    summary = {"retention_days": days, **report.as_dict(), "state_rows_removed": rows}
    context.log.info("retention %d days: %s", days, summary)
    context.add_output_metadata({k: v for k, v in summary.items() if k != "cutoff"} | {"cutoff": summary["cutoff"]})
    return summary


@dg.op(description="Delete hourly stock snapshots older than the stock snapshot retention.")
def prune_stock_snapshots(context: dg.OpExecutionContext, policies: PoliciesResource, state: StateStoreResource) -> dict:
    days = policies.load().stock.snapshot_retention_days
    cutoff = utcnow() - timedelta(days=days)
    with state.store().write() as con:
        removed = prune_snapshots(con, cutoff)
    summary = {"retention_days": days, "cutoff": cutoff.isoformat(), "snapshot_rows_removed": removed}
    context.log.info("stock snapshots: %s", summary)
    context.add_output_metadata(summary)
    return summary


@dg.job(description="Prune landings, quarantine, dedupe markers and intake rows, and old stock snapshots, past their retention.")
def landing_retention_job():
    prune_landings()
    prune_stock_snapshots()


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
