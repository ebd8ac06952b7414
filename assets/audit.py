"""The integration audit as a Dagster asset: weekly, and on demand from the UI.

`integration_audit` reads Clarus, Shopify and NetSuite (read-only) and our state, applies
every audit rule (`clarus_pipelines.audit.findings`), keeps the report in
`audit_reports` and shows it as Markdown metadata with its trend against the previous
audit. Its check `no_go_live_blockers` fails while any blocker remains. The same report
is `clarus-pipelines audit` on the command line and the dashboard's Audit page.
"""

from datetime import timedelta

import dagster as dg
from pydantic import Field

from clarus_pipelines.audit import run_audit
from clarus_pipelines.audit.render import to_markdown
from clarus_pipelines.connectors.clarus import ClarusResource
from clarus_pipelines.connectors.netsuite import NetSuiteResource
from clarus_pipelines.connectors.shopify import ShopifyResource
from clarus_pipelines.exception_queue import utcnow
from clarus_pipelines.resources import PoliciesResource, StateStoreResource
from clarus_pipelines.settings import get_settings

GROUP = "audit"


class AuditConfig(dg.Config):
    since_days: float = Field(default=30.0, gt=0, description="Look back this many days for orders, holds, refunds and timings.")
    receiver_url: str | None = Field(
        default=None, description="Our receiver's public URL: Shopify's webhook subscriptions must point at it.")


@dg.asset(
    group_name=GROUP,
    kinds={"duckdb"},
    check_specs=[dg.AssetCheckSpec("no_go_live_blockers", asset="integration_audit",
                                   description="The integration audit finds no blocker (the go-live verdict).")],
    description="One report of the gaps across Clarus, Shopify, NetSuite and our state (item master, ship methods, "
    "stock, webhooks and connections, held orders, refunds, configuration), each with count, examples, owner, "
    "business effect and fix; kept in audit_reports with the trend against the previous audit.",
)
def integration_audit(context: dg.AssetExecutionContext, config: AuditConfig, state: StateStoreResource,
                      policies: PoliciesResource, clarus: ClarusResource, shopify: ShopifyResource,
                      netsuite: NetSuiteResource) -> dg.MaterializeResult:
    now = utcnow()
    report = run_audit(state.store(), policies.load(), now=now, since=now - timedelta(days=config.since_days),
                       clarus=clarus, shopify=shopify, netsuite=netsuite, settings=get_settings(),
                       receiver_url=config.receiver_url, origin="dagster", run_id=context.run_id)
    trend = report["trend"]
    context.log.info("integration audit: %s (%d blocker(s), %d warning(s))", report["verdict"], report["blockers"],
                     report["warnings"])
    blockers = [f"{f['title']} ({f['count']}, {f['owner']})" for f in report["findings"] if f["severity"] == "blocker"]
    check = dg.AssetCheckResult(
        check_name="no_go_live_blockers", passed=not blockers, severity=dg.AssetCheckSeverity.ERROR,
        description="; ".join(blockers) or None, metadata={"blockers": len(blockers)},
    )
    return dg.MaterializeResult(check_results=[check], metadata={
        "verdict": report["verdict"],
        "blockers": report["blockers"],
        "warnings": report["warnings"],
        "blockers_since_previous": trend["blockers_delta"] if trend["blockers_delta"] is not None else "first audit",
        "warnings_since_previous": trend["warnings_delta"] if trend["warnings_delta"] is not None else "first audit",
        "trend": dg.MetadataValue.json(trend),
        "report": dg.MetadataValue.md(to_markdown(report)),
        "audit_id": report["audit_id"],
    })


audit_job = dg.define_asset_job(
    "audit",
    selection=dg.AssetSelection.assets(integration_audit),
    description="Audit the connected systems and our state for gaps, with a go-live verdict.",
)

audit_schedule = dg.ScheduleDefinition(
    name="integration_audit_weekly",
    job=audit_job,
    cron_schedule="0 6 * * 1",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Mondays at 06:00 UTC: the integration audit (also runnable on demand from the asset).",
)

defs = dg.Definitions(assets=[integration_audit], jobs=[audit_job], schedules=[audit_schedule])
