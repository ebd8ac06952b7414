"""Refunds end to end against the three sandboxes on loopback.

Each test places an order the way the orders (and, for dispatched ones, the dispatch)
flow leaves it: a Shopify order, a NetSuite sales order, a Clarus goods out and the state
rows binding them. The refund is made in the Shopify sandbox, whose signed refunds/create
and orders/updated webhooks go through the real receiver into `landed_events`; then the
refund flow runs, and the test checks what Clarus and NetSuite received (their own
request logs and records), the refund's state and the order's history.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import dagster as dg
import pytest
import yaml
from world import World

from clarus_pipelines.domain import refund_flow as flow
from clarus_pipelines.exception_queue import utcnow
from clarus_pipelines.sandbox.catalog_data import NETSUITE_WEB_CUSTOMER_ID
from clarus_pipelines.settings import SANDBOX_POLICIES, load_policies

pytestmark = pytest.mark.timeout(120)

POLICIES = load_policies(SANDBOX_POLICIES)


class RefundWorld(World):
    """The shared world (tests/world.py) with the refund flow's run and what it sent."""

    def run(self, *, now=None, policies=None):
        policies = policies or self.policies
        self.ingest()
        intake = flow.take_in_refunds(self.store, policies, now=now)
        steps = flow.run_refund_steps(self.store, policies, clarus=self.clarus, netsuite=self.netsuite,
                                      customer_id=NETSUITE_WEB_CUSTOMER_ID, now=now)
        exceptions = flow.sync_refund_exceptions(self.store, policies, now=now)
        return intake, steps, exceptions

    # ------------------------------------------------------------------ what the systems received

    def clarus_writes(self, since=0):
        return [r for r in self.clarus_sb.requests(since) if r["method"] in ("POST", "PATCH") and r["path"].startswith("/api/")]

    def netsuite_writes(self, since=0):
        return [r for r in self.netsuite_sb.requests(since) if r["method"] in ("POST", "PATCH")]

    def refund(self, refund_id):
        with self.store.read() as con:
            cur = con.execute("SELECT * FROM refunds WHERE refund_id = ?", [str(refund_id)])
            names = [d[0] for d in cur.description]
            row = cur.fetchone()
            return dict(zip(names, row)) if row else None

    def steps(self, refund_id):
        with self.store.read() as con:
            return {a: (s, d) for a, s, d in con.execute(
                "SELECT action, status, detail FROM refund_steps WHERE refund_id = ? ORDER BY seq", [str(refund_id)]).fetchall()}


# The `world` fixture (tests/flows/conftest.py): Shopify's webhooks go through the receiver; orders are
# placed with their Shopify payload and Clarus status in the state, as the orders flow leaves them.
WORLD_CLASS = RefundWorld
WORLD_OPTIONS = {"shopify_webhooks": True, "order_payloads": True}
STATE_BACKENDS = ("duckdb", "postgres")  # every test once per state backend


def _path_count(requests, fragment):
    return sum(1 for r in requests if fragment in r["path"])


# ---------------------------------------------------------------------------- returns


