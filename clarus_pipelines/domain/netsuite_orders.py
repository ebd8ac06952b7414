"""The NetSuite sales order for a Shopify order (REST record API `salesOrder` body).

Shaped like NetSuite's published POST examples: `entity` (the customer record the web
orders are booked to), `tranDate`, `otherrefnum` (the Shopify order name), `memo`,
`orderStatus` ("B", pending fulfilment: approved, so Clarus's dispatch can be fulfilled
against it), `externalId` (the Shopify order id: NetSuite refuses a second record with
the same external id, which makes the create idempotent), the shipping address and one
item line per shippable Shopify line with the NetSuite item's internal id.
Built for a whole batch at once, like the goods out.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import polars as pl

from clarus_pipelines.domain.goods_out import prune_nulls
from clarus_pipelines.domain.orders import OrderVerdicts

ITEMS_SCHEMA = {"sku": pl.Utf8, "netsuite_item_id": pl.Utf8}
PENDING_FULFILMENT = "B"


def items_frame(items: pl.DataFrame | Mapping[str, str | None]) -> pl.DataFrame:
    """Cleaned SKU -> NetSuite internal item id."""
    if isinstance(items, pl.DataFrame):
        frame = items.select(pl.col("sku").cast(pl.Utf8), pl.col("netsuite_item_id").cast(pl.Utf8))
    else:
        frame = pl.DataFrame({"sku": list(items), "netsuite_item_id": list(items.values())}, schema=ITEMS_SCHEMA)
    return frame.drop_nulls().unique("sku", keep="first", maintain_order=True)


def build_sales_orders(
    verdicts: OrderVerdicts,
    *,
    items: pl.DataFrame | Mapping[str, str | None],
    customer_id: str,
    order_status: str = PENDING_FULFILMENT,
) -> pl.DataFrame:
    """Sales order bodies for the ready orders: `order_id`, `external_id`, `body` (struct).

    Raises ValueError when a shippable line's SKU has no NetSuite item id (the item
    master and the order validation disagree: a bug, not a data problem to hold on).
    """
    grouped, missing = _item_lines(verdicts, items)
    if missing:
        skus = sorted({sku for order_skus in missing.values() for sku in order_skus})
        raise ValueError(f"no NetSuite item id for SKU(s) {skus}: run the item master sync first")
    ready = verdicts.orders.filter(pl.col("status") == "ready")
    body = pl.struct(
        pl.col("order_id").alias("externalId"),
        pl.struct(pl.lit(customer_id).alias("id")).alias("entity"),
        pl.col("created_at").str.slice(0, 10).alias("tranDate"),
        pl.col("order_name").alias("otherrefnum"),
        pl.format("Shopify order {}", pl.col("order_name")).alias("memo"),
        pl.lit(order_status).alias("orderStatus"),
        _shipping_address().alias("shippingAddress"),
        pl.struct(pl.col("items")).alias("item"),
    )
    return ready.join(grouped, on="order_id", how="inner", maintain_order="left").select(
        "order_id", pl.col("order_id").alias("external_id"), body.alias("body")
    )


def _shipping_address() -> pl.Expr:
    return pl.struct(
        pl.col("ship_name").alias("addressee"),
        pl.col("ship_company").alias("attention"),
        pl.col("ship_address1").alias("addr1"),
        pl.col("ship_address2").alias("addr2"),
        pl.col("ship_city").alias("city"),
        pl.col("ship_province").alias("state"),
        pl.col("ship_zip").alias("zip"),
        pl.struct(pl.col("ship_country_code").alias("id")).alias("country"),
    )


def _item_lines(verdicts: OrderVerdicts, items) -> tuple[pl.DataFrame, dict[str, list[str]]]:
    """Per ready order its NetSuite item lines (`order_id`, `items`), and the SKUs without an item id."""
    ready = verdicts.orders.filter(pl.col("status") == "ready")
    lines = (
        verdicts.lines.filter(pl.col("ships"))
        .join(ready.select("order_id"), on="order_id", how="semi")
        .join(items_frame(items), on="sku", how="left", maintain_order="left")
    )
    missing: dict[str, list[str]] = {}
    for row in lines.filter(pl.col("netsuite_item_id").is_null()).iter_rows(named=True):
        missing.setdefault(row["order_id"], []).append(row["sku"] or "(no SKU)")
    item_line = pl.struct(
        pl.struct(pl.col("netsuite_item_id").alias("id")).alias("item"),
        pl.col("quantity"),
        pl.col("price").cast(pl.Float64, strict=False).alias("rate"),
        pl.col("title").alias("description"),
    )
    grouped = (
        lines.filter(pl.col("netsuite_item_id").is_not_null())
        .sort("order_id", "line_index")
        .group_by("order_id", maintain_order=True)
        .agg(item_line.alias("items"))
    )
    return grouped, missing


def sales_order_edits(
    verdicts: OrderVerdicts, items: pl.DataFrame | Mapping[str, str | None]
) -> tuple[dict[str, dict[str, Any]], dict[str, list[str]]]:
    """What each edited (ready) order's sales order should now say: `{"lines": [...],
    "shippingAddress": {...}}` per order id, and per order the SKUs that have no NetSuite
    item id (those orders get no entry)."""
    grouped, missing = _item_lines(verdicts, items)
    addresses = verdicts.orders.filter(pl.col("status") == "ready").select("order_id", _shipping_address().alias("address"))
    address_of = dict(zip(addresses["order_id"].to_list(), addresses["address"].to_list()))
    edits = {
        order_id: {"lines": prune_nulls(order_lines), "shippingAddress": prune_nulls(address_of.get(order_id) or {})}
        for order_id, order_lines in zip(grouped["order_id"].to_list(), grouped["items"].to_list())
        if order_id not in missing
    }
    return edits, missing


def shipping_address_change(current: Mapping[str, Any] | None, wanted: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The shipping address to PATCH when the order's differs from `wanted`, else None.

    Only the fields we send are compared (NetSuite adds its own, like `addrText`); a field
    we no longer send is cleared.
    """
    if not wanted:
        return None
    current = current or {}

    def norm(value: Any) -> Any:
        if isinstance(value, Mapping):
            return norm(value.get("id"))
        return None if value in (None, "") else str(value).strip()

    fields = ("addressee", "attention", "addr1", "addr2", "city", "state", "zip", "country")
    if all(norm(current.get(f)) == norm(wanted.get(f)) for f in fields):
        return None
    cleared = {f: "" for f in fields if f != "country" and f not in wanted and norm(current.get(f)) is not None}
    return {**cleared, **{f: wanted[f] for f in fields if f in wanted}}


def sales_order_line_changes(current_lines: list[Mapping[str, Any]], wanted_lines: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The `item.items` of a PATCH that makes a sales order carry `wanted_lines`.

    `current_lines`: the order's item sublist as NetSuite returns it (`line`, `item.id`,
    `quantity`, `quantityFulfilled`, `isClosed`). `wanted_lines`: lines as
    `build_sales_orders` makes them (`item.id`, `quantity`, optional `rate`,
    `description`). Per item, the first open line takes the wanted quantity (never less
    than it has fulfilled), further open lines are closed when nothing was fulfilled on
    them (else cut to what was), items no longer wanted are closed, and new items are
    added. Computed from the order's current state, so an order that already matches
    gives no changes: repeating the sync is harmless.
    """
    wanted: dict[str, dict[str, Any]] = {}
    for line in wanted_lines:
        item_id = str((line.get("item") or {}).get("id"))
        entry = wanted.setdefault(item_id, {**line, "quantity": 0.0})
        entry["quantity"] += float(line.get("quantity") or 0)
    changes: list[dict[str, Any]] = []
    placed: set[str] = set()
    for line in current_lines:
        if line.get("isClosed"):
            continue
        number = int(line["line"])
        item_id = str((line.get("item") or {}).get("id"))
        quantity = float(line.get("quantity") or 0)
        fulfilled = float(line.get("quantityFulfilled") or 0)
        target = wanted.get(item_id)
        if target is None or item_id in placed:
            if fulfilled > 0:
                if quantity > fulfilled:
                    changes.append({"line": number, "quantity": fulfilled})
            else:
                changes.append({"line": number, "isClosed": True})
            continue
        placed.add(item_id)
        new_quantity = max(target["quantity"], fulfilled)
        if abs(new_quantity - quantity) > 1e-9:
            changes.append({"line": number, "quantity": new_quantity})
    for item_id, line in wanted.items():
        if item_id not in placed and line["quantity"] > 0:
            changes.append(prune_nulls(dict(line)))
    return changes


def sales_order_dicts(sales_orders: pl.DataFrame) -> dict[str, dict[str, Any]]:
    """order_id -> sales order body as a plain dict (nulls removed)."""
    return {
        order_id: prune_nulls(body)
        for order_id, body in zip(sales_orders["order_id"].to_list(), sales_orders["body"].to_list())
    }


def allocate_to_lines(lines: Iterable[Mapping[str, Any]], wanted: Iterable[tuple[str, float]],
                      room: Mapping[int, float]) -> tuple[dict[int, float], list[tuple[str, float]]]:
    """Spread (item id, quantity) over the record's lines of that item, each taking at most
    its `room`: (line number -> quantity, [(item id, quantity left over)])."""
    lines = list(lines)
    taken: dict[int, float] = {}
    short: list[tuple[str, float]] = []
    for item_id, quantity in wanted:
        left = float(quantity)
        for ln in lines:
            number = int(ln["line"])
            if str((ln.get("item") or {}).get("id")) != str(item_id) or number not in room:
                continue
            take = min(left, room[number] - taken.get(number, 0.0))
            if take > 0:
                taken[number] = taken.get(number, 0.0) + take
                left -= take
        if left > 1e-9:
            short.append((str(item_id), left))
    return taken, short
