"""Monitoring assets: orphan orders, finance reconciliation, health snapshots, alert dispatch.

- `orphan_orders`: compares the orders we hold with a read of Clarus goods outs (updated
  in the look-back window, plus a lookup by reference for each unbound order the window
  did not cover) and syncs ORPHAN_ORDER both ways (`domain.orphans`). The Clarus read
  happens before the state file is opened. A failed read still evaluates the Shopify
  side (by bindings) and fails the `no_orphan_orders` check's Clarus part loudly.
- `finance_reconciliation` (daily partitions, UTC): shipped value against order totals
  and refunds against returns received (`domain.reconciliation`); writes
  `$CLARUS_PIPELINES_HOME/reports/reconciliation-YYYY-MM-DD.csv` (path in the metadata)
  and syncs RECONCILIATION_MISMATCH.
- `shopify_payouts` (daily partitions, UTC): the Shopify Payments payouts issued that day and
  their balance transactions, matched against our orders and refunds (`domain.payouts`);
  stored per payout day (a backfill replaces the day) and RECONCILIATION_MISMATCH raised per
  payout (`payout:<id>`). The day's finance report lists its payouts.
- `health_snapshot`: per flow and per connection health (`domain.health`) appended to
  `health_snapshots` (kept `retention.health_days`), overall status in the metadata; syncs
  CONNECTOR_FAILING for Shopify, Clarus and NetSuite (writes failing since the last
  success, across records: an outage or lost credentials reach the integration engineer).
- `alert_dispatch`: sends due alerts (`clarus_pipelines.alerts`); the `alerts` sensor does
  the same every minute, this asset is for schedules, manual runs and the asset graph.

Schedules: `monitoring` every 15 minutes (orphans, health, alerts), `shopify_payouts` hourly
at :05 and `finance_reconciliation` hourly at :15 (so the report carries the payouts read
ten minutes before), each for today plus, just after midnight UTC, the final run of yesterday.
"""

from datetime import datetime, time, timedelta, timezone

import dagster as dg
from pydantic import Field

from clarus_pipelines.alerts import CONNECTOR_CODE, AlertSender, dispatch_alerts
from clarus_pipelines.connectors.clarus import ClarusResource
from clarus_pipelines.connectors.shopify import ShopifyResource
from clarus_pipelines.domain.ports import ConnectorError
from clarus_pipelines.domain import health, orphans, payouts, reconciliation
from clarus_pipelines.exception_queue import sync_exceptions, utcnow
from clarus_pipelines.resources import PoliciesResource, StateStoreResource
from clarus_pipelines.settings import get_settings

GROUP = "monitoring"
RECONCILIATION_START = "2025-01-01"
SAMPLE = 10

daily = dg.DailyPartitionsDefinition(start_date=RECONCILIATION_START, timezone="UTC", end_offset=1)


def _sample(findings) -> list[dict]:
    return [{"entity": f.entity_id, "message": f.message} for f in findings[:SAMPLE]]


# --------------------------------------------------------------------------- orphans


class OrphanConfig(dg.Config):
    lookback_days: float = Field(default=7.0, description="Read Clarus goods outs updated within this many days.")
    max_lookups: int = Field(default=200, description="At most this many unbound orders are looked up in Clarus one by one.")


