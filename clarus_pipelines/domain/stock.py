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
- `wanted_hour_keys` / `expired_hour_keys`: the hourly stock partitions that should exist
  (go-live or the retention cutoff, whichever is later, up to the current hour) and the ones
  retention removes, so Dagster's partitions are exactly the stored history.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta, timezone
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


# ------------------------------------------------------------------ keyed frames, fast
# A large catalogue's stock run (a million SKUs x warehouses) must stay well under a second
# (issue 13), and what costs is hashing and sorting text keys. The frames these rules make
# are in key order (ATS by SKU and location, targets and so the pushes recorded from them by
# item and location), so the rules check the order in one pass, then pair rows by position;
# rows not in order, or keys that do not line up, fall back to a polars sort or hash join.
# tests/test_stock_equivalence.py holds the plain join-and-sort forms they must agree with.


def _in_key_order(frame: pl.DataFrame, keys: Sequence[str], *, strict: bool = False) -> bool:
    """True when no key is null and the rows are sorted by `keys` (`strict`: no key repeats). One pass."""
    if any(frame[key].null_count() for key in keys):
        return False
    if frame.height < 2:
        return True
    in_order: pl.Series | None = None
    for key in reversed(keys):
        here, after = frame[key].slice(0, frame.height - 1), frame[key].slice(1)
        if in_order is None:
            in_order = (after > here) if strict else (after >= here)
        else:
            in_order = (after > here) | ((after == here) & in_order)
    return bool(in_order.all())


def _same_rows(frame: pl.DataFrame, others: list[pl.DataFrame], keys: Sequence[str]) -> bool:
    """`frame`'s keys are unique and in order, and every one of `others` has the same keys in the same rows
    (so a left join would pair row i with row i)."""
    return (
        all(other.height == frame.height for other in others)
        and all(other[key].equals(frame[key]) for other in others for key in keys)
        and _in_key_order(frame, keys, strict=True)
    )


def _summed_per_key(frame: pl.DataFrame, key: str, value: str) -> pl.DataFrame:
    """`value` summed per `key`, sorted by `key` (no work when the keys are already unique and in order)."""
    if _in_key_order(frame, [key], strict=True):
        return frame
    if not _in_key_order(frame, [key]):
        frame = frame.sort(key)
    return frame.group_by(key, maintain_order=True).agg(pl.col(value).sum())


