"""Parsing, validation and mapping of Shopify orders (sample payloads, ours and published, and generated ones)."""

from __future__ import annotations

import json

import polars as pl
import pytest

from clarus_pipelines.domain.netsuite_orders import sales_order_edits, sales_order_line_changes, shipping_address_change
from clarus_pipelines.domain.orders import parse_orders, validate_orders
from clarus_pipelines.settings import SANDBOX_POLICIES, load_policies
from order_samples import FIXTURE_PRODUCTS, make_order, real_order

POLICIES = load_policies(SANDBOX_POLICIES)
PRODUCTS = {**FIXTURE_PRODUCTS, "SKU-A": "201", "000123": "202", "TEEOLV-M": "203", "SKU-B": "204"}


def check(*orders, products=PRODUCTS, policies=POLICIES):
    parsed = parse_orders(list(orders), policies.sku_cleaning)
    return validate_orders(parsed, products=products, policies=policies)


def reasons(verdicts, order) -> list[tuple[str, str]]:
    return [(r["code"], r["message"]) for r in verdicts.reasons_for(str(order["id"]))]


def status(verdicts, order) -> str:
    return verdicts.orders.filter(pl.col("order_id") == str(order["id"]))["status"][0]


# -------------------------------------------------------------- sample payloads (ours and published)


def sample_check(payloads, order):
    return check(order, products={**PRODUCTS, **payloads["products"]})


@pytest.mark.parametrize("name", ["rest_2025_07", "python_api", "node_api"])
def test_published_orders_are_ready(payloads, name):
    order = real_order(name, source=payloads)
    verdicts = sample_check(payloads, order)
    assert reasons(verdicts, order) == []
    row = verdicts.orders.row(0, named=True)
    assert row["status"] == "ready"
    assert (row["carrier"], row["service"]) == ("ROYAL_MAIL", "TRACKED_48")  # mapped by shipping code
    assert row["order_id"] == payloads["order_id"] and verdicts.orders.schema["order_id"] == pl.Utf8


def test_refunded_lines_do_not_ship(payloads):
    # In the 2025-07 read two of three lines were refunded: current_quantity 0.
    verdicts = sample_check(payloads, real_order("rest_2025_07", source=payloads))
    shipping = verdicts.lines.filter(pl.col("ships"))
    assert shipping["sku"].to_list() == [payloads["skus"][1]]
    assert shipping["clarus_product_id"].to_list() == ["102"]


def test_wrapped_and_bare_payloads_parse_alike(payloads):
    wrapped = real_order("node_api", unwrap=False, source=payloads)
    bare = real_order("node_api", source=payloads)
    assert "order" in wrapped
    a = parse_orders([wrapped], POLICIES.sku_cleaning)
    b = parse_orders([json.dumps(bare)], POLICIES.sku_cleaning)
    assert a.orders.equals(b.orders) and a.lines.equals(b.lines)


def test_custom_line_without_sku_or_address_lists_every_problem(payloads):
    order = real_order("custom_line_no_sku", source=payloads)
    verdicts = sample_check(payloads, order)
    assert status(verdicts, order) == "held"
    assert reasons(verdicts, order) == [
        ("ORDER_INCOMPLETE", "order has no shipping address"),
        ("SKU_UNKNOWN", f"line 1 ('{payloads['custom_line_title']}') has no SKU"),
        ("SHIP_METHOD_UNMAPPED", "order has no shipping line"),
    ]
    row = verdicts.orders.row(0, named=True)
    assert row["hold_codes"] == ["ORDER_INCOMPLETE", "SHIP_METHOD_UNMAPPED", "SKU_UNKNOWN"]


def test_three_custom_lines_each_reported(payloads):
    order = real_order("three_custom_lines", source=payloads)
    got = [m for c, m in reasons(sample_check(payloads, order), order) if c == "SKU_UNKNOWN"]
    assert got == [f"line {n} ('{title}') has no SKU" for n, title in enumerate(payloads["three_custom_titles"], 1)]


def test_partially_paid_order_without_shipping_line(payloads):
    order = real_order("partially_paid", source=payloads)
    assert reasons(sample_check(payloads, order), order) == [("SHIP_METHOD_UNMAPPED", "order has no shipping line")]


# ------------------------------------------------------------------ generated orders


