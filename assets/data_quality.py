"""Data quality: the great-expectations suites of `quality/suites/`, as Dagster asset checks.

Each suite is one asset check (`quality_<suite>`) on the asset that writes its table
(items -> item_master, orders and lines -> shopify_orders, shipments -> shipments, ...).
All suites run in one step (`data_quality_suites`, subsettable): the tables are read in
one shared read of the state file, then validated in memory with GX (see
`clarus_pipelines.data_quality`). A failed critical expectation fails the check with
severity ERROR, a failed `"severity": "warning"` one with WARN; the metadata carries each
expectation's outcome and a sample of the failing rows (their ids and the offending
values). Results are also kept in `data_quality_results` for the dashboard.

The `data_quality` schedule runs every suite hourly; run one by hand from the asset's
Checks tab. No other job runs them (every other asset job selects its own checks
explicitly): the event path (ingest, orders, stock refresh, item master) never waits for GX.
"""

import dagster as dg

from clarus_pipelines.data_quality import (
    SUITES_DIR,
    SuiteResult,
    load_suites,
    read_tables,
    record_results,
    suite_parameters,
    validate,
)
from clarus_pipelines.exception_queue import utcnow
from clarus_pipelines.resources import PoliciesResource, StateStoreResource

SUITES = load_suites()
if not SUITES:  # an install that lost the package's quality/suites/: say so instead of silently checking nothing
    raise RuntimeError(f"no data-quality suites found in {SUITES_DIR}")
SAMPLE_ROWS = 10


def _markdown(rows: list[dict]) -> str:
    if not rows:
        return "No failing rows."
    columns = list(dict.fromkeys(k for row in rows for k in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [str(row.get(c, "")).replace("|", "\\|") for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def check_result(result: SuiteResult) -> dg.AssetCheckResult:
    suite = result.suite
    metadata = {
        "rows_checked": result.rows_checked,
        "expectations": len(result.outcomes),
        "failed_expectations": len(result.failed),
        "outcomes": dg.MetadataValue.json([o.as_dict() for o in result.outcomes]),
        "failing_rows_sample": dg.MetadataValue.md(_markdown(result.failing_sample())),
    }
    if suite.path is not None:
        metadata["suite_file"] = dg.MetadataValue.path(str(suite.path))
    if result.error:
        metadata["error"] = result.error
    return dg.AssetCheckResult(
        asset_key=dg.AssetKey(suite.asset),
        check_name=suite.check_name,
        passed=result.success,
        severity=dg.AssetCheckSeverity.ERROR if result.critical else dg.AssetCheckSeverity.WARN,
        description=result.summary(),
        metadata=metadata,
    )


@dg.multi_asset_check(
    name="data_quality_suites",
    specs=[
        dg.AssetCheckSpec(s.check_name, asset=s.asset, description=f"great-expectations suite '{s.name}': {s.description}")
        for s in SUITES
    ],
    can_subset=True,
)
def data_quality_suites(
    context: dg.AssetCheckExecutionContext, state: StateStoreResource, policies: PoliciesResource
):
    selected = {key.name for key in context.selected_asset_check_keys}
    suites = [s for s in SUITES if s.check_name in selected]
    run_at = utcnow()
    store = state.store()
    with store.read() as con:
        frames = read_tables(con, suites)
    # validated after the read lock is released: writers never wait for GX
    results = validate(suites, frames, suite_parameters(policies.load()), sample_size=SAMPLE_ROWS)
    with store.write() as con:
        record_results(con, results, run_at=run_at, run_id=context.run.run_id)
    for result in results:
        (context.log.info if result.success else context.log.warning)(result.summary())
        yield check_result(result)


# The suites read whole tables (tens of seconds on a busy day): they run in the `data_quality`
# job only. Every other asset job selects its own checks explicitly, so no event-path run waits for GX.
DATA_QUALITY_CHECKS = dg.AssetSelection.checks(data_quality_suites)

data_quality_job = dg.define_asset_job(
    "data_quality",
    selection=DATA_QUALITY_CHECKS,
    description="Run every great-expectations suite against the state tables.",
)

data_quality_schedule = dg.ScheduleDefinition(
    name="data_quality",
    job=data_quality_job,
    cron_schedule="40 * * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Hourly at :40: validate the state tables with the great-expectations suites in quality/suites/.",
)

defs = dg.Definitions(asset_checks=[data_quality_suites], jobs=[data_quality_job], schedules=[data_quality_schedule])
