"""The fast stock rules give exactly what the straightforward joins gave, on random frames.

`available_to_sell`, `push_targets` and `stock_deltas` skip sorts and hash joins when
their inputs already come in key order (issue 13: a million SKUs in under a second).
The reference versions below are the plain join-and-sort forms they replaced; every
shape the shortcuts check for (sorted or shuffled, aligned or not, repeated keys, nulls,
several warehouses per location) must give the same frame.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from clarus_pipelines.domain import stock

_KEY = ["inventory_item_id", "location_id"]
T0 = datetime(2025, 3, 1, 9, 0)


# ------------------------------------------------------------------ the reference forms


def reference_available_to_sell(balances, location_map, unsent, *, buffers, default_buffer, account_ids=None):
    frame = balances.lazy().filter(pl.col("sku").is_not_null())
    if account_ids is not None:
        frame = frame.filter(pl.col("account_id").is_in(pl.Series(list(account_ids), dtype=pl.Utf8).implode()))
    per_location = (
        frame.join(
            location_map.lazy().select(pl.col("warehouse_id").cast(pl.Utf8), pl.col("location_id").cast(pl.Utf8)),
            on="warehouse_id",
            how="inner",
        )
        .group_by("sku", "location_id")
        .agg(pl.col("available").fill_null(0).floor().clip(lower_bound=0).sum().cast(pl.Int64).alias("clarus_available"))
    )
    unsent_per_sku = (
        unsent.lazy()
        .select(pl.col("sku").cast(pl.Utf8), pl.col("quantity").cast(pl.Int64))
        .group_by("sku")
        .agg(pl.col("quantity").sum().alias("unsent"))
    )
    buffer_frame = pl.DataFrame(
        {"sku": list(buffers), "buffer": list(buffers.values())}, schema={"sku": pl.Utf8, "buffer": pl.Int64}
    )
    result = (
        per_location.join(buffer_frame.lazy(), on="sku", how="left")
        .join(unsent_per_sku, on="sku", how="left")
        .with_columns(
            pl.col("buffer").fill_null(default_buffer).cast(pl.Int64),
            pl.col("unsent").fill_null(0).cast(pl.Int64),
        )
        .with_columns(
            (pl.col("clarus_available") - pl.col("buffer") - pl.col("unsent")).clip(lower_bound=0).alias("quantity")
        )
        .select(list(stock.ATS_SCHEMA))
    )
    return result.collect().cast(stock.ATS_SCHEMA).sort("sku", "location_id")


def reference_push_targets(ats, variants, location_ids):
    locations = pl.DataFrame({"location_id": [str(x) for x in location_ids]}, schema={"location_id": pl.Utf8})
    items = (
        variants.lazy()
        .filter(pl.col("sku").is_not_null() & pl.col("inventory_item_id").is_not_null())
        .select("inventory_item_id", "sku")
        .unique()
        .join(locations.lazy(), how="cross")
    )
    return (
        items.join(ats.lazy().select("sku", "location_id", "quantity"), on=["sku", "location_id"], how="left")
        .with_columns(pl.col("quantity").fill_null(0).cast(pl.Int64))
        .select(list(stock.TARGET_SCHEMA))
        .collect()
        .cast(stock.TARGET_SCHEMA)
        .sort(_KEY)
    )


def reference_stock_deltas(targets, last_pushed, observed=None, *, tolerance=0):
    base = last_pushed.lazy().cast(stock.PUSHED_SCHEMA).select(*_KEY, pl.col("quantity").alias("last_set"), "pushed_at")
    if observed is None:
        baseline = base.select(*_KEY, pl.col("last_set").alias("baseline"))
    else:
        seen = observed.lazy().cast(stock.LEVEL_SCHEMA).select(*_KEY, pl.col("available").alias("seen"), "read_at")
        drifted = (
            pl.col("seen").is_not_null()
            & (pl.col("read_at") > pl.col("pushed_at"))
            & ((pl.col("seen") - pl.col("last_set")).abs() > tolerance)
        )
        baseline = (
            base.join(seen, on=_KEY, how="left")
            .with_columns(pl.when(drifted).then(pl.col("seen")).otherwise(pl.col("last_set")).alias("baseline"))
            .select(*_KEY, "baseline")
        )
    return (
        targets.lazy()
        .join(baseline, on=_KEY, how="left")
        .filter(pl.col("baseline").is_null() | (pl.col("baseline") != pl.col("quantity")))
        .select(*stock.TARGET_SCHEMA, pl.col("baseline").alias("previous"))
        .collect()
        .cast(stock.DELTA_SCHEMA)
        .sort(_KEY)
    )


# ------------------------------------------------------------------ random stock


def random_case(seed: int, *, skus: int, warehouses: int, sorted_input: bool, shared_locations: bool):
    """Balances, a location map, unsent lines, buffers, variants, last pushes and a Shopify read."""
    rng = np.random.default_rng(seed)
    codes = [f"{i:05d}" if i % 7 else f"SKU-{i}" for i in range(skus)]
    rows = []
    for w in range(warehouses):
        held = rng.random(skus) < (1.0 if sorted_input else 0.8)  # aligned: every warehouse holds every SKU
        for i in np.flatnonzero(held):
            available = None if rng.random() < 0.02 else float(rng.integers(-3, 40)) + (0.5 if rng.random() < 0.05 else 0.0)
            rows.append((str(i + 1), codes[i], str(w + 1), "1" if rng.random() < 0.95 else "2", available))
    if not sorted_input:
        rows += [(str(i + 900), codes[i], "1", "1", 3.0) for i in rng.integers(0, skus, 5)]  # a SKU under two products
        rows.append(("999", None, "1", "1", 8.0))
        rng.shuffle(rows)
    balances = pl.DataFrame(
        rows, schema={"clarus_product_id": pl.Utf8, "sku": pl.Utf8, "warehouse_id": pl.Utf8, "account_id": pl.Utf8,
                      "available": pl.Float64}, orient="row",
    )
    if shared_locations:  # warehouses 1 and 2 both stock location B; the last warehouse is not sold from
        pairs = [(str(w + 1), "B" if w < 2 else f"L{w}") for w in range(warehouses - 1)]
    else:
        pairs = [(str(w + 1), f"L{warehouses - w}") for w in range(warehouses)]  # location order is not warehouse order
    location_map = pl.DataFrame(pairs, schema={"warehouse_id": pl.Utf8, "location_id": pl.Utf8}, orient="row")
    picked = rng.integers(0, skus, skus // 3)
    unsent = pl.DataFrame({"sku": [codes[i] for i in picked], "quantity": rng.integers(1, 4, len(picked))})
    buffers = {codes[i]: int(rng.integers(0, 4)) for i in rng.integers(0, skus, skus // 5)}
    sold = [i for i in range(skus) if rng.random() < 0.9]
    variant_rows = [(str(4000 + i), str(8000 + i), codes[i]) for i in sold]
    if not sorted_input:
        variant_rows += [("77", "8003", codes[5]), ("78", None, codes[6]), ("79", "9999", None), ("80", "9998", "NOT-HELD")]
        variant_rows += [("81", "8003", codes[3])]  # the same variant listed twice
        rng.shuffle(variant_rows)
    variants = pl.DataFrame(
        variant_rows, schema={"variant_id": pl.Utf8, "inventory_item_id": pl.Utf8, "sku": pl.Utf8}, orient="row"
    )
    return balances, location_map, unsent, buffers, variants, rng


def previous_pushes(targets: pl.DataFrame, rng, *, complete: bool):
    """What we set before (a changed subset when not `complete`) and what Shopify later showed."""
    keep = rng.random(targets.height) < (1.0 if complete else 0.7)
    moved = rng.integers(-3, 3, targets.height) * (rng.random(targets.height) < 0.2)
    last = targets.with_columns((pl.col("quantity") + pl.Series(moved)).alias("quantity")).filter(pl.Series(keep))
    last = last.select(*_KEY, "quantity", pl.lit(T0).alias("pushed_at"))
    read_at = pl.Series([T0 + timedelta(minutes=int(m)) for m in rng.integers(-10, 10, last.height)])
    observed = last.select(
        *_KEY, (pl.col("quantity") + pl.Series(rng.integers(-4, 4, last.height))).alias("available"),
        read_at.alias("read_at"),
    )
    if not complete:
        observed = observed.sample(fraction=1.0, shuffle=True, seed=1)
        last = last.sample(fraction=1.0, shuffle=True, seed=2)
    return last, observed


CASES = [
    pytest.param(dict(sorted_input=True, shared_locations=False), id="sorted-aligned"),
    pytest.param(dict(sorted_input=True, shared_locations=True), id="sorted-shared-location"),
    pytest.param(dict(sorted_input=False, shared_locations=False), id="shuffled"),
    pytest.param(dict(sorted_input=False, shared_locations=True), id="shuffled-shared-location"),
]


@pytest.mark.parametrize("shape", CASES)
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_fast_stock_rules_match_the_reference(shape, seed):
    balances, location_map, unsent, buffers, variants, rng = random_case(seed, skus=400, warehouses=3, **shape)
    for account_ids in (None, ["1"]):  # all accounts: every location holds every SKU when sorted
        kwargs = dict(buffers=buffers, default_buffer=2, account_ids=account_ids)
        ats = stock.available_to_sell(balances, location_map, unsent, **kwargs)
        assert_frame_equal(ats, reference_available_to_sell(balances, location_map, unsent, **kwargs))

        location_ids = sorted(set(location_map["location_id"]), reverse=True)
        targets = stock.push_targets(ats, variants, location_ids)
        expected = reference_push_targets(ats, variants, location_ids)
        # an item listed under two SKUs is a tie in (item, location): its order was never defined
        assert_frame_equal(targets.sort(pl.all()), expected.sort(pl.all()))
        assert targets.select(_KEY).equals(expected.select(_KEY))

        for complete in (True, False):
            last, observed = previous_pushes(expected, rng, complete=complete)
            for seen in (None, observed):
                deltas = stock.stock_deltas(targets, last, seen, tolerance=1)
                reference = reference_stock_deltas(expected, last, seen, tolerance=1)
                assert_frame_equal(deltas.sort(pl.all()), reference.sort(pl.all()))
                assert deltas.select(_KEY).equals(reference.select(_KEY))


def test_targets_at_a_location_clarus_does_not_stock_are_zero():
    balances, location_map, unsent, buffers, variants, _ = random_case(4, skus=50, warehouses=2, sorted_input=True,
                                                                      shared_locations=False)
    ats = stock.available_to_sell(balances, location_map, unsent, buffers=buffers, default_buffer=0)
    locations = ["L1", "L2", "EMPTY"]
    assert_frame_equal(stock.push_targets(ats, variants, locations), reference_push_targets(ats, variants, locations))
    assert stock.push_targets(ats, variants, ["EMPTY"])["quantity"].sum() == 0


def test_empty_inputs_keep_their_schemas():
    empty_balances = pl.DataFrame(schema=stock.BALANCE_SCHEMA)
    locations = pl.DataFrame({"warehouse_id": ["1"], "location_id": ["L1"]})
    no_orders = pl.DataFrame(schema={"sku": pl.Utf8, "quantity": pl.Int64})
    ats = stock.available_to_sell(empty_balances, locations, no_orders, buffers={}, default_buffer=1)
    assert ats.schema == pl.Schema(stock.ATS_SCHEMA) and ats.is_empty()
    no_variants = pl.DataFrame(schema={"variant_id": pl.Utf8, "inventory_item_id": pl.Utf8, "sku": pl.Utf8})
    targets = stock.push_targets(ats, no_variants, ["L1"])
    assert targets.schema == pl.Schema(stock.TARGET_SCHEMA) and targets.is_empty()
    deltas = stock.stock_deltas(targets, pl.DataFrame(schema=stock.PUSHED_SCHEMA))
    assert deltas.schema == pl.Schema(stock.DELTA_SCHEMA) and deltas.is_empty()


def test_a_sku_repeated_at_a_location_gives_one_target_per_row_as_before():
    balances, location_map, unsent, buffers, variants, _ = random_case(5, skus=60, warehouses=2, sorted_input=True,
                                                                      shared_locations=False)
    ats = stock.available_to_sell(balances, location_map, unsent, buffers=buffers, default_buffer=0)
    repeated = pl.concat([ats, ats.head(4).with_columns(pl.col("quantity") + 1)])
    assert_frame_equal(
        stock.push_targets(repeated, variants, ["L1", "L2"]).sort(pl.all()),
        reference_push_targets(repeated, variants, ["L1", "L2"]).sort(pl.all()),
    )
