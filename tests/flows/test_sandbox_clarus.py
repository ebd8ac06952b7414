"""The Clarus sandbox behaves like Clarus for the subset we use, over real loopback HTTP."""

from __future__ import annotations

import importlib.util
import json
import random
import re
from pathlib import Path

import httpx
import pytest

from clarus_pipelines.connectors.clarus_model import (
    ERROR_CODES,
    WEBHOOK_HEADERS,
    GoodsOutStatus,
    build_goods_out_body,
    goods_out_line_add,
    goods_out_line_destroy,
    goods_out_line_update,
)
from clarus_pipelines.sandbox.clarus import ClarusSandbox, generate_tracking_number
from clarus_pipelines.sandbox.faults import FaultConfig
from clarus_pipelines.sandbox.openapi import SUBSET_PATH, response_problems
from clarus_pipelines.settings import SANDBOX_POLICIES, load_policies
from sandbox_helpers import WebhookRecorder, clarus_credentials, served_clarus, wait_until

REPO = Path(__file__).resolve().parents[2]
FULL_SPEC = REPO.parent / "shared" / "clarus" / "clarus-api.json"
ADDRESS = {"name": "Jane Doe", "address_1": "1 High Street", "postcode": "AB1 2CD", "country_code": "GB"}


class Api:
    """Minimal raw client: the tests here check the wire, not the connector."""

    def __init__(self, base_url: str, subdomain: str = "sandbox"):
        self.http = httpx.Client(base_url=base_url, timeout=10)
        client_id, client_secret = clarus_credentials()
        token = self.http.post("/oauth/token", data={"grant_type": "client_credentials", "client_id": client_id,
                                                      "client_secret": client_secret}).json()["access_token"]
        self.headers = {"Authorization": f"Bearer {token}", "X-Clarus-Subdomain": subdomain}

    def post(self, path: str, body: dict | None = None) -> httpx.Response:
        return self.http.post(path, json=body, headers=self.headers)

    def patch(self, path: str, body: dict) -> httpx.Response:
        return self.http.patch(path, json=body, headers=self.headers)

    def gql(self, query: str, variables: dict | None = None) -> dict:
        response = self.post("/graphql", {"query": query, "variables": variables or {}})
        assert response.status_code == 200, response.text
        return response.json()

    def product(self, sku: str) -> int:
        response = self.post("/api/products", {"data": {"type": "products", "attributes": {"code": sku, "description": sku, "stock_unit_type_id": 1}}})
        assert response.status_code == 200, response.text
        return response.json()["data"]["id"]

    def goods_out(self, reference: str, lines: list[tuple[int, float]], **attrs) -> httpx.Response:
        body = build_goods_out_body(reference=reference, account_id=1, warehouse_id=1, expected_date_of_dispatch="2026-03-01T10:00:00Z",
                                    lines=[{"product_id": p, "quantity": q, "external_system_reference1": f"{reference}-{i}"} for i, (p, q) in enumerate(lines)],
                                    address=ADDRESS, **attrs)
        return self.post("/api/goods_outs", body)


@pytest.fixture
def clarus():
    with served_clarus(seed=7, dispatch_after_s=40) as (sandbox, url):
        api = Api(url)
        yield sandbox, api
        api.http.close()


# ----------------------------------------------------------------------------- the spec subset


@pytest.mark.skipif(not FULL_SPEC.exists(), reason="the full Clarus spec lives outside the repo")
def test_committed_subset_is_exactly_what_the_extractor_makes():
    spec_module = importlib.util.spec_from_file_location("extract_clarus_spec", REPO / "scripts" / "extract_clarus_spec.py")
    extractor = importlib.util.module_from_spec(spec_module)
    spec_module.loader.exec_module(extractor)
    subset = extractor.extract_subset(json.loads(FULL_SPEC.read_text(encoding="utf-8")))
    extractor.validate_document(subset)
    assert extractor.render(subset) == SUBSET_PATH.read_text(encoding="utf-8")
    assert "/graphql#ListStockBalances" in subset["paths"] and "ErrorResponse" in subset["components"]["schemas"]


# ----------------------------------------------------------------------------- auth


