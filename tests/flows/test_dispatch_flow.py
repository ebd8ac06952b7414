"""Dispatch back to the channel against the three sandboxes on loopback.

Each test places an order the way the orders flow leaves it (a Shopify order, a NetSuite
sales order, a Clarus goods out, and the state rows binding them), lets the Clarus
warehouse dispatch it (its webhooks go through the real receiver into `landed_events`),
then runs the dispatch flow and checks what each system received, and in which order,
from the systems' own request logs and records.
"""

import json
from collections import Counter
from datetime import timedelta

import dagster as dg
import httpx
import pytest
from world import World

import clarus_pipelines.domain.dispatch as dispatch
from clarus_pipelines.domain.dispatch import DispatchConfig, DispatchState
from clarus_pipelines.domain.skus import clean_sku
from clarus_pipelines.domain.tracking import TrackingRules
from clarus_pipelines.exception_queue import utcnow
from clarus_pipelines.settings import SANDBOX_POLICIES, load_policies
from clarus_pipelines.state import StateStore

pytestmark = pytest.mark.timeout(120)

POLICIES = load_policies(SANDBOX_POLICIES)
RULES = TrackingRules.from_policies(POLICIES)
FAST = DispatchConfig(erp_recheck_s=0.0, retry_base_s=0.0, workers=2)  # re-check at once: the tests move time themselves


class DispatchWorld(World):
    """The shared world (tests/world.py) with the dispatch flow's run and what it sent."""

    def run_dispatch(self):
        taken = dispatch.take_in_landings(self.store, RULES, POLICIES.sku_cleaning)
        advanced = dispatch.advance_all(self.store, self.netsuite, self.shopify, config=FAST)
        return taken, advanced

    def shipments(self, order_id):
        with self.store.read() as con:
            return con.execute("SELECT shipment_id, state, netsuite_fulfilment_id, shopify_fulfilment_id, tracking_number"
                               " FROM shipments WHERE order_id = ? ORDER BY shipment_id", [order_id]).fetchall()

    def transform_posts(self):
        return [r for r in self.netsuite_sb.requests() if r["method"] == "POST" and "!transform/itemFulfillment" in r["path"]]

    def fulfilment_posts(self):
        """`fulfillmentCreate` calls Shopify answered (GraphQL answers 200; refusals are userErrors)."""
        return self.shopify_sb.graphql_calls("fulfillmentCreate")


WORLD_CLASS = DispatchWorld  # the `world` fixture (tests/flows/conftest.py)
STATE_BACKENDS = ("duckdb", "postgres")  # every test once per state backend


def _ifs_of(world, so_id):
    return [r for r in world.netsuite_sb.item_fulfillments() if r["createdFrom"]["id"] == so_id]


