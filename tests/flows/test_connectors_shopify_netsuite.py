"""The Shopify and NetSuite connectors against their sandboxes over loopback HTTP."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from clarus_pipelines.connectors.http import ConnectorError
from clarus_pipelines.connectors.netsuite import NetSuiteError, NetSuiteResource
from clarus_pipelines.connectors.shopify import ShopifyError, ShopifyResource
from clarus_pipelines.sandbox.faults import FaultConfig
from clarus_pipelines.sandbox.netsuite import NetSuiteSandbox
from clarus_pipelines.sandbox.serving import serve_in_thread
from clarus_pipelines.sandbox.shopify import ShopifySandbox
from sandbox_helpers import wait_until

TOKEN = "shpat_connector_test"
ACCOUNT = "7654321"
CREDS = {"consumer_key": "ck-connector-1", "consumer_secret": "cs-connector", "token_id": "tk-connector-1", "token_secret": "ts-connector"}
ADDRESS = {"first_name": "Ada", "last_name": "Lovelace", "address1": "12 Station Road", "city": "Leeds", "zip": "LS1 4AP",
           "country": "United Kingdom", "country_code": "GB"}


class StepClock:
    """A monotonic clock that moves `step` seconds each time it is read: the bucket leaks
    by the same amount between any two calls, however fast or slow the machine is."""

    def __init__(self, step: float):
        self.step, self.now = step, 0.0

    def __call__(self) -> float:
        self.now += self.step
        return self.now


class LoseResponses:
    """Lets the next `count` matching requests reach the app, then drops its answer: a 502,
    or (with `delay_s`) a response later than the client's timeout. The write happened."""

    def __init__(self, app: ASGIApp, *, method: str, path_contains: str, count: int, delay_s: float = 0.0,
                 body_contains: str | None = None):
        self.app, self.method, self.path_contains = app, method, path_contains
        self.remaining, self.delay_s, self.body_contains = count, delay_s, body_contains
        self.lost = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        hit = (scope["type"] == "http" and scope["method"] == self.method and self.path_contains in scope["path"]
               and self.remaining > 0)
        if hit and self.body_contains is not None:  # GraphQL: one path, the operation is in the body
            chunks, more = [], True
            while more:
                message = await receive()
                chunks.append(message.get("body", b""))
                more = message.get("more_body", False)
            body = b"".join(chunks)
            hit = self.body_contains.encode() in body

            async def receive() -> Message:  # noqa: F811 - replay the body to the app
                return {"type": "http.request", "body": body, "more_body": False}
        if not hit:
            await self.app(scope, receive, send)
            return
        self.remaining -= 1
        status: list[int] = []

        async def swallow(message: Message) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])

        await self.app(scope, receive, swallow)
        self.lost += 1
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        await JSONResponse({"errors": "bad gateway"}, status_code=502)(scope, receive, send)


@contextmanager
def serve(app: ASGIApp) -> Iterator[str]:
    served = serve_in_thread(app)
    try:
        yield served.url
    finally:
        served.stop()


def place(shop: ShopifySandbox, quantities=(2, 1)) -> dict:
    variants = shop.catalog.clean_variants()
    lines = [{"variant_id": variants[i].variant_id, "quantity": q} for i, q in enumerate(quantities)]
    return shop.create_order(line_items=lines, shipping_address=ADDRESS,
                             shipping_lines=[{"code": "standard", "title": "Standard Shipping", "price": "3.95"}])


def netsuite_sandbox(**kwargs) -> NetSuiteSandbox:
    return NetSuiteSandbox(account_id=ACCOUNT, **{**CREDS, **kwargs})


def netsuite_resource(url: str, **overrides) -> NetSuiteResource:
    return NetSuiteResource(base_url=url, account_id=ACCOUNT, **{**CREDS, **overrides})