def test_return_expects_goods_in_clarus_authorises_in_netsuite_and_is_explained(world):
    (a, b) = world.items(2)
    order = world.place_order([(a, 2), (b, 1)], dispatched=True)
    clarus_before, netsuite_before = len(world.clarus_sb.requests()), len(world.netsuite_sb.requests())
    refund = world.shopify_sb.refund_order(int(order["order_id"]), note="too small", line_items=[
        {"line_item_id": order["line_ids"][0], "quantity": 1, "restock_type": "return"}])
    intake, steps, _ = world.run()
    assert intake.new == {"RETURN": 1}

    # Clarus: one expected goods-in receipt for exactly the returned SKU and quantity
    receipts = [r for r in world.clarus_writes(clarus_before) if r["path"] == "/api/goods_in_receipts"]
    assert len(receipts) == 1
    attrs = receipts[0]["body"]["data"]["attributes"]
    assert attrs["reference"] == f"RET-{refund['id']}" and attrs["external_system_reference1"] == str(refund["id"])
    assert [(c["attributes"]["product_id"], c["attributes"]["expected_quantity"]) for c in attrs["lines_changes"]] == [
        (int(world.products[order["lines"][0][1]]), 1)]
    # NetSuite: a return authorisation transformed from the sales order, for that line and quantity
    ra_posts = [r for r in world.netsuite_writes(netsuite_before) if "returnAuthorization" in r["path"]]
    assert len(ra_posts) == 1 and f"salesOrder/{order['so_id']}/!transform/returnAuthorization" in ra_posts[0]["path"]
    assert ra_posts[0]["body"]["item"]["items"] == [{"orderLine": 1, "quantity": 1.0}]
    assert ra_posts[0]["body"]["externalId"] == f"shopify-refund-{refund['id']}"
    # nothing else was touched: no goods out change, no credit memo
    assert not [r for r in world.clarus_writes(clarus_before) if "goods_outs" in r["path"]]
    assert not [r for r in world.netsuite_writes(netsuite_before) if "creditMemo" in r["path"]]

    row = world.refund(refund["id"])
    assert row["kind"] == "RETURN" and row["state"] == "AWAITING_RETURN" and row["clarus_receipt_id"]
    # finance sees why, in the order's history
    history = world.history(order["order_id"])
    classified = [h for h in history if h[1] == "REFUND_CLASSIFIED"]
    assert len(classified) == 1 and "classified RETURN" in classified[0][2]
    details = json.loads(classified[0][3])
    assert any("restocked as a return" in r for r in details["reasons"])
    assert details["actions"] == ["CLARUS_EXPECT_GOODS_IN", "NETSUITE_RETURN_AUTHORISATION", "NETSUITE_RETURN_RECEIPT",
                                  "WATCH_RETURN_RECEIPT"]
    assert [h[1] for h in history if h[0] in ("clarus", "netsuite")] == ["RETURN_EXPECTED", "RETURN_AUTHORISED"]
    # the goods are not back: NetSuite receives nothing yet, and the step is not retried
    assert world.steps(refund["id"])["NETSUITE_RETURN_RECEIPT"][0] == "waiting"
    assert not world.netsuite_sb.item_receipts() and steps.calls == {"clarus": 1, "netsuite": 1}
    netsuite_count = len(world.netsuite_writes())
    assert flow.run_refund_steps(world.store, POLICIES, clarus=world.clarus, netsuite=world.netsuite,
                                 customer_id=NETSUITE_WEB_CUSTOMER_ID).calls == {}
    assert len(world.netsuite_writes()) == netsuite_count

    # Clarus books the goods in: NetSuite receives them against the return authorisation
    world.clarus_sb.receive_goods_in_receipt(row["clarus_receipt_id"])
    intake, steps, _ = world.run()
    assert intake.receipts == 1 and steps.calls == {"netsuite": 1}
    (ra,) = world.netsuite_sb.return_authorisations()
    (receipt,) = world.netsuite_sb.item_receipts()
    assert receipt["createdFrom"]["id"] == ra["id"] and receipt["externalId"] == f"shopify-refund-{refund['id']}-receipt"
    assert [(ln["orderLine"], ln["item"]["id"], ln["quantity"]) for ln in receipt["item"]["items"]] == [(1, a.internal_id, 1.0)]
    assert ra["orderStatus"] == "F" and [ln["quantityReceived"] for ln in ra["item"]["items"]] == [1.0]
    assert world.refund(refund["id"])["state"] == "RETURN_RECEIVED"
    assert world.steps(refund["id"])["NETSUITE_RETURN_RECEIPT"] == (
        "done", f"item receipt {receipt['id']} for return authorisation {ra['id']}")
    erp = [h for h in world.history(order["order_id"]) if h[1] == "RETURN_RECEIVED_IN_ERP"]
    assert len(erp) == 1 and erp[0][0] == "netsuite"
    assert f"item receipt {receipt['id']} for return authorisation {ra['id']}" in erp[0][2]

    # running again posts nothing more
    netsuite_count = len(world.netsuite_writes())
    _, steps, _ = world.run()
    assert steps.calls == {} and len(world.netsuite_writes()) == netsuite_count
    assert len(world.netsuite_sb.item_receipts()) == 1