def test_token_and_subdomain_required_on_every_call(clarus):
    sandbox, api = clarus
    body = {"query": "{ carriers { all { edges { node { id } } } } }"}
    assert api.http.post("/graphql", json=body).status_code == 401
    assert api.http.post("/graphql", json=body, headers={"Authorization": "Bearer nope", "X-Clarus-Subdomain": "sandbox"}).status_code == 401
    no_subdomain = api.http.post("/graphql", json=body, headers={"Authorization": api.headers["Authorization"]})
    assert no_subdomain.status_code == 401 and "X-Clarus-Subdomain" in no_subdomain.json()["error"]
    other_tenant = api.http.post("/graphql", json=body, headers={**api.headers, "X-Clarus-Subdomain": "someone-else"})
    assert other_tenant.status_code == 401
    assert api.post("/graphql", body).status_code == 200

    client_id, _ = clarus_credentials()
    bad = api.http.post("/oauth/token", data={"grant_type": "client_credentials", "client_id": client_id, "client_secret": "wrong"})
    assert bad.status_code == 401 and bad.json()["error"] == "invalid_client"
    basic = api.http.post("/oauth/token", data={"grant_type": "client_credentials"}, auth=clarus_credentials())
    assert basic.status_code == 200 and basic.json()["token_type"] == "Bearer"

    sandbox.expire_tokens()
    assert api.post("/graphql", body).status_code == 401


# ----------------------------------------------------------------------------- writes


def test_invalid_body_is_422_in_clarus_error_shape(clarus):
    _, api = clarus
    response = api.post("/api/goods_outs", {"data": {"type": "goods_outs", "attributes": {"account_id": "one", "reference": "R" * 51}}})
    assert response.status_code == 422
    body = response.json()
    assert response_problems("POST", "/api/goods_outs", 422, body) == []  # the spec's ErrorResponse
    sources = {e["source"] for e in body["errors"]}
    assert {"data.attributes.account_id", "data.attributes.goods_out_type", "data.attributes.expected_date_of_dispatch",
            "data.attributes.reference"} <= sources
    assert all(e["symbol"] == "validation_failed" and e["code"] == ERROR_CODES["validation_failed"] for e in body["errors"])

    not_json = api.http.post("/api/goods_outs", content=b"{nope", headers={**api.headers, "Content-Type": "application/json"})
    assert not_json.status_code == 422 and not_json.json()["errors"][0]["symbol"] == "bad_request"


def test_duplicate_reference_unknown_product_and_bad_address_refused(clarus):
    sandbox, api = clarus
    product_id = api.product("000123")
    assert api.goods_out("SO-1", [(product_id, 1)]).status_code == 200
    duplicate = api.goods_out("SO-1", [(product_id, 1)])
    assert duplicate.status_code == 422
    assert duplicate.json()["errors"][0] == {"code": ERROR_CODES["taken"], "symbol": "taken", "source": "data.attributes.reference",
                                             "details": "reference 'SO-1' has already been taken"}

    unknown = api.goods_out("SO-2", [(999_999, 1)])
    assert unknown.status_code == 422 and unknown.json()["errors"][0]["symbol"] == "not_found"

    body = build_goods_out_body(reference="SO-3", account_id=1, expected_date_of_dispatch="2026-03-01T10:00:00Z",
                                lines=[{"product_id": product_id, "quantity": 1}], address={**ADDRESS, "country_code": "UK", "postcode": None})
    bad_country = api.post("/api/goods_outs", body)
    assert bad_country.status_code == 422 and bad_country.json()["errors"][0]["source"].endswith("country_code")
    no_address = api.post("/api/goods_outs", {**body, "data": {k: v for k, v in body["data"].items() if k != "relationships"}})
    assert no_address.json()["errors"][0]["source"] == "data.relationships.address"

    assert [g["reference"] for g in sandbox.goods_outs()] == ["SO-1"]
    taken_sku = api.post("/api/products", {"data": {"type": "products", "attributes": {"code": "000123", "description": "x", "stock_unit_type_id": 1}}})
    assert taken_sku.status_code == 422 and taken_sku.json()["errors"][0]["symbol"] == "taken"
    assert [p["code"] for p in sandbox.products()] == ["000123"]  # leading zeros kept


