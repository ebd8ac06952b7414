"""Item master and orders into the warehouse, against the three sandboxes over loopback HTTP.

One sandbox trio (the shared `World.trio` of tests/world.py, no faults) serves the module;
the item master is synced into its state once and each test starts from a fork of it (a copy
of the state, its own landing zone), with its own orders. The idempotency test switches
faults on for its run. Assertions read the sandboxes' own records (how many goods outs and
sales orders exist) as well as our state.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import dagster as dg
import pytest
from pgstate import state_base
from world import World

from clarus_pipelines.assets import item_master as item_master_module
from clarus_pipelines.assets.item_master import barcode_findings, sync_item_master
from clarus_pipelines.assets.orders import intake_landed_orders, send_ready_orders
from clarus_pipelines.connectors.netsuite import NetSuiteResource
from clarus_pipelines.domain.skus import clean_sku
from clarus_pipelines.exception_queue import open_exceptions, sync_exceptions, utcnow
from clarus_pipelines.resources import StateStoreResource
from clarus_pipelines.sandbox.faults import FaultConfig, FaultMiddleware
from clarus_pipelines.settings import SANDBOX_POLICIES, load_policies
from clarus_pipelines.policies import ShipMethodRule
from clarus_pipelines.state import StateStore
from clarus_pipelines.sensors.orders import apply_order_changes, recheck_held_orders

POLICIES = load_policies(SANDBOX_POLICIES)
CUSTOMER = "110"  # the sandbox's web customer (NetSuite's published examples)
ADDRESS = {
    "first_name": "Ada", "last_name": "Lovelace", "name": "Ada Lovelace", "address1": "12 St James's Square",
    "address2": "", "city": "London", "province": "England", "zip": "SW1Y 4LB", "country": "United Kingdom",
    "country_code": "GB", "phone": "+44 20 7946 0000",
}
STANDARD = [{"code": "standard", "title": "Standard Shipping", "price": "3.95"}]


STATE_BACKENDS = ("duckdb", "postgres")  # every test once per state backend (tests/flows/conftest.py)
STATE_BACKEND_SCOPE = "module"


@pytest.fixture(scope="module")
def world(tmp_path_factory, state_backend):
    """One sandbox trio for the module and backend, the item master synced into its state (tests/world.py)."""
    folder = tmp_path_factory.mktemp("orders-world")
    with state_base(state_backend, folder) as state:
        w = World.trio(folder, initial_stock=(10_000, 10_000), state=state)
        yield w
        w.close()


class Harness:
    """One test's view: its own state (a copy of the synced base) and landing zone, and the orders flow's steps."""

    def __init__(self, world: World, tmp_path: Path, policies=POLICIES):
        self.world = world
        self.view = world.fork(tmp_path)
        self.policies = policies
        self.state_path, self.store, self.zone = self.view.state_path, self.view.store, self.view.zone
        self.sh = world.shopify_sb
        self.cl = world.clarus_sb
        self.ns = world.netsuite_sb

    def skus(self, n: int) -> list[str]:
        return [i.shopify_sku for i in self.sh.catalog.clean_variants() if i.quirk is None][:n]

    def place(self, lines, *, address=ADDRESS, shipping=STANDARD) -> dict:
        return self.sh.create_order(line_items=[{"sku": s, "quantity": q} for s, q in lines], shipping_address=address,
                                    shipping_lines=shipping, email="ada@example.com")

    def land(self, topic: str, payload: dict, *, key: str | None = None, via: str = "webhook") -> None:
        self.view.land(topic, payload, key=key, via=via)

    def land_many(self, deliveries: list[tuple[str, dict, str | None, str]]) -> None:
        """Land webhooks through the real landing zone and ingest, in one state write."""
        self.view.land_many(deliveries)

    def state_resource(self) -> StateStoreResource:
        return self.view.state_resource()

    def intake(self, policies=None, **kw):
        return intake_landed_orders(self.store, policies or self.policies, **kw)

    def send(self, policies=None, **kw):
        w = self.world
        return send_ready_orders(self.store, policies or self.policies, netsuite=w.netsuite, clarus=w.clarus, customer_id=CUSTOMER, **kw)

    def changes(self, policies=None, **kw):
        return apply_order_changes(self.store, policies or self.policies, clarus=self.world.clarus, netsuite=self.world.netsuite, **kw)

    def order(self, order: dict) -> dict:
        return self.view.order_row(order["id"])

    def journey(self, order: dict) -> list[str]:
        return self.view.journey(order["id"])

    def exceptions(self, code: str | None = None) -> list[dict]:
        return self.view.exceptions(code)

    def goods_outs(self, order: dict) -> list[dict]:
        return [g for g in self.cl.goods_outs() if g["external_system_reference1"] == str(order["id"])]

    def sales_orders(self, order: dict) -> list[dict]:
        return [s for s in self.ns.sales_orders() if s.get("externalId") == str(order["id"])]

    def sales_order_lines(self, order: dict) -> list[tuple[str, float]]:
        """(SKU, quantity) of the open lines of the order's NetSuite sales order."""
        with self.store.read() as con:
            sku_of = dict(con.execute("SELECT netsuite_item_id, sku FROM items WHERE netsuite_item_id IS NOT NULL").fetchall())
        [so] = self.sales_orders(order)
        return sorted((sku_of[str(line["item"]["id"])], line["quantity"]) for line in so["item"]["items"] if not line["isClosed"])


