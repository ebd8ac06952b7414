"""The webhook receiver over real HTTP: verification, durable landing, dedupe, refusals."""

import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from clarus_pipelines.receiver import auth
from clarus_pipelines.receiver.app import Intake, WebhookSecrets, create_app
from clarus_pipelines.receiver.landing import LandingZone
from clarus_pipelines.sandbox.serving import serve_in_thread
from clarus_pipelines.settings import SANDBOX_POLICIES, load_policies
from payloads import OURS

SECRETS = WebhookSecrets(shopify="shh-shopify", clarus_token="clarus-url-token", netsuite="shh-netsuite")
TENANT = load_policies(SANDBOX_POLICIES).tenant
MAX_BODY = 64 * 1024


@pytest.fixture
def shopify_order() -> bytes:
    """A Shopify order in the real shape, as the body of an orders/create webhook (the order object itself)."""
    return json.dumps(OURS.order("order_python_api")).encode()


@pytest.fixture
def shopify_refund() -> bytes:
    return json.dumps(OURS.json("refund_legacy_restock")["refund"]).encode()


@pytest.fixture
def receiver(tmp_path):
    app = create_app(tmp_path / "landing", secrets=SECRETS, tenant=TENANT, max_body_bytes=MAX_BODY)
    served = serve_in_thread(app)
    with httpx.Client(base_url=served.url, timeout=10) as client:
        client.zone = app.state.zone
        client.intake = app.state.intake
        yield client
    served.stop()


def landings(zone: LandingZone, source: str | None = None) -> list:
    return zone.list_landings(source)


def post_shopify(client, body: bytes, webhook_id: str, topic: str = "orders/create", secret: str = SECRETS.shopify, **extra):
    headers = auth.shopify_headers(body, secret, topic=topic, webhook_id=webhook_id)
    headers.update(extra)
    return client.post("/webhooks/shopify", content=body, headers=headers)


# ---------------------------------------------------------------------------- Shopify


def test_published_hmac_vector_verifies(payloads):
    vector = payloads.json("hmac_vector")
    body = payloads.bytes("hmac_vector_body")
    assert auth.shopify_signature(body, vector["secret"]) == vector["expected_x_shopify_hmac_sha256"]
    headers = {"X-Shopify-Hmac-Sha256": vector["expected_x_shopify_hmac_sha256"]}
    assert auth.verify_shopify(body, headers, vector["secret"])
    assert not auth.verify_shopify(body + b" ", headers, vector["secret"])


def test_good_signature_is_landed_with_body_and_headers(receiver, shopify_order):
    response = post_shopify(receiver, shopify_order, "wh-1")
    assert response.status_code == 200
    doc = response.json()
    assert doc["status"] == "landed" and doc["topic"] == "orders/create"
    [ref] = landings(receiver.zone)
    assert ref.landing_id == doc["landing_id"]
    stored = receiver.zone.read(ref)
    assert stored.body == shopify_order
    assert stored.webhook_id == "wh-1" and stored.via == "webhook" and stored.known_topic
    # what replay needs to re-verify, and nothing else
    assert stored.headers["x-shopify-hmac-sha256"] == auth.shopify_signature(shopify_order, SECRETS.shopify)
    assert auth.verify_shopify(stored.body, stored.headers, SECRETS.shopify)
    assert "user-agent" not in stored.headers and "host" not in stored.headers


@pytest.mark.parametrize("case", ["wrong secret", "tampered body", "missing header", "garbage header"])
def test_bad_or_missing_signature_is_401_and_nothing_landed(receiver, shopify_order, case):
    headers = auth.shopify_headers(shopify_order, SECRETS.shopify, topic="orders/create", webhook_id="wh-bad")
    body = shopify_order
    if case == "wrong secret":
        headers["X-Shopify-Hmac-Sha256"] = auth.shopify_signature(body, "not-the-secret")
    elif case == "tampered body":
        total = json.loads(shopify_order)["total_price"].encode()  # the order's total, cut to a penny
        body = body.replace(total, b"0.01")
        assert body != shopify_order
    elif case == "missing header":
        del headers["X-Shopify-Hmac-Sha256"]
    else:
        headers["X-Shopify-Hmac-Sha256"] = "not base64 at all!"
    response = receiver.post("/webhooks/shopify", content=body, headers=headers)
    assert response.status_code == 401
    assert response.json()["status"] == "rejected"
    assert landings(receiver.zone) == [] and landings(receiver.zone, None) == []
    assert receiver.zone.list_landings(quarantined=True) == []
    rejections, _ = receiver.zone.read_rejections({})
    assert [(r.source, r.reason) for r in rejections] == [
        ("shopify", "missing_signature" if case == "missing header" else "bad_signature")
    ]


