"""A failed run raises RUN_FAILED for the integration engineer; the job's next success clears it.

Real runs on an ephemeral Dagster instance, a real state file; the sensors are evaluated on
the failure and success events those runs wrote."""

import typing

import dagster as dg
import pytest

from clarus_pipelines import catalogue
from clarus_pipelines.resources import PoliciesResource, StateStoreResource
from clarus_pipelines.settings import SANDBOX_POLICIES
from clarus_pipelines.sensors.run_failures import run_failure_sensor, run_success_sensor

FAIL = {"value": True}


@dg.op
def send_goods_outs() -> None:
    if FAIL["value"]:
        raise RuntimeError("Clarus refused the client credentials (401)")


@dg.job
def goods_out_job():
    send_goods_outs()


@pytest.fixture
def resources(tmp_path):
    return {
        "state": StateStoreResource(path=str(tmp_path / "state.duckdb")),
        "policies": PoliciesResource(path=str(SANDBOX_POLICIES)),
    }


def _run_and_evaluate(instance, resources, *, fail: bool):
    FAIL["value"] = fail
    result = goods_out_job.execute_in_process(instance=instance, raise_on_error=False)
    assert result.success is not fail
    run = instance.get_run_by_id(result.run_id)
    status = dg.DagsterEventType.RUN_FAILURE if fail else dg.DagsterEventType.RUN_SUCCESS
    [record] = instance.get_records_for_run(result.run_id, of_type=status).records
    context = dg.build_run_status_sensor_context(
        sensor_name="run_failures" if fail else "run_successes", dagster_instance=instance, dagster_run=run,
        dagster_event=record.event_log_entry.dagster_event, resources=resources,
    )
    if fail:
        run_failure_sensor(context.for_run_failure())
    else:
        run_success_sensor(context)
    return result.run_id


def _open(resources):
    with resources["state"].store().read() as con:
        return con.execute(
            "SELECT entity_id, message, owner FROM exceptions WHERE code = 'RUN_FAILED' AND status <> 'resolved'"
        ).fetchall()


def test_a_failed_run_raises_run_failed_and_a_success_clears_it(resources):
    assert catalogue.get("RUN_FAILED").owner == "integration"
    with dg.DagsterInstance.ephemeral() as instance:
        run_id = _run_and_evaluate(instance, resources, fail=True)
        [(entity, message, owner)] = _open(resources)
        assert entity == "goods_out_job" and owner == "integration"
        assert run_id[:8] in message and "send_goods_outs" in message and "401" in message

        _run_and_evaluate(instance, resources, fail=True)  # failing again: still one exception, refreshed
        assert len(_open(resources)) == 1

        _run_and_evaluate(instance, resources, fail=False)
        assert _open(resources) == []


def test_the_code_location_watches_its_runs_and_names_asset_owners():
    from clarus_pipelines.definitions import defs

    repo = defs.get_repository_def()
    assert {"run_failures", "run_successes"} <= {s.name for s in repo.sensor_defs}
    graph = repo.asset_graph
    owners = {key.to_user_string(): graph.get(key).owners for key in graph.get_all_asset_keys()}
    assert owners["shopify_orders"] == ["team:ops"] and owners["landed_events"] == ["team:integration"]
    assert owners["stock_snapshots"] == ["team:merchandising"] and owners["refunds"] == ["team:finance"]
    roles = set(typing.get_args(catalogue.Owner))
    assert all(len(o) == 1 and o[0].removeprefix("team:") in roles for o in owners.values())
