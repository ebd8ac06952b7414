"""Refund classification: real Shopify payloads (legacy and 2025-07 shapes), generated ones
of every kind, the configurable rules, and `clarus-pipelines explain-refund`."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest
import yaml

from clarus_pipelines.domain.refunds import AWAIT_REPLACEMENT_ORDER, CLARUS_CANCEL_GOODS_OUT, CLARUS_EXPECT_GOODS_IN, CLARUS_REDUCE_GOODS_OUT, NETSUITE_CLOSE_LINES, NETSUITE_CREDIT_MEMO, NETSUITE_RETURN_AUTHORISATION, NETSUITE_RETURN_RECEIPT, RAISE_CANCEL_AFTER_DISPATCH, RAISE_REFUND_UNCLASSIFIED, RAISE_RETURN_NEEDS_REVIEW, REPLACEMENT_ORDER, WATCH_RETURN_RECEIPT, OrderContext, RefundKind, classify_refund, iter_refunds, order_context_from_shopify
from clarus_pipelines.policies import RefundRule, RefundRules
from clarus_pipelines.settings import SANDBOX_POLICIES, ConfigError, load_policies
from payloads import Payloads

CLI = [str(Path(sys.executable).parent / "clarus-pipelines")]
POLICIES_RULES = load_policies(SANDBOX_POLICIES).refund_rules


def _load(payloads: Payloads, case: str):
    return payloads.json(case)


def _only(payloads: Payloads, case: str):
    pairs = iter_refunds(_load(payloads, case))
    assert len(pairs) == 1, case
    return pairs[0]


def _codes(result) -> list[str]:
    return [a["action"] for a in result.actions]


# ------------------------------------------------------------------ real payloads


@pytest.mark.parametrize(
    "name, kind, actions",
    [
        # legacy shape: restock true, lines unfulfilled -> restocked before dispatch
        ("refund_legacy_restock", "CANCELLATION", [CLARUS_REDUCE_GOODS_OUT, NETSUITE_CLOSE_LINES]),
        ("refund_node_create_response", "CANCELLATION", [CLARUS_REDUCE_GOODS_OUT, NETSUITE_CLOSE_LINES]),
        ("refund_node_list", "CANCELLATION", [CLARUS_REDUCE_GOODS_OUT, NETSUITE_CLOSE_LINES]),
        # 2025-07: restock_type legacy_restock
        ("refunds_list_2025_07", "CANCELLATION", [CLARUS_REDUCE_GOODS_OUT, NETSUITE_CLOSE_LINES]),
        # restock_type return (request body shape: no line_item embedded)
        ("refund_return_request", "RETURN",
         [CLARUS_EXPECT_GOODS_IN, NETSUITE_RETURN_AUTHORISATION, NETSUITE_RETURN_RECEIPT, WATCH_RETURN_RECEIPT]),
        # asked for 'return' but Shopify answered no_restock on an unfulfilled line
        ("refund_no_restock_response", "CANCELLATION", [CLARUS_REDUCE_GOODS_OUT, NETSUITE_CLOSE_LINES]),
        ("refund_shipping_only_request", "SHIPPING_ONLY", [NETSUITE_CREDIT_MEMO]),
        ("refund_shipping_only_response", "SHIPPING_ONLY", [NETSUITE_CREDIT_MEMO]),
        # no_restock with nothing saying whether dispatched: goodwill or cancellation -> for finance
        ("refund_calculate_no_restock", "UNCLASSIFIED", [RAISE_REFUND_UNCLASSIFIED]),
        ("order_cancelled_with_refund", "CANCELLATION",
         [CLARUS_CANCEL_GOODS_OUT, NETSUITE_CLOSE_LINES]),
    ],
)
def test_real_payloads(payloads, name, kind, actions):
    refund, order = _only(payloads, name)
    result = classify_refund(refund, order=order)
    assert result.kind == kind, result.reasons
    assert _codes(result) == actions
    assert result.reasons  # always says what was seen


def test_legacy_restock_after_dispatch_is_a_return(payloads):
    refund, _ = _only(payloads, "refund_legacy_restock")
    (green, _red, black), (green_id, _red_id, black_id) = payloads["skus"], payloads["line_ids"]
    result = classify_refund(refund, context=OrderContext(wms_status=6))
    assert result.kind == RefundKind.RETURN
    expect = result.action(CLARUS_EXPECT_GOODS_IN)
    assert expect["lines"] == [
        {"line_id": black_id, "sku": black, "quantity": 1},
        {"line_id": green_id, "sku": green, "quantity": 1},
    ]
    assert result.action(NETSUITE_RETURN_AUTHORISATION)["amount"] == payloads["legacy_refund_amount"]
    assert any("Clarus goods out is COMPLETED" in r for r in result.reasons)


def test_no_restock_after_dispatch_is_goodwill(payloads):
    refund, _ = _only(payloads, "refund_no_restock_response")
    result = classify_refund(refund, context=OrderContext(wms_status=6))
    assert result.kind == RefundKind.GOODWILL
    assert result.actions[0]["action"] == NETSUITE_CREDIT_MEMO and result.actions[0]["amount"] == payloads["goodwill_amount"]
    assert any("customer keeps the goods" in r for r in result.reasons)


def test_order_payload_settles_dispatch(payloads):
    """The order's fulfilments (only a failed one) show the line was never dispatched."""
    refund, _ = _only(payloads, "refund_calculate_no_restock")
    order = payloads.order("order_rest_2025_07")
    result = classify_refund(refund, order=order)
    assert result.kind == RefundKind.CANCELLATION
    assert result.lines[0].sku == payloads["skus"][1]  # taken from the order: the calculation has no line_item
    assert "payload is a refund calculation" in result.reasons[0]