def test_lines_change_while_pending_and_not_after_allocation(clarus):
    sandbox, api = clarus
    a, b = api.product("SKU-A"), api.product("SKU-B")
    sandbox.set_stock("SKU-A", available=50)
    sandbox.set_stock("SKU-B", available=50)
    created = api.goods_out("SO-10", [(a, 1), (b, 2)]).json()
    go_id, (line_a, line_b) = created["data"]["id"], [line["id"] for line in created["included"]]
    sandbox.advance(10)  # PENDING
    header = {k: created["data"]["attributes"][k] for k in ("goods_out_type", "account_id", "reference", "expected_date_of_dispatch")}
    change = {"data": {"type": "goods_outs", "attributes": {**header, "lines_changes": [
        goods_out_line_update(line_a, order_quantity=4), goods_out_line_destroy(line_b),
        goods_out_line_add(b, 3, external_system_reference1="SO-10-2")]}}}
    assert api.patch(f"/api/goods_outs/{go_id}", change).status_code == 200
    lines = sandbox.goods_out(go_id)["lines"]
    assert [(line["product"]["code"], line["order_quantity"]) for line in lines] == [("SKU-A", 4.0), ("SKU-B", 3.0)]

    sandbox.advance(10)  # ALLOCATED
    assert sandbox.goods_out(go_id)["goods_out_status"]["code"] == "ALLOCATED"
    late = api.patch(f"/api/goods_outs/{go_id}", {"data": {"type": "goods_outs", "attributes": {**header, "lines_changes": [goods_out_line_destroy(line_a)]}}})
    assert late.status_code == 422 and late.json()["errors"][0]["symbol"] == "invalid_state"
    balance = next(b for b in sandbox.stock_balances() if b["product"]["code"] == "SKU-A")
    assert (balance["available"], balance["allocated"]) == (46.0, 4.0)


# ----------------------------------------------------------------------------- warehouse behaviour


def test_status_progression_shipment_tracking_and_cancel_rules(clarus):
    sandbox, api = clarus
    pid = api.product("TRACK-1")
    sandbox.set_stock("TRACK-1", available=10)
    dpd, next_day = sandbox.carrier_ids()[("DPD", "NEXT_DAY")]
    go = api.goods_out("SO-20", [(pid, 2)], carrier_id=dpd, carrier_service_id=next_day).json()["data"]
    cancel_me = api.goods_out("SO-21", [(pid, 3)]).json()["data"]
    created_at = sandbox.now()

    seen = []
    for offset in (5, 10, 20, 30, 40):  # steps of dispatch_after_s / 4 = 10 s
        sandbox.tick(created_at + offset)
        seen.append(sandbox.goods_out(go["id"])["goods_out_status"]["code"])
    assert seen == ["DRAFT", "PENDING", "ALLOCATED", "PICK", "COMPLETED"]

    record = sandbox.goods_out(go["id"])
    (shipment,) = record["shipments"]
    pattern = load_policies(SANDBOX_POLICIES).tracking_patterns["DPD"]
    assert shipment["carrier"]["code"] == "DPD" and re.fullmatch(pattern, shipment["tracking_number"])
    assert record["actual_date_of_dispatch"] and record["lines"][0]["dispatch_quantity"] == 2.0
    assert sandbox.goods_out(cancel_me["id"])["goods_out_status"]["code"] == "COMPLETED"

    refused = api.post(f"/api/goods_outs/{go['id']}/cancel")
    assert refused.status_code == 422 and "cannot be cancelled" in refused.json()["errors"][0]["details"]

    third = api.goods_out("SO-22", [(pid, 4)]).json()["data"]
    sandbox.advance(20)  # allocated: stock held
    assert next(b for b in sandbox.stock_balances() if b["product"]["code"] == "TRACK-1")["allocated"] == 4.0
    ok = api.post(f"/api/goods_outs/{third['id']}/cancel")
    assert ok.status_code == 200 and ok.json()["data"]["attributes"]["goods_out_status_id"] == GoodsOutStatus.CANCELLED
    balance = next(b for b in sandbox.stock_balances() if b["product"]["code"] == "TRACK-1")
    assert (balance["available"], balance["allocated"], balance["on_hand"]) == (5.0, 0.0, 5.0)
    assert api.post(f"/api/goods_outs/{third['id']}/cancel").status_code == 422  # already cancelled


