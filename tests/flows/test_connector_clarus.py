"""ClarusResource against the Clarus sandbox over loopback HTTP, with injected faults."""

from __future__ import annotations

from datetime import datetime, timezone

import dagster as dg
import pytest

from clarus_pipelines.connectors.clarus import ClarusRejected, ClarusResource
from clarus_pipelines.connectors.clarus_model import (
    GoodsOutStatus,
    build_goods_out_body,
    goods_out_line_add,
    goods_out_line_update,
)
from clarus_pipelines.connectors.http import ConnectorError
from clarus_pipelines.sandbox.faults import FaultConfig
from sandbox_helpers import clarus_credentials, served_clarus

ADDRESS = {"name": "Jane Doe", "address_1": "1 High Street", "postcode": "AB1 2CD", "country_code": "GB"}


def resource(url: str, **overrides) -> ClarusResource:
    client_id, client_secret = clarus_credentials()
    settings = {"base_url": url, "subdomain": "sandbox", "client_id": client_id, "client_secret": client_secret,
                "timeout_s": 5.0, "min_interval_s": 0.0, **overrides}
    return ClarusResource(**settings)


def order_body(reference: str, product_id: str, quantity: float = 1, **extra) -> dict:
    return build_goods_out_body(
        reference=reference, account_id=1, warehouse_id=1, expected_date_of_dispatch="2026-03-01T10:00:00Z",
        lines=[{"product_id": product_id, "quantity": quantity, "external_system_reference1": f"{reference}-L1"}],
        address=ADDRESS, external_system_reference1=f"shopify:{reference}", **extra,
    )


def creates(sandbox, path: str = "/api/goods_outs") -> list[dict]:
    """Create requests that reached the sandbox's logic (not answered by a fault)."""
    return [e for e in sandbox.requests(path_prefix=path) if e["method"] == "POST" and e["path"] == path and e["handled"]]


@pytest.fixture
def clarus():
    with served_clarus(seed=11, dispatch_after_s=40) as (sandbox, url):
        client = resource(url)
        yield sandbox, client
        client.close()


def test_token_is_cached_and_refreshed_once_on_401(clarus):
    sandbox, client = clarus
    sandbox.seed_product("T-1")
    for _ in range(3):
        assert [p["code"] for p in client.find_products(["T-1"])] == ["T-1"]
    sandbox.expire_tokens()
    assert client.find_product_by_sku("T-1")["code"] == "T-1"
    token_calls = [e for e in sandbox.requests() if e["path"] == "/oauth/token"]
    assert len(token_calls) == 2
    unauthorized = [e for e in sandbox.requests() if e["status"] == 401]
    assert len(unauthorized) == 1


def test_bad_credentials_fail_clearly():
    with served_clarus() as (_, url):
        client = resource(url, client_secret="not-the-secret")
        with pytest.raises(ConnectorError, match="token request refused"):
            client.find_products()
        client.close()


def test_products_keep_skus_exact_and_ensure_is_idempotent(clarus):
    sandbox, client = clarus
    product_id, created = client.ensure_product({"code": "000123", "description": "Widget", "stock_unit_type_id": 1, "barcode": "5012345678900"})
    assert created and client.ensure_product({"code": "000123", "description": "Widget", "stock_unit_type_id": 1}) == (product_id, False)
    with pytest.raises(ClarusRejected) as taken:
        client.create_product({"code": "000123", "description": "again", "stock_unit_type_id": 1})
    assert taken.value.symbol == "taken" and taken.value.code == 1001 and "already been taken" in taken.value.message
    client.update_product(product_id, {"barcode": "5012345678917"})  # description filled in from Clarus
    (product,) = client.find_products(["000123", "123"])
    assert product["code"] == "000123" and product["barcode"] == "5012345678917" and product["description"] == "Widget"
    assert len(sandbox.products()) == 1


def test_ensure_goods_out_is_idempotent_under_5xx_and_lost_responses(clarus):
    sandbox, client = clarus
    product_id = client.create_product({"code": "IDEM-1", "description": "Idem", "stock_unit_type_id": 1})

    sandbox.set_faults(FaultConfig(error_rate=0.5))
    ids = {client.ensure_goods_out(order_body("SO-1", product_id))[0] for _ in range(4)}
    sandbox.set_faults(FaultConfig())
    assert len(ids) == 1 and len(creates(sandbox)) == 1
    assert any(e["status"] in (500, 502, 503) for e in sandbox.requests())  # faults did happen

    # the create lands in Clarus but the answer is lost: a lookup, not a second create
    sandbox.lose_next_responses(1, status=502)
    go_id, created = client.ensure_goods_out(order_body("SO-2", product_id))
    assert created and len(creates(sandbox)) == 2
    assert [g["reference"] for g in sandbox.goods_outs()] == ["SO-1", "SO-2"]
    assert client.ensure_goods_out(order_body("SO-2", product_id)) == (go_id, False)
    assert len(creates(sandbox)) == 2