def test_legacy_request_with_order_and_clarus_status(payloads):
    refund, _ = _only(payloads, "refund_node_create_request")
    assert classify_refund(refund).kind == RefundKind.UNCLASSIFIED  # restock, but shipped or not?
    order = payloads.order("order_rest_2025_07")
    shipped = classify_refund(refund, order=order, context=order_context_from_shopify(order, wms_status=6))
    assert shipped.kind == RefundKind.RETURN
    assert shipped.currency == payloads["currency"] and shipped.order_id == payloads["order_id"]  # from the order: the request has neither
    unshipped = classify_refund(refund, context=order_context_from_shopify(order, wms_status=2))
    assert unshipped.kind == RefundKind.CANCELLATION


def test_shipping_only_amount(payloads):
    refund, _ = _only(payloads, "refund_shipping_only_response")
    result = classify_refund(refund)
    # refund_shipping_lines and the shipping_refund adjustment describe the same amount: not twice it
    assert result.shipping_amount == Decimal(payloads["shipping_refund"])
    assert result.explain()["actions"][0]["amount"] == payloads["shipping_refund"]


def test_cancelled_order_refund_names_the_cancellation(payloads):
    refund, order = _only(payloads, "order_cancelled_with_refund")
    result = classify_refund(refund, order=order)
    assert "cancel_reason 'other'" in result.reasons[0]
    assert [g["sku"] for g in result.action(CLARUS_CANCEL_GOODS_OUT)["lines"]] == payloads["skus"]


# -------------------------------------------------------------- generated payloads

BASE_LINE = {
    "id": 1001, "variant_id": 501, "title": "Tee", "quantity": 2, "sku": "TEE-BLK-M", "price": "20.00",
    "requires_shipping": True, "gift_card": False, "fulfillment_status": "fulfilled", "properties": [],
}


