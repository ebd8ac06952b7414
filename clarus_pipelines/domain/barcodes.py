"""GTIN-8/12/13/14 check digits (EAN-8, UPC-A, EAN-13, ITF-14), as plain functions and polars.

The check digit is the last digit; the others, read right to left, are weighted 3, 1,
3, 1... and the check digit brings the weighted sum to a multiple of ten. Padding a
GTIN on the left with zeros to 14 digits leaves its check digit valid, which lets one
vectorised rule handle every length.
"""

from __future__ import annotations

import polars as pl

GTIN_LENGTHS = (8, 12, 13, 14)


def gtin_check_digit(body: str) -> int:
    """The check digit for the digits before it (7, 11, 12 or 13 of them)."""
    if not body.isdigit() or not body.isascii():
        raise ValueError(f"a GTIN body must be digits, got {body!r}")
    total = sum(int(d) * (3 if i % 2 == 0 else 1) for i, d in enumerate(reversed(body)))
    return (10 - total % 10) % 10


def is_valid_gtin(code: str | None) -> bool:
    """True for a well-formed GTIN-8/12/13/14 with the right check digit."""
    if code is None:
        return False
    code = code.strip()
    if len(code) not in GTIN_LENGTHS or not code.isdigit() or not code.isascii():
        return False
    return gtin_check_digit(code[:-1]) == int(code[-1])


def gtin_problem(code: str | None) -> str | None:
    """Why a barcode is not a valid GTIN, or None when it is valid (or absent)."""
    if code is None or not code.strip():
        return None
    text = code.strip()
    if not text.isdigit() or not text.isascii():
        return f"barcode {text!r} is not all digits"
    if len(text) not in GTIN_LENGTHS:
        return f"barcode {text!r} has {len(text)} digits; a GTIN has 8, 12, 13 or 14"
    expected = gtin_check_digit(text[:-1])
    if expected != int(text[-1]):
        return f"barcode {text!r} has check digit {text[-1]}, expected {expected}"
    return None


def gtin_valid_expr(column: str | pl.Expr) -> pl.Expr:
    """Polars: True/False for a present barcode, null where the barcode is null or blank."""
    expr = pl.col(column) if isinstance(column, str) else column
    text = expr.cast(pl.Utf8).str.strip_chars()
    well_formed = text.str.contains(r"^(?:[0-9]{8}|[0-9]{12,14})$")
    padded = text.str.zfill(14)
    weighted = pl.sum_horizontal(
        [padded.str.slice(i, 1).cast(pl.Int32, strict=False) * (3 if i % 2 == 0 else 1) for i in range(13)]
    )
    check = padded.str.slice(13, 1).cast(pl.Int32, strict=False)
    digit_ok = check == (10 - weighted % 10) % 10  # left operand first: keeps the column name
    present = text.is_not_null() & (text != "")
    return pl.when(present & well_formed).then(digit_ok).when(present).then(well_formed)
