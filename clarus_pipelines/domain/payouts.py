"""Shopify Payments payouts against our records: is the money that reached the bank the money we expect?

Shopify pays the shop out in payouts; each payout is a set of balance transactions (a
customer's charge, a refund, an adjustment...) with Shopify's fee taken off each one. Per
payout issued on a UTC day this module matches every balance transaction against what we
hold, in the payout's currency and to the cent (`Decimal`, never floats):

- a **charge** (CHARGE) against the order it paid for: the amount must be the order total
  (an order paid in several charges: their sum), the fee what the fee schedule says
  (`FeeSchedule`, from the policies' `payments`; rounded half-up to the cent, a cent of
  rounding tolerated);
- a **refund** (REFUND) against our refund record, found by the refund's order transaction id
  (else by order and amount): the amount must be minus the money we refunded, the fee the
  schedule's refund fee (Shopify keeps its charge fee, so 0 by default);
- anything else (adjustments, chargebacks, reserves) cannot be matched to a record of ours:
  listed as `review` for finance to book by hand, never raised;
- **missing on our side**: a charge or refund Shopify paid out that we have no record of;
- **missing at Shopify**: an order we hold as paid through Shopify Payments, placed within the
  payout's first and last transaction, or a refund of an order in the payout, that no
  balance transaction read so far (this payout or any other stored) carries;
- per payout: Shopify's net against the net expected from our records (charges less refunds
  less fees, plus the review items as Shopify reports them), and against the sum of its own
  transactions.

Amounts in another currency than the payout's, or than the order's, are refused (listed as a
mismatch saying so), never converted. A payout with any mismatch is one
RECONCILIATION_MISMATCH (entity `payout:<payout id>`, owner finance); it clears when the
payout reconciles on a later run. `run_payout_reconciliation` stores the day's payouts,
transactions and match rows (delete-then-insert per payout day, so a backfill writes the
same rows) and syncs those exceptions, then matches again, from what is stored, the payouts of
the last two weeks whose mismatch is still open (a charge that reached a later payout clears
the earlier one); the daily finance report carries the day's payout rows (`report_rows`).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

import duckdb
import polars as pl

from clarus_pipelines.exception_queue import Finding, sync_exceptions, utcnow
from clarus_pipelines.policies import PaymentsPolicy, Policies
from clarus_pipelines.state import StateStore

CODE = "RECONCILIATION_MISMATCH"
ENTITY_PREFIX = "payout:"
CENT = Decimal("0.01")
ZERO = Decimal("0")
GATEWAY = "shopify_payments"
CHARGED_STATUSES = ("paid", "partially_refunded", "refunded")

MATCH_COLUMNS = [
    "payout_id", "line_no", "kind", "transaction_id", "order_id", "order_name", "refund_id", "currency", "status",
    "problems", "shopify_amount", "our_amount", "shopify_fee", "expected_fee", "shopify_net", "expected_net",
    "difference",
]
MONEY = ("shopify_amount", "our_amount", "shopify_fee", "expected_fee", "shopify_net", "expected_net", "difference")


def entity_id(payout_id: str) -> str:
    """The exception entity of a payout: `payout:<legacy id>` (orders are plain ids)."""
    return f"{ENTITY_PREFIX}{payout_id}"


def money(value: Any) -> Decimal | None:
    if value is None or value == "":
        return None
    try:
        return Decimal(str(value))
    except (ArithmeticError, InvalidOperation):
        return None


def cents(value: Decimal) -> Decimal:
    return value.quantize(CENT, rounding=ROUND_HALF_UP)


@dataclass(frozen=True)
class FeeSchedule:
    """What Shopify Payments charges: `percent` of a charge plus `fixed`, rounded half-up to the
    cent; `refund_fee` on a refund (Shopify does not return the charge's fee)."""

    percent: Decimal = Decimal("2.0")
    fixed: Decimal = Decimal("0.25")
    refund_fee: Decimal = ZERO

    @classmethod
    def of(cls, policy: PaymentsPolicy) -> "FeeSchedule":
        """The schedule in the policies file (`payments`)."""
        return cls(policy.fee_percent, policy.fee_fixed, policy.refund_fee)

    def charge_fee(self, amount: Decimal) -> Decimal:
        return cents(amount * self.percent / 100 + self.fixed) if amount > 0 else ZERO


@dataclass
class PayoutMatch:
    """Match rows (payout rows line 0, then its transactions; MATCH_COLUMNS) and one finding per payout
    that does not reconcile."""

    rows: list[dict[str, Any]]
    findings: list[Finding]
    payout_ids: list[str]

    def frame(self) -> pl.DataFrame:
        return pl.DataFrame(
            [{c: (None if r.get(c) is None else str(r[c])) for c in MATCH_COLUMNS} for r in self.rows],
            schema={c: pl.Utf8 for c in MATCH_COLUMNS},
        )

    @property
    def mismatched_payouts(self) -> list[str]:
        return [r["payout_id"] for r in self.rows if r["line_no"] == 0 and r["status"] == "mismatch"]


# ------------------------------------------------------------------------------ matching


def _date(value: Any) -> str:
    return value.isoformat(sep=" ", timespec="seconds") if isinstance(value, datetime) else str(value)


def _same(a: Decimal | None, b: Decimal | None, tolerance: Decimal) -> bool:
    return a is not None and b is not None and abs(a - b) <= tolerance


def match_payouts(
    payouts: Sequence[Mapping[str, Any]],
    transactions: Sequence[Mapping[str, Any]],
    orders: Mapping[str, Mapping[str, Any]],
    refunds: Sequence[Mapping[str, Any]],
    *,
    charged_elsewhere: Iterable[str] = (),
    refunded_elsewhere: Iterable[str] = (),
    fees: FeeSchedule = FeeSchedule(),
    tolerance: Decimal = CENT,
) -> PayoutMatch:
    """Match each payout's balance transactions against our orders and refunds (module docstring).

    `payouts`: payout_id, issued_at, status, currency, net. `transactions`: transaction_id,
    payout_id, type, source_order_transaction_id, order_id, order_name, transaction_date, currency,
    amount, fee, net. `orders`: order_id -> order_name, currency, total_price, created_at,
    charged (paid through Shopify Payments). `refunds`: refund_id, order_id, currency, amount,
    processed_at, transaction_ids (our Shopify Payments refund transactions). `charged_elsewhere` /
    `refunded_elsewhere`: order ids with a charge and order transaction ids with a refund in
    balance transactions stored from other reads (so what an earlier payout carried is not missing).
    """
    by_payout: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for t in transactions:
        by_payout[str(t["payout_id"])].append(t)
    charges_by_order: dict[str, list[str]] = defaultdict(list)
    for t in sorted(transactions, key=lambda t: (t["transaction_date"], t["transaction_id"])):
        if t["type"] == "CHARGE" and t.get("order_id"):
            charges_by_order[str(t["order_id"])].append(t["transaction_id"])
    charged = set(charged_elsewhere) | set(charges_by_order)
    refund_by_txn = {str(tx): r for r in refunds for tx in r.get("transaction_ids") or ()}
    refunded = set(refunded_elsewhere) | {str(t["source_order_transaction_id"]) for t in transactions
                                          if t["type"] == "REFUND" and t.get("source_order_transaction_id")}
    claimed_refunds: set[str] = set()
    amounts = {t["transaction_id"]: money(t["amount"]) for t in transactions}

    rows: list[dict[str, Any]] = []
    findings: list[Finding] = []
    for payout in sorted(payouts, key=lambda p: (p["issued_at"], str(p["payout_id"]))):
        pid = str(payout["payout_id"])
        currency = payout["currency"]
        lines: list[dict[str, Any]] = []
        mine = sorted(by_payout.get(pid, []), key=lambda t: (t["transaction_date"], t["transaction_id"]))
        for t in mine:
            lines.append(_match_transaction(t, currency, orders, refunds, refund_by_txn, charges_by_order, amounts,
                                            claimed_refunds, fees, tolerance))
        if mine:
            first, last = mine[0]["transaction_date"], mine[-1]["transaction_date"]
            in_payout = {str(t["order_id"]) for t in mine if t.get("order_id")}
            for order in sorted(orders.values(), key=lambda o: (o["created_at"] or datetime.min, o["order_id"])):
                oid = order["order_id"]
                if (order.get("charged") and oid not in charged and order["created_at"] is not None
                        and first <= order["created_at"] <= last):
                    charged.add(oid)  # reported once, in the first payout whose span covers it
                    total = money(order["total_price"]) or ZERO
                    fee = fees.charge_fee(total)
                    lines.append(_row("charge", None, order, None, order.get("currency"), "mismatch",
                                      [f"missing at Shopify: order {order['order_name']} charged {total} "
                                       f"{order.get('currency')} on {_date(order['created_at'])} is in no payout read"],
                                      our=total, expected_fee=fee, expected_net=total - fee))
            for refund in sorted(refunds, key=lambda r: (r["processed_at"] or datetime.min, r["refund_id"])):
                if refund["order_id"] not in in_payout or refund["refund_id"] in claimed_refunds:
                    continue
                ids = [str(x) for x in refund.get("transaction_ids") or ()]
                if not ids or any(x in refunded for x in ids):
                    continue
                if refund["processed_at"] is not None and refund["processed_at"] > last:
                    continue  # refunded after this payout's last transaction: a later payout's
                claimed_refunds.add(refund["refund_id"])
                amount = money(refund["amount"]) or ZERO
                order = orders.get(refund["order_id"]) or {"order_id": refund["order_id"], "order_name": None}
                lines.append(_row("refund", None, order, refund["refund_id"], refund.get("currency"), "mismatch",
                                  [f"missing at Shopify: refund {refund['refund_id']} of {amount} "
                                   f"{refund.get('currency')} is in no payout read"],
                                  our=-amount, expected_fee=fees.refund_fee, expected_net=-amount - fees.refund_fee))
        for index, line in enumerate(lines, start=1):
            line.update(payout_id=pid, line_no=index)

        net = money(payout["net"])
        their_sum = sum((money(t["net"]) or ZERO for t in mine), ZERO)
        expected = sum((ln["expected_net"] for ln in lines if ln["expected_net"] is not None), ZERO)
        problems: list[str] = []
        if net is None:
            problems.append("Shopify reported no net amount")
        else:
            if net != their_sum:
                problems.append(f"Shopify's payout net {net} {currency} is not the sum of its transactions ({their_sum})")
            allowed = tolerance * max(1, len(lines))  # a cent of fee rounding per transaction
            if abs(net - expected) > allowed:
                problems.append(f"payout net {net} {currency}, expected {cents(expected)} from our records "
                                f"(difference {cents(net - expected)})")
        bad = [ln for ln in lines if ln["status"] == "mismatch"]
        details = [p for ln in bad for p in ln["_problems"]]
        if bad:
            problems.append(f"{len(bad)} transaction(s) do not match")
        summary = _row("payout", None, {}, None, currency, "mismatch" if problems else "ok", problems,
                       our=None, expected_fee=None, expected_net=cents(expected))
        summary.update(payout_id=pid, line_no=0, shopify_amount=None, shopify_net=net,
                       difference=cents(net - expected) if net is not None else None)
        rows.append(summary)
        rows.extend(lines)
        if problems:
            said = [p for p in problems if not p.endswith("do not match")] + details[:5]
            more = f"; and {len(details) - 5} more" if len(details) > 5 else ""
            findings.append(Finding(
                entity_id(pid),
                f"payout {pid} issued {_date(payout['issued_at'])} ({payout.get('status')}) does not reconcile: "
                + "; ".join(said) + more,
                {"payout_id": pid, "issued_at": _date(payout["issued_at"]), "status": payout.get("status"),
                 "currency": currency, "net": str(net), "expected_net": str(cents(expected)),
                 "difference": str(cents(net - expected)) if net is not None else None,
                 "problems": [p for p in problems if not p.endswith("do not match")] + details},
            ))
    for row in rows:
        row.pop("_problems", None)
    return PayoutMatch(rows, findings, [str(p["payout_id"]) for p in payouts])


def _row(kind: str, t: Mapping[str, Any] | None, order: Mapping[str, Any], refund_id: str | None, currency: str | None,
         status: str, problems: list[str], *, our: Decimal | None, expected_fee: Decimal | None,
         expected_net: Decimal | None) -> dict[str, Any]:
    amount = money(t["amount"]) if t else None
    net = money(t["net"]) if t else None
    return {
        "kind": kind, "transaction_id": t["transaction_id"] if t else None,
        "order_id": (t.get("order_id") if t else None) or order.get("order_id"),
        "order_name": order.get("order_name") or (t.get("order_name") if t else None),
        "refund_id": refund_id, "currency": currency, "status": status, "problems": "; ".join(problems) or None,
        "_problems": problems,
        "shopify_amount": amount, "our_amount": our, "shopify_fee": money(t["fee"]) if t else None,
        "expected_fee": expected_fee, "shopify_net": net, "expected_net": expected_net,
        "difference": (net - expected_net) if net is not None and expected_net is not None else None,
    }


def _match_transaction(t, payout_currency, orders, refunds, refund_by_txn, charges_by_order, amounts, claimed_refunds,
                       fees: FeeSchedule, tolerance: Decimal) -> dict[str, Any]:
    kind = {"CHARGE": "charge", "REFUND": "refund"}.get(t["type"], "other")
    amount, fee, net = money(t["amount"]), money(t["fee"]), money(t["net"])
    currency = t.get("currency")
    name = t.get("order_name") or t.get("order_id")
    problems: list[str] = []
    if amount is None or fee is None or net is None:
        return _row(kind, t, {}, None, currency, "mismatch", [f"{t['type']} {t['transaction_id']}: amounts unreadable"],
                    our=None, expected_fee=None, expected_net=None)
    if amount - fee != net:
        problems.append(f"Shopify's net {net} is not amount {amount} less fee {fee}")
    if currency != payout_currency:
        return _row(kind, t, {}, None, currency, "mismatch", [
            *problems, f"{t['type'].lower()} in {currency} inside a {payout_currency} payout: amounts in different "
                       "currencies are not compared (no conversion)"], our=None, expected_fee=None, expected_net=None)
    if kind == "other":
        why = f"{t['type']} of {amount} {currency} is not matched against our records: book it by hand"
        return _row(kind, t, {}, None, currency, "mismatch" if problems else "review", [*problems, why],
                    our=None, expected_fee=fee, expected_net=net)

    order = orders.get(str(t.get("order_id"))) if t.get("order_id") else None
    if kind == "charge":
        if order is None:
            return _row(kind, t, {}, None, currency, "mismatch",
                        [*problems, f"missing on our side: Shopify charged {amount} {currency} for order {name}, "
                                    "which we do not hold"], our=None, expected_fee=None, expected_net=None)
        if order.get("currency") != currency:
            return _row(kind, t, order, None, currency, "mismatch", [
                *problems, f"order {order['order_name']} is in {order.get('currency')}, the charge in {currency}: "
                           "not compared (no conversion)"], our=None, expected_fee=None, expected_net=None)
        # several charges for one order (e.g. an edit paid later): the last one carries what the others leave
        siblings = charges_by_order[str(order["order_id"])]
        total = money(order["total_price"]) or ZERO
        others = sum((amounts[s] or ZERO for s in siblings if s != t["transaction_id"]), ZERO)
        ours = total - others if siblings[-1] == t["transaction_id"] else amount
        if ours != amount:
            problems.append(f"order {order['order_name']}: Shopify charged {amount} {currency}, the order total is "
                            f"{total}" + (f" ({len(siblings)} charges)" if len(siblings) > 1 else ""))
        expected_fee = fees.charge_fee(ours)
        if not _same(fee, expected_fee, tolerance):
            problems.append(f"order {order['order_name']}: fee {fee} {currency}, expected {expected_fee}")
        return _row(kind, t, order, None, currency, "mismatch" if problems else "ok", problems,
                    our=ours, expected_fee=expected_fee, expected_net=ours - expected_fee)

    refund = refund_by_txn.get(str(t.get("source_order_transaction_id") or ""))
    if refund is None:  # no transaction id to go by: the order's refund of that amount not yet claimed
        refund = next((r for r in refunds if r["order_id"] == str(t.get("order_id")) and r["refund_id"] not in claimed_refunds
                       and money(r["amount"]) == -amount), None)
    if refund is None:
        return _row(kind, t, order or {}, None, currency, "mismatch",
                    [*problems, f"missing on our side: Shopify refunded {-amount} {currency} on order {name}, "
                                "and we hold no such refund"], our=None, expected_fee=None, expected_net=None)
    claimed_refunds.add(refund["refund_id"])
    if refund.get("currency") and refund["currency"] != currency:
        return _row(kind, t, order or {}, refund["refund_id"], currency, "mismatch", [
            *problems, f"refund {refund['refund_id']} is in {refund['currency']}, Shopify's in {currency}: "
                       "not compared (no conversion)"], our=None, expected_fee=None, expected_net=None)
    ours = -(money(refund["amount"]) or ZERO)
    if ours != amount:
        problems.append(f"refund {refund['refund_id']}: Shopify refunded {-amount} {currency}, we refunded {-ours}")
    if not _same(fee, fees.refund_fee, tolerance):
        problems.append(f"refund {refund['refund_id']}: fee {fee} {currency}, expected {fees.refund_fee}")
    return _row(kind, t, order or {"order_id": refund["order_id"]}, refund["refund_id"], currency,
                "mismatch" if problems else "ok", problems, our=ours, expected_fee=fees.refund_fee,
                expected_net=ours - fees.refund_fee)


# ------------------------------------------------------------------------------ our records


def _day_bounds(day: date) -> tuple[datetime, datetime]:
    start = datetime.combine(day, time())
    return start, start + timedelta(days=1)


def load_ours(con: duckdb.DuckDBPyConnection, transactions: Sequence[Mapping[str, Any]],
              spans: Sequence[tuple[datetime, datetime]]) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """Our orders (those in the transactions, and those placed within any payout's span) and their refunds."""
    con.complete()
    ids = sorted({str(t["order_id"]) for t in transactions if t.get("order_id")})
    span_sql = " OR ".join(["(o.created_at >= ? AND o.created_at <= ?)"] * len(spans)) or "false"
    params: list[Any] = [GATEWAY, list(CHARGED_STATUSES), ids]
    for start, end in spans:
        params += [start, end]
    cur = con.execute(
        "SELECT o.order_id, o.order_name, o.currency, o.total_price, o.created_at,"
        " coalesce(list_contains(TRY_CAST(json_extract(o.payload, '$.payment_gateway_names') AS VARCHAR[]), ?), false)"
        "  AND o.financial_status IN (SELECT unnest(?::VARCHAR[])) AS charged"
        " FROM orders o WHERE o.order_id IN (SELECT unnest(?::VARCHAR[])) OR " + span_sql,
        params,
    )
    names = [d[0] for d in cur.description]
    orders = {row[0]: dict(zip(names, row)) for row in cur.fetchall()}
    cur = con.execute(
        "SELECT refund_id, order_id, coalesce(r.currency, o.currency) AS currency, r.amount,"
        " coalesce(r.processed_at, r.received_at) AS processed_at, json_extract(r.payload, '$.transactions') AS transactions"
        " FROM refunds r LEFT JOIN orders o USING (order_id) WHERE r.order_id IN (SELECT unnest(?::VARCHAR[]))"
        " ORDER BY refund_id",
        [sorted(orders)],
    )
    names = [d[0] for d in cur.description]
    refunds = []
    for row in cur.fetchall():
        record = dict(zip(names, row))
        txs = json.loads(record.pop("transactions") or "[]") or []
        record["transaction_ids"] = [str(tx["id"]) for tx in txs if isinstance(tx, Mapping) and tx.get("id") is not None
                                     and tx.get("gateway") == GATEWAY and str(tx.get("status", "success")).lower() == "success"
                                     and str(tx.get("kind", "refund")).lower() == "refund"]
        refunds.append(record)
    return orders, refunds


def _elsewhere(con: duckdb.DuckDBPyConnection, day: date) -> tuple[set[str], set[str]]:
    """Charged orders and refunded order transactions in balance transactions stored for other days."""
    rows = con.execute(
        "SELECT type, order_id, source_order_transaction_id FROM shopify_balance_transactions"
        " WHERE payout_date <> ? AND type IN ('CHARGE', 'REFUND')", [day],
    ).fetchall()
    return ({r[1] for r in rows if r[0] == "CHARGE" and r[1]}, {r[2] for r in rows if r[0] == "REFUND" and r[2]})


# ------------------------------------------------------------------------------ the day's run


@dataclass
class PayoutRun:
    day: date
    match: PayoutMatch
    outcome: dict[str, str] = field(default_factory=dict)
    rechecked: dict[date, dict[str, str]] = field(default_factory=dict)  # other payout days matched again

    def as_metadata(self) -> dict[str, Any]:
        payouts = [r for r in self.match.rows if r["line_no"] == 0]
        lines = [r for r in self.match.rows if r["line_no"] > 0]
        return {
            "payouts": len(payouts),
            "transactions": sum(1 for r in lines if r["transaction_id"]),
            "mismatched_payouts": len(self.match.mismatched_payouts),
            "mismatched_transactions": sum(1 for r in lines if r["status"] == "mismatch"),
            "review": sum(1 for r in lines if r["status"] == "review"),
            "raised": sum(1 for a in self.outcome.values() if a in ("raised", "reopened")),
            "cleared": sum(1 for a in self.outcome.values() if a == "auto_resolved"),
            "days_rechecked": len(self.rechecked),
        }


def run_payout_reconciliation(
    store: StateStore,
    day: date,
    payouts: Sequence[Mapping[str, Any]],
    transactions: Sequence[Mapping[str, Any]],
    *,
    fees: FeeSchedule = FeeSchedule(),
    policies: Policies | None = None,
    now: datetime | None = None,
    tolerance: Decimal = CENT,
    recheck_days: int = 14,
) -> PayoutRun:
    """Store the payouts issued on `day` and their transactions (replacing the day), match them
    against our records, store the match rows and sync RECONCILIATION_MISMATCH for those payouts.

    Then every other payout day of the last `recheck_days` with a payout mismatch still open is
    matched again from what is stored: a charge that reached a later payout, or a refund we
    recorded since, clears the earlier payout's exception without re-reading Shopify."""
    now = now or utcnow()
    run = _match_and_store(store, day, payouts, transactions, fees=fees, policies=policies, now=now,
                           tolerance=tolerance, replace=True)
    with store.read() as con:
        days = sorted({date.fromisoformat(r[0]) for r in con.execute(
            "SELECT DISTINCT json_extract_string(details, '$.payout_date') FROM exceptions WHERE code = ?"
            " AND entity_type = 'payout' AND status <> 'resolved'", [CODE]).fetchall() if r[0]})
    for other in days:
        if other == day or other < day - timedelta(days=recheck_days):
            continue
        with store.read() as con:
            stored_payouts, stored_transactions = stored_day(con, other)
        again = _match_and_store(store, other, stored_payouts, stored_transactions, fees=fees, policies=policies,
                                 now=now, tolerance=tolerance, replace=False)
        run.outcome.update(again.outcome)
        run.rechecked[other] = again.outcome
    return run


def _match_and_store(store: StateStore, day: date, payouts: Sequence[Mapping[str, Any]],
                     transactions: Sequence[Mapping[str, Any]], *, fees: FeeSchedule, policies: Policies | None,
                     now: datetime, tolerance: Decimal, replace: bool) -> PayoutRun:
    spans: list[tuple[datetime, datetime]] = []
    for p in payouts:
        dates = [t["transaction_date"] for t in transactions if str(t["payout_id"]) == str(p["payout_id"])]
        if dates:
            spans.append((min(dates), max(dates)))
    with store.read() as con:
        orders, refunds = load_ours(con, transactions, spans)
        charged, refunded = _elsewhere(con, day)
    match = match_payouts(payouts, transactions, orders, refunds, charged_elsewhere=charged,
                          refunded_elsewhere=refunded, fees=fees, tolerance=tolerance)
    with store.write() as con:
        if replace:
            store_day(con, day, payouts, transactions, match, now)
        else:
            store_matches(con, day, match, now)
        stale = [r[0] for r in con.execute(
            "SELECT entity_id FROM exceptions WHERE code = ? AND entity_type = 'payout' AND status <> 'resolved'"
            " AND json_extract_string(details, '$.payout_date') = ?", [CODE, day.isoformat()]).fetchall()]
        for finding in match.findings:
            finding.details["payout_date"] = day.isoformat()
        scope = sorted({*(entity_id(p) for p in match.payout_ids), *stale})
        outcome = sync_exceptions(con, CODE, match.findings, scope=scope, policies=policies, now=now)
        if match.findings:  # the catalogue names orders; these name payouts
            con.execute("UPDATE exceptions SET entity_type = 'payout' WHERE code = ? AND entity_id IN (SELECT unnest(?))",
                        [CODE, [f.entity_id for f in match.findings]])
    return PayoutRun(day, match, outcome)


def stored_day(con: duckdb.DuckDBPyConnection, day: date) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The payouts and balance transactions stored for a payout day, in the shapes `match_payouts` takes."""
    con.complete()

    def rows(query: str) -> list[dict[str, Any]]:
        cur = con.execute(query, [day])
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row)) for row in cur.fetchall()]

    return (
        rows("SELECT payout_id, payout_gid, issued_at, status, transaction_type, currency, net FROM shopify_payouts"
             " WHERE payout_date = ? ORDER BY issued_at, payout_id"),
        rows("SELECT transaction_id, payout_id, type, source_type, source_id, source_order_transaction_id, order_id,"
             " order_name, transaction_date, currency, amount, fee, net, test FROM shopify_balance_transactions"
             " WHERE payout_date = ? ORDER BY transaction_date, transaction_id"),
    )


def store_matches(con: duckdb.DuckDBPyConnection, day: date, match: PayoutMatch, now: datetime) -> None:
    """Replace the day's match rows only (a re-check from stored payouts)."""
    con.execute("DELETE FROM payout_matches WHERE payout_date = ?", [day])
    if match.rows:
        con.executemany(
            f"INSERT INTO payout_matches (payout_date, {', '.join(MATCH_COLUMNS)}, matched_at)"
            f" VALUES (?, {', '.join('?' for _ in MATCH_COLUMNS)}, ?)",
            [[day, *(r.get(c) for c in MATCH_COLUMNS), now] for r in match.rows],
        )


def store_day(con: duckdb.DuckDBPyConnection, day: date, payouts: Sequence[Mapping[str, Any]],
              transactions: Sequence[Mapping[str, Any]], match: PayoutMatch, now: datetime) -> None:
    """Replace the day's payouts, balance transactions and match rows (delete-then-insert)."""
    for table in ("payout_matches", "shopify_balance_transactions", "shopify_payouts"):
        con.execute(f"DELETE FROM {table} WHERE payout_date = ?", [day])  # table names are ours, not input
    ids = [str(p["payout_id"]) for p in payouts]
    if ids:  # a payout re-dated by Shopify moves to its new day
        for table in ("payout_matches", "shopify_balance_transactions", "shopify_payouts"):
            con.execute(f"DELETE FROM {table} WHERE payout_id IN (SELECT unnest(?::VARCHAR[]))", [ids])
    if payouts:
        con.executemany(
            "INSERT INTO shopify_payouts (payout_id, payout_gid, payout_date, issued_at, status, transaction_type, currency,"
            " net, summary, read_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [[str(p["payout_id"]), p.get("payout_gid") or "", day, p["issued_at"], p.get("status") or "", p.get("transaction_type"),
              p["currency"], money(p["net"]), json.dumps(p.get("summary") or {}, default=str), now] for p in payouts],
        )
    known = set(ids)
    rows = [t for t in transactions if str(t["payout_id"]) in known]
    if rows:
        con.executemany(
            "INSERT OR REPLACE INTO shopify_balance_transactions (transaction_id, payout_id, payout_date, type, source_type,"
            " source_id, source_order_transaction_id, order_id, order_name, transaction_date, currency, amount, fee, net,"
            " test, read_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [[t["transaction_id"], str(t["payout_id"]), day, t["type"], t.get("source_type"),
              None if t.get("source_id") is None else str(t["source_id"]),
              None if t.get("source_order_transaction_id") is None else str(t["source_order_transaction_id"]),
              None if t.get("order_id") is None else str(t["order_id"]), t.get("order_name"), t["transaction_date"],
              t["currency"], money(t["amount"]), money(t["fee"]), money(t["net"]), t.get("test"), now] for t in rows],
        )
    store_matches(con, day, match, now)


