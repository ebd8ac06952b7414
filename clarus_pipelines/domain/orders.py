"""Shopify orders in batch: parse into polars frames, then validate and map them.

Parsing decodes the raw JSON with an explicit schema, so every id and SKU arrives as
the exact text the JSON held (Shopify ids are numbers in JSON and would otherwise lose
precision; "000123" stays "000123"). Validation is a set of vectorised rules; each
failed rule becomes a reason `{code, message}` and an order with any reason is held:

- ORDER_INCOMPLETE: shipping address missing, or its name, first line, city or postcode
  missing (GB-format postcodes checked), country not an ISO 3166-1 alpha-2 code, a
  quantity that is not a positive whole number, or nothing left to ship;
- SKU_UNKNOWN: a line without SKU, or whose cleaned SKU maps to no Clarus product;
- SHIP_METHOD_UNMAPPED: no shipping line, or one that no `ship_methods` rule matches
  (by code first, then by title, ignoring case and spaces).

Messages never contain personal data (names, addresses, postcodes): they are stored
and shown to operators, and copied into logs.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import duckdb
import polars as pl
import pyarrow as pa

from clarus_pipelines.domain.skus import clean_sku_expr, zero_stripped_key_expr
from clarus_pipelines.policies import Policies, ShipMethodRule

HOLD_CODES = ("ORDER_INCOMPLETE", "SKU_UNKNOWN", "SHIP_METHOD_UNMAPPED")

# ISO 3166-1 alpha-2, plus XK (Kosovo), which Shopify uses.
ISO_COUNTRIES = frozenset(
    """AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ BR
    BS BT BV BW BY BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ DK DM DO DZ EC
    EE EG EH ER ES ET FI FJ FK FM FO FR GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS GT GU GW GY HK
    HM HN HR HT HU ID IE IL IM IN IO IQ IR IS IT JE JM JO JP KE KG KH KI KM KN KP KR KW KY KZ LA LB
    LC LI LK LR LS LT LU LV LY MA MC MD ME MF MG MH MK ML MM MN MO MP MQ MR MS MT MU MV MW MX MY MZ
    NA NC NE NF NG NI NL NO NP NR NU NZ OM PA PE PF PG PH PK PL PM PN PR PS PT PW PY QA RE RO RS RU
    RW SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV SX SY SZ TC TD TF TG TH TJ TK TL TM TN
    TO TR TT TV TW TZ UA UG UM US UY UZ VA VC VE VG VI VN VU WF WS YE YT ZA ZM ZW XK""".split()
)

# UK postcode format (Royal Mail PAF rules), also used by the Crown Dependencies.
GB_POSTCODE_PATTERN = (
    r"^(?:GIR 0AA|[A-PR-UWYZ](?:[0-9][0-9A-HJKPSTUW]?|[A-HK-Y][0-9][0-9ABEHMNPRVWXY]?) [0-9][ABD-HJLNP-UW-Z]{2})$"
)
GB_FORMAT_COUNTRIES = ("GB", "IM", "JE", "GG")
# Clarus's address field limits (Address schema): longer values are rejected with a 422.
ADDRESS_LIMITS = (
    ("ship_address1", "first line", 80), ("ship_address2", "second line", 80), ("ship_city", "city", 80),
    ("ship_province", "region", 80), ("ship_company", "company", 80), ("ship_zip", "postcode", 10),
)

_ADDRESS = pl.Struct(
    {
        "name": pl.Utf8,
        "first_name": pl.Utf8,
        "last_name": pl.Utf8,
        "company": pl.Utf8,
        "address1": pl.Utf8,
        "address2": pl.Utf8,
        "city": pl.Utf8,
        "province": pl.Utf8,
        "province_code": pl.Utf8,
        "zip": pl.Utf8,
        "country": pl.Utf8,
        "country_code": pl.Utf8,
        "phone": pl.Utf8,
    }
)
_LINE = pl.Struct(
    {
        "id": pl.Utf8,
        "sku": pl.Utf8,
        "quantity": pl.Utf8,
        "current_quantity": pl.Utf8,
        "title": pl.Utf8,
        "name": pl.Utf8,
        "variant_id": pl.Utf8,
        "product_id": pl.Utf8,
        "price": pl.Utf8,
        "requires_shipping": pl.Boolean,
        "gift_card": pl.Boolean,
    }
)
_SHIPPING_LINE = pl.Struct(
    {"id": pl.Utf8, "code": pl.Utf8, "title": pl.Utf8, "price": pl.Utf8, "is_removed": pl.Boolean}
)
_ORDER_FIELDS = {
    "id": pl.Utf8,
    "name": pl.Utf8,
    "email": pl.Utf8,
    "phone": pl.Utf8,
    "created_at": pl.Utf8,
    "updated_at": pl.Utf8,
    "processed_at": pl.Utf8,
    "cancelled_at": pl.Utf8,
    "cancel_reason": pl.Utf8,
    "financial_status": pl.Utf8,
    "fulfillment_status": pl.Utf8,
    "currency": pl.Utf8,
    "total_price": pl.Utf8,
    "note": pl.Utf8,
    "tags": pl.Utf8,
    "shipping_address": _ADDRESS,
    "line_items": pl.List(_LINE),
    "shipping_lines": pl.List(_SHIPPING_LINE),
}
# Webhooks carry the bare order; REST reads wrap it in {"order": ...}. Decode both at once.
ORDER_JSON_DTYPE = pl.Struct({**_ORDER_FIELDS, "order": pl.Struct(_ORDER_FIELDS)})


def _duckdb_structure(dtype: pl.DataType) -> Any:
    """The `from_json` structure for a polars dtype made of structs, lists, strings and booleans."""
    if isinstance(dtype, pl.Struct):
        return {field.name: _duckdb_structure(field.dtype) for field in dtype.fields}
    if isinstance(dtype, pl.List):
        return [_duckdb_structure(dtype.inner)]
    return {pl.Utf8: "VARCHAR", pl.Boolean: "BOOLEAN"}[dtype]


_ORDER_JSON_STRUCTURE = json.dumps(_duckdb_structure(ORDER_JSON_DTYPE))


def _arrow_batches(texts: pl.Series, rows: int = 4096) -> pa.Table:
    """The texts as an Arrow table of even batches: one contiguous copy (a batch read file by file
    arrives in thousands of one-row chunks, which DuckDB would scan one by one), then slices that
    DuckDB's threads decode side by side."""
    table = texts.rechunk().to_frame().to_arrow(compat_level=pl.CompatLevel.newest())  # string views: no copy
    return pa.Table.from_batches(table.to_batches(max_chunksize=rows), schema=table.schema)


