"""Live health: a cheap authenticated read of each system on a schedule.

`connector_probes` (every 5 minutes) calls `probe()` on the Clarus, Shopify and NetSuite
resources (a fresh token or signed request and a one-row read), records each answer in
`connector_probes` (`clarus_pipelines.domain.health.record_probe`) and syncs
CONNECTOR_FAILING: a system whose last `PROBE_FAILURES` probes failed is failing even when
no order is moving; the first probe that succeeds clears it. The health page shows each
system's last successful authenticated read.
"""

import time

import dagster as dg

from clarus_pipelines.connectors.clarus import ClarusResource
from clarus_pipelines.domain.ports import ConnectorError
from clarus_pipelines.connectors.netsuite import NetSuiteResource
from clarus_pipelines.connectors.shopify import ShopifyResource
from clarus_pipelines.domain import health
from clarus_pipelines.exception_queue import sync_exceptions, utcnow
from clarus_pipelines.logs import mask_pii
from clarus_pipelines.resources import PoliciesResource, StateStoreResource

CONNECTOR_CODE = "CONNECTOR_FAILING"


def probe_all(systems: dict) -> dict[str, dict]:
    """Probe each system: {system: {ok, latency_ms, error}}. One failing system never stops the others."""
    results = {}
    for system, resource in systems.items():
        started = time.monotonic()
        try:
            resource.probe()
            ok, error = True, None
        except (ConnectorError, OSError) as exc:  # the connector's error, or the network below it
            ok, error = False, mask_pii(str(exc))[:500]
        results[system] = {"ok": ok, "latency_ms": round((time.monotonic() - started) * 1000, 1), "error": error}
    return results


@dg.op(description="Probe Clarus, Shopify and NetSuite with a cheap authenticated read; record the answers and sync "
       "CONNECTOR_FAILING.", tags={"flow": "monitoring"})
def probe_connectors(context: dg.OpExecutionContext, state: StateStoreResource, policies: PoliciesResource,
                     clarus: ClarusResource, shopify: ShopifyResource, netsuite: NetSuiteResource) -> dict:
    results = probe_all({"clarus": clarus, "shopify": shopify, "netsuite": netsuite})
    now = utcnow()
    with state.store().write() as con:
        for system, result in results.items():
            health.record_probe(con, system, ok=result["ok"], at=now, latency_ms=result["latency_ms"], error=result["error"])
        outcome = sync_exceptions(con, CONNECTOR_CODE, health.connector_findings(con, now=now),
                                  scope=list(health.SYSTEMS), policies=policies.load(), now=now)
    for system, result in results.items():
        if result["ok"]:
            context.log.info("%s answered in %.0f ms", system, result["latency_ms"])
        else:
            context.log.warning("%s probe failed: %s", system, result["error"])
    context.add_output_metadata({f"{s}_ok": r["ok"] for s, r in results.items()}
                                | {f"{s}_latency_ms": r["latency_ms"] for s, r in results.items()})
    return {"probes": results, "exceptions": outcome}


@dg.job(description="Live health: a cheap authenticated read of each connected system.", tags={"flow": "monitoring"})
def connector_probes_job():
    probe_connectors()


connector_probes_schedule = dg.ScheduleDefinition(
    name="connector_probes",
    job=connector_probes_job,
    cron_schedule="*/5 * * * *",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Every 5 minutes: does each system answer an authenticated read? (health page, CONNECTOR_FAILING)",
)

defs = dg.Definitions(jobs=[connector_probes_job], schedules=[connector_probes_schedule])