def so_body(ns: NetSuiteSandbox, quantities=(2, 1)) -> dict:
    items = ns.catalog.master
    return {"entity": {"id": "110"}, "orderStatus": "B", "otherrefnum": "#1001",
            "item": {"items": [{"item": {"id": items[i].internal_id}, "quantity": q, "rate": 20.0} for i, q in enumerate(quantities)]}}


# ---------------------------------------------------------------------------- Shopify


def test_shopify_connector_pages_orders_with_graphql_cursors():
    shop = ShopifySandbox(access_token=TOKEN, webhook_secret="s")
    ids = [place(shop)["id"] for _ in range(5)]
    with serve(shop.app) as url:
        resource = ShopifyResource(base_url=url, access_token=TOKEN, order_page_size=2)
        assert [o["id"] for o in resource.iter_orders()] == ids
        log = shop.requests()
        assert [r["path"] for r in log] == ["/admin/api/2026-10/graphql.json"] * 3  # GraphQL only, 3 pages
        order = resource.get_order(ids[0])
        assert order["name"] == "#1001" and _same_business_fields(order, shop.order(ids[0]))
        assert resource.get_order(1) is None
        assert len(list(resource.iter_variants())) == len(shop.catalog.variants)
        sku = shop.catalog.clean_variants()[0].shopify_sku
        assert [v["sku"] for v in resource.iter_variants(skus=[sku])] == [sku]
        resource.probe()
        with pytest.raises(ShopifyError) as refused:
            list(ShopifyResource(base_url=url, access_token="wrong").iter_orders())
        assert refused.value.status == 401
        with pytest.raises(ShopifyError):
            ShopifyResource(base_url=url, access_token="wrong").probe()
        resource.close()


def _same_business_fields(read: dict, stored: dict) -> bool:
    """The GraphQL read, mapped to REST shape, agrees with the sandbox's REST rendering."""
    keys = ("id", "name", "email", "created_at", "updated_at", "cancelled_at", "financial_status", "fulfillment_status",
            "currency", "total_price", "tags")
    line_keys = ("id", "sku", "quantity", "current_quantity", "variant_id", "product_id", "price", "requires_shipping",
                 "gift_card", "fulfillable_quantity")
    return ({k: read[k] for k in keys} == {k: stored[k] for k in keys}
            and [{k: li[k] for k in line_keys} for li in read["line_items"]]
            == [{k: li[k] for k in line_keys} for li in stored["line_items"]]
            and [s["code"] for s in read["shipping_lines"]] == [s["code"] for s in stored["shipping_lines"]]
            and read["shipping_address"]["zip"] == stored["shipping_address"]["zip"])


def test_shopify_connector_waits_out_throttling_by_query_cost():
    """Shopify throttles GraphQL by calculated cost, answering THROTTLED with the bucket's
    state; the connector waits until the bucket holds the requested cost again."""
    clock = StepClock(0.03)  # +3 points per bucket read at 100 points/s
    shop = ShopifySandbox(access_token=TOKEN, webhook_secret="s", graphql_points=10, graphql_restore_rate=100.0,
                          monotonic=clock)
    variants = shop.catalog.clean_variants()[:4]
    with serve(shop.app) as url:
        resource = ShopifyResource(base_url=url, access_token=TOKEN)
        for n, v in enumerate(variants):
            resource.set_inventory_levels([{"inventory_item_id": v.inventory_item_id, "location_id": shop.location_id,
                                            "available": 10 + n}])
    levels = {lv["inventory_item_id"]: lv["available"] for lv in shop.inventory_levels()}
    assert [levels[v.inventory_item_id] for v in variants] == [10, 11, 12, 13]
    assert shop.graphql.throttled, "the cost bucket never ran dry"
    assert all(t["requested"] > t["available"] for t in shop.graphql.throttled)