def make_refund(*, lines=(), restock_type="return", fulfilled=True, shipping=None, amount=None, note=None,
                adjustments=(), refund_return=None, restock=None):
    """A refunds/create body in the 2025-07 shape."""
    refund_lines = []
    for i, (sku, qty) in enumerate(lines):
        line_item = dict(BASE_LINE, id=1001 + i, sku=sku, quantity=qty,
                         fulfillment_status="fulfilled" if fulfilled else None)
        refund_lines.append({
            "id": 9001 + i, "line_item_id": line_item["id"], "quantity": qty, "restock_type": restock_type,
            "location_id": 655441491, "subtotal": 20.0 * qty, "total_tax": 4.0 * qty,
            "subtotal_set": {"shop_money": {"amount": f"{20 * qty:.2f}", "currency_code": "GBP"}},
            "total_tax_set": {"shop_money": {"amount": f"{4 * qty:.2f}", "currency_code": "GBP"}},
            "line_item": line_item,
        })
    adjustments = list(adjustments)
    if shipping is not None:
        adjustments.append({"id": 77, "kind": "shipping_refund", "reason": "Shipping refund",
                            "amount": f"-{shipping:.2f}", "tax_amount": "0.00"})
    if amount is None:
        amount = sum(24 * q for _, q in lines) + (shipping or 0)
    body = {
        "id": 880001, "order_id": 450001, "created_at": "2025-07-02T11:38:34-05:00",
        "processed_at": "2025-07-02T11:38:34-05:00", "note": note,
        "refund_line_items": refund_lines, "order_adjustments": adjustments, "refund_shipping_lines": [],
        "return": refund_return, "duties": [],
        "transactions": [{"id": 66, "kind": "refund", "status": "success", "amount": f"{amount:.2f}",
                          "currency": "GBP", "gateway": "shopify_payments"}] if amount else [],
    }
    if restock is not None:
        body["restock"] = restock
        for rl in refund_lines:
            rl.pop("restock_type")
    return body


def test_line_amounts_do_not_count_included_tax_twice():
    """Shopify's refund line subtotal is in the order's price terms (VAT inside for a UK
    shop); total_tax is the tax within it. The goods' money is the subtotal alone, or a
    return refunded at the price would read as paid above it."""
    result = classify_refund(make_refund(lines=[("TEE-BLK-M", 2), ("000123", 1)]))
    assert [(ln.sku, ln.amount) for ln in result.lines] == [("TEE-BLK-M", Decimal("40.00")), ("000123", Decimal("20.00"))]


def test_generated_return():
    result = classify_refund(make_refund(lines=[("TEE-BLK-M", 2), ("000123", 1)]), return_receipt_days=21)
    assert result.kind == RefundKind.RETURN
    assert result.action(CLARUS_EXPECT_GOODS_IN)["lines"] == [
        {"line_id": "1001", "sku": "TEE-BLK-M", "quantity": 2}, {"line_id": "1002", "sku": "000123", "quantity": 1},
    ]
    assert result.action(WATCH_RETURN_RECEIPT)["due_days"] == 21
    assert result.action(NETSUITE_RETURN_AUTHORISATION)["amount"] == "72.00"
    assert result.action(NETSUITE_RETURN_RECEIPT)["lines"] == result.action(CLARUS_EXPECT_GOODS_IN)["lines"]
    assert result.action(NETSUITE_RETURN_RECEIPT)["system"] == "netsuite"


def test_generated_return_with_shipping_refund_is_still_a_return():
    result = classify_refund(make_refund(lines=[("TEE-BLK-M", 1)], shipping=4.95))
    assert result.kind == RefundKind.RETURN
    assert result.shipping_amount == Decimal("4.95")


def test_generated_cancellation_before_dispatch():
    result = classify_refund(make_refund(lines=[("TEE-BLK-M", 1)], restock_type="cancel", fulfilled=False))
    assert result.kind == RefundKind.CANCELLATION
    assert _codes(result) == [CLARUS_REDUCE_GOODS_OUT, NETSUITE_CLOSE_LINES]


def test_cancellation_after_clarus_dispatched_raises_cancel_after_dispatch():
    """Clarus dispatched, Shopify not yet told (we post fulfilments after NetSuite): Clarus wins."""
    refund = make_refund(lines=[("TEE-BLK-M", 1)], restock_type="cancel", fulfilled=False)
    result = classify_refund(refund, context=OrderContext(wms_status=6))
    assert result.kind == RefundKind.CANCELLATION
    assert _codes(result) == [RAISE_CANCEL_AFTER_DISPATCH]


def test_generated_goodwill_money_only():
    result = classify_refund(make_refund(amount=15.0, note="Sorry for the delay"))
    assert result.kind == RefundKind.GOODWILL
    assert _codes(result) == [NETSUITE_CREDIT_MEMO]
    assert result.action(NETSUITE_CREDIT_MEMO)["amount"] == "15.00"