def test_dispatch_before_the_erp_commits_waits_then_completes_in_order(world, payloads):
    item_a, item_b = world.items(2)
    order = world.place_order([(item_a, 2), (item_b, 1)])  # the sales order exists, not yet committed
    world.warehouse(order["goods_out_id"])
    world.ingest()

    world.run_dispatch()
    [(shipment_id, state, ns_if, shop_f, tracking)] = world.shipments(order["order_id"])
    assert state == DispatchState.DISPATCHED_IN_WMS and ns_if is None and shop_f is None
    assert world.transform_posts() == [] and world.fulfilment_posts() == []  # nothing went out early
    assert RULES.check("ROYAL_MAIL", tracking).status == "ok"
    with world.store.read() as con:
        assert con.execute("SELECT erp_wait_reason FROM shipments").fetchone()[0] == "sales order not committed yet"

    world.run_dispatch()  # still not committed: still held, and no noise in the journey
    assert world.shipments(order["order_id"])[0][1] == DispatchState.DISPATCHED_IN_WMS
    assert world.events(order["order_id"]).count("DISPATCH_AWAITING_ERP") == 1

    world.commit_erp()
    world.run_dispatch()
    [(_, state, ns_if, shop_f, _)] = world.shipments(order["order_id"])
    assert state == DispatchState.CHANNEL_CONFIRMED
    assert world.events(order["order_id"]) == [
        "DISPATCHED_IN_WMS", "DISPATCH_AWAITING_ERP", "ERP_ORDER_CONFIRMED", "ITEM_FULFILMENT_POSTED",
        "CHANNEL_FULFILLED", "CHANNEL_CONFIRMED",
    ]

    # the order of calls as the sandboxes received them: NetSuite status, transform, then Shopify
    [transform] = world.transform_posts()
    [fulfil] = world.fulfilment_posts()
    assert transform["status"] == 204 and fulfil["status"] == 200
    assert transform["time"] < fulfil["time"]
    shopify_reads_after = [r for r in world.shopify_sb.graphql_calls("fulfillment")
                           if r["body"]["variables"]["id"] == f"gid://shopify/Fulfillment/{shop_f}"]
    assert shopify_reads_after and shopify_reads_after[0]["time"] > fulfil["time"]  # read back to confirm

    # NetSuite fulfilled exactly the shipment, from the sales order
    [record] = _ifs_of(world, order["so_id"])
    assert record["id"] == ns_if and record["externalId"] == shipment_id
    assert sorted(line["quantity"] for line in record["item"]["items"]) == [1.0, 2.0]
    so_fixture = payloads.json("ns_transform_item_fulfillment")
    fixture_line_keys = {k.lower() for line in so_fixture["item"]["items"] for k in line}
    assert {k.lower() for line in transform["body"]["item"]["items"] for k in line} <= fixture_line_keys | {"itemreceive"}

    # Shopify got fulfillmentCreate (not the deprecated V2) with a FulfillmentInput its schema accepts
    from clarus_pipelines.sandbox.shopify_graphql import schema_problems
    assert schema_problems(fulfil["body"]["query"]) == []
    sent = fulfil["body"]["variables"]["fulfillment"]
    assert set(sent) <= {"lineItemsByFulfillmentOrder", "notifyCustomer", "originAddress", "trackingInfo"}
    assert set(sent["trackingInfo"]) <= {"company", "number", "numbers", "url", "urls"}
    assert sent["trackingInfo"]["company"] == "Royal Mail" and sent["trackingInfo"]["number"] == world.shipments(order["order_id"])[0][4]
    for group in sent["lineItemsByFulfillmentOrder"]:
        assert set(group) == {"fulfillmentOrderId", "fulfillmentOrderLineItems"}
        assert group["fulfillmentOrderId"].startswith("gid://shopify/FulfillmentOrder/")
        for item in group["fulfillmentOrderLineItems"]:
            assert set(item) == {"id", "quantity"}
    [fulfilment] = world.shopify_sb.fulfillments(int(order["order_id"]))
    assert sorted(li["quantity"] for li in fulfilment["line_items"]) == [1, 2]
    assert fulfilment["tracking_url"].startswith("https://www.royalmail.com/")


def test_partial_and_split_shipments_make_matching_partial_fulfilments(world):
    item_a, item_b = world.items(2)
    sku_a = clean_sku(item_a.sku, POLICIES.sku_cleaning)
    order = world.place_order([(item_a, 3), (item_b, 1)], stock={sku_a: 1}, commit=True)
    first = world.warehouse(order["goods_out_id"], until=("PART",))
    assert first["goods_out_status"]["code"] == "PART"
    world.ingest()
    world.run_dispatch()
    [(s1, state, *_)] = world.shipments(order["order_id"])
    assert state == DispatchState.CHANNEL_CONFIRMED

    world.clarus_sb.set_stock(sku_a, available=10)  # the rest arrives and ships separately
    assert world.warehouse(order["goods_out_id"])["goods_out_status"]["code"] == "COMPLETED"
    world.ingest()
    world.run_dispatch()
    shipments = world.shipments(order["order_id"])
    assert len(shipments) == 2 and {s[1] for s in shipments} == {DispatchState.CHANNEL_CONFIRMED}

    with world.store.read() as con:
        shipped = dict(con.execute("SELECT sku, sum(quantity)::INT FROM shipment_lines GROUP BY sku").fetchall())
    assert shipped == {sku_a: 3, clean_sku(item_b.sku, POLICIES.sku_cleaning): 1}
    # NetSuite: one partial item fulfilment per shipment, together exactly the order
    ifs = _ifs_of(world, order["so_id"])
    assert sorted(r["externalId"] for r in ifs) == sorted(s[0] for s in shipments)
    per_item = Counter()
    for record in ifs:
        for line in record["item"]["items"]:
            per_item[line["item"]["id"]] += line["quantity"]
    assert per_item == {item_a.internal_id: 3.0, item_b.internal_id: 1.0}
    # Shopify: two fulfilments, one per shipment, each with its own tracking number
    fulfilments = world.shopify_sb.fulfillments(int(order["order_id"]))
    assert len(fulfilments) == 2
    assert sorted(f["tracking_number"] for f in fulfilments) == sorted(s[4] for s in shipments)
    assert sum(li["quantity"] for f in fulfilments for li in f["line_items"]) == 4
    assert world.shopify_sb.order(int(order["order_id"]))["fulfillment_status"] == "fulfilled"


