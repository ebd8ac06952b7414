"""The stuck-state sync (a scheduled job) raises each stuck state from the state database and
clears it when the order or shipment moves on. Times are seeded in the past; nothing sleeps.

Adapted when the sync moved from a sensor to a scheduled job (issue 13): what the sensor's
skip reason and cursor said is now the op's output (and run log)."""

import json
from datetime import datetime, timedelta

import dagster as dg
import pytest

from clarus_pipelines.domain.stuck_states import STUCK_CODES, stuck_findings
from clarus_pipelines.exception_queue import raise_exception, utcnow
from clarus_pipelines.resources import PoliciesResource, StateStoreResource
from clarus_pipelines.settings import SANDBOX_POLICIES, load_policies
from clarus_pipelines.sensors.stuck_states import stuck_states_sync

STATE_BACKENDS = ("duckdb", "postgres")  # every test that uses `resources` (the `state` fixture) once per state backend (tests/flows/conftest.py)

TIMINGS = load_policies(SANDBOX_POLICIES).timings  # ack 15 min, ERP wait 60 min, tracking post 60 min


@pytest.fixture
def resources(state):
    return {
        "state": StateStoreResource(path=str(state)),  # a DuckDB file, or a fresh database dropped after
        "policies": PoliciesResource(path=str(SANDBOX_POLICIES)),
    }


def _store(resources):
    return resources["state"].store()


def _evaluate(resources):
    result = stuck_states_sync.execute_in_process(resources=resources, instance=dg.DagsterInstance.ephemeral())
    assert result.success
    return result.output_for_node("sync_stuck_states_op")


def _open(resources, code):
    with _store(resources).read() as con:
        return sorted(
            r[0] for r in con.execute(
                "SELECT entity_id FROM exceptions WHERE code = ? AND status <> 'resolved'", [code]
            ).fetchall()
        )


def _order(con, order_id, name, status, *, at, sent_body=None):
    con.execute(
        "INSERT INTO orders (order_id, order_name, status, received_at, updated_at, sent_body) VALUES (?, ?, ?, ?, ?, ?)",
        [order_id, name, status, at, at, json.dumps(sent_body) if sent_body else None],
    )


def _event(con, order_id, state, at):
    con.execute(
        "INSERT INTO order_events (order_id, occurred_at, system, state, cause) VALUES (?, ?, 'pipeline', ?, 'test')",
        [order_id, at, state],
    )


def _bind(con, order_id, clarus_id, at):
    con.execute(
        "INSERT INTO bindings (entity_type, our_id, clarus_id, created_at, updated_at) VALUES ('order', ?, ?, ?, ?)",
        [order_id, clarus_id, at, at],
    )


def _shipment(con, shipment_id, order_id, state, *, first_seen, posted=None, wait_reason=None):
    con.execute(
        "INSERT INTO shipments (shipment_id, order_id, state, first_seen_at, fulfilment_posted_at, erp_wait_reason,"
        " dispatched_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [shipment_id, order_id, state, first_seen, posted, wait_reason, first_seen, first_seen],
    )


def test_order_not_acknowledged_raised_then_cleared(resources):
    now = utcnow()
    with _store(resources).write() as con:
        _order(con, "1", "#1001", "SENT_TO_WMS", at=now - timedelta(minutes=40))
        _event(con, "1", "SENT_TO_WMS", now - timedelta(minutes=40))
        _order(con, "2", "#1002", "SENT_TO_WMS", at=now - timedelta(minutes=3))
        _event(con, "2", "SENT_TO_WMS", now - timedelta(minutes=3))
    result = _evaluate(resources)
    assert _open(resources, "ORDER_NOT_ACKNOWLEDGED") == ["1"]
    assert "Raised 1 ORDER_NOT_ACKNOWLEDGED" in result["summary"]
    assert result["open"]["ORDER_NOT_ACKNOWLEDGED"] == 1 and result["raised"] == {"ORDER_NOT_ACKNOWLEDGED": 1}

    again = _evaluate(resources)
    assert again["summary"].startswith("No stuck state changed")
    assert again["raised"] == again["cleared"] == {}  # nothing changed since the last sync

    with _store(resources).write() as con:  # Clarus's id arrives: the order is acknowledged
        _bind(con, "1", "5001", now)
        con.execute("UPDATE orders SET status = 'ACKNOWLEDGED' WHERE order_id = '1'")
    cleared = _evaluate(resources)
    assert _open(resources, "ORDER_NOT_ACKNOWLEDGED") == []
    assert cleared["summary"] == "Cleared 1 ORDER_NOT_ACKNOWLEDGED. Open now: none."


