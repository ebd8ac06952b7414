"""The traffic generator (deterministic, every failure case) and the composed sandbox server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone

import httpx
import pytest

from clarus_pipelines.connectors.clarus import ClarusResource
from clarus_pipelines.connectors.clarus_model import build_goods_out_body
from clarus_pipelines.connectors.netsuite import NetSuiteResource
from clarus_pipelines.connectors.shopify import ShopifyResource
from clarus_pipelines.domain.skus import clean_sku
from clarus_pipelines.sandbox.clarus import ClarusSandbox
from clarus_pipelines.sandbox.netsuite import NetSuiteSandbox
from clarus_pipelines.sandbox.server import SandboxConfigError, SandboxSecrets, start_sandbox
from clarus_pipelines.sandbox.serving import serve_in_thread
from clarus_pipelines.sandbox.shopify import ShopifySandbox
from clarus_pipelines.sandbox.traffic import CASES, CLEAN, TrafficGenerator, TrafficProfile, case_counts
from clarus_pipelines.settings import SANDBOX_POLICIES, load_policies
from sandbox_helpers import WebhookRecorder, wait_until

POLICIES = load_policies(SANDBOX_POLICIES)
NS_CREDS = {"consumer_key": "ck-traffic-1", "consumer_secret": "cs", "token_id": "tk-traffic-1", "token_secret": "ts"}


def sandboxes(commit_delay_s: float = 30.0) -> tuple[ShopifySandbox, NetSuiteSandbox]:
    return (ShopifySandbox(access_token="t", webhook_secret="s"),
            NetSuiteSandbox(commit_delay_s=commit_delay_s, **NS_CREDS))


def generator(seed: int = 0, profile: TrafficProfile | None = None, clarus: ClarusSandbox | None = None, **kw) -> TrafficGenerator:
    shop, ns = sandboxes(**kw)
    return TrafficGenerator(shop, ns, clarus, profile or TrafficProfile.every_case_equally(), seed)


def _norm(text: str | None) -> str:
    return "".join((text or "").split()).lower()


def ship_method_mapped(line: dict) -> bool:
    return any((rule.code and _norm(rule.code) == _norm(line.get("code"))) or (rule.title and _norm(rule.title) == _norm(line.get("title")))
               for rule in POLICIES.ship_methods)


def master_skus(shop: ShopifySandbox) -> set[str]:
    return {clean_sku(i.sku, POLICIES.sku_cleaning) for i in shop.catalog.master}


def comparable(order: dict) -> dict:
    keep = ("id", "name", "email", "shipping_address", "total_price", "tags")
    return {**{k: order[k] for k in keep},
            "lines": [(li["sku"], li["quantity"], li["price"]) for li in order["line_items"]],
            "shipping": [(s["code"], s["title"], s["price"]) for s in order["shipping_lines"]]}


def test_the_same_seed_makes_the_same_orders_and_another_seed_does_not():
    one, two, other = generator(seed=11), generator(seed=11), generator(seed=12)
    made = [one.generate_orders(40), two.generate_orders(40), other.generate_orders(40)]
    strip = [[{k: v for k, v in o.to_dict().items() if k != "created_at"} for o in batch] for batch in made]
    assert strip[0] == strip[1] and strip[0] != strip[2]
    assert [comparable(o) for o in one.shopify.orders()] == [comparable(o) for o in two.shopify.orders()]
    assert [comparable(o) for o in one.shopify.orders()] != [comparable(o) for o in other.shopify.orders()]


def test_profile_shares_drive_the_case_mix():
    with pytest.raises(ValueError):
        TrafficProfile(sku_unknown=0.7, refund_return=0.5)
    gen = generator(seed=3, profile=TrafficProfile.only(sku_unknown=0.5))
    counts = case_counts(gen.generate_orders(200))
    assert set(counts) == {"sku_unknown", CLEAN}
    assert 70 <= counts["sku_unknown"] <= 130
    everything = case_counts(generator(seed=4).generate_orders(300))
    assert set(everything) == set(CASES) | {CLEAN}


def test_each_placed_case_has_the_flaw_it_names():
    gen = generator(seed=5)
    shop, ns = gen.shopify, gen.netsuite
    master = master_skus(shop)
    made = {case: gen.generate_orders(1, case=case)[0] for case in (CLEAN,) + CASES}
    order = {case: shop.order(g.order_id) for case, g in made.items()}

    def skus(case: str) -> list[str]:
        return [li["sku"] for li in order[case]["line_items"]]

    clean = order[CLEAN]
    assert all(clean_sku(s, POLICIES.sku_cleaning) in master for s in skus(CLEAN))
    assert ship_method_mapped(clean["shipping_lines"][0])
    address = clean["shipping_address"]
    assert address["zip"] and address["country_code"] and address["address1"] and address["city"]

    assert order["missing_shipping_address"]["shipping_address"] is None
    incomplete = order["missing_postcode_or_country"]["shipping_address"]
    assert incomplete is not None and (not incomplete["zip"] or not incomplete["country_code"])
    assert not ship_method_mapped(order["unmapped_shipping_line"]["shipping_lines"][0])
    stripped = [s for s in skus("sku_leading_zeros_stripped") if clean_sku(s, POLICIES.sku_cleaning) not in master]
    assert stripped and all(s.isdigit() and any(m.endswith(s) and m.lstrip("0") == s for m in master) for s in stripped)
    unknown = [s for s in skus("sku_unknown") if clean_sku(s, POLICIES.sku_cleaning) not in master]
    assert unknown and not any(s.isdigit() for s in unknown)
    assert made["sku_unknown"].expected_exceptions == ("SKU_UNKNOWN", "SKU_NOT_IN_MASTER")
    assert made["cancel_after_dispatch"].expected_exceptions == ("CANCEL_AFTER_DISPATCH",)
    assert sum(li["quantity"] for li in order["refund_cancellation"]["line_items"]) >= 2
    assert float(order["refund_shipping_only"]["shipping_lines"][0]["price"]) > 0

    # the ERP race: NetSuite commits this order's sales order long after the others
    ns_client_body = {"entity": {"id": "110"}, "item": {"items": [{"item": {"id": ns.catalog.master[0].internal_id}, "quantity": 1}]}}
    slow = ns.create_sales_order({**ns_client_body, "externalId": str(made["dispatch_before_erp_commit"].order_id)})
    normal = ns.create_sales_order({**ns_client_body, "externalId": str(made[CLEAN].order_id)})
    committed = ns.tick(now=time.time() + 60)
    assert normal["id"] in committed and slow["id"] not in committed
    assert slow["id"] in ns.tick(now=time.time() + gen.profile.slow_commit_s + 1)


def test_followups_wait_for_their_stage_then_play_each_refund_and_cancel_kind():
    gen = generator(seed=6, profile=TrafficProfile.only(), commit_delay_s=0)
    shop, ns = gen.shopify, gen.netsuite
    cases = ("edit_after_release", "cancel_before_dispatch", "cancel_after_dispatch", "refund_return",
             "refund_cancellation", "refund_goodwill", "refund_shipping_only", "missing_shipping_address")
    made = {case: gen.generate_orders(1, case=case)[0] for case in cases}
    later = time.time() + 3600

    def settle() -> dict:
        """Observe the stages, then let the follow-up waits (at most 30 s) pass."""
        ran = gen.apply_followups(now=later) + gen.apply_followups(now=later + 60)
        return {order.case: follow for order, follow in ran if order.case != "missing_shipping_address"}

    assert settle() == {}
    assert all(f.pending for case, g in made.items() if case != "missing_shipping_address" for f in g.followups)

    # the integration releases every order: NetSuite gets its sales order
    item = ns.catalog.master[0].internal_id
    so_ids = {case: ns.create_sales_order({"entity": {"id": "110"}, "externalId": str(g.order_id),
                                           "item": {"items": [{"item": {"id": item}, "quantity": 1}]}})["id"]
              for case, g in made.items()}
    ns.tick()
    ran = settle()
    assert set(ran) == {"edit_after_release", "cancel_before_dispatch", "refund_cancellation"}
    assert all(f.outcome == "done" and "released" in f.stages_seen for f in ran.values())
    assert shop.order(made["cancel_before_dispatch"].order_id)["cancelled_at"] is not None
    edited = [w for w in shop.webhooks if w["topic"] == "orders/edited"]
    assert [w["resource_id"] for w in edited] == [made["edit_after_release"].order_id]
    cancel_refund = shop.refunds(made["refund_cancellation"].order_id)[0]
    assert [li["restock_type"] for li in cancel_refund["refund_line_items"]] == ["cancel"]
    assert shop.order(made["refund_cancellation"].order_id)["cancelled_at"] is None

    # Clarus dispatches (NetSuite item fulfilment), then the fulfilments reach Shopify
    for case in ("cancel_after_dispatch", "refund_return", "refund_goodwill", "refund_shipping_only"):
        ns.fulfil_sales_order(so_ids[case], {"externalId": f"S-{case}"})
    ran = settle()
    assert set(ran) == {"cancel_after_dispatch"}
    assert shop.order(made["cancel_after_dispatch"].order_id)["cancel_reason"] == "customer"
    for case in ("refund_return", "refund_goodwill", "refund_shipping_only"):
        shop.create_fulfillment(made[case].order_id, tracking_number="AB123456789GB", company="Royal Mail")
    ran = settle()
    assert set(ran) == {"refund_return", "refund_goodwill", "refund_shipping_only"}
    assert all(f.outcome == "done" for f in ran.values())
    returned = shop.refunds(made["refund_return"].order_id)[0]
    assert [li["restock_type"] for li in returned["refund_line_items"]] == ["return"]
    goodwill = shop.refunds(made["refund_goodwill"].order_id)[0]
    assert goodwill["refund_line_items"] == [] and goodwill["order_adjustments"][0]["kind"] == "refund_discrepancy"
    shipping = shop.refunds(made["refund_shipping_only"].order_id)[0]
    assert shipping["refund_line_items"] == [] and shipping["order_adjustments"][0]["kind"] == "shipping_refund"
    assert gen.summary()["pending_followups"] == 0


def test_held_orders_are_completed_later_when_the_profile_says_so():
    gen = generator(seed=8, profile=TrafficProfile.only(missing_shipping_address=1.0, held_fixed_share=1.0,
                                                        fix_after_s=(60.0, 60.0)))
    placed = gen.generate_orders(3)
    assert all(gen.shopify.order(o.order_id)["shipping_address"] is None for o in placed)
    assert gen.apply_followups(now=time.time() + 1) == []
    done = gen.apply_followups(now=time.time() + 120)
    assert len(done) == 3 and all(f.outcome == "done" for _, f in done)
    assert all(gen.shopify.order(o.order_id)["shipping_address"]["zip"] for o in placed)


def test_stages_come_from_clarus_when_it_is_there():
    client_id, client_secret = os.environ["CLARUS_CLIENT_ID"], os.environ["CLARUS_CLIENT_SECRET"]
    clarus = ClarusSandbox(client_id=client_id, client_secret=client_secret, dispatch_after_s=40, missing_tracking_rate=1.0,
                           out_of_stock_rate=0.0)
    gen = generator(seed=9, profile=TrafficProfile.only(), clarus=clarus)
    made = gen.generate_orders(1, case="cancel_after_dispatch")[0]
    placed = gen.shopify.order(made.order_id)
    served = serve_in_thread(clarus.app)
    try:
        resource = ClarusResource(base_url=served.url, subdomain="sandbox", client_id=client_id, client_secret=client_secret)
        lines = []
        for li in placed["line_items"]:
            product = clarus.seed_product(clean_sku(li["sku"], POLICIES.sku_cleaning), available=100)
            lines.append({"product_id": product["id"], "quantity": li["quantity"], "external_system_reference1": str(li["id"])})
        address = placed["shipping_address"]
        body = build_goods_out_body(
            reference=placed["name"], account_id=1, warehouse_id=1, external_system_reference1=str(made.order_id),
            expected_date_of_dispatch=datetime.now(timezone.utc) + timedelta(days=1), lines=lines,
            address={"name": address["name"], "address_1": address["address1"], "town": address["city"],
                     "postcode": address["zip"], "country_code": address["country_code"]},
        )
        resource.ensure_goods_out(body)
        assert gen.apply_followups(now=time.time() + 3600) == []  # released, not dispatched yet
        clarus.advance(60)
        ran = gen.apply_followups(now=time.time() + 3600)
        assert [(o.case, f.outcome) for o, f in ran] == [("cancel_after_dispatch", "done")]
        assert "dispatched" in ran[0][1].stages_seen
        observed = gen.observed_cases()
        assert "missing_tracking" in observed[made.order_id] and "dispatch_before_erp_commit" in observed[made.order_id]
        assert "TRACKING_MISSING" in made.expected_exceptions
        resource.close()
    finally:
        served.stop()
        clarus.close()


# ---------------------------------------------------------------------------- composed server


def test_secrets_come_from_the_environment_and_name_what_is_missing():
    env = {f"{name}": "x" for name in ("CLARUS_CLIENT_ID", "CLARUS_CLIENT_SECRET", "CLARUS_WEBHOOK_TOKEN", "SHOPIFY_ACCESS_TOKEN")}
    with pytest.raises(SandboxConfigError) as missing:
        SandboxSecrets.from_env(env)
    assert "SHOPIFY_WEBHOOK_SECRET" in str(missing.value) and "NETSUITE_TOKEN_SECRET" in str(missing.value)
    assert "NETSUITE_WEBHOOK_SECRET" not in str(missing.value)
    secrets = SandboxSecrets.from_env()
    assert secrets.shopify_access_token == os.environ["SHOPIFY_ACCESS_TOKEN"]
    assert os.environ["SHOPIFY_ACCESS_TOKEN"] not in repr(secrets)


def test_start_sandbox_serves_three_systems_sends_webhooks_and_runs_traffic():
    secrets = SandboxSecrets.from_env()
    with WebhookRecorder() as recorder:
        handle = start_sandbox(seed=2, receiver_url=recorder.url, secrets=secrets, traffic_rate_per_min=600,
                               netsuite_commit_delay_s=0.2, tick_interval_s=0.1)
        try:
            shopify = ShopifyResource(base_url=handle.shopify_url, access_token=secrets.shopify_access_token)
            wait_until(lambda: len(list(shopify.iter_orders())) >= 3, timeout=20, message="generated orders")
            netsuite = NetSuiteResource(
                base_url=handle.netsuite_url, account_id="SANDBOX", consumer_key=secrets.netsuite_consumer_key,
                consumer_secret=secrets.netsuite_consumer_secret, token_id=secrets.netsuite_token_id,
                token_secret=secrets.netsuite_token_secret)
            so_id, _ = netsuite.ensure_sales_order("SRV-1", {"entity": {"id": "110"}, "item": {"items": [
                {"item": {"id": handle.netsuite.catalog.master[0].internal_id}, "quantity": 1}]}})
            wait_until(lambda: netsuite.is_committed(so_id), timeout=10, message="the NetSuite ticker committing")
            token = httpx.post(f"{handle.clarus_url}/oauth/token", data={
                "grant_type": "client_credentials", "client_id": secrets.clarus_client_id,
                "client_secret": secrets.clarus_client_secret})
            assert token.status_code == 200
            shopify_hooks = wait_until(lambda: [r for r in recorder.snapshot() if r["path"] == "/webhooks/shopify"],
                                       timeout=10, message="Shopify webhooks at the receiver")
            assert shopify_hooks[0]["headers"]["x-shopify-topic"] == "orders/create"
            assert handle.traffic is not None and handle.traffic.summary()["orders"] >= 3
            shopify.close()
            netsuite.close()
        finally:
            handle.stop()
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{handle.shopify_url}/_sandbox/health", timeout=2)


def test_cli_prints_the_urls_and_stops_on_sigterm():
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "clarus_pipelines.cli", "sandbox", "--clarus-port", "0", "--shopify-port", "0",
         "--netsuite-port", "0", "--seed", "3", "--faults", "light"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True,
    )
    try:
        line = process.stdout.readline()
        urls = json.loads(line)
        assert urls["faults"] == "light" and urls["seed"] == 3
        for name in ("clarus", "shopify", "netsuite"):
            assert urls[name].startswith("http://127.0.0.1:")
        assert httpx.get(f"{urls['shopify']}/_sandbox/health", timeout=5).json()["status"] == "ok"
        assert httpx.get(f"{urls['netsuite']}/_sandbox/health", timeout=5).json()["system"] == "netsuite"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_an_order_fulfilled_by_hand_in_shopify_admin_once_released():
    """fulfilled_outside_wms: the merchant marks a released order fulfilled in Shopify admin."""
    gen = generator(seed=13, profile=TrafficProfile.only(), commit_delay_s=0)
    shop, ns = gen.shopify, gen.netsuite
    made = gen.generate_orders(1, case="fulfilled_outside_wms")[0]
    assert made.expected_exceptions == ("FULFILLED_OUTSIDE_WMS",)
    assert gen.apply_followups(now=time.time() + 3600) == []  # not released yet: nothing happens
    assert not [w for w in shop.webhooks if w["topic"] == "fulfillments/create"]
    item = ns.catalog.master[0].internal_id
    ns.create_sales_order({"entity": {"id": "110"}, "externalId": str(made.order_id),
                           "item": {"items": [{"item": {"id": item}, "quantity": 1}]}})
    ((order, follow),) = gen.apply_followups(now=time.time() + 3600)
    assert order is made and follow.action == "fulfil_by_hand" and follow.outcome == "done"
    (fulfilment,) = shop.fulfillments(made.order_id)
    (hook,) = [w for w in shop.webhooks if w["topic"] == "fulfillments/create"]
    assert hook["resource_id"] == fulfilment["id"]
    assert shop.order(made.order_id)["fulfillment_status"] == "fulfilled"
