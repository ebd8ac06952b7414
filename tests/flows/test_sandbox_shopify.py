"""The Shopify sandbox over real loopback HTTP: auth, shapes, paging, rate limit, webhooks."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import httpx
import pytest

from clarus_pipelines.sandbox.faults import FaultConfig
from clarus_pipelines.sandbox.serving import serve_in_thread
from clarus_pipelines.sandbox.shopify import ShopifyError, ShopifySandbox
from sandbox_helpers import WebhookRecorder, wait_until

TOKEN = "shpat_test_token"
SECRET = "test-webhook-secret"
API = "/admin/api/2025-07"
ADDRESS = {
    "first_name": "Ada", "last_name": "Lovelace", "name": "Ada Lovelace", "address1": "12 Station Road", "address2": "",
    "city": "Leeds", "zip": "LS1 4AP", "province": None, "province_code": None, "country": "United Kingdom",
    "country_code": "GB", "company": None, "phone": "+44 7700 900123", "latitude": None, "longitude": None,
}
STANDARD = {"code": "standard", "title": "Standard Shipping", "price": "3.95"}


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@contextmanager
def served_shopify(**kwargs) -> Iterator[tuple[ShopifySandbox, httpx.Client]]:
    kwargs.setdefault("access_token", TOKEN)
    kwargs.setdefault("webhook_secret", SECRET)
    sandbox = ShopifySandbox(**kwargs)
    served = serve_in_thread(sandbox.app)
    client = httpx.Client(base_url=served.url, headers={"X-Shopify-Access-Token": TOKEN}, timeout=10)
    try:
        yield sandbox, client
    finally:
        client.close()
        served.stop()
        sandbox.close()


def place(sandbox: ShopifySandbox, quantities=(2, 1), **kwargs) -> dict:
    variants = sandbox.catalog.clean_variants()
    lines = [{"variant_id": variants[i].variant_id, "quantity": q} for i, q in enumerate(quantities)]
    kwargs.setdefault("shipping_address", ADDRESS)
    kwargs.setdefault("shipping_lines", [STANDARD])
    return sandbox.create_order(line_items=lines, email="ada@example.com", **kwargs)


def test_admin_api_requires_the_access_token():
    with served_shopify() as (sandbox, client):
        place(sandbox)
        assert httpx.get(f"{client.base_url}{API}/orders.json").status_code == 401
        wrong = httpx.get(f"{client.base_url}{API}/orders.json", headers={"X-Shopify-Access-Token": "nope"})
        assert wrong.status_code == 401
        assert "Invalid API key or access token" in wrong.json()["errors"]
        assert client.get(f"{API}/orders.json").status_code == 200
        assert [r["status"] for r in sandbox.requests()] == [401, 401, 200]


def test_order_fulfilment_order_and_fulfilment_have_the_published_shapes(payloads):
    with served_shopify() as (sandbox, client):
        order = place(sandbox)
        got = client.get(f"{API}/orders/{order['id']}.json").json()["order"]
        published = payloads.order("order_rest_2025_07")
        assert set(published) <= set(got)
        assert set(published["line_items"][0]) <= set(got["line_items"][0])
        assert set(published["shipping_lines"][0]) <= set(got["shipping_lines"][0])
        assert got["line_items"][0]["sku"] == sandbox.catalog.clean_variants()[0].shopify_sku
        assert got["total_price"] == str(Decimal(got["subtotal_price"]) + Decimal("3.95"))

        fos = client.get(f"{API}/orders/{order['id']}/fulfillment_orders.json").json()["fulfillment_orders"]
        published_fo = payloads.json("fulfillment_orders")["fulfillment_orders"][0]
        assert set(published_fo) <= set(fos[0])
        assert set(published_fo["line_items"][0]) <= set(fos[0]["line_items"][0])
        assert fos[0]["status"] == "open" and [li["fulfillable_quantity"] for li in fos[0]["line_items"]] == [2, 1]

        request = payloads.json("fulfillment_partial_ups_request")
        request["fulfillment"]["line_items_by_fulfillment_order"] = [{
            "fulfillment_order_id": fos[0]["id"],
            "fulfillment_order_line_items": [{"id": fos[0]["line_items"][0]["id"], "quantity": 1}],
        }]
        created = client.post(f"{API}/fulfillments.json", json=request)
        assert created.status_code == 201
        fulfillment = created.json()["fulfillment"]
        published_f = payloads.json("fulfillment_partial_ups_response")["fulfillment"]
        assert set(published_f) <= set(fulfillment)
        assert (fulfillment["tracking_company"], fulfillment["tracking_number"]) == ("UPS", payloads["ups_number"])
        assert fulfillment["tracking_url"].startswith("https://www.ups.com/")
        assert [(li["id"], li["quantity"]) for li in fulfillment["line_items"]] == [(order["line_items"][0]["id"], 1)]

        fo_after = client.get(f"{API}/fulfillment_orders/{fos[0]['id']}.json").json()["fulfillment_order"]
        assert fo_after["status"] == "in_progress"
        got = client.get(f"{API}/orders/{order['id']}.json").json()["order"]
        assert got["fulfillment_status"] == "partial"
        one = client.get(f"{API}/orders/{order['id']}/fulfillments/{fulfillment['id']}.json")
        assert one.json()["fulfillment"]["id"] == fulfillment["id"]
        assert sandbox.fulfillments()[0]["recorded_at"] > 0


def test_fulfilling_already_fulfilled_quantities_is_refused():
    with served_shopify() as (sandbox, client):
        order = place(sandbox, quantities=(2,))
        fo = client.get(f"{API}/orders/{order['id']}/fulfillment_orders.json").json()["fulfillment_orders"][0]
        line = fo["line_items"][0]
        body = {"fulfillment": {"tracking_info": {"number": "AB123456789GB", "company": "Royal Mail"},
                                "line_items_by_fulfillment_order": [{
                                    "fulfillment_order_id": fo["id"],
                                    "fulfillment_order_line_items": [{"id": line["id"], "quantity": 2}]}]}}
        assert client.post(f"{API}/fulfillments.json", json=body).status_code == 201
        again = client.post(f"{API}/fulfillments.json", json=body)
        assert again.status_code == 422
        assert "unfulfillable status= closed" in again.json()["errors"][0]
        assert len(sandbox.fulfillments(order["id"])) == 1

        other = place(sandbox, quantities=(1,))
        fo2 = client.get(f"{API}/orders/{other['id']}/fulfillment_orders.json").json()["fulfillment_orders"][0]
        too_many = {"fulfillment": {"line_items_by_fulfillment_order": [{
            "fulfillment_order_id": fo2["id"],
            "fulfillment_order_line_items": [{"id": fo2["line_items"][0]["id"], "quantity": 2}]}]}}
        refused = client.post(f"{API}/fulfillments.json", json=too_many)
        assert refused.status_code == 422
        assert refused.json()["errors"] == ["Invalid fulfillment order line item quantity requested."]


def test_orders_page_through_link_header_cursors():
    with served_shopify() as (sandbox, client):
        ids = [place(sandbox)["id"] for _ in range(7)]
        first = client.get(f"{API}/orders.json", params={"status": "any", "limit": 3})
        assert [o["id"] for o in first.json()["orders"]] == ids[:3]
        assert 'rel="next"' in first.headers["link"] and 'rel="previous"' not in first.headers["link"]
        second = client.get(first.links["next"]["url"])
        assert [o["id"] for o in second.json()["orders"]] == ids[3:6]
        back = client.get(second.links["previous"]["url"])
        assert [o["id"] for o in back.json()["orders"]] == ids[:3]
        third = client.get(second.links["next"]["url"])
        assert [o["id"] for o in third.json()["orders"]] == ids[6:]
        assert "next" not in third.links
        mixed = client.get(second.links["next"]["url"] + "&status=any")
        assert mixed.status_code == 400
        assert client.get(f"{API}/orders/count.json", params={"status": "any"}).json() == {"count": 7}


def test_updated_at_min_and_status_filters():
    now = [datetime(2025, 7, 1, 9, 0, tzinfo=timezone.utc)]
    with served_shopify(clock=lambda: now[0]) as (sandbox, client):
        old = place(sandbox)
        fresh = place(sandbox)
        now[0] += timedelta(minutes=5)
        cancelled = place(sandbox)
        sandbox.cancel_order(cancelled["id"])
        mark = sandbox.order(cancelled["id"])["updated_at"]
        sandbox.update_shipping_address(old["id"], {**ADDRESS, "address2": "Flat 2"})
        changed = client.get(f"{API}/orders.json", params={"status": "any", "updated_at_min": mark}).json()["orders"]
        assert {o["id"] for o in changed} == {old["id"], cancelled["id"]}
        open_ids = {o["id"] for o in client.get(f"{API}/orders.json").json()["orders"]}
        assert open_ids == {old["id"], fresh["id"]}
        only_cancelled = client.get(f"{API}/orders.json", params={"status": "cancelled"}).json()["orders"]
        assert [o["id"] for o in only_cancelled] == [cancelled["id"]]
        assert only_cancelled[0]["cancel_reason"] == "customer"
        assert client.get(f"{API}/orders.json", params={"updated_at_min": "not a date"}).status_code == 400


def test_leaky_bucket_answers_429_with_retry_after_until_it_leaks():
    clock = FakeClock()
    with served_shopify(bucket_size=2, leak_rate_per_s=0.5, monotonic=clock) as (sandbox, client):
        first, second = client.get(f"{API}/orders.json"), client.get(f"{API}/orders.json")
        assert first.headers["X-Shopify-Shop-Api-Call-Limit"] == "1/2"
        assert second.headers["X-Shopify-Shop-Api-Call-Limit"] == "2/2"
        throttled = client.get(f"{API}/orders.json")
        assert throttled.status_code == 429
        assert float(throttled.headers["Retry-After"]) == pytest.approx(2.0)
        assert "Exceeded" in throttled.json()["errors"]
        clock.now += 2.0
        assert client.get(f"{API}/orders.json").status_code == 200


def test_webhooks_are_signed_and_carry_shopify_headers():
    with WebhookRecorder() as recorder:
        with served_shopify(webhook_url=f"{recorder.url}/webhooks/shopify") as (sandbox, _):
            order = place(sandbox, quantities=(2, 1))
            sandbox.edit_order(order["id"], quantities={order["line_items"][0]["id"]: 3})
            sandbox.refund_order(order["id"], line_items=[
                {"line_item_id": order["line_items"][1]["id"], "quantity": 1, "restock_type": "cancel"}])
            sandbox.cancel_order(order["id"])
            sandbox.webhook_sender.flush()
            expected = ["orders/create", "orders/edited", "orders/updated", "refunds/create", "orders/updated",
                        "refunds/create", "orders/cancelled", "orders/updated"]
            received = wait_until(lambda: (r := recorder.snapshot()) and len(r) >= len(expected) and r, message="webhooks")
    assert [r["headers"]["x-shopify-topic"] for r in received] == expected
    for delivery in received:
        headers = delivery["headers"]
        digest = base64.b64encode(hmac.new(SECRET.encode(), delivery["raw"], hashlib.sha256).digest()).decode()
        assert hmac.compare_digest(headers["x-shopify-hmac-sha256"], digest)
        assert headers["x-shopify-shop-domain"] == "sandbox.myshopify.com"
        assert headers["x-shopify-api-version"] == "2026-10"  # the API version the app is pinned to
        assert headers["x-shopify-webhook-id"] and headers["x-shopify-event-id"] and headers["x-shopify-triggered-at"]
    assert len({d["headers"]["x-shopify-webhook-id"] for d in received}) == len(received)
    edit = received[1]["body"]["order_edit"]
    assert edit["order_id"] == order["id"] and edit["line_items"]["additions"] == [{"id": order["line_items"][0]["id"], "delta": 1}]
    assert received[3]["body"]["refund_line_items"][0]["restock_type"] == "cancel"
    assert received[-2]["body"]["cancelled_at"] is not None


def test_duplicate_delivery_keeps_the_webhook_id():
    with WebhookRecorder() as recorder:
        with served_shopify(webhook_url=f"{recorder.url}/hook", faults=FaultConfig(duplicate_webhook_rate=1.0)) as (sandbox, _):
            place(sandbox)
            received = wait_until(lambda: len(recorder.snapshot()) >= 2 and recorder.snapshot(), message="duplicate")
    assert received[0]["headers"]["x-shopify-webhook-id"] == received[1]["headers"]["x-shopify-webhook-id"]
    assert received[0]["raw"] == received[1]["raw"]


def test_refund_kinds_have_shopifys_payload_details(payloads):
    with served_shopify() as (sandbox, client):
        order = place(sandbox, quantities=(2, 1))
        lines = order["line_items"]
        fo = client.get(f"{API}/orders/{order['id']}/fulfillment_orders.json").json()["fulfillment_orders"][0]
        client.post(f"{API}/fulfillments.json", json={"fulfillment": {"line_items_by_fulfillment_order": [{
            "fulfillment_order_id": fo["id"], "fulfillment_order_line_items": [{"id": fo["line_items"][0]["id"], "quantity": 2}]}]}})

        with pytest.raises(ShopifyError):  # line 2 was never fulfilled: it cannot come back
            sandbox.refund_order(order["id"], line_items=[{"line_item_id": lines[1]["id"], "quantity": 1, "restock_type": "return"}])
        returned = sandbox.refund_order(order["id"], line_items=[{"line_item_id": lines[0]["id"], "quantity": 1, "restock_type": "return"}])
        assert returned["restock"] is True and returned["refund_line_items"][0]["location_id"] == sandbox.location_id

        shipping = sandbox.refund_order(order["id"], shipping_full=True)
        published = payloads.json("refund_shipping_only_response")["refund"]
        assert set(published) <= set(shipping)
        assert shipping["refund_line_items"] == []
        assert [a["kind"] for a in shipping["order_adjustments"]] == ["shipping_refund"]
        assert shipping["refund_shipping_lines"][0]["subtotal_amount_set"]["shop_money"]["amount"] == "3.95"

        goodwill = sandbox.refund_order(order["id"], amount="5.00", note="sorry")
        assert goodwill["refund_line_items"] == [] and goodwill["refund_shipping_lines"] == []
        assert [(a["kind"], a["amount"]) for a in goodwill["order_adjustments"]] == [("refund_discrepancy", "-5.00")]
        assert goodwill["transactions"][0]["amount"] == "5.00"

        with pytest.raises(ShopifyError):
            sandbox.refund_order(order["id"], amount="1000.00")
        refunds = client.get(f"{API}/orders/{order['id']}/refunds.json").json()["refunds"]
        assert [r["id"] for r in refunds] == [returned["id"], shipping["id"], goodwill["id"]]
        got = client.get(f"{API}/orders/{order['id']}.json").json()["order"]
        assert got["financial_status"] == "partially_refunded"
        with pytest.raises(ShopifyError):  # fulfilled orders cannot be cancelled
            sandbox.cancel_order(order["id"])


def test_inventory_levels_set_absolute_and_list():
    with served_shopify() as (sandbox, client):
        item = sandbox.catalog.clean_variants()[0]
        location = sandbox.location_id
        response = client.post(f"{API}/inventory_levels/set.json",
                               json={"location_id": location, "inventory_item_id": item.inventory_item_id, "available": 42})
        assert response.status_code == 200
        assert response.json()["inventory_level"]["available"] == 42
        again = client.post(f"{API}/inventory_levels/set.json",
                            json={"location_id": location, "inventory_item_id": item.inventory_item_id, "available": 42})
        assert again.json()["inventory_level"]["available"] == 42
        levels = client.get(f"{API}/inventory_levels.json", params={"location_ids": location, "limit": 250}).json()["inventory_levels"]
        assert len(levels) == len(sandbox.catalog.variants)
        assert next(lv for lv in levels if lv["inventory_item_id"] == item.inventory_item_id)["available"] == 42
        assert client.get(f"{API}/inventory_levels.json").status_code == 422
        unknown = client.post(f"{API}/inventory_levels/set.json", json={"location_id": location, "inventory_item_id": 1, "available": 1})
        assert unknown.status_code == 422
        place(sandbox, quantities=(3,))  # an order takes stock from `available`
        assert next(lv for lv in sandbox.inventory_levels() if lv["inventory_item_id"] == item.inventory_item_id)["available"] == 39


def test_products_carry_the_catalogue_variants_and_inspection_api_resets():
    with served_shopify() as (sandbox, client):
        products = client.get(f"{API}/products.json", params={"limit": 3})
        assert len(products.json()["products"]) == 3 and "next" in products.links
        all_variants = []
        url, params = f"{API}/products.json", {"limit": 250}
        body = client.get(url, params=params).json()
        for product in body["products"]:
            all_variants.extend(product["variants"])
        skus = {v["sku"] for v in all_variants}
        assert {"456", "TEE#OLV-M", "tote-nat-os", "TEE-NAV-XXL"} <= skus  # the planted flaws are there
        place(sandbox)
        base = str(client.base_url)
        assert len(httpx.get(f"{base}/_sandbox/orders").json()["orders"]) == 1
        assert httpx.get(f"{base}/_sandbox/requests").json()["requests"][0]["path"].endswith("/products.json")
        assert httpx.post(f"{base}/_sandbox/reset").status_code == 200
        assert sandbox.orders() == [] and sandbox.requests() == []


# ---------------------------------------------------------------------------- GraphQL Admin API


GRAPHQL = "/admin/api/2026-10/graphql.json"
SET = """mutation Set($input: InventorySetQuantitiesInput!, $key: String!) {
  inventorySetQuantities(input: $input) @idempotent(key: $key) { userErrors { field message code } } }"""


def _graphql(client: httpx.Client, query: str, variables: dict | None = None) -> dict:
    response = client.post(GRAPHQL, json={"query": query, "variables": variables or {}})
    assert response.status_code == 200, response.text
    return response.json()


def _set_input(shop: ShopifySandbox, item_id: int, quantity: int, **extra) -> dict:
    return {"name": "available", "reason": "correction", "quantities": [
        {"inventoryItemId": f"gid://shopify/InventoryItem/{item_id}", "locationId": f"gid://shopify/Location/{shop.location_id}",
         "quantity": quantity, **extra}]}


def test_graphql_documents_are_validated_against_shopifys_published_schema():
    from clarus_pipelines.connectors.shopify import DOCUMENTS
    from clarus_pipelines.sandbox.shopify_graphql import schema_problems

    assert DOCUMENTS and {name: schema_problems(doc) for name, doc in DOCUMENTS.items()} == {n: [] for n in DOCUMENTS}
    shop = ShopifySandbox(access_token=TOKEN, webhook_secret=SECRET)
    served = serve_in_thread(shop.app)
    try:
        with httpx.Client(base_url=served.url, headers={"X-Shopify-Access-Token": TOKEN}) as client:
            # REST-era names Shopify's GraphQL API does not have are refused before anything runs
            unknown = _graphql(client, "{ orders(first: 1) { nodes { id financialStatus } } }")
            assert "data" not in unknown and "financialStatus" in unknown["errors"][0]["message"]
            legacy = _graphql(client, """mutation { inventorySetQuantities(input: {name: "available", reason: "correction",
                ignoreCompareQuantity: true, quantities: []}) @idempotent(key: "k") { userErrors { message } } }""")
            assert "ignoreCompareQuantity" in legacy["errors"][0]["message"]
            # connections need first or last, as on Shopify
            unsized = _graphql(client, "{ orders { nodes { id } } }")
            assert "first or last" in unsized["errors"][0]["message"]
            ok = _graphql(client, "{ shop { name myshopifyDomain } }")
            assert ok["data"]["shop"]["myshopifyDomain"] == "sandbox.myshopify.com"
            assert ok["extensions"]["cost"]["throttleStatus"]["maximumAvailable"] > 0
            assert client.post(GRAPHQL, json={"query": "{ shop { name } }"},
                               headers={"X-Shopify-Access-Token": "wrong"}).status_code == 401
    finally:
        served.stop()


def test_a_cached_validation_never_lets_an_invalid_document_through():
    """The sandbox validates a document's text once and reuses the verdict: a valid text answered from
    the cache still runs, and an invalid one is refused every time, also after a valid one was cached."""
    from clarus_pipelines.sandbox.shopify_graphql import checked_document

    valid = "{ shop { name myshopifyDomain } }"
    invalid = "{ shop { name financialStatus } }"  # one field Shopify's schema does not have
    with served_shopify() as (_, client):
        hits = checked_document.cache_info().hits
        for _ in range(2):
            assert _graphql(client, valid)["data"]["shop"]["myshopifyDomain"] == "sandbox.myshopify.com"
        assert checked_document.cache_info().hits > hits  # the second one was judged from the cache
        for _ in range(2):
            refused = _graphql(client, invalid)
            assert "data" not in refused and "financialStatus" in refused["errors"][0]["message"]
        broken = _graphql(client, valid[:-1])  # does not parse
        assert "data" not in broken and broken["errors"][0]["message"].startswith("Syntax Error")
        assert _graphql(client, valid)["data"]["shop"]["name"]


def test_inventory_set_needs_an_idempotency_key_and_change_from_quantity():
    shop = ShopifySandbox(access_token=TOKEN, webhook_secret=SECRET)
    item = shop.catalog.clean_variants()[0].inventory_item_id
    before = next(lv["available"] for lv in shop.inventory_levels() if lv["inventory_item_id"] == item)
    served = serve_in_thread(shop.app)
    try:
        with httpx.Client(base_url=served.url, headers={"X-Shopify-Access-Token": TOKEN}) as client:
            no_key = _graphql(client, SET.replace(" @idempotent(key: $key)", "").replace(", $key: String!", ""),
                              {"input": _set_input(shop, item, 5, changeFromQuantity=None)})
            assert "@idempotent" in no_key["errors"][0]["message"]
            missing = _graphql(client, SET, {"key": "k1", "input": _set_input(shop, item, 5)})
            assert missing["data"]["inventorySetQuantities"]["userErrors"][0]["field"][-1] == "changeFromQuantity"
            stale = _graphql(client, SET, {"key": "k2", "input": _set_input(shop, item, 5, changeFromQuantity=before + 1)})
            assert stale["data"]["inventorySetQuantities"]["userErrors"][0]["code"] == "CHANGE_FROM_QUANTITY_STALE"
            assert next(lv["available"] for lv in shop.inventory_levels() if lv["inventory_item_id"] == item) == before

            checked = _graphql(client, SET, {"key": "k3", "input": _set_input(shop, item, 5, changeFromQuantity=before)})
            assert checked["data"]["inventorySetQuantities"]["userErrors"] == []
            shop._inventory[(item, shop.location_id)]["available"] = 9  # a sale in between
            replay = _graphql(client, SET, {"key": "k3", "input": _set_input(shop, item, 5, changeFromQuantity=before)})
            assert replay["data"]["inventorySetQuantities"]["userErrors"] == []  # the first answer, not applied again
            assert next(lv["available"] for lv in shop.inventory_levels() if lv["inventory_item_id"] == item) == 9
            reused = _graphql(client, SET, {"key": "k3", "input": _set_input(shop, item, 7, changeFromQuantity=None)})
            assert reused["data"]["inventorySetQuantities"]["userErrors"][0]["code"] == "IDEMPOTENCY_KEY_PARAMETER_MISMATCH"
    finally:
        served.stop()


def test_webhook_subscriptions_are_created_listed_and_deleted_over_graphql():
    from clarus_pipelines.connectors.shopify import ShopifyResource

    shop = ShopifySandbox(access_token=TOKEN, webhook_secret=SECRET)
    served = serve_in_thread(shop.app)
    try:
        resource = ShopifyResource(base_url=served.url, access_token=TOKEN)
        made = resource.create_webhook_subscription("orders/create", "https://hooks.example.com/shopify")
        assert made["topic"] == "orders/create"
        assert resource.list_webhook_subscriptions() == [made]
        from clarus_pipelines.connectors.shopify import ShopifyError as ConnectorShopifyError
        with pytest.raises(ConnectorShopifyError) as taken:
            resource.create_webhook_subscription("orders/create", "https://hooks.example.com/shopify")
        assert taken.value.status == 422
        resource.delete_webhook_subscription(made["id"])
        assert resource.list_webhook_subscriptions() == []
        resource.close()
    finally:
        served.stop()


def test_shopify_webhooks_sync_makes_subscriptions_match_and_dry_run_changes_nothing():
    import os
    import subprocess
    import sys
    from pathlib import Path

    from clarus_pipelines.connectors.shopify import ShopifyResource
    from clarus_pipelines.shopify_webhooks import CONSUMED_TOPICS, plan_sync

    shop = ShopifySandbox(access_token=TOKEN, webhook_secret=SECRET)
    served = serve_in_thread(shop.app)
    try:
        resource = ShopifyResource(base_url=served.url, access_token=TOKEN)
        ours = "https://hooks.example.com/webhooks/shopify"
        stale = resource.create_webhook_subscription("products/update", ours)  # a topic we no longer read
        foreign = resource.create_webhook_subscription("orders/create", "https://other-app.example.com/hook")
        kept = resource.create_webhook_subscription("orders/create", ours)
        plan = plan_sync(resource.list_webhook_subscriptions(), ours)
        assert plan.create == [t for t in CONSUMED_TOPICS if t != "orders/create"]
        assert [s["id"] for s in plan.delete] == [stale["id"]]

        cli = [str(Path(sys.executable).parent / "clarus-pipelines"), "shopify-webhooks", "sync",
               "--receiver-url", "https://hooks.example.com/"]
        env = {**os.environ, "SHOPIFY_BASE_URL": served.url, "SHOPIFY_ACCESS_TOKEN": TOKEN}
        dry = subprocess.run(cli + ["--dry-run"], capture_output=True, text=True, env=env, check=True)
        assert json.loads(dry.stdout)["create"] == plan.create and json.loads(dry.stdout)["created"] == []
        assert len(resource.list_webhook_subscriptions()) == 3  # nothing changed

        done = json.loads(subprocess.run(cli, capture_output=True, text=True, env=env, check=True).stdout)
        assert len(done["created"]) == len(plan.create) and done["deleted"] == [stale["id"]]
        subs = resource.list_webhook_subscriptions()
        assert sorted(s["topic"] for s in subs if s["uri"] == ours) == sorted(CONSUMED_TOPICS)
        assert foreign in subs and kept in subs
        again = json.loads(subprocess.run(cli, capture_output=True, text=True, env=env, check=True).stdout)
        assert again["create"] == [] and again["delete"] == []  # idempotent
        # every call went through Shopify's schema: webhookSubscriptionCreate with `uri`, not callbackUrl
        creates = shop.graphql_calls("webhookSubscriptionCreate")
        assert creates and all("callbackUrl" not in json.dumps(c["body"]["variables"]) for c in creates)
        resource.close()
    finally:
        served.stop()
