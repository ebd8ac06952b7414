"""The Shopify sandbox's Shopify Payments account: payouts and balance transactions.

Generated on every read from what the sandbox already knows, so they always agree with its
orders and refunds:

- each paid order is one CHARGE of its amount paid, at the order's creation, with a fee of
  `fee_percent` % plus `fee_fixed` (rounded half-up to the cent);
- each refund paid back through `shopify_payments` is one REFUND of minus its amount, fee 0;
- a payout per UTC day that has transactions, issued at `payout_hour` that day (SCHEDULED
  until then, PAID after), holding that day's transactions; its net is their net.

Served as `shopifyPaymentsAccount { payouts balanceTransactions }` through the GraphQL API
(validated against Shopify's schema like every document). Search terms understood:
payouts `issued_at`, `status`, `id`; balance transactions `payments_transfer_id` (the payout
id), `payout_date`, `processed_at`, `transaction_type`.

`inject(...)` makes Shopify disagree with the shop for tests and demos: a charge of another
amount, another fee, a charge left out of its payout, a charge for an order the shop never had,
or a payout whose net is off.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, time, timezone
from decimal import ROUND_HALF_UP, Decimal
from typing import TYPE_CHECKING, Any

from graphql import GraphQLError

if TYPE_CHECKING:
    from clarus_pipelines.sandbox.shopify import ShopifySandbox

CENT = Decimal("0.01")
PAYOUT_IDS = 88_000_000_000  # + the payout day's ordinal: one payout per day, stable across reads
UNKNOWN_ORDER_ID = 5_999_999_999_999
INJECTIONS = ("charge_amount", "fee", "drop_charge", "unknown_charge", "payout_net")
SUMMARY_FIELDS = ("adjustmentsFee", "adjustmentsGross", "advanceFees", "advanceGross", "chargesFee", "chargesGross",
                  "refundsFee", "refundsFeeGross", "reservedFundsFee", "reservedFundsGross", "retriedPayoutsFee",
                  "retriedPayoutsGross", "usdcRebateCreditAmount")


def _gid(kind: str, value: Any) -> str:
    return f"gid://shopify/{kind}/{value}"


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


def _iso(moment: datetime) -> str:
    return _utc(moment).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Injection:
    kind: str  # one of INJECTIONS
    order_id: int | None = None
    amount: Decimal = Decimal("0")


class ShopifyPayments:
    """Payouts and balance transactions of a `ShopifySandbox` (read under its lock)."""

    def __init__(self, shop: "ShopifySandbox", *, fee_percent: Decimal = Decimal("2.0"), fee_fixed: Decimal = Decimal("0.25"),
                 payout_hour: int = 23):
        self.shop = shop
        self.fee_percent, self.fee_fixed, self.payout_hour = fee_percent, fee_fixed, payout_hour
        self.injections: list[Injection] = []

    def reset(self) -> None:
        self.injections.clear()

    def inject(self, kind: str, *, order_id: int | str | None = None, amount: Decimal | str = "0") -> None:
        """Make Shopify's ledger differ from the shop: `charge_amount` (the order's charge is `amount`
        more), `fee` (its fee is `amount` more), `drop_charge` (its charge is in no payout),
        `unknown_charge` (a charge of `amount` for an order the shop never had, on the day of
        `order_id`'s charge), `payout_net` (the payout holding the order's charge pays `amount` more)."""
        if kind not in INJECTIONS:
            raise ValueError(f"unknown injection {kind!r}: one of {', '.join(INJECTIONS)}")
        self.injections.append(Injection(kind, None if order_id is None else int(order_id), Decimal(str(amount))))

    # ------------------------------------------------------------------ the ledger

    def fee(self, amount: Decimal) -> Decimal:
        return (amount * self.fee_percent / 100 + self.fee_fixed).quantize(CENT, rounding=ROUND_HALF_UP)

    def _money(self, amount: Decimal) -> dict[str, str]:
        return {"amount": str(amount.quantize(CENT)), "currencyCode": self.shop.currency}

    def _payout_of(self, moment: datetime) -> tuple[int, datetime]:
        day = _utc(moment).date()
        return PAYOUT_IDS + day.toordinal(), datetime.combine(day, time(self.payout_hour), tzinfo=timezone.utc)

    def _status(self, issued_at: datetime) -> str:
        return "PAID" if _utc(self.shop.clock()) >= issued_at else "SCHEDULED"

    def ledger(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """(payouts, balance transactions) as plain records, in issue and transaction order."""
        by_kind: dict[str, list[Injection]] = defaultdict(list)
        for injection in self.injections:
            by_kind[injection.kind].append(injection)

        def extra(kind: str, order_id: int) -> Decimal:
            return sum((i.amount for i in by_kind[kind] if i.order_id == order_id), Decimal("0"))

        records: list[dict[str, Any]] = []
        for order in sorted(self.shop._orders.values(), key=lambda o: o.id):
            if order.paid <= 0 or any(i.order_id == order.id for i in by_kind["drop_charge"]):
                continue
            amount = order.paid + extra("charge_amount", order.id)
            fee = self.fee(amount) + extra("fee", order.id)
            records.append(self._record("CHARGE", order.id * 10 + 1, order.created_at, amount, fee, order.id,
                                        order.name, source_id=order.id + 11, order_transaction=order.id + 17))
            for injection in by_kind["unknown_charge"]:
                if injection.order_id == order.id:
                    records.append(self._record("CHARGE", UNKNOWN_ORDER_ID * 10 + 1, order.created_at, injection.amount,
                                                self.fee(injection.amount), UNKNOWN_ORDER_ID, "#9999",
                                                source_id=UNKNOWN_ORDER_ID + 11, order_transaction=UNKNOWN_ORDER_ID + 17))
        for refund in sorted(self.shop._refunds.values(), key=lambda r: r["id"]):
            order = self.shop._orders.get(refund["order_id"])
            for tx in refund.get("transactions") or []:
                if tx.get("gateway") != "shopify_payments" or tx.get("status") != "success" or tx.get("kind") != "refund":
                    continue
                amount = -Decimal(str(tx["amount"]))
                records.append(self._record("REFUND", int(tx["id"]) * 10 + 2, _parse(tx["created_at"]), amount,
                                            Decimal("0"), refund["order_id"], order.name if order else None,
                                            source_id=refund["id"], order_transaction=tx["id"]))
        records.sort(key=lambda r: (r["_at"], r["_number"]))

        payouts: dict[int, dict[str, Any]] = {}
        for record in records:
            number, issued_at = self._payout_of(record["_at"])
            payout = payouts.setdefault(number, {"number": number, "issued_at": issued_at, "transactions": []})
            payout["transactions"].append(record)
        out_payouts, out_transactions = [], []
        for number, payout in sorted(payouts.items()):
            status = self._status(payout["issued_at"])
            nets = sum((t["_net"] for t in payout["transactions"]), Decimal("0"))
            for injection in by_kind["payout_net"]:
                if any(t["_order_id"] == injection.order_id and t["type"] == "CHARGE" for t in payout["transactions"]):
                    nets += injection.amount
            charges = [t for t in payout["transactions"] if t["type"] == "CHARGE"]
            refunds = [t for t in payout["transactions"] if t["type"] == "REFUND"]
            summary = {name: self._money(Decimal("0")) for name in SUMMARY_FIELDS}
            summary.update(chargesGross=self._money(sum((t["_amount"] for t in charges), Decimal("0"))),
                           chargesFee=self._money(sum((t["_fee"] for t in charges), Decimal("0"))),
                           refundsFeeGross=self._money(sum((t["_amount"] for t in refunds), Decimal("0"))),
                           refundsFee=self._money(sum((t["_fee"] for t in refunds), Decimal("0"))))
            out_payouts.append({
                "id": _gid("ShopifyPaymentsPayout", number), "legacyResourceId": str(number),
                "issuedAt": _iso(payout["issued_at"]), "_issued_at": payout["issued_at"], "status": status,
                "transactionType": "DEPOSIT" if nets >= 0 else "WITHDRAWAL", "net": self._money(nets),
                "gross": self._money(nets), "summary": summary, "externalTraceId": None, "bankAccount": None,
            })
            for t in payout["transactions"]:
                t["associatedPayout"] = {"id": _gid("ShopifyPaymentsPayout", number),
                                         "status": "PAID" if status == "PAID" else "SCHEDULED"}
                t["_payout"] = number
                t["_payout_date"] = payout["issued_at"].date()
                out_transactions.append(t)
        return out_payouts, out_transactions

    def _record(self, kind: str, number: int, at: datetime, amount: Decimal, fee: Decimal, order_id: int,
                order_name: str | None, *, source_id: int, order_transaction: int) -> dict[str, Any]:
        return {
            "id": _gid("ShopifyPaymentsBalanceTransaction", number), "type": kind, "sourceType": kind,
            "sourceId": str(source_id), "sourceOrderTransactionId": str(order_transaction),
            "transactionDate": _iso(at), "test": False, "adjustmentReason": None, "adjustmentsOrders": [],
            "amount": self._money(amount), "fee": self._money(fee), "net": self._money(amount - fee),
            "associatedOrder": {"id": _gid("Order", order_id), "name": order_name or f"#{order_id}"},
            "_at": _utc(at).replace(microsecond=0), "_number": number, "_amount": amount, "_fee": fee, "_net": amount - fee, "_order_id": order_id,
        }

    # ------------------------------------------------------------------ GraphQL

    def account(self) -> dict[str, Any]:
        shop = self.shop
        return {
            "id": _gid("ShopifyPaymentsAccount", 1), "activated": True, "country": "GB", "defaultCurrency": shop.currency,
            "onboardable": False, "balance": [self._money(Decimal("0"))], "accountOpenerName": None,
            "payoutStatementDescriptor": "CLARUS SANDBOX",
            "payouts": self._payouts, "balanceTransactions": self._balance_transactions,
        }

    def _payouts(self, query: str | None = None, sortKey: str | None = None, savedSearchId: Any = None,
                 transactionType: str | None = None, **page: Any) -> dict[str, Any]:
        from clarus_pipelines.sandbox.shopify_graphql import ShopifyGraphQL, connection

        payouts, _ = self.ledger()
        for name, op, value in ShopifyGraphQL._search_terms(query):
            if name == "issued_at":
                bound = _bound(name, op, value)
                payouts = [p for p in payouts if _COMPARE[op](p["_issued_at"], bound)]
            elif name == "status":
                payouts = [p for p in payouts if p["status"].lower() == value.lower()]
            elif name == "id":
                payouts = [p for p in payouts if p["legacyResourceId"] == value]
            else:
                raise GraphQLError(f"Unsupported search field {name!r} for payouts in the sandbox")
        if transactionType:
            payouts = [p for p in payouts if p["transactionType"] == transactionType]
        if sortKey not in (None, "ISSUED_AT", "ID"):
            raise GraphQLError(f"Unsupported payout sort key {sortKey!r} in the sandbox")
        return connection(payouts, key=lambda p: p["legacyResourceId"], **page)

    def _balance_transactions(self, query: str | None = None, sortKey: str | None = None, savedSearchId: Any = None,
                              hideTransfers: bool | None = None, **page: Any) -> dict[str, Any]:
        from clarus_pipelines.sandbox.shopify_graphql import ShopifyGraphQL, connection

        _, transactions = self.ledger()
        for name, op, value in ShopifyGraphQL._search_terms(query):
            if name == "payments_transfer_id":
                transactions = [t for t in transactions if str(t["_payout"]) == value.rsplit("/", 1)[-1]]
            elif name == "payout_date":
                day = date.fromisoformat(value[:10])
                transactions = [t for t in transactions if _COMPARE[op](t["_payout_date"], day)]
            elif name == "processed_at":
                bound = _bound(name, op, value)
                transactions = [t for t in transactions if _COMPARE[op](t["_at"], bound)]
            elif name == "transaction_type":
                transactions = [t for t in transactions if t["type"].lower() == value.lower()]
            else:
                raise GraphQLError(f"Unsupported search field {name!r} for balance transactions in the sandbox")
        if sortKey not in (None, "PROCESSED_AT", "ID"):
            raise GraphQLError(f"Unsupported balance transaction sort key {sortKey!r} in the sandbox")
        return connection(transactions, key=lambda t: t["id"], **page)


_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    ">=": lambda a, b: a >= b, ">": lambda a, b: a > b, "<=": lambda a, b: a <= b, "<": lambda a, b: a < b,
    "": lambda a, b: a == b}


def _parse(value: str | datetime) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def _bound(name: str, op: str, value: str) -> datetime:
    try:
        return _utc(_parse(value if "T" in value else f"{value}T00:00:00+00:00"))
    except ValueError as exc:
        raise GraphQLError(f"Invalid date in search term {name}:{op}{value}") from exc

