"""The integration audit's rules: each finding is one plain function over `AuditData`.

A rule looks at what the reader gathered from Clarus, Shopify, NetSuite and our state,
and returns the gaps it sees as `Finding`s: how many, a few examples, who owns the fix
(a role of the exception catalogue), what it costs the business, how to fix it, and
whether it blocks go-live ("blocker") or should be fixed soon ("warning").

The line between the two: a gap that is already costing orders or money, or that stops a
connection from working, is a blocker; a latent flaw (a catalogue quirk nobody has ordered
yet, stock that cannot be sold, a configuration that will hurt later) is a warning. So a
variant whose SKU only misses its leading zeros is a warning until an order for it is held.

Adding a check is one function decorated with `@rule` and one test.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from clarus_pipelines.catalogue import CATALOGUE, Owner
from clarus_pipelines.domain.barcodes import gtin_problem, is_valid_gtin
from clarus_pipelines.domain.skus import clean_sku, zero_stripped_key
from clarus_pipelines.logs import mask_text
from clarus_pipelines.policies import Policies

Verdict = Literal["blocker", "warning"]
EXAMPLES = 5  # examples kept per finding

# Shopify topics the flows act on: without a subscription each one is silently missed.
CONSUMED_SHOPIFY_TOPICS = ("orders/create", "orders/updated", "orders/edited", "orders/cancelled", "refunds/create")
FULFILLED_OUTSIDE_WMS = "FULFILLED_OUTSIDE_WMS"  # raised by the fulfilment watch; owner from the catalogue when known
REQUIRED_SECRETS = (
    "CLARUS_CLIENT_SECRET", "CLARUS_WEBHOOK_TOKEN", "SHOPIFY_ACCESS_TOKEN", "SHOPIFY_WEBHOOK_SECRET",
    "NETSUITE_CONSUMER_SECRET", "NETSUITE_TOKEN_SECRET",
)
OPTIONAL_SECRETS = ("NETSUITE_WEBHOOK_SECRET",)  # NetSuite webhooks are off without it
MIN_SECRET_LENGTH = 16
KNOWN_DEFAULT_SECRETS = frozenset({
    "changeme", "change-me", "change_me", "secret", "password", "passw0rd", "default", "sandbox", "test", "example",
    "token", "admin", "letmein", "0123456789abcdef", "1234567890123456", "xxxxxxxxxxxxxxxx",
})
MIN_LANDING_RETENTION_DAYS = 30  # below this a missed event cannot be replayed after a long weekend plus hypercare
MAX_LANDING_RETENTION_DAYS = 400  # landed webhooks hold personal data: keep them no longer than a year or so


@dataclass(frozen=True)
class Finding:
    """One gap: what, how many, examples, who fixes it, what it costs, how to fix it, how bad."""

    check: str  # stable id, e.g. "item_master.zero_stripped_skus"
    area: str  # item master, ship methods, stock, webhooks and connections, orders and dispatch, refunds, configuration
    title: str
    count: int
    examples: tuple[str, ...]
    owner: Owner
    effect: str  # what it means for the business
    fix: str
    severity: Verdict

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "examples": list(self.examples)}


@dataclass
class AuditData:
    """Everything the rules look at, read once (read-only) from the three systems and our state.

    Lists of plain dicts, so a test can build one by hand. A system that could not be read
    has its lists empty and its name in `read_errors` (system -> error text).
    """

    now: datetime  # naive UTC, like the state file
    since: datetime
    policies: Policies
    netsuite_items: list[dict[str, Any]] = field(default_factory=list)  # id, sku_raw, barcode, inactive
    shopify_variants: list[dict[str, Any]] = field(default_factory=list)  # variant_id, title, sku_raw, barcode
    clarus_products: list[dict[str, Any]] = field(default_factory=list)  # id, code, barcode
    clarus_balances: list[dict[str, Any]] = field(default_factory=list)  # code, warehouse_id, available
    shopify_locations: list[dict[str, Any]] = field(default_factory=list)  # id, name, active
    webhook_subscriptions: list[dict[str, Any]] | None = None  # id, topic, uri; None when not read
    connections: dict[str, str | None] = field(default_factory=dict)  # system -> None (answered) or the error
    read_errors: dict[str, str] = field(default_factory=dict)
    receiver_url: str | None = None  # where webhooks should point, when known
    # from our state, for the period [since, now]
    orders: list[dict[str, Any]] = field(default_factory=list)  # order_id, order_name, shipping_code, shipping_title, created_at
    ordered_skus: dict[str, int] = field(default_factory=dict)  # raw SKU on order lines in the period -> orders
    held_orders: list[dict[str, Any]] = field(default_factory=list)  # order_id, order_name, code, message, held_since
    open_exceptions: list[dict[str, Any]] = field(default_factory=list)  # code, entity_id, owner, message, first_seen
    period_exceptions: list[dict[str, Any]] = field(default_factory=list)  # any status, first seen in the period
    unclassified_refunds: list[dict[str, Any]] = field(default_factory=list)  # refund_id, order_id, reasons
    timings: list[dict[str, Any]] = field(default_factory=list)  # order_id, to_warehouse_min, to_dispatch_min
    secrets: dict[str, str | None] = field(default_factory=dict, repr=False)  # env name -> value (never reported)


RuleFunc = Callable[[AuditData], Iterable[Finding]]
RULES: list[RuleFunc] = []


def rule(func: RuleFunc) -> RuleFunc:
    """Register a check; `run_rules` runs them in the order they are defined."""
    RULES.append(func)
    return func


def owner_of(code: str, default: Owner = "ops") -> Owner:
    """The catalogue's owner of an exception code (`default` for a code this build does not know yet)."""
    entry = CATALOGUE.get(code)
    return entry.owner if entry else default


