"""Every Dagster definition loads, resolves its resources, and the workspace points at it."""

from pathlib import Path

import dagster as dg
import yaml

REPO = Path(__file__).resolve().parents[2]


def test_definitions_load_and_validate():
    from clarus_pipelines.definitions import defs

    repo = defs.get_repository_def()  # resolves every asset, check, job, sensor and schedule
    assert repo.get_all_jobs()
    assert dg.Definitions.validate_loadable(defs) is None


def test_every_domain_contributes():
    from clarus_pipelines.definitions import defs

    repo = defs.get_repository_def()
    keys = {key.to_user_string() for key in repo.asset_graph.get_all_asset_keys()}
    for expected in ("landed_events", "item_master", "stock_snapshots", "integration_audit"):
        assert any(k.endswith(expected) for k in keys), f"{expected} missing from {sorted(keys)}"
    sensors = {s.name for s in repo.sensor_defs}
    assert "webhook_landings" in sensors  # every source's landings (one sensor per source until issue 13)
    assert repo.schedule_defs, "no schedules (reconciliation, retention, data quality)"
    assert "integration_audit_weekly" in {s.name for s in repo.schedule_defs}


def test_workspace_yaml_targets_the_definitions_module():
    workspace = yaml.safe_load((REPO / "workspace.yaml").read_text())
    module = workspace["load_from"][0]["python_module"]["module_name"]
    assert module == "clarus_pipelines.definitions"


def _checks_of(repo, job_name: str) -> set[str]:
    return {key.name for key in repo.get_job(job_name).asset_layer.asset_graph.asset_check_keys}


def test_data_quality_suites_run_only_in_their_own_job():
    """The GX suites (tens of seconds a run) are off the event path: only `data_quality` runs them."""
    from clarus_pipelines.assets.data_quality import SUITES
    from clarus_pipelines.definitions import defs

    repo = defs.get_repository_def()
    suites = {suite.check_name for suite in SUITES}
    assert _checks_of(repo, "data_quality") == suites
    for job in repo.get_all_jobs():
        if job.name != "data_quality" and not job.name.startswith("__"):
            assert not _checks_of(repo, job.name) & suites, f"{job.name} runs data-quality suites"
    # the event path keeps only its own short blocking checks
    assert _checks_of(repo, "orders_into_warehouse") == set()
    assert _checks_of(repo, "ingest_landings") == set()
    assert _checks_of(repo, "stock_refresh") == {
        "balances_readable", "balance_keys_unique", "available_to_sell_possible", "all_sets_accepted"}
    assert _checks_of(repo, "item_master_sync") == {
        "item_master_skus_unique", "item_master_barcodes_valid", "variants_in_item_master", "variant_skus_keep_leading_zeros"}


def test_the_instance_not_the_sensors_prevents_overlap(tmp_path):
    """Pools and tag concurrency limits, configured in the demo's instance and in deploy/dagster.yaml."""
    from clarus_pipelines.definitions import defs
    from clarus_pipelines.commands.demo import DAGSTER_CONCURRENCY_YAML, DAGSTER_DAEMON_YAML, DEMO_DAGSTER_YAML

    deployed = yaml.safe_load((REPO / "deploy" / "dagster.yaml").read_text())
    assert deployed["concurrency"] == yaml.safe_load(DAGSTER_CONCURRENCY_YAML)["concurrency"]
    daemon = yaml.safe_load(DAGSTER_DAEMON_YAML)  # the queue read every second
    assert deployed["run_coordinator"] == daemon["run_coordinator"]
    (tmp_path / "dagster.yaml").write_text(DEMO_DAGSTER_YAML)
    instance = dg.DagsterInstance.from_config(str(tmp_path))
    assert instance.event_log_storage.get_concurrency_info("shopify_stock_push").limit == 1  # one push at a time
    [limit] = instance.get_concurrency_config().run_queue_config.tag_concurrency_limits
    assert instance.run_coordinator.dequeue_interval_seconds == 1
    assert limit == {"key": "flow", "value": {"applyLimitPerUniqueValue": True}, "limit": 1}

    repo = defs.get_repository_def()
    flows = {job: repo.get_job(job).tags.get("flow") for job in (
        "ingest_landings", "orders_into_warehouse", "held_orders_recheck_job", "order_changes_job", "dispatch",
        "dispatch_sweep", "stock_sync", "stock_refresh", "item_master_sync", "refunds_job")}
    assert all(flows.values()), flows
    assert flows["orders_into_warehouse"] == flows["order_changes_job"] == flows["held_orders_recheck_job"] == "orders"
    assert flows["stock_sync"] == flows["stock_refresh"] and flows["dispatch"] == flows["dispatch_sweep"]
    assert repo.get_job("event_path").tags["flow"] == "orders"  # the drain never runs beside another orders run
    # no sensor polls the run list to avoid overlap any more
    for path in (*REPO.glob("sensors/*.py"), *REPO.glob("assets/*.py")):
        assert "get_runs(" not in path.read_text(), path



def test_one_freshness_mechanism_per_asset():
    """An asset is watched for freshness by a freshness check or a FreshnessPolicy, never both
    (two verdicts on one question); today that is the stock snapshots' last-update check."""
    from clarus_pipelines.definitions import defs

    graph = defs.get_repository_def().asset_graph
    checked = {key.asset_key for key in graph.asset_check_keys if key.name == "freshness_check"}
    assert dg.AssetKey("stock_snapshots") in checked
    both = [key for key in checked if graph.get(key).freshness_policy is not None]
    assert both == []


def landing_retention_job() -> dg.JobDefinition:
    from clarus_pipelines.definitions import defs

    return defs.get_job_def("landing_retention_job")


def test_steps_hand_each_other_nothing_so_no_run_writes_outputs_to_disk(tmp_path):
    """Every step input is Nothing (the data lives in the state store), so what a step returns
    can stay in memory: a run on a worker writes nothing under the launching instance's
    DAGSTER_HOME (Dagster's default IO manager would, from whichever host runs it)."""
    from clarus_pipelines.definitions import defs

    repo = defs.get_repository_def()
    valued_inputs = {(node.name, i.name) for job in repo.get_all_jobs() for node in job.graph.iterate_node_defs()
                     for i in node.input_defs if not i.dagster_type.is_nothing}
    assert not valued_inputs, f"steps that load another step's output need a storing IO manager: {valued_inputs}"

    # a job whose ops return values, on a persistent instance configured as deploy/dagster.yaml
    # (no compute logs): nothing lands in its storage
    job = landing_retention_job()
    assert any(not out.dagster_type.is_nothing for node in job.graph.iterate_node_defs() for out in node.output_defs)
    (tmp_path / "home").mkdir()
    no_compute_logs = {"module": "dagster._core.storage.noop_compute_log_manager", "class": "NoOpComputeLogManager"}
    with dg.DagsterInstance.local_temp(str(tmp_path / "home"), overrides={"compute_logs": no_compute_logs}) as instance:
        # as the daemon runs it (execute_in_process would swap in an in-memory IO manager itself)
        with dg.execute_job(dg.reconstructable(landing_retention_job), instance) as result:
            assert result.success, [e.message for e in result.all_events if e.is_failure]
        storage = Path(instance.storage_directory())
        assert not storage.exists() or not any(storage.rglob("*")), sorted(storage.rglob("*"))
