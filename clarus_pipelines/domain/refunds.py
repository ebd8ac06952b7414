"""Classify a Shopify refund, so that stock and finance postings follow what really happened.

Shopify sends every kind of refund through one webhook (`refunds/create`): a return, a
cancellation before dispatch, a goodwill gesture, a shipping refund. They differ only in
details of the payload, and mixing them up moves stock wrongly in Clarus and posts the
wrong credit in NetSuite. `classify_refund` reads those details:

- each refund line item's `restock_type` (`return`, `cancel`, `no_restock`,
  `legacy_restock`) or, in the legacy shape, the refund's `restock` boolean;
- whether the line was dispatched (Clarus first: it is master of dispatch and runs ahead
  of Shopify by design; then the order's fulfilments; then the line's own
  `fulfillment_status`) and whether the order is cancelled;
- order adjustments (`shipping_refund`, `refund_discrepancy`) and refund shipping lines;
- the money actually refunded (successful `refund` transactions);
- the configurable `refund_rules` (patterns on the note, order tags, cancel reason...).

The result is one of RETURN, CANCELLATION, GOODWILL, SHIPPING_ONLY, EXCHANGE or
UNCLASSIFIED (fits none, or fits two), with the reasons (what was seen, in words finance
can read) and the actions that follow. Everything here is pure: no I/O, no clock.

How a refunded line reads (restock type x dispatched?):

| restock type   | dispatched                 | not dispatched | cannot tell |
|----------------|----------------------------|----------------|-------------|
| return         | RETURN                     | fits two       | RETURN      |
| cancel         | CANCELLATION (after dispatch) | CANCELLATION | CANCELLATION |
| legacy_restock | RETURN                     | CANCELLATION   | fits two    |
| no_restock     | GOODWILL (goods kept)      | CANCELLATION   | fits two    |

A cancelled order turns `no_restock`/`legacy_restock` lines into CANCELLATION; a refund
attached to a Shopify return turns them into RETURN (the goods come back even if they
are not restocked). A rule resolves a line that fits two when it names one of the two.

Shopify's explicit restock type is its own record of what happened and wins: a `return`
line is goods coming back even when the line says gift card or no shipping, and a deciding
rule that contradicts an explicit `return` or `cancel` leaves the refund UNCLASSIFIED
rather than overriding it. A returned line with no SKU is still a return: it raises
RETURN_NEEDS_REVIEW (a person names the item), never a money-only credit.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Any, Literal

from clarus_pipelines.connectors.clarus_model import GoodsOutStatus
from clarus_pipelines.domain.skus import clean_sku
from clarus_pipelines.policies import DEFAULT_REFUND_RULES, RefundRule, RefundRules, SkuCleaning




class RefundKind(StrEnum):
    RETURN = "RETURN"
    CANCELLATION = "CANCELLATION"
    GOODWILL = "GOODWILL"
    SHIPPING_ONLY = "SHIPPING_ONLY"
    EXCHANGE = "EXCHANGE"
    UNCLASSIFIED = "UNCLASSIFIED"


# Action codes: what follows a classification. The flow executes them in this vocabulary.
CLARUS_EXPECT_GOODS_IN = "CLARUS_EXPECT_GOODS_IN"
NETSUITE_RETURN_AUTHORISATION = "NETSUITE_RETURN_AUTHORISATION"
NETSUITE_RETURN_RECEIPT = "NETSUITE_RETURN_RECEIPT"
WATCH_RETURN_RECEIPT = "WATCH_RETURN_RECEIPT"
CLARUS_CANCEL_GOODS_OUT = "CLARUS_CANCEL_GOODS_OUT"
CLARUS_REDUCE_GOODS_OUT = "CLARUS_REDUCE_GOODS_OUT"
NETSUITE_CLOSE_LINES = "NETSUITE_CLOSE_LINES"
RAISE_CANCEL_AFTER_DISPATCH = "RAISE_CANCEL_AFTER_DISPATCH"
NETSUITE_CREDIT_MEMO = "NETSUITE_CREDIT_MEMO"
REPLACEMENT_ORDER = "REPLACEMENT_ORDER"
AWAIT_REPLACEMENT_ORDER = "AWAIT_REPLACEMENT_ORDER"
RAISE_REFUND_UNCLASSIFIED = "RAISE_REFUND_UNCLASSIFIED"
RAISE_RETURN_NEEDS_REVIEW = "RAISE_RETURN_NEEDS_REVIEW"

# What an explicit Shopify restock type allows a deciding rule to settle a line as: Shopify's
# own record wins over a merchant's pattern (a `return` line's goods are coming back).
EXPLICIT_RESTOCK_KINDS: dict[str, frozenset[str]] = {
    "return": frozenset({"RETURN", "EXCHANGE"}),
    "cancel": frozenset({"CANCELLATION"}),
}

CLARUS_STATUS_NAMES = {int(s): s.name for s in GoodsOutStatus}
_CLARUS_NOT_DISPATCHED = {int(s) for s in GoodsOutStatus if not s.is_dispatched}
_CLARUS_DISPATCHED = int(GoodsOutStatus.COMPLETED)
_CLARUS_PART_DISPATCHED = int(GoodsOutStatus.PART)

_CENT = Decimal("0.01")

Dispatch = Literal["dispatched", "not_dispatched", "partial", "unknown"]


# ------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class OrderContext:
    """What we know about the refund's order beyond the refund payload itself.

    `dispatched` maps Shopify line item id -> quantity dispatched (None: not known);
    `ordered` maps line item id -> quantity ordered; `wms_status` is the Clarus goods out
    status (1..8), which wins over Shopify because Clarus dispatches first.
    """

    order_id: str | None = None
    order_name: str | None = None
    cancelled: bool = False
    cancel_reason: str | None = None
    tags: tuple[str, ...] = ()
    wms_status: int | None = None
    dispatched: Mapping[str, int] | None = None
    ordered: Mapping[str, int] = field(default_factory=dict)
    line_skus: Mapping[str, str] = field(default_factory=dict)
    source: str = "Shopify order"


def shopify_id(value: Any) -> str | None:
    """A Shopify id as a string: ids arrive as JSON numbers (exact in Python) or strings."""
    if value is None or value == "":
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


def _tags(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(t.strip() for t in value.split(",") if t.strip())
    if isinstance(value, (list, tuple)):
        return tuple(str(t).strip() for t in value if str(t).strip())
    return ()


def order_context_from_shopify(order: Mapping[str, Any], *, wms_status: int | None = None,
                               source: str = "Shopify order") -> OrderContext:
    """Build the context from a Shopify order body (REST shape)."""
    lines = [li for li in order.get("line_items") or [] if isinstance(li, Mapping)]
    ordered = {shopify_id(li.get("id")): int(li.get("quantity") or 0) for li in lines if shopify_id(li.get("id"))}
    skus = {shopify_id(li.get("id")): li["sku"] for li in lines if shopify_id(li.get("id")) and isinstance(li.get("sku"), str)}
    dispatched: dict[str, int] | None
    fulfilments = order.get("fulfillments")
    if isinstance(fulfilments, list) and fulfilments:
        dispatched = {}
        for fulfilment in fulfilments:
            if not isinstance(fulfilment, Mapping) or fulfilment.get("status") != "success":
                continue  # pending/open are not dispatched; cancelled/error/failure never were
            for li in fulfilment.get("line_items") or []:
                line_id = shopify_id(li.get("id"))
                if line_id:
                    dispatched[line_id] = dispatched.get(line_id, 0) + int(li.get("quantity") or 0)
    elif lines and all("fulfillment_status" in li for li in lines):
        dispatched = {}
        for li in lines:
            status = li.get("fulfillment_status")
            if status == "fulfilled":
                dispatched[shopify_id(li.get("id"))] = int(li.get("quantity") or 0)
            elif status == "partial":
                dispatched = None  # quantities unknown from the line alone
                break
    else:
        dispatched = None
    return OrderContext(
        order_id=shopify_id(order.get("id")),
        order_name=order.get("name"),
        cancelled=bool(order.get("cancelled_at")),
        cancel_reason=order.get("cancel_reason"),
        tags=_tags(order.get("tags")),
        wms_status=wms_status,
        dispatched=dispatched,
        ordered=ordered,
        line_skus=skus,
        source=source,
    )


# ------------------------------------------------------------------------ outputs


@dataclass(frozen=True)
class RefundLine:
    """One refunded line and how it reads."""

    line_id: str | None
    sku: str | None
    quantity: int
    restock_type: str | None
    dispatch: Dispatch
    physical: bool
    kind: RefundKind | None  # None: the line fits more than one kind
    candidates: tuple[RefundKind, ...]
    amount: Decimal | None  # the line's subtotal: goods money in the order's price terms (tax not added again)
    title: str | None = None  # the line's product title, to name it for a person when it has no SKU
    sku_missing: bool = False  # the line's record is known and carries no SKU (not merely absent from the payload)

    def as_dict(self) -> dict[str, Any]:
        return {
            "line_id": self.line_id, "sku": self.sku, "quantity": self.quantity,
            "restock_type": self.restock_type, "dispatch": self.dispatch,
            "kind": self.kind.value if self.kind else None,
            "amount": money_text(self.amount),
        }


@dataclass(frozen=True)
class RefundClassification:
    refund_id: str | None
    order_id: str | None
    kind: RefundKind
    reasons: tuple[str, ...]
    actions: tuple[dict[str, Any], ...]
    lines: tuple[RefundLine, ...]
    refunded_amount: Decimal
    shipping_amount: Decimal
    currency: str | None
    processed_at: str | None
    exchange_lines: tuple[dict[str, Any], ...] = ()
    candidates: tuple[str, ...] = ()

    def explain(self) -> dict[str, Any]:
        """The JSON finance reads: kind, reasons, actions (plus which refund)."""
        return {
            "kind": self.kind.value,
            "reasons": list(self.reasons),
            "actions": [dict(a) for a in self.actions],
            "refund_id": self.refund_id,
            "order_id": self.order_id,
            "amount": money_text(self.refunded_amount),
            "currency": self.currency,
        }

    def action(self, code: str) -> dict[str, Any] | None:
        return next((a for a in self.actions if a["action"] == code), None)

    @property
    def goods_lines(self) -> list[dict[str, Any]]:
        """Physical lines as {line_id, sku, quantity} (what moves in Clarus/NetSuite)."""
        return [
            {"line_id": ln.line_id, "sku": ln.sku, "quantity": ln.quantity}
            for ln in self.lines if ln.physical and ln.quantity > 0
        ]


# ------------------------------------------------------------------------- helpers


def _money(value: Any) -> Decimal | None:
    """Shopify money as Decimal: strings, JSON numbers, or *_set money bags."""
    if value is None or value == "":
        return None
    if isinstance(value, Mapping):
        bag = value.get("shop_money") or value.get("presentment_money")
        return _money(bag.get("amount")) if isinstance(bag, Mapping) else None
    try:
        return Decimal(str(value)).quantize(_CENT)
    except (InvalidOperation, ValueError):
        return None


def money_text(value: Decimal | None) -> str | None:
    return None if value is None else f"{value.quantize(_CENT)}"


def _first_money(item: Mapping[str, Any], *keys: str) -> Decimal | None:
    for key in keys:
        amount = _money(item.get(key))
        if amount is not None:
            return amount
    return None


def _currency(refund: Mapping[str, Any]) -> str | None:
    for tx in refund.get("transactions") or []:
        if isinstance(tx, Mapping) and tx.get("currency"):
            return str(tx["currency"])
    for key in ("total_duties_set", "total_additional_fees_set"):
        bag = (refund.get(key) or {}).get("shop_money") if isinstance(refund.get(key), Mapping) else None
        if isinstance(bag, Mapping) and bag.get("currency_code"):
            return str(bag["currency_code"])
    return refund.get("currency")


def _restock_type(refund: Mapping[str, Any], line: Mapping[str, Any]) -> str | None:
    value = line.get("restock_type")
    if isinstance(value, str) and value.strip():
        return value.strip().lower()
    if line.get("restock") is True or refund.get("restock") is True:
        return "legacy_restock"
    if line.get("restock") is False or refund.get("restock") is False:
        return "no_restock"
    return None


def _dispatch_of(line_id: str | None, quantity: int, line_item: Mapping[str, Any] | None,
                 ctx: OrderContext | None) -> tuple[Dispatch, str]:
    if ctx is not None and ctx.wms_status is not None:
        name = CLARUS_STATUS_NAMES.get(ctx.wms_status, str(ctx.wms_status))
        if ctx.wms_status == _CLARUS_DISPATCHED:
            return "dispatched", f"Clarus goods out is {name} (dispatched)"
        if ctx.wms_status in _CLARUS_NOT_DISPATCHED:
            return "not_dispatched", f"Clarus goods out is {name} (not dispatched)"
        if ctx.wms_status == _CLARUS_PART_DISPATCHED and ctx.dispatched is None:
            return "partial", f"Clarus goods out is {name} (part dispatched)"
    if ctx is not None and ctx.dispatched is not None and line_id is not None:
        done = ctx.dispatched.get(line_id, 0)
        ordered = ctx.ordered.get(line_id) or (int(line_item.get("quantity") or 0) if line_item else 0)
        if done <= 0:
            return "not_dispatched", f"no dispatch of it in the {ctx.source}"
        if ordered and done >= ordered:
            return "dispatched", f"{done} of {ordered} dispatched per the {ctx.source}"
        return "partial", f"{done} of {ordered or '?'} dispatched per the {ctx.source}"
    if isinstance(line_item, Mapping) and "fulfillment_status" in line_item:
        status = line_item.get("fulfillment_status")
        if status == "fulfilled":
            return "dispatched", "line fulfillment_status 'fulfilled'"
        if status == "partial":
            return "partial", "line fulfillment_status 'partial'"
        return "not_dispatched", f"line fulfillment_status {json.dumps(status)} (unfulfilled)"
    return "unknown", "nothing says whether it was dispatched"


def _line_reading(restock: str | None, dispatch: Dispatch, *, cancelled: bool,
                  on_return: bool) -> tuple[tuple[RefundKind, ...], str]:
    """Candidate kinds for one physical line, and why."""
    R, C, G = RefundKind.RETURN, RefundKind.CANCELLATION, RefundKind.GOODWILL
    if restock == "return":
        if dispatch == "not_dispatched":
            return (R, C), "restocked as a return, yet it was never dispatched"
        return (R,), "restocked as a return: goods are coming back"
    if restock == "cancel":
        if dispatch == "dispatched":
            return (C,), "restocked as a cancellation, but it was already dispatched"
        return (C,), "restocked as a cancellation of an unshipped item"
    if restock in ("legacy_restock", "no_restock"):
        shape = "restocked (legacy restock)" if restock == "legacy_restock" else "not restocked"
        if on_return:
            return (R,), f"{shape}, and the refund belongs to a Shopify return: goods are coming back"
        if cancelled:
            return (C,), f"{shape}, and the order is cancelled"
        if dispatch == "not_dispatched":
            return (C,), f"{shape} before dispatch: removed from the order"
        if dispatch == "dispatched":
            if restock == "legacy_restock":
                return (R,), f"{shape} after dispatch: goods are coming back"
            return (G,), f"{shape} after dispatch: the customer keeps the goods"
        other = R if restock == "legacy_restock" else G
        return (other, C), f"{shape}, and it is not clear whether it was dispatched"
    if restock is None:
        return (R, C, G), "no restock type given"
    return (R, C, G), f"unknown restock type {restock!r}"


def _rule_values(refund: Mapping[str, Any], order: Mapping[str, Any] | None,
                 ctx: OrderContext | None) -> dict[str, list[str]]:
    tags = list(ctx.tags) if ctx else []
    if order is not None and not tags:
        tags = list(_tags(order.get("tags")))
    cancel_reason = (ctx.cancel_reason if ctx else None) or (order or {}).get("cancel_reason")
    ret = refund.get("return") if isinstance(refund.get("return"), Mapping) else {}
    return_reasons = [str(ret["reason"])] if ret.get("reason") else []
    for item in ret.get("return_line_items") or []:
        if isinstance(item, Mapping):
            return_reasons += [str(item[k]) for k in ("return_reason", "return_reason_note", "reason") if item.get(k)]
    properties = []
    for rli in refund.get("refund_line_items") or []:
        li = rli.get("line_item") if isinstance(rli, Mapping) else None
        for prop in (li or {}).get("properties") or []:
            if isinstance(prop, Mapping) and prop.get("name") is not None:
                properties.append(f"{prop.get('name')}={prop.get('value')}")
    return {
        "note": [str(refund["note"])] if refund.get("note") else [],
        "order_tags": tags,
        "cancel_reason": [str(cancel_reason)] if cancel_reason else [],
        "adjustment_reason": [
            str(a["reason"]) for a in refund.get("order_adjustments") or [] if isinstance(a, Mapping) and a.get("reason")
        ],
        "return_reason": return_reasons,
        "transaction_gateway": [
            str(t["gateway"]) for t in refund.get("transactions") or [] if isinstance(t, Mapping) and t.get("gateway")
        ],
        "line_property": properties,
    }


def _exchange_lines(refund: Mapping[str, Any], sku_rule: SkuCleaning | None) -> list[dict[str, Any]]:
    """Replacement items when the refund's Shopify return carries exchange line items."""
    ret = refund.get("return")
    if not isinstance(ret, Mapping):
        return []
    found = []
    for item in ret.get("exchange_line_items") or []:
        if not isinstance(item, Mapping):
            continue
        li = item.get("line_item") if isinstance(item.get("line_item"), Mapping) else item
        sku = _clean(li.get("sku"), sku_rule)
        quantity = int(item.get("quantity") or li.get("quantity") or 0)
        if quantity > 0:
            found.append({"sku": sku, "quantity": quantity, "variant_id": shopify_id(li.get("variant_id"))})
    return found