@pytest.fixture
def h(world, tmp_path) -> Harness:
    return Harness(world, tmp_path)


def through(h: Harness, *orders: dict, topic: str = "orders/create") -> None:
    h.land_many([(topic, order, None, "webhook") for order in orders])
    h.intake()
    h.send()


# ----------------------------------------------------------------------- item master


def test_item_master_sync_checks_and_exceptions(world, tmp_path):
    """Dagster job: NetSuite items -> item master -> Clarus products, and the four checks."""
    view = world.fork(tmp_path)  # products already synced once by the module set-up
    writes_before = len(world.handle.clarus.requests(path_prefix="/api/products"))
    defs = view.definitions(item_master_module.defs)
    result = defs.resolve_job_def("item_master_sync").execute_in_process(instance=dg.DagsterInstance.ephemeral())
    assert result.success
    checks = {e.asset_check_key.name: e for e in result.get_asset_check_evaluations()}
    assert checks["item_master_skus_unique"].passed
    assert not checks["item_master_barcodes_valid"].passed
    assert not checks["variants_in_item_master"].passed
    assert not checks["variant_skus_keep_leading_zeros"].passed
    # Nothing changed since the last sync: nothing was sent to Clarus.
    assert world.handle.clarus.requests(path_prefix="/api/products")[writes_before:] == []

    store = view.store
    catalog = world.handle.netsuite.catalog
    with store.read() as con:
        items = dict(con.execute("SELECT sku, clarus_product_id FROM items").fetchall())
        exceptions = open_exceptions(con)
    # SKUs cleaned once, exactly as orders clean them; leading zeros intact.
    assert "000123" in items and "TEEOLV-M" in items and "BELT-BLK-90" in items
    clarus_codes = {p["code"]: p["id"] for p in world.handle.clarus.products()}
    assert all(items.values()) and {sku: clarus_codes[sku] for sku in items} == items

    by_code: dict[str, set[str]] = {}
    for e in exceptions:
        by_code.setdefault(e["code"], set()).add(e["entity_id"])
    bad_barcodes = {clean_sku(i.sku, POLICIES.sku_cleaning) for i in catalog.master if i.upc and not _valid(i.upc)}
    assert bad_barcodes and by_code["BARCODE_INVALID"] == bad_barcodes
    assert by_code["SKU_LEADING_ZEROS_LOST"] == {"456", "1789"}
    lost = next(e for e in exceptions if e["entity_id"] == "456")
    assert "'456'" in lost["message"] and "'000456'" in lost["message"]
    assert {"TEE-NAV-XXL", "SAMPLE-SWATCH-SET", "BUNDLE-XMAS-01"} <= by_code["SKU_NOT_IN_MASTER"]
    assert not {"456", "1789"} & by_code["SKU_NOT_IN_MASTER"]  # explained by lost zeros, not double-reported

    # A barcode corrected in NetSuite: only that product is updated, and its exception clears.
    fixed = next(i for i in catalog.master if i.upc and not _valid(i.upc))
    record = world.handle.netsuite._records["inventoryItem"][fixed.internal_id]
    original = record["upcCode"]
    record["upcCode"] = original[:-1] + str(_check_digit(original[:-1]))
    try:
        writes_before = len(world.handle.clarus.requests(path_prefix="/api/products"))
        summary = sync_item_master(store, POLICIES, netsuite=world.netsuite, clarus=world.clarus)
        assert summary["products"]["updated"] == 1 and summary["products"]["created"] == 0
        product_writes = world.handle.clarus.requests(path_prefix="/api/products")[writes_before:]
        assert [r["method"] for r in product_writes] == ["PATCH"]
        with store.write() as con:
            sync_exceptions(con, "BARCODE_INVALID", barcode_findings(con), policies=POLICIES)
            still = {e["entity_id"] for e in open_exceptions(con) if e["code"] == "BARCODE_INVALID"}
        assert still == bad_barcodes - {clean_sku(fixed.sku, POLICIES.sku_cleaning)}
    finally:
        record["upcCode"] = original


def test_duplicate_skus_after_cleaning_are_flagged(tmp_path):
    from clarus_pipelines.assets.item_master import build_item_master, duplicate_skus, netsuite_items_frame, store_netsuite_items

    store = StateStore(tmp_path / "dupes.duckdb")
    items = netsuite_items_frame(
        [{"id": "1", "itemId": "tee-1"}, {"id": "2", "itemId": " TEE-1 "}, {"id": "3", "itemId": "TEE#1"},
         {"id": "4", "itemId": "000123"}, {"id": "5", "itemId": "123"}],
        POLICIES,
    )
    store_netsuite_items(store, items, now=utcnow())
    build_item_master(store)
    with store.read() as con:
        dupes = duplicate_skus(con).to_dicts()
        kept = con.execute("SELECT netsuite_item_id FROM items WHERE sku = 'TEE-1'").fetchall()
    assert dupes == [{"sku": "TEE-1", "raw_skus": ["tee-1", " TEE-1 "], "netsuite_item_ids": ["1", "2"]}]
    assert kept == [("1",)]  # lowest internal id wins, deterministically; "000123" and "123" stay distinct


