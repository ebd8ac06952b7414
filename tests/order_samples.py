"""Shopify orders for the order tests: sample payloads in Shopify's shapes (ours by default,
the published ones in the realpayloads lane), and generated ones built from our 2025-07
order (so they keep every field Shopify sends)."""

from __future__ import annotations

import copy
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from payloads import OURS, Payloads

# short names the order tests use -> payload cases
REAL_ORDERS = {
    "rest_2025_07": "order_rest_2025_07",
    "python_api": "order_python_api",
    "node_api": "order_node_api",
    "custom_line_no_sku": "order_custom_line_no_sku",
    "three_custom_lines": "order_three_custom_lines",
    "partially_paid": "order_partially_paid",
    "cancelled": "order_cancelled_with_refund",
}
# SKUs our sample orders use, as a Clarus product table (`payloads["products"]` for either source).
FIXTURE_PRODUCTS = OURS["products"]


@lru_cache(maxsize=None)
def _raw(source: Payloads, name: str) -> str:
    return order_path(name, source).read_text(encoding="utf-8")


def order_path(name: str, source: Payloads = OURS) -> Path:
    """Where a sample order's file is, for the tests that hand a path to a command."""
    return source.path(REAL_ORDERS[name])


def real_order(name: str, *, unwrap: bool = True, source: Payloads = OURS) -> dict[str, Any]:
    """A sample Shopify order payload (unwrapped from {"order": ...} by default)."""
    doc = json.loads(_raw(source, name))
    return doc["order"] if unwrap and "order" in doc else doc


def make_order(
    number: int = 1001,
    *,
    lines: list[tuple[str | None, int]] | None = None,
    address: dict[str, Any] | None | str = "default",
    shipping: tuple[str | None, str | None] | None = ("standard", "Standard Shipping"),
    order_id: int | None = None,
    updated_at: str = "2025-03-03T10:00:00+00:00",
    **changes: Any,
) -> dict[str, Any]:
    """A realistic GB order derived from our 2025-07 sample order.

    `lines` are (sku, quantity); `address=None` drops the shipping address; `shipping`
    is (code, title) or None for no shipping line.
    """
    order = copy.deepcopy(real_order("rest_2025_07"))
    order_id = order_id or 5_000_000_000_000 + number
    template_line = order["line_items"][1]
    lines = lines if lines is not None else [("SKU-A", 1), ("000123", 2)]
    order["line_items"] = []
    for index, (sku, quantity) in enumerate(lines):
        line = copy.deepcopy(template_line)
        line.update(
            id=13_000_000_000 + number * 10 + index, sku=sku, quantity=quantity, current_quantity=quantity,
            fulfillable_quantity=quantity, title=f"Product {sku or 'custom'}", name=f"Product {sku or 'custom'}",
            variant_id=40_000_000_000 + index,
        )
        order["line_items"].append(line)
    if address == "default":
        order["shipping_address"] = {
            "first_name": "Ada", "last_name": "Lovelace", "name": "Ada Lovelace", "company": None,
            "address1": "12 St James's Square", "address2": "", "city": "London", "province": "England",
            "province_code": "ENG", "zip": "SW1Y 4LB", "country": "United Kingdom", "country_code": "GB",
            "phone": "+44 20 7946 0000", "latitude": None, "longitude": None,
        }
    else:
        order["shipping_address"] = address
    if shipping is None:
        order["shipping_lines"] = []
    else:
        order["shipping_lines"] = [dict(order["shipping_lines"][0], code=shipping[0], title=shipping[1])]
    order.update(
        id=order_id, admin_graphql_api_id=f"gid://shopify/Order/{order_id}", name=f"#{number}", order_number=number,
        email="ada@example.com", updated_at=updated_at, created_at="2025-03-03T09:00:00+00:00",
        financial_status="paid", refunds=[], fulfillments=[], cancelled_at=None, cancel_reason=None,
    )
    order.update(changes)
    return order