def _examples(values: Iterable[Any]) -> tuple[str, ...]:
    """The first few, with e-mails and phone numbers masked (reports are shared and kept)."""
    return tuple(mask_text(str(v)) for v in list(values)[:EXAMPLES])


def _finding(check: str, area: str, title: str, items: list[Any], owner: Owner, effect: str, fix: str,
             severity: Verdict, count: int | None = None) -> list[Finding]:
    if not items and not count:
        return []
    return [Finding(check, area, title, len(items) if count is None else count, _examples(items), owner, effect, fix,
                    severity)]


def _clean(value: Any, data: AuditData) -> str | None:
    return clean_sku(value, data.policies.sku_cleaning) if isinstance(value, str) else None


def _ordered(data: AuditData, *raw_skus: str | None) -> int:
    """Orders in the period with a line of any of these raw SKUs."""
    return sum(data.ordered_skus.get(s or "", 0) for s in raw_skus)


# ----------------------------------------------------------------------------- item master


def _master_keys(data: AuditData) -> set[str]:
    return {k for k in (_clean(i.get("sku_raw"), data) for i in data.netsuite_items if not i.get("inactive")) if k}


def _clarus_keys(data: AuditData) -> set[str]:
    return {k for k in (_clean(p.get("code"), data) for p in data.clarus_products) if k}


@rule
def variants_without_sku(data: AuditData) -> list[Finding]:
    """Shopify variants with no SKU: they can be sold but never picked or stocked."""
    missing = [f"{v.get('title') or ''} (variant {v.get('variant_id')})" for v in data.shopify_variants
               if not _clean(v.get("sku_raw"), data)]
    return _finding(
        "item_master.variants_without_sku", "item master", "Shopify variants without a SKU", missing,
        owner_of("SKU_NOT_IN_MASTER"),
        "Orders for these variants are held (SKU unknown) and their stock never syncs.",
        "Give each variant the item master's SKU in Shopify.", "blocker")


@rule
def zero_stripped_skus(data: AuditData) -> list[Finding]:
    """Shopify SKUs that match the item master only once their leading zeros are restored."""
    master = _master_keys(data)
    by_key = {zero_stripped_key(k): k for k in master if zero_stripped_key(k)}
    hits, ordered = [], 0
    for v in data.shopify_variants:
        sku = _clean(v.get("sku_raw"), data)
        if sku and sku not in master and zero_stripped_key(sku) in by_key and by_key[zero_stripped_key(sku)] != sku:
            hits.append(f"{v.get('sku_raw')} -> {by_key[zero_stripped_key(sku)]}")
            ordered += _ordered(data, v.get("sku_raw"))
    return _finding(
        "item_master.zero_stripped_skus", "item master", "SKUs that lost their leading zeros", hits,
        owner_of("SKU_LEADING_ZEROS_LOST"),
        f"Orders for them are held as SKU unknown ({ordered} in the period) and their stock never syncs.",
        "Re-enter the SKU in Shopify as text with its zeros; never round-trip SKUs through a spreadsheet.",
        "blocker" if ordered else "warning")


