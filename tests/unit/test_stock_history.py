"""Rebuilding a past hour's on-hand stock from Clarus transaction nodes (pure)."""

from datetime import datetime

import polars as pl
import pytest

from clarus_pipelines.domain.stock_history import HistoryRefused, rebuild_on_hand

HOUR_END = datetime(2026, 3, 2, 11, 0)
READ_AT = datetime(2026, 3, 2, 15, 0)
NOW_BALANCES = pl.DataFrame(
    {"clarus_product_id": ["1", "2"], "warehouse_id": ["1", "1"], "account_id": ["1", "1"],
     "sku": ["000123", "TEE-BLK-M"], "on_hand": [31.0, 5.0]},
)


def tx(i, subtype, quantity, at, product="1"):
    return {"id": str(i), "subtype": subtype, "quantity": quantity, "created_at": at,
            "product": {"id": product, "code": "x"}, "warehouse": {"id": "1"}, "account": {"id": "1"}}


def test_on_hand_then_is_on_hand_now_minus_the_movements_since():
    history = [
        tx(1, "RCV", 7, "2026-03-02T10:30:00Z"),    # before the hour's end: already in that hour's stock
        tx(2, "RCV", 25, "2026-03-02T11:00:00Z"),   # received at the hour's end: after it
        tx(3, "PICK", 3, "2026-03-02T12:00:00Z"),   # moved to packing: on hand unchanged
        tx(4, "DESP", -4, "2026-03-02T13:00:00+01:00"),  # 12:00 UTC, dispatched
        tx(5, "ADJ", 2, "2026-03-02T14:00:00Z", product="2"),
        tx(6, "RCV", 100, "2026-03-02T15:30:00Z"),  # after the balances were read: already excluded
    ]
    rebuilt = rebuild_on_hand(NOW_BALANCES, history, hour_end=HOUR_END, read_at=READ_AT)
    assert dict(zip(rebuilt["sku"], rebuilt["on_hand"])) == {"000123": 10, "TEE-BLK-M": 3}
    assert rebuilt["available"].null_count() == 2  # allocations leave no transaction: unknown, not guessed
    assert rebuilt["sku"].to_list() == ["000123", "TEE-BLK-M"]  # SKUs stay text


def test_unknown_movement_type_refuses_the_hour():
    with pytest.raises(HistoryRefused, match="QUAR"):
        rebuild_on_hand(NOW_BALANCES, [tx(1, "QUAR", -1, "2026-03-02T12:00:00Z")], hour_end=HOUR_END, read_at=READ_AT)


def test_history_that_gives_negative_stock_refuses_the_hour():
    with pytest.raises(HistoryRefused, match="negative"):
        rebuild_on_hand(NOW_BALANCES, [tx(1, "RCV", 40, "2026-03-02T12:00:00Z")], hour_end=HOUR_END, read_at=READ_AT)


def test_movement_of_a_balance_clarus_no_longer_reports_refuses_the_hour():
    with pytest.raises(HistoryRefused, match="no longer reports"):
        rebuild_on_hand(NOW_BALANCES, [tx(1, "ADJ", 1, "2026-03-02T12:00:00Z", product="9")], hour_end=HOUR_END,
                        read_at=READ_AT)