def test_generated_order_is_ready_and_ids_are_strings():
    order = make_order(order_id=12345678901234567890)  # past 2**63: must survive as text
    verdicts = check(order)
    assert status(verdicts, order) == "ready"
    assert verdicts.orders["order_id"].to_list() == ["12345678901234567890"]
    assert verdicts.lines["line_id"].dtype == pl.Utf8
    assert verdicts.lines["sku"].to_list() == ["SKU-A", "000123"]


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("name", "", "shipping address has no name"),
        ("address1", "  ", "shipping address has no first address line"),
        ("city", None, "shipping address has no city"),
        ("zip", "", "shipping address has no postcode"),
        ("zip", "12345", "postcode is not a valid GB postcode"),
        ("zip", "SW1Y 4LBX", "postcode is not a valid GB postcode"),
        ("country_code", None, "shipping address has no country code"),
        ("country_code", "UK", "country code 'UK' is not an ISO 3166-1 alpha-2 code"),
        ("address1", "x" * 81, "shipping address first line is longer than the 80 characters Clarus accepts"),
    ],
)
def test_incomplete_address(field, value, message):
    order = make_order()
    order["shipping_address"][field] = value
    if field == "name":
        order["shipping_address"].update(first_name=None, last_name=None)
    verdicts = check(order)
    assert status(verdicts, order) == "held"
    assert ("ORDER_INCOMPLETE", message) in reasons(verdicts, order)


@pytest.mark.parametrize("postcode", ["SW1Y 4LB", "sw1y4lb", " EC1A 1BB ", "M1 1AE", "B33 8TH", "CR2 6XH", "DN55 1PT", "GIR 0AA"])
def test_valid_gb_postcodes(postcode):
    order = make_order()
    order["shipping_address"]["zip"] = postcode
    assert reasons(check(order), order) == []


def test_other_countries_need_a_postcode_but_any_format():
    order = make_order(address={"name": "Jean Dupont", "address1": "1 Rue de Rivoli", "city": "Paris", "zip": "75001", "country_code": "fr"})
    assert reasons(check(order), order) == []
    order["shipping_address"]["zip"] = None
    assert reasons(check(order), order) == [("ORDER_INCOMPLETE", "shipping address has no postcode")]


def test_name_from_first_and_last_name():
    order = make_order()
    order["shipping_address"]["name"] = None
    verdicts = check(order)
    assert reasons(verdicts, order) == []
    assert verdicts.orders["ship_name"][0] == "Ada Lovelace"


@pytest.mark.parametrize("quantity", [0, -1, 1.5, "two", None])
def test_quantity_must_be_a_positive_whole_number(quantity):
    order = make_order(lines=[("SKU-A", 1), ("SKU-B", 1)])
    order["line_items"][1].update(quantity=quantity, current_quantity=None)
    found = reasons(check(order), order)
    assert any(code == "ORDER_INCOMPLETE" and "line 2" in m and "not a positive whole number" in m for code, m in found), found


def test_removed_and_non_shipping_lines_are_skipped():
    order = make_order(lines=[("SKU-A", 1), ("SKU-B", 2), ("GIFT", 1)])
    order["line_items"][1]["current_quantity"] = 0  # edited out
    order["line_items"][2].update(requires_shipping=False, gift_card=True, sku=None)
    verdicts = check(order)
    assert reasons(verdicts, order) == []
    assert verdicts.lines.filter(pl.col("ships"))["sku"].to_list() == ["SKU-A"]


def test_nothing_left_to_ship_holds():
    order = make_order(lines=[("SKU-A", 1)])
    order["line_items"][0]["current_quantity"] = 0
    assert reasons(check(order), order) == [("ORDER_INCOMPLETE", "order has no line for the warehouse to ship")]


def test_unknown_sku_and_sku_without_clarus_product():
    order = make_order(lines=[("NOPE-1", 1), ("SKU-B", 1)])
    found = reasons(check(order, products={**PRODUCTS, "SKU-B": None}), order)
    assert found == [
        ("SKU_UNKNOWN", "line 1 ('Product NOPE-1'): SKU 'NOPE-1' is not in the item master"),
        ("SKU_UNKNOWN", "line 2 ('Product SKU-B'): SKU 'SKU-B' has no Clarus product yet (item master not synced)"),
    ]


def test_sku_cleaning_applies_before_matching():
    order = make_order(lines=[(" tee#olv-m ", 1)])
    verdicts = check(order)
    assert reasons(verdicts, order) == []
    line = verdicts.lines.row(0, named=True)
    assert (line["sku_raw"], line["sku"], line["clarus_product_id"]) == (" tee#olv-m ", "TEEOLV-M", "203")