def test_return_received_late_raises_then_clears_return_not_received(world):
    (a,) = world.items(1)
    order = world.place_order([(a, 1)], dispatched=True)
    refund = world.shopify_sb.refund_order(int(order["order_id"]), line_items=[
        {"line_item_id": order["line_ids"][0], "quantity": 1, "restock_type": "return"}])
    world.run()
    row = world.refund(refund["id"])
    due = row["return_due_at"]
    assert due - row["processed_at"] == timedelta(days=POLICIES.timings.return_receipt_days)

    # before the due date nothing is raised; after it, RETURN_NOT_RECEIVED for finance
    world.run(now=due - timedelta(hours=1))
    assert world.exception("RETURN_NOT_RECEIVED", refund["id"]) is None
    world.run(now=due + timedelta(days=2))
    status, _, message = world.exception("RETURN_NOT_RECEIVED", refund["id"])
    assert status == "open" and "0 of 1 item(s) received" in message

    # the goods arrive in the warehouse three days late: Clarus's goods_in/completed webhook clears it
    world.clarus_sb.advance((due + timedelta(days=3) - utcnow()).total_seconds())
    world.clarus_sb.receive_goods_in_receipt(row["clarus_receipt_id"])
    intake, _, exceptions = world.run(now=due + timedelta(days=3))
    assert intake.receipts == 1
    assert exceptions["RETURN_NOT_RECEIVED"] == {str(refund["id"]): "auto_resolved"}
    assert world.exception("RETURN_NOT_RECEIVED", refund["id"])[:2] == ("resolved", "auto")
    assert world.refund(refund["id"])["state"] == "RETURN_RECEIVED"
    received = [h for h in world.history(order["order_id"]) if h[1] == "RETURN_RECEIVED"]
    assert len(received) == 1 and "after it was due" in received[0][2]
    (receipt,) = world.netsuite_sb.item_receipts()
    assert [ln["quantity"] for ln in receipt["item"]["items"]] == [1.0]


def test_receipt_found_by_the_sweep_when_no_webhook_comes(world):
    (a,) = world.items(1)
    order = world.place_order([(a, 3)], dispatched=True)
    refund = world.shopify_sb.refund_order(int(order["order_id"]), line_items=[
        {"line_item_id": order["line_ids"][0], "quantity": 2, "restock_type": "return"}])
    world.run()
    world.clarus_sb.webhook_url = None  # the goods-in webhook is lost
    receipt_id = world.refund(refund["id"])["clarus_receipt_id"]
    world.clarus_sb.receive_goods_in_receipt(receipt_id, {order["lines"][0][1]: 1})
    assert flow.sweep_return_receipts(world.store, world.clarus) == 1
    assert world.refund(refund["id"])["state"] == "AWAITING_RETURN"  # 1 of 2 back
    assert any(h[1] == "RETURN_PART_RECEIVED" for h in world.history(order["order_id"]))
    # a part receipt posts nothing to NetSuite: the whole return is received there once
    steps = flow.run_refund_steps(world.store, POLICIES, clarus=world.clarus, netsuite=world.netsuite,
                                  customer_id=NETSUITE_WEB_CUSTOMER_ID)
    assert steps.calls == {} and not world.netsuite_sb.item_receipts()
    assert world.steps(refund["id"])["NETSUITE_RETURN_RECEIPT"][0] == "waiting"
    world.clarus_sb.receive_goods_in_receipt(receipt_id)
    assert flow.sweep_return_receipts(world.store, world.clarus) == 1
    assert flow.sweep_return_receipts(world.store, world.clarus) == 0  # nothing left to ask about
    assert world.refund(refund["id"])["state"] == "IN_PROGRESS"  # back in Clarus, NetSuite not told yet
    steps = flow.run_refund_steps(world.store, POLICIES, clarus=world.clarus, netsuite=world.netsuite,
                                  customer_id=NETSUITE_WEB_CUSTOMER_ID)
    assert steps.calls == {"netsuite": 1} and steps.done == 1
    assert world.refund(refund["id"])["state"] == "RETURN_RECEIVED"
    (ra,) = world.netsuite_sb.return_authorisations()
    (receipt,) = world.netsuite_sb.item_receipts()
    assert receipt["createdFrom"]["id"] == ra["id"]
    assert [(ln["orderLine"], ln["quantity"]) for ln in receipt["item"]["items"]] == [(1, 2.0)]
    assert ra["orderStatus"] == "F" and ra["item"]["items"][0]["quantityReceived"] == 2.0


