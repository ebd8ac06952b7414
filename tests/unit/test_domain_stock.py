"""Stock rules without Dagster: available to sell, deltas, mismatch, stranded stock."""

from datetime import datetime, timedelta

import polars as pl
import pytest

from clarus_pipelines.domain import stock
from clarus_pipelines.policies import SkuCleaning

RULE = SkuCleaning()
T0 = datetime(2025, 3, 1, 9, 0)


def node(code, available, *, product_id="1", warehouse="1", account="1", allocated=0, **extra):
    return {
        "available": available, "allocated": allocated, "product": {"id": product_id, "code": code},
        "warehouse": {"id": warehouse}, "account": {"id": account}, **extra,
    }


def balances(*nodes):
    return stock.balances_frame(nodes, RULE)


def locations(pairs):
    return pl.DataFrame({"warehouse_id": [w for w, _ in pairs], "location_id": [loc for _, loc in pairs]})


NO_ORDERS = pl.DataFrame(schema={"sku": pl.Utf8, "quantity": pl.Int64})


def pushed(rows, at=T0):
    return pl.DataFrame(
        {"inventory_item_id": [r[0] for r in rows], "location_id": [r[1] for r in rows],
         "quantity": [r[2] for r in rows], "pushed_at": [at] * len(rows)},
        schema=stock.PUSHED_SCHEMA,
    )


def levels(rows, at):
    return pl.DataFrame(
        {"inventory_item_id": [r[0] for r in rows], "location_id": [r[1] for r in rows],
         "available": [r[2] for r in rows], "read_at": [at] * len(rows)},
        schema=stock.LEVEL_SCHEMA,
    )


# ------------------------------------------------------------------------- balances


def test_balances_keep_skus_as_exact_text_and_clean_them():
    frame = balances(node(" 000123 ", 5), node("ab 1", 2, product_id="2"))
    assert frame.schema["sku"] == pl.Utf8
    assert frame["sku"].to_list() == ["000123", "AB1"]
    assert frame["clarus_product_id"].to_list() == ["1", "2"]


def test_numeric_sku_is_refused():
    with pytest.raises(TypeError, match="string"):
        balances(node(123, 5))


def test_on_hold_is_derived_from_on_hand_when_clarus_gives_none():
    frame = balances(node("A", 6, allocated=2, on_hand=11, picked=1))
    assert frame["on_hold"].to_list() == [2.0]  # 11 on hand - 6 available - 2 allocated - 1 picked


def test_quantity_problems_name_each_kind():
    frame = balances(
        node("OK", 5),
        node("NEG", -1, product_id="2"),
        node("FRAC", 2.5, product_id="3"),
        node("OVER", 5, product_id="4", allocated=3, on_hand=6),
        node("MISSING", None, product_id="5"),
        node("", 1, product_id="6"),
    )
    problems = dict(
        stock.quantity_problems(frame).select(pl.col("clarus_product_id"), "problem").iter_rows()
    )
    assert problems == {"2": "negative", "3": "fractional", "4": "exceeds_on_hand", "5": "missing", "6": "no_sku"}


def test_duplicate_balance_keys():
    frame = balances(node("A", 1), node("A", 2), node("B", 1, product_id="2"))
    dupes = stock.duplicate_balance_keys(frame)
    assert dupes.rows() == [("1", "1", "1", 2)]


# ------------------------------------------------------------------ available to sell


def ats(frame, location_map, unsent=NO_ORDERS, buffers=None, default_buffer=0, **kw):
    return stock.available_to_sell(
        frame, location_map, unsent, buffers=buffers or {}, default_buffer=default_buffer, **kw
    )


def test_available_minus_default_and_per_sku_buffer():
    frame = balances(node("000123", 10), node("B", 10, product_id="2"))
    result = ats(frame, locations([("1", "L1")]), buffers={"000123": 0}, default_buffer=3)
    assert dict(result.select("sku", "quantity").iter_rows()) == {"000123": 10, "B": 7}
    assert dict(result.select("sku", "buffer").iter_rows()) == {"000123": 0, "B": 3}