def _in_turn(height: int, count: int) -> tuple[pl.Series, pl.Series]:
    """Rows taken from `count` aligned parts of `height` rows in turn: (row within its part, part)."""
    position = pl.int_range(0, height * count, eager=True)
    return position // count, position % count


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
    """What each Shopify location may sell of each SKU (`ATS_SCHEMA`), sorted by SKU and location.

    `balances`: Clarus balances (`sku`, `warehouse_id`, `account_id`, `available`).
    `location_map`: `warehouse_id` -> `location_id`; warehouses not in it are not sold from.
    `unsent`: `sku`, `quantity` of order lines accepted by Shopify but not yet in Clarus;
    deducted at every location, because nobody knows yet which one will ship them.
    `buffers` per cleaned SKU, else `default_buffer`. A warehouse's negative available
    (over-allocation) counts as zero so it never eats another warehouse's stock.
    """
    frame = balances.lazy().filter(pl.col("sku").is_not_null())
    if account_ids is not None:
        frame = frame.filter(pl.col("account_id").is_in(pl.Series(list(account_ids), dtype=pl.Utf8).implode()))
    rows = frame.select(
        "sku", "warehouse_id", pl.col("available").fill_null(0).floor().clip(lower_bound=0).alias("units")
    ).collect()
    mapping = (
        location_map.select(pl.col("warehouse_id").cast(pl.Utf8), pl.col("location_id").cast(pl.Utf8))
        .filter(pl.col("warehouse_id").is_not_null())
        .unique()
    )
    # one part per location, in location order, each summed per SKU in SKU order
    locations = mapping["location_id"].unique().sort()
    parts = []
    for location in locations:
        warehouses = mapping.filter(pl.col("location_id").eq_missing(location))["warehouse_id"]
        part = rows.filter(pl.col("warehouse_id").is_in(warehouses.implode())).select("sku", "units")
        parts.append(_summed_per_key(part, "sku", "units"))
    if not parts:
        return pl.DataFrame(schema=ATS_SCHEMA)
    unsent_per_sku = (
        unsent.lazy()
        .select(pl.col("sku").cast(pl.Utf8), pl.col("quantity").cast(pl.Int64))
        .filter(pl.col("sku").is_not_null())
        .group_by("sku")
        .agg(pl.col("quantity").sum().alias("unsent"))
        .collect()
    )
    skus = parts[0]["sku"]
    if len(parts) == 1:
        per_location = parts[0].with_columns(
            pl.lit(locations[0], pl.Utf8).alias("location_id"),
            *_deductions(skus, buffers, default_buffer, unsent_per_sku),
        )
    elif all(part["sku"].equals(skus) for part in parts[1:]):
        # every location holds the same SKUs (the usual shape): each SKU's locations in turn
        row, part = _in_turn(skus.len(), len(parts))
        per_location = pl.DataFrame([
            skus.gather(row),
            pl.concat([p["units"] for p in parts]).gather(part * skus.len() + row),
            locations.gather(part).alias("location_id"),
            *(column.gather(row) for column in _deductions(skus, buffers, default_buffer, unsent_per_sku)),
        ])
    else:
        per_location = pl.concat(
            [p.with_columns(pl.lit(location, pl.Utf8).alias("location_id")) for p, location in zip(parts, locations)]
        ).sort("sku", "location_id")
        per_location = per_location.with_columns(
            *_deductions(per_location["sku"], buffers, default_buffer, unsent_per_sku)
        )
    return per_location.select(
        "sku",
        "location_id",
        pl.col("units").cast(pl.Int64).alias("clarus_available"),
        "buffer",
        "unsent",
        (pl.col("units").cast(pl.Int64) - pl.col("buffer") - pl.col("unsent")).clip(lower_bound=0).alias("quantity"),
    ).cast(ATS_SCHEMA)


