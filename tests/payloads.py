"""Sample Shopify and NetSuite payloads for the tests, from two sources of the same shapes.

- `OURS`: written by us (tests/fixtures/, see its README), always present; every test runs on it.
- `PUBLISHED`: the real payloads others published, in ../shared/fixtures (see its SOURCES.md).
  They feed the `realpayloads` lane, which is skipped with a plain reason where they are absent.

Each case has one name in both sources; `facts` hold the values the tests assert on that differ
between the two (ids, SKUs, amounts), so one test body checks both.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
OURS_ROOT = REPO / "tests" / "fixtures"
# CLARUS_PUBLISHED_FIXTURES points the realpayloads lane elsewhere (e.g. a CI cache of ../shared/fixtures)
PUBLISHED_ROOT = Path(os.environ.get("CLARUS_PUBLISHED_FIXTURES") or REPO.parent / "shared" / "fixtures")
SKIP_REASON = f"published payloads not found at {PUBLISHED_ROOT}: realpayloads lane skipped"

_RUBY = "shopify/shopify-api-ruby_rest_2025-07/"
_PY = "shopify/shopify_python_api/"
_NODE = "shopify/Shopify-api-node/"
_NS = "netsuite/oracle-devrel_netsuite.devo.build/"

PUBLISHED_FILES = {
    # orders
    "order_rest_2025_07": _RUBY + "order_GET_450789469.json",
    "order_python_api": _PY + "order.json",
    "order_node_api": _NODE + "order_get.json",
    "order_custom_line_no_sku": _RUBY + "order_POST_custom_line_no_sku_response.json",
    "order_three_custom_lines": _RUBY + "order_POST_three_custom_lines_response.json",
    "order_partially_paid": _RUBY + "order_POST_partially_paid_response.json",
    "order_cancelled_with_refund": _RUBY + "order_cancel_with_refund_response.json",
    # refunds
    "refund_legacy_restock": _PY + "refund.json",
    "refund_node_create_response": _NODE + "refund_create_response.json",
    "refund_node_list": _NODE + "refund_list.json",
    "refund_node_create_request": _NODE + "refund_create_request.json",
    "refunds_list_2025_07": _RUBY + "refunds_GET_list.json",
    "refund_return_request": _RUBY + "refund_POST_request.json",
    "refund_no_restock_response": _RUBY + "refund_POST_response.json",
    "refund_shipping_only_request": _RUBY + "refund_POST_shipping_only_request.json",
    "refund_shipping_only_response": _RUBY + "refund_POST_shipping_only_response.json",
    "refund_calculate_no_restock": _RUBY + "refund_calculate_no_restock_response.json",
    # fulfilment orders and fulfilments
    "fulfillment_orders": _RUBY + "fulfillment_orders_GET.json",
    "fulfillment_partial_ups_request": _RUBY + "fulfillment_POST_partial_ups_request.json",
    "fulfillment_partial_ups_response": _RUBY + "fulfillment_POST_partial_ups_response.json",
    "fulfillment_create_v2_request": _NODE + "fulfillment_createV2_request.json",
    # webhook signature vector
    "hmac_vector": "shopify/webhook_hmac/sqlpage_test_vector.json",
    "hmac_vector_body": "shopify/webhook_hmac/sqlpage_vector_body.json",
    # NetSuite
    "ns_sales_order_complex_request": _NS + "salesOrder_POST_complex_request.json",
    "ns_sales_order_preapproved_request": _NS + "salesOrder_POST_preapproved_request.json",
    "ns_sales_order_get": _NS + "salesOrder_GET_response.json",
    "ns_close_line_patch": _NS + "salesOrder_PATCH_close_line_request.json",
    "ns_add_line_patch": _NS + "salesOrder_PATCH_add_line_request.json",
    "ns_transform_item_fulfillment": _NS + "salesOrder_transform_itemFulfillment_request.json",
}

OUR_FILES = {
    "order_rest_2025_07": "shopify/orders/order_rest_2025_07.json",
    "order_python_api": "shopify/orders/order_python_api.json",
    "order_node_api": "shopify/orders/order_node_api.json",
    "order_custom_line_no_sku": "shopify/orders/order_custom_line_no_sku.json",
    "order_three_custom_lines": "shopify/orders/order_three_custom_lines.json",
    "order_partially_paid": "shopify/orders/order_partially_paid.json",
    "order_cancelled_with_refund": "shopify/orders/order_cancel_with_refund_response.json",
    "refund_legacy_restock": "shopify/refunds/refund_legacy_restock.json",
    "refund_node_create_response": "shopify/refunds/refund_node_create_response.json",
    "refund_node_list": "shopify/refunds/refund_node_list.json",
    "refund_node_create_request": "shopify/refunds/refund_node_create_request.json",
    "refunds_list_2025_07": "shopify/refunds/refunds_GET_list.json",
    "refund_return_request": "shopify/refunds/refund_POST_return_request.json",
    "refund_no_restock_response": "shopify/refunds/refund_POST_no_restock_response.json",
    "refund_shipping_only_request": "shopify/refunds/refund_POST_shipping_only_request.json",
    "refund_shipping_only_response": "shopify/refunds/refund_POST_shipping_only_response.json",
    "refund_calculate_no_restock": "shopify/refunds/refund_calculate_no_restock_response.json",
    "fulfillment_orders": "shopify/fulfillments/fulfillment_orders_GET.json",
    "fulfillment_partial_ups_request": "shopify/fulfillments/fulfillment_POST_partial_ups_request.json",
    "fulfillment_partial_ups_response": "shopify/fulfillments/fulfillment_POST_partial_ups_response.json",
    "fulfillment_create_v2_request": "shopify/fulfillments/fulfillment_createV2_request.json",
    "hmac_vector": "shopify/webhook_hmac/test_vector.json",
    "hmac_vector_body": "shopify/webhook_hmac/vector_body.json",
    "ns_sales_order_complex_request": "netsuite/salesOrder_POST_complex_request.json",
    "ns_sales_order_preapproved_request": "netsuite/salesOrder_POST_preapproved_request.json",
    "ns_sales_order_get": "netsuite/salesOrder_GET_response.json",
    "ns_close_line_patch": "netsuite/salesOrder_PATCH_close_line_request.json",
    "ns_add_line_patch": "netsuite/salesOrder_PATCH_add_line_request.json",
    "ns_transform_item_fulfillment": "netsuite/salesOrder_transform_itemFulfillment_request.json",
}

# Values the tests assert on, per source. Same key, same meaning.
PUBLISHED_FACTS: dict[str, Any] = {
    "order_id": "450789469", "order_name": "#1001", "currency": "USD",
    # SKUs of the order's three lines (the 2025-07 read refunded the first and third) -> Clarus product ids
    "skus": ["IPOD2008GREEN", "IPOD2008RED", "IPOD2008BLACK"],
    "products": {"IPOD2008GREEN": "101", "IPOD2008RED": "102", "IPOD2008BLACK": "103", "IPOD2009BLACK": "104"},
    "line_ids": ["466157049", "518995019", "703073504"],
    "node_country": "CA",
    "refund_id": "509562969", "legacy_refund_amount": "209.00",
    "goodwill_amount": "41.94", "shipping_refund": "5.00",
    "custom_line_title": "Big Brown Bear Boots",
    "three_custom_titles": ["Red Leather Coat", "Blue Suede Shoes", "Raspberry Beret"],
    # the 2025-07 read: goods 3 x 199.00, 10.00 off, 6 % tax added
    "reconcile": {"tax_added": "11.94", "other_charges": "0.00", "goods_ordered": "597.00", "goods_discounts": "10.00",
                  "expected_goods": "587.00"},
    "ups_number": "1Z001985YW99744790",
    "v2_number": "1562678",
    "pii": ["bob.norman@hostmail.com", "Norman", "Chestnut"],  # in the python_api order
    "ns_memo": "This is a test memo!", "ns_otherrefnum": "11037", "ns_description": "Test Item",
}
OUR_FACTS: dict[str, Any] = {
    "order_id": "820145337", "order_name": "#1187", "currency": "GBP",
    "skus": ["FLASK-05-GRN", "FLASK-05-RED", "FLASK-05-BLK"],
    "products": {"FLASK-05-GRN": "101", "FLASK-05-RED": "102", "FLASK-05-BLK": "103", "007415": "104"},
    "line_ids": ["611402881", "611402897", "611402905"],
    "node_country": "IE",
    "refund_id": "730551208", "legacy_refund_amount": "100.80",
    "goodwill_amount": "12.50", "shipping_refund": "4.50",
    "custom_line_title": "Hand-stitched Map Case",
    "three_custom_titles": ["Gift Wrapping", "Engraved Brass Tag", "Spare Cork Stopper"],
    # goods 3 x 45.00, 9.00 off, 20 % VAT added on the discounted price
    "reconcile": {"tax_added": "25.20", "other_charges": "0.00", "goods_ordered": "135.00", "goods_discounts": "9.00",
                  "expected_goods": "126.00"},
    "ups_number": "1ZW8F4520394418205",
    "v2_number": "4400781",
    "pii": ["morwenna.tregarthen@example.org", "Tregarthen", "Chapel Row"],
    "ns_memo": "Trade order for the Mousehole sailing club", "ns_otherrefnum": "WF-20417",
    "ns_description": "Enamel camp mug, harbour blue",
}


@dataclass(frozen=True)
class Payloads:
    """One source of sample payloads: where it lives, its file for each case, and its facts."""

    source: str
    root: Path
    files: dict[str, str] = field(repr=False, compare=False)
    facts: dict[str, Any] = field(repr=False, compare=False)

    def path(self, case: str) -> Path:
        return self.root / self.files[case]

    def bytes(self, case: str) -> bytes:
        return self.path(case).read_bytes()

    def json(self, case: str) -> Any:
        return json.loads(self.path(case).read_text(encoding="utf-8"))

    def order(self, case: str, *, unwrap: bool = True) -> dict[str, Any]:
        """An order payload, unwrapped from {"order": ...} by default."""
        doc = self.json(case)
        return doc["order"] if unwrap and "order" in doc else doc

    def __getitem__(self, fact: str) -> Any:
        return self.facts[fact]

    @property
    def available(self) -> bool:
        return self.root.is_dir()


OURS = Payloads("ours", OURS_ROOT, OUR_FILES, OUR_FACTS)
PUBLISHED = Payloads("published", PUBLISHED_ROOT, PUBLISHED_FILES, PUBLISHED_FACTS)
SOURCES = {"ours": OURS, "published": PUBLISHED}
