"""`clarus-pipelines simulate`: a sale-day rehearsal with heavy faults loses, duplicates and
misorders nothing, and its report does catch each of those when they happen."""

import json
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

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


def rehearse(tmp_path, *, orders: int, seed: int, timeout_s: int, state_url: str | None = None) -> dict:
    """Run `clarus-pipelines simulate` with heavy faults and check what every rehearsal must show."""
    done = subprocess.run(
        [CLI, "simulate", "--orders", str(orders), "--seed", str(seed), "--faults", "heavy", "--timeout", str(timeout_s),
         "--home", str(tmp_path / "rehearsal"), *(["--state-url", state_url] if state_url else [])],
        capture_output=True, text=True, timeout=timeout_s + 50, cwd=tmp_path,
        # the DuckDB rehearsal stays on DuckDB whatever state the shell points at
        env={k: v for k, v in os.environ.items() if k != "CLARUS_PIPELINES_STATE_URL"},
    )
    report = json.loads(done.stdout)  # stdout is exactly one JSON object; logs went to stderr
    assert "simulate:" in done.stderr
    assert not report["run"]["timed_out"], report["run"]
    assert (report["lost"], report["duplicates"], report["ordering_violations"]) == (0, 0, 0), (
        report["lost_orders"], report["duplicate_records"], report["ordering_violation_records"])
    assert done.returncode == 0
    assert report["orders_generated"] == orders and report["shopify"]["orders"] == orders
    assert report["run"]["state"] == ("postgresql" if state_url else "duckdb")
    return report


@pytest.mark.timeout(900)
def test_a_two_hundred_order_sale_day_with_heavy_faults(tmp_path):
    """The whole integration, through the CLI, on a sale day big enough to matter: 200 orders
    under heavy faults (errors, timeouts, 429s, duplicated, reordered and lost webhooks) lose,
    duplicate and misorder nothing. The 1,000-order soak of the same command is `bench/soak.py`."""
    report = rehearse(tmp_path, orders=200, seed=7, timeout_s=780)
    # most of the sale reached both systems and came back dispatched; the rest is held or explained
    assert report["netsuite"]["sales_orders"] >= 140 and report["clarus"]["goods_outs"] >= 140
    assert report["netsuite"]["item_fulfilments"] >= 60 and report["shopify"]["fulfilments"] >= 60
    assert report["clarus"]["shipments"] >= report["shopify"]["fulfilments"]
    assert sum(report["run"]["runs"].values()) > 20  # (a run failing under heavy faults is retried by the next tick)
    # few runs per order (issue 13): a tick's sensors batch what is due into one run per flow
    latency = report["latency"]
    assert latency["runs_per_order"] is not None and latency["runs_per_order"] <= 4, latency["event_runs"]
    assert latency["to_wms"]["count"] >= 140 and latency["p95_to_wms_s"] is not None
    assert latency["to_channel"]["count"] >= 60 and latency["p95_to_channel_s"] is not None


PG_ORDERS = 80


@pytest.mark.postgres
@pytest.mark.timeout(900)
def test_the_sale_day_on_postgresql_state(tmp_path):
    """Issue 14: the same rehearsal with `--state-url postgresql://...`: the receiver stores every
    webhook in the PostgreSQL inbox, the runs keep their state in PostgreSQL, and the report
    counts from it; heavy faults still lose, duplicate and misorder nothing."""
    from pgstate import fresh_database

    from clarus_pipelines.state.pg import pg_connect

    with fresh_database("clarus_simulate") as url:
        report = rehearse(tmp_path, orders=PG_ORDERS, seed=7, timeout_s=780, state_url=url)
        raw = pg_connect(url)
        try:
            with raw.cursor() as cur:
                cur.execute("SELECT count(*) FROM webhook_inbox")
                inbox = cur.fetchone()[0]
                cur.execute("SELECT count(*) FROM orders")
                orders = cur.fetchone()[0]
        finally:
            raw.close()
    assert inbox > PG_ORDERS and orders >= PG_ORDERS * 0.9  # webhooks went to the inbox, orders to PostgreSQL
    assert not (tmp_path / "rehearsal" / "state.duckdb").exists()  # and no DuckDB state was made beside it
    assert report["netsuite"]["sales_orders"] >= PG_ORDERS * 0.7 and report["clarus"]["goods_outs"] >= PG_ORDERS * 0.7
    assert report["netsuite"]["item_fulfilments"] >= PG_ORDERS * 0.3 and report["shopify"]["fulfilments"] >= PG_ORDERS * 0.3
    assert report["clarus"]["shipments"] >= report["shopify"]["fulfilments"]
    latency = report["latency"]
    assert latency["runs_per_order"] is not None and latency["runs_per_order"] <= 4, latency["event_runs"]
    assert latency["to_wms"]["count"] >= PG_ORDERS * 0.7 and latency["p95_to_wms_s"] is not None
    assert latency["to_channel"]["count"] >= PG_ORDERS * 0.3 and latency["p95_to_channel_s"] is not None


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
