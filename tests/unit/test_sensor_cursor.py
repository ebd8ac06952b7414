"""The sensors' one question, "new work since this cursor?", over a real state file."""

from __future__ import annotations

import json
from datetime import datetime

import pytest

from clarus_pipelines.sensors.cursor import NewWork, consumer_watermark, new_events_since, new_work_since, read_cursor
from clarus_pipelines.state import StateStore
from clarus_pipelines.state.event_log import advance_consumer

NOW = datetime(2026, 1, 5, 9, 0)


@pytest.fixture
def store(tmp_path):
    store = StateStore(tmp_path / "state.duckdb")
    events = [("shopify", "orders/create"), ("clarus", "goods_out/completed"), ("shopify", "refunds/create"),
              ("shopify", "orders/updated"), ("clarus", "stock_balance/updated")]
    with store.write() as con:
        for i, (source, topic) in enumerate(events, start=1):
            con.execute(
                "INSERT INTO landed_events (landing_id, seq, source, topic, known_topic, entity_type, entity_id, received_at,"
                " dedupe_key, payload, via, ingested_at) VALUES (?, ?, ?, ?, true, 'x', ?, ?, ?, '{}', 'webhook', ?)",
                [f"L{i}", i, source, topic, str(i), NOW, f"k{i}", NOW],
            )
    return store


def test_read_cursor_is_tolerant():
    assert read_cursor(None) == {} and read_cursor("") == {} and read_cursor("not json") == {} and read_cursor("[1]") == {}
    assert read_cursor('{"after": 3}') == {"after": 3}


def test_new_events_since_a_cursor(store):
    with store.read() as con:
        work = new_events_since(con, {"shopify": ("orders/create", "orders/updated")}, after=0, limit=1)
        later = new_events_since(con, {"shopify": ("orders/create", "orders/updated")}, after=1)
        both = new_events_since(con, {"shopify": ["refunds/create"], "clarus": ["goods_out/completed"]}, limit=10)
        none = new_events_since(con, {"netsuite": ["salesorder/update"]})
    assert (work.count, work.first, work.last, work.rows) == (2, 1, 4, [(1, "orders/create")])  # count covers past the limit
    assert (later.count, later.first, later.last) == (1, 4, 4)
    assert [r[0] for r in both.rows] == [2, 3]
    assert not none and none.count == 0


def test_new_events_since_what_a_consumer_took_in(store):
    with store.write() as con:
        advance_consumer(con, "orders", 3, now=NOW)
    with store.read() as con:
        assert consumer_watermark(con, "orders") == 3 and consumer_watermark(con, "nobody") == 0
        work = new_events_since(con, {"shopify": ["orders/create", "orders/updated"]}, consumer="orders")
    assert (work.count, work.first) == (1, 4)


def test_new_work_since_gives_the_next_cursor_and_a_stable_run_key(store):
    query = "SELECT seq, landing_id FROM landed_events WHERE seq > ? AND source = ? ORDER BY seq LIMIT ?"
    with store.read() as con:
        first = new_work_since(con, query, 0, ["clarus"])
        again = new_work_since(con, query, 0, ["clarus"])
        after = new_work_since(con, query, json.loads(first.next_cursor("seq"))["seq"], ["clarus"])
    assert first.rows == [(2, "L2"), (5, "L5")] and first.run_key("stock-webhooks") == "stock-webhooks:2-5"
    assert again.run_key("stock-webhooks") == first.run_key("stock-webhooks")  # a restarted daemon asks for the same run
    assert json.loads(first.next_cursor("seq", requested="x")) == {"seq": 5, "requested": "x"}
    assert after == NewWork() and not after