def test_generated_goodwill_by_discrepancy_adjustment():
    adj = {"id": 78, "kind": "refund_discrepancy", "reason": "Refund discrepancy", "amount": "-7.50", "tax_amount": "0.00"}
    result = classify_refund(make_refund(adjustments=[adj], amount=7.5))
    assert result.kind == RefundKind.GOODWILL
    assert any("refund discrepancy" in r for r in result.reasons)


def test_generated_shipping_only():
    result = classify_refund(make_refund(shipping=4.95))
    assert result.kind == RefundKind.SHIPPING_ONLY
    assert result.action(NETSUITE_CREDIT_MEMO)["amount"] == "4.95"


def test_shipping_plus_extra_money_fits_two():
    result = classify_refund(make_refund(shipping=4.95, amount=20.0))
    assert result.kind == RefundKind.UNCLASSIFIED
    assert result.candidates == ("GOODWILL", "SHIPPING_ONLY")
    assert result.actions[0]["action"] == RAISE_REFUND_UNCLASSIFIED


def test_generated_exchange_from_note_and_from_return_exchange_lines():
    by_note = classify_refund(make_refund(lines=[("TEE-BLK-M", 1)], note="Exchange for size L"))
    assert by_note.kind == RefundKind.EXCHANGE
    assert _codes(by_note) == [CLARUS_EXPECT_GOODS_IN, NETSUITE_RETURN_AUTHORISATION, NETSUITE_RETURN_RECEIPT,
                               WATCH_RETURN_RECEIPT, AWAIT_REPLACEMENT_ORDER]
    ret = {"id": 5001, "admin_graphql_api_id": "gid://shopify/Return/5001",
           "exchange_line_items": [{"line_item": {"sku": "TEE-BLK-L", "quantity": 1, "variant_id": 502}}]}
    by_data = classify_refund(make_refund(lines=[("TEE-BLK-M", 1)], refund_return=ret))
    assert by_data.kind == RefundKind.EXCHANGE
    assert by_data.action(REPLACEMENT_ORDER)["lines"] == [{"sku": "TEE-BLK-L", "quantity": 1, "variant_id": "502"}]


def test_exchange_named_without_goods_back_is_unclassified():
    result = classify_refund(make_refund(amount=10.0, note="exchange agreed"))
    assert result.kind == RefundKind.UNCLASSIFIED
    assert set(result.candidates) == {"EXCHANGE", "GOODWILL"}


def test_refund_on_a_shopify_return_without_restock_is_still_a_return():
    ret = {"id": 5002, "admin_graphql_api_id": "gid://shopify/Return/5002"}
    result = classify_refund(make_refund(lines=[("TEE-BLK-M", 1)], restock_type="no_restock", refund_return=ret))
    assert result.kind == RefundKind.RETURN  # goods come back (damaged, not restocked) all the same


def test_mixed_return_and_kept_goods_fits_two():
    refund = make_refund(lines=[("TEE-BLK-M", 1), ("TEE-WHT-M", 1)])
    refund["refund_line_items"][1]["restock_type"] = "no_restock"
    result = classify_refund(refund)
    assert result.kind == RefundKind.UNCLASSIFIED
    assert result.candidates == ("GOODWILL", "RETURN")
    assert any("fits more than one kind" in r for r in result.reasons)


def test_nothing_refunded_fits_none():
    result = classify_refund(make_refund(amount=0))
    assert result.kind == RefundKind.UNCLASSIFIED
    assert "fits no kind" in result.reasons[-1]


def test_gift_card_line_is_money_only():
    refund = make_refund(lines=[("GIFT-25", 1)], restock_type="no_restock")
    refund["refund_line_items"][0]["line_item"].update(gift_card=True, requires_shipping=False)
    result = classify_refund(refund)
    assert result.kind == RefundKind.GOODWILL and result.goods_lines == []


def test_partly_dispatched_line_is_for_finance():
    refund = make_refund(lines=[("TEE-BLK-M", 2)], restock_type="no_restock")
    ctx = OrderContext(dispatched={"1001": 1}, ordered={"1001": 2})
    result = classify_refund(refund, context=ctx)
    assert result.kind == RefundKind.UNCLASSIFIED
    assert "1 of 2 dispatched" in " ".join(result.reasons)


# ------------------------------------------------------------------------ rules


