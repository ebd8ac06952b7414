"""The production storage profile: deploy/dagster.yaml on the real local PostgreSQL.

A sensor tick and the job it asks for run on an instance whose runs, event log and
schedule/sensor storage live in PostgreSQL; we read them back from PostgreSQL itself.
"""

import json
import shutil
import uuid
from pathlib import Path

import dagster as dg
import psycopg2
import pytest

from clarus_pipelines.receiver.landing import Envelope, LandingZone
from clarus_pipelines.state import StateStore
from payloads import OURS

REPO = Path(__file__).resolve().parents[2]
PG = dict(host="127.0.0.1", port=5432, user="postgres")

pytestmark = pytest.mark.postgres


@pytest.fixture
def pg_database():
    name = f"clarus_test_{uuid.uuid4().hex[:10]}"
    try:
        admin = psycopg2.connect(dbname="postgres", **PG)
    except psycopg2.OperationalError as exc:
        pytest.fail(f"PostgreSQL is not reachable on 127.0.0.1:5432 (scripts/ensure_postgres.sh starts it): {exc}")
    admin.autocommit = True
    admin.cursor().execute(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        admin.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def test_job_and_sensor_tick_on_postgres_instance(tmp_path, monkeypatch, pg_database):
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    shutil.copy(REPO / "deploy" / "dagster.yaml", dagster_home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(dagster_home))
    monkeypatch.setenv("DAGSTER_PG_URL", f"postgresql://postgres@127.0.0.1:5432/{pg_database}")
    home = tmp_path / "home"
    monkeypatch.setenv("CLARUS_PIPELINES_HOME", str(home))

    # one Shopify webhook (our sample order, in the real 2025-07 shape) in the landing zone
    body = OURS.bytes("order_rest_2025_07")
    order = json.loads(body)["order"]
    LandingZone(home / "landing").land(
        Envelope(source="shopify", topic="orders/create", body=json.dumps(order).encode(), dedupe_key="wh-pg-1", webhook_id="wh-pg-1")
    )

    from clarus_pipelines.definitions import build_defs, build_resources

    repo = build_defs().get_repository_def()
    sensor = repo.get_sensor_def("webhook_landings")  # every source (shopify_landings until issue 13)
    resources = build_resources()

    with dg.DagsterInstance.get() as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        with dg.build_sensor_context(instance=instance, cursor=None, resources=resources, repository_def=repo) as ctx:
            result = sensor(ctx)
        assert isinstance(result, dg.SensorResult) and len(result.run_requests) == 1
        request = result.run_requests[0]

        job = repo.get_job(sensor.job_name)
        outcome = job.execute_in_process(
            run_config=request.run_config, instance=instance, tags={**request.tags, "dagster/run_key": request.run_key}
        )
        assert outcome.success

    # the run and its events are in PostgreSQL, not on local disk
    with psycopg2.connect(dbname=pg_database, **PG) as conn, conn.cursor() as cur:
        cur.execute("SELECT status FROM runs WHERE run_id = %s", [outcome.run_id])
        assert cur.fetchone() == ("SUCCESS",)
        cur.execute("SELECT count(*) FROM event_logs WHERE run_id = %s", [outcome.run_id])
        assert cur.fetchone()[0] > 0
    assert not (dagster_home / "history").exists()

    with StateStore(home / "state.duckdb").read() as con:
        rows = con.execute("SELECT source, topic, entity_id FROM landed_events").fetchall()
    assert rows == [("shopify", "orders/create", str(order["id"]))]