def test_duplicate_dispatch_webhooks_change_nothing(world):
    [item] = world.items(1)
    order = world.place_order([(item, 1)], commit=True)
    completed = world.warehouse(order["goods_out_id"])
    world.ingest()
    world.run_dispatch()
    before = (world.shipments(order["order_id"]), world.events(order["order_id"]), len(world.transform_posts()), len(world.fulfilment_posts()))
    with world.store.read() as con:
        updated_at = con.execute("SELECT updated_at FROM shipments").fetchone()[0]

    # the same webhook delivered again (deduplicated at the door) and a later event carrying
    # the same shipment (a different body, so it lands as a new event)
    headers = {"X-ClarusWMS-Domain": "sandbox.clarus-wms.test", "X-ClarusWMS-API-Domain": "127.0.0.1",
               "X-ClarusWMS-Subdomain": "sandbox", "X-ClarusWMS-Automation-ID": "101", "X-ClarusWMS-Integration-ID": "7"}
    same = {"resource_name": "goods_out", "event": "completed", "data": completed}
    later = {"resource_name": "goods_out", "event": "updated", "data": {**completed, "updated_at": "2099-01-01T00:00:00Z"}}
    for body in (same, same, later, later):
        assert httpx.post(world.clarus_sb.webhook_url, json=body, headers=headers).status_code == 200
    report = world.ingest()
    assert report.ingested == 1  # only the later event is new
    taken, _ = world.run_dispatch()
    assert taken["duplicate"] == 1 and taken["shipments_new"] == 0
    after = (world.shipments(order["order_id"]), world.events(order["order_id"]), len(world.transform_posts()), len(world.fulfilment_posts()))
    assert after == before
    with world.store.read() as con:
        assert con.execute("SELECT updated_at FROM shipments").fetchone()[0] == updated_at
    assert len(_ifs_of(world, order["so_id"])) == 1 and len(world.shopify_sb.fulfillments(int(order["order_id"]))) == 1


class Crash(BaseException):
    """A process dying mid-step (not an error the flow handles)."""


@pytest.mark.parametrize("crash_after", [DispatchState.ITEM_FULFILMENT_POSTED, DispatchState.CHANNEL_FULFILLED])
def test_a_crash_after_a_remote_write_resumes_without_repeating_it(world, monkeypatch, crash_after):
    [item] = world.items(1)
    order = world.place_order([(item, 2)], commit=True)
    world.warehouse(order["goods_out_id"])
    world.ingest()
    dispatch.take_in_landings(world.store, RULES, POLICIES.sku_cleaning)

    real = dispatch._record_step_result

    def crash_before_recording(store, shipment, key, remote_id, to, *args, **kwargs):
        if to == crash_after:
            raise Crash(f"killed after the remote write, before recording {to}")
        return real(store, shipment, key, remote_id, to, *args, **kwargs)

    monkeypatch.setattr(dispatch, "_record_step_result", crash_before_recording)
    with pytest.raises(Crash):
        dispatch.advance_all(world.store, world.netsuite, world.shopify, config=DispatchConfig(workers=1))
    with world.store.read() as con:
        key = (dispatch.item_fulfilment_key if crash_after == DispatchState.ITEM_FULFILMENT_POSTED else dispatch.shopify_fulfilment_key)(
            con.execute("SELECT shipment_id FROM shipments").fetchone()[0])
        assert con.execute("SELECT status FROM outbound_writes WHERE idempotency_key = ?", [key]).fetchone()[0] == "pending"
    posts_before = (len(world.transform_posts()), len(world.fulfilment_posts()))

    monkeypatch.setattr(dispatch, "_record_step_result", real)
    world.run_dispatch()
    [(_, state, ns_if, shop_f, _)] = world.shipments(order["order_id"])
    assert state == DispatchState.CHANNEL_CONFIRMED
    assert len(_ifs_of(world, order["so_id"])) == 1
    assert len(world.shopify_sb.fulfillments(int(order["order_id"]))) == 1
    # the write that had succeeded was not sent again
    if crash_after == DispatchState.ITEM_FULFILMENT_POSTED:
        assert len(world.transform_posts()) == posts_before[0] == 1
    else:
        assert len(world.fulfilment_posts()) == posts_before[1] == 1
        assert len(world.transform_posts()) == 1
    assert world.events(order["order_id"]).count(crash_after.value) == 1


