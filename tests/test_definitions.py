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
    for expected in ("landed_events", "item_master", "stock_snapshots", "integration_audit"):
        assert any(k.endswith(expected) for k in keys), f"{expected} missing from {sorted(keys)}"
    sensors = {s.name for s in repo.sensor_defs}
    assert {"shopify_landings", "clarus_landings", "netsuite_landings"} <= sensors
    assert repo.schedule_defs, "no schedules (reconciliation, retention, data quality)"
    assert "integration_audit_weekly" in {s.name for s in repo.schedule_defs}


def test_workspace_yaml_targets_the_definitions_module():
    workspace = yaml.safe_load((REPO / "workspace.yaml").read_text())
    module = workspace["load_from"][0]["python_module"]["module_name"]
    assert module == "clarus_pipelines.definitions"