@rule
def skus_not_in_master(data: AuditData) -> list[Finding]:
    """Shopify SKUs unknown to NetSuite (and so to Clarus), leading-zero cases aside."""
    if "netsuite" in data.read_errors:
        return []
    master = _master_keys(data)
    zero_keys = {zero_stripped_key(k) for k in master} - {None}
    hits, ordered = [], 0
    for v in data.shopify_variants:
        sku = _clean(v.get("sku_raw"), data)
        if sku and sku not in master and zero_stripped_key(sku) not in zero_keys:
            hits.append(f"{v.get('sku_raw')} ({v.get('title') or 'variant ' + str(v.get('variant_id'))})")
            ordered += _ordered(data, v.get("sku_raw"))
    return _finding(
        "item_master.skus_not_in_master", "item master", "Shopify SKUs not in the NetSuite item master", hits,
        owner_of("SKU_NOT_IN_MASTER"),
        f"Orders for them are held ({ordered} in the period), never reach the warehouse, and their stock never syncs.",
        "Correct the variant's SKU in Shopify, or create the item in NetSuite.", "blocker" if ordered else "warning")


@rule
def skus_not_in_clarus(data: AuditData) -> list[Finding]:
    """Item master SKUs sold on Shopify that Clarus has no product for."""
    if "clarus" in data.read_errors or "netsuite" in data.read_errors:
        return []
    clarus, master = _clarus_keys(data), _master_keys(data)
    sold = {_clean(v.get("sku_raw"), data): v.get("sku_raw") for v in data.shopify_variants}
    missing = sorted(raw or "" for sku, raw in sold.items() if sku and sku in master and sku not in clarus)
    ordered = _ordered(data, *missing)
    return _finding(
        "item_master.skus_not_in_clarus", "item master", "Sellable SKUs with no Clarus product", missing,
        owner_of("SKU_UNKNOWN"),
        f"The warehouse cannot pick them: their orders are held ({ordered} in the period).",
        "Run the item master sync (it creates the Clarus products) and read its BARCODE/WMS errors if it fails.",
        "blocker" if ordered else "warning")


@rule
def spelling_differences(data: AuditData) -> list[Finding]:
    """The same SKU spelt differently across systems (case, spaces, characters the cleaning removes)."""
    master = {}
    for item in data.netsuite_items:
        sku = _clean(item.get("sku_raw"), data)
        if sku:
            master.setdefault(sku, item.get("sku_raw"))
    hits = []
    for v in data.shopify_variants:
        sku = _clean(v.get("sku_raw"), data)
        if sku in master and v.get("sku_raw") != master[sku]:
            hits.append(f"Shopify {v.get('sku_raw')!r} / NetSuite {master[sku]!r}")
    hits += [f"NetSuite {i.get('sku_raw')!r}" for i in data.netsuite_items
             if i.get("sku_raw") and _clean(i.get("sku_raw"), data) != i.get("sku_raw").strip()
             and _clean(i.get("sku_raw"), data) != i.get("sku_raw").strip().upper()]
    return _finding(
        "item_master.spelling_differences", "item master", "SKUs spelt differently across systems", hits,
        "merchandising",
        "The integration matches them after cleaning (trim, case, removed characters), but reports, searches and "
        "any other tool comparing SKUs will not.",
        "Use one spelling everywhere: the item master's, without spaces or characters Clarus refuses.", "warning")