def report_rows(con: duckdb.DuckDBPyConnection, day: date) -> list[dict[str, Any]]:
    """The day's payout rows for the finance report: every payout, and each of its transactions that
    is not `ok` (a mismatch, or an item to book by hand)."""
    con.complete()
    cur = con.execute(
        f"SELECT {', '.join(MATCH_COLUMNS)} FROM payout_matches WHERE payout_date = ? AND (line_no = 0 OR status <> 'ok')"
        " ORDER BY payout_id, line_no", [day],
    )
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row)) for row in cur.fetchall()]


def payout_matches(con: duckdb.DuckDBPyConnection, since: date, until: date) -> pl.DataFrame:
    """Match rows of payouts issued in [since, until] (both UTC days included), newest first."""
    con.complete()
    return con.sql(
        "SELECT m.payout_date, m.payout_id, p.status AS payout_status, m.line_no, m.kind, m.transaction_id, m.order_id,"
        " m.order_name, m.refund_id, m.currency, m.status, m.problems, m.shopify_amount, m.our_amount, m.shopify_fee,"
        " m.expected_fee, m.shopify_net, m.expected_net, m.difference"
        " FROM payout_matches m LEFT JOIN shopify_payouts p USING (payout_id)"
        " WHERE m.payout_date >= ? AND m.payout_date <= ? ORDER BY m.payout_date DESC, m.payout_id, m.line_no",
        params=[since, until],
    ).pl()