def _check_digit(body: str) -> int:
    from clarus_pipelines.domain.barcodes import gtin_check_digit

    return gtin_check_digit(body)


def _valid(code: str) -> bool:
    from clarus_pipelines.domain.barcodes import gtin_problem

    return gtin_problem(code) is None


# ---------------------------------------------------------------------------- orders in


def test_orders_flow_holds_releases_and_records_the_journey(h: Harness):
    a, b = h.skus(2)
    ready = h.place([(a, 2), (b, 1)])
    no_postcode = h.place([(a, 1)], address={**ADDRESS, "zip": ""})
    unknown_sku = h.place([(a, 1)])
    unknown_sku["line_items"][0]["sku"] = "NOT-A-SKU"  # a line typed by staff
    unmapped = h.place([(b, 1)], shipping=[{"code": "pigeon", "title": "Carrier Pigeon", "price": "1.00"}])
    lost_zeros = h.place([("456", 1)])  # the Shopify variant lost its zeros
    through(h, ready, no_postcode, unknown_sku, unmapped, lost_zeros)

    assert h.order(ready)["status"] == "ACKNOWLEDGED"
    assert h.journey(ready) == ["RECEIVED", "READY", "SENT_TO_ERP", "SENT_TO_WMS", "ACKNOWLEDGED"]
    [goods_out] = h.goods_outs(ready)
    assert goods_out["reference"] == ready["name"]
    assert sorted((l["product"]["code"], l["order_quantity"]) for l in goods_out["lines"]) == sorted([(a, 2.0), (b, 1.0)])
    assert goods_out["carrier"]["code"] == "ROYAL_MAIL"
    assert len(h.sales_orders(ready)) == 1

    expected = {
        str(no_postcode["id"]): ["ORDER_INCOMPLETE"],
        str(unknown_sku["id"]): ["SKU_UNKNOWN"],
        str(unmapped["id"]): ["SHIP_METHOD_UNMAPPED"],
        str(lost_zeros["id"]): ["SKU_UNKNOWN"],
    }
    for order in (no_postcode, unknown_sku, unmapped, lost_zeros):
        row = h.order(order)
        assert (row["status"], row["hold_reasons"]) == ("HELD", expected[str(order["id"])])
        assert h.journey(order) == ["RECEIVED", "HELD"]
        assert h.goods_outs(order) == [] and h.sales_orders(order) == []
    with h.store.read() as con:
        holds = dict(con.execute("SELECT order_id, message FROM order_holds").fetchall())
    assert "'000456' once leading zeros are restored" in holds[str(lost_zeros["id"])]
    # Held, not yet raised: the owner hears after held_alert_minutes.
    assert h.exceptions("ORDER_INCOMPLETE") == []


def test_release_after_the_source_is_fixed_and_alert_when_held_too_long(h: Harness):
    a = h.skus(1)[0]
    order = h.place([(a, 1)], address={**ADDRESS, "zip": ""})
    unmapped = h.place([(a, 1)], shipping=[{"code": "pigeon", "title": "Carrier Pigeon"}])
    through(h, order, unmapped)
    assert h.order(order)["status"] == "HELD"

    from clarus_pipelines.sensors.orders import held_orders_recheck_sensor, orders_sensor

    state = h.state_resource()
    first = held_orders_recheck_sensor(dg.build_sensor_context(resources={"state": state}))
    assert isinstance(first, dg.SensorResult) and len(first.run_requests) == 1
    # right after a re-check, nothing is due until the interval passes or the item master changes
    again = held_orders_recheck_sensor(dg.build_sensor_context(resources={"state": state}, cursor=first.cursor))
    assert isinstance(again, dg.SkipReason) and "when the item master changes" in again.skip_message
    with h.store.write() as con:
        con.execute("UPDATE items SET updated_at = now()::TIMESTAMP + INTERVAL 1 SECOND WHERE clarus_product_id IS NOT NULL")
    changed = held_orders_recheck_sensor(dg.build_sensor_context(resources={"state": state}, cursor=first.cursor))
    assert isinstance(changed, dg.SensorResult) and changed.run_requests[0].tags["orders/recheck"] == "item master changed"
    assert isinstance(orders_sensor(dg.build_sensor_context(resources={"state": state})), dg.SkipReason)

    later = utcnow() + timedelta(minutes=POLICIES.timings.held_alert_minutes + 1)
    report = recheck_held_orders(h.store, POLICIES, shopify=h.world.shopify, now=later)
    assert (report.held, report.released, report.raised) == (2, 0, 2)
    [raised] = h.exceptions("ORDER_INCOMPLETE")
    assert raised["entity_id"] == str(order["id"]) and "no postcode" in raised["message"]

    # CX completes the address in Shopify: no webhook reaches us, the re-check finds it.
    h.sh.update_shipping_address(order["id"], ADDRESS)
    # The ship-method table gains the missing row.
    fixed_policies = POLICIES.model_copy(update={"ship_methods": [*POLICIES.ship_methods, ShipMethodRule(title="carrier pigeon", carrier="DPD", service="NEXT_DAY")]})
    report = recheck_held_orders(h.store, fixed_policies, shopify=h.world.shopify, now=later + timedelta(minutes=15))
    assert (report.released, report.still_held) == (2, 0)
    assert h.exceptions("ORDER_INCOMPLETE") == [] and h.exceptions("SHIP_METHOD_UNMAPPED") == []
    h.send(fixed_policies)
    assert h.journey(order) == ["RECEIVED", "HELD", "RELEASED", "SENT_TO_ERP", "SENT_TO_WMS", "ACKNOWLEDGED"]
    assert [g["carrier"]["code"] for g in h.goods_outs(unmapped)] == ["DPD"]


