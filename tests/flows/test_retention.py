"""Retention for every class of record, with non-default values, on a real state (a DuckDB file or
a PostgreSQL database) and through the daily Dagster retention job."""

from __future__ import annotations

from datetime import timedelta

import dagster as dg
import yaml

from clarus_pipelines.assets.stock import STOCK_PARTITIONS
from clarus_pipelines.domain.retention import prune_records
from clarus_pipelines.exception_queue import raise_exception, resolve, utcnow
from clarus_pipelines.resources import LandingZoneResource, PoliciesResource, StateStoreResource
from clarus_pipelines.settings import SANDBOX_POLICIES, load_policies
from clarus_pipelines.state import StateStore
from clarus_pipelines.sensors.maintenance import defs as maintenance_defs
from pgstate import state_base
from world import make_store

STATE_BACKENDS = ("duckdb", "postgres")  # every test once per state backend (tests/flows/conftest.py)

NOW = utcnow().replace(microsecond=0)
SHORT = {"orders_days": 10, "order_events_days": 20, "shipments_days": 15, "exceptions_days": 5, "alerts_days": 3,
         "health_days": 2}


def short_policies(tmp_path, *, landing_days=7, stock_days=None):
    data = yaml.safe_load(SANDBOX_POLICIES.read_text())
    data["retention"] = dict(SHORT)
    data["timings"]["landing_retention_days"] = landing_days
    if stock_days is not None:
        data["stock"]["snapshot_retention_days"] = stock_days
    path = tmp_path / "policies.yaml"
    path.write_text(yaml.safe_dump(data))
    return path, load_policies(path)


def days_ago(n):
    return NOW - timedelta(days=n)


def seed(store: StateStore, policies) -> None:
    with store.write() as con:
        def order(order_id, status, clarus_status, age):
            con.execute("INSERT INTO orders (order_id, order_name, status, clarus_status, received_at, updated_at)"
                        " VALUES (?, ?, ?, ?, ?, ?)", [order_id, f"#{order_id}", status, clarus_status, days_ago(age), days_ago(age)])
            con.execute("INSERT INTO order_lines (order_id, line_id, sku, quantity) VALUES (?, ?, '000123', 1)",
                        [order_id, f"{order_id}-1"])
            con.execute("INSERT INTO bindings (entity_type, our_id, clarus_id, created_at, updated_at)"
                        " VALUES ('order', ?, 'G', ?, ?)", [order_id, days_ago(age), days_ago(age)])
            con.execute("INSERT INTO order_events (order_id, occurred_at, system, state) VALUES (?, ?, 'pipeline', 'X')",
                        [order_id, days_ago(age)])

        order("old-done", "ACKNOWLEDGED", 6, 30)       # completed in Clarus a month ago: goes
        order("old-cancelled", "CANCELLED", None, 30)  # cancelled a month ago: goes
        order("recent-done", "ACKNOWLEDGED", 6, 5)     # completed 5 days ago: stays (10 days)
        order("old-moving", "ACKNOWLEDGED", 3, 30)     # still being picked: stays whatever its age
        order("old-flagged", "ACKNOWLEDGED", 6, 30)    # finished but with an open exception: stays
        raise_exception(con, "ORPHAN_ORDER", "old-flagged", "still open", policies=policies, now=days_ago(30))

        for shipment_id, order_id, state, age in (("S-old", "old-done", "CHANNEL_CONFIRMED", 30),
                                                  ("S-recent", "recent-done", "CHANNEL_CONFIRMED", 5),
                                                  ("S-stuck", "old-moving", "ERP_ORDER_CONFIRMED", 30)):
            con.execute("INSERT INTO shipments (shipment_id, order_id, state, updated_at) VALUES (?, ?, ?, ?)",
                        [shipment_id, order_id, state, days_ago(age)])
            con.execute("INSERT INTO shipment_lines (shipment_id, sku, quantity) VALUES (?, '000123', 1)", [shipment_id])

        # exceptions: one resolved a week ago (goes at 5 days), one resolved yesterday, one open and old
        raise_exception(con, "SKU_UNKNOWN", "resolved-old", "x", policies=policies, now=days_ago(9))
        resolve(con, "SKU_UNKNOWN", "resolved-old", actor="ops", now=days_ago(7))
        raise_exception(con, "SKU_UNKNOWN", "resolved-new", "x", policies=policies, now=days_ago(2))
        resolve(con, "SKU_UNKNOWN", "resolved-new", actor="ops", now=days_ago(1))
        raise_exception(con, "SKU_UNKNOWN", "open-old", "x", policies=policies, now=days_ago(60))

        for taken_at in (days_ago(3), days_ago(1)):
            con.execute("INSERT INTO health_snapshots (taken_at, kind, name, status, open_exceptions)"
                        " VALUES (?, 'flow', 'orders', 'ok', 0)", [taken_at])
        for landing_id, age in (("L-old", 8), ("L-new", 6)):
            con.execute("INSERT INTO order_landings (landing_id, order_id, topic, outcome, processed_at)"
                        " VALUES (?, 'x', 'orders/create', 'applied', ?)", [landing_id, days_ago(age)])
        for code, entity, age in (("SKU_UNKNOWN", "resolved-old", 8), ("SKU_UNKNOWN", "open-old", 8),
                                  ("SKU_UNKNOWN", "resolved-new", 1)):
            con.execute("INSERT INTO alerts (code, entity_id, reason, episode_started_at, owner, severity, title, text,"
                        " sla_minutes, due_at) VALUES (?, ?, 'new', ?, 'merchandising', 'high', 't', 't', 60, ?)",
                        [code, entity, days_ago(age), days_ago(age)])