@dg.asset(
    group_name=GROUP,
    kinds={"duckdb"},
    deps=["shopify_orders", "clarus_goods_outs"],
    check_specs=[dg.AssetCheckSpec("no_orphan_orders", asset="orphan_orders",
                                   description="No order is in one system but not the other, and Clarus could be read.")],
    description="Orders in Shopify not in Clarus after timings.orphan_after_minutes, and Clarus goods outs with no "
    "Shopify order (ORPHAN_ORDER), from the state tables and a read of Clarus goods outs.",
)
def orphan_orders(
    context: dg.AssetExecutionContext, config: OrphanConfig, state: StateStoreResource, policies: PoliciesResource,
    clarus: ClarusResource,
) -> dg.MaterializeResult:
    now = utcnow()
    policy = policies.load()
    store = state.store()
    with store.read() as con:
        candidates = orphans.unbound_candidates(con, policy, now=now)
    frame, error, looked_up = None, None, 0
    try:
        frame = orphans.goods_outs_frame(clarus.iter_goods_outs(updated_since=now - timedelta(days=config.lookback_days)))
        extra = []
        for candidate in candidates:
            if orphans.matched_in(frame, candidate) or looked_up >= config.max_lookups:
                continue
            looked_up += 1
            for reference in dict.fromkeys(r for r in (candidate["clarus_reference"], candidate["order_name"]) if r):
                found = clarus.find_goods_out_by_reference(reference)
                if found:
                    extra.append(found)
                    break
        if extra:
            frame = frame.vstack(orphans.goods_outs_frame(extra)).unique("goods_out_id", keep="first")
    except ConnectorError as exc:
        error = str(exc)[:500]
        context.log.warning("Clarus goods outs could not be read (%s); only the Shopify side is compared", error)
    with store.write() as con:
        report = orphans.orphan_orders(con, policy, frame, now=now)
        outcome = sync_exceptions(con, orphans.CODE, report.findings, scope=report.scope, policies=policy, now=now)
        orphans.record_check(con, report, now=now, clarus_error=error, run_id=context.run_id)
    raised = sum(1 for a in outcome.values() if a in ("raised", "reopened"))
    cleared = sum(1 for a in outcome.values() if a == "auto_resolved")
    context.log.info(
        "%d order(s) not in Clarus, %s goods out(s) with no Shopify order; raised %d, cleared %d",
        report.not_in_clarus, report.not_in_shopify if report.not_in_shopify is not None else "?", raised, cleared,
    )
    problems = []
    if report.findings:
        problems.append(f"{len(report.findings)} order(s) in one system but not the other")
    if error:
        problems.append(f"Clarus could not be read: {error}")
    check = dg.AssetCheckResult(
        check_name="no_orphan_orders", passed=not problems, severity=dg.AssetCheckSeverity.WARN,
        description="; ".join(problems) or None,
        metadata={"not_in_clarus": report.not_in_clarus,
                  "not_in_shopify": report.not_in_shopify if report.not_in_shopify is not None else -1},
    )
    return dg.MaterializeResult(check_results=[check], metadata={
        "orders_checked": report.orders_checked,
        "goods_outs_read": report.goods_outs_read if report.goods_outs_read is not None else -1,
        "looked_up_by_reference": looked_up,
        "not_in_clarus": report.not_in_clarus,
        "not_in_shopify": report.not_in_shopify if report.not_in_shopify is not None else -1,
        "unbound_but_in_clarus": len(report.unbound_in_clarus),
        "clarus_read_error": error or "",
        "raised": raised,
        "cleared": cleared,
        "sample": dg.MetadataValue.json(_sample(report.findings)),
    })


# ---------------------------------------------------------------------- reconciliation


class ReconciliationReportConfig(dg.Config):
    lookback_days: int = Field(default=14, description="Exceptions are synced over orders touched in this many days.")


@dg.asset(
    group_name=GROUP,
    kinds={"duckdb", "csv"},
    partitions_def=daily,
    deps=["shipments", "refunds", "shopify_orders"],
    check_specs=[dg.AssetCheckSpec("day_reconciles", asset="finance_reconciliation",
                                   description="Every order dispatched or returned that day reconciles.")],
    description="Finance reconciliation per UTC day: shipped value against order totals, refunds against returns "
    "received. Writes reports/reconciliation-YYYY-MM-DD.csv and raises RECONCILIATION_MISMATCH.",
)
def finance_reconciliation(
    context: dg.AssetExecutionContext, config: ReconciliationReportConfig, state: StateStoreResource,
    policies: PoliciesResource,
) -> dg.MaterializeResult:
    day = datetime.fromisoformat(context.partition_key).date()
    reports_dir = get_settings().home.resolve() / "reports"
    run = reconciliation.run_reconciliation(
        state.store(), day, reports_dir, policies=policies.load(), lookback=timedelta(days=config.lookback_days),
        run_id=context.run_id,
    )
    meta = run.as_metadata()
    context.log.info("reconciliation %s: %d order(s), %d return(s), %d mismatch(es) -> %s",
                     day, meta["orders"], meta["returns"], meta["mismatches_in_report"], run.path)
    mismatches = run.report.rows.filter(run.report.rows["status"] == "mismatch")
    check = dg.AssetCheckResult(
        check_name="day_reconciles", passed=meta["mismatches_in_report"] == 0, severity=dg.AssetCheckSeverity.WARN,
        description=f"{meta['mismatches_in_report']} order(s) or payout(s) do not reconcile on {day}"
        if meta["mismatches_in_report"] else None,
        metadata={"path": dg.MetadataValue.path(str(run.path)), "mismatches": meta["mismatches_in_report"],
                  "partial": meta["partial"]},
    )
    return dg.MaterializeResult(check_results=[check], metadata={
        **{k: v for k, v in meta.items() if k != "path"},
        "path": dg.MetadataValue.path(str(run.path)),
        "mismatches": dg.MetadataValue.json(
            mismatches.select("order_name", "payout_id", "section", "difference", "problems").head(SAMPLE).to_dicts()),
    })


