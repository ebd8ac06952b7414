"""The Clarus goods out body (and the NetSuite sales order) built from Shopify orders.

Bodies are checked against Clarus's OpenAPI spec with the project's validator (the
committed spec subset, openapi-core), and against the shared JSON:API builder.
"""

from __future__ import annotations

import json
from datetime import datetime, time, timezone
from zoneinfo import ZoneInfo

import polars as pl
import pytest

from clarus_pipelines.connectors.clarus_model import build_goods_out_body
from clarus_pipelines.domain.goods_out import (
    amendment_body,
    body_dicts,
    build_goods_outs,
    diff_lines,
    dispatch_day,
    expected_dispatch,
    lines_changes_for,
    replacement_reference,
)
from clarus_pipelines.domain.netsuite_orders import build_sales_orders, sales_order_dicts
from clarus_pipelines.domain.orders import parse_orders, validate_orders
from clarus_pipelines.sandbox.openapi import request_problems
from clarus_pipelines.settings import SANDBOX_POLICIES, load_policies
from order_samples import FIXTURE_PRODUCTS, make_order, real_order
from payloads import OURS

POLICIES = load_policies(SANDBOX_POLICIES)
PRODUCTS = {**FIXTURE_PRODUCTS, "SKU-A": "201", "000123": "202"}
CARRIERS = {("ROYAL_MAIL", "TRACKED_48"): ("1", "801"), ("DPD", "NEXT_DAY"): ("2", "811")}
MONDAY_10 = datetime(2025, 3, 3, 10, 0, tzinfo=timezone.utc)


def goods_outs(*orders, now=MONDAY_10, references=None, products=PRODUCTS):
    verdicts = validate_orders(parse_orders(list(orders), POLICIES.sku_cleaning), products=products, policies=POLICIES)
    frame = build_goods_outs(verdicts, policies=POLICIES, now=now, carriers=CARRIERS, references=references)
    return verdicts, frame


@pytest.mark.parametrize("name", ["rest_2025_07", "python_api", "node_api"])
def test_bodies_from_published_orders_conform_to_the_spec(payloads, name):
    order = real_order(name, source=payloads)
    _, frame = goods_outs(order, products={**PRODUCTS, **payloads["products"]})
    body = body_dicts(frame)[str(order["id"])]
    assert request_problems("post", "/api/goods_outs", body) == []
    # The JSON text (nulls kept) conforms as well.
    assert request_problems("post", "/api/goods_outs", frame["body_json"][0]) == []


def test_body_fields_follow_the_spec_and_our_conventions():
    order = make_order(1001, lines=[("SKU-A", 2), ("000123", 1)])
    order["shipping_address"].update(zip="sw1y4lb", company="Analytical Engines Ltd")
    _, frame = goods_outs(order)
    body = body_dicts(frame)[str(order["id"])]
    attrs = body["data"]["attributes"]
    assert body["data"]["type"] == "goods_outs"
    assert attrs["goods_out_type"] == "sales_order"  # the spec's enum is lower case; the policy says SALES_ORDER
    assert (attrs["account_id"], attrs["warehouse_id"]) == (POLICIES.tenant.account_id, POLICIES.tenant.warehouse_id)
    assert attrs["reference"] == "#1001"
    assert attrs["external_system_reference1"] == str(order["id"])
    assert attrs["expected_date_of_dispatch"] == "2025-03-03T15:00:00Z"
    assert (attrs["carrier_id"], attrs["carrier_service_id"]) == (1, 801)
    assert attrs["lines_changes"] == [
        {"type": "ADD", "attributes": {"product_id": 201, "order_quantity": 2,
                                        "external_system_reference1": str(order["line_items"][0]["id"]), "alt_product_code": "SKU-A"}},
        {"type": "ADD", "attributes": {"product_id": 202, "order_quantity": 1,
                                        "external_system_reference1": str(order["line_items"][1]["id"]), "alt_product_code": "000123"}},
    ]
    address = body["data"]["relationships"]["address"]["data"]
    assert address["type"] == "addresses"
    assert address["attributes"] == {
        "name": "Ada Lovelace", "address_1": "12 St James's Square", "address_3": "London", "address_4": "England",
        "address_5": "Analytical Engines Ltd", "postcode": "SW1Y 4LB", "country_code": "GB",
        "email_address": "ada@example.com", "phone_number": "+44 20 7946 0000",
    }
    assert "address" not in attrs and "postcode" not in attrs  # the address lives in relationships only
    assert request_problems("post", "/api/goods_outs", body) == []