def ids(con, sql):
    return sorted(r[0] for r in con.execute(sql).fetchall())


def test_each_class_is_pruned_by_its_own_retention_and_open_work_stays(tmp_path, state, state_backend):
    _, policies = short_policies(tmp_path)
    store = make_store(state)
    seed(store, policies)
    with store.write() as con:
        removed = prune_records(con, policies, NOW)
    with store.read() as con:
        assert ids(con, "SELECT order_id FROM orders") == ["old-flagged", "old-moving", "recent-done"]
        assert ids(con, "SELECT DISTINCT order_id FROM order_lines") == ["old-flagged", "old-moving", "recent-done"]
        assert ids(con, "SELECT our_id FROM bindings") == ["old-flagged", "old-moving", "recent-done"]
        # history: 20 days; the flagged order's history stays with its open exception
        assert ids(con, "SELECT order_id FROM order_events") == ["old-flagged", "recent-done"]
        assert ids(con, "SELECT shipment_id FROM shipments") == ["S-recent", "S-stuck"]
        assert ids(con, "SELECT shipment_id FROM shipment_lines") == ["S-recent", "S-stuck"]
        assert ids(con, "SELECT entity_id FROM exceptions") == ["old-flagged", "open-old", "resolved-new"]
        assert ids(con, "SELECT DISTINCT entity_id FROM exception_events") == ["old-flagged", "open-old", "resolved-new"]
        assert con.execute("SELECT count(*) FROM health_snapshots").fetchone()[0] == 1  # 2 days
        assert ids(con, "SELECT landing_id FROM order_landings") == ["L-new"]  # landings: 7 days
        assert ids(con, "SELECT entity_id FROM alerts") == ["open-old", "resolved-new"]  # an open one's alert stays
    assert removed["orders"] == 2 and removed["shipments"] == 1 and removed["exceptions"] == 1
    assert removed["alerts"] == 1 and removed["health_snapshots"] == 1

    # the defaults (400 / 180 / 90 / 30 days) keep all of it
    (tmp_path / "defaults").mkdir()
    with state_base(state_backend, tmp_path / "defaults") as state2:
        store2 = make_store(state2)
        defaults = load_policies(SANDBOX_POLICIES)
        seed(store2, defaults)
        with store2.write() as con:
            kept = prune_records(con, defaults, NOW)
    assert kept["orders"] == kept["shipments"] == kept["exceptions"] == kept["order_landings"] == 0