def test_leading_zero_skus_match_exactly_and_lost_zeros_are_named():
    good = make_order(1001, lines=[("000123", 1)])
    lost = make_order(1002, lines=[("123", 1)])
    verdicts = check(good, lost)
    assert reasons(verdicts, good) == []
    assert verdicts.lines.filter(pl.col("order_id") == str(good["id"]))["clarus_product_id"].to_list() == ["202"]
    assert reasons(verdicts, lost) == [
        ("SKU_UNKNOWN", "line 1 ('Product 123'): SKU '123' is not in the item master; it matches item '000123' once leading zeros are restored")
    ]


@pytest.mark.parametrize(
    "code,title,expected",
    [
        ("express", "Something else", ("DPD", "NEXT_DAY")),  # code wins over title
        ("EXPRESS", None, ("DPD", "NEXT_DAY")),  # case-insensitive
        ("next - day", None, ("DHL", "EXPRESS")),  # space-insensitive
        (None, "standard  shipping", ("ROYAL_MAIL", "TRACKED_48")),  # by title
        ("unknown-code", "EVRI parcel", ("EVRI", "STANDARD_48")),  # title-only rule, code unknown
        ("freeshipping", None, ("ROYAL_MAIL", "TRACKED_48")),  # "Free Shipping" without the space
    ],
)
def test_ship_method_mapping(code, title, expected):
    order = make_order(shipping=(code, title))
    verdicts = check(order)
    assert reasons(verdicts, order) == []
    row = verdicts.orders.row(0, named=True)
    assert (row["carrier"], row["service"]) == expected


def test_unmapped_and_removed_shipping_lines():
    order = make_order(shipping=("pigeon", "Carrier Pigeon"))
    assert reasons(check(order), order) == [
        ("SHIP_METHOD_UNMAPPED", "shipping line (code 'pigeon', title 'Carrier Pigeon') matches no ship_methods rule")
    ]
    order["shipping_lines"][0]["is_removed"] = True
    order["shipping_lines"].append(dict(order["shipping_lines"][0], code="express", title="Express", is_removed=False))
    verdicts = check(order)
    assert reasons(verdicts, order) == []
    assert verdicts.orders["carrier"][0] == "DPD"


def test_messages_never_carry_personal_data():
    order = make_order(lines=[("NOPE", 0)], shipping=None)
    order["shipping_address"]["zip"] = "NOT A POSTCODE"
    order["shipping_address"]["country_code"] = "ZZ"
    text = json.dumps(check(order).reasons.to_dicts())
    for personal in ("Ada", "Lovelace", "James", "London", "NOT A POSTCODE", "ada@example.com", "7946"):
        assert personal not in text


def test_batch_of_many_orders_is_one_vectorised_pass():
    orders = [make_order(2000 + i, lines=[("SKU-A", 1 + i % 3)] if i % 7 else [("NOPE", 1)]) for i in range(300)]
    verdicts = check(*orders)
    assert verdicts.orders.height == 300
    held = verdicts.orders.filter(pl.col("status") == "held")["order_id"].to_list()
    assert held == [str(o["id"]) for i, o in enumerate(orders) if i % 7 == 0]


def test_duplicate_order_ids_are_refused():
    order = make_order()
    parsed = parse_orders([order, order], POLICIES.sku_cleaning)
    with pytest.raises(ValueError, match="one payload per order"):
        validate_orders(parsed, products=PRODUCTS, policies=POLICIES)
    assert validate_orders(parsed.take([1]), products=PRODUCTS, policies=POLICIES).orders.height == 1


# -------------------------------------------------------------- NetSuite line sync


def _so_line(line, item, quantity, fulfilled=0.0, closed=False):
    return {"line": line, "item": {"id": item}, "quantity": quantity, "quantityFulfilled": fulfilled, "isClosed": closed}


def _want(item, quantity, rate=None):
    return {"item": {"id": item}, "quantity": quantity, **({"rate": rate} if rate is not None else {})}


def test_sales_order_line_changes_follow_an_edit():
    current = [_so_line(1, "10", 1), _so_line(2, "20", 2), _so_line(3, "30", 1, closed=True)]
    changes = sales_order_line_changes(current, [_want("10", 3), _want("40", 1, rate=9.5)])
    assert changes == [
        {"line": 1, "quantity": 3.0},  # more of an item: its line grows
        {"line": 2, "isClosed": True},  # item removed: its line is closed, not deleted
        {"item": {"id": "40"}, "quantity": 1.0, "rate": 9.5},  # new item: a new line
    ]