def decode_order_json(texts: pl.Series) -> pl.Series:
    """Order JSON texts -> one `ORDER_JSON_DTYPE` struct per text (null for a null text).

    DuckDB's JSON reader decodes a batch two to three times as fast as polars' `json_decode`
    (which was most of the cost of taking a sale's orders in), with the same result for
    what Shopify sends: numbers read into text fields keep their digits ("5000000000000"
    stays exact). Where they differ, DuckDB is the more forgiving: a whole float keeps its
    ".0", and a field of the wrong JSON type reads as null (or its JSON text) so the order
    is held for it, where polars failed the whole batch. A batch DuckDB refuses (malformed
    JSON) goes to polars' decoder, so it fails or succeeds exactly as it always did.
    """
    texts = texts.cast(pl.Utf8).alias("payload")
    if texts.len():
        try:
            with duckdb.connect() as con:
                con.register("payloads", _arrow_batches(texts))
                decoded = con.sql(
                    "SELECT from_json(payload, ?) AS raw FROM payloads", params=[_ORDER_JSON_STRUCTURE]
                ).pl()["raw"]
        except duckdb.Error:
            pass
        else:
            if decoded.dtype == ORDER_JSON_DTYPE and decoded.len() == texts.len():
                return decoded
    return texts.str.json_decode(ORDER_JSON_DTYPE).alias("raw")

