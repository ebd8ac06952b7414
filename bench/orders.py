"""Benchmark: orders per second through parse + validate + map, against DuckDB's floor.

Generates N realistic landed Shopify `orders/create` webhooks (default 100,000) as landing
files in a temporary folder (the receiver's envelope format and layout), then times:

1. the floor: DuckDB alone reading the same files with `read_json`;
2. ours: the product's own read of the landings (`receiver.events.load_landings`, what the
   ingest asset runs: each envelope read, its body checked against the contract, its entity
   and receive time taken out), then parse (polars, explicit schema), validate
   (completeness, SKUs, ship methods) and map (Clarus goods out and NetSuite sales
   order bodies) for the whole batch.

Ends with `ratio: X` = our total time / DuckDB read time.

    python bench/orders.py [--orders 100000] [--seed 7] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
import zlib
from datetime import datetime, timedelta, timezone
from pathlib import Path

import duckdb
import polars as pl

from clarus_pipelines.domain.goods_out import build_goods_outs
from clarus_pipelines.domain.netsuite_orders import build_sales_orders
from clarus_pipelines.domain.orders import parse_orders, validate_orders
from clarus_pipelines.receiver.events import load_landings
from clarus_pipelines.receiver.landing import Envelope, LandingZone, format_landing_id, topic_dir
from clarus_pipelines.settings import SANDBOX_POLICIES, load_policies

CITIES = [("London", "SW1A 1AA"), ("Manchester", "M1 1AE"), ("Leeds", "LS1 4AP"), ("Bristol", "BS1 5TR"),
          ("Glasgow", "G1 1XQ"), ("Cardiff", "CF10 1EP"), ("Brighton", "BN1 1AE"), ("York", "YO1 7HH")]
FIRST = ["Amelia", "Oliver", "Isla", "George", "Ava", "Noah", "Freya", "Arthur", "Lily", "Leo"]
LAST = ["Smith", "Jones", "Taylor", "Brown", "Williams", "Wilson", "Evans", "Thomas", "Roberts", "Walker"]
SHIPPING = [("standard", "Standard Shipping", "3.95"), ("express", "Express Shipping", "6.95"),
            ("next-day", "Next Day", "9.95"), (None, "Evri Parcel", "2.95")]


def catalogue(n: int, rng: random.Random) -> list[tuple[str, str, str, str]]:
    """(sku, title, price, clarus_product_id); a few all-digit SKUs with leading zeros."""
    items = []
    for i in range(n):
        sku = f"{i:06d}" if i % 25 == 0 else f"SKU-{i:05d}-{rng.choice('SMLX')}"
        items.append((sku, f"Product {i}", f"{rng.randint(5, 120)}.{rng.choice(['00', '50', '95'])}", str(10_000 + i)))
    return items


def make_order(i: int, rng: random.Random, items, created: datetime) -> dict:
    city, postcode = rng.choice(CITIES)
    first, last = rng.choice(FIRST), rng.choice(LAST)
    code, title, price = rng.choice(SHIPPING)
    lines = []
    for n in range(rng.choice([1, 1, 1, 2, 2, 3, 4])):
        sku, name, unit, _ = rng.choice(items)
        lines.append({
            "id": 13_000_000_000 + i * 10 + n, "admin_graphql_api_id": f"gid://shopify/LineItem/{13_000_000_000 + i * 10 + n}",
            "variant_id": 40_000_000_000 + zlib.crc32(sku.encode()) % 1_000_000,
            "product_id": 7_000_000_000 + zlib.crc32(sku.encode()) % 100_000,
            "title": name, "name": name, "sku": sku, "quantity": rng.choice([1, 1, 1, 2, 3]), "current_quantity": None,
            "price": unit, "requires_shipping": True, "gift_card": False, "taxable": True, "fulfillment_status": None,
            "fulfillable_quantity": 1, "grams": 250, "vendor": "Sandbox Brand", "properties": [], "tax_lines": [],
            "discount_allocations": [],
        })
    address = {
        "first_name": first, "last_name": last, "name": f"{first} {last}", "company": None,
        "address1": f"{rng.randint(1, 250)} High Street", "address2": rng.choice(["", "Flat 2", None]),
        "city": city, "province": None, "province_code": None, "zip": postcode, "country": "United Kingdom",
        "country_code": "GB", "phone": "+44 20 7946 0958", "latitude": None, "longitude": None,
    }
    fault = i % 50
    if fault == 1:
        address["zip"] = ""  # missing postcode
    elif fault == 2:
        lines[0]["sku"] = "NOT-IN-MASTER"
    elif fault == 3:
        code, title = "pigeon", "Carrier Pigeon"
    elif fault == 4:
        address = None
    stamp = created.isoformat(timespec="seconds")
    return {
        "id": 5_000_000_000_000 + i, "admin_graphql_api_id": f"gid://shopify/Order/{5_000_000_000_000 + i}",
        "name": f"#{100000 + i}", "order_number": 100000 + i, "email": f"customer{i}@example.com", "phone": None,
        "created_at": stamp, "updated_at": stamp, "processed_at": stamp, "cancelled_at": None, "cancel_reason": None,
        "financial_status": "paid", "fulfillment_status": None, "currency": "GBP", "presentment_currency": "GBP",
        "total_price": f"{sum(float(l['price']) * l['quantity'] for l in lines) + float(price):.2f}",
        "subtotal_price": "0.00", "total_tax": "0.00", "taxes_included": True, "test": False, "note": None,
        "tags": "", "source_name": "web", "line_items": lines,
        "shipping_lines": [{"id": 4_000_000_000 + i, "code": code, "title": title, "price": price, "source": "shopify",
                            "is_removed": False, "discounted_price": price, "tax_lines": []}],
        "shipping_address": address, "billing_address": address,
        "customer": {"id": 6_000_000_000 + i, "email": f"customer{i}@example.com", "first_name": first, "last_name": last},
    }


def generate(root: Path, n: int, seed: int) -> list[tuple[str, str, str, str]]:
    rng = random.Random(seed)
    items = catalogue(2_000, rng)
    start = datetime(2025, 3, 3, 8, 0, tzinfo=timezone.utc)
    base_micros = int((start - datetime(1970, 1, 1, tzinfo=timezone.utc)).total_seconds() * 1_000_000)
    folder = root / "shopify" / topic_dir("orders/create") / start.strftime("%Y-%m-%d")
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        created = start + timedelta(seconds=i)
        order = make_order(i, rng, items, created)
        landing_id = format_landing_id(base_micros + i * 1_000_000)
        envelope = Envelope(
            source="shopify", topic="orders/create", body=json.dumps(order, separators=(",", ":")).encode(),
            dedupe_key=f"webhook-{i}", webhook_id=f"webhook-{i}", received_at=created.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            headers={"content-type": "application/json", "x-shopify-topic": "orders/create"},
        )
        (folder / f"{landing_id}.json").write_bytes(envelope.to_json())
    return items


READ_SQL = (
    "SELECT filename, topic, received_at, body FROM read_json(?, format = 'newline_delimited',"
    " columns = {topic: 'VARCHAR', received_at: 'VARCHAR', body: 'VARCHAR'}, filename = true)"
)

def duckdb_read(pattern: str) -> tuple[float, int]:
    """DuckDB alone: read every file and its body (summing body lengths forces the read)."""
    con = duckdb.connect()
    con.execute("SET threads TO 2")
    start = time.perf_counter()
    count, _ = con.execute(f"SELECT count(*), sum(strlen(body)) FROM ({READ_SQL})", [pattern]).fetchall()[0]
    elapsed = time.perf_counter() - start
    con.close()
    return elapsed, count


def pipeline(root: Path, items, policies) -> tuple[dict[str, float], int, int, int, int]:
    timings: dict[str, float] = {}
    relpaths = [str(path.relative_to(root)) for path in sorted(root.glob("shopify/*/*/*.json"))]
    start = time.perf_counter()
    loaded = load_landings(LandingZone(root), relpaths)
    if loaded.set_aside or loaded.missing or loaded.unreadable:
        raise SystemExit(f"the generated landings did not all load: {len(loaded.set_aside)} set aside")
    payloads = pl.Series("payload", [row["payload"] for row in loaded.rows], dtype=pl.Utf8)
    timings["read"] = time.perf_counter() - start

    t = time.perf_counter()
    parsed = parse_orders(payloads, policies.sku_cleaning)
    timings["parse"] = time.perf_counter() - t

    t = time.perf_counter()
    products = pl.DataFrame({"sku": [s for s, *_ in items], "clarus_product_id": [p for *_, p in items]})
    verdicts = validate_orders(parsed, products=products, policies=policies)
    timings["validate"] = time.perf_counter() - t

    t = time.perf_counter()
    carriers = {(r.carrier, r.service): (i + 1, i + 101) for i, r in enumerate(policies.ship_methods)}
    goods_outs = build_goods_outs(verdicts, policies=policies, now=datetime.now(timezone.utc), carriers=carriers)
    netsuite_items = pl.DataFrame({"sku": [s for s, *_ in items], "netsuite_item_id": [str(i) for i in range(len(items))]})
    sales_orders = build_sales_orders(verdicts, items=netsuite_items, customer_id="110")
    timings["map"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - start
    held = verdicts.orders.filter(pl.col("status") == "held").height
    return timings, parsed.orders.height, goods_outs.height, sales_orders.height, held


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--orders", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--keep", type=Path, default=None, help="generate into this folder and keep it")
    args = parser.parse_args(argv)
    policies = load_policies(os.environ.get("CLARUS_PIPELINES_CONFIG", SANDBOX_POLICIES))

    root = args.keep or Path(tempfile.mkdtemp(prefix="bench-orders-"))
    try:
        t = time.perf_counter()
        items = generate(root, args.orders, args.seed)
        print(f"generated {args.orders} landed orders in {time.perf_counter() - t:.1f}s under {root}", flush=True)
        pattern = str(root / "shopify" / "*" / "*" / "*.json")

        # The first read of fresh files pays for the page cache; neither side should.
        warm, _ = duckdb_read(pattern)
        print(f"warm-up read (not counted): {warm:.2f}s", flush=True)
        floor, count = duckdb_read(pattern)
        floor = min(floor, warm)
        print(f"duckdb read_json alone: {floor:.2f}s for {count} files ({count / floor:,.0f} files/s)", flush=True)

        timings, parsed, goods_outs, sales_orders, held = pipeline(root, items, policies)
        work = timings["parse"] + timings["validate"] + timings["map"]
        print(
            f"ours: read {timings['read']:.2f}s + parse {timings['parse']:.2f}s + validate {timings['validate']:.2f}s"
            f" + map {timings['map']:.2f}s = {timings['total']:.2f}s"
        )
        print(f"orders: {parsed} parsed, {held} held, {goods_outs} goods out and {sales_orders} sales order bodies built")
        print(f"parse+validate+map: {parsed / work:,.0f} orders/s ({work:.2f}s)")
        print(f"end to end from landed files: {parsed / timings['total']:,.0f} orders/s")
        print(f"ratio: {timings['total'] / floor:.2f}")
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