def test_rule_resolves_a_line_that_fits_two():
    refund = make_refund(lines=[("TEE-BLK-M", 1)], restock=True)  # legacy restock
    refund["refund_line_items"][0]["line_item"].pop("fulfillment_status")
    assert classify_refund(refund).kind == RefundKind.UNCLASSIFIED
    rules = RefundRules(rules=[RefundRule(on="note", pattern="wrong size", kind="RETURN")])
    refund["note"] = "Wrong size"
    assert classify_refund(refund, rules=rules).kind == RefundKind.RETURN


def test_order_tag_rule_conflicting_with_the_payload_fits_two():
    order = {"id": 450001, "tags": "vip, goodwill-2025", "line_items": [], "cancelled_at": None}
    rules = RefundRules(rules=[RefundRule(on="order_tags", pattern="^goodwill", kind="GOODWILL")])
    result = classify_refund(make_refund(lines=[("TEE-BLK-M", 1)]), order=order, rules=rules)
    assert result.kind == RefundKind.UNCLASSIFIED and result.candidates == ("GOODWILL", "RETURN")


def test_deciding_rule_settles_and_disagreeing_rules_do_not():
    decide = RefundRule(on="transaction_gateway", pattern="^manual$", kind="GOODWILL", decides=True, name="manual refunds")
    # legacy restock (not an explicit return): a deciding rule may settle it; an explicit
    # `return` restock type is Shopify's word and is not overridden (test below)
    refund = make_refund(lines=[("TEE-BLK-M", 1)], restock=True)
    refund["transactions"][0]["gateway"] = "manual"
    result = classify_refund(refund, rules=[decide])
    assert result.kind == RefundKind.GOODWILL and _codes(result) == [NETSUITE_CREDIT_MEMO]
    assert any("manual refunds" in r for r in result.reasons)
    other = RefundRule(on="note", pattern="damaged", kind="RETURN", decides=True)
    refund["note"] = "damaged in transit"
    assert classify_refund(refund, rules=[decide, other]).kind == RefundKind.UNCLASSIFIED


def test_deciding_rule_needs_items_for_goods_kinds():
    rule = RefundRule(on="note", pattern="return", kind="RETURN", decides=True)
    result = classify_refund(make_refund(amount=10.0, note="return label sent"), rules=[rule])
    assert result.kind == RefundKind.UNCLASSIFIED


def test_policies_yaml_refund_rules(tmp_path):
    data = yaml.safe_load(SANDBOX_POLICIES.read_text())
    assert load_policies(SANDBOX_POLICIES).refund_rules.rules[-1].name == "gifted order"
    data.pop("refund_rules")
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(data))
    assert load_policies(path).refund_rules == RefundRules()  # section optional: defaults
    data["refund_rules"] = {"rules": [{"on": "order_tags", "pattern": "^exchange$", "kind": "EXCHANGE"}]}
    path.write_text(yaml.safe_dump(data))
    assert load_policies(path).refund_rules.rules[0].kind == "EXCHANGE"
    data["refund_rules"]["rules"][0]["pattern"] = "[a-"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"refund_rules\.rules\[0\]\.pattern: .*not a valid regular expression"):
        load_policies(path)
    data["refund_rules"]["rules"][0].update(pattern="x", kind="UNCLASSIFIED")
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"refund_rules\.rules\[0\]\.kind"):
        load_policies(path)


def test_classification_does_not_mutate_the_payload(payloads):
    refund, order = _only(payloads, "order_cancelled_with_refund")
    before = copy.deepcopy(refund)
    classify_refund(refund, order=order)
    assert refund == before


# ------------------------------------------------------------------ explain-refund


def test_explain_refund_console_script(payloads):
    path = payloads.path("refund_shipping_only_response")
    out = subprocess.run(CLI + ["explain-refund", str(path)], capture_output=True, text=True, check=True)
    verdict = json.loads(out.stdout)  # exactly one JSON document on stdout
    assert verdict["kind"] == "SHIPPING_ONLY"
    assert verdict["reasons"] == [f"shipping refunded: {payloads['shipping_refund']}", "no items refunded, only shipping"]
    assert [a["action"] for a in verdict["actions"]] == ["NETSUITE_CREDIT_MEMO"]
    assert "classified SHIPPING_ONLY" in out.stderr