@rule
def duplicate_skus(data: AuditData) -> list[Finding]:
    """Two item master records, or two Shopify variants, that clean to the same SKU."""
    hits = []
    for label, rows, key in (("NetSuite", data.netsuite_items, "sku_raw"), ("Shopify", data.shopify_variants, "sku_raw")):
        seen: dict[str, list[str]] = defaultdict(list)
        for row in rows:
            sku = _clean(row.get(key), data)
            if sku and not row.get("inactive"):
                seen[sku].append(str(row.get(key)))
        hits += [f"{label}: {' / '.join(repr(r) for r in raws)}" for sku, raws in sorted(seen.items()) if len(raws) > 1]
    return _finding(
        "item_master.duplicate_skus", "item master", "Duplicate SKUs", hits, "merchandising",
        "One SKU names two products: orders, stock and costs go to whichever the systems pick first.",
        "Merge or re-code the duplicates in the system named, then re-run the item master sync.", "blocker")


@rule
def products_without_valid_barcode(data: AuditData) -> list[Finding]:
    """Clarus products with no barcode, or one failing its GTIN check digit."""
    hits = []
    for product in data.clarus_products:
        barcode = product.get("barcode")
        if not is_valid_gtin(barcode):
            hits.append(f"{product.get('code')}: {gtin_problem(barcode) or 'no barcode'}")
    return _finding(
        "item_master.products_without_valid_barcode", "item master", "Clarus products without a valid barcode",
        sorted(hits), owner_of("BARCODE_INVALID"),
        "Warehouse scanners reject these items at goods in and at picking, or match the wrong item.",
        "Correct the barcode on the NetSuite item; the next item master sync updates Clarus.", "warning")


# ----------------------------------------------------------------------------- ship methods


def _ship_key(value: Any) -> str:
    return "".join(str(value or "").lower().split())


@rule
def unmapped_ship_methods(data: AuditData) -> list[Finding]:
    """Shipping-line titles seen on orders in the period that no ship-method rule maps, with their order counts."""
    codes = {_ship_key(r.code) for r in data.policies.ship_methods if r.code}
    titles = {_ship_key(r.title) for r in data.policies.ship_methods if r.title}
    unmapped: Counter[str] = Counter()
    for order in data.orders:
        code, title = order.get("shipping_code"), order.get("shipping_title")
        if code is None and title is None:
            continue  # nothing to ship (digital goods) or no shipping line: the order rules say so
        if _ship_key(code) in codes or _ship_key(title) in titles:
            continue
        unmapped[title or code or ""] += 1
    items = [f"{title!r}: {n} order(s)" for title, n in unmapped.most_common()]
    return _finding(
        "ship_methods.unmapped", "ship methods", "Shipping lines with no ship-method mapping", items,
        owner_of("SHIP_METHOD_UNMAPPED"),
        f"{sum(unmapped.values())} order(s) in the period are held: Clarus cannot be told the carrier and service.",
        "Add each title (or its code) to `ship_methods` in the policies file; held orders release on the next re-check.",
        "blocker")


# ----------------------------------------------------------------------------- stock


@rule
def stranded_stock(data: AuditData) -> list[Finding]:
    """Clarus stock of SKUs no Shopify variant sells: there, but nobody can buy it."""
    if "clarus" in data.read_errors or "shopify" in data.read_errors:
        return []
    sold = {_clean(v.get("sku_raw"), data) for v in data.shopify_variants} - {None}
    units: Counter[str] = Counter()
    for balance in data.clarus_balances:
        sku = _clean(balance.get("code"), data)
        if sku and sku not in sold and (balance.get("available") or 0) > 0:
            units[sku] += int(balance.get("available") or 0)
    items = [f"{sku}: {n} unit(s)" for sku, n in sorted(units.items())]
    return _finding(
        "stock.stranded", "stock", "Stranded stock (in Clarus, sold by no Shopify variant)", items,
        owner_of("STRANDED_STOCK"), "Sellable goods sit in the warehouse with no listing: lost sales and tied-up cash.",
        "Map each SKU to a Shopify variant (create it, or correct the variant's SKU), or decide to keep it offline.",
        "warning")


def _open(data: AuditData, code: str) -> list[dict[str, Any]]:
    return [e for e in data.open_exceptions if e.get("code") == code]