ORDER_COLUMNS = (
    "payload_index", "order_id", "order_name", "email", "phone", "created_at", "updated_at", "processed_at", "cancelled_at",
    "cancel_reason", "financial_status", "fulfillment_status", "currency", "total_price", "note", "tags",
    "has_shipping_address", "ship_name", "ship_company", "ship_address1", "ship_address2", "ship_city",
    "ship_province", "ship_province_code", "ship_zip", "ship_country", "ship_country_code", "ship_phone",
    "shipping_code", "shipping_title", "shipping_price", "has_shipping_line",
)
LINE_COLUMNS = (
    "payload_index", "order_id", "line_id", "line_index", "sku_raw", "sku", "quantity_raw", "ordered_quantity", "quantity", "quantity_ok",
    "title", "variant_id", "product_id", "price", "requires_shipping", "gift_card", "ships",
)


@dataclass(frozen=True)
class ParsedOrders:
    """Orders one row each; lines one row per Shopify line item. All ids and SKUs Utf8."""

    orders: pl.DataFrame
    lines: pl.DataFrame

    def __len__(self) -> int:
        return self.orders.height

    def take(self, payload_indexes: Iterable[int]) -> "ParsedOrders":
        """Only the given payloads (e.g. the newest payload of each order)."""
        keep = pl.Series("payload_index", list(payload_indexes), dtype=pl.Int64)
        return ParsedOrders(
            orders=self.orders.filter(pl.col("payload_index").is_in(keep)),
            lines=self.lines.filter(pl.col("payload_index").is_in(keep)),
        )


@dataclass(frozen=True)
class OrderVerdicts:
    """Validation and mapping results.

    `orders`: the parsed orders plus `status` ("ready" | "held"), `hold_codes` (sorted
    list), `carrier` and `service`. `lines`: the parsed lines plus `clarus_product_id`.
    `reasons`: one row per problem (`order_id`, `code`, `message`), in a stable order.
    """

    orders: pl.DataFrame
    lines: pl.DataFrame
    reasons: pl.DataFrame

    def reasons_for(self, order_id: str) -> list[dict[str, str]]:
        rows = self.reasons.filter(pl.col("order_id") == order_id).select("code", "message")
        return rows.to_dicts()


# --------------------------------------------------------------------------- parsing


def _blank_to_null(expr: pl.Expr) -> pl.Expr:
    stripped = expr.str.strip_chars()
    return pl.when(stripped.str.len_chars() > 0).then(stripped).otherwise(None)


def order_json_texts(payloads: Iterable[Any]) -> pl.Series:
    """JSON texts from dicts, bytes or strings (the form `parse_orders` takes)."""
    texts = []
    for p in payloads:
        if isinstance(p, (bytes, bytearray)):
            texts.append(p.decode("utf-8"))
        elif isinstance(p, str):
            texts.append(p)
        else:
            texts.append(json.dumps(p))
    return pl.Series("payload", texts, dtype=pl.Utf8)