def test_not_dispatched_by_cutoff_raised_then_cleared_by_a_dispatch(resources):
    now = utcnow()
    late = (now - timedelta(hours=3)).strftime("%Y-%m-%dT%H:%M:%SZ")
    later = (now + timedelta(hours=3)).strftime("%Y-%m-%dT%H:%M:%SZ")
    with _store(resources).write() as con:
        for order_id, expected in (("10", late), ("11", later)):
            _order(con, order_id, f"#{order_id}", "ACKNOWLEDGED", at=now - timedelta(days=1),
                   sent_body={"data": {"type": "goods_outs", "attributes": {"expected_date_of_dispatch": expected}}})
            _bind(con, order_id, f"g{order_id}", now - timedelta(days=1))
        # no goods out body kept: the cut-off rule applies to when Clarus accepted it
        _order(con, "12", "#12", "ACKNOWLEDGED", at=now - timedelta(days=8))
        _bind(con, "12", "g12", now - timedelta(days=8))
        _event(con, "12", "ACKNOWLEDGED", now - timedelta(days=8))
        # cancelled, and not yet accepted, orders are never late
        _order(con, "13", "#13", "CANCELLED", at=now - timedelta(days=8))
        _bind(con, "13", "g13", now - timedelta(days=8))
    _evaluate(resources)
    assert _open(resources, "NOT_DISPATCHED_BY_CUTOFF") == ["10", "12"]
    with _store(resources).read() as con:
        details = json.loads(con.execute(
            "SELECT details FROM exceptions WHERE code = 'NOT_DISPATCHED_BY_CUTOFF' AND entity_id = '10'").fetchone()[0])
    assert details["clarus_goods_out_id"] == "g10"

    with _store(resources).write() as con:
        _shipment(con, "S10", "10", "DISPATCHED_IN_WMS", first_seen=now)
    _evaluate(resources)
    assert _open(resources, "NOT_DISPATCHED_BY_CUTOFF") == ["12"]


def test_dispatch_awaiting_erp_then_tracking_not_posted_then_clear(resources):
    now = utcnow()
    with _store(resources).write() as con:
        _order(con, "20", "#20", "ACKNOWLEDGED", at=now - timedelta(hours=5))
        _order(con, "21", "#21", "ACKNOWLEDGED", at=now - timedelta(hours=5))
        _shipment(con, "S20", "20", "DISPATCHED_IN_WMS", first_seen=now - timedelta(hours=2),
                  wait_reason="sales order not committed yet")
        _shipment(con, "S21", "21", "DISPATCHED_IN_WMS", first_seen=now - timedelta(minutes=10))
    _evaluate(resources)
    assert _open(resources, "DISPATCH_AWAITING_ERP") == ["20"]
    with _store(resources).read() as con:
        message = con.execute(
            "SELECT message FROM exceptions WHERE code = 'DISPATCH_AWAITING_ERP' AND entity_id = '20'").fetchone()[0]
    assert "#20" in message and "sales order not committed yet" in message

    # confirmed, but the item fulfilment has not gone in yet: still held
    with _store(resources).write() as con:
        con.execute("UPDATE shipments SET state = 'ERP_ORDER_CONFIRMED', last_error = 'ConnectorError: 503' WHERE shipment_id = 'S20'")
    _evaluate(resources)
    assert _open(resources, "DISPATCH_AWAITING_ERP") == ["20"]

    # item fulfilment posted long ago, Shopify fulfilment never created
    with _store(resources).write() as con:
        con.execute("UPDATE shipments SET state = 'ITEM_FULFILMENT_POSTED', fulfilment_posted_at = ? WHERE shipment_id = 'S20'",
                    [now - timedelta(minutes=90)])
    _evaluate(resources)
    assert _open(resources, "DISPATCH_AWAITING_ERP") == []
    assert _open(resources, "TRACKING_NOT_POSTED") == ["S20"]

    with _store(resources).write() as con:
        con.execute("UPDATE shipments SET state = 'CHANNEL_CONFIRMED' WHERE shipment_id = 'S20'")
    _evaluate(resources)
    assert _open(resources, "TRACKING_NOT_POSTED") == []
    with _store(resources).read() as con:
        actions = con.execute(
            "SELECT code, action FROM exception_events WHERE entity_id IN ('20', 'S20') ORDER BY event_id").fetchall()
    assert actions == [
        ("DISPATCH_AWAITING_ERP", "raised"), ("DISPATCH_AWAITING_ERP", "auto_resolved"),
        ("TRACKING_NOT_POSTED", "raised"), ("TRACKING_NOT_POSTED", "auto_resolved"),
    ]