def test_newer_webhook_releases_and_older_one_is_stale(h: Harness):
    a = h.skus(1)[0]
    order = h.place([(a, 1)], address=None)
    h.land("orders/create", order)
    h.intake()
    fixed = h.sh.update_shipping_address(order["id"], ADDRESS)
    older = dict(order, updated_at="2020-01-01T00:00:00+00:00")  # a late delivery of an older version
    h.land_many([("orders/updated", fixed, None, "webhook"), ("orders/create", older, None, "webhook")])
    report = h.intake()
    assert (report.applied, report.stale, report.released) == (1, 1, 1)
    assert h.order(order)["status"] == "READY"


def test_wms_rejection_becomes_an_exception_with_clarus_code(h: Harness):
    a = h.skus(1)[0]
    order = h.place([(a, 1)])
    with h.store.write() as con:  # the item master points at a product Clarus does not have
        con.execute("UPDATE items SET clarus_product_id = '999999' WHERE sku = ?", [a])
    through(h, order)
    row = h.order(order)
    assert row["status"] == "WMS_REJECTED"
    [exc] = h.exceptions("WMS_REJECTED")
    details = json.loads(exc["details"])
    assert details["clarus_code"] == 1002 and "999999" in details["clarus_message"]
    assert h.goods_outs(order) == [] and len(h.sales_orders(order)) == 1

    # Fixed and replayed: accepted, the exception clears, still one sales order.
    with h.store.write() as con:
        con.execute("UPDATE items SET clarus_product_id = ? WHERE sku = ?", [next(p["id"] for p in h.cl.products() if p["code"] == a), a])
    h.land("orders/create", order, via="replay")
    h.intake()
    h.send()
    assert h.order(order)["status"] == "ACKNOWLEDGED"
    assert h.exceptions("WMS_REJECTED") == []
    assert len(h.goods_outs(order)) == 1 and len(h.sales_orders(order)) == 1


def _set_netsuite_faults(handle, faults: FaultConfig) -> None:
    layer = handle.netsuite.app
    while layer is not None:
        if isinstance(layer, FaultMiddleware):
            layer.config = faults
        layer = getattr(layer, "app", None)


def test_a_netsuite_outage_does_not_stop_goods_outs_and_dispatch_keeps_the_erp_gate(h: Harness):
    """Issue 13's decision: Clarus gets the goods out while NetSuite is down; the sales order
    follows when NetSuite is back, and no Shopify fulfilment goes out before NetSuite's item
    fulfilment."""
    import clarus_pipelines.domain.dispatch as dispatch
    from clarus_pipelines.domain.tracking import TrackingRules

    a, b = h.skus(2)
    orders = [h.place([(a, 1)]), h.place([(b, 2)])]
    h.land_many([("orders/create", order, None, "webhook") for order in orders])
    h.intake()
    w = h.world
    impatient = NetSuiteResource(**{**w.netsuite.model_dump(), "max_attempts": 2, "max_elapsed_s": 1.0})
    _set_netsuite_faults(w.handle, FaultConfig(error_rate=1.0))  # NetSuite answers 5xx to everything
    try:
        report = send_ready_orders(h.store, POLICIES, netsuite=impatient, clarus=w.clarus, customer_id=CUSTOMER)
        assert report.erp_failed >= 1 and report.skipped_systems == ["netsuite"]
        assert report.wms_created == 2
        for order in orders:  # picked, though NetSuite has no sales order yet
            assert h.order(order)["status"] == "ACKNOWLEDGED" and len(h.goods_outs(order)) == 1
            assert h.sales_orders(order) == []
        assert h.exceptions("ERP_REJECTED") == []  # an outage is not a refusal

        # Clarus dispatches while NetSuite is still down: the dispatch waits at the ERP gate
        since = utcnow() - timedelta(minutes=5)
        h.cl.advance(3600 + 10)
        rules = TrackingRules.from_policies(POLICIES)
        dispatch.record_sweep(h.store, list(w.clarus.iter_shipments(updated_since=since)), rules, POLICIES.sku_cleaning,
                              window_start=since)
        fast = dispatch.DispatchConfig(erp_recheck_s=0.0, retry_base_s=0.0, workers=1)
        dispatch.advance_all(h.store, impatient, w.shopify, config=fast)
        for order in orders:
            assert h.sh.fulfillments(int(order["id"])) == []  # nothing told to the customer before NetSuite
    finally:
        _set_netsuite_faults(w.handle, FaultConfig())

    report = send_ready_orders(h.store, POLICIES, netsuite=w.netsuite, clarus=w.clarus, customer_id=CUSTOMER)
    assert report.erp_created == 2 and report.wms_created == 0
    for order in orders:
        assert len(h.sales_orders(order)) == 1 and len(h.goods_outs(order)) == 1  # one of each, no duplicate
        assert h.order(order)["status"] == "ACKNOWLEDGED"  # the status stays where Clarus has it
        journey = h.journey(order)
        assert journey.index("SENT_TO_ERP") > journey.index("ACKNOWLEDGED")
    h.ns.tick()  # NetSuite commits the new sales orders
    dispatch.advance_all(h.store, w.netsuite, w.shopify, config=fast)
    for order in orders:
        with h.store.read() as con:
            states = con.execute("SELECT state FROM shipments WHERE order_id = ?", [str(order["id"])]).fetchall()
        assert states and all(state == "CHANNEL_CONFIRMED" for (state,) in states), states
        [item_fulfilment] = [f for f in h.ns.item_fulfillments() if f["createdFrom"]["id"] == h.sales_orders(order)[0]["id"]]
        [fulfilment] = h.sh.fulfillments(int(order["id"]))
        assert item_fulfilment["id"] and fulfilment["tracking_number"]


