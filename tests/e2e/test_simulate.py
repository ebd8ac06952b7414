"""`clarus-pipelines simulate`: a sale-day rehearsal with heavy faults loses, duplicates and
misorders nothing, and its report does catch each of those when they happen."""

import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

from rehearsal import assert_the_sale_went_through, rehearse

from clarus_pipelines.commands.simulate import build_report, period_minutes
from clarus_pipelines.state import StateStore

CLI = str(Path(sys.executable).parent / "clarus-pipelines")


def _order(order_id, name, *, cancelled=False):
    return {"id": int(order_id), "name": name, "cancelled_at": "2025-01-01T10:00:00Z" if cancelled else None,
            "fulfillment_status": None}


def _goods_out(go_id, order_id, status="COMPLETED", shipments=()):
    return {"id": go_id, "external_system_reference1": order_id, "goods_out_status": {"code": status}, "shipments": list(shipments)}


def _shipment(shipment_id, tracking, lines):
    return {"id": shipment_id, "tracking_number": tracking,
            "lines": [{"external_system_reference1": line_id, "quantity": qty} for line_id, qty in lines]}


def test_report_counts_lost_duplicate_and_out_of_order_records(tmp_path):
    store = StateStore(tmp_path / "state.duckdb")
    now = datetime(2025, 1, 1, 12)
    with store.write() as con:
        con.execute("INSERT INTO orders (order_id, order_name, status, received_at, updated_at) VALUES"
                    " ('2', '#2', 'HELD', ?, ?), ('6', '#6', 'ACKNOWLEDGED', ?, ?)", [now] * 4)
        con.execute("INSERT INTO order_holds VALUES ('2', 'ORDER_INCOMPLETE', 'no postcode', ?)", [now])
        con.execute("INSERT INTO shipments (shipment_id, order_id, state, updated_at) VALUES ('S6', '6', 'ITEM_FULFILMENT_POSTED', ?)", [now])
        con.execute("INSERT INTO exceptions (code, entity_id, entity_type, owner, severity, status, message, first_seen,"
                    " last_seen, occurrences) VALUES ('TRACKING_NOT_POSTED', 'S6', 'shipment', 'cx', 'high', 'open', 'm', ?, ?, 1)",
                    [now, now])
    names = {"1": "#1", "2": "#2", "3": "#3", "4": "#4", "5": "#5", "6": "#6", "7": "#7"}
    records = {
        "generated": [{"order_id": k, "name": v, "case": "clean"} for k, v in names.items()],
        "shopify_orders": [_order(k, v, cancelled=k == "3") for k, v in names.items()],
        "sales_orders": [{"id": f"SO{k}", "externalId": k} for k in ("4", "5", "6", "7")],
        "goods_outs": [
            _goods_out("G4a", "4"), _goods_out("G4b", "4"),  # a second live goods out: a duplicate
            _goods_out("G5", "5", shipments=[_shipment("S5", "AA473124829GB", [("L5", 1)])]),
            _goods_out("G6", "6", shipments=[_shipment("S6", "RB123456785GB", [("L6", 1)])]),
            _goods_out("G7", "7", shipments=[_shipment("S7", None, [("L7", 2)])]),
        ],
        "item_fulfilments": [{"id": "IF5", "externalId": "S5"}, {"id": "IF6", "externalId": "S6"}, {"id": "IF7", "externalId": "S7"}],
        # S5's item fulfilment was posted at t=100, after Shopify's fulfilment (t=50): out of order
        "item_fulfilment_posts": [{"time": 100.0, "duration_ms": 10, "body": {"externalId": "S5"}},
                                  {"time": 10.0, "duration_ms": 10, "body": {"externalId": "S7"}}],
        "fulfilments": [
            {"id": 91, "order_id": 5, "tracking_number": "AA473124829GB", "recorded_at": 50.0,
             "line_items": [{"id": "L5", "quantity": 1}]},
            {"id": 97, "order_id": 7, "tracking_number": None, "recorded_at": 20.0, "line_items": [{"id": "L7", "quantity": 2}]},
        ],
        "webhooks_lost": {"shopify": 0},
    }
    report = build_report(records, store.path)
    # #1 reached nothing and nothing explains it; #2 is held, #3 cancelled, #6 has an open exception
    assert report["lost"] == 1 and list(report["lost_orders"]) == ["#1"]
    assert report["duplicates"] == 1 and report["duplicate_records"][0]["order"] == "#4"
    assert report["ordering_violations"] == 1 and report["ordering_violation_records"][0]["shipment"] == "S5"
    assert report["held_by_reason"] == {"ORDER_INCOMPLETE": 1}
    assert report["exceptions"] == {"TRACKING_NOT_POSTED": 1}
    assert report["clarus"]["goods_outs"] == 5 and report["netsuite"] == {"sales_orders": 4, "item_fulfilments": 3}

    # the same order fulfilled twice in Shopify for one shipment is a duplicate too
    records["fulfilments"].append(dict(records["fulfilments"][1], id=98))
    assert build_report(records, store.path)["duplicates"] == 2


def test_schedule_periods():
    assert period_minutes("*/15 * * * *") == 15
    assert period_minutes("20 * * * *") == 60
    assert period_minutes("30 3 * * *") == 1440


DUCKDB_ORDERS = 80  # the embedded default; the 200-order sale day runs on PostgreSQL (test_simulate_postgres.py)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_sale_day_with_heavy_faults_on_the_embedded_duckdb_state(tmp_path):
    """The whole integration, through the CLI, on the demo's embedded DuckDB state: a sale day under
    heavy faults (errors, timeouts, 429s, duplicated, reordered and lost webhooks) loses, duplicates
    and misorders nothing. The 1,000-order soak of the same command is `bench/soak.py`."""
    report = rehearse(tmp_path, orders=DUCKDB_ORDERS, seed=11, timeout_s=780)
    assert_the_sale_went_through(report, DUCKDB_ORDERS)


def test_simulate_refuses_a_state_that_already_holds_orders(tmp_path):
    """A rehearsal's accounting needs an empty state: one left by an earlier run is refused, clearly."""
    from datetime import datetime

    state = tmp_path / "used.duckdb"
    with StateStore(state).write() as con:
        con.execute("INSERT INTO orders (order_id, order_name, status, received_at, updated_at) VALUES"
                    " ('1', '#1', 'ACKNOWLEDGED', ?, ?)", [datetime(2025, 1, 1)] * 2)
    done = subprocess.run([CLI, "simulate", "--orders", "1", "--state-url", str(state), "--home", str(tmp_path / "home")],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode != 0 and "already holds 1 orders" in done.stderr and not done.stdout