def test_a_crash_between_steps_resumes_at_the_next_step(world, monkeypatch):
    [item] = world.items(1)
    order = world.place_order([(item, 1)], commit=True)
    world.warehouse(order["goods_out_id"])
    world.ingest()
    monkeypatch.setattr(dispatch, "_create_channel_fulfilment", lambda *a, **k: (_ for _ in ()).throw(Crash("killed")))
    with pytest.raises(Crash):
        world.run_dispatch()
    assert world.shipments(order["order_id"])[0][1] == DispatchState.ITEM_FULFILMENT_POSTED
    monkeypatch.undo()
    world.run_dispatch()
    assert world.shipments(order["order_id"])[0][1] == DispatchState.CHANNEL_CONFIRMED
    assert len(world.transform_posts()) == 1 and len(world.fulfilment_posts()) == 1


def test_failures_are_retried_with_backoff_and_recorded(world):
    [item] = world.items(1)
    order = world.place_order([(item, 1)], commit=True)
    world.warehouse(order["goods_out_id"])
    world.ingest()
    slow = DispatchConfig(erp_recheck_s=0.0, retry_base_s=300.0, workers=1)
    with world.store.write() as con:  # the item master lost the NetSuite id: the transform cannot be built
        con.execute("UPDATE items SET netsuite_item_id = NULL")
    dispatch.take_in_landings(world.store, RULES, POLICIES.sku_cleaning)
    assert Counter(dispatch.advance_all(world.store, world.netsuite, world.shopify, config=slow)) == {"failed": 1}
    with world.store.read() as con:
        state, attempts, error, next_at = con.execute("SELECT state, attempts, last_error, next_attempt_at FROM shipments").fetchone()
    assert state == DispatchState.ERP_ORDER_CONFIRMED and attempts == 1 and error.startswith("blocked: no NetSuite item id")
    assert next_at > utcnow() + timedelta(seconds=200)
    assert dispatch.advance_all(world.store, world.netsuite, world.shopify, config=slow) == Counter()  # not due yet
    with world.store.write() as con:
        con.execute("UPDATE items SET netsuite_item_id = ?", [item.internal_id])
        con.execute("UPDATE shipments SET next_attempt_at = NULL")
    world.run_dispatch()
    assert world.shipments(order["order_id"])[0][1] == DispatchState.CHANNEL_CONFIRMED