def parse_orders(payloads: pl.Series | Sequence[Any], sku_rule=None) -> ParsedOrders:
    """Parse Shopify order JSON (bare or wrapped in {"order": ...}) into frames.

    `sku_rule` is `policies.sku_cleaning`; the cleaned SKU goes in `lines.sku`, the
    text as received in `lines.sku_raw`.
    """
    series = payloads if isinstance(payloads, pl.Series) else order_json_texts(payloads)
    series = series.cast(pl.Utf8).alias("payload")
    decoded = decode_order_json(series).alias("raw").to_frame().unnest("raw")
    bare = pl.struct([pl.col(name) for name in _ORDER_FIELDS])
    frame = decoded.select(
        pl.when(pl.col("order").is_not_null()).then(pl.col("order")).otherwise(bare).alias("o")
    ).unnest("o")
    frame = frame.rename({"id": "order_id", "name": "order_name"})

    address = pl.col("shipping_address")
    full_name = pl.concat_str(
        [address.struct.field("first_name").fill_null(""), address.struct.field("last_name").fill_null("")],
        separator=" ",
    )
    active_shipping = (
        frame.select("order_id", "shipping_lines")
        .with_row_index("_row")
        .explode("shipping_lines", keep_nulls=False)
        .unnest("shipping_lines")
        .filter(pl.col("is_removed").fill_null(False).not_())
        .group_by("_row", maintain_order=True)
        .first()
        .select(
            "_row",
            _blank_to_null(pl.col("code")).alias("shipping_code"),
            _blank_to_null(pl.col("title")).alias("shipping_title"),
            pl.col("price").alias("shipping_price"),
        )
    )
    orders = (
        frame.with_row_index("_row").with_columns(pl.col("_row").cast(pl.Int64).alias("payload_index"))
        .with_columns(
            _blank_to_null(pl.col("order_id")).alias("order_id"),
            address.is_not_null().alias("has_shipping_address"),
            pl.coalesce(_blank_to_null(address.struct.field("name")), _blank_to_null(full_name)).alias("ship_name"),
            _blank_to_null(address.struct.field("company")).alias("ship_company"),
            _blank_to_null(address.struct.field("address1")).alias("ship_address1"),
            _blank_to_null(address.struct.field("address2")).alias("ship_address2"),
            _blank_to_null(address.struct.field("city")).alias("ship_city"),
            _blank_to_null(address.struct.field("province")).alias("ship_province"),
            _blank_to_null(address.struct.field("province_code")).alias("ship_province_code"),
            _blank_to_null(address.struct.field("zip")).alias("ship_zip"),
            _blank_to_null(address.struct.field("country")).alias("ship_country"),
            _blank_to_null(address.struct.field("country_code")).str.to_uppercase().alias("ship_country_code"),
            _blank_to_null(address.struct.field("phone")).alias("ship_phone"),
        )
        .join(active_shipping, on="_row", how="left", maintain_order="left")
        .with_columns(
            (pl.col("shipping_code").is_not_null() | pl.col("shipping_title").is_not_null()).alias("has_shipping_line")
        )
    )

    lines = (
        orders.select("_row", "payload_index", "order_id", "line_items")
        .explode("line_items", keep_nulls=False)
        .with_columns(pl.int_range(pl.len()).over("_row").alias("line_index"))
        .unnest("line_items")
        .with_columns(
            pl.col("quantity").cast(pl.Float64, strict=False).alias("_ordered"),
            pl.col("current_quantity").cast(pl.Float64, strict=False).alias("_current"),
        )
        .with_columns(
            # current_quantity 0: the line was edited out or refunded (Shopify keeps it), not an error.
            ((pl.col("_current") == 0) & pl.col("_ordered").fill_null(0).ge(0)).fill_null(False).alias("_removed"),
            (
                pl.col("_ordered").is_not_null() & (pl.col("_ordered") > 0) & (pl.col("_ordered") == pl.col("_ordered").floor())
                & (pl.col("_current").is_null() | ((pl.col("_current") >= 0) & (pl.col("_current") == pl.col("_current").floor())))
            ).alias("_valid"),
        )
        .with_columns(
            (pl.col("_removed") | pl.col("_valid")).alias("quantity_ok"),
            pl.coalesce("_current", "_ordered").alias("_effective"),
        )
        .with_columns(
            pl.when(pl.col("_valid")).then(pl.col("_ordered")).cast(pl.Int64).alias("ordered_quantity"),
            pl.when(pl.col("quantity_ok")).then(pl.col("_effective").floor()).cast(pl.Int64).alias("quantity"),
            pl.col("id").alias("line_id"),
            pl.col("quantity").alias("quantity_raw"),
            pl.col("sku").alias("sku_raw"),
            (clean_sku_expr("sku", sku_rule) if sku_rule is not None else _blank_to_null(pl.col("sku"))).alias("sku"),
            pl.coalesce(_blank_to_null(pl.col("title")), _blank_to_null(pl.col("name"))).alias("title"),
            pl.col("requires_shipping").fill_null(True),
            pl.col("gift_card").fill_null(False),
        )
        # A line ships when it needs shipping, is not a gift card and was not edited or
        # refunded down to zero (Shopify keeps such lines with current_quantity 0).
        .with_columns(
            (pl.col("requires_shipping") & pl.col("gift_card").not_() & (pl.col("quantity").fill_null(1) > 0)).alias("ships")
        )
        .select(*LINE_COLUMNS)
    )
    return ParsedOrders(orders=orders.select(*ORDER_COLUMNS), lines=lines)