def test_same_webhook_id_twice_is_stored_once(receiver, shopify_order):
    first = post_shopify(receiver, shopify_order, "wh-dup")
    second = post_shopify(receiver, shopify_order, "wh-dup")
    assert first.status_code == second.status_code == 200
    assert first.json()["status"] == "landed" and second.json()["status"] == "duplicate"
    assert second.json()["landing_id"] == first.json()["landing_id"]
    assert len(landings(receiver.zone)) == 1


def test_concurrent_duplicate_posts_are_stored_once(receiver, shopify_order):
    barrier = threading.Barrier(12)

    def post(i):
        with httpx.Client(base_url=str(receiver.base_url), timeout=10) as client:
            barrier.wait()
            return post_shopify(client, shopify_order, f"wh-race-{i % 3}")

    with ThreadPoolExecutor(12) as pool:
        responses = list(pool.map(post, range(12)))
    assert all(r.status_code == 200 for r in responses)
    assert sorted(r.json()["status"] for r in responses).count("landed") == 3
    assert len(landings(receiver.zone)) == 3


def test_malformed_json_is_400_with_reason_and_quarantined(receiver):
    body = b'{"id": 1, "email": "someone@example.com",'
    response = post_shopify(receiver, body, "wh-broken")
    assert response.status_code == 400
    assert response.json()["status"] == "malformed"
    assert "malformed JSON" in response.json()["reason"]
    assert landings(receiver.zone) == []
    [ref] = receiver.zone.list_landings(quarantined=True)
    kept = receiver.zone.read(ref)
    assert kept.body == body and kept.quarantine_reason.startswith("malformed JSON")


def test_json_that_is_not_an_object_is_malformed(receiver):
    response = post_shopify(receiver, b"[1, 2]", "wh-list")
    assert response.status_code == 400 and "object" in response.json()["reason"]


def test_oversized_body_is_413_and_nothing_stored(receiver):
    big = b'{"pad": "' + b"x" * MAX_BODY + b'"}'
    response = post_shopify(receiver, big, "wh-big")
    assert response.status_code == 413
    # without Content-Length (chunked): the stream itself is cut off at the limit
    headers = auth.shopify_headers(big, SECRETS.shopify, topic="orders/create", webhook_id="wh-big-2")

    def chunks():
        for i in range(0, len(big), 8192):
            yield big[i:i + 8192]

    response = receiver.post("/webhooks/shopify", content=chunks(), headers=headers)
    assert response.status_code == 413
    assert landings(receiver.zone) == [] and receiver.zone.list_landings(quarantined=True) == []


def test_unknown_topic_is_stored_and_flagged(receiver, shopify_order):
    response = post_shopify(receiver, shopify_order, "wh-odd", topic="carts/create")
    assert response.status_code == 200
    assert response.json()["flag"] == "unknown_topic"
    [ref] = landings(receiver.zone)
    assert ref.topic_dir == "carts.create" and not receiver.zone.read(ref).known_topic


def test_personal_data_is_not_logged(receiver, payloads, caplog):
    shopify_order = json.dumps(payloads.order("order_python_api")).encode()
    caplog.set_level(logging.DEBUG)
    post_shopify(receiver, shopify_order, "wh-pii")
    post_shopify(receiver, shopify_order.replace(b"{", b"[", 1), "wh-pii-2")
    post_shopify(receiver, shopify_order, "wh-pii-3", topic="carts/create")
    text = caplog.text
    email, surname, street = payloads["pii"]
    assert email not in text and surname not in text and street not in text


# ---------------------------------------------------------------------------- Clarus