# ----------------------------------------------------------------------------- payouts


@dg.asset(
    group_name=GROUP,
    kinds={"shopify", "duckdb"},
    partitions_def=daily,
    deps=["shopify_orders", "refunds"],
    check_specs=[dg.AssetCheckSpec("payouts_reconcile", asset="shopify_payouts",
                                   description="Every Shopify Payments payout issued that day matches our orders and refunds.")],
    description="Shopify Payments payouts issued per UTC day and their balance transactions, matched against our "
    "orders (charges, fees) and refunds; raises RECONCILIATION_MISMATCH per payout that does not reconcile.",
)
def shopify_payouts(
    context: dg.AssetExecutionContext, shopify: ShopifyResource, state: StateStoreResource, policies: PoliciesResource,
) -> dg.MaterializeResult:
    day = datetime.fromisoformat(context.partition_key).date()
    start = datetime.combine(day, time(), tzinfo=timezone.utc)
    read = list(shopify.iter_payouts(start, start + timedelta(days=1)))
    transactions = [t for p in read for t in shopify.iter_balance_transactions(p["payout_id"])]
    policy = policies.load()
    fees = payouts.FeeSchedule.of(policy.payments)
    run = payouts.run_payout_reconciliation(state.store(), day, read, transactions, fees=fees, policies=policy)
    meta = run.as_metadata()
    context.log.info("payouts %s: %d payout(s), %d transaction(s), %d payout(s) not reconciling",
                     day, meta["payouts"], meta["transactions"], meta["mismatched_payouts"])
    check = dg.AssetCheckResult(
        check_name="payouts_reconcile", passed=not meta["mismatched_payouts"], severity=dg.AssetCheckSeverity.WARN,
        description=f"{meta['mismatched_payouts']} payout(s) issued on {day} do not reconcile"
        if meta["mismatched_payouts"] else None,
        metadata={"mismatched_payouts": meta["mismatched_payouts"], "payout_ids": dg.MetadataValue.json(
            run.match.mismatched_payouts[:SAMPLE])},
    )
    return dg.MaterializeResult(check_results=[check], metadata={
        **meta, "mismatches": dg.MetadataValue.json(_sample(run.match.findings)),
    })


# ----------------------------------------------------------------------------- health


@dg.asset(
    group_name=GROUP,
    kinds={"duckdb"},
    check_specs=[dg.AssetCheckSpec("nothing_failing", asset="health_snapshot", description="No flow or connection is failing.")],
    description="Health of each flow (last success, backlog, error rate, lag) and connection, appended to "
    "health_snapshots for the dashboard's charts; raises CONNECTOR_FAILING for a system whose writes keep failing.",
)
def health_snapshot(context: dg.AssetExecutionContext, state: StateStoreResource,
                    policies: PoliciesResource) -> dg.MaterializeResult:
    now = utcnow()
    store = state.store()
    with store.read() as con:
        summary = health.health_summary(con, now=now)
    policy = policies.load()
    with store.write() as con:
        connectors = sync_exceptions(con, CONNECTOR_CODE, health.connector_findings(con, now=now),
                                     scope=list(health.SYSTEMS), policies=policy, now=now)
        stored = health.store_snapshot(con, summary)
        con.execute("DELETE FROM health_snapshots WHERE taken_at < ?",
                    [now - timedelta(days=policy.retention.health_days)])
    flows = {f["flow"]: f["status"] for f in summary["flows"]}
    connections = {c["connection"]: c["status"] for c in summary["connections"]}
    context.log.info("health %s: flows %s; connections %s", summary["status"], flows, connections)
    table = "\n".join(
        ["| flow | status | backlog | error rate | lag p90 (s) | why |", "|---|---|---|---|---|---|"]
        + [f"| {f['flow']} | {f['status']} | {f['backlog'] if f['backlog'] is not None else ''} | "
           f"{'' if f['error_rate'] is None else format(f['error_rate'], '.0%')} | "
           f"{'' if f['lag_p90_s'] is None else round(f['lag_p90_s'])} | {f['reasons']} |" for f in summary["flows"]]
    )
    failing = [f"{f['flow']}: {f['reasons']}" for f in summary["flows"] if f["status"] == "failing"]
    failing += [f"{c['connection']}: {c['reasons']}" for c in summary["connections"] if c["status"] == "failing"]
    check = dg.AssetCheckResult(
        check_name="nothing_failing", passed=not failing, severity=dg.AssetCheckSeverity.WARN,
        description="; ".join(failing) or None, metadata={"failing": len(failing)},
    )
    return dg.MaterializeResult(check_results=[check], metadata={
        "status": summary["status"],
        "flows": dg.MetadataValue.md(table),
        "flow_status": dg.MetadataValue.json(flows),
        "connection_status": dg.MetadataValue.json(connections),
        "rows_stored": stored,
        "connector_failing": dg.MetadataValue.json(connectors),
    })