def test_same_body_as_the_shared_builder():
    order = make_order(1002, lines=[("SKU-A", 1)])
    _, frame = goods_outs(order)
    ours = body_dicts(frame)[str(order["id"])]
    attrs = ours["data"]["attributes"]
    theirs = build_goods_out_body(
        reference=attrs["reference"], account_id=attrs["account_id"], warehouse_id=attrs["warehouse_id"],
        expected_date_of_dispatch=attrs["expected_date_of_dispatch"], carrier_id=attrs["carrier_id"],
        carrier_service_id=attrs["carrier_service_id"], external_system_reference1=attrs["external_system_reference1"],
        lines=[{"product_id": c["attributes"]["product_id"], "quantity": c["attributes"]["order_quantity"],
                "external_system_reference1": c["attributes"]["external_system_reference1"],
                "alt_product_code": c["attributes"]["alt_product_code"]} for c in attrs["lines_changes"]],
        address=ours["data"]["relationships"]["address"]["data"]["attributes"],
    )
    assert json.loads(json.dumps(ours, sort_keys=True)) == json.loads(json.dumps(theirs, sort_keys=True))


def test_validator_catches_a_broken_body():
    order = make_order(1003)
    _, frame = goods_outs(order)
    body = body_dicts(frame)[str(order["id"])]
    del body["data"]["attributes"]["reference"]
    body["data"]["attributes"]["lines_changes"][0]["attributes"]["order_quantity"] = 0
    sources = {p.source for p in request_problems("post", "/api/goods_outs", body)}
    assert "data.attributes.reference" in sources
    assert any(s.endswith("order_quantity") for s in sources)


def test_held_orders_get_no_body_and_bad_contact_details_are_left_out():
    held = make_order(1004, shipping=None)
    odd = make_order(1005)
    odd["email"] = "not-an-email"
    odd["shipping_address"]["phone"] = "0" * 60
    _, frame = goods_outs(held, odd)
    bodies = body_dicts(frame)
    assert list(bodies) == [str(odd["id"])]
    address = bodies[str(odd["id"])]["data"]["relationships"]["address"]["data"]["attributes"]
    assert "email_address" not in address and "phone_number" not in address
    assert request_problems("post", "/api/goods_outs", bodies[str(odd["id"])]) == []


def test_replacement_reference_and_unknown_carrier():
    order = make_order(1006)
    verdicts = validate_orders(parse_orders([order], POLICIES.sku_cleaning), products=PRODUCTS, policies=POLICIES)
    frame = build_goods_outs(verdicts, policies=POLICIES, now=MONDAY_10, carriers=None,
                             references={str(order["id"]): replacement_reference("#1006", 1)})
    attrs = body_dicts(frame)[str(order["id"])]["data"]["attributes"]
    assert attrs["reference"] == "#1006-R1"
    assert "carrier_id" not in attrs  # unknown ids are left out, never guessed
    with pytest.raises(ValueError):
        replacement_reference("#1006", 0)


@pytest.mark.parametrize(
    "now,expected",
    [
        (datetime(2025, 3, 3, 10, 0, tzinfo=timezone.utc), "2025-03-03"),  # Monday before the cut-off
        (datetime(2025, 3, 3, 15, 0, tzinfo=timezone.utc), "2025-03-04"),  # at the cut-off: tomorrow
        (datetime(2025, 3, 7, 16, 0, tzinfo=timezone.utc), "2025-03-10"),  # Friday after: Monday
        (datetime(2025, 3, 8, 9, 0, tzinfo=timezone.utc), "2025-03-10"),  # Saturday: Monday
        (datetime(2025, 3, 9, 23, 0, tzinfo=timezone.utc), "2025-03-10"),  # Sunday night: Monday
        (datetime(2025, 3, 3, 10, 0), "2025-03-03"),  # naive means UTC
    ],
)
def test_dispatch_day_cut_off_rule(now, expected):
    assert dispatch_day(now, time(15, 0)).isoformat() == expected


def test_cut_off_in_the_warehouse_time_zone():
    london = ZoneInfo("Europe/London")
    summer = datetime(2025, 6, 2, 14, 30, tzinfo=timezone.utc)  # 15:30 in London (BST)
    assert dispatch_day(summer, time(15, 0), london).isoformat() == "2025-06-03"
    assert expected_dispatch(summer, time(15, 0), london) == datetime(2025, 6, 3, 14, 0, tzinfo=timezone.utc)
    assert dispatch_day(summer, time(15, 0)).isoformat() == "2025-06-02"


def test_goods_outs_read_the_cut_off_in_the_tenants_zone():
    assert POLICIES.tenant.timezone == "Europe/London"
    order = make_order(1001)
    summer_1430_utc = datetime(2025, 6, 2, 14, 30, tzinfo=timezone.utc)  # 15:30 at the warehouse: past the cut-off
    _, frame = goods_outs(order, now=summer_1430_utc)
    attrs = body_dicts(frame)[str(order["id"])]["data"]["attributes"]
    assert attrs["expected_date_of_dispatch"] == "2025-06-03T14:00:00Z"  # 15:00 BST the next day
    utc_policies = POLICIES.model_copy(update={"tenant": POLICIES.tenant.model_copy(update={"timezone": "UTC"})})
    verdicts = validate_orders(parse_orders([order], POLICIES.sku_cleaning), products=PRODUCTS, policies=utc_policies)
    frame = build_goods_outs(verdicts, policies=utc_policies, now=summer_1430_utc, carriers=CARRIERS)
    assert body_dicts(frame)[str(order["id"])]["data"]["attributes"]["expected_date_of_dispatch"] == "2025-06-02T15:00:00Z"


