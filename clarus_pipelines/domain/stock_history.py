"""A past hour's stock, rebuilt from Clarus's transaction history (GraphQL `ListTransactions`).

Clarus serves current balances only. A backfill of a past hour must not write today's
numbers into it, so `rebuild_on_hand` works back from the balances read now: for every
product, warehouse and account, on hand at the end of the hour is on hand now minus the
signed quantity of every transaction after it that changes on-hand stock (adjustments,
receipts, dispatches). Transactions that only move stock between locations (picks,
transfers) change nothing. A transaction whose effect on on-hand stock is not known
refuses the hour (`HistoryRefused`, naming the subtype), rather than guess.

Only on hand can be rebuilt: allocations and holds leave no transaction, so what was
available, allocated or held at that hour is unknown and stays NULL in the rebuilt rows.
Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from typing import Any

import polars as pl

# Transaction subtypes whose `quantity` is the signed change of on-hand stock.
ON_HAND_SUBTYPES = frozenset({"ADJ", "RCV", "DESP"})
# Subtypes that move stock between locations of the warehouse: on hand unchanged.
MOVE_SUBTYPES = frozenset({"PICK", "TRAN"})
KEY = ["clarus_product_id", "warehouse_id", "account_id"]


class HistoryRefused(Exception):
    """The hour cannot be rebuilt from the transaction history; the message says why."""


def _id(value: Any) -> str | None:
    if isinstance(value, Mapping):
        value = value.get("id")
    return None if value is None else str(value)


def _time(value: Any) -> datetime | None:
    if not value:
        return None
    moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return moment.astimezone(timezone.utc).replace(tzinfo=None) if moment.tzinfo else moment


def movements_after(transactions: Iterable[Mapping[str, Any]], hour_end: datetime, read_at: datetime) -> pl.DataFrame:
    """Net on-hand change per balance key of the transactions in [hour_end, read_at)."""
    net: dict[tuple[str | None, str | None, str | None], float] = {}
    for tx in transactions:
        at = _time(tx.get("created_at"))
        if at is None:
            raise HistoryRefused(f"transaction {tx.get('id')} has no time: the hour cannot be placed against it")
        if not hour_end <= at < read_at:
            continue
        subtype = str(tx.get("subtype") or "").upper()
        if subtype in MOVE_SUBTYPES:
            continue
        if subtype not in ON_HAND_SUBTYPES:
            raise HistoryRefused(
                f"transaction {tx.get('id')} ({subtype or 'no subtype'}) at {at:%Y-%m-%d %H:%M} changes stock in a way "
                "this integration does not know: the hour is not rebuilt rather than guessed")
        key = (_id(tx.get("product")), _id(tx.get("warehouse")), _id(tx.get("account")))
        net[key] = net.get(key, 0.0) + float(tx.get("quantity") or 0)
    return pl.DataFrame(
        [{"clarus_product_id": k[0], "warehouse_id": k[1], "account_id": k[2], "moved": v} for k, v in net.items()],
        schema={"clarus_product_id": pl.Utf8, "warehouse_id": pl.Utf8, "account_id": pl.Utf8, "moved": pl.Float64},
    )


def rebuild_on_hand(current: pl.DataFrame, transactions: Iterable[Mapping[str, Any]], *, hour_end: datetime,
                    read_at: datetime) -> pl.DataFrame:
    """Each balance's on hand at `hour_end`: `current` (balances read at `read_at`, with
    `on_hand`) minus the on-hand movements since. Raises HistoryRefused when it cannot."""
    if current.filter(pl.col("on_hand").is_null()).height:
        raise HistoryRefused("Clarus gave no on-hand figure for some balances: nothing to work back from")
    moved = movements_after(transactions, hour_end, read_at)
    unknown = moved.join(current.select(KEY), on=KEY, how="anti")
    if unknown.height:
        first = unknown.row(0, named=True)
        raise HistoryRefused(f"stock moved after the hour for product {first['clarus_product_id']} in warehouse "
                             f"{first['warehouse_id']}, which Clarus no longer reports a balance for")
    rebuilt = (
        current.join(moved, on=KEY, how="left")
        .with_columns((pl.col("on_hand") - pl.col("moved").fill_null(0.0)).alias("on_hand"))
        .drop("moved")
    )
    negative = rebuilt.filter(pl.col("on_hand") < 0)
    if negative.height:
        first = negative.row(0, named=True)
        raise HistoryRefused(f"working back gives negative stock for {first['sku']} ({first['on_hand']:g}): "
                             "the transaction history is incomplete for this hour")
    return rebuilt.with_columns(
        pl.col("on_hand").floor().cast(pl.Int64),
        pl.lit(None, dtype=pl.Int64).alias("available"),
        pl.lit(None, dtype=pl.Int64).alias("allocated"),
        pl.lit(None, dtype=pl.Int64).alias("on_hold"),
    )