def _deductions(
    skus: pl.Series, buffers: Mapping[str, int], default_buffer: int, unsent_per_sku: pl.DataFrame
) -> list[pl.Series]:
    """Per SKU of `skus`: its safety `buffer` and the `unsent` quantity on orders not yet in Clarus."""
    buffer_table = _buffers_frame(buffers)
    buffer = (
        skus.replace_strict(buffer_table["sku"], buffer_table["buffer"], default=None, return_dtype=pl.Int64)
        .fill_null(default_buffer)
        .cast(pl.Int64)
    )
    unsent = skus.replace_strict(unsent_per_sku["sku"], unsent_per_sku["unsent"], default=0, return_dtype=pl.Int64)
    return [buffer.alias("buffer"), unsent.alias("unsent")]


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
    cannot be sold. Variants sharing a SKU each get the SKU's quantity. Sorted by
    inventory item and location.
    """
    locations = sorted(str(x) for x in location_ids)
    items = (
        variants.lazy()
        .filter(pl.col("sku").is_not_null() & pl.col("inventory_item_id").is_not_null())
        .select(pl.col("inventory_item_id").cast(pl.Utf8), pl.col("sku").cast(pl.Utf8))
        .collect()
    )
    one_sku_per_item = _in_key_order(items, ["inventory_item_id"], strict=True)
    if not one_sku_per_item:
        items = items.unique().sort("inventory_item_id", "sku")
    if not locations or items.is_empty():
        return pl.DataFrame(schema=TARGET_SCHEMA)
    quantities = _quantities_by_location(ats, sorted(set(locations)))
    if quantities is None:  # more than one row per SKU and location: let the join say what it means
        return _push_targets_by_join(ats, items, locations)
    if _in_key_order(items, ["sku"]):  # items listed in SKU order too: a merge join, no hashing
        priced = (
            items.lazy()
            .with_columns(pl.col("sku").set_sorted())
            .join(quantities.lazy().with_columns(pl.col("sku").set_sorted()), on="sku", how="left", maintain_order="left")
            .collect()
        )
    else:
        priced = items.join(quantities, on="sku", how="left", maintain_order="left")
    if len(locations) == 1:
        targets = priced.select(
            "inventory_item_id", pl.lit(locations[0], pl.Utf8).alias("location_id"), "sku",
            pl.col(f"quantity_{locations[0]}").alias("quantity"),
        )
    else:  # each item's locations in turn
        row, part = _in_turn(priced.height, len(locations))
        targets = pl.DataFrame({
            "inventory_item_id": priced["inventory_item_id"].gather(row),
            "location_id": pl.Series(locations, dtype=pl.Utf8).gather(part),
            "sku": priced["sku"].gather(row),
            "quantity": pl.concat([priced[f"quantity_{location}"] for location in locations]).gather(
                part * priced.height + row
            ),
        })
    targets = targets.with_columns(pl.col("quantity").fill_null(0).cast(pl.Int64))
    if not one_sku_per_item:
        targets = targets.sort(_KEY, maintain_order=True)
    return targets.cast(TARGET_SCHEMA)


def _quantities_by_location(ats: pl.DataFrame, locations: list[str]) -> pl.DataFrame | None:
    """One row per SKU, one `quantity_<location>` column per location; None when a SKU repeats at a location."""
    frame = ats.select(pl.col("sku").cast(pl.Utf8), pl.col("location_id").cast(pl.Utf8), pl.col("quantity"))
    span = len(locations)
    if frame.height and frame.height % span == 0 and not frame["location_id"].null_count():
        # every SKU at exactly these locations, in order (the usual shape): read the columns by stride
        skus = frame["sku"].gather_every(span)
        wide = {"sku": skus}
        for offset, location in enumerate(locations):
            if not (frame["location_id"].gather_every(span, offset) == location).all():
                break
            if offset and not frame["sku"].gather_every(span, offset).equals(skus):
                break
            wide[f"quantity_{location}"] = frame["quantity"].gather_every(span, offset)
        else:
            if _in_key_order(skus.to_frame(), ["sku"], strict=True):
                return pl.DataFrame(wide)
    wide = None
    for location in locations:
        per_sku = frame.filter(pl.col("location_id") == location).select(
            "sku", pl.col("quantity").alias(f"quantity_{location}")
        )
        if per_sku["sku"].is_duplicated().any():
            return None
        wide = per_sku if wide is None else wide.join(per_sku, on="sku", how="full", coalesce=True)
    return wide


def _push_targets_by_join(ats: pl.DataFrame, items: pl.DataFrame, locations: list[str]) -> pl.DataFrame:
    """The general form of `push_targets` (every item at every location, left-joined to `ats`)."""
    location_frame = pl.DataFrame({"location_id": locations}, schema={"location_id": pl.Utf8})
    return (
        items.lazy()
        .join(location_frame.lazy(), how="cross")
        .join(ats.lazy().select("sku", "location_id", "quantity"), on=["sku", "location_id"], how="left")
        .with_columns(pl.col("quantity").fill_null(0).cast(pl.Int64))
        .select(list(TARGET_SCHEMA))
        .collect()
        .cast(TARGET_SCHEMA)
        .sort(_KEY, maintain_order=True)
    )


def _baseline(last_pushed: pl.DataFrame, observed: pl.DataFrame | None, tolerance: int) -> pl.DataFrame:
    """What Shopify is believed to show: the last set, unless a later read says otherwise."""
    base = last_pushed.select(*_KEY, pl.col("quantity").alias("last_set"), "pushed_at")
    if observed is None:
        return base.select(*_KEY, pl.col("last_set").alias("baseline"))
    seen = observed.select(*_KEY, pl.col("available").alias("seen"), "read_at")
    return base.join(seen, on=_KEY, how="left", maintain_order="left").select(*_KEY, _drift_corrected(tolerance))


def _drift_corrected(tolerance: int) -> pl.Expr:
    drifted = (
        pl.col("seen").is_not_null()
        & (pl.col("read_at") > pl.col("pushed_at"))
        & ((pl.col("seen") - pl.col("last_set")).abs() > tolerance)
    )
    return pl.when(drifted).then(pl.col("seen")).otherwise(pl.col("last_set")).alias("baseline")


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
    with `previous` = the baseline (null when never set), sorted by item and location.
    """
    last = last_pushed.cast(PUSHED_SCHEMA)
    seen = observed.cast(LEVEL_SCHEMA) if observed is not None else None
    if _same_rows(targets, [last] if seen is None else [last, seen], _KEY):
        # the usual run: one row per item and location in all of them, in the same order
        joined = targets.hstack([last["quantity"].alias("last_set"), last["pushed_at"]])
        if seen is None:
            joined = joined.with_columns(pl.col("last_set").alias("baseline"))
        else:
            joined = joined.hstack([seen["available"].alias("seen"), seen["read_at"]])
            joined = joined.with_columns(_drift_corrected(tolerance))
    else:
        joined = targets.join(_baseline(last, seen, tolerance), on=_KEY, how="left", maintain_order="left")
    deltas = (
        joined.filter(pl.col("baseline").is_null() | (pl.col("baseline") != pl.col("quantity")))
        .select(*TARGET_SCHEMA, pl.col("baseline").alias("previous"))
        .cast(DELTA_SCHEMA)
    )
    return deltas if _in_key_order(deltas, _KEY) else deltas.sort(_KEY)


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


