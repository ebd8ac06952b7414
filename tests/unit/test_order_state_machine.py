"""The orders state machine: every status change is checked against TRANSITIONS and
recorded as an order event; an illegal move is refused and writes nothing."""

from __future__ import annotations

from datetime import datetime

import pytest

from clarus_pipelines.domain import order_flow as flow
from clarus_pipelines.domain.order_flow import IllegalTransition, OrderStatus, can_move
from clarus_pipelines.state import StateStore

NOW = datetime(2026, 1, 5, 9, 0)


@pytest.fixture
def store(tmp_path):
    return StateStore(tmp_path / "state.duckdb")


def _order(store: StateStore, order_id: str, status: OrderStatus) -> None:
    with store.write() as con:
        con.execute("INSERT INTO orders (order_id, order_name, status, received_at, updated_at) VALUES (?, ?, ?, ?, ?)",
                    [order_id, f"#{order_id}", status.value, NOW, NOW])


def _state(store: StateStore, order_id: str) -> tuple[str, list[str]]:
    with store.read() as con:
        status = con.execute("SELECT status FROM orders WHERE order_id = ?", [order_id]).fetchone()[0]
        events = [r[0] for r in con.execute("SELECT state FROM order_events WHERE order_id = ? ORDER BY event_id",
                                            [order_id]).fetchall()]
    return status, events


def test_the_journey_of_a_normal_order_is_legal():
    path = [OrderStatus.RECEIVED, OrderStatus.READY, OrderStatus.SENT_TO_ERP, OrderStatus.SENT_TO_WMS, OrderStatus.ACKNOWLEDGED]
    assert all(can_move(a, b) for a, b in zip(path, path[1:]))
    assert can_move(OrderStatus.SENT_TO_WMS, OrderStatus.WMS_REJECTED) and can_move(OrderStatus.WMS_REJECTED, OrderStatus.READY)
    assert can_move(OrderStatus.ACKNOWLEDGED, OrderStatus.SENT_TO_WMS)  # a replacement goods out
    assert all(can_move(s, OrderStatus.CANCELLED) for s in OrderStatus)


@pytest.mark.parametrize("current, wanted", [
    (OrderStatus.CANCELLED, OrderStatus.READY),  # cancelled is final
    (OrderStatus.CANCELLED, OrderStatus.SENT_TO_WMS),
    (OrderStatus.HELD, OrderStatus.SENT_TO_WMS),  # never to the warehouse without being released
    (OrderStatus.RECEIVED, OrderStatus.ACKNOWLEDGED),
    (OrderStatus.ACKNOWLEDGED, OrderStatus.HELD),  # in the warehouse: edits go through the order-changes step
    (OrderStatus.ACKNOWLEDGED, OrderStatus.READY),
])
def test_illegal_transitions_are_refused(current, wanted):
    assert not can_move(current, wanted)
    with pytest.raises(IllegalTransition, match=f"{current.value} -> {wanted.value}"):
        flow.check_transition("1", current, wanted)


def test_every_status_has_its_row_in_the_table():
    assert set(flow.TRANSITIONS) == set(OrderStatus)
    assert flow.TRANSITIONS[OrderStatus.CANCELLED] == frozenset()


def test_set_status_moves_and_records_an_event(store):
    _order(store, "1", OrderStatus.READY)
    with store.write() as con:
        flow.set_status(con, "1", OrderStatus.SENT_TO_ERP, "sales order created", system="netsuite", now=NOW)
    assert _state(store, "1") == ("SENT_TO_ERP", ["SENT_TO_ERP"])


def test_set_status_refuses_an_illegal_move_and_writes_nothing(store):
    _order(store, "1", OrderStatus.CANCELLED)
    with store.write() as con, pytest.raises(IllegalTransition):
        flow.set_status(con, "1", OrderStatus.SENT_TO_WMS, "goods out requested", now=NOW)
    assert _state(store, "1") == ("CANCELLED", [])


def test_set_status_refuses_an_order_we_do_not_have(store):
    with store.write() as con, pytest.raises(IllegalTransition, match="unknown -> READY"):
        flow.set_status(con, "nope", OrderStatus.READY, "validated", now=NOW)


def test_the_orders_row_writers_live_in_the_state_machine_module():
    """Every `UPDATE orders` of the code base is in domain/order_flow.py (one writer)."""
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    writers = sorted(
        str(p.relative_to(repo)) for folder in ("clarus_pipelines", "assets", "sensors", "dashboards")
        for p in (repo / folder).rglob("*.py")
        if "sandbox" not in p.parts and "UPDATE orders " in p.read_text(encoding="utf-8")
    )
    assert writers == ["clarus_pipelines/domain/order_flow.py"]


def test_an_intent_of_an_older_order_version_is_superseded_not_left_pending(store):
    old, new = "clarus:goods_out_edit:1:aaa", "clarus:goods_out_edit:1:bbb"
    with store.write() as con:
        flow.begin_outbound(con, {old: ("clarus", "edit_goods_out"), "clarus:goods_out_edit:2:aaa": ("clarus", "edit_goods_out")},
                            now=NOW)
        assert flow.supersede_outbound(con, "clarus:goods_out_edit:1:", new, now=NOW) == 1
        flow.begin_outbound(con, {new: ("clarus", "edit_goods_out")}, now=NOW)
        rows = dict(con.execute("SELECT idempotency_key, status FROM outbound_writes").fetchall())
    assert rows == {old: "failed", new: "pending", "clarus:goods_out_edit:2:aaa": "pending"}