@rule
def stock_mismatches(data: AuditData) -> list[Finding]:
    """Open STOCK_MISMATCH exceptions: channel stock differs from the warehouse beyond the tolerance."""
    rows = _open(data, "STOCK_MISMATCH")
    return _finding(
        "stock.mismatches", "stock", f"Channel stock off by more than {data.policies.stock.mismatch_tolerance} unit(s)",
        [f"{e['entity_id']}: {e.get('message', '')}" for e in rows], owner_of("STOCK_MISMATCH"),
        "The shop may oversell (cancelled orders, unhappy customers) or hide stock it could sell.",
        "Look for manual stock edits or another app writing stock in Shopify; the next push corrects it.", "warning")


@rule
def unmapped_locations(data: AuditData) -> list[Finding]:
    """Clarus warehouses holding stock and Shopify locations that the tenant policy does not map."""
    tenant = data.policies.tenant
    hits = sorted({f"Clarus warehouse {b.get('warehouse_id')}" for b in data.clarus_balances
                   if b.get("warehouse_id") not in (None, "") and str(b.get("warehouse_id")) != str(tenant.warehouse_id)
                   and (b.get("available") or 0) > 0})
    mapped = {str(i) for i in tenant.shopify_location_ids}
    active = [loc for loc in data.shopify_locations if loc.get("active", True)]
    hits += [f"Shopify location {loc.get('id')} ({loc.get('name')})" for loc in active if str(loc.get("id")) not in mapped]
    missing = sorted(mapped - {str(loc.get("id")) for loc in active}) if "shopify" not in data.read_errors else []
    findings = _finding(
        "stock.unmapped_locations", "stock", "Warehouses or locations without a mapping", hits, "integration",
        "Stock held there is never pushed to the shop, and orders fulfilled from there bypass the warehouse.",
        "Map the location in `tenant.shopify_location_ids` / `tenant.warehouse_id`, or deactivate it.", "warning")
    findings += _finding(
        "stock.mapped_location_missing", "stock", "Mapped Shopify location not found in the shop",
        [f"Shopify location {i}" for i in missing], "integration",
        "Every stock push to it fails: the shop's stock freezes at its last value.",
        "Correct `tenant.shopify_location_ids` to the shop's fulfilment location.", "blocker")
    return findings


# ----------------------------------------------------------------------------- webhooks and connections


@rule
def webhook_subscriptions(data: AuditData) -> list[Finding]:
    """Topics we consume that the shop does not send us, and subscriptions pointing elsewhere."""
    subs = data.webhook_subscriptions
    if subs is None:
        return []  # not read: the connection finding says why
    topics = {s.get("topic") for s in subs}
    missing = [t for t in CONSUMED_SHOPIFY_TOPICS if t not in topics]
    uris = sorted({str(s.get("uri")) for s in subs if s.get("topic") in CONSUMED_SHOPIFY_TOPICS})
    pointed = f" Subscriptions point at: {', '.join(uris)}." if uris else ""
    findings = _finding(
        "webhooks.topics_not_subscribed", "webhooks and connections", "Consumed topics the shop is not subscribed to",
        missing, "integration",
        "Those events only arrive by the 15-minute reconciliation read: orders, edits and refunds are late." + pointed,
        "Subscribe the shop to each topic, pointing at our receiver's /webhooks/shopify.", "blocker")
    if data.receiver_url:
        expected = data.receiver_url.rstrip("/") + "/webhooks/shopify"
        wrong = [f"{s.get('topic')} -> {s.get('uri')}" for s in subs
                 if s.get("topic") in CONSUMED_SHOPIFY_TOPICS and str(s.get("uri") or "").rstrip("/") != expected]
        findings += _finding(
            "webhooks.wrong_receiver", "webhooks and connections", f"Subscriptions not pointing at {expected}", wrong,
            "integration", "Those webhooks go somewhere else (an old or test receiver): we never see them.",
            "Point each subscription at our receiver's URL.", "blocker")
    return findings


@rule
def connections(data: AuditData) -> list[Finding]:
    """Each system answering with our credentials."""
    failing = [f"{system}: {error}" for system, error in sorted(data.connections.items()) if error]
    return _finding(
        "connections.failing", "webhooks and connections", "Systems not answering with our credentials", failing,
        owner_of("CONNECTOR_FAILING", "integration"),
        "Nothing reaches a system we cannot call: orders, dispatches and stock for it queue up; the audit's checks "
        "that need it were skipped, so this report is incomplete.",
        "Check the endpoint and credentials in the environment (clarus-pipelines check-config --require-secrets).",
        "blocker")


