"""SKU cleaning and comparison, identical in polars, DuckDB and plain Python.

A SKU is an exact string: "000123" is not "123". Cleaning follows
`policies.sku_cleaning` (trim, remove characters Clarus rejects, case) and is the only
transformation ever applied before two SKUs are compared. `clean_sku` (one value) and
`clean_sku_expr` (a polars column) implement the same rule; a test holds them equal.

Leading zeros: a spreadsheet or a numeric import turns "000123" into "123". Such a SKU
never matches on its own (we do not guess), but `zero_stripped_key` lets a check spot
the pair and name both spellings.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import polars as pl

from clarus_pipelines.policies import SkuCleaning

_ALL_DIGITS = re.compile(r"[0-9]+")


def clean_sku(value: object, rule: SkuCleaning) -> str | None:
    """The cleaned SKU, or None when nothing usable is left.

    Numbers are refused: a SKU that reached us as a number has already lost any
    leading zeros, so silently turning it back into text would hide the damage.
    """
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"SKUs must be strings, got {type(value).__name__} {value!r}")
    text = value.strip() if rule.trim else value
    text = re.sub(rule.remove_pattern, "", text)
    if rule.case == "upper":
        text = text.upper()
    elif rule.case == "lower":
        text = text.lower()
    return text or None


def clean_sku_expr(column: str | pl.Expr, rule: SkuCleaning) -> pl.Expr:
    """Polars expression applying `clean_sku` to a Utf8 column (empty result -> null)."""
    expr = pl.col(column) if isinstance(column, str) else column
    expr = expr.cast(pl.Utf8)
    if rule.trim:
        expr = expr.str.strip_chars()
    expr = expr.str.replace_all(rule.remove_pattern, "")
    if rule.case == "upper":
        expr = expr.str.to_uppercase()
    elif rule.case == "lower":
        expr = expr.str.to_lowercase()
    return pl.when(expr.str.len_chars() > 0).then(expr).otherwise(None)


def clean_skus(values: Iterable[str | None], rule: SkuCleaning) -> list[str | None]:
    return [clean_sku(v, rule) for v in values]


def zero_stripped_key(sku: str | None) -> str | None:
    """For an all-digit SKU, the SKU without leading zeros ("000123" -> "123"); else None.

    Only all-digit SKUs are considered: those are the ones spreadsheets and numeric
    columns coerce. "0AB1" is never treated as a damaged "AB1".
    """
    if sku is None or not _ALL_DIGITS.fullmatch(sku):
        return None
    return sku.lstrip("0") or "0"


def zero_stripped_key_expr(column: str | pl.Expr) -> pl.Expr:
    """Polars version of `zero_stripped_key`."""
    expr = pl.col(column) if isinstance(column, str) else column
    stripped = expr.str.strip_chars_start("0")
    all_digits = expr.str.contains(r"^[0-9]+$")
    return pl.when(all_digits & (stripped != "")).then(stripped).when(all_digits).then(pl.lit("0")).otherwise(None)


def leading_zero_matches(candidates: pl.DataFrame, master: pl.DataFrame, *, sku: str = "sku") -> pl.DataFrame:
    """Pairs (sku, master_sku) where `sku` is not in `master` but matches once zeros are restored.

    Both frames carry cleaned SKUs in column `sku`. Returns columns `sku`, `master_sku`.
    """
    master_skus = master.select(pl.col(sku).cast(pl.Utf8)).unique()
    unknown = candidates.select(pl.col(sku).cast(pl.Utf8)).unique().join(master_skus, on=sku, how="anti")
    keyed_master = master_skus.select(
        pl.col(sku).alias("master_sku"), zero_stripped_key_expr(sku).alias("_key")
    ).drop_nulls("_key")
    keyed_unknown = unknown.with_columns(zero_stripped_key_expr(sku).alias("_key")).drop_nulls("_key")
    return (
        keyed_unknown.join(keyed_master, on="_key", how="inner")
        .filter(pl.col(sku) != pl.col("master_sku"))
        .select(sku, "master_sku")
        .sort(sku, "master_sku")
    )
