"""The orders flow records its intent before every outside call: a run that dies between the
intent and the call, or between the call and recording its answer, is repeated by the next
run exactly once (one goods out, one cancellation). And the jobs that change goods outs
outside the asset job record a materialization of `clarus_goods_outs`."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from clarus_pipelines.assets.item_master import sync_item_master
from clarus_pipelines.connectors.clarus import ClarusResource
from clarus_pipelines.connectors.netsuite import NetSuiteResource
from clarus_pipelines.connectors.shopify import ShopifyResource
from clarus_pipelines.domain.order_changes import apply_order_changes
from clarus_pipelines.domain.order_flow import outbound_key
from clarus_pipelines.domain.order_intake import intake_landed_orders
from clarus_pipelines.domain.order_send import refresh_carriers, send_ready_orders
from clarus_pipelines.receiver.events import load_landings, store_events
from clarus_pipelines.receiver.landing import Envelope, LandingZone
from clarus_pipelines.resources import PoliciesResource, StateStoreResource
from clarus_pipelines.sandbox.server import SandboxSecrets, start_sandbox
from clarus_pipelines.settings import SANDBOX_POLICIES, load_policies
from pgstate import state_base
from world import copy_state, make_store

POLICIES = load_policies(SANDBOX_POLICIES)
CUSTOMER = "110"
ADDRESS = {"first_name": "Ada", "last_name": "Lovelace", "name": "Ada Lovelace", "address1": "12 St James's Square",
           "address2": "", "city": "London", "province": "England", "zip": "SW1Y 4LB", "country": "United Kingdom",
           "country_code": "GB", "phone": "+44 20 7946 0000"}


class Crash(BaseException):
    """The process dies (not an error any step handles)."""


class Dying:
    """A port that dies once on `method`: before the call reaches the system, or just after it."""

    def __init__(self, real: Any, method: str, *, after_call: bool = False):
        self.real, self.method, self.after_call, self.died = real, method, after_call, False

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.real, name)
        if name != self.method or self.died:
            return attr

        def die(*args, **kwargs):
            self.died = True
            if self.after_call:
                attr(*args, **kwargs)
            raise Crash(name)

        return die


STATE_BACKENDS = ("duckdb", "postgres")  # every test once per state backend (tests/flows/conftest.py)
STATE_BACKEND_SCOPE = "module"  # one sandbox and synced base state per backend


@pytest.fixture(scope="module")
def world(tmp_path_factory, state_backend):
    handle = start_sandbox(secrets=SandboxSecrets.from_env(), seed=0, clarus_dispatch_after_s=3600, netsuite_commit_delay_s=0)
    handle.clarus.stop_ticker()
    handle.clarus.out_of_stock_rate = 0.0
    s = SandboxSecrets.from_env()
    clarus = ClarusResource(base_url=handle.clarus_url, subdomain="sandbox", client_id=s.clarus_client_id,
                            client_secret=s.clarus_client_secret, min_interval_s=0.0, max_elapsed_s=30.0)
    netsuite = NetSuiteResource(base_url=handle.netsuite_url, account_id="SANDBOX", consumer_key=s.netsuite_consumer_key,
                                consumer_secret=s.netsuite_consumer_secret, token_id=s.netsuite_token_id,
                                token_secret=s.netsuite_token_secret, max_elapsed_s=30.0)
    shopify = ShopifyResource(base_url=handle.shopify_url, access_token=s.shopify_access_token, max_elapsed_s=30.0)
    with state_base(state_backend, tmp_path_factory.mktemp("intent")) as base:
        sync_item_master(make_store(base), POLICIES, netsuite=netsuite, clarus=clarus, shopify=shopify)
        refresh_carriers(make_store(base), clarus)
        yield {"handle": handle, "clarus": clarus, "netsuite": netsuite, "base": base}
    for client in (clarus, netsuite, shopify):
        client.close()
    handle.stop()


class Shop:
    def __init__(self, world: dict, tmp_path: Path):
        self.world, self.handle = world, world["handle"]
        self.path, self.store = copy_state(world["base"], tmp_path / "state.duckdb")  # a file or a database
        self.zone = LandingZone(tmp_path / "landing", fsync=False)

    def order(self) -> dict:
        sku = next(i.shopify_sku for i in self.handle.shopify.catalog.clean_variants() if i.quirk is None)
        order = self.handle.shopify.create_order(line_items=[{"sku": sku, "quantity": 1}], shipping_address=ADDRESS,
                                                 shipping_lines=[{"code": "standard", "title": "Standard Shipping"}],
                                                 email="ada@example.com")
        self.land("orders/create", order)
        intake_landed_orders(self.store, POLICIES)
        return order

    def land(self, topic: str, payload: dict) -> None:
        envelope = Envelope(source="shopify", topic=topic, body=json.dumps(payload).encode(), via="webhook",
                            dedupe_key=f"shopify:webhook:{uuid.uuid4()}", headers={"x-shopify-topic": topic})
        with self.store.write() as con:
            store_events(con, load_landings(self.zone, [self.zone.land(envelope).relpath]))

    def send(self, clarus: Any = None):
        return send_ready_orders(self.store, POLICIES, netsuite=self.world["netsuite"], clarus=clarus or self.world["clarus"],
                                 customer_id=CUSTOMER)

    def goods_outs(self, order: dict) -> list[dict]:
        return [g for g in self.handle.clarus.goods_outs() if g["external_system_reference1"] == str(order["id"])]

    def row(self, query: str, params: list) -> tuple:
        with self.store.read() as con:
            return con.execute(query, params).fetchone()


@pytest.fixture
def shop(world, tmp_path) -> Shop:
    return Shop(world, tmp_path)


def test_a_crash_between_intent_and_the_clarus_call_sends_exactly_once_on_the_next_run(shop: Shop):
    order = shop.order()
    key = outbound_key("clarus", "goods_out", str(order["id"]))
    with pytest.raises(Crash):
        shop.send(Dying(shop.world["clarus"], "ensure_goods_out"))
    # the intent is on record, the order says a goods out was requested, Clarus has nothing yet
    assert shop.row("SELECT status, attempts FROM outbound_writes WHERE idempotency_key = ?", [key]) == ("pending", 1)
    assert shop.row("SELECT status FROM orders WHERE order_id = ?", [str(order["id"])]) == ("SENT_TO_WMS",)
    assert shop.goods_outs(order) == []

    report = shop.send()
    assert report.wms_created == 1
    [goods_out] = shop.goods_outs(order)
    assert shop.row("SELECT status, attempts, remote_id FROM outbound_writes WHERE idempotency_key = ?", [key]) == (
        "done", 2, str(goods_out["id"]))
    assert shop.row("SELECT status FROM orders WHERE order_id = ?", [str(order["id"])]) == ("ACKNOWLEDGED",)
    assert shop.send().considered == 0 and len(shop.goods_outs(order)) == 1


def test_a_crash_after_the_clarus_call_binds_the_goods_out_on_the_next_run(shop: Shop):
    order = shop.order()
    with pytest.raises(Crash):
        shop.send(Dying(shop.world["clarus"], "ensure_goods_out", after_call=True))
    assert len(shop.goods_outs(order)) == 1  # Clarus made it; we never heard the answer

    report = shop.send()
    assert (report.wms_created, report.wms_found) == (0, 1)
    [goods_out] = shop.goods_outs(order)
    assert shop.row("SELECT clarus_id FROM bindings WHERE entity_type = 'order' AND our_id = ?",
                    [str(order["id"])]) == (str(goods_out["id"]),)


def test_a_crash_before_the_cancel_reaches_clarus_cancels_once_on_the_next_run(shop: Shop):
    order = shop.order()
    shop.send()
    shop.land("orders/cancelled", shop.handle.shopify.cancel_order(order["id"]))
    assert intake_landed_orders(shop.store, POLICIES).cancels_pending == 1
    with pytest.raises(Crash):
        apply_order_changes(shop.store, POLICIES, clarus=Dying(shop.world["clarus"], "cancel_goods_out"),
                            netsuite=shop.world["netsuite"])
    with shop.store.read() as con:
        intents = con.execute("SELECT system, operation, status FROM outbound_writes WHERE idempotency_key LIKE ?"
                              " ORDER BY system", [f"%:{order['id']}:%"]).fetchall()
    assert intents == [("clarus", "cancel_goods_out", "pending"), ("netsuite", "cancel_sales_order", "pending")]
    assert shop.row("SELECT status, change_pending FROM orders WHERE order_id = ?", [str(order["id"])]) == ("ACKNOWLEDGED", "cancel")

    cancels_before = len(shop.handle.clarus.requests(path_prefix="/api/goods_outs"))
    report = apply_order_changes(shop.store, POLICIES, clarus=shop.world["clarus"], netsuite=shop.world["netsuite"])
    assert report.cancelled == 1
    cancels = [r for r in shop.handle.clarus.requests(path_prefix="/api/goods_outs")[cancels_before:]
               if r["path"].endswith("/cancel")]
    assert len(cancels) == 1
    [goods_out] = shop.goods_outs(order)
    assert goods_out["goods_out_status"]["code"] == "CANCELLED"
    with shop.store.read() as con:
        assert {r[0] for r in con.execute("SELECT status FROM outbound_writes WHERE idempotency_key LIKE ?",
                                          [f"%:{order['id']}:%"]).fetchall()} == {"done"}
    assert shop.row("SELECT status, change_pending FROM orders WHERE order_id = ?", [str(order["id"])]) == ("CANCELLED", None)


def test_the_order_changes_job_records_what_it_did_to_the_goods_outs_asset(shop: Shop):
    from clarus_pipelines.sensors.orders import order_changes_job

    order = shop.order()
    shop.send()
    shop.land("orders/cancelled", shop.handle.shopify.cancel_order(order["id"]))
    intake_landed_orders(shop.store, POLICIES)
    instance = dg.DagsterInstance.ephemeral()
    result = order_changes_job.execute_in_process(
        instance=instance,
        resources={"state": StateStoreResource(path=str(shop.path)), "policies": PoliciesResource(path=str(SANDBOX_POLICIES)),
                   "clarus": shop.world["clarus"], "netsuite": shop.world["netsuite"]},
        run_config={"ops": {"send_ready_orders_op": {"config": {"netsuite_customer_id": CUSTOMER}}}},
    )
    assert result.success
    by_op = {}
    for event in result.get_asset_materialization_events():
        by_op.setdefault(event.step_key, set()).add(event.asset_key.to_user_string())
    assert by_op == {"apply_order_changes_op": {"clarus_goods_outs", "netsuite_sales_orders"},
                     "send_ready_orders_op": {"clarus_goods_outs", "netsuite_sales_orders"}}
    latest = instance.get_latest_materialization_event(dg.AssetKey("clarus_goods_outs"))
    assert latest is not None and latest.run_id == result.run_id
