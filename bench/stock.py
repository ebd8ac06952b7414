"""Benchmark: available-to-sell and the Shopify deltas for 100,000 SKUs in 3 warehouses.

Builds a Clarus snapshot (100,000 SKUs x 3 warehouses, each mapped to its own Shopify
location), the orders accepted in Shopify but not yet in Clarus, per-SKU buffers, the
Shopify variants, and the quantities pushed after the previous snapshot; then times
`available_to_sell` + `push_targets` + `stock_deltas` (what the push asset computes per
run). Prints each stage and ends with `seconds: X`, the median of the timed repeats.

    .venv/bin/python bench/stock.py [--skus 100000] [--warehouses 3] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import datetime, timedelta

import numpy as np
import polars as pl

from clarus_pipelines.domain.stock import available_to_sell, push_targets, stock_deltas


def build_inputs(skus: int, warehouses: int, seed: int = 7) -> dict:
    rng = np.random.default_rng(seed)
    sku_codes = pl.Series("sku", [f"{i:07d}" for i in range(skus)], dtype=pl.Utf8)  # leading zeros on purpose
    warehouse_ids = [str(w + 1) for w in range(warehouses)]
    n = skus * warehouses
    previous_available = rng.integers(-2, 200, n)
    # ~5% of balances moved since the previous snapshot
    moved = rng.random(n) < 0.05
    available = np.where(moved, previous_available + rng.integers(-20, 20, n), previous_available)

    def balances(values: np.ndarray) -> pl.DataFrame:
        return pl.DataFrame(
            {
                "clarus_product_id": pl.Series([str(i + 1) for i in range(skus)] * warehouses, dtype=pl.Utf8),
                "sku": pl.concat([sku_codes] * warehouses),
                "warehouse_id": pl.Series(np.repeat(warehouse_ids, skus), dtype=pl.Utf8),
                "account_id": pl.Series(["1"] * n, dtype=pl.Utf8),
                "available": values.astype(np.float64),
                "allocated": rng.integers(0, 5, n).astype(np.float64),
                "on_hold": np.zeros(n),
                "on_hand": pl.Series([None] * n, dtype=pl.Float64),
            }
        )

    location_map = pl.DataFrame({"warehouse_id": warehouse_ids, "location_id": [f"6554414{w}" for w in range(warehouses)]})
    order_skus = rng.integers(0, skus, 20_000)
    unsent = pl.DataFrame({"sku": sku_codes.gather(order_skus), "quantity": rng.integers(1, 4, 20_000)})
    buffers = {sku_codes[int(i)]: int(rng.integers(0, 5)) for i in rng.integers(0, skus, 5_000)}
    # 98% of SKUs are sold in Shopify; the rest are stranded
    sold = rng.random(skus) < 0.98
    variants = pl.DataFrame(
        {
            "variant_id": pl.Series([str(40_000_000 + i) for i in range(skus)], dtype=pl.Utf8),
            "inventory_item_id": pl.Series([str(80_000_000 + i) for i in range(skus)], dtype=pl.Utf8),
            "sku": sku_codes,
        }
    ).filter(pl.Series(sold))
    previous_ats = available_to_sell(
        balances(previous_available), location_map, unsent, buffers=buffers, default_buffer=2
    )
    pushed_at = datetime(2025, 1, 1, 9, 5)
    last_pushed = push_targets(previous_ats, variants, location_map["location_id"]).select(
        "inventory_item_id", "location_id", "quantity", pl.lit(pushed_at).alias("pushed_at")
    )
    observed = last_pushed.select(
        "inventory_item_id", "location_id", pl.col("quantity").alias("available"),
        pl.lit(pushed_at + timedelta(minutes=50)).alias("read_at"),
    )
    return {
        "balances": balances(available),
        "location_map": location_map,
        "unsent": unsent,
        "buffers": buffers,
        "variants": variants,
        "last_pushed": last_pushed,
        "observed": observed,
    }


def run_once(inputs: dict) -> tuple[float, float, float, pl.DataFrame, pl.DataFrame]:
    t0 = time.perf_counter()
    ats = available_to_sell(
        inputs["balances"], inputs["location_map"], inputs["unsent"], buffers=inputs["buffers"], default_buffer=2
    )
    t1 = time.perf_counter()
    targets = push_targets(ats, inputs["variants"], inputs["location_map"]["location_id"])
    deltas = stock_deltas(targets, inputs["last_pushed"], inputs["observed"], tolerance=1)
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1, t2 - t0, ats, deltas


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skus", type=int, default=100_000)
    parser.add_argument("--warehouses", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)

    inputs = build_inputs(args.skus, args.warehouses)
    print(
        f"balances: {inputs['balances'].height} rows ({args.skus} SKUs x {args.warehouses} warehouses), "
        f"variants: {inputs['variants'].height}, unsent order lines: {inputs['unsent'].height}, "
        f"previous pushes: {inputs['last_pushed'].height}"
    )
    run_once(inputs)  # warm-up: polars thread pool and string cache
    totals = []
    for i in range(args.repeats):
        ats_s, delta_s, total_s, ats, deltas = run_once(inputs)
        totals.append(total_s)
        print(f"run {i + 1}: available_to_sell {ats_s:.3f}s ({ats.height} rows), "
              f"targets+deltas {delta_s:.3f}s ({deltas.height} sets to send), total {total_s:.3f}s")
    print(f"polars {pl.__version__}, threads {pl.thread_pool_size()}, median of {args.repeats} runs")
    print(f"seconds: {statistics.median(totals):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