# ---------------------------------------------------------------------------- edits


def _lines(order):
    verdicts = validate_orders(parse_orders([order], POLICIES.sku_cleaning), products=PRODUCTS, policies=POLICIES)
    return verdicts.lines


def test_diff_lines_to_lines_changes():
    red, black = OURS["skus"][1], OURS["skus"][2]  # Clarus products 102 and 103
    order = make_order(1007, lines=[("SKU-A", 1), ("000123", 2), (red, 1)])
    ids = [str(line["id"]) for line in order["line_items"]]
    sent = [
        {"line_id": ids[0], "clarus_line_id": "71", "clarus_product_id": "201", "quantity": 1},
        {"line_id": ids[1], "clarus_line_id": "72", "clarus_product_id": "202", "quantity": 1},
        {"line_id": ids[2], "clarus_line_id": "73", "clarus_product_id": "999", "quantity": 1},  # product changed
        {"line_id": "gone", "clarus_line_id": "74", "clarus_product_id": "201", "quantity": 5},
    ]
    order["line_items"].append(dict(order["line_items"][0], id=77, sku=black, quantity=3, current_quantity=3))
    diff = diff_lines(pl.DataFrame(sent), _lines(order))
    changes = lines_changes_for(diff)
    assert changes == [
        {"type": "DESTROY", "id": 73},
        {"type": "DESTROY", "id": 74},
        {"type": "UPDATE", "id": 72, "attributes": {"order_quantity": 2}},
        {"type": "ADD", "attributes": {"product_id": 102, "order_quantity": 1, "external_system_reference1": ids[2], "alt_product_code": red}},
        {"type": "ADD", "attributes": {"product_id": 103, "order_quantity": 3, "external_system_reference1": "77", "alt_product_code": black}},
    ]
    # An amendment PATCH keeps the sent reference and dispatch date, and conforms to the spec.
    _, frame = goods_outs(order)
    new_body = body_dicts(frame)[str(order["id"])]
    sent_body = json.loads(json.dumps(new_body))
    sent_body["data"]["attributes"].update(reference="#1007-R2", expected_date_of_dispatch="2025-03-01T15:00:00Z")
    patch = amendment_body(sent_body, new_body, changes)
    assert patch["data"]["attributes"]["reference"] == "#1007-R2"
    assert patch["data"]["attributes"]["lines_changes"] == changes
    assert request_problems("patch", "/api/goods_outs/5", patch) == []


def test_unchanged_order_has_no_diff_and_unknown_line_ids_refuse():
    order = make_order(1008, lines=[("SKU-A", 2)])
    line_id = str(order["line_items"][0]["id"])
    same = pl.DataFrame([{"line_id": line_id, "clarus_line_id": "81", "clarus_product_id": "201", "quantity": 2}])
    assert diff_lines(same, _lines(order)).is_empty()
    unknown = pl.DataFrame([{"line_id": line_id, "clarus_line_id": None, "clarus_product_id": "201", "quantity": 1}],
                           schema={"line_id": pl.Utf8, "clarus_line_id": pl.Utf8, "clarus_product_id": pl.Utf8, "quantity": pl.Int64})
    with pytest.raises(ValueError, match="Clarus line id"):
        lines_changes_for(diff_lines(unknown, _lines(order)))


# ------------------------------------------------------------------------- NetSuite


def test_sales_order_body_is_shaped_like_netsuites_examples(payloads):
    example = payloads.json("ns_sales_order_complex_request")
    order = make_order(1009, lines=[("SKU-A", 2), ("000123", 1)])
    verdicts = validate_orders(parse_orders([order], POLICIES.sku_cleaning), products=PRODUCTS, policies=POLICIES)
    body = sales_order_dicts(build_sales_orders(verdicts, items={"SKU-A": "98", "000123": "99"}, customer_id="110"))[str(order["id"])]
    assert body["externalId"] == str(order["id"])
    assert body["entity"] == example["entity"]
    assert body["otherrefnum"] == "#1009" and body["tranDate"] == "2025-03-03"
    assert set(example) - {"customForm", "memo"} <= set(body)
    assert [(i["item"]["id"], i["quantity"]) for i in body["item"]["items"]] == [("98", 2), ("99", 1)]
    assert body["shippingAddress"]["country"] == {"id": "GB"}
    with pytest.raises(ValueError, match="no NetSuite item id"):
        build_sales_orders(verdicts, items={"SKU-A": "98"}, customer_id="110")