# ----------------------------------------------------------------------------- alerts


@dg.asset(
    group_name=GROUP,
    kinds={"python"},
    deps=[orphan_orders, finance_reconciliation, health_snapshot],
    check_specs=[dg.AssetCheckSpec("alert_channels_delivering", asset="alert_dispatch",
                                   description="Every alert channel delivers (no CONNECTOR_FAILING on alerts:*).")],
    description="Alerts for new and SLA-breaching exceptions sent to each owner's channels (deduplicated, digests, "
    "retries; a failing channel raises CONNECTOR_FAILING).",
)
def alert_dispatch(context: dg.AssetExecutionContext, state: StateStoreResource, policies: PoliciesResource) -> dg.MaterializeResult:
    store = state.store()
    report = dispatch_alerts(store, policies.load(), AlertSender.from_settings(get_settings()))
    context.log.info(report.summary())
    with store.read() as con:
        failing = con.execute(
            "SELECT entity_id, message FROM exceptions WHERE code = ? AND status <> 'resolved'"
            " AND starts_with(entity_id, 'alerts:') ORDER BY entity_id",
            [CONNECTOR_CODE],
        ).fetchall()
    check = dg.AssetCheckResult(
        check_name="alert_channels_delivering", passed=not failing, severity=dg.AssetCheckSeverity.ERROR,
        description="; ".join(m for _, m in failing) or None,
        metadata={"failing_channels": [e.removeprefix("alerts:") for e, _ in failing], "alerts_waiting": report.waiting},
    )
    return dg.MaterializeResult(check_results=[check], metadata={**report.as_metadata(), "summary": report.summary()})


# ---------------------------------------------------------------------- jobs, schedules

monitoring_job = dg.define_asset_job(
    "monitoring",
    selection=dg.AssetSelection.assets(orphan_orders, health_snapshot, alert_dispatch),
    description="Compare orders with Clarus, snapshot health, send due alerts.",
)
reconciliation_job = dg.define_asset_job(
    "reconcile_finance",
    selection=dg.AssetSelection.assets(finance_reconciliation),
    partitions_def=daily,
    description="Reconcile one UTC day and write its CSV report.",
)

payouts_job = dg.define_asset_job(
    "reconcile_payouts",
    selection=dg.AssetSelection.assets(shopify_payouts),
    partitions_def=daily,
    description="Read one UTC day's Shopify Payments payouts and match them against our records.",
)

monitoring_schedule = dg.ScheduleDefinition(
    name="monitoring",
    job=monitoring_job,
    cron_schedule="*/15 * * * *",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Every 15 minutes: orphan orders, health snapshot, alert dispatch.",
)


@dg.schedule(
    name="finance_reconciliation",
    job=reconciliation_job,
    cron_schedule="15 * * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Hourly at :15: today's reconciliation report so far; at 00:15 also the final report of yesterday.",
)
def reconciliation_schedule(context: dg.ScheduleEvaluationContext):
    moment = context.scheduled_execution_time
    today = moment.date()
    days = [today]
    if moment.hour == 0:
        days.insert(0, today - timedelta(days=1))
    return [
        dg.RunRequest(run_key=f"{day.isoformat()}@{moment:%Y%m%dT%H%M}", partition_key=day.isoformat())
        for day in days
    ]


def _days(moment: datetime) -> list:
    """Today, and at midnight's hour also yesterday (its final run)."""
    today = moment.date()
    return [today - timedelta(days=1), today] if moment.hour == 0 else [today]


@dg.schedule(
    name="shopify_payouts",
    job=payouts_job,
    cron_schedule="5 * * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Hourly at :05: today's Shopify Payments payouts; at 00:05 also yesterday's, final.",
)
def payouts_schedule(context: dg.ScheduleEvaluationContext):
    moment = context.scheduled_execution_time
    return [dg.RunRequest(run_key=f"{day.isoformat()}@{moment:%Y%m%dT%H%M}", partition_key=day.isoformat())
            for day in _days(moment)]


defs = dg.Definitions(
    assets=[orphan_orders, finance_reconciliation, shopify_payouts, health_snapshot, alert_dispatch],
    jobs=[monitoring_job, reconciliation_job, payouts_job],
    schedules=[monitoring_schedule, reconciliation_schedule, payouts_schedule],
)
