"""SKU cleaning (plain and polars agree), leading zeros through every hop, GTIN check digits."""

from __future__ import annotations

import csv
import io
import json

import duckdb
import polars as pl
import pytest

from clarus_pipelines.domain.barcodes import gtin_check_digit, gtin_problem, gtin_valid_expr, is_valid_gtin
from clarus_pipelines.domain.skus import (
    clean_sku,
    clean_sku_expr,
    leading_zero_matches,
    zero_stripped_key,
    zero_stripped_key_expr,
)
from clarus_pipelines.policies import SkuCleaning

RULE = SkuCleaning()  # the defaults: trim, upper case, remove what Clarus rejects

AWKWARD = [
    "000123", " 000123 ", "tee-nav-m", "TEE#OLV-M", " BELT-BLK-90", "MUG-ECR-350 ", "a b\tc", "ÄPFEL-1",
    "###", "", "   ", "SCARF&SILK-RST", "x.y_z/1-2", "0", "00", "٣٣", "ﬁx-1", None,
]


@pytest.mark.parametrize(
    "rule",
    [RULE, SkuCleaning(case="preserve"), SkuCleaning(case="lower", trim=False), SkuCleaning(remove_pattern=r"[#&]")],
)
def test_plain_and_polars_cleaning_agree(rule):
    expected = [clean_sku(v, rule) for v in AWKWARD]
    got = pl.DataFrame({"sku": AWKWARD}, schema={"sku": pl.Utf8}).select(clean_sku_expr("sku", rule))["sku"].to_list()
    assert got == expected


def test_cleaning_rules():
    assert clean_sku(" tee#olv-m ", RULE) == "TEEOLV-M"
    assert clean_sku("000123", RULE) == "000123"
    assert clean_sku("###", RULE) is None
    assert clean_sku("  ", RULE) is None
    assert clean_sku("Tee-1", SkuCleaning(case="preserve")) == "Tee-1"
    with pytest.raises(TypeError):
        clean_sku(123, RULE)  # a number has already lost its zeros: refuse it


def test_zero_stripped_key_only_for_all_digit_skus():
    assert zero_stripped_key("000123") == "123"
    assert zero_stripped_key("123") == "123"
    assert zero_stripped_key("0000") == "0"
    assert zero_stripped_key("0AB1") is None
    assert zero_stripped_key(None) is None
    values = ["000123", "123", "0000", "0AB1", None]
    got = pl.DataFrame({"s": values}, schema={"s": pl.Utf8}).select(zero_stripped_key_expr("s"))["s"].to_list()
    assert got == [zero_stripped_key(v) for v in values]


def test_leading_zero_matches_names_both_spellings():
    master = pl.DataFrame({"sku": ["000123", "000456", "ABC", "789"]})
    variants = pl.DataFrame({"sku": ["123", "000456", "0789", "ABC", "999"]})
    pairs = leading_zero_matches(variants, master)
    assert pairs.to_dicts() == [{"sku": "0789", "master_sku": "789"}, {"sku": "123", "master_sku": "000123"}]


def test_leading_zeros_survive_json():
    text = json.dumps({"line_items": [{"sku": "000123"}]})
    assert json.loads(text)["line_items"][0]["sku"] == "000123"
    decoded = pl.Series([text]).str.json_decode(pl.Struct({"line_items": pl.List(pl.Struct({"sku": pl.Utf8}))}))
    assert decoded.to_list()[0]["line_items"][0]["sku"] == "000123"


def test_leading_zeros_survive_csv_with_polars_and_duckdb(tmp_path):
    path = tmp_path / "items.csv"
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerows([["sku", "barcode"], ["000123", "0012345678905"], ["001789", "04006381333931"], ["TEE-1", ""]])
    path.write_text(buffer.getvalue())

    # What a careless reader does to an all-digit column: the zeros are gone.
    assert pl.read_csv(path)["barcode"].to_list()[0] == 12345678905

    frame = pl.read_csv(path, infer_schema=False)
    assert frame.schema["sku"] == pl.Utf8
    assert frame["sku"].to_list() == ["000123", "001789", "TEE-1"]
    assert frame["barcode"].to_list()[:2] == ["0012345678905", "04006381333931"]

    con = duckdb.connect()
    rows = con.execute("SELECT sku, barcode FROM read_csv(?, all_varchar = true) ORDER BY sku", [str(path)]).fetchall()
    assert rows[0] == ("000123", "0012345678905")
    con.execute("CREATE TABLE items (sku VARCHAR PRIMARY KEY)")
    con.execute("INSERT INTO items SELECT sku FROM read_csv(?, all_varchar = true)", [str(path)])
    assert con.execute("SELECT sku FROM items WHERE sku = ?", ["000123"]).fetchone() == ("000123",)
    assert con.execute("SELECT count(*) FROM items WHERE sku = ?", ["123"]).fetchone() == (0,)
    # Round trip through polars -> DuckDB -> polars keeps the text.
    con.execute("SELECT 1").fetchall()  # finish the open result before the next query
    back = con.sql("SELECT * FROM frame").pl()
    assert back["sku"].to_list() == ["000123", "001789", "TEE-1"]


# ------------------------------------------------------------------------------ barcodes

VALID = ["4006381333931", "73513537", "036000291452", "10614141000415", "0012345678905", "96385074"]
INVALID_CHECK = ["4006381333932", "73513538", "036000291453", "10614141000416"]


@pytest.mark.parametrize("code", VALID)
def test_valid_gtins(code):
    assert is_valid_gtin(code)
    assert gtin_problem(code) is None
    assert gtin_check_digit(code[:-1]) == int(code[-1])


@pytest.mark.parametrize("code", INVALID_CHECK)
def test_wrong_check_digit(code):
    assert not is_valid_gtin(code)
    assert "check digit" in gtin_problem(code)


@pytest.mark.parametrize("code,why", [("12345", "5 digits"), ("40063813339X", "not all digits"), ("123456789", "9 digits")])
def test_malformed_barcodes(code, why):
    assert not is_valid_gtin(code)
    assert why in gtin_problem(code)


def test_missing_barcode_is_not_invalid():
    assert gtin_problem(None) is None
    assert gtin_problem("  ") is None


def test_polars_gtin_matches_plain():
    codes = VALID + INVALID_CHECK + ["12345", "40063813339X", "", None, " 4006381333931 ", "1234567890123456"]
    got = pl.DataFrame({"b": codes}, schema={"b": pl.Utf8}).select(gtin_valid_expr("b"))["b"].to_list()
    expected = [None if (c is None or not c.strip()) else is_valid_gtin(c) for c in codes]
    assert got == expected