def test_goods_back_before_the_return_authorisation_wait_for_it(world):
    """Dispatched and fulfilled in Shopify, but NetSuite's item fulfilment is late: the goods come
    back before the return can be authorised, so the item receipt waits for the return
    authorisation, then both post in one run."""
    (a,) = world.items(1)
    order = world.place_order([(a, 2)])
    with world.store.write() as con:
        con.execute("UPDATE orders SET clarus_status = 6 WHERE order_id = ?", [order["order_id"]])
    world.shopify.create_fulfillment(order["order_id"], {order["line_ids"][0]: 2}, tracking_number="AB123456789GB",
                                     company="Royal Mail")
    refund = world.shopify_sb.refund_order(int(order["order_id"]), line_items=[
        {"line_item_id": order["line_ids"][0], "quantity": 2, "restock_type": "return"}])
    world.run()
    assert world.steps(refund["id"])["NETSUITE_RETURN_AUTHORISATION"][0] == "pending"  # nothing fulfilled in NetSuite
    world.clarus_sb.receive_goods_in_receipt(world.refund(refund["id"])["clarus_receipt_id"])
    intake, _, _ = world.run()
    assert intake.receipts == 1
    assert world.steps(refund["id"])["NETSUITE_RETURN_RECEIPT"] == ("pending", "waiting for the return authorisation")
    assert not world.netsuite_sb.return_authorisations() and not world.netsuite_sb.item_receipts()

    world.ns_now[0] += 7200
    world.netsuite_sb.tick()
    world.netsuite.transform_to_item_fulfilment(order["so_id"], [{"item_id": a.internal_id, "quantity": 2}], shipment_id="S-late")
    _, steps, _ = world.run()
    assert steps.calls == {"netsuite": 2}
    (ra,) = world.netsuite_sb.return_authorisations()
    (receipt,) = world.netsuite_sb.item_receipts()
    assert receipt["createdFrom"]["id"] == ra["id"] and [ln["quantity"] for ln in receipt["item"]["items"]] == [2.0]
    assert world.refund(refund["id"])["state"] == "RETURN_RECEIVED"
    assert [h[1] for h in world.history(order["order_id"]) if h[0] == "netsuite"] == ["RETURN_AUTHORISED", "RETURN_RECEIVED_IN_ERP"]


def test_return_classified_before_item_receipts_still_completes(world):
    """A database from before the item receipt step: its returns simply lack the step."""
    (a,) = world.items(1)
    order = world.place_order([(a, 1)], dispatched=True)
    refund = world.shopify_sb.refund_order(int(order["order_id"]), line_items=[
        {"line_item_id": order["line_ids"][0], "quantity": 1, "restock_type": "return"}])
    world.run()
    with world.store.write() as con:
        con.execute("DELETE FROM refund_steps WHERE refund_id = ? AND action = 'NETSUITE_RETURN_RECEIPT'", [str(refund["id"])])
        actions = [a for a in json.loads(con.execute("SELECT actions::VARCHAR FROM refunds WHERE refund_id = ?",
                                                     [str(refund["id"])]).fetchone()[0])
                   if a["action"] != "NETSUITE_RETURN_RECEIPT"]
        con.execute("UPDATE refunds SET actions = ? WHERE refund_id = ?", [json.dumps(actions), str(refund["id"])])
    assert world.refund(refund["id"])["state"] == "AWAITING_RETURN"
    world.clarus_sb.receive_goods_in_receipt(world.refund(refund["id"])["clarus_receipt_id"])
    intake, steps, _ = world.run()
    assert intake.receipts == 1 and steps.calls == {}
    assert world.refund(refund["id"])["state"] == "RETURN_RECEIVED"
    assert not world.netsuite_sb.item_receipts()