def clarus_body(goods_out_id: str = "2001", status: str = "COMPLETED", event: str = "completed") -> bytes:
    return json.dumps({
        "resource_name": "goods_out", "event": event,
        "data": {"id": goods_out_id, "reference": "#1001", "goods_out_status": {"id": "6", "code": status},
                 "updated_at": "2025-05-01T10:00:00Z"},
    }).encode()


def test_clarus_with_token_and_tenant_headers_is_landed_and_deduped_by_content(receiver):
    headers = auth.clarus_headers(TENANT)
    first = receiver.post(f"/webhooks/clarus/{SECRETS.clarus_token}", content=clarus_body(), headers=headers)
    assert first.status_code == 200 and first.json()["topic"] == "goods_out/completed"
    # same record and event with keys in another order: a duplicate
    reordered = json.dumps(dict(reversed(list(json.loads(clarus_body()).items())))).encode()
    again = receiver.post(f"/webhooks/clarus/{SECRETS.clarus_token}", content=reordered,
                          headers=auth.clarus_headers(TENANT, TENANT.clarus_automation_ids[1]))
    assert again.json()["status"] == "duplicate"
    other = receiver.post(f"/webhooks/clarus/{SECRETS.clarus_token}", content=clarus_body("2002"), headers=headers)
    assert other.json()["status"] == "landed"
    assert len(landings(receiver.zone, "clarus")) == 2
    stored = receiver.zone.read(landings(receiver.zone, "clarus")[0])
    assert stored.headers["x-claruswms-subdomain"] == TENANT.clarus_subdomain


def test_clarus_wrong_token_is_401(receiver):
    response = receiver.post("/webhooks/clarus/guessed-token", content=clarus_body(), headers=auth.clarus_headers(TENANT))
    assert response.status_code == 401 and response.json()["reason"] == "bad_token"
    assert landings(receiver.zone) == []


@pytest.mark.parametrize("header", ["X-ClarusWMS-Domain", "X-ClarusWMS-Subdomain", "X-ClarusWMS-Automation-ID",
                                    "X-ClarusWMS-Integration-ID", "X-ClarusWMS-API-Domain"])
def test_clarus_tenant_header_mismatch_or_missing_is_401(receiver, header):
    headers = auth.clarus_headers(TENANT)
    headers[header] = "someone-else"
    response = receiver.post(f"/webhooks/clarus/{SECRETS.clarus_token}", content=clarus_body(), headers=headers)
    assert response.status_code == 401
    assert response.json()["reason"] == f"tenant_mismatch:{header.lower()}"
    del headers[header]
    response = receiver.post(f"/webhooks/clarus/{SECRETS.clarus_token}", content=clarus_body(), headers=headers)
    assert response.status_code == 401 and response.json()["reason"] == f"missing_header:{header.lower()}"
    assert landings(receiver.zone) == []


# ---------------------------------------------------------------------------- NetSuite


def netsuite_post(client, body: bytes, event_id: str, *, secret: str = SECRETS.netsuite, timestamp: int | None = None):
    headers = auth.netsuite_headers(body, secret, topic="salesorder/update", event_id=event_id, timestamp=timestamp)
    return client.post("/webhooks/netsuite", content=body, headers=headers)


def test_netsuite_signed_is_landed_and_deduped_on_event_id(receiver, payloads):
    body = payloads.bytes("ns_sales_order_get")
    first = netsuite_post(receiver, body, "so-18-1")
    assert first.status_code == 200 and first.json()["status"] == "landed"
    assert netsuite_post(receiver, body, "so-18-1").json()["status"] == "duplicate"
    [ref] = landings(receiver.zone, "netsuite")
    assert receiver.zone.read(ref).body == body


@pytest.mark.parametrize("case,reason", [("wrong secret", "bad_signature"), ("stale", "stale_timestamp"),
                                         ("unsigned", "missing_signature")])
def test_netsuite_bad_signature_is_401(receiver, case, reason):
    body = b'{"id": "18"}'
    if case == "wrong secret":
        response = netsuite_post(receiver, body, "e1", secret="nope")
    elif case == "stale":
        response = netsuite_post(receiver, body, "e1", timestamp=int(time.time()) - 3600)
    else:
        response = receiver.post("/webhooks/netsuite", content=body, headers={"X-NetSuite-Event-Id": "e1"})
    assert response.status_code == 401 and response.json()["reason"] == reason
    assert landings(receiver.zone) == []