def test_a_netsuite_commit_webhook_wakes_the_dispatch_without_waiting_for_the_back_off(tmp_path):
    """The dispatch waits for NetSuite with a back-off of minutes; the commit's own webhook ends the wait."""
    from clarus_pipelines.assets.dispatch import dispatch_work_sensor

    w = DispatchWorld.local(tmp_path, netsuite_webhooks=True)
    try:
        resources = {"state": w.state_resource()}

        def sensor_tick(cursor=None):
            with dg.build_sensor_context(resources=resources, cursor=cursor) as context:
                return dispatch_work_sensor(context)

        patient = DispatchConfig(erp_recheck_s=600.0, erp_recheck_max_s=600.0, workers=1)  # production-like back-off
        [item] = w.items(1)
        order = w.place_order([(item, 1)])  # the sales order exists, not committed
        w.warehouse(order["goods_out_id"])
        w.ingest()
        assert w.netsuite_sb.webhook_sender.flush(20)
        w.ingest("netsuite")  # the sales order's salesorder/create
        dispatch.take_in_landings(w.store, RULES, POLICIES.sku_cleaning)
        assert dispatch.advance_all(w.store, w.netsuite, w.shopify, config=patient) == Counter({"waiting_erp": 1})
        assert dispatch.advance_all(w.store, w.netsuite, w.shopify, config=patient) == Counter()  # backing off
        with w.store.read() as con:
            assert con.execute("SELECT next_attempt_at FROM shipments").fetchone()[0] > utcnow() + timedelta(minutes=9)
        assert isinstance(sensor_tick(), dg.SkipReason)  # nothing due for ten minutes

        w.commit_erp()  # NetSuite commits the sales order and says so by webhook
        assert w.netsuite_sb.webhook_sender.flush(20)
        w.ingest("netsuite")
        request = sensor_tick()
        [run] = request.run_requests
        assert run.tags["dispatch/erp_news"] == "1"
        # until that run takes the news in, the sensor does not queue another one behind it
        again = sensor_tick(request.cursor)
        assert isinstance(again, dg.SkipReason) and "already requested" in again.skip_message
        outcome = dispatch.advance_all(w.store, w.netsuite, w.shopify, config=patient)
        assert outcome == Counter({DispatchState.CHANNEL_CONFIRMED.value: 1}), outcome
        assert w.shipments(order["order_id"])[0][1] == DispatchState.CHANNEL_CONFIRMED
        assert isinstance(sensor_tick(), dg.SkipReason)  # the news is used once
    finally:
        w.close()


def test_dagster_assets_checks_and_stuck_sensor_over_the_sandbox(tmp_path):
    """The production wiring: the dispatch job (asset + checks) and the stuck-state sync job
    (a sensor until issue 13 made it a scheduled job)."""
    from clarus_pipelines.assets.dispatch import defs as dispatch_defs
    from clarus_pipelines.sensors.stuck_states import stuck_states_sync

    w = DispatchWorld.local(tmp_path, clarus_kwargs={"missing_tracking_rate": 1.0})
    try:
        [item] = w.items(1)
        order = w.place_order([(item, 1)])  # not committed: the dispatch is held
        w.warehouse(order["goods_out_id"])
        w.ingest()
        resources = w.resources()
        defs = w.definitions(dispatch_defs)
        instance = dg.DagsterInstance.ephemeral()
        run_config = {"ops": {"shipments": {"config": {"erp_recheck_s": 0.0, "retry_base_s": 0.0}}}}

        result = defs.resolve_job_def("dispatch").execute_in_process(instance=instance, run_config=run_config)
        assert result.success
        assert result.asset_materializations_for_node("shipments")[0].metadata["dagster/row_count"].value == 1
        checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
        assert not checks["tracking_present"].passed and checks["tracking_present"].severity == dg.AssetCheckSeverity.WARN
        assert checks["tracking_format"].passed and checks["tracking_unique"].passed and checks["dispatched_within_ordered"].passed
        [(shipment_id, state, *_)] = w.shipments(order["order_id"])
        assert state == DispatchState.DISPATCHED_IN_WMS

        def open_codes():
            with w.store.read() as con:
                return sorted(con.execute("SELECT code, entity_id FROM exceptions WHERE status <> 'resolved'").fetchall())

        assert open_codes() == [("TRACKING_MISSING", shipment_id)]
        # an hour and a half later the dispatch is still held: the stuck-state sync raises it
        with w.store.write() as con:
            con.execute("UPDATE shipments SET first_seen_at = first_seen_at - INTERVAL 90 MINUTE")
        assert stuck_states_sync.execute_in_process(resources=resources, instance=instance).success
        assert open_codes() == [("DISPATCH_AWAITING_ERP", order["order_id"]), ("TRACKING_MISSING", shipment_id)]

        w.commit_erp()
        w.clarus.update_shipment(shipment_id, {"tracking_number": "AA473124829GB"})  # the warehouse adds the number
        sweep = defs.resolve_job_def("dispatch_sweep").execute_in_process(
            instance=instance, run_config={**run_config, "ops": {**run_config["ops"], "dispatch_reconciliation": {"config": {}}}})
        assert sweep.success
        assert stuck_states_sync.execute_in_process(resources=resources, instance=instance).success
        assert w.shipments(order["order_id"])[0][1] == DispatchState.CHANNEL_CONFIRMED
        assert open_codes() == []  # both cleared themselves
        [fulfilment] = w.shopify_sb.fulfillments(int(order["order_id"]))
        assert fulfilment["tracking_number"] == "AA473124829GB"
    finally:
        w.close()