# ------------------------------------------------------------------ snapshot hours (partition keys)

HOUR_KEY_FORMAT = "%Y-%m-%d-%H:%M"  # UTC; the `stock_hours` partition keys and `stock_snapshots.snapshot_hour`
ONE_HOUR = timedelta(hours=1)


def _naive_utc_hour(moment: datetime) -> datetime:
    if moment.tzinfo is not None:
        moment = moment.astimezone(timezone.utc).replace(tzinfo=None)
    return moment.replace(minute=0, second=0, microsecond=0)


def hour_key(moment: datetime) -> str:
    """The snapshot hour containing `moment` (naive = UTC), as a partition key."""
    return _naive_utc_hour(moment).strftime(HOUR_KEY_FORMAT)


def key_hour(key: str) -> datetime:
    """The naive UTC hour a partition key names; ValueError for anything but a whole hour."""
    hour = datetime.strptime(key, HOUR_KEY_FORMAT)
    if hour.minute:
        raise ValueError(f"stock partition key {key!r} is not a whole hour")
    return hour


def first_kept_hour(go_live: datetime, retention_days: int, now: datetime) -> datetime:
    """The oldest hour retention keeps: the first whole hour at or after `now - retention_days`
    (`prune_snapshots` deletes the hours before that cutoff), never before go-live."""
    cutoff = (now.astimezone(timezone.utc).replace(tzinfo=None) if now.tzinfo else now) - timedelta(days=retention_days)
    first = _naive_utc_hour(cutoff)
    if first < cutoff:
        first += ONE_HOUR
    return max(first, _naive_utc_hour(go_live))


def wanted_hour_keys(go_live: datetime, retention_days: int, now: datetime) -> list[str]:
    """Every hour from the oldest one retention keeps (not before go-live) to the current hour,
    oldest first: the stock partitions that should exist at `now`. Empty before go-live."""
    hour, last = first_kept_hour(go_live, retention_days, now), _naive_utc_hour(now)
    keys = []
    while hour <= last:
        keys.append(hour.strftime(HOUR_KEY_FORMAT))
        hour += ONE_HOUR
    return keys


def expired_hour_keys(keys: Iterable[str], cutoff: datetime, kept_hours: Iterable[datetime]) -> list[str]:
    """The partition keys retention removes: hours before `cutoff` (naive UTC) that no longer hold
    snapshot rows (`kept_hours`; the newest hour stays whatever its age). Keys that name no hour
    are left alone."""
    kept = set(kept_hours)
    expired = []
    for key in keys:
        try:
            hour = key_hour(key)
        except ValueError:
            continue
        if hour < cutoff and hour not in kept:
            expired.append(key)
    return sorted(expired)