def test_sales_order_line_changes_are_empty_when_the_order_matches():
    current = [_so_line(1, "10", 3), _so_line(2, "20", 2, closed=True), _so_line(3, "40", 1)]
    assert sales_order_line_changes(current, [_want("10", 3), _want("40", 1)]) == []
    # the same item on two lines of the edit counts once, summed
    assert sales_order_line_changes(current, [_want("10", 2), _want("10", 1), _want("40", 1)]) == []


def test_sales_order_line_changes_never_go_below_what_was_fulfilled():
    current = [_so_line(1, "10", 4, fulfilled=2), _so_line(2, "10", 1), _so_line(3, "20", 2, fulfilled=1)]
    changes = sales_order_line_changes(current, [_want("10", 1)])
    assert changes == [
        {"line": 1, "quantity": 2.0},  # cut to the 2 already shipped, no lower
        {"line": 2, "isClosed": True},  # a second open line of the item is closed
        {"line": 3, "quantity": 1.0},  # removed item, partly shipped: cut to what shipped
    ]


def test_sales_order_edits_name_orders_without_netsuite_items():
    ok = make_order(1001, order_id=9001, lines=[("SKU-A", 2)])
    missing = make_order(1002, order_id=9002, lines=[("SKU-A", 1), ("SKU-B", 1)])
    verdicts = check(ok, missing)
    edits, without = sales_order_edits(verdicts, {"SKU-A": "501"})
    assert without == {str(missing["id"]): ["SKU-B"]}
    edit = edits[str(ok["id"])]
    assert [(line["item"]["id"], line["quantity"]) for line in edit["lines"]] == [("501", 2)]
    assert edit["shippingAddress"]["country"] == {"id": "GB"} and edit["shippingAddress"]["zip"]
    assert str(missing["id"]) not in edits


def test_shipping_address_change_compares_only_what_we_send():
    wanted = {"addressee": "Ada Lovelace", "addr1": "12 St James's Square", "city": "London", "zip": "SW1Y 4LB",
              "country": {"id": "GB"}}
    as_netsuite_keeps_it = {**wanted, "country": {"id": "GB", "refName": "United Kingdom"}, "addrText": "Ada Lovelace\n...",
                            "addr2": ""}
    assert shipping_address_change(as_netsuite_keeps_it, wanted) is None
    moved = {**wanted, "addr1": "1 Horse Guards Road"}
    assert shipping_address_change(as_netsuite_keeps_it, moved) == moved
    # a field the edit dropped (no company any more) is cleared, not left behind
    with_company = {**as_netsuite_keeps_it, "attention": "Analytical Engines Ltd"}
    assert shipping_address_change(with_company, wanted) == {"attention": "", **wanted}
    assert shipping_address_change(with_company, None) is None


# ------------------------------------------------------------------------ decoding


def test_fast_decoder_reads_orders_exactly_as_polars_did():
    """`decode_order_json` (DuckDB's reader, issue 13) gives the frame polars' decoder gave:
    published and generated orders, wrapped and bare, ids beyond 2**53, SKUs with leading
    zeros, unicode, nulls and missing fields."""
    from clarus_pipelines.domain.orders import ORDER_JSON_DTYPE, decode_order_json
    from order_samples import REAL_ORDERS

    payloads = [json.dumps(real_order(name, unwrap=False)) for name in REAL_ORDERS]
    payloads += [json.dumps(make_order(n, lines=[("000123", 2), (None, 1), ("Çà-1", 3)])) for n in range(1, 40)]
    payloads += [
        json.dumps({"order": make_order(99, order_id=2**62 + 7)}),
        json.dumps(make_order(98, address=None, shipping=None)),
        '{"id": 123456789012345678901234567890, "line_items": [], "shipping_lines": null}',
        '{"id": 1, "line_items": [{"id": 2, "sku": "000", "quantity": 2, "requires_shipping": false}]}',
        "{}",
        None,
    ]
    texts = pl.Series("payload", payloads, dtype=pl.Utf8)
    decoded = decode_order_json(texts)
    assert decoded.dtype == ORDER_JSON_DTYPE
    assert decoded.to_list() == texts.str.json_decode(ORDER_JSON_DTYPE).to_list()
    assert decoded[-4]["id"] == "123456789012345678901234567890"


def test_a_malformed_batch_still_fails_as_before():
    from clarus_pipelines.domain.orders import decode_order_json

    with pytest.raises(pl.exceptions.ComputeError):
        decode_order_json(pl.Series([json.dumps(make_order(1)), '{"id": 1,']))