# ----------------------------------------------------------------------------- orders and dispatch


def _age(data: AuditData, since: datetime | None) -> str:
    if since is None:
        return "?"
    minutes = max(0.0, (data.now - since).total_seconds() / 60)
    return f"{minutes / 60:.1f} h" if minutes >= 90 else f"{minutes:.0f} min"


@rule
def held_orders(data: AuditData) -> list[Finding]:
    """Held orders by reason: past the hold alert time they are blockers, within it warnings."""
    limit = timedelta(minutes=data.policies.timings.held_alert_minutes)
    by_code: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for hold in data.held_orders:
        by_code[hold["code"]].append(hold)
    findings: list[Finding] = []
    for code, holds in sorted(by_code.items()):
        holds = sorted(holds, key=lambda h: h.get("held_since") or data.now)
        title = CATALOGUE[code].title.removeprefix("Order held: ") if code in CATALOGUE else code
        late = [h for h in holds if h.get("held_since") and data.now - h["held_since"] > limit]
        recent = [h for h in holds if h not in late]
        for group, severity, label in ((late, "blocker", "held too long"), (recent, "warning", "held")):
            orders = list(dict.fromkeys(f"{h.get('order_name') or h['order_id']} ({_age(data, h.get('held_since'))})"
                                        for h in group))
            findings += _finding(
                f"orders.{label.replace(' ', '_')}.{code}", "orders and dispatch", f"Orders {label}: {title}", orders,
                owner_of(code),
                f"{len(orders)} order(s) not in the warehouse"
                + (f" for more than {data.policies.timings.held_alert_minutes} minutes: promised delivery dates slip."
                   if severity == "blocker" else " yet; they release by themselves once the cause is fixed."),
                CATALOGUE[code].resolution if code in CATALOGUE else "See the exception queue.", severity)
    return findings


@rule
def orphan_orders(data: AuditData) -> list[Finding]:
    rows = _open(data, "ORPHAN_ORDER")
    return _finding(
        "orders.orphans", "orders and dispatch", "Orders in one system but not the other",
        [e["entity_id"] for e in rows], owner_of("ORPHAN_ORDER"),
        "They will never ship, or goods ship that nobody sold.", CATALOGUE["ORPHAN_ORDER"].resolution, "blocker")


@rule
def fulfilled_outside_wms(data: AuditData) -> list[Finding]:
    """Fulfilments made in Shopify (or another app) without Clarus: open FULFILLED_OUTSIDE_WMS exceptions."""
    rows = _open(data, FULFILLED_OUTSIDE_WMS)
    owner = rows[0].get("owner") if rows and rows[0].get("owner") else owner_of(FULFILLED_OUTSIDE_WMS)
    return _finding(
        "orders.fulfilled_outside_wms", "orders and dispatch", "Fulfilments made outside Clarus",
        [f"{e['entity_id']}: {e.get('message', '')}" for e in rows], owner,
        "Goods left (or were marked as left) without the warehouse: stock, NetSuite and the customer's tracking disagree.",
        "Find who fulfils outside Clarus (staff, another app, a 3PL) and stop it; correct stock and NetSuite by hand.",
        "blocker")


@rule
def cutoff_misses(data: AuditData) -> list[Finding]:
    rows = [e for e in data.period_exceptions if e.get("code") == "NOT_DISPATCHED_BY_CUTOFF"]
    return _finding(
        "orders.cutoff_misses", "orders and dispatch", "Orders that missed the dispatch cut-off",
        [e["entity_id"] for e in rows], owner_of("NOT_DISPATCHED_BY_CUTOFF"),
        "Promised delivery dates were missed: customer contacts and refunds follow.",
        CATALOGUE["NOT_DISPATCHED_BY_CUTOFF"].resolution, "warning")


