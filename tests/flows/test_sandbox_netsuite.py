"""The NetSuite sandbox over real loopback HTTP: TBA auth, records, commit, transforms, limits."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest

from clarus_pipelines.connectors.netsuite import NetSuiteTBA
from clarus_pipelines.receiver.auth import verify_netsuite
from clarus_pipelines.sandbox.netsuite import NetSuiteSandbox
from clarus_pipelines.sandbox.serving import serve_in_thread
from sandbox_helpers import WebhookRecorder, wait_until

ACCOUNT = "1234567_SB1"
CREDS = {"consumer_key": "ck-test-1234", "consumer_secret": "cs-test", "token_id": "tk-test-1234", "token_secret": "ts-test"}
RECORDS = "/services/rest/record/v1"


def tba(**overrides: str) -> NetSuiteTBA:
    c = {**CREDS, **overrides}
    return NetSuiteTBA(overrides.get("account_id", ACCOUNT), c["consumer_key"], c["consumer_secret"], c["token_id"], c["token_secret"])


@contextmanager
def served_netsuite(**kwargs) -> Iterator[tuple[NetSuiteSandbox, httpx.Client]]:
    sandbox = NetSuiteSandbox(account_id=ACCOUNT, **{**CREDS, **kwargs})
    served = serve_in_thread(sandbox.app)
    client = httpx.Client(base_url=served.url, auth=tba(), timeout=10)
    try:
        yield sandbox, client
    finally:
        client.close()
        sandbox.resume()
        served.stop()
        sandbox.close()


def load(payloads, case: str) -> dict:
    return payloads.json(case)


def item_ids(sandbox: NetSuiteSandbox, n: int) -> list[str]:
    return [item.internal_id for item in sandbox.catalog.master[:n]]


def create(client: httpx.Client, body: dict) -> str:
    response = client.post(f"{RECORDS}/salesOrder", json=body)
    assert response.status_code == 204, response.text
    assert response.content == b""
    return response.headers["Location"].rsplit("/", 1)[-1]


def order_body(sandbox: NetSuiteSandbox, external_id: str, quantities=(2, 1, 1, 3)) -> dict:
    ids = item_ids(sandbox, len(quantities))
    return {"entity": {"id": "110"}, "externalId": external_id, "otherrefnum": f"#{external_id}",
            "item": {"items": [{"item": {"id": i}, "quantity": q, "rate": 10.0} for i, q in zip(ids, quantities)]}}


def test_every_call_needs_a_valid_tba_signature():
    with served_netsuite() as (sandbox, client):
        url = f"{client.base_url}{RECORDS}/inventoryItem"
        unsigned = httpx.get(url)
        assert unsigned.status_code == 401
        body = unsigned.json()
        assert body["status"] == 401 and body["title"] == "Unauthorized"
        assert body["o:errorDetails"][0]["o:errorCode"] == "INVALID_LOGIN"
        assert httpx.get(url, auth=tba(token_secret="wrong")).status_code == 401
        assert httpx.get(url, auth=tba(consumer_secret="wrong")).status_code == 401
        assert httpx.get(url, auth=tba(account_id="OTHER")).status_code == 401
        assert client.get(f"{RECORDS}/inventoryItem", params={"limit": 5}).status_code == 200
        signed = client.build_request("GET", url)
        replay_auth = next(tba().auth_flow(signed)).headers["Authorization"]
        assert httpx.get(url, headers={"Authorization": replay_auth}).status_code == 200
        assert httpx.get(url, headers={"Authorization": replay_auth}).status_code == 401  # nonce reused
        assert [r["status"] for r in sandbox.requests()] == [401, 401, 401, 401, 200, 200, 401]


def test_sales_order_create_answers_204_location_and_external_id_is_unique(payloads):
    with served_netsuite() as (sandbox, client):
        body = load(payloads, "ns_sales_order_complex_request")
        body["item"]["items"][0]["item"]["id"] = int(item_ids(sandbox, 1)[0])
        body["externalId"] = "5900000000001"
        so_id = create(client, body)
        got = client.get(f"{RECORDS}/salesOrder/{so_id}").json()
        published = load(payloads, "ns_sales_order_get")
        for key in ("links", "id", "tranId", "orderStatus", "status", "entity", "currency", "subsidiary", "item",
                    "createdDate", "lastModifiedDate", "tranDate", "total", "subtotal", "shippingAddress"):
            assert key in got, key
            if key in published:
                assert type(got[key]) is type(published[key]), key
        assert got["item"] == {"links": [{"rel": "self", "href": f"{client.base_url}{RECORDS}/salesOrder/{so_id}/item"}]}
        assert got["entity"]["refName"] == "Anonymous Customer" and got["memo"] == payloads["ns_memo"]
        assert got["otherRefNum"] == payloads["ns_otherrefnum"] and got["orderStatus"] == "A"

        by_eid = client.get(f"{RECORDS}/salesOrder/eid:5900000000001", params={"expandSubResources": "true"}).json()
        assert by_eid["id"] == so_id
        assert by_eid["item"]["items"][0]["description"] == payloads["ns_description"]

        duplicate = client.post(f"{RECORDS}/salesOrder", json=body)
        assert duplicate.status_code == 400
        error = duplicate.json()
        assert set(error) == {"type", "title", "status", "o:errorDetails"}
        assert error["o:errorDetails"][0]["o:errorCode"] == "DUP_RCRD"
        assert len(sandbox.sales_orders()) == 1

        missing = client.get(f"{RECORDS}/salesOrder/eid:nope")
        assert missing.status_code == 404
        assert missing.json()["o:errorDetails"][0]["o:errorCode"] == "NONEXISTENT_ID"
        bad_item = client.post(f"{RECORDS}/salesOrder", json={"entity": {"id": "110"}, "item": {"items": [{"item": {"id": 9999}, "quantity": 1}]}})
        assert bad_item.status_code == 400
        assert bad_item.json()["o:errorDetails"][0]["o:errorPath"] == "item.items[0].item"


def test_orders_commit_after_the_delay_and_only_committed_orders_fulfil(payloads):
    with served_netsuite(commit_delay_s=60) as (sandbox, client):
        body = order_body(sandbox, "SO-1")
        body["orderStatus"] = load(payloads, "ns_sales_order_preapproved_request")["orderStatus"]
        so_id = create(client, body)
        created_at = sandbox.sales_orders()[0]["createdDate"]
        transform = load(payloads, "ns_transform_item_fulfillment")
        transform["externalId"] = "SHIP-1"

        refused = client.post(f"{RECORDS}/salesOrder/{so_id}/!transform/itemFulfillment", json=transform)
        assert refused.status_code == 400
        assert refused.json()["o:errorDetails"][0]["o:errorCode"] == "INVALID_INITIALIZE_REF"
        assert sandbox.tick(now=time.time() + 30) == []
        assert client.get(f"{RECORDS}/salesOrder/{so_id}").json()["orderStatus"] == "A"
        assert sandbox.tick(now=time.time() + 61) == [so_id]
        assert client.get(f"{RECORDS}/salesOrder/{so_id}").json()["orderStatus"] == "B"
        assert created_at

        accepted = client.post(f"{RECORDS}/salesOrder/{so_id}/!transform/itemFulfillment", json=transform)
        assert accepted.status_code == 204
        if_id = accepted.headers["Location"].rsplit("/", 1)[-1]
        fulfilment = client.get(f"{RECORDS}/itemFulfillment/{if_id}", params={"expandSubResources": "true"}).json()
        # line 1: 1 of 2 as asked; line 4 left out; lines 2 and 3 not named: NetSuite fulfils them in full
        assert [(ln["orderLine"], ln["quantity"]) for ln in fulfilment["item"]["items"]] == [(1, 1.0), (2, 1.0), (3, 1.0)]
        assert fulfilment["createdFrom"]["id"] == so_id and fulfilment["externalId"] == "SHIP-1"
        so = client.get(f"{RECORDS}/salesOrder/{so_id}", params={"expandSubResources": "true"}).json()
        assert so["orderStatus"] == "D"
        assert [ln["quantityFulfilled"] for ln in so["item"]["items"]] == [1.0, 1.0, 1.0, 0.0]

        over = client.post(f"{RECORDS}/salesOrder/{so_id}/!transform/itemFulfillment",
                           json={"item": {"items": [{"orderLine": 4, "quantity": 4}, {"orderLine": 1, "itemreceive": False}]}})
        assert over.status_code == 400 and "only 3 remain" in over.json()["o:errorDetails"][0]["detail"]
        again = client.post(f"{RECORDS}/salesOrder/{so_id}/!transform/itemFulfillment", json=transform)
        assert again.status_code == 400  # the shipment id is the fulfilment's external id: once only
        assert again.json()["o:errorDetails"][0]["o:errorCode"] == "DUP_RCRD"
        rest = client.post(f"{RECORDS}/salesOrder/{so_id}/!transform/itemFulfillment", json={"externalId": "SHIP-2"})
        assert rest.status_code == 204
        assert client.get(f"{RECORDS}/salesOrder/{so_id}").json()["orderStatus"] == "F"
        nothing_left = client.post(f"{RECORDS}/salesOrder/{so_id}/!transform/itemFulfillment", json={})
        assert nothing_left.json()["o:errorDetails"][0]["o:errorCode"] == "INVALID_INITIALIZE_REF"


def test_patch_closes_and_adds_lines(payloads):
    with served_netsuite(commit_delay_s=0) as (sandbox, client):
        so_id = create(client, order_body(sandbox, "SO-2", quantities=(1, 2)))
        sandbox.tick()
        close = load(payloads, "ns_close_line_patch")
        assert client.patch(f"{RECORDS}/salesOrder/{so_id}", json=close).status_code == 204
        add = load(payloads, "ns_add_line_patch")
        add["item"]["items"][0]["item"]["id"] = int(item_ids(sandbox, 3)[2])
        assert client.patch(f"{RECORDS}/salesOrder/{so_id}", json=add).status_code == 204
        lines = client.get(f"{RECORDS}/salesOrder/{so_id}", params={"expandSubResources": "true"}).json()["item"]["items"]
        assert [(ln["line"], ln["isClosed"], ln["quantity"]) for ln in lines] == [(1, True, 1.0), (2, False, 2.0), (3, False, 2.0)]
        ship = client.post(f"{RECORDS}/salesOrder/{so_id}/!transform/itemFulfillment", json={"externalId": "S-1"})
        fulfilled = sandbox.item_fulfillments()[0]["item"]["items"]
        assert ship.status_code == 204 and [ln["orderLine"] for ln in fulfilled] == [2, 3]  # the closed line never ships
        assert client.get(f"{RECORDS}/salesOrder/{so_id}").json()["orderStatus"] == "F"


def test_inventory_items_page_like_netsuite_and_keep_sku_strings():
    with served_netsuite() as (sandbox, client):
        total = len(sandbox.catalog.master)
        first = client.get(f"{RECORDS}/inventoryItem", params={"limit": 10}).json()
        assert (first["count"], first["offset"], first["totalResults"], first["hasMore"]) == (10, 0, total, True)
        assert set(first["items"][0]) == {"links", "id"}
        rels = {link["rel"]: link["href"] for link in first["links"]}
        assert rels["next"].endswith("limit=10&offset=10") and "self" in rels
        last = client.get(f"{RECORDS}/inventoryItem", params={"limit": 10, "offset": 40}).json()
        assert last["hasMore"] is False and last["count"] == total - 40
        by_sku = {}
        for item in sandbox.catalog.master:
            got = client.get(f"{RECORDS}/inventoryItem/{item.internal_id}", params={"fields": "itemId,upcCode"}).json()
            assert set(got) == {"links", "id", "itemId", "upcCode"}
            by_sku[got["itemId"]] = got
        assert {"000123", "000456", "TEE#OLV-M", " BELT-BLK-90", "MUG-ECR-350 "} <= set(by_sku)
        assert client.get(f"{RECORDS}/inventoryItem", params={"limit": 0}).status_code == 400


def test_more_requests_in_flight_than_the_account_limit_get_429():
    with served_netsuite(concurrency_limit=3) as (sandbox, client):
        sandbox.pause()
        results: list[int] = []
        url = f"{client.base_url}{RECORDS}/inventoryItem"

        def call() -> None:
            results.append(httpx.get(url, auth=tba(), timeout=10).status_code)

        threads = [threading.Thread(target=call) for _ in range(3)]
        for thread in threads:
            thread.start()
        wait_until(lambda: sandbox.in_flight == 3, message="three calls in flight")
        refused = httpx.get(url, auth=tba(), timeout=10)
        assert refused.status_code == 429
        assert refused.json()["o:errorDetails"][0]["o:errorCode"] == "CONCURRENCY_LIMIT_EXCEEDED"
        sandbox.resume()
        for thread in threads:
            thread.join(10)
        assert results == [200, 200, 200] and sandbox.rejected_for_concurrency == 1
        assert httpx.get(url, auth=tba(), timeout=10).status_code == 200


def test_returns_and_credit_memos():
    with served_netsuite(commit_delay_s=0) as (sandbox, client):
        so_id = create(client, order_body(sandbox, "SO-3", quantities=(2,)))
        early = client.post(f"{RECORDS}/salesOrder/{so_id}/!transform/returnAuthorization", json={"externalId": "RMA-0"})
        assert early.status_code == 400
        sandbox.tick()
        client.post(f"{RECORDS}/salesOrder/{so_id}/!transform/itemFulfillment", json={"externalId": "S-3"})
        too_many = client.post(f"{RECORDS}/salesOrder/{so_id}/!transform/returnAuthorization",
                               json={"externalId": "RMA-1", "item": {"items": [{"orderLine": 1, "quantity": 3}]}})
        assert too_many.status_code == 400
        ra = client.post(f"{RECORDS}/salesOrder/{so_id}/!transform/returnAuthorization",
                         json={"externalId": "RMA-1", "item": {"items": [{"orderLine": 1, "quantity": 1}]}})
        assert ra.status_code == 204
        record = client.get(f"{RECORDS}/returnAuthorization/eid:RMA-1", params={"expandSubResources": "true"}).json()
        assert record["createdFrom"]["id"] == so_id and record["item"]["items"][0]["quantity"] == 1.0
        memo = {"entity": {"id": "110"}, "externalId": "CM-1", "memo": "goodwill",
                "item": {"items": [{"item": {"id": "900"}, "quantity": 1, "rate": 5.0}]}}
        assert client.post(f"{RECORDS}/creditMemo", json=memo).status_code == 204
        assert client.post(f"{RECORDS}/creditMemo", json=memo).status_code == 400
        assert [m["total"] for m in sandbox.credit_memos()] == [5.0]
        assert client.post(f"{RECORDS}/itemFulfillment", json={}).status_code == 400


def test_item_receipts_receive_returned_goods_against_the_return_authorisation():
    with served_netsuite(commit_delay_s=0) as (sandbox, client):
        so_id = create(client, order_body(sandbox, "SO-5", quantities=(3, 1)))
        sandbox.tick()
        client.post(f"{RECORDS}/salesOrder/{so_id}/!transform/itemFulfillment", json={"externalId": "S-5"})
        made = client.post(f"{RECORDS}/salesOrder/{so_id}/!transform/returnAuthorization", json={
            "externalId": "RMA-5", "item": {"items": [{"orderLine": 1, "quantity": 2}, {"orderLine": 2, "quantity": 1}]}})
        ra_id = made.headers["Location"].rsplit("/", 1)[-1]

        def ra() -> dict:
            return client.get(f"{RECORDS}/returnAuthorization/{ra_id}", params={"expandSubResources": "true"}).json()

        assert ra()["orderStatus"] == "B" and [ln["quantityReceived"] for ln in ra()["item"]["items"]] == [0.0, 0.0]
        receive = f"{RECORDS}/returnAuthorization/{ra_id}/!transform/itemReceipt"
        over = client.post(receive, json={"externalId": "IR-1", "item": {"items": [{"orderLine": 1, "quantity": 3}]}})
        assert over.status_code == 400
        error = over.json()
        assert set(error) == {"type", "title", "status", "o:errorDetails"}
        assert error["o:errorDetails"][0]["o:errorCode"] == "USER_ERROR" and "only 2 remain" in error["o:errorDetails"][0]["detail"]
        assert sandbox.item_receipts() == [] and ra()["orderStatus"] == "B"

        part = client.post(receive, json={"externalId": "IR-1", "memo": "part back", "item": {"items": [
            {"orderLine": 1, "quantity": 1, "itemReceive": True}, {"orderLine": 2, "itemReceive": False}]}})
        assert part.status_code == 204 and part.content == b""
        ir_id = part.headers["Location"].rsplit("/", 1)[-1]
        assert part.headers["Location"].endswith(f"{RECORDS}/itemReceipt/{ir_id}")
        receipt = client.get(f"{RECORDS}/itemReceipt/eid:IR-1", params={"expandSubResources": "true"}).json()
        assert receipt["id"] == ir_id and receipt["memo"] == "part back" and receipt["tranId"].startswith("IR")
        assert receipt["createdFrom"]["id"] == ra_id
        assert receipt["createdFrom"]["links"][0]["href"].endswith(f"/returnAuthorization/{ra_id}")
        assert [(ln["orderLine"], ln["quantity"], ln["itemReceive"]) for ln in receipt["item"]["items"]] == [(1, 1.0, True)]
        assert ra()["orderStatus"] == "D"  # Partially Received
        assert [ln["quantityReceived"] for ln in ra()["item"]["items"]] == [1.0, 0.0]
        again = client.post(receive, json={"externalId": "IR-1"})
        assert again.status_code == 400 and again.json()["o:errorDetails"][0]["o:errorCode"] == "DUP_RCRD"

        rest = client.post(receive, json={"externalId": "IR-2"})  # lines not named: received in full
        assert rest.status_code == 204
        assert ra()["orderStatus"] == "F"  # Pending Refund
        assert [ln["quantityReceived"] for ln in ra()["item"]["items"]] == [2.0, 1.0]
        second = next(r for r in sandbox.item_receipts() if r["externalId"] == "IR-2")
        assert [(ln["orderLine"], ln["quantity"]) for ln in second["item"]["items"]] == [(1, 1.0), (2, 1.0)]
        nothing_left = client.post(receive, json={"externalId": "IR-3"})
        assert nothing_left.status_code == 400
        assert nothing_left.json()["o:errorDetails"][0]["o:errorCode"] == "INVALID_INITIALIZE_REF"
        assert len(sandbox.item_receipts()) == 2
        assert client.post(f"{RECORDS}/itemReceipt", json={}).status_code == 400
        assert client.post(f"{RECORDS}/salesOrder/{so_id}/!transform/itemReceipt", json={}).status_code == 400
        assert not [w for w in sandbox.webhooks if w["topic"].startswith("itemreceipt")]

        standalone = client.post(f"{RECORDS}/returnAuthorization", json={
            "entity": {"id": "110"}, "externalId": "RMA-6", "item": {"items": [{"item": {"id": item_ids(sandbox, 1)[0]}, "quantity": 2}]}})
        alone_id = standalone.headers["Location"].rsplit("/", 1)[-1]
        receive_alone = f"{RECORDS}/returnAuthorization/{alone_id}/!transform/itemReceipt"
        assert client.post(receive_alone, json={"item": {"items": [{"orderLine": 1, "quantity": 2}]}}).status_code == 204
        alone = client.get(f"{RECORDS}/returnAuthorization/{alone_id}", params={"expandSubResources": "true"}).json()
        assert alone["orderStatus"] == "F" and alone["item"]["items"][0]["quantityReceived"] == 2.0


def test_webhooks_are_signed_for_the_receiver():
    with WebhookRecorder() as recorder:
        with served_netsuite(commit_delay_s=0, webhook_url=f"{recorder.url}/webhooks/netsuite",
                             webhook_secret="ns-secret") as (sandbox, client):
            so_id = create(client, order_body(sandbox, "SO-4", quantities=(1,)))
            sandbox.tick()
            received = wait_until(lambda: len(recorder.snapshot()) >= 2 and recorder.snapshot(), message="webhooks")
    assert [r["headers"]["x-netsuite-topic"] for r in received] == ["salesorder/create", "salesorder/update"]
    for delivery in received:
        assert verify_netsuite(delivery["raw"], delivery["headers"], "ns-secret")
    assert received[1]["body"]["record"]["id"] == so_id and received[1]["body"]["record"]["orderStatus"] == "B"
    assert not verify_netsuite(received[0]["raw"], received[0]["headers"], "wrong")


@pytest.mark.parametrize("status", ["C", "H"])
def test_cancelled_or_closed_orders_cannot_change(status):
    with served_netsuite(commit_delay_s=0) as (sandbox, client):
        so_id = create(client, order_body(sandbox, f"SO-{status}", quantities=(1,)))
        if status == "C":
            assert client.patch(f"{RECORDS}/salesOrder/{so_id}", json={"orderStatus": "C"}).status_code == 204
        else:
            sandbox.tick()
            client.patch(f"{RECORDS}/salesOrder/{so_id}", json={"item": {"items": [{"line": 1, "isclosed": True}]}})
        assert client.get(f"{RECORDS}/salesOrder/{so_id}").json()["orderStatus"] == status
        refused = client.patch(f"{RECORDS}/salesOrder/{so_id}", json={"memo": "late change"})
        assert refused.status_code == 400