def test_create_fulfillment_is_idempotent_even_when_the_response_is_lost():
    shop = ShopifySandbox(access_token=TOKEN, webhook_secret="s")
    order = place(shop, quantities=(2, 1))
    first_line, second_line = (li["id"] for li in order["line_items"])
    lossy = LoseResponses(shop.app, method="POST", path_contains="/graphql.json", count=1, body_contains="fulfillmentCreate")
    with serve(lossy) as url:
        resource = ShopifyResource(base_url=url, access_token=TOKEN, max_attempts=4)
        result = resource.create_fulfillment(order["id"], {first_line: 1}, "AB123456789GB", "Royal Mail")
        assert lossy.lost == 1 and result.created
        assert result.fulfillment["tracking_number"] == "AB123456789GB"
        again = resource.create_fulfillment(order["id"], {first_line: 1}, "AB123456789GB", "Royal Mail")
        assert not again.created and again.fulfillment["id"] == result.fulfillment["id"]
        assert len(shop.fulfillments(order["id"])) == 1

        rest = resource.create_fulfillment(order["id"], {first_line: 1, second_line: 1}, "AB987654321GB", "Royal Mail")
        assert rest.created and shop.order(order["id"])["fulfillment_status"] == "fulfilled"
        with pytest.raises(ShopifyError):  # nothing left to ship on a new tracking number
            resource.create_fulfillment(order["id"], {first_line: 1}, "AB000000000GB", "Royal Mail")
        fetched = resource.get_fulfillment(order["id"], rest.fulfillment["id"])
        assert fetched["line_items"][0]["quantity"] == 1
        updated = resource.update_tracking(rest.fulfillment["id"], "AB111111111GB", "Royal Mail")
        assert updated["tracking_number"] == "AB111111111GB"
        assert len(shop.fulfillments(order["id"])) == 2


def test_create_fulfillment_recovers_from_a_timeout_without_a_second_fulfilment():
    shop = ShopifySandbox(access_token=TOKEN, webhook_secret="s")
    order = place(shop, quantities=(3,))
    line = order["line_items"][0]["id"]
    slow = LoseResponses(shop.app, method="POST", path_contains="/graphql.json", count=1, delay_s=1.0,
                         body_contains="fulfillmentCreate")
    with serve(slow) as url:
        resource = ShopifyResource(base_url=url, access_token=TOKEN, timeout_s=0.3)
        result = resource.create_fulfillment(order["id"], {line: 1}, None)  # no tracking: a partial, matched in-call
        assert result.created and result.fulfillment["tracking_number"] is None
    assert len(shop.fulfillments(order["id"])) == 1
    assert shop.order(order["id"])["line_items"][0]["fulfillable_quantity"] == 2


def test_inventory_levels_are_set_absolutely_and_read_back():
    shop = ShopifySandbox(access_token=TOKEN, webhook_secret="s")
    variants = shop.catalog.clean_variants()[:3]
    with serve(shop.app) as url:
        resource = ShopifyResource(base_url=url, access_token=TOKEN, page_size=10)
        wanted = [{"inventory_item_id": v.inventory_item_id, "location_id": shop.location_id, "available": n}
                  for v, n in zip(variants, (0, 7, 120))]
        assert [lv["available"] for lv in resource.set_inventory_levels(wanted)] == [0, 7, 120]
        resource.set_inventory_levels(wanted)  # repeating changes nothing
        levels = {lv["inventory_item_id"]: lv["available"] for lv in resource.iter_inventory_levels([shop.location_id])}
        assert len(levels) == len(shop.catalog.variants)
        assert [levels[v.inventory_item_id] for v in variants] == [0, 7, 120]
        adjusted = resource.adjust_inventory_level(variants[1].inventory_item_id, shop.location_id, -2)
        assert adjusted["available"] == 5


# ---------------------------------------------------------------------------- NetSuite


