"""Stock rules: Clarus is master, Shopify shows what can really be sold.

Plain, vectorised functions over polars frames (no Dagster, no I/O). Every SKU and id
column is `pl.Utf8`; quantities are `pl.Int64`.

- `balances_frame`: Clarus stock balance records (GraphQL nodes) -> a typed frame.
- `quantity_problems`: rows with negative, fractional, missing or inconsistent quantities.
- `available_to_sell`: per SKU and Shopify location,
  Clarus available - safety buffer - quantity on orders accepted by Shopify but not yet in
  Clarus, never negative.
- `push_targets`: the quantity each Shopify inventory item should show at each location.
- `stock_deltas`: the targets that differ from what we last set (or from what Shopify was
  later seen to show, when it drifted past the tolerance): the only sets worth sending.
- `stock_mismatches`: Shopify differs from what we last set, or from what Clarus says it
  should show, beyond the tolerance.
- `stranded_stock`: stock available in Clarus for SKUs that no Shopify variant maps to.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import polars as pl

from clarus_pipelines.domain.skus import clean_sku_expr
from clarus_pipelines.policies import SkuCleaning

BALANCE_SCHEMA: dict[str, pl.DataType] = {
    "clarus_product_id": pl.Utf8,
    "sku": pl.Utf8,
    "warehouse_id": pl.Utf8,
    "account_id": pl.Utf8,
    "available": pl.Float64,
    "allocated": pl.Float64,
    "on_hold": pl.Float64,
    "on_hand": pl.Float64,
}
"""Balances as read: quantities stay Float64 (Clarus sends decimals) until validated."""

ATS_SCHEMA: dict[str, pl.DataType] = {
    "sku": pl.Utf8,
    "location_id": pl.Utf8,
    "clarus_available": pl.Int64,
    "buffer": pl.Int64,
    "unsent": pl.Int64,
    "quantity": pl.Int64,
}
TARGET_SCHEMA: dict[str, pl.DataType] = {
    "inventory_item_id": pl.Utf8,
    "location_id": pl.Utf8,
    "sku": pl.Utf8,
    "quantity": pl.Int64,
}
PUSHED_SCHEMA: dict[str, pl.DataType] = {
    "inventory_item_id": pl.Utf8,
    "location_id": pl.Utf8,
    "quantity": pl.Int64,
    "pushed_at": pl.Datetime("us"),
}
LEVEL_SCHEMA: dict[str, pl.DataType] = {
    "inventory_item_id": pl.Utf8,
    "location_id": pl.Utf8,
    "available": pl.Int64,
    "read_at": pl.Datetime("us"),
}
DELTA_SCHEMA: dict[str, pl.DataType] = {**TARGET_SCHEMA, "previous": pl.Int64}
MISMATCH_SCHEMA: dict[str, pl.DataType] = {
    "sku": pl.Utf8,
    "inventory_item_id": pl.Utf8,
    "location_id": pl.Utf8,
    "shopify": pl.Int64,
    "last_set": pl.Int64,
    "expected": pl.Int64,
    "reason": pl.Utf8,
}
STRANDED_SCHEMA: dict[str, pl.DataType] = {
    "sku": pl.Utf8,
    "clarus_product_ids": pl.List(pl.Utf8),
    "warehouse_ids": pl.List(pl.Utf8),
    "quantity": pl.Int64,
    "on_hold": pl.Int64,
    "unit_value": pl.Float64,
    "value": pl.Float64,
}

_KEY = ["inventory_item_id", "location_id"]


def _id_text(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, float):  # GraphQL ids are strings; a float id would be a bug upstream
        if not value.is_integer():
            raise ValueError(f"id {value!r} is not an integer")
        value = int(value)
    return str(value)


def _quantity(value: Any) -> float | None:
    if value is None or value == "":
        return None
    number = float(value)
    return None if math.isnan(number) else number


def _nested_id(node: Mapping[str, Any], name: str) -> Any:
    ref = node.get(name)
    if isinstance(ref, Mapping):
        return ref.get("id")
    return node.get(f"{name}_id")


def balances_frame(records: Iterable[Mapping[str, Any]], rule: SkuCleaning) -> pl.DataFrame:
    """Clarus stock balance nodes -> a frame of `BALANCE_SCHEMA` with the SKU cleaned.

    A node looks like the GraphQL `StockBalance`: `available`, `allocated`, optionally
    `on_hold` and `on_hand`, `product {id code}`, `account {id}`, `warehouse {id}`. When
    Clarus gives no `on_hold` but gives `on_hand`, held stock is what is on hand but
    neither available, allocated nor picked.
    """
    rows: dict[str, list[Any]] = {name: [] for name in BALANCE_SCHEMA}
    for node in records:
        product = node.get("product") or {}
        available = _quantity(node.get("available"))
        allocated = _quantity(node.get("allocated"))
        on_hand = _quantity(node.get("on_hand"))
        on_hold = _quantity(node.get("on_hold"))
        if on_hold is None and on_hand is not None:
            picked = _quantity(node.get("picked")) or 0.0
            on_hold = max(0.0, on_hand - max(available or 0.0, 0.0) - (allocated or 0.0) - picked)
        code = product.get("code") if isinstance(product, Mapping) else None
        if code is not None and not isinstance(code, str):
            raise TypeError(f"Clarus product code must be a string, got {type(code).__name__} {code!r}")
        rows["clarus_product_id"].append(_id_text(product.get("id") if isinstance(product, Mapping) else None))
        rows["sku"].append(code)
        rows["warehouse_id"].append(_id_text(_nested_id(node, "warehouse")))
        rows["account_id"].append(_id_text(_nested_id(node, "account")))
        rows["available"].append(available)
        rows["allocated"].append(allocated)
        rows["on_hold"].append(on_hold if on_hold is not None else 0.0)
        rows["on_hand"].append(on_hand)
    frame = pl.DataFrame(rows, schema=BALANCE_SCHEMA)
    return frame.with_columns(clean_sku_expr("sku", rule).alias("sku"))


def quantity_problems(balances: pl.DataFrame) -> pl.DataFrame:
    """Balance rows that cannot be true or cannot be sold as whole units.

    Returns the offending rows with a `problem` column: `missing` (no available figure),
    `negative`, `fractional`, `no_sku`, or `exceeds_on_hand` (available + allocated +
    on hold greater than what is physically there).
    """
    quantities = ["available", "allocated", "on_hold"]
    total = pl.col("available").fill_null(0) + pl.col("allocated").fill_null(0) + pl.col("on_hold").fill_null(0)
    problem = (
        pl.when(pl.col("sku").is_null())
        .then(pl.lit("no_sku"))
        .when(pl.col("available").is_null())
        .then(pl.lit("missing"))
        .when(pl.any_horizontal([pl.col(c) < 0 for c in quantities]))
        .then(pl.lit("negative"))
        .when(pl.any_horizontal([pl.col(c).fill_null(0) != pl.col(c).fill_null(0).floor() for c in quantities]))
        .then(pl.lit("fractional"))
        .when(pl.col("on_hand").is_not_null() & (total > pl.col("on_hand") + 1e-9))
        .then(pl.lit("exceeds_on_hand"))
        .otherwise(None)
    )
    return balances.with_columns(problem.alias("problem")).filter(pl.col("problem").is_not_null())


def duplicate_balance_keys(balances: pl.DataFrame) -> pl.DataFrame:
    """(product, warehouse, account) keys that appear more than once, with their count."""
    key = ["clarus_product_id", "warehouse_id", "account_id"]
    return balances.group_by(key).len("rows").filter(pl.col("rows") > 1).sort(key)


def whole_units(balances: pl.DataFrame) -> pl.DataFrame:
    """Quantities as Int64 whole units, rounding down so stock is never overstated."""
    return balances.with_columns(
        [pl.col(c).floor().cast(pl.Int64) for c in ("available", "allocated", "on_hold", "on_hand")]
    )


def _buffers_frame(buffers: Mapping[str, int]) -> pl.DataFrame:
    return pl.DataFrame(
        {"sku": list(buffers), "buffer": list(buffers.values())}, schema={"sku": pl.Utf8, "buffer": pl.Int64}
    )


def available_to_sell(
    balances: pl.DataFrame,
    location_map: pl.DataFrame,
    unsent: pl.DataFrame,
    *,
    buffers: Mapping[str, int],
    default_buffer: int,
    account_ids: Iterable[str] | None = None,
) -> pl.DataFrame:
    """What each Shopify location may sell of each SKU (`ATS_SCHEMA`).

    `balances`: Clarus balances (`sku`, `warehouse_id`, `account_id`, `available`).
    `location_map`: `warehouse_id` -> `location_id`; warehouses not in it are not sold from.
    `unsent`: `sku`, `quantity` of order lines accepted by Shopify but not yet in Clarus;
    deducted at every location, because nobody knows yet which one will ship them.
    `buffers` per cleaned SKU, else `default_buffer`. A warehouse's negative available
    (over-allocation) counts as zero so it never eats another warehouse's stock.
    """
    frame = balances.lazy().filter(pl.col("sku").is_not_null())
    if account_ids is not None:
        frame = frame.filter(pl.col("account_id").is_in(pl.Series(list(account_ids), dtype=pl.Utf8)))
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
    result = (
        per_location.join(_buffers_frame(buffers).lazy(), on="sku", how="left")
        .join(unsent_per_sku, on="sku", how="left")
        .with_columns(
            pl.col("buffer").fill_null(default_buffer).cast(pl.Int64),
            pl.col("unsent").fill_null(0).cast(pl.Int64),
        )
        .with_columns(
            (pl.col("clarus_available") - pl.col("buffer") - pl.col("unsent")).clip(lower_bound=0).alias("quantity")
        )
        .select(list(ATS_SCHEMA))
    )
    return result.collect().cast(ATS_SCHEMA).sort("sku", "location_id")


def variants_frame(records: Iterable[Mapping[str, Any]], rule: SkuCleaning) -> pl.DataFrame:
    """Shopify variants -> `variant_id`, `inventory_item_id`, `sku` (cleaned), `sku_raw`, `price`."""
    rows: dict[str, list[Any]] = {k: [] for k in ("variant_id", "inventory_item_id", "sku_raw", "price")}
    for variant in records:
        sku = variant.get("sku")
        if sku is not None and not isinstance(sku, str):
            raise TypeError(f"Shopify variant SKU must be a string, got {type(sku).__name__} {sku!r}")
        price = variant.get("price")
        rows["variant_id"].append(_id_text(variant.get("id")))
        rows["inventory_item_id"].append(_id_text(variant.get("inventory_item_id")))
        rows["sku_raw"].append(sku)
        rows["price"].append(float(price) if price not in (None, "") else None)
    frame = pl.DataFrame(
        rows, schema={"variant_id": pl.Utf8, "inventory_item_id": pl.Utf8, "sku_raw": pl.Utf8, "price": pl.Float64}
    )
    return frame.with_columns(clean_sku_expr("sku_raw", rule).alias("sku")).select(
        "variant_id", "inventory_item_id", "sku", "sku_raw", "price"
    )


def push_targets(ats: pl.DataFrame, variants: pl.DataFrame, location_ids: Iterable[str]) -> pl.DataFrame:
    """The quantity every managed Shopify inventory item should show at each location.

    A variant is managed when it has a SKU and an inventory item. Managed items whose SKU
    Clarus has no sellable stock of get 0: Clarus is master, and what it does not hold
    cannot be sold. Variants sharing a SKU each get the SKU's quantity.
    """
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
        .select(list(TARGET_SCHEMA))
        .collect()
        .cast(TARGET_SCHEMA)
        .sort(_KEY)
    )


def _baseline(last_pushed: pl.LazyFrame, observed: pl.LazyFrame | None, tolerance: int) -> pl.LazyFrame:
    """What Shopify is believed to show: the last set, unless a later read says otherwise."""
    base = last_pushed.select(*_KEY, pl.col("quantity").alias("last_set"), "pushed_at")
    if observed is None:
        return base.select(*_KEY, pl.col("last_set").alias("baseline"))
    seen = observed.select(*_KEY, pl.col("available").alias("seen"), "read_at")
    drifted = (
        pl.col("seen").is_not_null()
        & (pl.col("read_at") > pl.col("pushed_at"))
        & ((pl.col("seen") - pl.col("last_set")).abs() > tolerance)
    )
    return (
        base.join(seen, on=_KEY, how="left")
        .with_columns(pl.when(drifted).then(pl.col("seen")).otherwise(pl.col("last_set")).alias("baseline"))
        .select(*_KEY, "baseline")
    )


def stock_deltas(
    targets: pl.DataFrame,
    last_pushed: pl.DataFrame,
    observed: pl.DataFrame | None = None,
    *,
    tolerance: int = 0,
) -> pl.DataFrame:
    """Targets worth sending: never set before, or different from what Shopify should show.

    `last_pushed` holds the last quantity set per (inventory item, location) and when.
    When `observed` (a read of Shopify's levels) is newer than the last set and differs
    from it by more than `tolerance` (someone edited stock in Shopify), the observed
    quantity is the baseline, so the next push corrects the drift. Returns `DELTA_SCHEMA`
    with `previous` = the baseline (null when never set).
    """
    baseline = _baseline(
        last_pushed.lazy().cast(PUSHED_SCHEMA), observed.lazy().cast(LEVEL_SCHEMA) if observed is not None else None, tolerance
    )
    return (
        targets.lazy()
        .join(baseline, on=_KEY, how="left")
        .filter(pl.col("baseline").is_null() | (pl.col("baseline") != pl.col("quantity")))
        .select(*TARGET_SCHEMA, pl.col("baseline").alias("previous"))
        .collect()
        .cast(DELTA_SCHEMA)
        .sort(_KEY)
    )


def stock_mismatches(
    observed: pl.DataFrame,
    last_pushed: pl.DataFrame,
    targets: pl.DataFrame,
    *,
    tolerance: int,
) -> pl.DataFrame:
    """Managed items whose Shopify quantity is off (`MISMATCH_SCHEMA`).

    `reason` is `differs_from_last_set` (Shopify shows more than `tolerance` away from the
    last quantity we set before the read) or `differs_from_clarus` (more than `tolerance`
    away from what Clarus says it should show now, `targets`), the first that applies.
    Items we never set and Clarus has no target for are not ours to judge.
    """
    pushed = last_pushed.lazy().cast(PUSHED_SCHEMA).select(*_KEY, pl.col("quantity").alias("last_set"), "pushed_at")
    joined = (
        observed.lazy()
        .cast(LEVEL_SCHEMA)
        .join(targets.lazy().select(*_KEY, "sku", pl.col("quantity").alias("expected")), on=_KEY, how="inner")
        .join(pushed, on=_KEY, how="left")
        # a read taken before our last set says nothing about that set
        .with_columns(
            pl.when(pl.col("pushed_at") <= pl.col("read_at")).then(pl.col("last_set")).otherwise(None).alias("last_set")
        )
    )
    off_last = pl.col("last_set").is_not_null() & ((pl.col("available") - pl.col("last_set")).abs() > tolerance)
    off_clarus = (pl.col("available") - pl.col("expected")).abs() > tolerance
    return (
        joined.with_columns(
            pl.when(off_last)
            .then(pl.lit("differs_from_last_set"))
            .when(off_clarus)
            .then(pl.lit("differs_from_clarus"))
            .otherwise(None)
            .alias("reason")
        )
        .filter(pl.col("reason").is_not_null())
        .select("sku", *_KEY, pl.col("available").alias("shopify"), "last_set", "expected", "reason")
        .collect()
        .cast(MISMATCH_SCHEMA)
        .sort("sku", *_KEY)
    )


def stranded_stock(
    balances: pl.DataFrame,
    variant_skus: pl.DataFrame,
    unit_values: pl.DataFrame | None = None,
    *,
    account_ids: Iterable[str] | None = None,
) -> pl.DataFrame:
    """SKUs with stock available in Clarus that no Shopify variant maps to (`STRANDED_SCHEMA`).

    `quantity` is the available stock summed over warehouses (negative counts as zero);
    `unit_value` and `value` are filled where `unit_values` (`sku`, `unit_value`) knows
    the SKU, else null.
    """
    frame = balances.lazy().filter(pl.col("sku").is_not_null())
    if account_ids is not None:
        frame = frame.filter(pl.col("account_id").is_in(pl.Series(list(account_ids), dtype=pl.Utf8)))
    mapped = variant_skus.lazy().select(pl.col("sku").cast(pl.Utf8)).drop_nulls().unique()
    per_sku = (
        frame.join(mapped, on="sku", how="anti")
        .group_by("sku")
        .agg(
            pl.col("clarus_product_id").drop_nulls().unique().sort().alias("clarus_product_ids"),
            pl.col("warehouse_id")
            .filter(pl.col("available").fill_null(0) > 0)
            .drop_nulls()
            .unique()
            .sort()
            .alias("warehouse_ids"),
            pl.col("available").fill_null(0).floor().clip(lower_bound=0).sum().cast(pl.Int64).alias("quantity"),
            pl.col("on_hold").fill_null(0).floor().clip(lower_bound=0).sum().cast(pl.Int64).alias("on_hold"),
        )
        .filter(pl.col("quantity") > 0)
    )
    values = (
        unit_values.lazy().select(pl.col("sku").cast(pl.Utf8), pl.col("unit_value").cast(pl.Float64))
        if unit_values is not None
        else pl.LazyFrame(schema={"sku": pl.Utf8, "unit_value": pl.Float64})
    )
    return (
        per_sku.join(values.unique("sku", keep="last"), on="sku", how="left")
        .with_columns((pl.col("quantity") * pl.col("unit_value")).round(2).alias("value"))
        .select(list(STRANDED_SCHEMA))
        .collect()
        .cast(STRANDED_SCHEMA)
        .sort("sku")
    )


def prune_snapshots(con, older_than) -> int:
    """Delete hourly stock snapshots taken before `older_than` (naive UTC); rows removed.

    History only: available-to-sell reads `stock_balances_current`, and the newest
    snapshot hour is kept whatever its age, so a stock sync that stopped for weeks still
    shows what Clarus last said.
    """
    return con.execute(
        "DELETE FROM stock_snapshots WHERE snapshot_hour < ?"
        " AND snapshot_hour < (SELECT max(snapshot_hour) FROM stock_snapshots)",
        [older_than],
    ).fetchone()[0]