def test_unsent_orders_are_deducted_and_never_go_negative():
    frame = balances(node("A", 10), node("B", 2, product_id="2"))
    unsent = pl.DataFrame({"sku": ["A", "A", "B"], "quantity": [3, 2, 9]})
    result = ats(frame, locations([("1", "L1")]), unsent=unsent, default_buffer=1)
    assert dict(result.select("sku", "unsent").iter_rows()) == {"A": 5, "B": 9}
    assert dict(result.select("sku", "quantity").iter_rows()) == {"A": 4, "B": 0}


def test_warehouses_sum_into_their_location_and_negative_counts_as_zero():
    frame = balances(
        node("A", 4, warehouse="1"), node("A", 6, warehouse="2"), node("A", -5, warehouse="3"), node("A", 9, warehouse="9"),
    )
    result = ats(frame, locations([("1", "L1"), ("2", "L1"), ("3", "L1")]))
    assert result.rows() == [("A", "L1", 10, 0, 0, 10)]  # warehouse 9 is not sold from


def test_each_location_gets_its_own_warehouses():
    frame = balances(node("A", 4, warehouse="1"), node("A", 6, warehouse="2"))
    result = ats(frame, locations([("1", "L1"), ("2", "L2")]), unsent=pl.DataFrame({"sku": ["A"], "quantity": [1]}))
    assert result.select("location_id", "quantity").rows() == [("L1", 3), ("L2", 5)]


def test_other_accounts_stock_is_not_ours_to_sell():
    frame = balances(node("A", 4, account="1"), node("A", 50, account="2"))
    assert ats(frame, locations([("1", "L1")]), account_ids=["1"])["quantity"].to_list() == [4]


def test_fractional_available_rounds_down():
    assert ats(balances(node("A", 2.9)), locations([("1", "L1")]))["quantity"].to_list() == [2]


def test_ats_schema_is_typed():
    result = ats(balances(node("007", 1)), locations([("1", "L1")]))
    assert result.schema == pl.Schema(stock.ATS_SCHEMA)


# ------------------------------------------------------------------ targets and deltas


def variants(*rows):
    return stock.variants_frame(
        [{"id": v, "inventory_item_id": i, "sku": s, "price": p} for v, i, s, p in rows], RULE
    )


def test_variants_clean_skus_and_keep_ids_as_text():
    frame = variants((1, 10, " 000123 ", "4.50"), (2, 20, None, None))
    assert frame.rows() == [("1", "10", "000123", " 000123 ", 4.5), ("2", "20", None, None, None)]


def test_targets_zero_for_managed_variants_clarus_does_not_stock():
    result = ats(balances(node("A", 5)), locations([("1", "L1")]))
    targets = stock.push_targets(result, variants((1, 10, "A", None), (2, 20, "GONE", None), (3, 30, None, None)), ["L1"])
    assert targets.select("inventory_item_id", "quantity").rows() == [("10", 5), ("20", 0)]


def test_deltas_send_only_what_changed():
    targets = pl.DataFrame(
        {"inventory_item_id": ["10", "20", "30"], "location_id": ["L1"] * 3, "sku": ["A", "B", "C"], "quantity": [5, 0, 7]}
    )
    last = pushed([("10", "L1", 5), ("20", "L1", 3)])
    deltas = stock.stock_deltas(targets, last)
    assert deltas.select("inventory_item_id", "quantity", "previous").rows() == [("20", 0, 3), ("30", 7, None)]
    # after recording the deltas as pushed, nothing is left to send
    now_pushed = pushed([("10", "L1", 5), ("20", "L1", 0), ("30", "L1", 7)])
    assert stock.stock_deltas(targets, now_pushed).is_empty()