def test_netsuite_refusing_a_sales_order_is_erp_rejected_then_clears_once_fixed(h: Harness):
    from clarus_pipelines.domain.orphans import orphan_orders, unbound_candidates

    a, b = h.skus(2)
    with h.store.write() as con:  # the item's NetSuite record was deleted: NetSuite refuses the id
        good_id = con.execute("SELECT netsuite_item_id FROM items WHERE sku = ?", [a]).fetchone()[0]
        con.execute("UPDATE items SET netsuite_item_id = '999999' WHERE sku = ?", [a])
    refused, fine = h.place([(a, 1)]), h.place([(b, 1)])
    through(h, refused, fine)
    [rejected] = h.exceptions("ERP_REJECTED")
    assert rejected["entity_id"] == str(refused["id"]) and "999999" in rejected["message"]
    assert json.loads(rejected["details"])["status"] == 400
    assert h.sales_orders(refused) == [] and h.goods_outs(refused) == []  # reached neither system
    assert len(h.goods_outs(fine)) == 1  # the refusal held up no other order
    # no ORPHAN_ORDER on top, however long it waits: ERP_REJECTED already says why
    with h.store.read() as con:
        late = unbound_candidates(con, h.policies, now=utcnow() + timedelta(days=1))
        report = orphan_orders(con, h.policies, None, now=utcnow() + timedelta(days=1))
    assert str(refused["id"]) not in [c["order_id"] for c in late]
    assert str(refused["id"]) not in [f.entity_id for f in report.findings]

    with h.store.write() as con:  # merchandising restores the item
        con.execute("UPDATE items SET netsuite_item_id = ? WHERE sku = ?", [good_id, a])
    h.send()
    assert h.exceptions("ERP_REJECTED") == []
    assert len(h.sales_orders(refused)) == 1 and len(h.goods_outs(refused)) == 1


def test_dagster_assets_run_the_flow(world, h: Harness):
    from clarus_pipelines.assets.orders import defs as orders_defs

    a = h.skus(1)[0]
    order = h.place([(a, 3)])
    h.land("orders/create", order)
    defs = h.view.definitions(orders_defs)
    # no run config: the sales order is booked to the tenant's NetSuite customer from the policies
    result = defs.resolve_job_def("orders_into_warehouse").execute_in_process(instance=dg.DagsterInstance.ephemeral())
    assert result.success
    assert h.order(order)["status"] == "ACKNOWLEDGED"
    assert len(h.goods_outs(order)) == 1
    [so] = h.sales_orders(order)
    assert so["entity"]["id"] == POLICIES.tenant.netsuite_customer_id == CUSTOMER


# -------------------------------------------------------------------------- idempotency


def test_idempotent_under_faults_retries_and_reruns(h: Harness):
    skus = h.skus(3)
    orders = [h.place([(skus[i % 3], 1 + i % 2), (skus[(i + 1) % 3], 1)]) for i in range(6)]
    deliveries = [(topic, order, None, via) for order in orders
                  for topic, via in (("orders/create", "webhook"), ("orders/paid", "reconciliation"))]
    deliveries += [("orders/create", orders[0], "shopify:webhook:dup", "webhook")] * 2  # a duplicate delivery
    h.land_many(deliveries)
    seen = len(h.cl.requests())
    h.world.set_faults(FaultConfig(error_rate=0.2, latency_ms=(0, 5), burst_429_rate=0.05,
                                           burst_429_length=2, retry_after_s=0.05))
    try:
        # Goods out creates that land in Clarus but whose answers are lost.
        h.cl.lose_next_responses(2, status=502, path_prefix="/api/goods_outs")
        for _ in range(2):  # a re-run, as after a crash or a sensor firing twice
            h.intake()
            h.send()
    finally:
        h.world.set_faults(FaultConfig())
    for order in orders:
        assert h.order(order)["status"] == "ACKNOWLEDGED", h.journey(order)
        assert len(h.goods_outs(order)) == 1
        assert len(h.sales_orders(order)) == 1
    references = [g["reference"] for g in h.cl.goods_outs() if g["external_system_reference1"] in {str(o["id"]) for o in orders}]
    assert sorted(references) == sorted(o["name"] for o in orders)
    assert any(r["status"] >= 500 for r in h.cl.requests(seen)), "the run should have met faults"
    with h.store.read() as con:
        writes = con.execute("SELECT system, status, count(*) FROM outbound_writes GROUP BY ALL ORDER BY ALL").fetchall()
    assert writes == [("clarus", "done", 6), ("netsuite", "done", 6)]