def test_explain_refund_with_order_and_clarus_status(payloads):
    refund = payloads.path("refund_legacy_restock")
    order = payloads.path("order_rest_2025_07")
    out = subprocess.run(CLI + ["explain-refund", str(refund), "--order", str(order), "--clarus-status", "6"],
                         capture_output=True, text=True, check=True)
    verdict = json.loads(out.stdout)
    assert verdict["kind"] == "RETURN" and verdict["refund_id"] == payloads["refund_id"]
    assert verdict["actions"][0]["lines"][0]["sku"] == payloads["skus"][2]


def test_explain_refund_reads_stdin_and_rejects_ambiguous_files(tmp_path):
    body = json.dumps(make_refund(amount=12.0))
    out = subprocess.run(CLI + ["explain-refund", "-"], input=body, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout)["kind"] == "GOODWILL"
    two = tmp_path / "two.json"
    two.write_text(json.dumps({"refunds": [make_refund(amount=1.0), dict(make_refund(amount=2.0), id=880002)]}))
    bad = subprocess.run(CLI + ["explain-refund", str(two)], capture_output=True, text=True)
    assert bad.returncode == 2 and "--refund-id" in bad.stderr
    failure = json.loads(bad.stdout)  # the same one-object answer, saying it failed
    assert failure["ok"] is False and "--refund-id" in failure["error"]
    chosen = subprocess.run(CLI + ["explain-refund", str(two), "--refund-id", "880002"],
                            capture_output=True, text=True, check=True)
    assert json.loads(chosen.stdout)["amount"] == "2.00"


# ------------------------------------------------- generated by the sandbox traffic generator


def test_traffic_generator_refunds_of_every_kind_classify_as_intended():
    """The demo's traffic makes each kind of refund; each must land in its own flow."""
    import os

    from clarus_pipelines.connectors.shopify import ShopifyResource
    from clarus_pipelines.sandbox.netsuite import NetSuiteSandbox
    from clarus_pipelines.sandbox.serving import serve_in_thread
    from clarus_pipelines.sandbox.shopify import ShopifySandbox
    from clarus_pipelines.sandbox.traffic import TrafficGenerator, TrafficProfile

    env = os.environ
    shop = ShopifySandbox(access_token=env["SHOPIFY_ACCESS_TOKEN"], webhook_secret=env["SHOPIFY_WEBHOOK_SECRET"])
    netsuite = NetSuiteSandbox(consumer_key="k", consumer_secret="s", token_id="t", token_secret="ts", catalog=shop.catalog)
    expected = {"refund_return": "RETURN", "refund_cancellation": "CANCELLATION", "refund_goodwill": "GOODWILL",
                "refund_shipping_only": "SHIPPING_ONLY", "cancel_before_dispatch": "CANCELLATION"}
    traffic = TrafficGenerator(shop, netsuite, profile=TrafficProfile.only(), seed=7)
    orders = {case: traffic.generate_orders(1, case=case)[0] for case in expected}
    served = serve_in_thread(shop.app)
    client = ShopifyResource(base_url=served.url, access_token=env["SHOPIFY_ACCESS_TOKEN"])
    try:
        for case in ("refund_return", "refund_goodwill", "refund_shipping_only"):  # these follow a dispatch
            order = shop.order(orders[case].order_id)
            client.create_fulfillment(order["id"], {li["id"]: li["quantity"] for li in order["line_items"]},
                                      tracking_number="AB123456789GB", company="Royal Mail")
        traffic.apply_followups(force=True)
    finally:
        client.close()
        served.stop()
    for case, kind in expected.items():
        generated = orders[case]
        assert all(f.outcome == "done" for f in generated.followups), (case, generated.followups)
        (refund,) = shop.refunds(generated.order_id)
        result = classify_refund(refund, order=shop.order(generated.order_id), rules=POLICIES_RULES)
        assert result.kind == kind, (case, result.reasons)
        assert result.actions[0]["action"] != RAISE_REFUND_UNCLASSIFIED


# ------------------------------------------------ Shopify's explicit return wins (issue 16)