def test_ensure_sales_order_makes_exactly_one_order_under_faults():
    ns = netsuite_sandbox(faults=FaultConfig(error_rate=0.3, burst_429_rate=0.1, burst_429_length=2, retry_after_s=0.01))
    lossy = LoseResponses(ns.app, method="PUT", path_contains="/salesOrder/eid:", count=2)  # the upsert
    with serve(lossy) as url:
        resource = netsuite_resource(url, max_attempts=10)
        so_id, created = resource.ensure_sales_order("5900000000001", so_body(ns))
        assert created and lossy.lost >= 1
        again, created_again = resource.ensure_sales_order("5900000000001", so_body(ns))
        assert (again, created_again) == (so_id, False)
        other, _ = resource.ensure_sales_order("5900000000002", so_body(ns))
        assert other != so_id
    orders = ns.sales_orders()
    assert sorted(o["externalId"] for o in orders) == ["5900000000001", "5900000000002"]
    statuses = [r["status"] for r in ns.requests()]
    assert any(s >= 500 for s in statuses), "the faults were not exercised"


def test_ensure_sales_order_survives_a_timeout_with_one_order():
    ns = netsuite_sandbox()
    slow = LoseResponses(ns.app, method="PUT", path_contains="/salesOrder/eid:", count=1, delay_s=1.0)
    with serve(slow) as url:
        resource = netsuite_resource(url, timeout_s=0.3)
        so_id, created = resource.ensure_sales_order("EXT-1", so_body(ns))
        assert created
    assert [o["id"] for o in ns.sales_orders()] == [so_id]
    # the upsert was resent after the timeout and updated the same record: still one order
    puts = [r for r in ns.requests() if r["method"] == "PUT"]
    assert len(puts) == 2 and not [r for r in ns.requests() if r["method"] == "POST"]
    assert ns.sales_orders()[0]["externalId"] == "EXT-1"


def test_item_fulfilment_waits_for_commit_and_is_idempotent_per_shipment():
    ns = netsuite_sandbox(commit_delay_s=120)
    lossy = LoseResponses(ns.app, method="POST", path_contains="/!transform/itemFulfillment", count=1)
    with serve(lossy) as url:
        resource = netsuite_resource(url)
        so_id, _ = resource.ensure_sales_order("EXT-2", so_body(ns, quantities=(2, 1)))
        assert not resource.is_committed(so_id)
        with pytest.raises(NetSuiteError) as refused:
            resource.transform_to_item_fulfilment(so_id, [{"order_line": 1, "quantity": 1}], shipment_id="SHP-1")
        assert refused.value.code == "INVALID_INITIALIZE_REF" and refused.value.status == 400
        assert ns.tick(now=time.time() + 121) == [so_id]
        assert resource.is_committed(so_id)

        if_id, created = resource.transform_to_item_fulfilment(so_id, [{"order_line": 1, "quantity": 1}],
                                                               shipment_id="SHP-1", tracking_numbers=["AB1"])
        assert created and lossy.lost == 1
        assert resource.transform_to_item_fulfilment(so_id, [{"order_line": 1, "quantity": 1}], shipment_id="SHP-1") == (if_id, False)
        fulfilment = resource.get_item_fulfilment(if_id)
        # only the line asked for: the connector names every other line with itemreceive false
        assert [(ln["orderLine"], ln["quantity"]) for ln in fulfilment["item"]["items"]] == [(1, 1.0)]
        assert fulfilment["externalId"] == "SHP-1"
        with pytest.raises(NetSuiteError) as over:
            resource.transform_to_item_fulfilment(so_id, [{"order_line": 1, "quantity": 5}], shipment_id="SHP-2")
        assert over.value.code == "USER_ERROR"
        item_id = ns.catalog.master[1].internal_id
        resource.transform_to_item_fulfilment(so_id, [{"item_id": item_id, "quantity": 1}], shipment_id="SHP-3")
        resource.close_sales_order_lines(so_id, [1])
        assert resource.order_status(so_id) == "F"
    assert len(ns.item_fulfillments()) == 2


def test_bad_token_secret_raises_netsuite_error_with_its_code():
    ns = netsuite_sandbox()
    with serve(ns.app) as url:
        with pytest.raises(NetSuiteError) as refused:
            netsuite_resource(url, token_secret="not-the-secret").get_sales_order("10001")
        assert refused.value.status == 401 and refused.value.code == "INVALID_LOGIN"
        assert "Login Audit Trail" in refused.value.detail