def test_ensure_goods_out_survives_a_timeout_after_the_request_landed():
    with served_clarus() as (sandbox, url):
        client = resource(url, timeout_s=0.4)
        product_id = client.create_product({"code": "SLOW-1", "description": "Slow", "stock_unit_type_id": 1})
        sandbox.lose_next_responses(1, status=504, delay_s=1.0)
        go_id, created = client.ensure_goods_out(order_body("SO-9", product_id))
        assert created and len(sandbox.goods_outs()) == 1 and sandbox.goods_outs()[0]["id"] == go_id
        assert len(creates(sandbox)) == 1
        # timeouts injected before Clarus sees the request: retried, still one goods out
        sandbox.set_faults(FaultConfig(timeout_rate=0.5, timeout_s=0.6))
        go_id2, _ = client.ensure_goods_out(order_body("SO-10", product_id))
        sandbox.set_faults(FaultConfig())
        assert [g["reference"] for g in sandbox.goods_outs()] == ["SO-9", "SO-10"] and go_id2 != go_id
        client.close()


def test_422_raises_clarus_rejected_with_code_and_message(clarus):
    _, client = clarus
    with pytest.raises(ClarusRejected) as rejected:
        client.ensure_goods_out(order_body("SO-BAD", "999999"))
    assert rejected.value.code == 1002 and rejected.value.symbol == "not_found"
    assert "product 999999 does not exist" in rejected.value.message
    assert rejected.value.details[0]["source"].endswith("product_id") and rejected.value.status == 422


def test_429_retry_after_is_honoured():
    faults = FaultConfig(burst_429_rate=0.25, burst_429_length=2, retry_after_s=0.25)
    with served_clarus(seed=3, faults=faults) as (sandbox, url):
        client = resource(url)
        made = []
        while len([e for e in sandbox.requests() if e["status"] == 429]) < 3:
            assert len(made) < 40, "the configured 429 bursts never happened"
            made.append(client.ensure_product({"code": f"R-{len(made)}", "description": "r", "stock_unit_type_id": 1})[0])
        log = sandbox.requests()
        for i, entry in enumerate(log[:-1]):
            if entry["status"] == 429:
                assert log[i + 1]["time"] - entry["time"] >= 0.24  # waited what Retry-After asked
        assert len(sandbox.products()) == len(made) == len(set(made))
        client.close()


def test_update_goods_out_lines_resends_only_what_did_not_land(clarus):
    sandbox, client = clarus
    product_id = client.create_product({"code": "L-1", "description": "Lines", "stock_unit_type_id": 1})
    go_id, _ = client.ensure_goods_out(order_body("SO-20", product_id, 2))
    line_id = client.get_goods_out(go_id)["lines"][0]["id"]
    sandbox.lose_next_responses(1, status=502, path_prefix=f"/api/goods_outs/{go_id}")
    client.update_goods_out(go_id, {"data": {"type": "goods_outs", "attributes": {"lines_changes": [
        goods_out_line_update(line_id, order_quantity=5),
        goods_out_line_add(product_id, 1, external_system_reference1="SO-20-L2"),
    ]}}})
    lines = client.get_goods_out(go_id)["lines"]
    assert [(line["external_system_reference1"], line["order_quantity"]) for line in lines] == [("SO-20-L1", 5.0), ("SO-20-L2", 1.0)]
    patches = [e for e in sandbox.requests() if e["method"] == "PATCH" and e["handled"]]
    assert len(patches) == 2 and len(patches[1]["body"]["data"]["attributes"]["lines_changes"]) == 1  # the ADD was not resent


def test_cancel_is_idempotent_and_refused_after_dispatch(clarus):
    sandbox, client = clarus
    product_id = client.create_product({"code": "C-1", "description": "Cancel", "stock_unit_type_id": 1})
    sandbox.set_stock("C-1", available=10)
    keep_id, _ = client.ensure_goods_out(order_body("SO-30", product_id))
    cancel_id, _ = client.ensure_goods_out(order_body("SO-31", product_id))
    assert client.cancel_goods_out(cancel_id)["goods_out_status"]["code"] == "CANCELLED"
    assert client.cancel_goods_out(cancel_id)["goods_out_status"]["code"] == "CANCELLED"
    sandbox.advance(60)
    with pytest.raises(ClarusRejected) as refused:
        client.cancel_goods_out(keep_id)
    assert refused.value.symbol == "invalid_state" and "COMPLETED" in refused.value.message