def test_goods_out_created_by_a_lost_run_is_bound_not_duplicated(h: Harness):
    from clarus_pipelines.domain.goods_out import body_dicts, build_goods_outs
    from clarus_pipelines.domain.order_flow import carriers_table, products_table
    from clarus_pipelines.domain.orders import parse_orders, validate_orders

    a = h.skus(1)[0]
    order = h.place([(a, 1)])
    with h.store.read() as con:
        verdicts = validate_orders(parse_orders([order], POLICIES.sku_cleaning), products=products_table(con), policies=POLICIES)
        body = body_dicts(build_goods_outs(verdicts, policies=POLICIES, now=utcnow(), carriers=carriers_table(con)))[str(order["id"])]
    h.world.clarus.ensure_goods_out(body)  # it reached Clarus; our record of it did not survive
    through(h, order)
    assert len(h.goods_outs(order)) == 1
    assert "already existed" in [e for e in _causes(h, order) if "Clarus goods out" in e][0]


def _causes(h: Harness, order: dict) -> list[str]:
    return h.view.causes(order["id"])


# ------------------------------------------------------------------------ edits


def test_edit_before_allocation_amends_lines(h: Harness):
    a, b, c = h.skus(3)
    order = h.place([(a, 1), (b, 2)])
    through(h, order)
    [before] = h.goods_outs(order)
    assert before["goods_out_status"]["code"] == "DRAFT"
    line_a = next(l for l in order["line_items"] if l["sku"] == a)
    line_b = next(l for l in order["line_items"] if l["sku"] == b)
    edited = h.sh.edit_order(order["id"], quantities={line_a["id"]: 3, line_b["id"]: 0}, add=[{"sku": c, "quantity": 1}])
    h.land("orders/updated", edited)
    report = h.intake()
    assert report.edits_pending == 1
    changes = h.changes()
    assert changes.amended == 1
    [after] = h.goods_outs(order)
    assert after["id"] == before["id"] and after["reference"] == order["name"]
    assert sorted((l["product"]["code"], l["order_quantity"]) for l in after["lines"]) == sorted([(a, 3.0), (c, 1.0)])
    # The ERP follows the edit too, or the warehouse would ship a line NetSuite cannot fulfil.
    assert h.sales_order_lines(order) == sorted([(a, 3.0), (c, 1.0)])
    assert h.journey(order)[-2:] == ["EDIT_RECEIVED", "AMENDED"]
    assert "NetSuite sales order" in _causes(h, order)[-1] and "3 line change(s)" in _causes(h, order)[-1]
    assert h.order(order)["change_pending"] is None
    # Repeating the sync (a retry after a lost answer) finds nothing to change.
    [so] = h.sales_orders(order)
    with h.store.read() as con:
        items = dict(con.execute("SELECT sku, netsuite_item_id FROM items").fetchall())
    wanted = [{"item": {"id": items[a]}, "quantity": 3}, {"item": {"id": items[c]}, "quantity": 1}]
    assert h.world.netsuite.sync_sales_order(so["id"], wanted) == {}
    assert h.sales_order_lines(order) == sorted([(a, 3.0), (c, 1.0)])


def test_netsuite_refusing_the_edit_goes_to_review_not_round_and_round(h: Harness):
    a, b = h.skus(2)
    order = h.place([(a, 1)])
    through(h, order)
    [so] = h.sales_orders(order)
    h.world.netsuite.update_sales_order(so["id"], {"orderStatus": "C"})  # finance closed it in NetSuite
    line = order["line_items"][0]
    h.land("orders/updated", h.sh.edit_order(order["id"], quantities={line["id"]: 2}, add=[{"sku": b, "quantity": 1}]))
    h.intake()
    report = h.changes()
    assert (report.needs_review, report.failed, report.amended) == (1, 0, 0)
    [review] = h.exceptions("ORDER_EDIT_NEEDS_REVIEW")
    assert "NetSuite refused to change sales order" in review["message"]
    assert h.order(order)["change_pending"] is None  # decided once, not retried every run
    [goods_out] = h.goods_outs(order)
    assert [(l["product"]["code"], l["order_quantity"]) for l in goods_out["lines"]] == [(a, 1.0)]  # Clarus untouched


def test_address_change_before_allocation_reaches_clarus_and_netsuite(h: Harness):
    [a] = h.skus(1)
    order = h.place([(a, 1)])
    through(h, order)
    moved = {**ADDRESS, "address1": "1 Horse Guards Road", "zip": "SW1A 2HQ"}
    h.land("orders/updated", h.sh.update_shipping_address(order["id"], moved))
    h.intake()
    assert h.changes().amended == 1
    [goods_out] = h.goods_outs(order)
    assert (goods_out["delivery_address"]["address_1"], goods_out["delivery_address"]["postcode"]) == ("1 Horse Guards Road", "SW1A 2HQ")
    [so] = h.sales_orders(order)
    assert (so["shippingAddress"]["addr1"], so["shippingAddress"]["zip"]) == ("1 Horse Guards Road", "SW1A 2HQ")
    assert so["shippingAddress"]["city"] == "London"  # untouched fields stay
    assert h.sales_order_lines(order) == [(a, 1.0)]  # lines unchanged
    assert _causes(h, order)[-1].endswith("shipping address updated")