def _clean(sku: Any, sku_rule: SkuCleaning | None) -> str | None:
    if not isinstance(sku, str):
        return None
    if sku_rule is None:
        return sku.strip() or None

    return clean_sku(sku, sku_rule)


# ------------------------------------------------------------------ classification


def classify_refund(
    refund: Mapping[str, Any],
    *,
    order: Mapping[str, Any] | None = None,
    context: OrderContext | None = None,
    rules: RefundRules | Sequence[RefundRule] | None = None,
    return_receipt_days: int = 14,
    sku_rule: SkuCleaning | None = None,
) -> RefundClassification:
    """Classify one Shopify refund (REST shape: webhook body, GET, or POST response).

    `order` is the Shopify order body when known (fulfilments, cancellation, tags);
    `context` is what our state knows (Clarus status first) and wins over `order`.
    """
    if isinstance(refund.get("refund"), Mapping):
        refund = refund["refund"]
    rule_list = tuple(rules.rules if isinstance(rules, RefundRules) else rules if rules is not None else DEFAULT_REFUND_RULES)
    ctx = context or (order_context_from_shopify(order) if order is not None else None)
    refund_id = shopify_id(refund.get("id"))
    order_id = shopify_id(refund.get("order_id")) or (ctx.order_id if ctx else None)
    currency = _currency(refund) or (order or {}).get("currency")
    reasons: list[str] = []
    cancelled = bool(ctx and ctx.cancelled)
    ret = refund.get("return")
    on_return = isinstance(ret, Mapping) and bool(ret.get("id") or ret.get("admin_graphql_api_id"))
    if cancelled:
        reasons.append(
            f"order is cancelled in Shopify (cancel_reason {ctx.cancel_reason!r})" if ctx.cancel_reason
            else "order is cancelled in Shopify"
        )
    if on_return:
        reasons.append(f"refund belongs to Shopify return {ret.get('admin_graphql_api_id') or ret.get('id')}")
    if ctx is not None and ctx.wms_status is not None:
        reasons.append(f"Clarus goods out status {CLARUS_STATUS_NAMES.get(ctx.wms_status, ctx.wms_status)}")

    # --- money actually refunded
    refunded = Decimal("0.00")
    suggested = Decimal("0.00")
    for tx in refund.get("transactions") or []:
        if not isinstance(tx, Mapping):
            continue
        amount = _money(tx.get("amount")) or Decimal("0.00")
        kind, status = tx.get("kind"), tx.get("status")
        if kind == "refund" and status in (None, "success"):
            refunded += amount
        elif kind == "suggested_refund":
            suggested += amount
        elif kind == "refund":
            reasons.append(f"refund transaction {shopify_id(tx.get('id'))} {status}: {amount} not counted")
    if refunded == 0 and suggested > 0:
        reasons.append(f"payload is a refund calculation: {suggested} suggested, no money moved yet")
        refunded = suggested

    # --- shipping and discrepancies
    shipping = Decimal("0.00")
    shipping_seen = False
    shipping_lines = [s for s in refund.get("refund_shipping_lines") or [] if isinstance(s, Mapping)]
    adjustments = [a for a in refund.get("order_adjustments") or [] if isinstance(a, Mapping)]
    if shipping_lines:
        for s in shipping_lines:
            shipping += (_first_money(s, "subtotal_amount_set", "subtotal_amount") or Decimal("0.00"))
            shipping += (_first_money(s, "tax_amount_set", "tax_amount") or Decimal("0.00"))
        shipping_seen = shipping != 0
    else:
        for adj in adjustments:
            if adj.get("kind") == "shipping_refund":
                shipping -= (_first_money(adj, "amount_set", "amount") or Decimal("0.00"))
                shipping -= (_first_money(adj, "tax_amount_set", "tax_amount") or Decimal("0.00"))
        shipping_seen = shipping != 0
    requested_shipping = refund.get("shipping") if isinstance(refund.get("shipping"), Mapping) else None
    shipping_unknown_amount = False
    if not shipping_seen and requested_shipping:
        amount = _money(requested_shipping.get("amount"))
        if amount:
            shipping, shipping_seen = amount, True
        elif requested_shipping.get("full_refund") is True and amount is None:
            shipping_seen = shipping_unknown_amount = True
    if shipping_seen:
        reasons.append(
            "shipping refunded in full (amount not in the payload)" if shipping_unknown_amount
            else f"shipping refunded: {shipping}"
        )
    discrepancy = sum(
        ((_first_money(a, "amount_set", "amount") or Decimal("0.00")) for a in adjustments if a.get("kind") == "refund_discrepancy"),
        Decimal("0.00"),
    )
    if discrepancy:
        reasons.append(f"refund discrepancy adjustment of {discrepancy} (money refunded differs from items + shipping)")

    # --- lines
    lines: list[RefundLine] = []
    for rli in refund.get("refund_line_items") or []:
        if not isinstance(rli, Mapping):
            continue
        quantity = int(rli.get("quantity") or 0)
        li = rli.get("line_item") if isinstance(rli.get("line_item"), Mapping) else None
        line_id = shopify_id(rli.get("line_item_id")) or (shopify_id(li.get("id")) if li else None)
        raw_sku = (li or {}).get("sku")
        if raw_sku is None and ctx is not None and line_id is not None:
            raw_sku = ctx.line_skus.get(line_id)
        sku = _clean(raw_sku, sku_rule)
        restock = _restock_type(refund, rli)
        # The goods' money in the order's own price terms: Shopify's line subtotal (after
        # discounts) already includes the tax when the shop's prices do, and excludes it when
        # they do not, like the line prices the reconciliation compares it with. Adding
        # `total_tax` would count a tax-inclusive shop's VAT twice.
        amount = _first_money(rli, "subtotal_set", "subtotal")
        label = f"line {line_id} ({sku or 'no SKU'} x{quantity})"
        title = str((li or {}).get("title") or (li or {}).get("name") or "") or None
        money_only_item = bool(li and (li.get("gift_card") is True or li.get("requires_shipping") is False))
        # Shopify's `return` restock type says the goods are coming back: that wins over the
        # line's own flags, so the warehouse is told and finance does not post money only.
        physical = restock == "return" or not money_only_item
        if quantity <= 0:
            reasons.append(f"{label}: quantity 0, ignored")
            continue
        if not physical:
            reasons.append(f"{label}: gift card or non-shipping item, money only")
            lines.append(RefundLine(line_id, sku, quantity, restock, "unknown", False, None, (), amount, title))
            continue
        dispatch, evidence = _dispatch_of(line_id, quantity, li, ctx)
        candidates, why = _line_reading(restock, dispatch, cancelled=cancelled, on_return=on_return)
        restock_text = f"restock_type {restock!r}" if restock else "no restock type"
        if money_only_item:
            why += " (restocked as a return although Shopify marks it gift card or not shipping: treated as goods)"
        sku_missing = sku is None and (li is not None or ctx is not None)
        if sku_missing:
            why += "; it has no SKU, so a person must name it for the warehouse"
        verdict = candidates[0].value if len(candidates) == 1 else " or ".join(k.value for k in candidates)
        reasons.append(f"{label}: {restock_text}; {evidence}; {why} -> {verdict}")
        lines.append(RefundLine(
            line_id, sku, quantity, restock, dispatch, True,
            candidates[0] if len(candidates) == 1 else None, candidates, amount, title, sku_missing,
        ))
    physical_lines = [ln for ln in lines if ln.physical]
    money_only_lines = [ln for ln in lines if not ln.physical]

    # --- structural kinds
    structural: set[RefundKind] = set()
    if physical_lines:
        pass  # line kinds are resolved below, once rules are known
    elif shipping_seen:
        structural.add(RefundKind.SHIPPING_ONLY)
        extra = refunded - shipping if not shipping_unknown_amount else Decimal("0.00")
        if extra > _CENT or discrepancy or money_only_lines:
            structural.add(RefundKind.GOODWILL)
            reasons.append(f"more refunded than shipping ({refunded} vs {shipping}): part of it is goodwill")
        else:
            reasons.append("no items refunded, only shipping")
    elif refunded > 0 or discrepancy or money_only_lines:
        structural.add(RefundKind.GOODWILL)
        reasons.append(f"no items and no shipping refunded, money only ({refunded})")
    else:
        reasons.append("no items, no shipping and no money refunded")

    exchange_lines = _exchange_lines(refund, sku_rule)
    if exchange_lines:
        reasons.append(
            "Shopify return carries exchange items: "
            + ", ".join(f"{e['sku'] or e['variant_id']} x{e['quantity']}" for e in exchange_lines)
        )

    # --- rules
    values = _rule_values(refund, order, ctx)
    matched: list[RefundRule] = []
    for rule in rule_list:
        regex = re.compile(rule.pattern, re.IGNORECASE)
        hit = next((v for v in values[rule.on] if regex.search(v)), None)
        if hit is not None:
            matched.append(rule)
            reasons.append(f"rule '{rule.label}' matched {rule.on} {hit!r} -> {rule.kind}")
    decisive = {RefundKind(r.kind) for r in matched if r.decides}
    suggested_kinds = {RefundKind(r.kind) for r in matched if not r.decides}

    kind: RefundKind
    candidates_seen: set[RefundKind] = set()
    if decisive:
        if len(decisive) > 1:
            kind = RefundKind.UNCLASSIFIED
            reasons.append("deciding rules disagree: " + ", ".join(sorted(k.value for k in decisive)))
        else:
            kind = next(iter(decisive))
            contradicted = [
                ln for ln in physical_lines
                if ln.restock_type in EXPLICIT_RESTOCK_KINDS and kind.value not in EXPLICIT_RESTOCK_KINDS[ln.restock_type]
            ]
            if kind in (RefundKind.RETURN, RefundKind.EXCHANGE, RefundKind.CANCELLATION) and not physical_lines:
                reasons.append(f"a rule decides {kind.value} but the refund has no items to act on")
                kind = RefundKind.UNCLASSIFIED
            elif contradicted:
                reasons.append(
                    f"a rule decides {kind.value} but Shopify restocks "
                    + ", ".join(f"line {ln.line_id} as {ln.restock_type!r}" for ln in contradicted)
                    + ": Shopify's record is not overridden by a rule"
                )
                candidates_seen = {kind} | {k for ln in contradicted for k in (ln.kind,) if k}
                kind = RefundKind.UNCLASSIFIED
            else:
                reasons.append(f"a deciding rule settles it as {kind.value}")
                lines = [replace(ln, kind=kind if ln.physical else None) for ln in lines]
        candidates_final = candidates_seen if kind == RefundKind.UNCLASSIFIED and candidates_seen else {kind}
    else:
        resolved: list[RefundLine] = []
        for ln in lines:
            if ln.physical and ln.kind is None:
                named = {RefundKind.RETURN if k == RefundKind.EXCHANGE else k for k in suggested_kinds}
                fitting = named & set(ln.candidates)
                if len(fitting) == 1:
                    chosen = next(iter(fitting))
                    reasons.append(f"line {ln.line_id}: a rule settles it as {chosen.value}")
                    ln = replace(ln, kind=chosen)
            resolved.append(ln)
        lines = resolved
        for ln in lines:
            if ln.physical:
                structural.update({ln.kind} if ln.kind else set(ln.candidates))
        goods_back = RefundKind.RETURN in structural and not any(
            ln.physical and ln.kind is None for ln in lines
        )
        if exchange_lines:
            structural.add(RefundKind.EXCHANGE)
        kinds = structural | suggested_kinds
        if RefundKind.EXCHANGE in kinds:
            if goods_back:
                kinds.discard(RefundKind.RETURN)
            elif RefundKind.RETURN not in structural:
                reasons.append("an exchange is named but no goods are coming back")
        candidates_final = kinds
        if len(kinds) == 1:
            kind = next(iter(kinds))
        else:
            kind = RefundKind.UNCLASSIFIED
            if kinds:
                reasons.append("fits more than one kind: " + ", ".join(sorted(k.value for k in kinds)))
            else:
                reasons.append("fits no kind")

    result_lines = tuple(lines)
    actions = _plan(kind, result_lines, refunded=refunded, shipping=shipping, shipping_unknown=shipping_unknown_amount,
                    currency=currency, cancelled=cancelled, exchange_lines=exchange_lines,
                    return_receipt_days=return_receipt_days, candidates=candidates_final)
    return RefundClassification(
        refund_id=refund_id,
        order_id=order_id,
        kind=kind,
        reasons=tuple(reasons),
        actions=tuple(actions),
        lines=result_lines,
        refunded_amount=refunded,
        shipping_amount=shipping,
        currency=currency,
        processed_at=refund.get("processed_at") or refund.get("created_at"),
        exchange_lines=tuple(exchange_lines),
        candidates=tuple(sorted(k.value for k in candidates_final)),
    )


