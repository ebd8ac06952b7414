"""One rule for cancelling or shortening a goods out (orders flow and refund flow alike),
answered with a typed outcome; `GoodsOutStatus` says what is dispatched."""

from __future__ import annotations

from typing import Any

import pytest

from clarus_pipelines.connectors.clarus_model import DISPATCHED_STATUSES, EDITABLE_STATUSES, GoodsOutStatus
from clarus_pipelines.domain.goods_out import (
    AlreadyDispatched,
    Cancelled,
    NotFound,
    Reduced,
    Refused,
    cancel_or_reduce,
)
from clarus_pipelines.domain.ports import ConnectorError


def goods_out(status: GoodsOutStatus, lines: dict[str, int] | None = None, gid: str = "77") -> dict[str, Any]:
    return {"id": gid, "reference": "#1001", "goods_out_status": {"id": str(int(status)), "code": status.name},
            "lines": [{"id": str(900 + i), "external_system_reference1": line, "order_quantity": f"{q}.0"}
                      for i, (line, q) in enumerate((lines or {"a": 2, "b": 1}).items())]}


class FakeWarehouse:
    """A Clarus that answers from a dict; `refuse_cancel` makes the cancel a 422, `dispatch_on_cancel`
    dispatches the goods out just before the cancel arrives (the race)."""

    def __init__(self, record: dict | None, *, refuse_cancel: bool = False, dispatch_on_cancel: bool = False,
                 fail: bool = False):
        self.record, self.calls = record, []
        self.refuse_cancel, self.dispatch_on_cancel, self.fail = refuse_cancel, dispatch_on_cancel, fail

    def get_goods_out(self, goods_out_id):
        self.calls.append(("get", str(goods_out_id)))
        return self.record

    def cancel_goods_out(self, goods_out_id):
        self.calls.append(("cancel", str(goods_out_id)))
        if self.fail:
            raise ConnectorError("clarus", "unavailable", 503)
        if self.dispatch_on_cancel:
            self.record = goods_out(GoodsOutStatus.COMPLETED)
        if self.refuse_cancel or self.dispatch_on_cancel:
            raise ConnectorError("clarus", "rejected (invalid_state)", 422)
        self.record = {**self.record, "goods_out_status": {"code": "CANCELLED"}}
        return self.record

    def update_goods_out(self, goods_out_id, body):
        self.calls.append(("update", str(goods_out_id), body["data"]["attributes"]["lines_changes"]))
        return self.record


def test_status_says_what_is_dispatched_and_what_can_be_cancelled():
    assert DISPATCHED_STATUSES == {GoodsOutStatus.COMPLETED, GoodsOutStatus.PART}
    assert EDITABLE_STATUSES == {GoodsOutStatus.DRAFT, GoodsOutStatus.PENDING}
    assert [s.name for s in GoodsOutStatus if s.is_cancellable] == ["DRAFT", "PENDING", "PICK", "ALLOCATED", "PART_ALLOCATED"]
    assert GoodsOutStatus.COMPLETED.is_final and GoodsOutStatus.CANCELLED.is_final and not GoodsOutStatus.PART.is_final
    assert GoodsOutStatus.of({"goods_out_status": {"code": "part_allocated"}}) is GoodsOutStatus.PART_ALLOCATED
    assert GoodsOutStatus.of(None) is None


def test_an_open_goods_out_is_cancelled():
    clarus = FakeWarehouse(goods_out(GoodsOutStatus.PICK))
    result = cancel_or_reduce(clarus, "77")
    assert isinstance(result, Cancelled) and result.was is GoodsOutStatus.PICK and not result.already
    assert ("cancel", "77") in clarus.calls


def test_a_cancelled_goods_out_is_not_cancelled_again():
    clarus = FakeWarehouse(goods_out(GoodsOutStatus.CANCELLED))
    assert cancel_or_reduce(clarus, "77") == Cancelled(clarus.record, GoodsOutStatus.CANCELLED, already=True)
    assert [c[0] for c in clarus.calls] == ["get"]


@pytest.mark.parametrize("status", [GoodsOutStatus.COMPLETED, GoodsOutStatus.PART])
def test_a_dispatched_goods_out_is_too_late_to_cancel(status):
    clarus = FakeWarehouse(goods_out(status))
    result = cancel_or_reduce(clarus, "77")
    assert isinstance(result, AlreadyDispatched) and result.status is status and not result.meanwhile
    assert [c[0] for c in clarus.calls] == ["get"]


def test_a_dispatch_racing_the_cancel_is_already_dispatched_meanwhile():
    clarus = FakeWarehouse(goods_out(GoodsOutStatus.PICK), dispatch_on_cancel=True)
    result = cancel_or_reduce(clarus, "77")
    assert isinstance(result, AlreadyDispatched) and result.meanwhile and result.status is GoodsOutStatus.COMPLETED


def test_a_refused_cancel_is_refused_with_clarus_reason():
    result = cancel_or_reduce(FakeWarehouse(goods_out(GoodsOutStatus.PICK), refuse_cancel=True), "77")
    assert isinstance(result, Refused) and result.error is not None and "invalid_state" in result.reason


def test_an_unreachable_warehouse_is_not_an_outcome():
    with pytest.raises(ConnectorError):
        cancel_or_reduce(FakeWarehouse(goods_out(GoodsOutStatus.PENDING), fail=True), "77")


def test_a_missing_goods_out_is_not_found():
    assert cancel_or_reduce(FakeWarehouse(None), "77") == NotFound("77")
    assert cancel_or_reduce(FakeWarehouse(None), None) == NotFound(None)


def test_reducing_shortens_and_removes_lines_while_editable():
    clarus = FakeWarehouse(goods_out(GoodsOutStatus.PENDING, {"a": 3, "b": 1}))
    result = cancel_or_reduce(clarus, "77", reduce_to=lambda current: {"a": 1, "b": 0})
    assert isinstance(result, Reduced) and result.changes == (("a", 3, 1), ("b", 1, 0))
    [(_, _, changes)] = [c for c in clarus.calls if c[0] == "update"]
    assert [c["type"] for c in changes] == ["UPDATE", "DESTROY"]


def test_reducing_to_what_is_there_changes_nothing():
    clarus = FakeWarehouse(goods_out(GoodsOutStatus.PENDING, {"a": 1}))
    assert cancel_or_reduce(clarus, "77", reduce_to=lambda current: {"a": 5}) == Reduced(clarus.record, GoodsOutStatus.PENDING)
    assert [c[0] for c in clarus.calls] == ["get"]


def test_reducing_to_nothing_cancels():
    clarus = FakeWarehouse(goods_out(GoodsOutStatus.PENDING, {"a": 1}))
    assert isinstance(cancel_or_reduce(clarus, "77", reduce_to=lambda current: {"a": 0}), Cancelled)


def test_reducing_once_the_warehouse_works_on_it_is_refused_for_a_person():
    clarus = FakeWarehouse(goods_out(GoodsOutStatus.ALLOCATED, {"a": 2}))
    result = cancel_or_reduce(clarus, "77", reduce_to=lambda current: {"a": 1})
    assert isinstance(result, Refused) and result.error is None and "ALLOCATED" in result.reason
    assert [c[0] for c in clarus.calls] == ["get"]