def test_connector_backs_off_while_the_account_is_at_its_concurrency_limit():
    ns = netsuite_sandbox(concurrency_limit=1)
    with serve(ns.app) as url:
        ns.pause()
        blocker = threading.Thread(target=lambda: netsuite_resource(url).get_sales_order("10001"))
        blocker.start()
        wait_until(lambda: ns.in_flight == 1, message="a call holding the only slot")
        result: list = []
        caller = threading.Thread(target=lambda: result.append(list(netsuite_resource(url).iter_record_ids("customer"))))
        caller.start()
        wait_until(lambda: ns.rejected_for_concurrency >= 1, message="a 429 for the second call")
        ns.resume()
        caller.join(30)
        blocker.join(10)
    assert result == [["110"]]
    statuses = [r["status"] for r in ns.requests() if r["path"].endswith("/customer")]
    assert statuses[0] == 429 and statuses[-1] == 200


def test_item_master_keeps_skus_exact_and_returns_credits_are_idempotent():
    ns = netsuite_sandbox(commit_delay_s=0)
    with serve(ns.app) as url:
        resource = netsuite_resource(url)
        items = list(resource.iter_inventory_items(page_size=7))
        assert [i["itemId"] for i in items] == [i.sku for i in ns.catalog.master]
        assert {"000123", " BELT-BLK-90", "SCARF&SILK-RST"} <= {i["itemId"] for i in items}
        assert all(isinstance(i["id"], str) for i in items)

        so_id, _ = resource.ensure_sales_order("EXT-3", so_body(ns, quantities=(2,)))
        ns.tick()
        resource.transform_to_item_fulfilment(so_id, [{"order_line": 1, "quantity": 2}], shipment_id="SHP-9")
        ra = resource.create_return_authorisation("REFUND-1", {"item": {"items": [{"orderLine": 1, "quantity": 1}]}},
                                                  from_sales_order=so_id)
        assert ra[1] and resource.create_return_authorisation("REFUND-1", {}, from_sales_order=so_id) == (ra[0], False)
        memo = {"entity": {"id": "110"}, "item": {"items": [{"item": {"id": "900"}, "quantity": 1, "rate": 5.0}]}}
        cm = resource.create_credit_memo("REFUND-2", memo)
        assert resource.create_credit_memo("REFUND-2", memo) == (cm[0], False)
        assert resource.get_record("creditMemo", cm[0])["total"] == 5.0
        with pytest.raises(NetSuiteError) as invalid:
            resource.create_credit_memo("REFUND-3", {"entity": {"id": "110"}, "item": {"items": [{"item": {"id": "1"}}]}})
        assert invalid.value.code == "INVALID_CONTENT" and invalid.value.path == "item.items[0].item"
    assert len(ns.return_authorisations()) == 1 and len(ns.credit_memos()) == 1


def test_an_unreachable_netsuite_is_a_connector_error_after_the_retries():
    assert issubclass(NetSuiteError, ConnectorError) and issubclass(ShopifyError, ConnectorError)
    with pytest.raises(ConnectorError) as failed:
        NetSuiteResource(base_url="http://127.0.0.1:9", account_id=ACCOUNT, max_attempts=2, **CREDS).get_sales_order("1")
    assert failed.value.system == "netsuite" and "ConnectError" in str(failed.value)


# ---------------------------------------------------------------------------- NetSuite OAuth 2.0 M2M


def _key_pair(kind: str) -> tuple[str, str]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    key = ec.generate_private_key(ec.SECP256R1()) if kind == "ec" else rsa.generate_private_key(65537, 2048)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return private, public


M2M = {"m2m_client_id": "client-abc123", "m2m_certificate_id": "cert-7f3a"}