def test_edit_before_allocation_cancel_and_recreate(h: Harness):
    policies = POLICIES.model_copy(update={"order_edit_policy": "cancel_and_recreate"})
    h.policies = policies
    a, b = h.skus(2)
    order = h.place([(a, 1)])
    through(h, order)
    line = order["line_items"][0]
    edited = h.sh.edit_order(order["id"], quantities={line["id"]: 2}, add=[{"sku": b, "quantity": 1}])
    h.land("orders/updated", edited)
    h.intake()
    assert h.changes().replaced == 1
    h.send()
    goods_outs = {g["reference"]: g for g in h.goods_outs(order)}
    assert set(goods_outs) == {order["name"], f"{order['name']}-R1"}
    assert goods_outs[order["name"]]["goods_out_status"]["code"] == "CANCELLED"
    replacement = goods_outs[f"{order['name']}-R1"]
    assert sorted((l["product"]["code"], l["order_quantity"]) for l in replacement["lines"]) == sorted([(a, 2.0), (b, 1.0)])
    assert h.sales_order_lines(order) == sorted([(a, 2.0), (b, 1.0)])
    row = h.order(order)
    assert (row["status"], row["clarus_reference"], row["replacement_count"]) == ("ACKNOWLEDGED", f"{order['name']}-R1", 1)
    assert len(h.sales_orders(order)) == 1
    # A re-run changes nothing.
    h.intake()
    h.changes()
    h.send()
    assert len(h.goods_outs(order)) == 2


def test_edit_after_allocation_needs_review(h: Harness):
    a, b = h.skus(2)
    order = h.place([(a, 1), (b, 1)])
    through(h, order)
    h.cl.advance(3600 / 4 * 2 + 1)  # DRAFT -> PENDING -> ALLOCATED
    [goods_out] = h.goods_outs(order)
    assert goods_out["goods_out_status"]["code"] == "ALLOCATED"
    line = order["line_items"][0]
    h.land("orders/updated", h.sh.edit_order(order["id"], quantities={line["id"]: 4}))
    h.intake()
    assert h.changes().needs_review == 1
    [review] = h.exceptions("ORDER_EDIT_NEEDS_REVIEW")
    details = json.loads(review["details"])
    assert details["clarus_status"] == "ALLOCATED"
    assert details["difference"]["lines"] == [{"change": "UPDATE", "line_id": str(line["id"]), "sku": line["sku"], "was": 1, "now": 4}]
    [unchanged] = h.goods_outs(order)
    assert [l["order_quantity"] for l in unchanged["lines"]] == [1.0, 1.0]


def test_update_without_warehouse_change_is_ignored(h: Harness):
    a = h.skus(1)[0]
    order = h.place([(a, 1)])
    through(h, order)
    tagged = dict(order, tags="vip", updated_at="2099-01-01T00:00:00+00:00")
    h.land("orders/updated", tagged)
    h.intake()
    report = h.changes()
    assert report.no_change == 1 and h.exceptions() == []
    assert h.journey(order)[-1] == "EDIT_IGNORED"


# ------------------------------------------------------------------------ cancellations


def test_cancel_when_netsuite_already_cancelled_the_order_completes(h: Harness):
    [a] = h.skus(1)
    order = h.place([(a, 1)])
    through(h, order)
    [so] = h.sales_orders(order)
    h.world.netsuite.update_sales_order(so["id"], {"orderStatus": "C"})  # finance got there first
    h.land("orders/cancelled", h.sh.cancel_order(order["id"]))
    h.intake()
    report = h.changes()
    assert (report.cancelled, report.failed) == (1, 0)  # not retried forever against a closed order
    [goods_out] = h.goods_outs(order)
    assert goods_out["goods_out_status"]["code"] == "CANCELLED"
    assert h.order(order)["status"] == "CANCELLED" and h.order(order)["change_pending"] is None


def test_cancel_before_dispatch_cancels_goods_out_and_closes_erp_lines(world, h: Harness):
    """Through Dagster: the order-changes sensor asks for a run, the job applies the cancellation."""
    from clarus_pipelines.sensors.orders import order_changes_job, order_changes_sensor

    a, b = h.skus(2)
    order = h.place([(a, 1), (b, 2)])
    through(h, order)
    cancelled = h.sh.cancel_order(order["id"])
    h.land("orders/cancelled", cancelled)
    assert h.intake().cancels_pending == 1

    state = h.state_resource()
    request = order_changes_sensor(dg.build_sensor_context(resources={"state": state}))
    assert isinstance(request, dg.RunRequest)
    result = order_changes_job.execute_in_process(
        instance=dg.DagsterInstance.ephemeral(),
        resources=h.view.resources(),
        run_config={"ops": {"send_ready_orders_op": {"config": {"netsuite_customer_id": CUSTOMER}}}},
    )
    assert result.success
    [goods_out] = h.goods_outs(order)
    assert goods_out["goods_out_status"]["code"] == "CANCELLED"
    [sales_order] = h.sales_orders(order)
    assert all(line["isClosed"] for line in sales_order["item"]["items"])
    assert h.order(order)["status"] == "CANCELLED"
    assert h.journey(order)[-2:] == ["CANCEL_REQUESTED", "CANCELLED"]
    assert isinstance(order_changes_sensor(dg.build_sensor_context(resources={"state": state})), dg.SkipReason)
    # The orders/updated that follows a cancellation changes nothing.
    h.land("orders/updated", cancelled)
    h.intake()
    assert h.changes().pending == 0