def test_partial_stock_gives_part_allocated_then_part_dispatch_then_completion(clarus):
    sandbox, api = clarus
    pid = api.product("SHORT-1")
    sandbox.set_stock("SHORT-1", available=1)
    go_id = api.goods_out("SO-30", [(pid, 3)]).json()["data"]["id"]
    statuses = [c["to"] for c in sandbox.advance(60)]
    assert statuses == ["PENDING", "PART_ALLOCATED", "PART"]
    record = sandbox.goods_out(go_id)
    assert [s["lines"][0]["quantity"] for s in record["shipments"]] == [1.0]
    assert record["lines"][0]["short_status"] == "SHORT"

    sandbox.set_stock("SHORT-1", available=5)
    assert [c["to"] for c in sandbox.advance(40)] == ["ALLOCATED", "PICK", "COMPLETED"]
    record = sandbox.goods_out(go_id)
    assert [s["lines"][0]["quantity"] for s in record["shipments"]] == [1.0, 2.0]
    assert record["lines"][0]["dispatch_quantity"] == 3.0


def test_tracking_numbers_follow_each_carriers_format():
    patterns = load_policies(SANDBOX_POLICIES).tracking_patterns
    rng = random.Random(3)
    for carrier in ("ROYAL_MAIL", "DPD", "DHL", "UPS", "EVRI", "FEDEX"):
        for _ in range(50):
            number = generate_tracking_number(carrier, rng)
            assert re.fullmatch(patterns[carrier], number), (carrier, number)
            if carrier == "ROYAL_MAIL":  # UPU S10 check digit
                digits = [int(c) for c in number[2:10]]
                check = 11 - sum(d * w for d, w in zip(digits, (8, 6, 4, 2, 3, 5, 9, 7))) % 11
                assert int(number[10]) == {10: 0, 11: 5}.get(check, check)
            if carrier == "DHL":
                assert int(number[:9]) % 7 == int(number[9])


def test_missing_tracking_rate_leaves_shipments_without_tracking():
    with served_clarus(dispatch_after_s=4, missing_tracking_rate=1.0) as (sandbox, url):
        sandbox.seed_product("NT-1", available=5)
        api = Api(url)
        api.goods_out("SO-40", [(int(sandbox.products()[0]["id"]), 1)])
        sandbox.advance(10)
        (shipment,) = sandbox.shipments()
        assert shipment["tracking_number"] is None and all(p["tracking_number"] is None for p in shipment["packages"])
        api.http.close()


def test_goods_in_receipt_receives_stock(clarus):
    sandbox, api = clarus
    pid = api.product("RET-1")
    before = sandbox.set_stock("RET-1", available=0)["on_hand"]
    created = api.post("/api/goods_in_receipts", {"data": {"type": "goods_in_receipts", "attributes": {
        "account_id": 1, "warehouse_id": 1, "reference": "RMA-1",
        "lines_changes": [{"type": "ADD", "attributes": {"product_id": pid, "expected_quantity": 2}}]}}})
    assert created.status_code == 200
    receipt = sandbox.receive_goods_in_receipt(created.json()["data"]["id"])
    assert receipt["status"] == "completed" and receipt["lines"][0]["received_quantity"] == 2.0
    assert next(b for b in sandbox.stock_balances() if b["product"]["code"] == "RET-1")["on_hand"] == before + 2
    dup = api.post("/api/goods_in_receipts", {"data": {"type": "goods_in_receipts", "attributes": {"account_id": 1, "warehouse_id": 1, "reference": "RMA-1"}}})
    assert dup.status_code == 422


# ----------------------------------------------------------------------------- GraphQL