def _plan(kind: RefundKind, lines: Sequence[RefundLine], *, refunded: Decimal, shipping: Decimal,
          shipping_unknown: bool, currency: str | None, cancelled: bool, exchange_lines: Sequence[dict[str, Any]],
          return_receipt_days: int, candidates: Iterable[RefundKind]) -> list[dict[str, Any]]:
    goods = [
        {"line_id": ln.line_id, "sku": ln.sku, "quantity": ln.quantity}
        for ln in lines if ln.physical and ln.quantity > 0
    ]
    money = money_text(refunded)
    actions: list[dict[str, Any]] = []
    if kind in (RefundKind.RETURN, RefundKind.EXCHANGE):
        unnamed = [
            {"line_id": ln.line_id, "title": ln.title, "quantity": ln.quantity, "restock_type": ln.restock_type}
            for ln in lines if ln.physical and ln.quantity > 0 and ln.sku_missing
        ]
        missing_ids = {u["line_id"] for u in unnamed}
        goods = [g for g in goods if g["sku"] or g["line_id"] not in missing_ids]
        if unnamed:
            actions.append({
                "action": RAISE_RETURN_NEEDS_REVIEW, "system": "pipeline", "lines": unnamed,
                "exception": "RETURN_NEEDS_REVIEW",
                "description": "goods are coming back on a line with no SKU: a person names the item for the "
                               "warehouse and finance (never money only)",
            })
        if goods:
            actions += [
                {"action": CLARUS_EXPECT_GOODS_IN, "system": "clarus", "lines": goods,
                 "description": "create an expected goods-in receipt for the returned SKUs and quantities"},
                {"action": NETSUITE_RETURN_AUTHORISATION, "system": "netsuite", "lines": goods, "amount": money,
                 "currency": currency, "description": "create a return authorisation for the returned items"},
                {"action": NETSUITE_RETURN_RECEIPT, "system": "netsuite", "lines": goods,
                 "description": "receive the returned goods against the return authorisation once Clarus has booked them all in"},
                {"action": WATCH_RETURN_RECEIPT, "system": "pipeline", "due_days": return_receipt_days,
                 "exception": "RETURN_NOT_RECEIVED",
                 "description": f"raise RETURN_NOT_RECEIVED if Clarus has not received the goods within {return_receipt_days} days"},
            ]
        if kind == RefundKind.EXCHANGE:
            if exchange_lines:
                actions.append({"action": REPLACEMENT_ORDER, "system": "pipeline", "lines": list(exchange_lines),
                                "description": "send the exchange items out as a new order"})
            else:
                actions.append({"action": AWAIT_REPLACEMENT_ORDER, "system": "shopify",
                                "description": "the replacement comes as a new Shopify order; it follows the normal order flow"})
    elif kind == RefundKind.CANCELLATION:
        moving = [ln for ln in lines if ln.physical and ln.quantity > 0]
        shipped = [g for g, ln in zip(goods, moving) if ln.dispatch == "dispatched"]
        unshipped = [g for g, ln in zip(goods, moving) if ln.dispatch != "dispatched"]
        if unshipped:
            if cancelled:
                actions.append({"action": CLARUS_CANCEL_GOODS_OUT, "system": "clarus", "lines": unshipped,
                                "description": "cancel the goods out in Clarus if still possible, else CANCEL_AFTER_DISPATCH"})
            else:
                actions.append({"action": CLARUS_REDUCE_GOODS_OUT, "system": "clarus", "lines": unshipped,
                                "description": "reduce (or cancel, when nothing is left) the goods out in Clarus if still possible, else CANCEL_AFTER_DISPATCH"})
            actions.append({"action": NETSUITE_CLOSE_LINES, "system": "netsuite", "lines": unshipped,
                            "description": "close the cancelled lines on the NetSuite sales order"})
        if shipped:
            actions.append({"action": RAISE_CANCEL_AFTER_DISPATCH, "system": "pipeline", "lines": shipped,
                            "exception": "CANCEL_AFTER_DISPATCH",
                            "description": "already dispatched: CX recovers the goods, finance checks the refund"})
    elif kind == RefundKind.GOODWILL:
        actions.append({"action": NETSUITE_CREDIT_MEMO, "system": "netsuite", "amount": money, "currency": currency,
                        "memo": "goodwill", "description": "post a credit memo for the money only; no stock moves"})
    elif kind == RefundKind.SHIPPING_ONLY:
        amount = money if shipping_unknown or refunded > 0 else money_text(shipping)
        actions.append({"action": NETSUITE_CREDIT_MEMO, "system": "netsuite", "amount": amount, "currency": currency,
                        "memo": "shipping refund", "description": "post a credit for the shipping refund only; no stock moves"})
    else:
        actions.append({"action": RAISE_REFUND_UNCLASSIFIED, "system": "pipeline", "exception": "REFUND_UNCLASSIFIED",
                        "candidates": sorted(k.value for k in candidates),
                        "description": "no stock or finance posting; finance posts it by hand and adds a rule"})
    return actions