def test_cancel_after_dispatch_is_an_exception_for_cx(h: Harness):
    a = h.skus(1)[0]
    order = h.place([(a, 1)])
    through(h, order)
    h.cl.advance(3600 + 10)  # all the way to COMPLETED
    assert h.goods_outs(order)[0]["goods_out_status"]["code"] == "COMPLETED"
    h.land("orders/cancelled", h.sh.cancel_order(order["id"]))
    h.intake()
    assert h.changes().cancel_after_dispatch == 1
    [exc] = h.exceptions("CANCEL_AFTER_DISPATCH")
    assert exc["owner"] == "cx" and exc["entity_id"] == str(order["id"])
    assert h.goods_outs(order)[0]["goods_out_status"]["code"] == "COMPLETED"
    assert not any(line["isClosed"] for line in h.sales_orders(order)[0]["item"]["items"])


def test_cancel_of_a_held_order_needs_no_remote_call(h: Harness):
    a = h.skus(1)[0]
    order = h.place([(a, 1)], address=None)
    through(h, order)
    later = utcnow() + timedelta(minutes=POLICIES.timings.held_alert_minutes + 1)
    recheck_held_orders(h.store, POLICIES, shopify=h.world.shopify, now=later)
    assert len(h.exceptions("ORDER_INCOMPLETE")) == 1
    h.land("orders/cancelled", h.sh.cancel_order(order["id"]))
    h.intake()
    assert h.order(order)["status"] == "CANCELLED"
    assert h.exceptions("ORDER_INCOMPLETE") == []
    assert h.goods_outs(order) == [] and h.sales_orders(order) == []


def test_a_fulfilled_orders_update_is_not_an_edit(h: Harness):
    """Our own Shopify fulfilment comes back as orders/updated: stored, no order-changes work."""
    a, b = h.skus(2)
    order = h.place([(a, 1), (b, 2)])
    through(h, order)
    h.cl.advance(3600 + 10)  # dispatched
    h.sh.create_fulfillment(order["id"], tracking_number="AA473124829GB", company="Royal Mail")
    fulfilled = h.sh.order(order["id"])
    assert fulfilled["fulfillment_status"] == "fulfilled"
    h.land("orders/updated", fulfilled)
    report = h.intake()
    assert report.edits_pending == 0 and report.applied == 1 and report.fulfilment_updates == 1
    stored = h.order(order)
    assert stored["change_pending"] is None and stored["status"] == "ACKNOWLEDGED"
    assert json.loads(stored["payload"])["fulfillment_status"] == "fulfilled"  # the newest version is kept
    assert h.changes().pending == 0  # nothing for the order-changes step: no run
    assert "EDIT_IGNORED" not in h.journey(order)
    # an edit the warehouse must see, on a partly fulfilled order, still is one
    partial = h.place([(a, 1), (b, 1)])
    through(h, partial)
    h.sh.create_fulfillment(partial["id"], {partial["line_items"][0]["id"]: 1})
    moved = dict(h.sh.order(partial["id"]), shipping_address={**ADDRESS, "address1": "2 Other Street"})
    assert moved["fulfillment_status"] == "partial"
    h.land("orders/updated", moved)
    assert h.intake().edits_pending == 1


def test_refund_after_dispatch_is_not_an_edit(h: Harness):
    a = h.skus(1)[0]
    order = h.place([(a, 2)])
    through(h, order)
    h.cl.advance(3600 + 10)  # dispatched
    line = order["line_items"][0]
    h.sh.refund_order(order["id"], line_items=[{"line_item_id": line["id"], "quantity": 1, "restock_type": "no_restock"}])
    refunded = h.sh.order(order["id"])
    assert refunded["line_items"][0]["current_quantity"] == 1
    h.land("orders/updated", refunded)
    h.intake()
    report = h.changes()
    assert report.no_change == 1 and h.exceptions("ORDER_EDIT_NEEDS_REVIEW") == []
    assert "refunds flow" in _causes(h, order)[-1]


def test_item_master_bootstrap_runs_until_products_are_bound(tmp_path):
    from clarus_pipelines.sensors.item_master import item_master_bootstrap

    state = StateStoreResource(path=str(tmp_path / "state.duckdb"))
    first = item_master_bootstrap(dg.build_sensor_context(resources={"state": state}))
    assert isinstance(first, dg.RunRequest) and first.run_key.startswith("item-master-bootstrap:")
    with state.store().write() as con:
        con.execute("INSERT INTO items (sku, sku_raw, clarus_product_id, updated_at) VALUES ('000123', '000123', '7', now())")
    bound = item_master_bootstrap(dg.build_sensor_context(resources={"state": state}))
    assert isinstance(bound, dg.SkipReason) and "1 SKU(s) bound" in bound.skip_message