def test_graphql_pages_with_first_after_and_filters(clarus):
    sandbox, api = clarus
    for n in range(7):
        api.product(f"P-{n:03d}")
    query = """query($filter: ProductsFilterType, $first: Int, $after: String) {
      products { all(filter: $filter, first: $first, after: $after) {
        edges { cursor node { id code } } pageInfo { hasNextPage endCursor } totalCount } } }"""
    codes, after, pages = [], None, 0
    while True:
        page = api.gql(query, {"first": 3, "after": after})["data"]["products"]["all"]
        pages += 1
        codes += [e["node"]["code"] for e in page["edges"]]
        if not page["pageInfo"]["hasNextPage"]:
            break
        after = page["pageInfo"]["endCursor"]
    assert pages == 3 and codes == [f"P-{n:03d}" for n in range(7)]

    chosen = api.gql(query, {"filter": {"code": {"in": ["P-001", "P-005"]}}})["data"]["products"]["all"]
    assert [e["node"]["code"] for e in chosen["edges"]] == ["P-001", "P-005"] and chosen["totalCount"] == 2

    cutoff = sandbox.now()
    sandbox.advance(1)
    api.product("P-new")
    recent = api.gql(query, {"filter": {"updated_at": {"from": datetime_iso(cutoff + 0.5)}}})["data"]["products"]["all"]
    assert [e["node"]["code"] for e in recent["edges"]] == ["P-new"]

    bad = api.gql("{ goods_outs { all { edges { node { no_such_field } } } } }")
    assert "data" not in bad and "no_such_field" in bad["errors"][0]["message"]
    bad_cursor = api.gql(query, {"after": "garbage"})
    assert "invalid cursor" in bad_cursor["errors"][0]["message"]


def datetime_iso(ts: float) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat().replace("+00:00", "Z")


def test_graphql_goods_out_filters_by_status_reference_external_ref_and_sku(clarus):
    sandbox, api = clarus
    a, b = api.product("F-A"), api.product("F-B")
    api.goods_out("SO-50", [(a, 1)], external_system_reference1="shopify:50")
    api.goods_out("SO-51", [(b, 1)], external_system_reference1="shopify:51")
    sandbox.advance(10)
    api.goods_out("SO-52", [(a, 1), (b, 1)])
    query = """query($filter: GoodsOutsFilterType) { goods_outs { all(filter: $filter) { edges { node { reference goods_out_status { code } } } } } }"""

    def refs(filter: dict) -> list[str]:
        return [e["node"]["reference"] for e in api.gql(query, {"filter": filter})["data"]["goods_outs"]["all"]["edges"]]

    assert refs({"goods_out_status_code": {"eq": "PENDING"}}) == ["SO-50", "SO-51"]
    assert refs({"goods_out_status_code": {"in": ["DRAFT"]}}) == ["SO-52"]
    assert refs({"reference": {"eq": "SO-51"}}) == ["SO-51"]
    assert refs({"external_system_reference1": {"eq": "shopify:50"}}) == ["SO-50"]
    assert refs({"product_code": {"eq": "F-B"}}) == ["SO-51", "SO-52"]


# ----------------------------------------------------------------------------- webhooks and inspection