def percentile(values: list[float], share: float) -> float | None:
    """Nearest-rank percentile (share in 0..1); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


def timing_summary(data: AuditData) -> dict[str, Any]:
    """Minutes from order to the warehouse (Clarus acknowledged) and to dispatch, p50 and p95."""
    summary: dict[str, Any] = {}
    for key in ("to_warehouse_min", "to_dispatch_min"):
        values = [float(t[key]) for t in data.timings if t.get(key) is not None]
        summary[key.removesuffix("_min")] = {
            "orders": len(values), "p50_min": percentile(values, 0.5), "p95_min": percentile(values, 0.95)}
    return summary


# ----------------------------------------------------------------------------- refunds


@rule
def unclassified_refunds(data: AuditData) -> list[Finding]:
    """Refunds that fit no, or several, kinds, grouped by what was seen (the pattern to add a rule for)."""
    patterns: Counter[str] = Counter()
    for refund in data.unclassified_refunds:
        patterns[", ".join(refund.get("reasons") or []) or "no signal"] += 1
    return _finding(
        "refunds.unclassified", "refunds", "Refund patterns the classifier does not recognise",
        [f"{p}: {n} refund(s)" for p, n in patterns.most_common()], owner_of("REFUND_UNCLASSIFIED"),
        "Neither stock nor finance postings were made for them: NetSuite and the warehouse are out of step.",
        "Post them by hand, then add a reason, note or tag rule to `refund_rules`.", "warning",
        count=sum(patterns.values()))


@rule
def returns_not_received(data: AuditData) -> list[Finding]:
    rows = _open(data, "RETURN_NOT_RECEIVED")
    return _finding(
        "refunds.returns_not_received", "refunds", "Returns refunded but never received",
        [e["entity_id"] for e in rows], owner_of("RETURN_NOT_RECEIVED"),
        "Money went back to customers but the goods did not come back to the warehouse.",
        CATALOGUE["RETURN_NOT_RECEIVED"].resolution, "warning")


# ----------------------------------------------------------------------------- configuration


def secret_problem(value: str | None) -> str | None:
    """Why a secret is not fit for production ("missing", "too short", "a known default"), or None."""
    if value is None or not value.strip():
        return "missing"
    text = value.strip()
    if text.lower() in KNOWN_DEFAULT_SECRETS or len(set(text)) == 1:
        return "a known default"
    if len(text) < MIN_SECRET_LENGTH:
        return f"shorter than {MIN_SECRET_LENGTH} characters"
    return None


@rule
def weak_secrets(data: AuditData) -> list[Finding]:
    """Missing or weak secrets (names only, never values)."""
    weak = [f"{name}: {problem}" for name in REQUIRED_SECRETS if (problem := secret_problem(data.secrets.get(name)))]
    findings = _finding(
        "configuration.weak_secrets", "configuration", "Missing or weak secrets", weak, "integration",
        "A missing secret stops a connection; a weak one lets anyone forge webhooks or call the systems as us.",
        f"Set each in the environment to a random value of at least {MIN_SECRET_LENGTH} characters, "
        "in the system and here alike.", "blocker")
    optional = [f"{name}: {problem}" for name in OPTIONAL_SECRETS if (problem := secret_problem(data.secrets.get(name)))]
    findings += _finding(
        "configuration.optional_secrets", "configuration", "Optional secrets missing or weak", optional, "integration",
        "NetSuite webhooks are off (changes arrive only by the reconciliation read) or can be forged.",
        "Set NETSUITE_WEBHOOK_SECRET to a random value and the same in NetSuite's signing script.", "warning")
    return findings


@rule
def owners_without_channel(data: AuditData) -> list[Finding]:
    """Exception owners nobody alerts, or alerted only in the log."""
    roles = sorted({t.owner for t in CATALOGUE.values()})
    silent = [r for r in roles if r not in data.policies.owners or not data.policies.owners[r].channels]
    log_only = [r for r in roles if r not in silent and all(c.kind == "log" for c in data.policies.owners[r].channels)]
    findings = _finding(
        "configuration.owners_without_channel", "configuration", "Owners without an alert channel", silent,
        "integration", "Their exceptions are raised but nobody is told: they breach their SLA silently.",
        "Give each owner a Slack, e-mail or webhook channel under `owners` in the policies file.", "blocker")
    findings += _finding(
        "configuration.owners_log_only", "configuration", "Owners alerted only in the log", log_only, "integration",
        "Someone must read the log to learn of their exceptions.",
        "Add a Slack, e-mail or webhook channel for each under `owners`.", "warning")
    return findings


@rule
def time_zone(data: AuditData) -> list[Finding]:
    zone = data.policies.tenant.timezone
    return _finding(
        "configuration.time_zone", "configuration", "Warehouse time zone left at UTC", [zone] if zone == "UTC" else [],
        "ops", "The dispatch cut-off is read in UTC: outside UTC, cut-off alerts fire an hour or more off.",
        "Set `tenant.timezone` to the warehouse's IANA zone (e.g. Europe/London).", "warning")


@rule
def retention(data: AuditData) -> list[Finding]:
    days = data.policies.timings.landing_retention_days
    items = []
    if days < MIN_LANDING_RETENTION_DAYS:
        items.append(f"landing_retention_days {days} < {MIN_LANDING_RETENTION_DAYS}: events cannot be replayed for long")
    if days > MAX_LANDING_RETENTION_DAYS:
        items.append(f"landing_retention_days {days} > {MAX_LANDING_RETENTION_DAYS}: personal data kept too long")
    return _finding(
        "configuration.retention", "configuration", "Retention of landed webhooks", items, "integration",
        "Too short: a missed event cannot be replayed. Too long: customers' personal data is kept past need.",
        "Set `timings.landing_retention_days` between those bounds.", "warning")


# ----------------------------------------------------------------------------- the report


def webhook_summary(data: AuditData) -> dict[str, Any] | None:
    """Which consumed topics the shop sends, and the receiver URLs they point at (None when not read)."""
    if data.webhook_subscriptions is None:
        return None
    consumed = [s for s in data.webhook_subscriptions if s.get("topic") in CONSUMED_SHOPIFY_TOPICS]
    return {"subscribed": sorted({str(s.get("topic")) for s in consumed}),
            "receiver_urls": sorted({str(s.get("uri")) for s in consumed})}


def run_rules(data: AuditData, rules: Iterable[RuleFunc] | None = None) -> list[Finding]:
    """Every rule's findings, blockers first (in rule order within each)."""
    found = [f for check in (RULES if rules is None else rules) for f in check(data)]
    return sorted(found, key=lambda f: 0 if f.severity == "blocker" else 1)


