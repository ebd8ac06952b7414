"""Flow and connection health from a state with known backlog, failures and lags."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import dagster as dg
import pytest

from clarus_pipelines.domain import health
from clarus_pipelines.exception_queue import raise_exception, utcnow
from clarus_pipelines.resources import PoliciesResource, StateStoreResource
from clarus_pipelines.settings import SANDBOX_POLICIES
from clarus_pipelines.state import StateStore
from world import make_store

STATE_BACKENDS = ("duckdb", "postgres")  # every test once per state backend (tests/flows/conftest.py)

NOW = datetime(2026, 3, 2, 12, 0)


def ago(**kwargs) -> datetime:
    return NOW - timedelta(**kwargs)


def land(con, landing_id: str, source: str, topic: str, entity_id: str, received: datetime, ingested: datetime) -> int:
    con.execute(
        "INSERT INTO landed_events (landing_id, source, topic, known_topic, entity_type, entity_id, received_at,"
        " dedupe_key, payload, via, ingested_at) VALUES (?, ?, ?, true, ?, ?, ?, ?, '{}', 'webhook', ?)",
        [landing_id, source, topic, topic.split("/")[0].rstrip("s"), entity_id, received, landing_id, ingested],
    )
    return con.execute("SELECT seq FROM landed_events WHERE landing_id = ?", [landing_id]).fetchall()[0][0]


def write(con, key: str, system: str, operation: str, status: str, attempts: int, at: datetime, error=None) -> None:
    con.execute(
        "INSERT INTO outbound_writes (idempotency_key, system, operation, status, attempts, last_error, created_at, updated_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)", [key, system, operation, status, attempts, error, at, at],
    )


@pytest.fixture
def store(state) -> StateStore:
    store = make_store(state)
    with store.write() as con:
        # orders: two orders landed and reached Clarus 60 s and 180 s later; two more landed, not yet read
        for n, lag in ((1, 60), (2, 180)):
            seq = land(con, f"L{n}", "shopify", "orders/create", f"O{n}", ago(hours=2), ago(hours=2) + timedelta(seconds=5))
            con.execute("INSERT INTO orders (order_id, order_name, status, received_at, updated_at)"
                        " VALUES (?, ?, 'ACKNOWLEDGED', ?, ?)", [f"O{n}", f"#{n}", ago(hours=2), ago(hours=2)])
            con.execute("INSERT INTO order_events (order_id, occurred_at, system, state) VALUES (?, ?, 'clarus', 'ACKNOWLEDGED')",
                        [f"O{n}", ago(hours=2) + timedelta(seconds=lag)])
        con.execute("INSERT INTO event_consumers VALUES ('orders', ?, ?)", [seq, ago(minutes=50)])
        land(con, "L3", "shopify", "orders/create", "O3", ago(minutes=40), ago(minutes=40))
        land(con, "L4", "shopify", "orders/updated", "O1", ago(minutes=5), ago(minutes=5))
        # 7 write attempts for orders, 3 of them failed
        write(con, "clarus:goods_out:O1", "clarus", "create_goods_out", "done", 1, ago(hours=1))
        write(con, "clarus:goods_out:O2", "clarus", "create_goods_out", "done", 1, ago(hours=1))
        write(con, "netsuite:sales_order:O1", "netsuite", "create_sales_order", "done", 2, ago(minutes=30))
        write(con, "netsuite:sales_order:O3", "netsuite", "create_sales_order", "failed", 2, ago(minutes=20),
              "HTTP 503 from NetSuite")
        write(con, "netsuite:sales_order:O4", "netsuite", "create_sales_order", "done", 1, ago(days=3))  # outside the window
        # dispatch: a goods out webhook at 11:00, the shipment fulfilled in Shopify 15 minutes later
        land(con, "L5", "clarus", "goods_out/completed", "GO-1", ago(hours=1), ago(hours=1) + timedelta(seconds=2))
        con.execute(
            "INSERT INTO shipments (shipment_id, order_id, clarus_goods_out_id, state, dispatched_at, first_seen_at,"
            " channel_fulfilled_at, updated_at) VALUES ('S1', 'O1', 'GO-1', 'CHANNEL_CONFIRMED', ?, ?, ?, ?)",
            [ago(hours=1, minutes=1), ago(minutes=59), ago(minutes=45), ago(minutes=45)],
        )
        con.execute("INSERT INTO event_consumers VALUES ('dispatch', ?, ?)", [999, ago(minutes=50)])
        write(con, "shopify:fulfilment:S1", "shopify", "create_fulfillment", "done", 1, ago(minutes=45))
        # connections: NetSuite failing, Shopify webhooks being refused and one missed
        raise_exception(con, "CONNECTOR_FAILING", "netsuite", "NetSuite answered 503 to 12 calls", now=ago(minutes=20))
        raise_exception(con, "WEBHOOK_REJECTED", "shopify", "5 Shopify webhooks refused", now=ago(minutes=10))
        con.execute("INSERT INTO webhook_rejections VALUES (?, 'shopify', 'bad_signature', 5)", [ago(minutes=10)])
        con.execute("INSERT INTO reconciliation_findings VALUES ('shopify', 'order', 'O9', 'v1', 'orders/create', ?, NULL)",
                    [ago(minutes=30)])
        con.execute("INSERT INTO reconciliation_runs VALUES (?, 'clarus', 'goods_out', ?, 10, 0, NULL)",
                    [ago(minutes=10), ago(hours=2)])
        con.execute(
            "INSERT INTO alert_messages VALUES ('m1', 'slack:ops', 'ops', 'slack', 1, false, 'failed', 3, 'HTTP 503 after 3 tries', ?, ?),"
            " ('m2', 'slack:ops', 'ops', 'slack', 1, false, 'sent', 1, NULL, ?, ?)",
            [ago(minutes=9), ago(minutes=9), ago(minutes=8), ago(minutes=8)],
        )
    return store


def test_flow_health_last_success_backlog_error_rate_and_lag(store):
    with store.read() as con:
        flows = {r["flow"]: r for r in health.flow_health(con, now=NOW).iter_rows(named=True)}
    orders = flows["orders"]
    assert orders["last_success"] == ago(minutes=30)
    assert (orders["backlog"], orders["oldest_backlog_at"]) == (2, ago(minutes=40))
    assert (orders["attempts"], orders["failures"]) == (6, 3) and orders["error_rate"] == pytest.approx(0.5)
    assert orders["last_error"] == "HTTP 503 from NetSuite"
    assert (orders["lag_samples"], orders["lag_p50_s"], orders["lag_max_s"]) == (2, 120.0, 180.0)
    assert orders["status"] == "failing"  # half the writes failed, and an event has waited 40 minutes
    assert "50% of 6 write attempts failed" in orders["reasons"] and "oldest unread event waiting 40 min" in orders["reasons"]

    dispatch = flows["dispatch"]
    assert dispatch["backlog"] == 0 and dispatch["last_success"] == ago(minutes=45)
    assert dispatch["lag_samples"] == 1 and dispatch["lag_p50_s"] == 15 * 60.0  # webhook landed -> Shopify fulfilment
    assert dispatch["status"] == "ok"
    assert flows["intake"]["lag_max_s"] == 5.0 and flows["intake"]["last_success"] == ago(minutes=5)
    assert flows["stock"]["status"] == "idle" and flows["stock"]["error_rate"] is None


def test_connection_health_per_system_and_alert_channel(store):
    with store.read() as con:
        connections = {r["connection"]: r for r in health.connection_health(con, now=NOW).iter_rows(named=True)}
    assert set(connections) == {"shopify", "clarus", "netsuite", "alerts:slack:ops"}
    netsuite = connections["netsuite"]
    assert netsuite["status"] == "failing" and "CONNECTOR_FAILING open" in netsuite["reasons"]
    assert (netsuite["attempts"], netsuite["failures"], netsuite["last_error"]) == (4, 3, "HTTP 503 from NetSuite")
    shopify = connections["shopify"]
    assert (shopify["webhooks"], shopify["webhooks_rejected"], shopify["missed_by_webhooks"]) == (4, 5, 1)
    assert shopify["status"] == "degraded" and shopify["last_webhook_at"] == ago(minutes=5)
    clarus = connections["clarus"]
    assert clarus["status"] == "ok" and clarus["last_read_at"] == ago(minutes=10) and clarus["error_rate"] == 0.0
    channel = connections["alerts:slack:ops"]
    assert (channel["writes_ok"], channel["failures"], channel["last_success"]) == (1, 1, ago(minutes=8))
    assert channel["status"] == "ok"  # one failure, then delivered: too few sends to judge by rate, nothing open


def test_summary_is_json_and_snapshots_are_kept(store):
    with store.read() as con:
        summary = health.health_summary(con, now=NOW)
    json.dumps(summary)  # plain data only
    assert summary["status"] == "failing"
    with store.write() as con:
        assert health.store_snapshot(con, summary) == len(summary["flows"]) + len(summary["connections"])
    with store.read() as con:
        history = health.health_history(con, ago(hours=1), kind="flow")
    assert history.height == len(health.FLOWS)
    assert history.filter(history["name"] == "orders")["backlog"].to_list() == [2]


def test_health_snapshot_asset(store, state):
    from clarus_pipelines.assets.monitoring import health_snapshot

    result = dg.materialize([health_snapshot], resources={"state": StateStoreResource(path=str(state)),
                                                          "policies": PoliciesResource(path=str(SANDBOX_POLICIES))})
    metadata = result.asset_materializations_for_node("health_snapshot")[0].metadata
    assert metadata["rows_stored"].value == len(health.FLOWS) + 4
    [check] = result.get_asset_check_evaluations()
    assert not check.passed and "netsuite" in check.description


def test_a_system_whose_writes_keep_failing_is_a_connector_failure(state):
    store = make_store(state)
    with store.write() as con:
        # NetSuite: worked, then three writes of three orders failed (credentials revoked)
        write(con, "ns:ok", "netsuite", "create_sales_order", "done", 1, ago(minutes=50))
        for n in range(3):
            write(con, f"ns:{n}", "netsuite", "create_sales_order", "failed", 6, ago(minutes=40 - n), error="401 INVALID_LOGIN")
        # Clarus: failures, then a success: recovered
        for n in range(3):
            write(con, f"cl:{n}", "clarus", "create_goods_out", "failed", 2, ago(minutes=30 - n), error="503")
        write(con, "cl:ok", "clarus", "create_goods_out", "done", 1, ago(minutes=5))
        # Shopify: one record refused again and again: that record's own problem, not the connection
        write(con, "sh:1", "shopify", "create_fulfilment", "failed", 9, ago(minutes=3), error="422 Unprocessable")
        findings = health.connector_findings(con, now=NOW)
    assert [f.entity_id for f in findings] == ["netsuite"]
    assert "3 write(s) to NetSuite failed since the last success" in findings[0].message
    assert "INVALID_LOGIN" in findings[0].message


def test_health_snapshot_raises_and_clears_connector_failing(state):
    from clarus_pipelines.assets.monitoring import health_snapshot

    store = make_store(state)
    now = utcnow()
    with store.write() as con:
        for n in range(3):
            write(con, f"ns:{n}", "netsuite", "create_sales_order", "failed", 6, now - timedelta(minutes=10 - n), error="503")
        raise_exception(con, "CONNECTOR_FAILING", "alerts:slack", "alert channel slack failing")  # not ours to clear
    resources = {"state": StateStoreResource(path=str(state)), "policies": PoliciesResource(path=str(SANDBOX_POLICIES))}

    def open_failing():
        with store.read() as con:
            return sorted(r[0] for r in con.execute(
                "SELECT entity_id FROM exceptions WHERE code = 'CONNECTOR_FAILING' AND status <> 'resolved'").fetchall())

    assert dg.materialize([health_snapshot], resources=resources).success
    assert open_failing() == ["alerts:slack", "netsuite"]
    with store.write() as con:  # NetSuite answers again
        write(con, "ns:ok", "netsuite", "create_sales_order", "done", 1, utcnow())
    assert dg.materialize([health_snapshot], resources=resources).success
    assert open_failing() == ["alerts:slack"]