@pytest.mark.parametrize("kind, algorithm", [("ec", "ES256"), ("rsa", "PS256")])
def test_oauth2_m2m_gets_a_token_with_a_signed_assertion_and_renews_it_on_401(kind, algorithm):
    private, public = _key_pair(kind)
    ns = netsuite_sandbox(**M2M, m2m_public_key=public)
    with serve(ns.app) as url:
        resource = NetSuiteResource(base_url=url, account_id=ACCOUNT, auth_method="oauth2_m2m", client_id="client-abc123",
                                    certificate_id="cert-7f3a", private_key=private.replace("\n", "\\n"))
        resource.probe()
        so_id, created = resource.ensure_sales_order("M2M-1", so_body(ns))
        assert created and resource.get_sales_order(so_id)["externalId"] == "M2M-1"
        assert ns.tokens_issued == 1  # one token for every call of its hour
        auth = resource._http().auth
        assert auth.algorithm == algorithm
        import jwt
        header = jwt.get_unverified_header(auth.assertion())
        assert header == {"alg": algorithm, "kid": "cert-7f3a", "typ": "JWT"}
        claims = jwt.decode(auth.assertion(), public, algorithms=[algorithm], audience=url + "/services/rest/auth/oauth2/v1/token")
        assert claims["iss"] == "client-abc123" and claims["scope"] == "rest_webservices" and claims["exp"] - claims["iat"] <= 3600

        resource.close()  # Dagster closes the client after each step: the token outlives it
        resource.probe()
        assert ns.tokens_issued == 1

        ns.expire_access_tokens()  # the hour is over: NetSuite answers 401, the connector renews once
        assert resource.ensure_sales_order("M2M-1", so_body(ns)) == (so_id, False)
        assert ns.tokens_issued == 2
        bearer_401 = [r for r in ns.requests() if r["status"] == 401]
        assert len(bearer_401) == 1
        resource.close()
        # TBA still works on the same account (both methods are offered)
        assert netsuite_resource(url).get_sales_order(so_id)["id"] == so_id


def test_oauth2_m2m_refusals_are_auth_errors_naming_netsuites_code():
    private, public = _key_pair("ec")
    other, _ = _key_pair("ec")
    ns = netsuite_sandbox(**M2M, m2m_public_key=public)
    with serve(ns.app) as url:
        def attempt(**overrides) -> NetSuiteError:
            fields = {"client_id": "client-abc123", "certificate_id": "cert-7f3a", "private_key": private, **overrides}
            with pytest.raises(NetSuiteError) as refused:
                NetSuiteResource(base_url=url, account_id=ACCOUNT, auth_method="oauth2_m2m", **fields).probe()
            return refused.value

        wrong_key = attempt(private_key=other)
        assert (wrong_key.status, wrong_key.code) == (401, "invalid_grant") and not wrong_key.refused
        assert attempt(certificate_id="cert-unknown").code == "invalid_client"
        assert attempt(client_id="someone-else").code == "invalid_client"
        assert attempt(scope="restlets").code == "invalid_scope"
        missing = attempt(certificate_id="")
        assert "certificate_id" in str(missing)
    assert ns.sales_orders() == []


def test_ensure_sales_order_upserts_by_external_id_and_checks_it():
    ns = netsuite_sandbox()
    with serve(ns.app) as url:
        resource = netsuite_resource(url)
        so_id, created = resource.ensure_sales_order("5900000000009", so_body(ns))
        assert created
        puts = [r for r in ns.requests() if r["method"] == "PUT"]
        assert [r["path"] for r in puts] == ["/services/rest/record/v1/salesOrder/eid:5900000000009"]
        assert not [r for r in ns.requests() if r["method"] == "POST"]  # no create that could double
        with pytest.raises(ValueError):
            resource.ensure_sales_order("#1001 bad", so_body(ns))
    assert [o["id"] for o in ns.sales_orders()] == [so_id]