def build_report(data: AuditData, findings: list[Finding] | None = None) -> dict[str, Any]:
    """The audit as a JSON-able dict: period, verdict, findings and timings."""
    findings = run_rules(data) if findings is None else findings
    blockers = [f for f in findings if f.severity == "blocker"]
    warnings = [f for f in findings if f.severity == "warning"]
    return {
        "generated_at": data.now.isoformat(timespec="microseconds"),  # also the audit's identity in state
        "since": data.since.isoformat(timespec="seconds"),
        "verdict": "not ready: blockers" if blockers else ("ready, with warnings" if warnings else "ready"),
        "go_live": not blockers,
        "blockers": len(blockers),
        "warnings": len(warnings),
        "orders_in_period": len(data.orders),
        "timings": timing_summary(data),
        "webhooks": webhook_summary(data),
        "findings": [f.to_dict() for f in findings],
    }


def trend(current: Mapping[str, Any], previous: Mapping[str, Any] | None) -> dict[str, Any]:
    """Against the previous audit: blocker and warning deltas, checks new since then and checks resolved."""
    if not previous:
        return {"previous_at": None, "blockers_delta": None, "warnings_delta": None, "new": [], "resolved": []}
    now_checks = {f["check"]: f for f in current.get("findings", [])}
    then_checks = {f["check"]: f for f in previous.get("findings", [])}
    return {
        "previous_at": previous.get("generated_at"),
        "blockers_delta": current.get("blockers", 0) - previous.get("blockers", 0),
        "warnings_delta": current.get("warnings", 0) - previous.get("warnings", 0),
        "new": sorted(set(now_checks) - set(then_checks)),
        "resolved": sorted(set(then_checks) - set(now_checks)),
    }