def test_drift_seen_after_the_push_is_corrected_only_past_the_tolerance():
    targets = pl.DataFrame({"inventory_item_id": ["10", "20"], "location_id": ["L1", "L1"], "sku": ["A", "B"], "quantity": [5, 5]})
    last = pushed([("10", "L1", 5), ("20", "L1", 5)])
    later = levels([("10", "L1", 9), ("20", "L1", 4)], T0 + timedelta(minutes=5))
    deltas = stock.stock_deltas(targets, last, later, tolerance=1)
    assert deltas.select("inventory_item_id", "quantity", "previous").rows() == [("10", 5, 9)]
    # a read older than the push says nothing about it
    earlier = levels([("10", "L1", 9)], T0 - timedelta(minutes=5))
    assert stock.stock_deltas(targets, last, earlier, tolerance=1).is_empty()


# ------------------------------------------------------------------------- mismatch


def test_mismatch_against_last_set_and_against_clarus():
    targets = pl.DataFrame(
        {"inventory_item_id": ["10", "20", "30", "40"], "location_id": ["L1"] * 4, "sku": ["A", "B", "C", "D"],
         "quantity": [5, 8, 3, 2]}
    )
    last = pushed([("10", "L1", 5), ("20", "L1", 5), ("30", "L1", 3)])
    read = levels([("10", "L1", 9), ("20", "L1", 5), ("30", "L1", 4), ("40", "L1", 2), ("99", "L1", 50)], T0 + timedelta(minutes=1))
    found = stock.stock_mismatches(read, last, targets, tolerance=1)
    assert found.select("sku", "shopify", "last_set", "expected", "reason").rows() == [
        ("A", 9, 5, 5, "differs_from_last_set"),
        ("B", 5, 5, 8, "differs_from_clarus"),
    ]  # C is within tolerance, D was never set but agrees, 99 is not managed


def test_mismatch_clears_when_shopify_agrees():
    targets = pl.DataFrame({"inventory_item_id": ["10"], "location_id": ["L1"], "sku": ["A"], "quantity": [5]})
    last = pushed([("10", "L1", 5)])
    assert stock.stock_mismatches(levels([("10", "L1", 5)], T0 + timedelta(seconds=1)), last, targets, tolerance=0).is_empty()


def test_zero_tolerance_flags_any_difference():
    targets = pl.DataFrame({"inventory_item_id": ["10"], "location_id": ["L1"], "sku": ["A"], "quantity": [5]})
    read = levels([("10", "L1", 4)], T0 + timedelta(seconds=1))
    assert stock.stock_mismatches(read, pushed([("10", "L1", 5)]), targets, tolerance=0)["reason"].to_list() == [
        "differs_from_last_set"
    ]


# -------------------------------------------------------------------------- stranded


def test_stranded_stock_with_value_where_known():
    frame = balances(
        node("000123", 4, warehouse="1"), node("000123", 3, product_id="1", warehouse="2"),
        node("SOLD", 9, product_id="2"), node("EMPTY", 0, product_id="3"), node("NOPRICE", 2, product_id="4"),
    )
    mapped = variants((1, 10, "SOLD", "3.00"), (2, 20, "123", None))  # "123" is not "000123"
    values = pl.DataFrame({"sku": ["000123"], "unit_value": [2.5]})
    found = stock.stranded_stock(frame, mapped, values)
    assert found.select("sku", "quantity", "unit_value", "value").rows() == [
        ("000123", 7, 2.5, 17.5),
        ("NOPRICE", 2, None, None),
    ]
    assert found.filter(pl.col("sku") == "000123")["warehouse_ids"].to_list() == [["1", "2"]]


def test_stranded_stock_clears_once_a_variant_maps():
    frame = balances(node("A", 4))
    assert stock.stranded_stock(frame, variants((1, 10, "a", None))).is_empty()  # cleaning makes "a" -> "A"
