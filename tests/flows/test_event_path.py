"""The event path in one long-lived run (`sensors/event_path.py`): landings -> orders ->
dispatches -> Shopify in one drain, and the per-flow sensors yielding to a running drain."""

import dagster as dg
import pytest

from clarus_pipelines.domain.dispatch import DispatchState
from clarus_pipelines.receiver.landing import LandingZone
from clarus_pipelines.resources import LandingZoneResource, PoliciesResource, StateStoreResource
from clarus_pipelines.settings import SANDBOX_POLICIES

from tests.flows.test_dispatch_flow import DispatchWorld as World  # the shared world (tests/world.py) with dispatch helpers

pytestmark = pytest.mark.timeout(120)

FAST = {"idle_s": 0.0, "poll_s": 0.1, "erp_recheck_s": 0.0, "retry_base_s": 0.0}


def _defs(w: World):
    from clarus_pipelines.sensors.event_path import defs as event_path_defs

    resources = {
        "state": StateStoreResource(path=str(w.state_path)), "policies": PoliciesResource(path=str(SANDBOX_POLICIES)),
        "landing": LandingZoneResource(path=str(w.landing_dir)),
        "clarus": w.clarus, "shopify": w.shopify, "netsuite": w.netsuite,
    }
    return dg.Definitions.merge(event_path_defs, dg.Definitions(resources=resources)), resources


def test_one_event_path_run_takes_a_landed_dispatch_through_to_shopify(tmp_path):
    """The Clarus dispatch webhook is only landed (not ingested): one drain ingests it, records
    the shipment, posts the NetSuite item fulfilment, then the Shopify fulfilment, and reads it back."""
    w = World.local(tmp_path)
    try:
        [item] = w.items(1)
        order = w.place_order([(item, 1)], commit=True)
        w.warehouse(order["goods_out_id"])
        assert LandingZone(w.landing_dir).list_landings("clarus")  # landed, not yet in landed_events
        defs, _ = _defs(w)
        result = defs.resolve_job_def("event_path").execute_in_process(
            instance=dg.DagsterInstance.ephemeral(), run_config={"ops": {"drain_event_path": {"config": FAST}}})
        assert result.success
        [(_, state, if_id, fulfilment_id, _)] = w.shipments(order["order_id"])
        assert state == DispatchState.CHANNEL_CONFIRMED and if_id and fulfilment_id
        assert len(w.transform_posts()) == 1 and len(w.shopify_sb.fulfillments(int(order["order_id"]))) == 1
        moved = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
        assert {"landed_events", "shipments"} <= moved

        again = defs.resolve_job_def("event_path").execute_in_process(
            instance=dg.DagsterInstance.ephemeral(), run_config={"ops": {"drain_event_path": {"config": FAST}}})
        assert again.success and len(w.transform_posts()) == 1  # a second drain repeats nothing
        assert len(w.shopify_sb.fulfillments(int(order["order_id"]))) == 1
    finally:
        w.close()


def test_flow_sensors_yield_to_a_queued_or_running_event_path(tmp_path):
    """While an event_path run is queued or running, the ingest, orders and dispatch sensors skip
    (the drain takes their work); the event_path sensor starts a drain only for unprocessed landings."""
    from clarus_pipelines.assets.dispatch import dispatch_work_sensor
    from clarus_pipelines.sensors.event_path import event_path_job, event_path_sensor
    from clarus_pipelines.sensors.orders import orders_sensor
    from clarus_pipelines.sensors.webhooks import build_landing_sensor

    w = World.local(tmp_path)
    try:
        [item] = w.items(1)
        order = w.place_order([(item, 1)], commit=True)
        w.warehouse(order["goods_out_id"])
        _, resources = _defs(w)
        with dg.DagsterInstance.ephemeral() as instance:
            def tick(sensor, cursor=None):
                with dg.build_sensor_context(instance=instance, resources=resources, cursor=cursor) as context:
                    return sensor.evaluate_tick(context)

            first = tick(event_path_sensor)
            assert len(first.run_requests) == 1 and first.cursor
            assert len(tick(build_landing_sensor()).run_requests) == 1  # no drain yet: the ingest sensor acts as before

            instance.create_run_for_job(event_path_job, status=dg.DagsterRunStatus.STARTED)  # (queued needs a code origin)
            for sensor in (event_path_sensor, build_landing_sensor(), orders_sensor, dispatch_work_sensor):
                data = tick(sensor)
                assert not data.run_requests and "event_path" in data.skip_message, sensor.name

        w.ingest()  # every landing processed: a new tick finds nothing for a drain to do
        with dg.DagsterInstance.ephemeral() as instance:
            with dg.build_sensor_context(instance=instance, resources=resources) as context:
                data = event_path_sensor.evaluate_tick(context)
            assert not data.run_requests and data.cursor == first.cursor
    finally:
        w.close()


def test_events_stored_by_the_ingest_lane_wake_the_idle_orders_and_dispatch_lanes():
    """An idle lane does not sleep out its poll when ingest stored new events: with an hour's poll,
    the orders and dispatch lanes still take a second pass once ingest has moved something."""
    import threading

    from clarus_pipelines.sensors.event_path import _Lanes

    passes = {"ingest": 0, "orders": 0, "dispatch": 0}
    ingest_may_move = threading.Event()

    class Drain:
        def ingest(self):
            passes["ingest"] += 1
            if ingest_may_move.is_set() and passes["ingest"] > 1:
                ingest_may_move.clear()
                return 1
            return 0

        def orders(self):
            passes["orders"] += 1
            return 0

        def dispatch(self):
            passes["dispatch"] += 1
            return 0

    lanes = _Lanes(Drain(), poll_s=3600.0)
    threads = [threading.Thread(target=lanes._loop, args=(lane,), daemon=True) for lane in lanes.LANES]
    for thread in threads:
        thread.start()
    pause = threading.Event()

    def until(done) -> bool:
        for _ in range(300):
            if done():
                return True
            pause.wait(0.05)
        return False

    try:
        assert until(lambda: min(passes.values()) >= 1)  # every lane had its first pass: all sleep for an hour
        assert passes == {"ingest": 1, "orders": 1, "dispatch": 1}
        ingest_may_move.set()
        lanes.woken["ingest"].set()  # stands in for the ingest lane's own poll coming due
        assert until(lambda: passes["orders"] >= 2 and passes["dispatch"] >= 2), passes
    finally:
        lanes.halt()
        for thread in threads:
            thread.join(10)
    assert not any(thread.is_alive() for thread in threads)  # halt wakes the sleeping lanes at once