# ------------------------------------------------------------------ payload shapes


def iter_refunds(document: Any) -> list[tuple[Mapping[str, Any], Mapping[str, Any] | None]]:
    """(refund, order or None) pairs in a document of any Shopify shape.

    Accepts `{"refund": ...}`, `{"refunds": [...]}`, `{"order": {..., "refunds": [...]}}`,
    a bare order with `refunds`, a bare refund, or a JSON list of refunds.
    """
    if isinstance(document, list):
        return [pair for item in document for pair in iter_refunds(item)]
    if not isinstance(document, Mapping):
        return []
    if isinstance(document.get("refund"), Mapping):
        return [(document["refund"], None)]
    if isinstance(document.get("refunds"), list) and "line_items" not in document:
        return [(r, None) for r in document["refunds"] if isinstance(r, Mapping)]
    order = document.get("order") if isinstance(document.get("order"), Mapping) else (
        document if "line_items" in document else None
    )
    if order is not None:
        return [(r, order) for r in order.get("refunds") or [] if isinstance(r, Mapping)]
    if any(k in document for k in ("refund_line_items", "transactions", "order_adjustments", "restock")):
        return [(document, None)]
    return []


def return_due_at(processed_at: datetime, days: int) -> datetime:
    """When a return must have been received in Clarus (naive UTC in, naive UTC out)."""
    return processed_at + timedelta(days=days)


def parse_shopify_time(value: Any) -> datetime | None:
    """A Shopify timestamp as naive UTC (how the state database stores times)."""
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(timezone.utc).replace(tzinfo=None)
    return parsed