def test_probes_raise_the_connectors_own_error_when_the_system_is_unreachable():
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"  # nothing listens there
    with pytest.raises(ShopifyError):
        ShopifyResource(base_url=url, access_token=TOKEN, max_elapsed_s=2.0).probe()
    with pytest.raises(NetSuiteError):
        netsuite_resource(url, max_elapsed_s=2.0).probe()
    ns = netsuite_sandbox()
    with serve(ns.app) as served:
        assert netsuite_resource(served).probe() is None
        with pytest.raises(NetSuiteError) as refused:
            netsuite_resource(served, token_secret="wrong").probe()
        assert refused.value.status == 401


def test_refunds_read_over_graphql_classify_like_the_webhooks_shopify_sent():
    """Reconciliation lands GraphQL reads in the webhook's shape: the refund flow must
    read them the same way (kind, reasons, actions) as the refunds/create webhook."""
    from clarus_pipelines.domain.refunds import classify_refund

    shop = ShopifySandbox(access_token=TOKEN, webhook_secret="s")
    shipped = place(shop, quantities=(2, 1))
    first_line, second_line = (li["id"] for li in shipped["line_items"])
    shop.create_fulfillment(shipped["id"], {first_line: 2}, tracking_number="AB123456789GB", company="Royal Mail")
    webhooks = [
        shop.refund_order(shipped["id"], line_items=[{"line_item_id": first_line, "quantity": 1, "restock_type": "return"}]),
        shop.refund_order(shipped["id"], line_items=[{"line_item_id": second_line, "quantity": 1, "restock_type": "cancel"}],
                          shipping_full=True),
        shop.refund_order(shipped["id"], amount="2.50", note="goodwill"),
    ]
    with serve(shop.app) as url:
        resource = ShopifyResource(base_url=url, access_token=TOKEN)
        order = resource.get_order(shipped["id"])
        read = resource.list_refunds(shipped["id"])
        listed = next(o for o in resource.iter_orders() if o["id"] == shipped["id"])
    stored = shop.order(shipped["id"])
    assert [r["id"] for r in read] == [r["id"] for r in webhooks] == [r["id"] for r in listed["refunds"]]
    for webhook, graphql in zip(webhooks, read):
        want, got = classify_refund(webhook, order=stored), classify_refund(graphql, order=order)
        assert (got.kind, got.reasons, got.actions) == (want.kind, want.reasons, want.actions)
    assert {classify_refund(r, order=order).kind for r in read} >= {"RETURN", "CANCELLATION"}


def test_bulk_order_backfill_reads_what_paging_reads_within_shopifys_bulk_rules():
    shop = ShopifySandbox(access_token=TOKEN, webhook_secret="s")
    orders = [place(shop, quantities=(2, 1)) for _ in range(5)]
    first_line = orders[1]["line_items"][0]["id"]
    shop.create_fulfillment(orders[1]["id"], {first_line: 2}, tracking_number="AB123456789GB", company="Royal Mail")
    shop.refund_order(orders[1]["id"], line_items=[{"line_item_id": first_line, "quantity": 1, "restock_type": "return"}])
    shop.cancel_order(orders[3]["id"])
    with serve(shop.app) as url:
        resource = ShopifyResource(base_url=url, access_token=TOKEN)
        paged = list(resource.iter_orders())
        bulk = list(resource.iter_orders_bulk())
        assert bulk == paged and len(bulk) == 5
        assert [o["id"] for o in resource.iter_orders_bulk(updated_at_min="2999-01-01T00:00:00Z")] == []
        # the result file is fetched without the shop's token (a signed storage URL at Shopify)
        assert shop.graphql.bulk_downloads and not any(d["with_access_token"] for d in shop.graphql.bulk_downloads)
        # Shopify's bulk rules: at most five connections, nested at most two deep
        deep = "{ orders { edges { node { id fulfillmentOrders { edges { node { id lineItems { edges { node { id } } } } } } } } } }"
        with pytest.raises(ShopifyError, match="nested more than 2 levels"):
            list(resource.run_bulk_query(deep))
        with pytest.raises(ShopifyError, match="at least one connection"):
            list(resource.run_bulk_query("{ shop { name } }"))