# ------------------------------------------------------------------------- duplicates


def test_duplicate_refund_webhooks_change_nothing(world):
    (a,) = world.items(1)
    order = world.place_order([(a, 2)], dispatched=True)
    refund = world.shopify_sb.refund_order(int(order["order_id"]), line_items=[
        {"line_item_id": order["line_ids"][0], "quantity": 1, "restock_type": "return"}])
    world.run()
    clarus_count, netsuite_count = len(world.clarus_writes()), len(world.netsuite_writes())
    history = world.history(order["order_id"])

    # Shopify delivers the refund again under a new webhook id, and it also comes back inside
    # the order body (an orders/updated webhook and the reconciliation read carry refunds)
    world.post_shopify("refunds/create", refund)
    world.post_shopify("orders/updated", world.shopify_sb.order(int(order["order_id"])))
    intake, steps, _ = world.run()
    assert intake.duplicates >= 2 and intake.new == {}
    assert steps.calls == {}
    assert len(world.clarus_writes()) == clarus_count and len(world.netsuite_writes()) == netsuite_count
    assert world.history(order["order_id"]) == history
    with world.store.read() as con:
        assert con.execute("SELECT count(*) FROM refunds").fetchone()[0] == 1


def test_a_crash_after_the_remote_write_does_not_post_twice(world, monkeypatch):
    (a,) = world.items(1)
    order = world.place_order([(a, 1)], dispatched=True)
    refund = world.shopify_sb.refund_order(int(order["order_id"]), amount="7.50", note="sorry for the wait")
    world.ingest()
    flow.take_in_refunds(world.store, POLICIES)

    real = flow._record_outcome
    calls = {"n": 0}

    def crash_once(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise KeyboardInterrupt("killed between the NetSuite answer and the state write")
        return real(*args, **kwargs)

    monkeypatch.setattr(flow, "_record_outcome", crash_once)
    with pytest.raises(KeyboardInterrupt):
        flow.run_refund_steps(world.store, POLICIES, clarus=world.clarus, netsuite=world.netsuite,
                              customer_id=NETSUITE_WEB_CUSTOMER_ID)
    flow.run_refund_steps(world.store, POLICIES, clarus=world.clarus, netsuite=world.netsuite,
                          customer_id=NETSUITE_WEB_CUSTOMER_ID)
    memos = world.netsuite_sb.credit_memos()
    assert len(memos) == 1 and memos[0]["externalId"] == f"shopify-refund-{refund['id']}"
    assert world.refund(refund["id"])["state"] == "DONE"


# ---------------------------------------------------------------------- cancellations


def test_cancelling_part_of_a_line_before_dispatch_reduces_clarus_and_netsuite(world):
    (a, b) = world.items(2)
    order = world.place_order([(a, 3), (b, 1)])
    clarus_before, netsuite_before = len(world.clarus_sb.requests()), len(world.netsuite_sb.requests())
    refund = world.shopify_sb.refund_order(int(order["order_id"]), line_items=[
        {"line_item_id": order["line_ids"][0], "quantity": 2, "restock_type": "cancel"}])
    intake, steps, _ = world.run()
    assert intake.new == {"CANCELLATION": 1}
    patches = [r for r in world.clarus_writes(clarus_before) if r["method"] == "PATCH"]
    assert len(patches) == 1
    changes = patches[0]["body"]["data"]["attributes"]["lines_changes"]
    assert [(c["type"], c["attributes"]["order_quantity"]) for c in changes] == [("UPDATE", 1)]
    goods_out = world.clarus_sb.goods_out(order["goods_out_id"])
    assert sorted(int(float(ln["order_quantity"])) for ln in goods_out["lines"]) == [1, 1]
    so_patch = [r for r in world.netsuite_writes(netsuite_before) if r["method"] == "PATCH"]
    assert len(so_patch) == 1 and so_patch[0]["body"]["item"]["items"] == [{"line": 1, "quantity": 1}]
    assert world.refund(refund["id"])["state"] == "DONE"
    states = [h[1] for h in world.history(order["order_id"])]
    assert states[-3:] == ["REFUND_CLASSIFIED", "GOODS_OUT_REDUCED", "SALES_ORDER_LINES_CLOSED"]

    # running again (or the order-changes flow having done the same) changes nothing
    clarus_count, netsuite_count = len(world.clarus_writes()), len(world.netsuite_writes())
    flow.run_refund_steps(world.store, POLICIES, clarus=world.clarus, netsuite=world.netsuite, customer_id=NETSUITE_WEB_CUSTOMER_ID)
    assert (len(world.clarus_writes()), len(world.netsuite_writes())) == (clarus_count, netsuite_count)


def test_order_cancelled_in_shopify_cancels_the_goods_out_and_closes_the_lines(world):
    (a, b) = world.items(2)
    order = world.place_order([(a, 1), (b, 2)])
    world.shopify_sb.cancel_order(int(order["order_id"]))
    intake, _, _ = world.run()
    assert intake.new == {"CANCELLATION": 1}
    assert world.clarus_sb.goods_out(order["goods_out_id"])["goods_out_status"]["code"] == "CANCELLED"
    assert _path_count(world.clarus_writes(), f"/api/goods_outs/{order['goods_out_id']}/cancel") == 1
    so = next(r for r in world.netsuite_sb.sales_orders() if r["id"] == order["so_id"])
    assert all(line["isClosed"] for line in so["item"]["items"])


@pytest.mark.parametrize("evidence", ["goods_out_status", "shipment"])
def test_cancel_after_clarus_dispatched_raises_cancel_after_dispatch(world, evidence):
    """Clarus has dispatched; Shopify has not heard yet (we tell it after NetSuite)."""
    (a,) = world.items(1)
    order = world.place_order([(a, 1)])
    with world.store.write() as con:
        if evidence == "goods_out_status":
            con.execute("UPDATE orders SET clarus_status = 6 WHERE order_id = ?", [order["order_id"]])
        else:  # the dispatch flow recorded the shipment; the order row still says PENDING
            con.execute("INSERT INTO shipments (shipment_id, order_id, state, updated_at) VALUES ('77', ?, 'DISPATCHED_IN_WMS', ?)",
                        [order["order_id"], utcnow()])
            con.execute("INSERT INTO shipment_lines (shipment_id, sku, quantity) VALUES ('77', ?, 1)", [order["lines"][0][1]])
    clarus_before, netsuite_before = len(world.clarus_sb.requests()), len(world.netsuite_sb.requests())
    world.shopify_sb.refund_order(int(order["order_id"]), line_items=[
        {"line_item_id": order["line_ids"][0], "quantity": 1, "restock_type": "cancel"}])
    world.run()
    status, _, message = world.exception("CANCEL_AFTER_DISPATCH", order["order_id"])
    assert status == "open" and "already dispatched" in message
    assert not world.clarus_writes(clarus_before) and not world.netsuite_writes(netsuite_before)


# ----------------------------------------------------------------------- money only


def test_goodwill_and_shipping_refunds_post_credit_memos_only(world):
    (a,) = world.items(1)
    order = world.place_order([(a, 1)], dispatched=True)
    clarus_before = len(world.clarus_sb.requests())
    goodwill = world.shopify_sb.refund_order(int(order["order_id"]), amount="5.00", note="courier was late")
    shipping = world.shopify_sb.refund_order(int(order["order_id"]), shipping_full=True)
    intake, _, _ = world.run()
    assert intake.new == {"GOODWILL": 1, "SHIPPING_ONLY": 1}
    memos = {m["externalId"]: m for m in world.netsuite_sb.credit_memos()}
    gw, sh = memos[f"shopify-refund-{goodwill['id']}"], memos[f"shopify-refund-{shipping['id']}"]
    assert [(ln["item"]["id"], ln["amount"]) for ln in gw["item"]["items"]] == [("900", 5.0)]
    assert [(ln["item"]["id"], ln["amount"]) for ln in sh["item"]["items"]] == [("901", 3.95)]
    assert not world.clarus_writes(clarus_before)  # no stock movement
    assert not world.netsuite_sb.return_authorisations()


@pytest.mark.parametrize("fixture", ["refund_shipping_only_response", "refund_legacy_restock"])
def test_real_refund_payloads_through_the_receiver(world, payloads, fixture):
    """Refund payloads in the real shapes (new and legacy) for an order we never saw."""
    body = payloads.json(fixture)["refund"]
    world.post_shopify("refunds/create", body)
    intake, steps, _ = world.run()
    row = world.refund(body["id"])
    if fixture == "refund_shipping_only_response":
        assert row["kind"] == "SHIPPING_ONLY" and row["state"] == "DONE"
        (memo,) = world.netsuite_sb.credit_memos()
        assert memo["item"]["items"][0]["amount"] == float(payloads["shipping_refund"])
    else:  # legacy restock of unfulfilled lines: a cancellation; the order never reached us
        assert row["kind"] == "CANCELLATION" and row["state"] == "IN_PROGRESS"
        assert world.steps(body["id"])["CLARUS_REDUCE_GOODS_OUT"][0] == "blocked"
        assert steps.calls == {}


def test_return_of_a_line_without_sku_raises_return_needs_review_never_a_credit(world):
    """Shopify restocks a custom (no-SKU, non-shipping) line as a return: goods come back, a person names them."""
    (a,) = world.items(1)
    order = world.place_order([(a, 1)], dispatched=True)
    netsuite_before = len(world.netsuite_sb.requests())
    refund_id = 77000001
    line_item_custom = {"id": 88000001, "variant_id": None, "title": "Hand-painted gift box", "quantity": 1,
                        "sku": None, "requires_shipping": False, "gift_card": False, "fulfillment_status": "fulfilled",
                        "price": "12.00", "properties": []}
    body = {
        "id": refund_id, "order_id": int(order["order_id"]), "note": "customer sent it back",
        "created_at": "2026-01-10T10:00:00-05:00", "processed_at": "2026-01-10T10:00:00-05:00", "restock": True,
        "refund_line_items": [
            {"id": 1, "line_item_id": order["line_ids"][0], "quantity": 1, "restock_type": "return",
             "subtotal": 20.0, "subtotal_set": {"shop_money": {"amount": "20.00", "currency_code": "GBP"}}},
            {"id": 2, "line_item_id": line_item_custom["id"], "quantity": 1, "restock_type": "return",
             "subtotal": 12.0, "subtotal_set": {"shop_money": {"amount": "12.00", "currency_code": "GBP"}},
             "line_item": line_item_custom},
        ],
        "transactions": [{"id": 5, "kind": "refund", "status": "success", "amount": "32.00", "currency": "GBP",
                          "gateway": "shopify_payments"}],
        "order_adjustments": [],
    }
    world.post_shopify("refunds/create", body)
    intake, _, _ = world.run()
    assert intake.new == {"RETURN": 1}
    row = world.refund(refund_id)
    assert row["kind"] == "RETURN"
    status, _, message = world.exception("RETURN_NEEDS_REVIEW", refund_id)
    assert status == "open" and "line 88000001 (Hand-painted gift box x1)" in message
    # the named line goes to the warehouse; nothing is posted as money only
    (receipt,) = [r for r in world.clarus_writes() if r["path"] == "/api/goods_in_receipts"]
    assert [c["attributes"]["expected_quantity"] for c in receipt["body"]["data"]["attributes"]["lines_changes"]] == [1]
    assert not [r for r in world.netsuite_writes(netsuite_before) if "creditMemo" in r["path"]]
    assert world.steps(refund_id)["RAISE_RETURN_NEEDS_REVIEW"][0] == "exception"
    # the named goods back in Clarus complete the receipt: the unnamed line stays with the person
    world.clarus_sb.receive_goods_in_receipt(world.refund(refund_id)["clarus_receipt_id"])
    world.run()
    assert world.refund(refund_id)["return_received_at"] is not None
    assert world.exception("RETURN_NEEDS_REVIEW", refund_id)[0] == "open"


# ---------------------------------------------------------------------- unclassified


def test_unclassified_refund_is_raised_for_finance_and_a_rule_settles_it(world, tmp_path):
    (a, b) = world.items(2)
    order = world.place_order([(a, 1), (b, 1)], dispatched=True)
    clarus_before, netsuite_before = len(world.clarus_sb.requests()), len(world.netsuite_sb.requests())
    refund = world.shopify_sb.refund_order(int(order["order_id"]), note="parcel damaged", line_items=[
        {"line_item_id": order["line_ids"][0], "quantity": 1, "restock_type": "return"},
        {"line_item_id": order["line_ids"][1], "quantity": 1, "restock_type": "no_restock"}])
    world.run()
    assert world.refund(refund["id"])["kind"] == "UNCLASSIFIED"
    status, _, message = world.exception("REFUND_UNCLASSIFIED", refund["id"])
    assert status == "open" and "fits GOODWILL and RETURN" in message
    assert not world.clarus_writes(clarus_before) and not world.netsuite_writes(netsuite_before)
    assert [h[1] for h in world.history(order["order_id"])][-1] == "REFUND_UNCLASSIFIED"

    data = yaml.safe_load(Path(SANDBOX_POLICIES).read_text())
    data["refund_rules"] = {"rules": [{"on": "note", "pattern": "damaged", "kind": "RETURN", "decides": True}]}
    path = tmp_path / "policies.yaml"
    path.write_text(yaml.safe_dump(data))
    intake, _, _ = world.run(policies=load_policies(path))
    assert intake.reclassified == 1
    assert world.exception("REFUND_UNCLASSIFIED", refund["id"])[:2] == ("resolved", "auto")
    assert world.refund(refund["id"])["kind"] == "RETURN"
    receipts = [r for r in world.clarus_writes(clarus_before) if r["path"] == "/api/goods_in_receipts"]
    assert len(receipts) == 1 and len(receipts[0]["body"]["data"]["attributes"]["lines_changes"]) == 2
    assert "REFUND_RECLASSIFIED" in [h[1] for h in world.history(order["order_id"])]


# --------------------------------------------------------------------------- Dagster


def test_refunds_asset_and_checks_in_dagster(world):
    from clarus_pipelines.assets.refunds import RefundsConfig, defs
    (a,) = world.items(1)
    order = world.place_order([(a, 1)], dispatched=True)
    world.shopify_sb.refund_order(int(order["order_id"]), line_items=[
        {"line_item_id": order["line_ids"][0], "quantity": 1, "restock_type": "return"}])
    world.ingest()
    job = world.definitions(defs).resolve_job_def("refunds_job")
    result = job.execute_in_process(run_config=dg.RunConfig({"refunds": RefundsConfig(netsuite_customer_id=NETSUITE_WEB_CUSTOMER_ID)}))
    assert result.success
    materialization = result.asset_materializations_for_node("refunds")[0]
    assert materialization.metadata["new_return"].value == 1
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks == {"refunds_classified": True, "returns_received_in_time": True}
    assert len(world.clarus_sb.goods_in_receipts()) == 1