def test_tracking_added_in_clarus_after_the_fulfilment_reaches_shopify(tmp_path):
    w = DispatchWorld.local(tmp_path, clarus_kwargs={"missing_tracking_rate": 1.0})
    try:
        [item] = w.items(1)
        order = w.place_order([(item, 1)], commit=True)
        w.warehouse(order["goods_out_id"])
        w.ingest()
        w.run_dispatch()
        [(shipment_id, state, _, shop_f, tracking)] = w.shipments(order["order_id"])
        assert state == DispatchState.CHANNEL_CONFIRMED and tracking is None  # shipped without tracking
        assert w.shopify_sb.fulfillments(int(order["order_id"]))[0]["tracking_number"] is None

        w.clarus.update_shipment(shipment_id, {"tracking_number": "RB123456785GB"})  # the warehouse adds it
        sweep = dispatch.record_sweep(w.store, list(w.clarus.iter_shipments()), RULES, POLICIES.sku_cleaning,
                                      window_start=utcnow() - timedelta(hours=1))
        assert sweep.outcomes["recorded"] == 1 and sweep.new_shipments == []
        taken, advanced = w.run_dispatch()
        assert advanced == {"CHANNEL_CONFIRMED": 1}
        [fulfilment] = w.shopify_sb.fulfillments(int(order["order_id"]))
        assert fulfilment["id"] == int(shop_f) and fulfilment["tracking_number"] == "RB123456785GB"
        assert fulfilment["tracking_company"] == "Royal Mail"
        assert w.events(order["order_id"])[-2:] == ["TRACKING_UPDATED", "TRACKING_POSTED"]
        assert w.run_dispatch()[1] == Counter()  # nothing left to do
        updates = w.shopify_sb.graphql_calls("fulfillmentTrackingInfoUpdate")
        assert len(updates) == 1 and updates[0]["body"]["variables"]["tracking"]["number"] == "RB123456785GB"
    finally:
        w.close()


def test_one_advancing_pass_at_a_time(world):
    [item] = world.items(1)
    order = world.place_order([(item, 1)], commit=True)
    world.warehouse(order["goods_out_id"])
    world.ingest()
    dispatch.take_in_landings(world.store, RULES, POLICIES.sku_cleaning)
    with dispatch.advancing_lock(world.store) as mine:
        assert mine
        assert dispatch.advance_all(world.store, world.netsuite, world.shopify, config=FAST) == {"busy": 1}
    assert world.shipments(order["order_id"])[0][1] == DispatchState.DISPATCHED_IN_WMS
    assert dispatch.advance_all(world.store, world.netsuite, world.shopify, config=FAST) == {"CHANNEL_CONFIRMED": 1}