def test_the_daily_retention_job_applies_the_configured_values(tmp_path, state):
    path, policies = short_policies(tmp_path, landing_days=7)
    store = make_store(state)
    seed(store, policies)
    resources = {
        "landing": LandingZoneResource(path=str(tmp_path / "landing")),
        "state": StateStoreResource(path=str(state)),
        "policies": PoliciesResource(path=str(path)),
    }
    merged = dg.Definitions.merge(maintenance_defs, dg.Definitions(resources=resources))
    result = merged.resolve_job_def("landing_retention_job").execute_in_process(instance=dg.DagsterInstance.ephemeral())
    assert result.success
    assert result.output_for_node("prune_landings")["retention_days"] == 7
    summary = result.output_for_node("prune_state_records")
    assert summary["retention"] == SHORT
    assert summary["rows_removed"]["orders"] == 2 and summary["rows_removed"]["order_landings"] == 1
    with store.read() as con:
        assert con.execute("SELECT count(*) FROM orders").fetchone()[0] == 3


def test_pruned_stock_hours_are_no_longer_shown_as_materialized(tmp_path, state):
    """Retention and partition status agree: an hour whose snapshot rows were pruned is no longer
    a stock partition, so Dagster shows it neither as materialized nor as missing."""
    path, _ = short_policies(tmp_path, stock_days=3)
    store = make_store(state)
    now = NOW.replace(minute=0, second=0)
    hours = {"old": now - timedelta(days=5), "old_no_rows": now - timedelta(days=4), "edge": now - timedelta(days=3),
             "recent": now - timedelta(days=2), "newest": now}
    keys = {name: hour.strftime("%Y-%m-%d-%H:%M") for name, hour in hours.items()}
    (tmp_path / "dagster").mkdir()
    instance = dg.DagsterInstance.local_temp(str(tmp_path / "dagster"))
    instance.add_dynamic_partitions("stock_hours", list(keys.values()))
    with store.write() as con:
        for name, hour in hours.items():
            if name != "old_no_rows":
                con.execute("INSERT INTO stock_snapshots (snapshot_hour, taken_at, clarus_product_id, sku, warehouse_id,"
                            " account_id, available, allocated, on_hold) VALUES (?, ?, '1', '000123', '1', '1', 5, 0, 0)",
                            [hour, hour])
    for name, key in keys.items():
        if name != "old_no_rows":
            instance.report_runless_asset_event(dg.AssetMaterialization(asset_key="stock_snapshots", partition=key))
    asset = dg.AssetKey("stock_snapshots")
    assert materialized_hours(instance) == {keys["old"], keys["edge"], keys["recent"], keys["newest"]}
    resources = {
        "landing": LandingZoneResource(path=str(tmp_path / "landing")),
        "state": StateStoreResource(path=str(state)),
        "policies": PoliciesResource(path=str(path)),
    }
    merged = dg.Definitions.merge(maintenance_defs, dg.Definitions(resources=resources))
    result = merged.resolve_job_def("landing_retention_job").execute_in_process(instance=instance)
    assert result.success
    summary = result.output_for_node("prune_stock_snapshots")
    assert summary["retention_days"] == 3
    # the hour exactly 3 days old is older than the cutoff (a few seconds past the hour): it goes too
    assert summary["snapshot_rows_removed"] == 2 and summary["partitions_deleted"] == 3
    kept = {keys["recent"], keys["newest"]}
    assert set(instance.get_dynamic_partitions("stock_hours")) == kept
    assert materialized_hours(instance) == kept
    assert instance.get_status_by_partition(asset, list(keys.values()), STOCK_PARTITIONS)[keys["old"]] is None
    with store.read() as con:
        assert {r[0] for r in con.execute("SELECT snapshot_hour FROM stock_snapshots").fetchall()} == {
            hours["recent"], hours["newest"]}

    again = merged.resolve_job_def("landing_retention_job").execute_in_process(instance=instance)
    assert again.output_for_node("prune_stock_snapshots")["partitions_deleted"] == 0


def materialized_hours(instance: dg.DagsterInstance) -> set[str]:
    """The stock hours Dagster shows as materialized: its partition status over the partitions that exist."""
    statuses = instance.get_status_by_partition(
        dg.AssetKey("stock_snapshots"), instance.get_dynamic_partitions("stock_hours"), STOCK_PARTITIONS)
    return {key for key, status in (statuses or {}).items() if status == dg.AssetPartitionStatus.MATERIALIZED}