def test_netsuite_signing_recipe_matches_the_documented_example():
    # the worked example in docs/webhooks.md, which the SuiteScript author checks against
    # (issue 12: the recipe now signs the topic and the event id too, so the vector changed)
    body = b'{"id":"18","tranId":"SO1001"}'
    routing = {"topic": "salesorder/update", "event_id": "salesorder:18:2023-11-14T22:13:20Z"}
    signature = "4c0ffbe553b6fcae036051e08c5a0f5dbbe63661f056a04b30be4d3b94aa635f"
    assert auth.netsuite_signature(body, "example-secret", 1700000000, **routing) == signature
    headers = {"X-NetSuite-Timestamp": "1700000000", "X-NetSuite-Signature": signature,
               "X-NetSuite-Topic": routing["topic"], "X-NetSuite-Event-Id": routing["event_id"]}
    assert auth.verify_netsuite(body, headers, "example-secret", now=1700000100)
    assert auth.verify_netsuite(body, {**headers, "X-NetSuite-Signature": "sha256=" + signature.upper()},
                                "example-secret", now=1700000100)
    assert auth.verify_netsuite(body, headers, "example-secret", now=1700009999).reason == "stale_timestamp"
    assert auth.verify_netsuite(body, headers, "example-secret", now=1700009999, tolerance_s=None)


@pytest.mark.parametrize("changed", ["X-NetSuite-Topic", "X-NetSuite-Event-Id"])
def test_a_reposted_netsuite_request_with_another_topic_or_event_id_is_refused(receiver, changed):
    """A captured, still-fresh request re-posted as another event or another action lands nothing."""
    body = b'{"id": "18", "tranId": "SO1001"}'
    headers = auth.netsuite_headers(body, SECRETS.netsuite, topic="salesorder/update", event_id="salesorder:18:1")
    assert receiver.post("/webhooks/netsuite", content=body, headers=headers).json()["status"] == "landed"
    forged = {**headers, changed: "salesorder/delete" if changed == "X-NetSuite-Topic" else "salesorder:18:forged"}
    response = receiver.post("/webhooks/netsuite", content=body, headers=forged)
    assert response.status_code == 401 and response.json()["reason"] == "bad_signature"
    again = receiver.post("/webhooks/netsuite", content=body, headers=headers)  # the same request re-posted
    assert again.status_code == 200 and again.json()["status"] == "duplicate"
    assert len(landings(receiver.zone, "netsuite")) == 1


# ---------------------------------------------------------------------------- service


def test_healthz_reports_sources_and_counters(receiver, shopify_order):
    # issue 12: /healthz is liveness only; the counters stay inside the process (and the
    # per-source picture is `clarus-pipelines intake-status`), never shown to anyone who asks
    post_shopify(receiver, shopify_order, "wh-h")
    post_shopify(receiver, shopify_order, "wh-h", secret="wrong")
    doc = receiver.get("/healthz").json()
    assert doc["status"] == "ok"
    assert doc["sources"] == {"shopify": True, "clarus": True, "netsuite": True}
    assert "counters" not in doc
    counters = receiver.intake.counters()
    assert counters["shopify.landed"] == 1 and counters["shopify.rejected"] == 1


def test_source_without_a_secret_refuses_with_503(tmp_path, shopify_order):
    app = create_app(tmp_path / "landing", secrets=WebhookSecrets(), tenant=TENANT)
    with serve_in_thread(app) as served, httpx.Client(base_url=served.url) as client:
        response = post_shopify(client, shopify_order, "wh-x")
        assert response.status_code == 503
        assert client.get("/healthz").json()["sources"]["shopify"] is False
    assert app.state.zone.list_landings() == []


def test_landing_zone_failure_is_503_so_the_sender_retries(tmp_path, shopify_order, monkeypatch):
    zone = LandingZone(tmp_path / "landing")
    intake = Intake(zone, SECRETS, TENANT)

    def disk_full(data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(zone, "_write_tmp", disk_full)
    outcome = intake.accept("shopify", shopify_order, auth.shopify_headers(
        shopify_order, SECRETS.shopify, topic="orders/create", webhook_id="w"))
    assert outcome.status_code == 503 and outcome.reason == "landing zone: No space left on device"
    assert zone.list_landings() == []
