"""The to-channel clock starts at the goods out event that reported the dispatch, not at the
goods out's earlier status updates (allocation, picking are the warehouse's time, not ours)."""

import json
from datetime import datetime, timedelta

from clarus_pipelines.latency import latency_figures
from clarus_pipelines.state import StateStore

T0 = datetime(2026, 12, 3, 12, 0, 0)


def _landed(con, landing_id, topic, goods_out_id, at, outcome, new):
    con.execute(
        "INSERT INTO landed_events (landing_id, source, topic, known_topic, entity_type, entity_id, received_at, dedupe_key,"
        " payload, via, ingested_at) VALUES (?, 'clarus', ?, true, 'goods_out', ?, ?, ?, '{}', 'webhook', ?)",
        [landing_id, topic, goods_out_id, at, landing_id, at])
    con.execute("INSERT INTO dispatch_landings (landing_id, goods_out_id, outcome, shipments_new, processed_at)"
                " VALUES (?, ?, ?, ?, ?)", [landing_id, goods_out_id, outcome, new, at])


def _shipment(con, shipment_id, goods_out_id, first_seen, confirmed):
    con.execute("INSERT INTO shipments (shipment_id, order_id, clarus_goods_out_id, state, first_seen_at, updated_at)"
                " VALUES (?, 'o1', ?, 'CHANNEL_CONFIRMED', ?, ?)", [shipment_id, goods_out_id, first_seen, confirmed])
    con.execute("INSERT INTO order_events (order_id, occurred_at, system, state, details) VALUES ('o1', ?, 'shopify',"
                " 'CHANNEL_CONFIRMED', ?)", [confirmed, json.dumps({"shipment_id": shipment_id})])


def test_to_channel_counts_from_the_event_that_carried_the_shipment(tmp_path):
    s = lambda seconds: T0 + timedelta(seconds=seconds)  # noqa: E731
    with StateStore(tmp_path / "state.duckdb").write() as con:
        _landed(con, "L1", "goods_out/updated", "g1", s(0), "no_shipments", 0)  # allocated: no dispatch yet
        _landed(con, "L2", "goods_out/updated", "g1", s(60), "recorded", 1)  # part dispatched: shipment A
        _landed(con, "L3", "goods_out/completed", "g1", s(200), "recorded", 1)  # the rest: shipment B
        _shipment(con, "A", "g1", s(61), s(70))
        _shipment(con, "B", "g1", s(201), s(212))
        _shipment(con, "C", "g2", s(300), s(305))  # only a sweep found it: from when we first saw it
    with StateStore(tmp_path / "state.duckdb").read() as con:
        figures = latency_figures(con)["to_channel"]
    assert figures["count"] == 3 and figures["max_s"] == 12.0 and figures["p50_s"] == 10.0
