"""Matching Shopify Payments payouts against our orders and refunds (`domain.payouts`)."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal

from clarus_pipelines.domain.payouts import FeeSchedule, entity_id, match_payouts

T0 = datetime(2026, 3, 2, 9, 0)
FEES = FeeSchedule(percent=Decimal("2.0"), fixed=Decimal("0.25"))


def order(number: int, total: str, *, at: datetime = T0, currency: str = "GBP", charged: bool = True) -> dict:
    return {"order_id": str(5900 + number), "order_name": f"#{number}", "currency": currency, "total_price": Decimal(total),
            "created_at": at, "charged": charged}


def charge(n: int, o: dict, amount: str, fee: str | None = None, *, payout: str = "P1", at: datetime = T0,
           currency: str = "GBP", net: str | None = None) -> dict:
    fee = fee if fee is not None else str(FEES.charge_fee(Decimal(amount)))
    return {"transaction_id": f"bt-{n}", "payout_id": payout, "type": "CHARGE", "source_order_transaction_id": f"sale-{n}",
            "order_id": o["order_id"], "order_name": o["order_name"], "transaction_date": at, "currency": currency,
            "amount": amount, "fee": fee, "net": net if net is not None else str(Decimal(amount) - Decimal(fee))}


def refund_bt(n: int, o: dict, amount: str, txn: str | None, *, payout: str = "P1", at: datetime = T0, fee: str = "0.00") -> dict:
    return {"transaction_id": f"bt-{n}", "payout_id": payout, "type": "REFUND", "source_order_transaction_id": txn,
            "order_id": o["order_id"], "order_name": o["order_name"], "transaction_date": at, "currency": "GBP",
            "amount": f"-{amount}", "fee": fee, "net": str(-Decimal(amount) - Decimal(fee))}


def our_refund(refund_id: str, o: dict, amount: str, txn: str, *, at: datetime = T0) -> dict:
    return {"refund_id": refund_id, "order_id": o["order_id"], "currency": "GBP", "amount": Decimal(amount),
            "processed_at": at, "transaction_ids": [txn]}


def payout(transactions: list[dict], *, pid: str = "P1", net: Decimal | None = None, currency: str = "GBP") -> dict:
    total = sum((Decimal(t["net"]) for t in transactions if t["payout_id"] == pid), Decimal("0"))
    return {"payout_id": pid, "issued_at": T0 + timedelta(hours=15), "status": "PAID", "currency": currency,
            "net": net if net is not None else total}


def run(transactions, orders, refunds=(), payouts=None, **kwargs):
    payouts = payouts if payouts is not None else [payout(transactions)]
    return match_payouts(payouts, transactions, {o["order_id"]: o for o in orders}, list(refunds), fees=FEES, **kwargs)


def by_line(result) -> dict[int, dict]:
    return {r["line_no"]: r for r in result.rows}


def test_fee_rounds_half_up_to_the_cent():
    assert FEES.charge_fee(Decimal("11.75")) == Decimal("0.49")  # 0.485: half-even would say 0.48
    assert FEES.charge_fee(Decimal("10.99")) == Decimal("0.47")
    assert FEES.charge_fee(Decimal("0")) == Decimal("0")


def test_charges_and_a_partial_refund_that_match_reconcile():
    a, b = order(1, "11.75"), order(2, "40.00", at=T0 + timedelta(hours=1))
    txs = [charge(1, a, "11.75"), charge(2, b, "40.00", at=T0 + timedelta(hours=1)),
           refund_bt(3, b, "15.50", "rf-tx-1", at=T0 + timedelta(hours=2))]
    result = run(txs, [a, b], [our_refund("R1", b, "15.50", "rf-tx-1", at=T0 + timedelta(hours=2))])
    rows = by_line(result)
    assert result.findings == [] and [r["status"] for r in result.rows] == ["ok", "ok", "ok", "ok"]
    assert rows[0]["shopify_net"] == rows[0]["expected_net"] == Decimal("11.26") + Decimal("38.95") - Decimal("15.50")
    assert (rows[3]["refund_id"], rows[3]["our_amount"], rows[3]["expected_fee"]) == ("R1", Decimal("-15.50"), Decimal("0"))
    assert rows[1]["expected_fee"] == Decimal("0.49") and rows[1]["difference"] == Decimal("0")


def test_a_cent_of_fee_rounding_is_tolerated_more_is_a_mismatch_naming_the_payout():
    a, b = order(1, "11.75"), order(2, "50.00")
    ok = run([charge(1, a, "11.75", "0.48")], [a])  # Shopify rounded the other way
    assert ok.findings == [] and by_line(ok)[1]["status"] == "ok"

    bad = run([charge(1, a, "11.75"), charge(2, b, "50.00", "1.60")], [a, b])
    [finding] = bad.findings
    assert finding.entity_id == entity_id("P1") == "payout:P1"
    assert "payout P1" in finding.message and "order #2: fee 1.60 GBP, expected 1.25" in finding.message
    assert by_line(bad)[2]["status"] == "mismatch" and by_line(bad)[0]["status"] == "mismatch"


def test_amount_differs_from_the_order_total():
    a = order(1, "30.00")
    result = run([charge(1, a, "29.00")], [a])
    row = by_line(result)[1]
    assert row["status"] == "mismatch" and "Shopify charged 29.00 GBP, the order total is 30.00" in row["problems"]
    assert row["our_amount"] == Decimal("30.00") and row["expected_net"] == Decimal("30.00") - Decimal("0.85")
    assert by_line(result)[0]["difference"] == Decimal("-0.98")  # 28.17 paid out against 29.15 expected


def test_missing_on_our_side_charge_and_refund():
    a, ghost = order(1, "20.00"), order(9, "12.00")
    result = run([charge(1, a, "20.00"), charge(2, ghost, "12.00"), refund_bt(3, a, "5.00", "unknown-tx")], [a])
    rows = by_line(result)
    assert "missing on our side: Shopify charged 12.00 GBP for order #9" in rows[2]["problems"]
    assert "missing on our side: Shopify refunded 5.00 GBP on order #1" in rows[3]["problems"]
    assert len(result.findings) == 1


def test_missing_at_shopify_unless_another_payout_carried_it():
    a = order(1, "20.00")
    b = order(2, "8.00", at=T0 + timedelta(hours=1))
    c = order(3, "10.00", at=T0 + timedelta(hours=2))
    late = order(4, "10.00", at=T0 + timedelta(hours=5))  # after the payout's last transaction: a later payout's
    cash = order(5, "10.00", at=T0 + timedelta(hours=1), charged=False)  # not paid through Shopify Payments
    txs = [charge(1, a, "20.00"), charge(3, c, "10.00", at=T0 + timedelta(hours=2))]
    refunds = [our_refund("R1", a, "4.00", "rf-a", at=T0 + timedelta(hours=1))]
    result = run(txs, [a, b, c, late, cash], refunds)
    missing = [r for r in result.rows if r["transaction_id"] is None and r["line_no"] > 0]
    assert [(r["order_name"], r["refund_id"]) for r in missing] == [("#2", None), ("#1", "R1")]
    assert "missing at Shopify: order #2 charged 8.00 GBP" in missing[0]["problems"]
    assert "missing at Shopify: refund R1 of 4.00 GBP" in missing[1]["problems"]
    assert by_line(result)[0]["expected_net"] == Decimal("19.35") + Decimal("9.55") + Decimal("7.59") - Decimal("4.00")

    elsewhere = run(txs, [a, b, c, late, cash], refunds, charged_elsewhere=[b["order_id"]], refunded_elsewhere=["rf-a"])
    assert elsewhere.findings == []


def test_other_currencies_are_refused_not_converted():
    a, usd = order(1, "20.00"), order(2, "20.00", currency="USD")
    result = run([charge(1, a, "20.00", currency="USD"), charge(2, usd, "20.00")], [a, usd])
    rows = by_line(result)
    assert "charge in USD inside a GBP payout" in rows[1]["problems"] and rows[1]["expected_net"] is None
    assert "order #2 is in USD, the charge in GBP: not compared (no conversion)" in rows[2]["problems"]
    assert result.findings and result.findings[0].entity_id == "payout:P1"


def test_payout_net_must_be_the_sum_of_its_transactions():
    a = order(1, "20.00")
    txs = [charge(1, a, "20.00")]
    result = run(txs, [a], payouts=[payout(txs, net=Decimal("18.00"))])
    [finding] = result.findings
    assert "Shopify's payout net 18.00 GBP is not the sum of its transactions (19.35)" in finding.message
    assert "expected 19.35 from our records (difference -1.35)" in finding.message


def test_adjustments_are_listed_for_review_and_counted_as_shopify_reports_them():
    a = order(1, "20.00")
    adjustment = {**charge(2, a, "-3.00", "0.00"), "type": "ADJUSTMENT", "order_id": None, "order_name": None}
    txs = [charge(1, a, "20.00"), adjustment]
    result = run(txs, [a])
    assert result.findings == [] and by_line(result)[2]["status"] == "review"
    assert "book it by hand" in by_line(result)[2]["problems"]
    assert by_line(result)[0]["expected_net"] == Decimal("16.35")


def test_an_order_paid_in_two_charges_is_compared_on_the_sum():
    a = order(1, "30.00")
    txs = [charge(1, a, "20.00"), charge(2, a, "10.00", at=T0 + timedelta(minutes=5))]
    assert run(txs, [a]).findings == []
    short = run([charge(1, a, "20.00"), charge(2, a, "9.00", at=T0 + timedelta(minutes=5))], [a])
    assert "(2 charges)" in by_line(short)[2]["problems"]


def test_each_payout_is_matched_on_its_own():
    a, b = order(1, "20.00"), order(2, "20.00")
    txs = [charge(1, a, "20.00"), charge(2, b, "19.00", payout="P2")]
    result = run(txs, [a, b], payouts=[payout(txs), payout(txs, pid="P2")])
    assert [f.entity_id for f in result.findings] == ["payout:P2"]
    assert result.mismatched_payouts == ["P2"] and result.payout_ids == ["P1", "P2"]


def test_the_fee_schedule_comes_from_the_policies_file():
    import pytest
    from pydantic import ValidationError

    from clarus_pipelines.policies import PaymentsPolicy

    plan = FeeSchedule.of(PaymentsPolicy(fee_percent="1.5", fee_fixed="0.20"))
    assert plan.charge_fee(Decimal("100.00")) == Decimal("1.70") and plan.refund_fee == Decimal("0")
    with pytest.raises(ValidationError):
        PaymentsPolicy(fee_percent="-1")