def test_reads_page_through_everything_with_filters(clarus):
    sandbox, client = clarus
    product_ids = [client.create_product({"code": f"G-{n}", "description": "g", "stock_unit_type_id": 1}) for n in range(3)]
    for n in range(5):
        client.ensure_goods_out(order_body(f"SO-4{n}", product_ids[n % 3]))
    since = sandbox.now()
    sandbox.advance(10)  # all PENDING (updated after `since`)
    client.ensure_goods_out(order_body("SO-49", product_ids[0]))

    assert [g["reference"] for g in client.iter_goods_outs(page_size=2)] == ["SO-40", "SO-41", "SO-42", "SO-43", "SO-44", "SO-49"]
    assert [g["reference"] for g in client.iter_goods_outs(status=GoodsOutStatus.DRAFT)] == ["SO-49"]
    assert [g["reference"] for g in client.iter_goods_outs(status=["pending"], page_size=2)] == ["SO-40", "SO-41", "SO-42", "SO-43", "SO-44"]
    assert len(list(client.iter_goods_outs(updated_since=datetime.fromtimestamp(since + 1, tz=timezone.utc)))) == 6
    assert len(list(client.iter_goods_outs(updated_since=datetime.fromtimestamp(sandbox.now() + 1, tz=timezone.utc)))) == 0
    assert [g["reference"] for g in client.iter_goods_outs(sku="G-1")] == ["SO-41", "SO-44"]
    assert [g["reference"] for g in client.iter_goods_outs(external_system_reference1="shopify:SO-42")] == ["SO-42"]
    assert client.find_goods_out_by_reference("SO-404") is None
    assert {b["product"]["code"] for b in client.iter_stock_balances(page_size=1)} <= {"G-0", "G-1", "G-2"}
    assert len(list(client.iter_goods_out_lines(page_size=4))) == 6


def test_shipments_tracking_and_returns(clarus):
    sandbox, client = clarus
    product_id = client.create_product({"code": "S-1", "description": "Ship", "stock_unit_type_id": 1})
    sandbox.set_stock("S-1", available=5)
    carrier_id, service_id = client.carrier_service_ids()[("ROYAL_MAIL", "TRACKED_48")]
    go_id, _ = client.ensure_goods_out(order_body("SO-60", product_id, 2, carrier_id=carrier_id, carrier_service_id=service_id))
    sandbox.advance(60)
    (shipment,) = client.iter_shipments(goods_out_id=go_id)
    assert shipment["carrier"]["code"] == "ROYAL_MAIL" and shipment["tracking_number"].endswith("GB")
    assert shipment["goods_out"]["external_system_reference1"] == "shopify:SO-60" and shipment["lines"][0]["quantity"] == 2.0
    client.update_shipment(shipment["id"], {"tracking_number": "TT123456785GB"})
    assert next(client.iter_shipments(goods_out_id=go_id))["tracking_number"] == "TT123456785GB"
    assert any(t["subtype"] == "DESP" for t in client.iter_transactions(goods_out_id=go_id))

    receipt_id, created = client.create_goods_in_receipt(reference="RMA-60", account_id=1, warehouse_id=1,
                                                         lines=[{"product_id": product_id, "quantity": 1, "external_system_reference1": "refund-1"}])
    assert created and client.create_goods_in_receipt(reference="RMA-60", account_id=1, warehouse_id=1,
                                                      lines=[{"product_id": product_id, "quantity": 1}]) == (receipt_id, False)
    sandbox.receive_goods_in_receipt(receipt_id)
    (receipt,) = client.iter_goods_in_receipts(status="completed")
    assert receipt["reference"] == "RMA-60" and receipt["lines"][0]["received_quantity"] == 1.0


def test_resource_works_inside_dagster_with_env_secrets(monkeypatch):
    with served_clarus() as (sandbox, url):
        sandbox.seed_product("DG-1")

        @dg.asset
        def clarus_skus(clarus: ClarusResource) -> list[str]:
            return [p["code"] for p in clarus.iter_products()]

        client_id, _ = clarus_credentials()
        result = dg.materialize([clarus_skus], resources={"clarus": ClarusResource(
            base_url=url, subdomain="sandbox", client_id=client_id, client_secret=dg.EnvVar("CLARUS_CLIENT_SECRET"), min_interval_s=0.0)})
        assert result.success and result.output_for_node("clarus_skus") == ["DG-1"]
