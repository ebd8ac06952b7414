"""Every Dagster definition loads, resolves its resources, and the workspace points at it."""

from pathlib import Path

import dagster as dg
import yaml

REPO = Path(__file__).resolve().parents[1]


def test_definitions_load_and_validate():
    from clarus_pipelines.definitions import defs

    repo = defs.get_repository_def()  # resolves every asset, check, job, sensor and schedule
    assert repo.get_all_jobs()
    assert dg.Definitions.validate_loadable(defs) is None


def test_every_domain_contributes():
    from clarus_pipelines.definitions import defs

    repo = defs.get_repository_def()
    keys = {key.to_user_string() for key in repo.asset_graph.get_all_asset_keys()}
    for expected in ("landed_events", "item_master", "stock_snapshots"):
        assert any(k.endswith(expected) for k in keys), f"{expected} missing from {sorted(keys)}"
    sensors = {s.name for s in repo.sensor_defs}
    assert {"shopify_landings", "clarus_landings", "netsuite_landings"} <= sensors
    assert repo.schedule_defs, "no schedules (reconciliation, retention, data quality)"


def test_workspace_yaml_targets_the_definitions_module():
    workspace = yaml.safe_load((REPO / "workspace.yaml").read_text())
    module = workspace["load_from"][0]["python_module"]["module_name"]
    assert module == "clarus_pipelines.definitions"


def _checks_of(repo, job_name: str) -> set[str]:
    return {key.name for key in repo.get_job(job_name).asset_layer.asset_graph.asset_check_keys}


def test_data_quality_suites_run_only_in_their_own_job():
    """The GX suites (tens of seconds a run) are off the event path: only `data_quality` runs them."""
    from assets.data_quality import SUITES
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