def test_webhooks_carry_full_record_and_the_five_identity_headers():
    tenant = {"clarus_domain": "acme.clarus-wms.test", "clarus_api_domain": "api.acme.test", "clarus_automation_ids": ["501", "502"],
              "clarus_integration_id": "77"}
    with WebhookRecorder() as receiver, served_clarus(dispatch_after_s=4, webhook_url=receiver.url + "/webhooks/clarus/TOKEN",
                                                      tenant=tenant, faults=FaultConfig(duplicate_webhook_rate=1.0)) as (sandbox, url):
        api = Api(url)
        sandbox.seed_product("WH-1", available=3)
        go_id = api.goods_out("SO-60", [(int(sandbox.products()[0]["id"]), 1)]).json()["data"]["id"]
        sandbox.advance(5)
        assert sandbox.webhook_sender.flush(10)
        received = receiver.snapshot()
        events = [(w["body"]["resource_name"], w["body"]["event"]) for w in received]
        assert ("goods_out", "created") in events and ("goods_out", "completed") in events and ("stock_balance", "updated") in events
        assert events.count(("goods_out", "completed")) == 2  # duplicate delivery injected
        for webhook in received:
            headers = {k.lower(): v for k, v in webhook["headers"].items()}
            assert all(h.lower() in headers for h in WEBHOOK_HEADERS)
            assert headers["x-claruswms-domain"] == "acme.clarus-wms.test"
            assert headers["x-claruswms-api-domain"] == "api.acme.test"
            assert headers["x-claruswms-subdomain"] == "sandbox"
            assert headers["x-claruswms-integration-id"] == "77"
            assert headers["x-claruswms-automation-id"] in {"501", "502"}
            assert webhook["path"] == "/webhooks/clarus/TOKEN"
        completed = next(w["body"]["data"] for w in received if w["body"]["event"] == "completed")
        assert completed["id"] == str(go_id) and completed["shipments"][0]["tracking_number"]
        assert completed["delivery_address"]["postcode"] == "AB1 2CD" and completed["lines"][0]["dispatch_quantity"] == 1.0

        before = len(receiver.snapshot())
        adjust = httpx.post(url + "/_sandbox/stock", json={"sku": "WH-1", "available": 40})
        assert adjust.status_code == 200 and adjust.json()["available"] == 40.0
        wait_until(lambda: len(receiver.snapshot()) > before, message="stock webhook")
        stock = receiver.snapshot()[-1]["body"]
        assert stock["resource_name"] == "stock_balance" and stock["data"]["available"] == 40.0
        api.http.close()


def test_inspection_api_is_never_faulted_and_logs_requests_in_order():
    with served_clarus(faults=FaultConfig(error_rate=1.0)) as (sandbox, url):
        client_id, client_secret = clarus_credentials()
        token = httpx.post(url + "/oauth/token", data={"grant_type": "client_credentials", "client_id": client_id, "client_secret": client_secret})
        assert token.status_code in (500, 502, 503)
        assert httpx.get(url + "/_sandbox/health").json()["ok"] is True
        assert httpx.post(url + "/_sandbox/faults", json={"error_rate": 0.0}).json()["error_rate"] == 0.0
        token = httpx.post(url + "/oauth/token", data={"grant_type": "client_credentials", "client_id": client_id, "client_secret": client_secret})
        assert token.status_code == 200
        log = httpx.get(url + "/_sandbox/requests").json()
        assert [(e["path"], e["status"], e["handled"]) for e in log] == [("/oauth/token", log[0]["status"], False), ("/oauth/token", 200, True)]
        assert log[0]["seq"] < log[1]["seq"] and log[0]["time"] <= log[1]["time"]
        assert log[1]["body"] == {"grant_type": "client_credentials", "client_id": client_id, "client_secret": "<redacted>"}

        assert httpx.post(url + "/_sandbox/advance", json={"seconds": 5}).status_code == 200
        assert httpx.post(url + "/_sandbox/reset").json() == {"ok": True}
        assert httpx.get(url + "/_sandbox/requests").json() == []
        assert httpx.get(url + "/_sandbox/unknown").status_code == 404


def test_sandbox_requires_positive_dispatch_time_and_keeps_time_monotonic():
    with pytest.raises(ValueError):
        ClarusSandbox(dispatch_after_s=0)
    sandbox = ClarusSandbox()
    start = sandbox.now()
    sandbox.tick(start - 100)  # a past time never moves the clock back
    assert sandbox.now() >= start
    with pytest.raises(ValueError):
        sandbox.advance(-1)


def test_auto_tick_moves_orders_on_when_served():
    with served_clarus(dispatch_after_s=0.4, auto_tick=True, tick_interval_s=0.05) as (sandbox, url):
        api = Api(url)
        sandbox.seed_product("AUTO-1", available=2)
        go_id = api.goods_out("SO-70", [(int(sandbox.products()[0]["id"]), 1)]).json()["data"]["id"]
        assert sandbox.ticking
        wait_until(lambda: sandbox.goods_out(go_id)["goods_out_status"]["code"] == "COMPLETED", timeout=10, message="dispatch")
        assert sandbox.goods_out(go_id)["shipments"]
        api.http.close()
    assert not sandbox.ticking  # stopped with the server's lifespan