# ------------------------------------------------------------------------ validation


def normalise_ship_key(expr: pl.Expr) -> pl.Expr:
    """Case- and space-insensitive key of a shipping line code or title."""
    return expr.str.to_lowercase().str.replace_all(r"\s+", "")


def ship_method_table(rules: Sequence[ShipMethodRule]) -> pl.DataFrame:
    """The configured rules as a frame (first rule wins when two share a key)."""
    return pl.DataFrame(
        {
            "rule_index": list(range(len(rules))),
            "code": [r.code for r in rules],
            "title": [r.title for r in rules],
            "carrier": [r.carrier for r in rules],
            "service": [r.service for r in rules],
        },
        schema={"rule_index": pl.Int64, "code": pl.Utf8, "title": pl.Utf8, "carrier": pl.Utf8, "service": pl.Utf8},
    )


def map_ship_methods(orders: pl.DataFrame, rules: Sequence[ShipMethodRule]) -> pl.DataFrame:
    """Add `carrier` and `service` to orders: match on code, then on title."""
    table = ship_method_table(rules)
    by_code = (
        table.drop_nulls("code")
        .select(normalise_ship_key(pl.col("code")).alias("_code_key"), pl.col("carrier").alias("_c1"), pl.col("service").alias("_s1"))
        .unique("_code_key", keep="first", maintain_order=True)
    )
    by_title = (
        table.drop_nulls("title")
        .select(normalise_ship_key(pl.col("title")).alias("_title_key"), pl.col("carrier").alias("_c2"), pl.col("service").alias("_s2"))
        .unique("_title_key", keep="first", maintain_order=True)
    )
    return (
        orders.with_columns(
            normalise_ship_key(pl.col("shipping_code")).alias("_code_key"),
            normalise_ship_key(pl.col("shipping_title")).alias("_title_key"),
        )
        .join(by_code, on="_code_key", how="left", maintain_order="left")
        .join(by_title, on="_title_key", how="left", maintain_order="left")
        .with_columns(
            pl.when(pl.col("_c1").is_not_null()).then(pl.col("_c1")).otherwise(pl.col("_c2")).alias("carrier"),
            pl.when(pl.col("_c1").is_not_null()).then(pl.col("_s1")).otherwise(pl.col("_s2")).alias("service"),
        )
        .drop("_code_key", "_title_key", "_c1", "_s1", "_c2", "_s2")
    )


PRODUCTS_SCHEMA = {"sku": pl.Utf8, "clarus_product_id": pl.Utf8}


def products_frame(products: pl.DataFrame | Mapping[str, str | None] | None) -> pl.DataFrame:
    """Normalise the SKU -> Clarus product id table (SKUs already cleaned)."""
    if products is None:
        return pl.DataFrame(schema=PRODUCTS_SCHEMA)
    if isinstance(products, pl.DataFrame):
        frame = products.select(pl.col("sku").cast(pl.Utf8), pl.col("clarus_product_id").cast(pl.Utf8))
    else:
        frame = pl.DataFrame(
            {"sku": list(products.keys()), "clarus_product_id": list(products.values())}, schema=PRODUCTS_SCHEMA
        )
    return frame.drop_nulls("sku").unique("sku", keep="first", maintain_order=True)


def _line_label() -> pl.Expr:
    return pl.format("line {} ('{}')", pl.col("line_index") + 1, pl.col("title").fill_null("untitled"))


def _reason(frame: pl.DataFrame, condition: pl.Expr, code: str, message: pl.Expr, rank: int) -> pl.DataFrame:
    return frame.filter(condition).select(
        "order_id", pl.lit(code).alias("code"), message.alias("message"), pl.lit(rank).alias("_rank"),
        (pl.col("line_index") if "line_index" in frame.columns else pl.lit(-1)).cast(pl.Int64).alias("_line"),
    )