def test_over_dispatch_is_measured_against_what_was_placed_not_what_is_left(tmp_path):
    store = StateStore(tmp_path / "state.duckdb")
    now = utcnow()
    payload = {"line_items": [{"id": 11, "quantity": 2, "current_quantity": 0},  # both units refunded after dispatch
                              {"id": 12, "quantity": 1, "current_quantity": 1}]}
    with store.write() as con:
        for order_id in ("A", "B"):
            con.execute("INSERT INTO orders (order_id, order_name, status, payload, received_at, updated_at)"
                        " VALUES (?, ?, 'ACKNOWLEDGED', ?, ?, ?)", [order_id, f"#{order_id}", json.dumps(payload), now, now])
            con.execute("INSERT INTO order_lines (order_id, line_id, sku, quantity) VALUES (?, '11', 'MUG', 0), (?, '12', 'TEE', 1)",
                        [order_id, order_id])
            con.execute("INSERT INTO shipments (shipment_id, order_id, state, first_seen_at, updated_at) VALUES (?, ?, 'CHANNEL_CONFIRMED', ?, ?)",
                        [f"S{order_id}", order_id, now, now])
        con.execute("INSERT INTO shipment_lines (shipment_id, sku, quantity) VALUES ('SA', 'MUG', 2), ('SA', 'TEE', 1),"
                    " ('SB', 'MUG', 2), ('SB', 'TEE', 2), ('SB', 'SOCKS', 1)")
        scope, findings = dispatch.over_dispatch_findings(con, now)
    assert sorted(scope) == ["A", "B"]
    [finding] = findings
    assert finding.entity_id == "B"
    assert finding.message == "order #B dispatched more than ordered: SOCKS 1 shipped / 0 ordered, TEE 2 shipped / 1 ordered"


def test_tracking_invalid_for_a_malformed_and_a_reused_number_raised_then_cleared(tmp_path):
    """The packer keys a number with a typo on one parcel and reuses one label on two orders:
    TRACKING_INVALID is raised on each shipment by the dispatch job's checks, and clears
    itself once the warehouse corrects the numbers in Clarus."""
    from clarus_pipelines.assets.dispatch import defs as dispatch_defs

    w = DispatchWorld.local(tmp_path)
    try:
        a, b, c = (w.place_order([(item, 1)], commit=True) for item in w.items(3))
        w.clarus_sb.keyed_tracking[int(a["goods_out_id"])] = "AB12345GB"  # malformed Royal Mail S10
        w.clarus_sb.keyed_tracking[int(b["goods_out_id"])] = "AA473124829GB"
        w.clarus_sb.keyed_tracking[int(c["goods_out_id"])] = "AA473124829GB"  # the same label on another order
        for order in (a, b, c):
            w.warehouse(order["goods_out_id"])
        w.ingest()
        resources = w.resources()
        defs = w.definitions(dispatch_defs)
        instance = dg.DagsterInstance.ephemeral()
        run_config = {"ops": {"shipments": {"config": {"erp_recheck_s": 0.0, "retry_base_s": 0.0}}}}
        result = defs.resolve_job_def("dispatch").execute_in_process(instance=instance, run_config=run_config)
        assert result.success
        checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
        assert not checks["tracking_format"].passed and not checks["tracking_unique"].passed
        [(ship_a, *_)], [(ship_b, *_)], [(ship_c, *_)] = (w.shipments(o["order_id"]) for o in (a, b, c))

        def invalid():
            with w.store.read() as con:
                return dict(con.execute("SELECT entity_id, message FROM exceptions WHERE code = 'TRACKING_INVALID'"
                                        " AND status <> 'resolved'").fetchall())

        found = invalid()
        assert set(found) == {ship_a, ship_b, ship_c}
        assert "AB12345GB" in found[ship_a]
        assert "tracking AA473124829GB is on 2 different orders" in found[ship_b] == found[ship_c]

        # the warehouse corrects both in Clarus; the sweep reads them back and the checks clear
        w.clarus.update_shipment(ship_a, {"tracking_number": "RB123456785GB"})
        w.clarus.update_shipment(ship_c, {"tracking_number": "AA473124832GB"})
        sweep = defs.resolve_job_def("dispatch_sweep").execute_in_process(
            instance=instance, run_config={**run_config, "ops": {**run_config["ops"], "dispatch_reconciliation": {"config": {}}}})
        assert sweep.success
        assert invalid() == {}
        with w.store.read() as con:
            resolved = con.execute("SELECT entity_id, resolved_by FROM exceptions WHERE code = 'TRACKING_INVALID'"
                                   " ORDER BY entity_id").fetchall()
        assert resolved == sorted((s, "auto") for s in (ship_a, ship_b, ship_c))
    finally:
        w.close()
