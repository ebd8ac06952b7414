"""Seeded traffic for the sandbox: realistic Shopify orders with the seed's failure cases.

`TrafficGenerator.generate_orders(n)` places orders in the Shopify sandbox, each either
clean or carrying exactly one failure case drawn with the `TrafficProfile` shares:

| case | how it is made | what the integration should do |
| --- | --- | --- |
| missing_shipping_address | no shipping address | hold (ORDER_INCOMPLETE); some are completed later |
| missing_postcode_or_country | postcode or country code blank | hold (ORDER_INCOMPLETE); some completed later |
| unmapped_shipping_line | a shipping line in no ship-method rule | hold (SHIP_METHOD_UNMAPPED) |
| sku_leading_zeros_stripped | a variant whose SKU lost its zeros ("456" for "000456") | hold (SKU_UNKNOWN) and flag SKU_LEADING_ZEROS_LOST |
| sku_unknown | a variant whose SKU is not in the item master | hold (SKU_UNKNOWN), flag SKU_NOT_IN_MASTER |
| edit_after_release | edited once the goods out exists | amend/replace while Clarus allows, else ORDER_EDIT_NEEDS_REVIEW |
| cancel_before_dispatch | cancelled (with refund) once released, before dispatch | cancel the goods out |
| cancel_after_dispatch | cancelled once Clarus dispatched | CANCEL_AFTER_DISPATCH (Shopify refuses once fulfilled) |
| refund_return | refund with restock_type "return" after fulfilment | expect a return in Clarus (RETURN_NOT_RECEIVED if never) |
| refund_cancellation | refund of an unshipped unit, restock_type "cancel" | reduce the goods out, close the NetSuite line |
| refund_goodwill | money only, no line items (refund_discrepancy) | credit memo only, no stock movement |
| refund_shipping_only | shipping refund (refund_shipping_lines, shipping_refund) | credit memo for shipping only |
| dispatch_before_erp_commit | NetSuite commits this order long after Clarus dispatches | hold the dispatch until committed (DISPATCH_AWAITING_ERP if too long) |
| fulfilled_outside_wms | once released, the merchant marks it fulfilled by hand in Shopify admin (`fulfillments/create`) | FULFILLED_OUTSIDE_WMS; the policy holds or cancels the goods out |

Missing tracking is a warehouse fault: the profile's `missing_tracking` share is the
Clarus sandbox's `missing_tracking_rate` (the composed server wires it), and
`observed_cases()` reports which orders it hit.

Cases that need the order to have moved on (released to Clarus, dispatched, fulfilled in
Shopify) are follow-ups, applied by `apply_followups()` once their stage is reached:
released = Clarus has the goods out (or, without Clarus, NetSuite has the sales order);
dispatched = Clarus completed it (or NetSuite has an item fulfilment); fulfilled =
Shopify has a fulfilment. `run(rate_per_min, stop_event)` does both on a timer for the
demo. Everything drawn comes from one `random.Random(seed)`: the same seed against fresh
sandboxes gives the same orders, cases and follow-ups.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clarus_pipelines.sandbox.catalog_data import CatalogItem
from clarus_pipelines.sandbox.netsuite import COMMITTED_STATUSES, NetSuiteSandbox
from clarus_pipelines.sandbox.shopify import ShopifyError, ShopifySandbox
from clarus_pipelines.settings import SANDBOX_POLICIES, load_policies
from clarus_pipelines.policies import Policies, ShipMethodRule

if TYPE_CHECKING:
    from clarus_pipelines.sandbox.clarus import ClarusSandbox

log = logging.getLogger(__name__)

CLEAN = "clean"
CASES = (
    "missing_shipping_address",
    "missing_postcode_or_country",
    "unmapped_shipping_line",
    "sku_leading_zeros_stripped",
    "sku_unknown",
    "edit_after_release",
    "cancel_before_dispatch",
    "cancel_after_dispatch",
    "refund_return",
    "refund_cancellation",
    "refund_goodwill",
    "refund_shipping_only",
    "dispatch_before_erp_commit",
    "fulfilled_outside_wms",
)
OBSERVED_CASES = ("missing_tracking",)

# exception codes the integration must raise for the case / may raise depending on timing
EXPECTED_EXCEPTIONS: dict[str, tuple[str, ...]] = {
    CLEAN: (),
    "missing_shipping_address": ("ORDER_INCOMPLETE",),
    "missing_postcode_or_country": ("ORDER_INCOMPLETE",),
    "unmapped_shipping_line": ("SHIP_METHOD_UNMAPPED",),
    "sku_leading_zeros_stripped": ("SKU_UNKNOWN", "SKU_LEADING_ZEROS_LOST"),
    "sku_unknown": ("SKU_UNKNOWN", "SKU_NOT_IN_MASTER"),
    "edit_after_release": (),
    "cancel_before_dispatch": (),
    "cancel_after_dispatch": ("CANCEL_AFTER_DISPATCH",),
    "refund_return": (),
    "refund_cancellation": (),
    "refund_goodwill": (),
    "refund_shipping_only": (),
    "dispatch_before_erp_commit": (),
    "fulfilled_outside_wms": ("FULFILLED_OUTSIDE_WMS",),
    "missing_tracking": ("TRACKING_MISSING",),
}
POSSIBLE_EXCEPTIONS: dict[str, tuple[str, ...]] = {
    "edit_after_release": ("ORDER_EDIT_NEEDS_REVIEW",),
    "refund_return": ("RETURN_NOT_RECEIVED",),
    "dispatch_before_erp_commit": ("DISPATCH_AWAITING_ERP",),
}

_UNMAPPED_SHIPPING = (
    {"code": "click-collect", "title": "Click & Collect", "price": "0.00"},
    {"code": "SAT-DEL", "title": "Saturday Delivery", "price": "12.50"},
    {"code": "courier-pro", "title": "Courier Pro", "price": "7.45"},
)
_SHIPPING_PRICES = {"standard": "3.95", "express": "6.95", "next-day": "9.95", "international": "14.95"}
_FIRST = ("Olivia", "Amelia", "Isla", "Ava", "Mia", "Noah", "Oliver", "George", "Arthur", "Leo", "Freya", "Harry",
          "Priya", "Mohammed", "Chloe", "Jack", "Sophie", "Ethan", "Grace", "Aisha")
_LAST = ("Smith", "Jones", "Taylor", "Brown", "Williams", "Wilson", "Johnson", "Davies", "Patel", "Robinson",
         "Wright", "Thompson", "Evans", "Walker", "White", "Roberts", "Green", "Hall", "Khan", "Clarke")
_STREETS = ("High Street", "Station Road", "Church Lane", "Victoria Road", "Green Lane", "Manor Road", "Park Avenue",
            "Mill Lane", "Queens Road", "The Crescent")
_UK = (("London", "E1 6AN", "England"), ("Manchester", "M1 1AE", "England"), ("Leeds", "LS1 4AP", "England"),
       ("Bristol", "BS1 4DJ", "England"), ("Glasgow", "G1 1XQ", "Scotland"), ("Cardiff", "CF10 1EP", "Wales"),
       ("Edinburgh", "EH1 1YZ", "Scotland"), ("Birmingham", "B1 1BB", "England"), ("Norwich", "NR1 3JU", "England"),
       ("Belfast", "BT1 5GS", "Northern Ireland"))
_ABROAD = (("Dublin", "D02 X285", "Ireland", "IE"), ("Paris", "75011", "France", "FR"), ("Berlin", "10115", "Germany", "DE"),
           ("Amsterdam", "1012 AB", "Netherlands", "NL"), ("New York", "10001", "United States", "US"))


@dataclass(frozen=True)
class TrafficProfile:
    """Order rate and the share of orders carrying each failure case (the rest are clean)."""

    orders_per_minute: float = 30.0
    missing_shipping_address: float = 0.03
    missing_postcode_or_country: float = 0.03
    unmapped_shipping_line: float = 0.03
    sku_leading_zeros_stripped: float = 0.02
    sku_unknown: float = 0.02
    edit_after_release: float = 0.04
    cancel_before_dispatch: float = 0.03
    cancel_after_dispatch: float = 0.02
    refund_return: float = 0.04
    refund_cancellation: float = 0.02
    refund_goodwill: float = 0.02
    refund_shipping_only: float = 0.02
    dispatch_before_erp_commit: float = 0.03
    fulfilled_outside_wms: float = 0.01
    missing_tracking: float = 0.02  # applied by the Clarus sandbox per dispatch (see module docstring)
    held_fixed_share: float = 0.5  # incomplete orders CX completes later (the hold is released)
    fix_after_s: tuple[float, float] = (60.0, 300.0)
    followup_after_s: tuple[float, float] = (0.0, 30.0)  # extra wait once a follow-up's stage is reached
    slow_commit_s: float = 900.0  # NetSuite commit delay for dispatch_before_erp_commit orders
    lines_per_order: tuple[int, int] = (1, 3)
    quantity_per_line: tuple[int, int] = (1, 3)
    international_share: float = 0.08

    def __post_init__(self) -> None:
        shares = self.shares()
        bad = {k: v for k, v in shares.items() if not 0.0 <= v <= 1.0}
        if bad or sum(shares.values()) > 1.0 + 1e-9:
            raise ValueError(f"case shares must each be in [0, 1] and sum to at most 1; got {shares}")
        if self.orders_per_minute < 0 or not 0 <= self.missing_tracking <= 1:
            raise ValueError("orders_per_minute must be >= 0 and missing_tracking in [0, 1]")

    def shares(self) -> dict[str, float]:
        return {case: float(getattr(self, case)) for case in CASES}

    @classmethod
    def only(cls, **shares: float) -> "TrafficProfile":
        """A profile with just the given case shares (every other case 0)."""
        zero = {case: 0.0 for case in CASES}
        return cls(**{**zero, "missing_tracking": 0.0, **shares})

    @classmethod
    def every_case_equally(cls, **overrides: Any) -> "TrafficProfile":
        """Each case 1/(cases + 1) of orders, the same share clean: for tests and rehearsals."""
        share = 1.0 / (len(CASES) + 1)
        return cls(**{**{case: share for case in CASES}, **overrides})

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class FollowUp:
    action: str  # fix_address | edit | cancel | refund_return | refund_cancellation | refund_goodwill | refund_shipping | fulfil_by_hand
    stage: str  # placed | released | dispatched | fulfilled
    wait_s: float  # after the stage is reached (for "placed": after the order was placed)
    ready_at: float | None = None
    done_at: float | None = None
    outcome: str | None = None  # "done", "refused: ...", "failed: ..."
    stages_seen: tuple[str, ...] = ()  # the order's stages when the action ran

    @property
    def pending(self) -> bool:
        return self.done_at is None


@dataclass
class GeneratedOrder:
    order_id: int
    name: str
    case: str
    skus: tuple[str, ...]
    shipping_code: str | None
    created_at: float
    followups: list[FollowUp] = field(default_factory=list)
    observed: list[str] = field(default_factory=list)  # cases seen later, e.g. missing_tracking
    full_address: dict[str, Any] | None = field(default=None, repr=False)  # what a held order is completed with

    @property
    def expected_exceptions(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(EXPECTED_EXCEPTIONS[self.case] + sum((EXPECTED_EXCEPTIONS[c] for c in self.observed), ())))

    @property
    def possible_exceptions(self) -> tuple[str, ...]:
        return POSSIBLE_EXCEPTIONS.get(self.case, ())

    def to_dict(self) -> dict[str, Any]:
        return {
            "order_id": str(self.order_id), "name": self.name, "case": self.case, "skus": list(self.skus),
            "shipping_code": self.shipping_code, "created_at": self.created_at,
            "expected_exceptions": list(self.expected_exceptions), "possible_exceptions": list(self.possible_exceptions),
            "observed": list(self.observed),
            "followups": [{"action": f.action, "stage": f.stage, "done": not f.pending, "outcome": f.outcome,
                           "stages_seen": list(f.stages_seen)} for f in self.followups],
        }


class TrafficGenerator:
    """Places seeded orders in the Shopify sandbox and plays their follow-ups."""

    def __init__(
        self,
        shopify: ShopifySandbox,
        netsuite: NetSuiteSandbox,
        clarus: "ClarusSandbox | None" = None,
        profile: TrafficProfile = TrafficProfile(),
        seed: int = 0,
        *,
        policies: Policies | None = None,
        policies_path: Path | str = SANDBOX_POLICIES,
        clock: Any = time.time,
    ):
        self.shopify = shopify
        self.netsuite = netsuite
        self.clarus = clarus
        self.profile = profile
        self.seed = seed
        self.clock = clock
        self.policies = policies or load_policies(policies_path)
        if not self.policies.ship_methods:
            raise ValueError("the policies have no ship_methods: the generator needs mapped shipping lines")
        self.random = random.Random(f"traffic:{seed}")
        # follow-ups and arrival times draw from their own streams, so the orders placed
        # depend on the seed only, not on when follow-ups happen to run
        self._followup_random = random.Random(f"traffic-followups:{seed}")
        self._arrival_random = random.Random(f"traffic-arrivals:{seed}")
        catalog = shopify.catalog
        self._clean = [i for i in catalog.clean_variants() if i.variant_id is not None]
        self._stripped = catalog.zero_stripped_variants()
        self._unknown = catalog.unknown_variants()
        if not (self._clean and self._stripped and self._unknown):
            raise ValueError("the catalogue lacks clean, zero-stripped or unknown variants")
        self.orders: list[GeneratedOrder] = []
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ building blocks

    def _address(self, *, international: bool) -> dict[str, Any]:
        rng = self.random
        first, last = rng.choice(_FIRST), rng.choice(_LAST)
        street = f"{rng.randint(1, 220)} {rng.choice(_STREETS)}"
        if international:
            city, zip_code, country, code = rng.choice(_ABROAD)
            province = None
        else:
            city, zip_code, province = rng.choice(_UK)
            country, code = "United Kingdom", "GB"
        return {
            "first_name": first, "last_name": last, "name": f"{first} {last}", "address1": street,
            "address2": rng.choice(["", "", f"Flat {rng.randint(1, 40)}"]), "city": city, "zip": zip_code,
            "province": province, "province_code": None, "country": country, "country_code": code,
            "company": None, "phone": f"+44 7700 9{rng.randint(10000, 99999)}", "latitude": None, "longitude": None,
        }

    def _shipping_line(self, rule: ShipMethodRule) -> dict[str, Any]:
        code = rule.code or (rule.title or "").upper().replace(" ", "-")
        price = _SHIPPING_PRICES.get((rule.code or "").lower(), "0.00" if "free" in (rule.title or "").lower() else "2.99")
        return {"code": code, "title": rule.title or rule.code, "price": price, "source": "shopify"}

    def _mapped_rule(self, *, international: bool, paid: bool = False) -> ShipMethodRule:
        rules = list(self.policies.ship_methods)
        intl = [r for r in rules if "international" in f"{r.code} {r.title}".lower()]
        domestic = [r for r in rules if r not in intl]
        pool = (intl or rules) if international else (domestic or rules)
        if paid:
            pool = [r for r in pool if "free" not in f"{r.code} {r.title}".lower()] or pool
        return self.random.choice(pool)

    def _lines(self, *, min_units: int = 1) -> list[tuple[CatalogItem, int]]:
        rng = self.random
        count = rng.randint(*self.profile.lines_per_order)
        items = rng.sample(self._clean, k=min(count, len(self._clean)))
        lines = [(item, rng.randint(*self.profile.quantity_per_line)) for item in items]
        while sum(q for _, q in lines) < min_units:
            item, qty = lines[0]
            lines[0] = (item, qty + 1)
        return lines

    def _draw_case(self) -> str:
        roll = self.random.random()
        cumulative = 0.0
        for case, share in self.profile.shares().items():
            cumulative += share
            if roll < cumulative:
                return case
        return CLEAN

    def _wait(self, bounds: tuple[float, float]) -> float:
        return round(self.random.uniform(*bounds), 3)

    # ------------------------------------------------------------------ orders

    def generate_orders(self, n: int, *, case: str | None = None) -> list[GeneratedOrder]:
        """Place `n` orders (each with a drawn case, or all with `case`); returns them."""
        if case is not None and case not in CASES and case != CLEAN:
            raise ValueError(f"unknown case {case!r}; use one of {(CLEAN,) + CASES}")
        return [self._place(case or self._draw_case()) for _ in range(n)]

    def _place(self, case: str) -> GeneratedOrder:
        rng = self.random
        profile = self.profile
        international = case not in ("missing_postcode_or_country",) and rng.random() < profile.international_share
        address: dict[str, Any] | None = self._address(international=international)
        rule = self._mapped_rule(international=international, paid=case == "refund_shipping_only")
        shipping = self._shipping_line(rule)
        lines = self._lines(min_units=2 if case == "refund_cancellation" else 1)
        line_specs = [{"variant_id": item.variant_id, "quantity": qty} for item, qty in lines]
        followups: list[FollowUp] = []
        full_address = dict(address)

        if case == "missing_shipping_address":
            address = None
        elif case == "missing_postcode_or_country":
            if rng.random() < 0.5:
                address["zip"] = None
            else:
                address["country_code"] = None
                address["country"] = ""
        elif case == "unmapped_shipping_line":
            shipping = dict(rng.choice(_UNMAPPED_SHIPPING))
        elif case == "sku_leading_zeros_stripped":
            line_specs[0] = {"variant_id": rng.choice(self._stripped).variant_id, "quantity": 1}
        elif case == "sku_unknown":
            line_specs[-1] = {"variant_id": rng.choice(self._unknown).variant_id, "quantity": 1}
        elif case == "edit_after_release":
            followups.append(FollowUp("edit", "released", self._wait(profile.followup_after_s)))
        elif case == "cancel_before_dispatch":
            followups.append(FollowUp("cancel", "released", self._wait(profile.followup_after_s)))
        elif case == "cancel_after_dispatch":
            followups.append(FollowUp("cancel", "dispatched", 0.0))
        elif case == "refund_return":
            followups.append(FollowUp("refund_return", "fulfilled", self._wait(profile.followup_after_s)))
        elif case == "refund_cancellation":
            followups.append(FollowUp("refund_cancellation", "released", self._wait(profile.followup_after_s)))
        elif case == "refund_goodwill":
            followups.append(FollowUp("refund_goodwill", "fulfilled", self._wait(profile.followup_after_s)))
        elif case == "refund_shipping_only":
            followups.append(FollowUp("refund_shipping", "fulfilled", self._wait(profile.followup_after_s)))
        elif case == "fulfilled_outside_wms":
            followups.append(FollowUp("fulfil_by_hand", "released", 0.0))
        if case in ("missing_shipping_address", "missing_postcode_or_country") and rng.random() < profile.held_fixed_share:
            followups.append(FollowUp("fix_address", "placed", self._wait(profile.fix_after_s)))

        first, last = full_address["first_name"], full_address["last_name"]
        email = f"{first}.{last}{rng.randint(1, 999)}@example.com".lower()
        with self._lock:
            order = self.shopify.create_order(
                line_items=line_specs, shipping_address=address, shipping_lines=[shipping], email=email,
                phone=full_address["phone"], customer={"first_name": first, "last_name": last},
                tags="sandbox-traffic",
            )
            now = self.clock()
            generated = GeneratedOrder(
                order_id=order["id"], name=order["name"], case=case,
                skus=tuple(li["sku"] or "" for li in order["line_items"]), shipping_code=shipping.get("code"),
                created_at=now, followups=followups, full_address=full_address,
            )
            if case == "dispatch_before_erp_commit":
                self.netsuite.delay_commit_for(str(order["id"]), profile.slow_commit_s)
            for follow in followups:
                if follow.stage == "placed":
                    follow.ready_at = now + follow.wait_s
            self.orders.append(generated)
        log.debug("placed %s (%s)", order["name"], case)
        return generated

    # ------------------------------------------------------------------ stages and follow-ups

    def _stage_index(self) -> dict[int, set[str]]:
        """Which stages each generated order has reached, from the sandboxes' records."""
        stages: dict[int, set[str]] = {o.order_id: {"placed"} for o in self.orders}
        if self.clarus is not None:
            for go in self.clarus.goods_outs():
                try:
                    order_id = int(go.get("external_system_reference1") or 0)
                except ValueError:
                    continue
                if order_id in stages:
                    stages[order_id].add("released")
                    code = (go.get("goods_out_status") or {}).get("code")
                    if code in ("COMPLETED", "PART"):
                        stages[order_id].add("dispatched")
        else:
            so_orders: dict[str, int] = {}
            for so in self.netsuite.sales_orders():
                try:
                    order_id = int(so.get("externalId") or 0)
                except ValueError:
                    continue
                if order_id in stages:
                    stages[order_id].add("released")
                    so_orders[str(so["id"])] = order_id
            for fulfilment in self.netsuite.item_fulfillments():
                order_id = so_orders.get(str((fulfilment.get("createdFrom") or {}).get("id")))
                if order_id is not None:
                    stages[order_id].add("dispatched")
        for fulfilment in self.shopify.fulfillments():
            if fulfilment["order_id"] in stages:
                stages[fulfilment["order_id"]].update({"dispatched", "fulfilled"})
        return stages

    def apply_followups(self, now: float | None = None, *, force: bool = False) -> list[tuple[GeneratedOrder, FollowUp]]:
        """Run every follow-up whose stage is reached and whose wait is over (all, with `force`)."""
        now = self.clock() if now is None else now
        done: list[tuple[GeneratedOrder, FollowUp]] = []
        with self._lock:
            pending = [(o, f) for o in self.orders for f in o.followups if f.pending]
            if not pending:
                return done
            stages = self._stage_index()
            for order, follow in pending:
                reached = stages.get(order.order_id, {"placed"})
                if follow.ready_at is None and (follow.stage in reached or force):
                    follow.ready_at = now + follow.wait_s
                if not force and (follow.ready_at is None or follow.ready_at > now):
                    continue
                follow.stages_seen = tuple(s for s in ("placed", "released", "dispatched", "fulfilled") if s in reached)
                follow.outcome = self._run_followup(order, follow)
                follow.done_at = now
                done.append((order, follow))
        return done

    def _run_followup(self, order: GeneratedOrder, follow: FollowUp) -> str:
        shop = self.shopify
        try:
            current = shop.order(order.order_id)
            if follow.action == "fix_address":
                shop.update_shipping_address(order.order_id, order.full_address)
            elif follow.action == "edit":
                lines = [li for li in current["line_items"] if li["fulfillable_quantity"] > 0]
                if lines and self._followup_random.random() < 0.5:
                    target = lines[0]
                    shop.edit_order(order.order_id, quantities={target["id"]: target["quantity"] + 1},
                                    staff_note="customer asked for one more")
                else:
                    extra = self._followup_random.choice(self._clean)
                    shop.edit_order(order.order_id, add=[{"variant_id": extra.variant_id, "quantity": 1}],
                                    staff_note="customer added an item")
            elif follow.action == "cancel":
                shop.cancel_order(order.order_id, reason="customer", refund=True)
            elif follow.action == "refund_return":
                line = next((li for li in current["line_items"]
                             if li["fulfillment_status"] in ("fulfilled", "partial") and li["current_quantity"] > 0), None)
                if line is None:
                    return "refused: nothing fulfilled to return"
                shop.refund_order(order.order_id, note="Returned: wrong size",
                                  line_items=[{"line_item_id": line["id"], "quantity": 1, "restock_type": "return"}])
            elif follow.action == "refund_cancellation":
                line = next((li for li in current["line_items"] if li["fulfillable_quantity"] > 0), None)
                if line is None:
                    return "refused: nothing left unshipped"
                shop.refund_order(order.order_id, note="Customer removed an item before dispatch",
                                  line_items=[{"line_item_id": line["id"], "quantity": 1, "restock_type": "cancel"}])
            elif follow.action == "refund_goodwill":
                amount = min(Decimal("10.00"), Decimal(current["current_total_price"]))
                shop.refund_order(order.order_id, amount=amount, note="Goodwill: sorry for the late delivery")
            elif follow.action == "refund_shipping":
                shop.refund_order(order.order_id, shipping_full=True, note="Shipping refunded: delivery was late")
            elif follow.action == "fulfil_by_hand":
                if not any(li["fulfillable_quantity"] > 0 for li in current["line_items"]):
                    return "refused: nothing left to fulfil"
                shop.fulfil_by_hand(order.order_id)  # marked fulfilled in Shopify admin, no tracking
            else:
                return f"failed: unknown action {follow.action}"
        except ShopifyError as exc:
            return f"refused: {exc}"
        except Exception as exc:  # a follow-up must never stop the traffic
            log.exception("traffic follow-up %s on %s failed", follow.action, order.name)
            return f"failed: {type(exc).__name__}: {exc}"
        return "done"

    # ------------------------------------------------------------------ observation

    def observed_cases(self) -> dict[int, list[str]]:
        """Cases the sandboxes produced on their own: missing tracking (Clarus dispatched a
        shipment without a tracking number), and dispatch before the ERP committed (Clarus
        dispatched while NetSuite's sales order was still awaiting approval)."""
        if self.clarus is None:
            return {}
        ours = {o.order_id: o for o in self.orders}
        statuses = {}
        for so in self.netsuite.sales_orders():
            try:
                statuses[int(so.get("externalId") or 0)] = so.get("orderStatus")
            except ValueError:
                continue
        found: dict[int, list[str]] = {}
        with self._lock:
            for go in self.clarus.goods_outs():
                try:
                    order_id = int(go.get("external_system_reference1") or 0)
                except ValueError:
                    continue
                order = ours.get(order_id)
                if order is None:
                    continue
                seen = found.setdefault(order_id, [])
                if any(s.get("tracking_number") is None for s in go.get("shipments") or []):
                    seen.append("missing_tracking")
                code = (go.get("goods_out_status") or {}).get("code")
                if code in ("COMPLETED", "PART") and statuses.get(order_id) not in COMMITTED_STATUSES:
                    seen.append("dispatch_before_erp_commit")
                for case in seen:
                    if case in OBSERVED_CASES and case not in order.observed:
                        order.observed.append(case)
        return {k: v for k, v in found.items() if v}

    def summary(self) -> dict[str, Any]:
        with self._lock:
            counts: dict[str, int] = {}
            for order in self.orders:
                counts[order.case] = counts.get(order.case, 0) + 1
            pending = sum(1 for o in self.orders for f in o.followups if f.pending)
            return {"orders": len(self.orders), "cases": counts, "pending_followups": pending}

    # ------------------------------------------------------------------ the demo loop

    def run(self, rate_per_min: float | None = None, stop_event: threading.Event | None = None, *,
            followup_interval_s: float = 1.0) -> None:
        """Place orders at `rate_per_min` (Poisson arrivals) and play follow-ups until stopped."""
        rate = self.profile.orders_per_minute if rate_per_min is None else rate_per_min
        stop = stop_event or threading.Event()
        arrivals = self._arrival_random
        next_order = time.monotonic() + (arrivals.expovariate(rate / 60.0) if rate > 0 else float("inf"))
        while not stop.is_set():
            now = time.monotonic()
            if now >= next_order:
                try:
                    self.generate_orders(1)
                except Exception:  # keep the demo's traffic flowing
                    log.exception("traffic: placing an order failed")
                next_order = now + arrivals.expovariate(rate / 60.0)
            try:
                self.apply_followups()
            except Exception:
                log.exception("traffic: follow-ups failed")
            stop.wait(max(0.01, min(followup_interval_s, next_order - time.monotonic())))

    def start(self, rate_per_min: float | None = None) -> tuple[threading.Thread, threading.Event]:
        """`run` in a daemon thread; set the returned event to stop it."""
        stop = threading.Event()
        thread = threading.Thread(target=self.run, args=(rate_per_min, stop), name="sandbox-traffic", daemon=True)
        thread.start()
        return thread, stop


def case_counts(orders: list[GeneratedOrder]) -> Mapping[str, int]:
    counts: dict[str, int] = {}
    for order in orders:
        counts[order.case] = counts.get(order.case, 0) + 1
    return counts