def test_every_code_is_reported(resources):
    result = _evaluate(resources)
    assert set(result["open"]) == set(STUCK_CODES)
    assert result["summary"] == "No stuck state changed; open: none."


def test_the_sync_is_a_scheduled_job_with_retries():
    from clarus_pipelines.sensors.stuck_states import defs, stuck_states_schedule

    assert stuck_states_schedule.cron_schedule == "* * * * *" and stuck_states_schedule.job_name == "stuck_states_sync"
    assert stuck_states_sync.tags["flow"] == "stuck_states"
    op = stuck_states_sync.graph.node_defs[0]
    assert op.retry_policy is not None and op.retry_policy.max_retries >= 1
    assert not defs.sensors  # no state writes inside the daemon's sensor tick


def test_thresholds_come_from_the_policies(resources):
    now = datetime(2025, 3, 3, 12, 0)
    with _store(resources).write() as con:
        _order(con, "30", "#30", "ACKNOWLEDGED", at=now)
        _shipment(con, "S30", "30", "DISPATCHED_IN_WMS", first_seen=now - timedelta(minutes=TIMINGS.erp_wait_alert_minutes - 1))
        found_before = stuck_findings(con, TIMINGS, now)["DISPATCH_AWAITING_ERP"]
        found_after = stuck_findings(con, TIMINGS, now + timedelta(minutes=2))["DISPATCH_AWAITING_ERP"]
    assert found_before == [] and [f.entity_id for f in found_after] == ["30"]


def test_a_dispatch_blocked_by_data_is_raised_at_once_and_clears_when_it_moves(resources):
    now = utcnow()
    with _store(resources).write() as con:
        _order(con, "40", "#40", "ACKNOWLEDGED", at=now - timedelta(hours=1))
        _shipment(con, "S40", "40", "ERP_ORDER_CONFIRMED", first_seen=now - timedelta(minutes=2))
        con.execute("UPDATE shipments SET last_error = 'blocked: sales order 10284 has no open line of item 210 for 1'")
        _order(con, "41", "#41", "ACKNOWLEDGED", at=now - timedelta(hours=1))  # a connection error: not yet
        _shipment(con, "S41", "41", "ERP_ORDER_CONFIRMED", first_seen=now - timedelta(minutes=2))
        con.execute("UPDATE shipments SET last_error = 'ConnectorError: netsuite: 503' WHERE shipment_id = 'S41'")
    _evaluate(resources)
    assert _open(resources, "DISPATCH_AWAITING_ERP") == ["40"]
    with _store(resources).read() as con:
        message = con.execute("SELECT message FROM exceptions WHERE entity_id = '40'").fetchone()[0]
    assert "no open line of item 210" in message
    with _store(resources).write() as con:  # someone added the line in NetSuite: the item fulfilment went in
        con.execute("UPDATE shipments SET state = 'ITEM_FULFILMENT_POSTED', last_error = NULL, fulfilment_posted_at = ?"
                    " WHERE shipment_id = 'S40'", [now])
    _evaluate(resources)
    assert _open(resources, "DISPATCH_AWAITING_ERP") == [] and _open(resources, "TRACKING_NOT_POSTED") == []


def test_a_cancel_after_dispatch_is_not_alerted_twice(resources):
    now = utcnow()
    with _store(resources).write() as con:
        for order_id in ("50", "51"):
            _order(con, order_id, f"#{order_id}", "ACKNOWLEDGED", at=now - timedelta(hours=3))
            _shipment(con, f"S{order_id}", order_id, "ITEM_FULFILMENT_POSTED", first_seen=now - timedelta(hours=2),
                      posted=now - timedelta(minutes=90))
        con.execute("UPDATE shipments SET last_error = 'blocked: fulfillment order is cancelled' WHERE shipment_id = 'S50'")
        # the order-changes flow found order 50 cancelled in Shopify after Clarus dispatched it
        raise_exception(con, "CANCEL_AFTER_DISPATCH", "50", "order #50 was cancelled in Shopify after Clarus dispatched it",
                        {"order_name": "#50"}, now=now)
    _evaluate(resources)
    assert _open(resources, "TRACKING_NOT_POSTED") == ["S51"]
    assert _open(resources, "CANCEL_AFTER_DISPATCH") == ["50"]