def validate_orders(
    parsed: ParsedOrders,
    *,
    products: pl.DataFrame | Mapping[str, str | None] | None,
    policies: Policies,
    known_carriers: pl.DataFrame | None = None,
) -> OrderVerdicts:
    """Validate and map a batch of parsed orders; every failed rule is a reason.

    Order ids must be unique in the batch (keep one payload per order with `take`).
    `known_carriers` (columns `carrier`, `service`), when given and not empty, is what
    Clarus knows: a ship-method rule pointing at anything else holds the order too.
    """
    if parsed.orders["order_id"].is_duplicated().any():
        raise ValueError("validate_orders needs one payload per order; keep the newest with ParsedOrders.take")
    o = map_ship_methods(parsed.orders, policies.ship_methods)
    products_df = products_frame(products)
    known = products_df.with_columns(pl.lit(True).alias("_in_master"))
    lines = parsed.lines.join(known, on="sku", how="left", maintain_order="left").with_columns(pl.col("_in_master").fill_null(False))

    # Hint for SKUs that only match once their leading zeros are restored.
    zero_hint = (
        products_df.select(pl.col("sku").alias("_master_sku"), zero_stripped_key_expr("sku").alias("_zkey"))
        .drop_nulls("_zkey")
        .unique("_zkey", keep="first", maintain_order=True)
    )
    lines = (
        lines.with_columns(zero_stripped_key_expr("sku").alias("_zkey"))
        .join(zero_hint, on="_zkey", how="left", maintain_order="left")
        .with_columns(
            pl.when(pl.col("_in_master").not_() & (pl.col("_master_sku") != pl.col("sku")))
            .then(pl.col("_master_sku"))
            .otherwise(None)
            .alias("_master_sku")
        )
    )

    country = pl.col("ship_country_code")
    zip_norm = pl.col("ship_zip").str.to_uppercase().str.replace_all(r"\s+", "")
    # Re-insert the single space before the inward code (last three characters).
    zip_spaced = pl.concat_str([zip_norm.str.slice(0, zip_norm.str.len_chars() - 3), pl.lit(" "), zip_norm.str.slice(-3)])
    has_address = pl.col("has_shipping_address")
    shipped_lines = lines.filter(pl.col("ships"))
    line_counts = shipped_lines.group_by("order_id").agg(pl.len().alias("_ship_lines"))
    o = o.join(line_counts, on="order_id", how="left", maintain_order="left").with_columns(pl.col("_ship_lines").fill_null(0))

    parts = [
        _reason(o, has_address.not_(), "ORDER_INCOMPLETE", pl.lit("order has no shipping address"), 10),
        _reason(o, has_address & pl.col("ship_name").is_null(), "ORDER_INCOMPLETE", pl.lit("shipping address has no name"), 11),
        _reason(o, has_address & pl.col("ship_address1").is_null(), "ORDER_INCOMPLETE", pl.lit("shipping address has no first address line"), 12),
        _reason(o, has_address & pl.col("ship_city").is_null(), "ORDER_INCOMPLETE", pl.lit("shipping address has no city"), 13),
        _reason(o, has_address & pl.col("ship_zip").is_null(), "ORDER_INCOMPLETE", pl.lit("shipping address has no postcode"), 14),
        _reason(
            o,
            has_address & pl.col("ship_zip").is_not_null() & country.is_in(GB_FORMAT_COUNTRIES)
            & zip_spaced.str.contains(GB_POSTCODE_PATTERN).not_(),
            "ORDER_INCOMPLETE", pl.format("postcode is not a valid {} postcode", country), 15,
        ),
        *[
            _reason(
                o, pl.col(column).str.len_chars() > limit, "ORDER_INCOMPLETE",
                pl.lit(f"shipping address {label} is longer than the {limit} characters Clarus accepts"), rank,
            )
            for rank, (column, label, limit) in enumerate(ADDRESS_LIMITS, start=50)
        ],
        _reason(o, has_address & country.is_null(), "ORDER_INCOMPLETE", pl.lit("shipping address has no country code"), 16),
        _reason(
            o, has_address & country.is_not_null() & country.is_in(sorted(ISO_COUNTRIES)).not_(), "ORDER_INCOMPLETE",
            pl.format("country code '{}' is not an ISO 3166-1 alpha-2 code", country), 17,
        ),
        _reason(
            lines, pl.col("quantity_ok").not_(), "ORDER_INCOMPLETE",
            pl.format("{} has quantity '{}', not a positive whole number", _line_label(), pl.col("quantity_raw").fill_null("missing")),
            20,
        ),
        _reason(o, (pl.col("_ship_lines") == 0), "ORDER_INCOMPLETE", pl.lit("order has no line for the warehouse to ship"), 21),
        _reason(lines, pl.col("ships") & pl.col("sku").is_null(), "SKU_UNKNOWN", pl.format("{} has no SKU", _line_label()), 30),
        _reason(
            lines,
            pl.col("ships") & pl.col("sku").is_not_null() & pl.col("_in_master").not_() & pl.col("_master_sku").is_null(),
            "SKU_UNKNOWN", pl.format("{}: SKU '{}' is not in the item master", _line_label(), pl.col("sku")), 31,
        ),
        _reason(
            lines, pl.col("ships") & pl.col("_master_sku").is_not_null(), "SKU_UNKNOWN",
            pl.format(
                "{}: SKU '{}' is not in the item master; it matches item '{}' once leading zeros are restored",
                _line_label(), pl.col("sku"), pl.col("_master_sku"),
            ),
            32,
        ),
        _reason(
            lines, pl.col("ships") & pl.col("_in_master") & pl.col("clarus_product_id").is_null(), "SKU_UNKNOWN",
            pl.format("{}: SKU '{}' has no Clarus product yet (item master not synced)", _line_label(), pl.col("sku")), 33,
        ),
        _reason(o, pl.col("has_shipping_line").not_(), "SHIP_METHOD_UNMAPPED", pl.lit("order has no shipping line"), 40),
        _reason(
            o, pl.col("has_shipping_line") & pl.col("carrier").is_null(), "SHIP_METHOD_UNMAPPED",
            pl.format(
                "shipping line (code '{}', title '{}') matches no ship_methods rule",
                pl.col("shipping_code").fill_null(""), pl.col("shipping_title").fill_null(""),
            ),
            41,
        ),
    ]
    if known_carriers is not None and not known_carriers.is_empty():
        known = known_carriers.select("carrier", "service").unique().with_columns(pl.lit(True).alias("_known"))
        o = o.join(known, on=["carrier", "service"], how="left", maintain_order="left")
        parts.append(
            _reason(
                o, pl.col("carrier").is_not_null() & pl.col("_known").is_null(), "SHIP_METHOD_UNMAPPED",
                pl.format("ship method maps to carrier '{}' service '{}', which Clarus does not have", pl.col("carrier"), pl.col("service")),
                42,
            )
        )
        o = o.drop("_known")
    reasons = (
        pl.concat(parts, how="vertical")
        .sort("order_id", "_rank", "_line", maintain_order=True)
        .unique(["order_id", "code", "message"], keep="first", maintain_order=True)
    )
    codes = reasons.group_by("order_id").agg(pl.col("code").unique().sort().alias("hold_codes"))
    orders = (
        o.drop("_ship_lines")
        .join(codes, on="order_id", how="left", maintain_order="left")
        .with_columns(
            pl.col("hold_codes").fill_null(pl.lit([], dtype=pl.List(pl.Utf8))),
        )
        .with_columns(
            pl.when(pl.col("hold_codes").list.len() > 0).then(pl.lit("held")).otherwise(pl.lit("ready")).alias("status")
        )
    )
    return OrderVerdicts(
        orders=orders,
        lines=lines.drop("_in_master", "_zkey", "_master_sku"),
        reasons=reasons.select("order_id", "code", "message"),
    )

