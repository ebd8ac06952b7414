"""Fulfilments made outside the warehouse, end to end: the Shopify sandbox's admin fulfils an
order by hand (signed fulfillments/create through the real receiver), the flow judges it
against the shipments we know and applies the policy to the real Clarus sandbox goods out."""

from __future__ import annotations

from datetime import timedelta

import pytest

from clarus_pipelines.domain import outside_fulfilments as outside
from clarus_pipelines.exception_queue import utcnow
from world import POLICIES

pytestmark = pytest.mark.timeout(120)

LATER = timedelta(minutes=POLICIES.outside_fulfilment.grace_minutes + 1)
# The `world` fixture (tests/flows/conftest.py): Shopify's webhooks through the real receiver, as in the refund tests.
WORLD_OPTIONS = {"shopify_webhooks": True, "order_payloads": True}
STATE_BACKENDS = ("duckdb", "postgres")  # every test once per state backend


def _run(world, policies=POLICIES, *, at=None):
    world.ingest()
    at = at or utcnow() + LATER
    taken = outside.take_in_fulfilments(world.store)  # seen now; judged once the grace has passed
    judged = outside.judge_fulfilments(world.store, policies, now=at)
    acted = outside.act_on_outside_fulfilments(world.store, policies, clarus=world.clarus, now=at)
    return taken, judged, acted


def _goods_out_status(world, order):
    return world.clarus_sb.goods_out(order["goods_out_id"])["goods_out_status"]["code"]


def _cancels(world):
    return [r for r in world.clarus_sb.requests() if r["method"] in ("POST", "PATCH") and "goods_outs" in r["path"]]


def test_fulfilled_by_hand_is_held_for_a_person_by_default(world):
    (a,) = world.items(1)
    order = world.place_order([(a, 1)])
    fulfilment = world.shopify_sb.fulfil_by_hand(int(order["order_id"]))
    world.ingest()
    # within the grace period (our own fulfilment may still be being recorded): not judged
    assert outside.take_in_fulfilments(world.store) == 1
    assert outside.judge_fulfilments(world.store, POLICIES).outside == 0
    writes_before = len(_cancels(world))

    _, judged, _ = _run(world)
    assert judged.outside == 1 and judged.held == 1
    status, _, message = world.exception("FULFILLED_OUTSIDE_WMS", order["order_id"])
    assert status == "open"
    assert f"Shopify fulfilment {fulfilment['id']} was not made by the warehouse" in message
    assert f"Clarus goods out {order['goods_out_id']} is still open" in message
    # hold writes nothing to Clarus: the goods out is as it was, for ops to decide
    assert len(_cancels(world)) == writes_before and _goods_out_status(world, order) != "CANCELLED"
    assert "FULFILLED_OUTSIDE_WMS" in [h[1] for h in world.history(order["order_id"])]
    # judged once: running again neither re-judges nor writes
    _, again, acted = _run(world)
    assert again.outside == 0 and acted.cancelled == 0


def test_policy_cancel_cancels_the_goods_out_once(world, tmp_path):
    (a,) = world.items(1)
    order = world.place_order([(a, 1)])
    world.shopify_sb.fulfil_by_hand(int(order["order_id"]))
    cancel = POLICIES.model_copy(update={"outside_fulfilment": POLICIES.outside_fulfilment.model_copy(update={"action": "cancel"})})
    _, judged, acted = _run(world, cancel)
    assert judged.outside == 1 and acted.cancelled == 1
    assert _goods_out_status(world, order) == "CANCELLED"
    status, _, message = world.exception("FULFILLED_OUTSIDE_WMS", order["order_id"])
    assert status == "open" and f"cancelled Clarus goods out {order['goods_out_id']}" in message
    writes = len(_cancels(world))
    _, _, acted = _run(world, cancel)
    assert acted.cancelled == 0 and len(_cancels(world)) == writes


def test_too_late_to_cancel_says_the_goods_went_twice(world):
    (a,) = world.items(1)
    order = world.place_order([(a, 1)])
    for _ in range(40):  # the warehouse dispatches before anyone notices
        world.clarus_sb.advance(300)
        if _goods_out_status(world, order) == "COMPLETED":
            break
    world.shopify_sb.fulfil_by_hand(int(order["order_id"]))
    cancel = POLICIES.model_copy(update={"outside_fulfilment": POLICIES.outside_fulfilment.model_copy(update={"action": "cancel"})})
    _, _, acted = _run(world, cancel)
    assert acted.too_late == 1
    assert "the goods went out twice" in world.exception("FULFILLED_OUTSIDE_WMS", order["order_id"])[2]


def test_our_own_fulfilment_is_recognised(world):
    """Shopify sends fulfillments/create for ours too: a shipment we recorded carries its id."""
    (a,) = world.items(1)
    order = world.place_order([(a, 1)], dispatched=True)  # fulfilled in Shopify through the connector
    (ours,) = world.shopify_sb.fulfillments(int(order["order_id"]))
    world.post_shopify("fulfillments/create", ours)
    now = utcnow()
    with world.store.write() as con:
        con.execute("INSERT INTO shipments (shipment_id, order_id, state, shopify_fulfilment_id, tracking_number, updated_at)"
                    " VALUES ('S-1', ?, 'CHANNEL_FULFILLED', ?, 'AB123456789GB', ?)", [order["order_id"], str(ours["id"]), now])
    _, judged, _ = _run(world)
    assert judged.ours == 1 and judged.outside == 0
    assert world.exception("FULFILLED_OUTSIDE_WMS", order["order_id"]) is None


def test_fulfilment_facts_read_the_rest_shape(payloads):
    body = payloads.json("fulfillment_partial_ups_response")
    facts = outside.fulfilment_facts(body)
    assert facts["order_id"] == payloads["order_id"]
    assert facts["fulfilment_id"] == str(body["fulfillment"]["id"]) and facts["fulfilment_id"].isdigit()
    assert facts["tracking_number"] == payloads["ups_number"]
    assert facts["created_at"] is not None
    assert outside.fulfilment_facts({"id": 1, "order_id": 2, "tracking_numbers": ["1z 827 wk7"]})["tracking_number"] == "1Z827WK7"
    assert outside.fulfilment_facts({"note": "no id"}) is None