def test_return_on_a_non_shipping_line_is_still_a_return():
    refund = make_refund(lines=[("TEE-BLK-M", 1)], restock_type="return")
    refund["refund_line_items"][0]["line_item"].update(requires_shipping=False)
    result = classify_refund(refund)
    assert result.kind == RefundKind.RETURN, result.reasons
    assert result.action(CLARUS_EXPECT_GOODS_IN)["lines"] == [{"line_id": "1001", "sku": "TEE-BLK-M", "quantity": 1}]
    assert NETSUITE_CREDIT_MEMO not in _codes(result)
    assert any("treated as goods" in r for r in result.reasons)


def test_return_of_a_line_without_sku_needs_a_person_not_money_only():
    refund = make_refund(lines=[("TEE-BLK-M", 1), ("", 2)], restock_type="return")
    refund["refund_line_items"][1]["line_item"].update(sku=None, requires_shipping=False, title="Custom print")
    result = classify_refund(refund)
    assert result.kind == RefundKind.RETURN, result.reasons
    review = result.action(RAISE_RETURN_NEEDS_REVIEW)
    assert review["exception"] == "RETURN_NEEDS_REVIEW"
    assert review["lines"] == [{"line_id": "1002", "title": "Custom print", "quantity": 2, "restock_type": "return"}]
    # the named line still goes to the warehouse; the unnamed one is not sent as SKU None
    assert result.action(CLARUS_EXPECT_GOODS_IN)["lines"] == [{"line_id": "1001", "sku": "TEE-BLK-M", "quantity": 1}]
    assert NETSUITE_CREDIT_MEMO not in _codes(result)


def test_return_with_only_unnamed_lines_is_for_a_person():
    refund = make_refund(lines=[("", 1)], restock_type="return")
    refund["refund_line_items"][0]["line_item"].update(sku="")
    result = classify_refund(refund)
    assert result.kind == RefundKind.RETURN
    assert _codes(result) == [RAISE_RETURN_NEEDS_REVIEW]


def test_deciding_rule_cannot_override_an_explicit_restock_type():
    goodwill = RefundRule(on="note", pattern="goodwill", kind="GOODWILL", decides=True)
    refund = make_refund(lines=[("TEE-BLK-M", 1)], restock_type="return", note="goodwill")
    result = classify_refund(refund, rules=[goodwill])
    assert result.kind == RefundKind.UNCLASSIFIED
    assert "GOODWILL" in result.candidates and "RETURN" in result.candidates
    assert any("not overridden by a rule" in r for r in result.reasons)
    # a rule agreeing with Shopify still decides
    exchange = RefundRule(on="note", pattern="goodwill", kind="EXCHANGE", decides=True)
    assert classify_refund(refund, rules=[exchange]).kind == RefundKind.EXCHANGE
    # an explicit cancel is not turned into a return by a rule
    back = RefundRule(on="note", pattern="goodwill", kind="RETURN", decides=True)
    cancel = make_refund(lines=[("TEE-BLK-M", 1)], restock_type="cancel", fulfilled=False, note="goodwill")
    assert classify_refund(cancel, rules=[back]).kind == RefundKind.UNCLASSIFIED


def test_request_shape_without_line_items_keeps_the_goods(payloads):
    """The REST request shape names no line item: the SKU is looked up later, not a person's job."""
    refund, order = _only(payloads, "refund_return_request")
    result = classify_refund(refund, order=order)
    assert result.action(RAISE_RETURN_NEEDS_REVIEW) is None


def test_real_return_payload_is_not_overridden_by_a_deciding_goodwill_rule(payloads):
    """A refund request as Shopify sends it (restock_type "return" on one line, a note saying why)."""
    refund, order = _only(payloads, "refund_return_request")
    rule = RefundRule(on="note", pattern=refund["note"], kind="GOODWILL", decides=True)
    result = classify_refund(refund, order=order, rules=[rule])
    assert result.kind == RefundKind.UNCLASSIFIED and NETSUITE_CREDIT_MEMO not in _codes(result)
    returned_line = refund["refund_line_items"][0]["line_item_id"]
    assert returned_line == int(payloads["line_ids"][1])  # the order's second line goes back
    assert any(f"line {returned_line} as 'return'" in r for r in result.reasons)
