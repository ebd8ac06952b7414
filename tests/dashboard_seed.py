"""Fill a state DuckDB with realistic sample data for the dashboard tests.

Orders are built from our sample Shopify order (tests/fixtures, in the real 2025-07 shape), with
made-up customers, and walk their journey through Shopify, NetSuite and Clarus: landed webhooks,
order events, shipments with carrier tracking numbers, refunds, hourly stock snapshots and
what was set in Shopify, outbound write outcomes. Exceptions go through the real `clarus_pipelines.exception_queue` API, so their
rows and history are exactly what the pipelines would write. Deterministic for a given
`now` and `seed`; times are relative to `now` so ages and SLA breaches are meaningful.

Run `python tests/dashboard_seed.py PATH` to seed a file by hand (for a look at the dashboard).
"""

from __future__ import annotations

import copy
import json
import random
import sys
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from clarus_pipelines import data_quality, exception_queue
from clarus_pipelines.alerts import AlertSender, dispatch_alerts
from clarus_pipelines.domain.reconciliation import run_reconciliation
from clarus_pipelines.exception_queue import utcnow
from clarus_pipelines.settings import get_policies
from clarus_pipelines.state.store import StateStore

sys.path.insert(0, str(Path(__file__).resolve().parent))  # also when run as a script
from payloads import OURS  # noqa: E402

ORDER_FIXTURE = OURS.path("order_rest_2025_07")


def gtin_check_digit(body: str) -> str:
    total = sum(int(d) * (3 if i % 2 == 0 else 1) for i, d in enumerate(reversed(body)))
    return str((10 - total % 10) % 10)


# sku, description, GTIN-13 body (check digit added), unit price
ITEMS = [
    ("FLASK-05-GRN", "Trail flask 0.5 l, moss green", "503801742010", Decimal("45.00")),
    ("FLASK-05-RED", "Trail flask 0.5 l, ember red", "503801742011", Decimal("45.00")),
    ("FLASK-05-BLK", "Trail flask 0.5 l, slate black", "503801742012", Decimal("45.00")),
    ("000123", "Gift card sleeve", "501234567890", Decimal("4.50")),
    ("TEE-NAVY-M", "Organic tee, navy, M", "501234567891", Decimal("24.00")),
    ("MUG-ENAMEL-BLUE", "Enamel mug, blue", "501234567892", Decimal("12.00")),
]
PRICES = {sku: price for sku, _, _, price in ITEMS}
TITLES = {sku: title for sku, title, _, _ in ITEMS}
STRANDED_SKU = "OLD-STOCK-9"  # in Clarus, in no Shopify variant and not in the item master

CUSTOMERS = [
    ("Morwenna", "Tregarthen", "morwenna.tregarthen@example.org", "4 Chapel Row", "Penzance", "TR18 4AG"),
    ("Amara", "Okafor", "amara.okafor@example.com", "12 Mill Lane", "Leeds", "LS1 5AB"),
    ("Hamish", "Grant", "hamish.grant@example.org", "4 Harbour Row", "Aberdeen", "AB11 5BQ"),
    ("Priti", "Desai", "priti.desai@example.net", "77 Station Road", "Leicester", "LE1 3GH"),
    ("Cerys", "Morgan", "cerys.morgan@example.com", "9 Castle Street", "Cardiff", "CF10 1BS"),
    ("Tomasz", "Nowak", "tomasz.nowak@example.com", "31 Queen's Road", "Brighton", "BN1 3XE"),
]

# Shopify shipping line title/code -> (Clarus carrier, service, price); all mapped in config/sandbox.yaml
SHIP_METHODS = [
    ("Standard Shipping", "standard", "ROYAL_MAIL", "TRACKED_48", Decimal("3.95")),
    ("Express Shipping", "express", "DPD", "NEXT_DAY", Decimal("6.95")),
    ("Next Day", "next-day", "DHL", "EXPRESS", Decimal("9.95")),
]


@dataclass(frozen=True)
class JourneyOrder:
    """The fully dispatched order whose journey the tests follow."""

    order_id: str
    order_name: str
    clarus_goods_out_id: str
    shipment_id: str
    tracking_number: str
    customer_name: str
    customer_email: str
    events: list[tuple[str, str]]  # (system, state) in time order, from order_events


@dataclass(frozen=True)
class SeedSummary:
    path: Path
    now: datetime
    orders: int
    status_counts: dict[str, int]
    open_by_owner: dict[str, int]
    journey: JourneyOrder
    held_order_id: str  # ORDER_INCOMPLETE, open and past its SLA
    held_order_name: str
    mismatch_sku: str  # STOCK_MISMATCH, open
    stranded_sku: str
    part_shipped_order_name: str
    total_differs_order_name: str
    skus: list[str] = field(default_factory=list)
    report_dates: list[date] = field(default_factory=list)  # daily reconciliation reports written, oldest first
    report_paths: list[Path] = field(default_factory=list)
    reconciliation_mismatches: list[str] = field(default_factory=list)  # order names, as the reports found them
    failing_suite: str = ""  # data-quality suite recorded as failing


def _tracking(rng: random.Random, carrier: str) -> str:
    digits = lambda n: "".join(rng.choice("0123456789") for _ in range(n))  # noqa: E731
    if carrier == "ROYAL_MAIL":
        return "".join(rng.choice("ABCDEFGHJKLMNPRTUVWXY") for _ in range(2)) + digits(9) + "GB"
    if carrier == "DPD":
        return digits(14)
    return digits(10)


def _money(value: Decimal) -> str:
    return str(value.quantize(Decimal("0.01")))


def _payload(template: dict, *, order_id: str, name: str, number: int, created: datetime, customer: tuple,
             lines: list[tuple[str, str, int]], ship: tuple, total: Decimal, discount: Decimal,
             missing_zip: bool = False, ship_title: str | None = None) -> dict:
    first, last, email, street, city, postcode = customer
    order = copy.deepcopy(template)
    address = {
        "first_name": first, "last_name": last, "name": f"{first} {last}", "address1": street, "address2": "",
        "city": city, "zip": "" if missing_zip else postcode, "province": None, "province_code": None,
        "country": "United Kingdom", "country_code": "GB", "phone": "+44 7700 900" + str(100 + number % 900),
        "company": None, "latitude": None, "longitude": None,
    }
    item_template = template["line_items"][0]
    line_items = []
    for line_id, sku, qty in lines:
        item = copy.deepcopy(item_template)
        item.update({"id": int(line_id), "sku": sku, "quantity": qty, "price": _money(PRICES[sku]),
                     "title": TITLES[sku], "name": TITLES[sku], "variant_title": None})
        line_items.append(item)
    shipping_line = copy.deepcopy(template["shipping_lines"][0])
    shipping_line.update({"title": ship_title or ship[0], "code": ship_title.lower().replace(" ", "-") if ship_title else ship[1],
                          "price": _money(ship[4]), "discounted_price": _money(ship[4])})
    goods = sum((PRICES[sku] * qty for _, sku, qty in lines), Decimal(0))
    order.update({
        "id": int(order_id), "name": name, "number": number, "order_number": number, "email": email,
        "contact_email": email, "created_at": created.isoformat() + "Z", "updated_at": created.isoformat() + "Z",
        "currency": "GBP", "presentment_currency": "GBP", "financial_status": "paid", "fulfillment_status": None,
        "taxes_included": True, "total_tax": _money(total / 6), "total_discounts": _money(discount),
        "total_line_items_price": _money(goods), "subtotal_price": _money(goods - discount),
        "total_price": _money(total), "total_shipping_price_set": {"shop_money": {"amount": _money(ship[4]), "currency_code": "GBP"},
                                                                    "presentment_money": {"amount": _money(ship[4]), "currency_code": "GBP"}},
        "shipping_address": address, "billing_address": dict(address),
        "customer": {**order.get("customer", {}), "first_name": first, "last_name": last, "email": email},
        "line_items": line_items, "shipping_lines": [shipping_line], "fulfillments": [], "refunds": [],
    })
    return order


def seed_state(path: Path | str, *, now: datetime | None = None, orders: int = 36, seed: int = 7) -> SeedSummary:
    """Create (or top up) the state file at `path` with sample data; returns what was seeded."""
    rng = random.Random(seed)
    now = (now or utcnow()).replace(microsecond=0)
    template = json.loads(ORDER_FIXTURE.read_text(encoding="utf-8"))["order"]
    store = StateStore(path)

    order_rows, line_rows, event_rows, shipment_rows, shipment_line_rows = [], [], [], [], []
    binding_rows, write_rows, refund_rows, landed_rows = [], [], [], []
    status_counts: dict[str, int] = {}
    specials: dict[str, dict] = {}

    def event(order_id: str, at: datetime, system: str, state: str, cause: str, details: dict | None = None) -> None:
        if at <= now:
            event_rows.append((order_id, at, system, state, cause, json.dumps(details or {})))

    def landed(at: datetime, source: str, topic: str, entity_type: str, entity_id: str, parent_id: str | None,
               via: str = "webhook") -> None:
        landing_id = at.strftime("%Y%m%dT%H%M%S.%f") + f"Z-{len(landed_rows)}"
        landed_rows.append((landing_id, source, topic, True, entity_type, entity_id, parent_id, at, at,
                            f"wh-{len(landed_rows)}", f"{source}:{topic}:{entity_id}:{at.isoformat()}",
                            json.dumps({"id": entity_id}), via, at + timedelta(seconds=1)))

    for i in range(orders):
        number = 1001 + i
        name = f"#{number}"
        order_id = str(5_870_000_001_000 + number * 37)
        customer = CUSTOMERS[i % len(CUSTOMERS)]
        ship = SHIP_METHODS[rng.randrange(len(SHIP_METHODS))]
        skus = rng.sample([sku for sku, *_ in ITEMS], k=rng.randint(1, 3))
        lines = [(str(13_000_000_000 + number * 10 + n), sku, rng.randint(1, 2)) for n, sku in enumerate(skus)]
        # the journey order and the special cases get fixed ages; the rest spread over 40 hours
        fixed_age = {1001: 26 * 60, 1002: 7 * 60, 1003: 55, 1004: 9 * 60, 1005: 20 * 60, 1006: 6 * 60,
                     1007: 8 * 60, 1008: 30 * 60, 1010: 3 * 60}.get(number)
        created = now - timedelta(minutes=fixed_age if fixed_age else rng.randint(8, 40 * 60))
        if number == 1001:
            ship = SHIP_METHODS[0]
            lines = [(str(13_000_000_000 + number * 10), "FLASK-05-GRN", 1), (str(13_000_000_000 + number * 10 + 1), "000123", 2)]
        if number == 1005:
            lines = [(str(13_000_000_000 + number * 10), "TEE-NAVY-M", 2), (str(13_000_000_000 + number * 10 + 1), "MUG-ENAMEL-BLUE", 1)]
        goods = sum((PRICES[sku] * qty for _, sku, qty in lines), Decimal(0))
        discount = Decimal("10.00") if goods > 100 and number % 3 == 0 else Decimal(0)
        total = goods - discount + ship[4]
        recorded_total = total + Decimal("5.00") if number == 1008 else total

        age_h = (now - created).total_seconds() / 3600
        if number in (1002, 1003):
            status = "HELD"
        elif number == 1004:
            status = "CANCELLED"
        elif age_h >= 5 or number in (1005, 1006, 1007):
            status = "DISPATCHED"
        elif age_h >= 1:
            status = "ACKNOWLEDGED"
        elif age_h >= 0.2:
            status = "SENT_TO_WMS"
        else:
            status = "RECEIVED"
        status_counts[status] = status_counts.get(status, 0) + 1

        payload = _payload(
            template, order_id=order_id, name=name, number=number, created=created, customer=customer, lines=lines,
            ship=ship, total=recorded_total, discount=discount, missing_zip=number == 1002,
            ship_title="Pigeon Post" if number == 1003 else None,
        )
        hold_reasons = ["ORDER_INCOMPLETE"] if number == 1002 else ["SHIP_METHOD_UNMAPPED"] if number == 1003 else None
        clarus_status = {"DISPATCHED": 6, "ACKNOWLEDGED": 5, "SENT_TO_WMS": 1, "CANCELLED": 8}.get(status)
        goods_out_id = f"GO-{50000 + i}"
        order_rows.append((
            order_id, name, status, hold_reasons, "refunded" if number == 1004 else "paid", "GBP", recorded_total, "GB",
            payload["shipping_lines"][0]["title"], clarus_status, json.dumps(payload), f"sha256:{number:08x}",
            created, created + timedelta(seconds=4), now - timedelta(minutes=rng.randint(0, 5)),
        ))
        line_rows += [(order_id, line_id, sku, sku, qty, PRICES[sku], TITLES[sku]) for line_id, sku, qty in lines]

        t = created
        # order #1010's webhook never came: the reconciliation read found it
        landed(t + timedelta(seconds=2) if number != 1010 else t + timedelta(minutes=14), "shopify", "orders/create",
               "order", order_id, None, via="reconciliation" if number == 1010 else "webhook")
        event(order_id, t, "shopify", "ORDER_CREATED", "orders/create webhook", {"name": name, "total_price": _money(recorded_total)})
        event(order_id, t + timedelta(seconds=4), "pipeline", "RECEIVED", "webhook landed and verified")
        if status == "HELD":
            reason = hold_reasons[0]
            event(order_id, t + timedelta(seconds=9), "pipeline", "HELD", reason,
                  {"shipping_address": payload["shipping_address"]} if number == 1002 else {"shipping_line": "Pigeon Post"})
            continue
        event(order_id, t + timedelta(seconds=9), "pipeline", "READY", "complete: address, SKUs and ship method mapped")
        if status == "RECEIVED":
            continue
        so_id = str(9000 + number)
        event(order_id, t + timedelta(seconds=40), "netsuite", "SALES_ORDER_CREATED", f"salesOrder {so_id}", {"id": so_id})
        event(order_id, t + timedelta(seconds=70), "clarus", "GOODS_OUT_CREATED", "status 1 DRAFT", {"goods_out_id": goods_out_id})
        binding_rows.append(("order", order_id, goods_out_id, so_id, order_id, t + timedelta(seconds=70), t + timedelta(seconds=70)))
        write_rows.append((f"netsuite:sales_order:{name}", "netsuite", "create_sales_order", so_id, "done", 1, None,
                           t + timedelta(seconds=30), t + timedelta(seconds=40)))
        write_rows.append((f"clarus:goods_out:{name}", "clarus", "create_goods_out", goods_out_id, "done", 1, None,
                           t + timedelta(seconds=60), t + timedelta(seconds=70)))
        if status == "SENT_TO_WMS":
            continue
        event(order_id, t + timedelta(minutes=3), "clarus", "ACKNOWLEDGED", "goods out PENDING", {"goods_out_id": goods_out_id})
        event(order_id, t + timedelta(minutes=12), "netsuite", "SALES_ORDER_COMMITTED", "orderStatus B (pending fulfilment)")
        if status == "CANCELLED":
            event(order_id, t + timedelta(minutes=40), "shopify", "ORDER_CANCELLED", "orders/cancelled webhook: customer changed mind")
            event(order_id, t + timedelta(minutes=41), "clarus", "GOODS_OUT_CANCELLED", "status 8 CANCELLED")
            refund_rows.append((f"R{number}", order_id, "CANCELLATION", ["customer"], recorded_total, "POSTED",
                                json.dumps({"order_id": int(order_id), "note": "cancelled before dispatch"}), t + timedelta(minutes=40), t + timedelta(minutes=45)))
            continue
        event(order_id, t + timedelta(minutes=55), "clarus", "ALLOCATED", "status 5 ALLOCATED")
        if status == "ACKNOWLEDGED":
            continue

        dispatched = t + timedelta(hours=4, minutes=rng.randint(0, 50))  # every dispatched order is over 5 h old
        shipment_id = f"SHP-{70000 + i}"
        tracking = None if number == 1007 else _tracking(rng, ship[2])
        if number == 1006:
            state = "DISPATCHED_IN_WMS"  # NetSuite has not confirmed the sales order yet
        elif number == 1007:
            state = "ERP_ORDER_CONFIRMED"
        else:
            state = "CHANNEL_CONFIRMED"
        landed(dispatched + timedelta(seconds=20), "clarus", "goods_out/completed", "goods_out", goods_out_id, name)
        event(order_id, dispatched, "clarus", "COMPLETED", "goods out dispatched (status 6)",
              {"shipment_id": shipment_id, "tracking_number": tracking, "carrier": ship[2]})
        last = dispatched
        if state == "CHANNEL_CONFIRMED":
            event(order_id, dispatched + timedelta(minutes=4), "netsuite", "ITEM_FULFILMENT_POSTED", f"itemFulfillment IF-{number}")
            event(order_id, dispatched + timedelta(minutes=6), "shopify", "FULFILMENT_CREATED", f"tracking {tracking} ({ship[2]})")
            event(order_id, dispatched + timedelta(minutes=8), "shopify", "FULFILMENT_CONFIRMED", "fulfilment verified on the order")
            last = dispatched + timedelta(minutes=8)
            write_rows.append((f"netsuite:item_fulfilment:{shipment_id}", "netsuite", "transform_item_fulfilment", f"IF-{number}",
                               "done", 1, None, dispatched + timedelta(minutes=3), dispatched + timedelta(minutes=4)))
            write_rows.append((f"shopify:fulfilment:{shipment_id}", "shopify", "create_fulfillment", f"FF-{number}", "done",
                               1, None, dispatched + timedelta(minutes=5), dispatched + timedelta(minutes=6)))
        shipment_rows.append((
            shipment_id, order_id, goods_out_id, ship[2], ship[3], tracking,
            f"https://track.example/{ship[2].lower()}/{tracking}" if tracking else None, state,
            f"IF-{number}" if state == "CHANNEL_CONFIRMED" else None, f"FF-{number}" if state == "CHANNEL_CONFIRMED" else None,
            dispatched, last,
        ))
        shipped = [(sku, qty) for _, sku, qty in lines]
        if number == 1005:
            shipped = [("TEE-NAVY-M", 1)]  # short shipment: one tee and no mug left the warehouse
        shipment_line_rows += [(shipment_id, sku, qty) for sku, qty in shipped]
        specials[name] = {"order_id": order_id, "goods_out_id": goods_out_id, "shipment_id": shipment_id,
                          "tracking": tracking, "customer": customer}

    # connection trouble in the last day: NetSuite 503s retried, one Shopify write still pending
    for n in range(3):
        at = now - timedelta(hours=3, minutes=10 * n)
        write_rows.append((f"netsuite:sales_order:retry-{n}", "netsuite", "create_sales_order", None, "failed", 5,
                           "HTTP 503 from NetSuite after 5 attempts: SSS_REQUEST_LIMIT_EXCEEDED", at - timedelta(minutes=4), at))
    write_rows.append(("shopify:fulfilment:pending-1", "shopify", "create_fulfillment", None, "pending", 1, None,
                       now - timedelta(minutes=2), now - timedelta(minutes=2)))

    refund_rows += [
        ("R9001", specials["#1001"]["order_id"], "RETURN", ["size"], Decimal("4.50"), "AWAITING_RETURN",
         json.dumps({"note": "sleeve returned"}), now - timedelta(hours=5), now - timedelta(hours=5)),
        ("R9004", specials["#1005"]["order_id"], "RETURN", ["damaged"], Decimal("24.00"), "POSTED",
         json.dumps({"note": "tee returned"}), now - timedelta(hours=9), now - timedelta(hours=3)),
        ("R9002", specials["#1005"]["order_id"], "GOODWILL", ["late"], Decimal("5.00"), "POSTED",
         json.dumps({"note": "late delivery"}), now - timedelta(hours=4), now - timedelta(hours=4)),
        ("R9003", specials["#1008"]["order_id"], "UNCLASSIFIED", [], Decimal("7.25"), "NEEDS_REVIEW",
         json.dumps({"note": "partial refund, no line items, no reason"}), now - timedelta(hours=2), now - timedelta(hours=2)),
    ]

    item_rows = [
        (sku, sku, title, body + gtin_check_digit(body), f"NS-{n + 100}", f"P-{n + 1}", f"h{n}", now - timedelta(days=2, hours=n))
        for n, (sku, title, body, _) in enumerate(ITEMS)
    ]
    # the enamel mug's barcode has a wrong check digit
    item_rows[5] = item_rows[5][:3] + (ITEMS[5][2] + str((int(gtin_check_digit(ITEMS[5][2])) + 1) % 10),) + item_rows[5][4:]
    binding_rows += [("product", sku, f"P-{n + 1}", f"NS-{n + 100}", None, now - timedelta(days=2), now - timedelta(days=2))
                     for n, (sku, *_rest) in enumerate(ITEMS)]

    location = "655441491"
    levels = {sku: 40 + 7 * n - 5 * (1 + len(sku) % 2) - 2 for n, (sku, *_r) in enumerate(ITEMS)}  # latest available - buffer
    inventory_rows = [(f"V{n + 1}", f"II{n + 1}", sku, sku, price, now - timedelta(hours=1))
                      for n, (sku, _t, _b, price) in enumerate(ITEMS)]
    value_rows = [(sku, price, "shopify_variant_price", now - timedelta(hours=1)) for sku, _t, _b, price in ITEMS]
    value_rows.append((STRANDED_SKU, Decimal("9.99"), "shopify_variant_price", now - timedelta(days=40)))
    to_sell_rows = [(sku, location, qty + 2, 2, 0, qty, now - timedelta(minutes=50)) for sku, qty in levels.items()]
    push_rows = [(f"II{n + 1}", location, sku, levels[sku], now - timedelta(minutes=50), "run-1")
                 for n, (sku, *_r) in enumerate(ITEMS)]
    shopify_level_rows = [(f"II{n + 1}", location, levels[sku] + (9 if sku == "TEE-NAVY-M" else 0), now - timedelta(minutes=45))
                          for n, (sku, *_r) in enumerate(ITEMS)]
    rejection_rows = [(now.replace(second=0) - timedelta(minutes=15 - m), "shopify", "bad_signature", 1) for m in range(5)]
    finding_rows = [("shopify", "order", r[5], r[7].isoformat(), "orders/create", r[8], r[0])
                    for r in landed_rows if r[12] == "reconciliation"]

    stock_rows = []
    base = {sku: 40 + 7 * n for n, (sku, *_r) in enumerate(ITEMS)}
    base[STRANDED_SKU] = 18
    products = {sku: f"P-{n + 1}" for n, (sku, *_r) in enumerate(ITEMS)} | {STRANDED_SKU: "P-99"}
    hour_now = now.replace(minute=0, second=0)
    for back in range(5, -1, -1):
        hour = hour_now - timedelta(hours=back)
        for sku, start in base.items():
            sold = 0 if sku == STRANDED_SKU else (5 - back) * (1 + len(sku) % 2)
            stock_rows.append((hour, hour + timedelta(minutes=2), products[sku], sku, "1", "1",
                               max(start - sold, 0), 2 + back % 3, 1 if sku == "TEE-NAVY-M" else 0))

    with store.write() as con:
        con.executemany(
            "INSERT INTO items (sku, sku_raw, description, barcode, netsuite_item_id, clarus_product_id, content_hash, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)", item_rows)
        con.executemany(
            "INSERT INTO orders (order_id, order_name, status, hold_reasons, financial_status, currency, total_price,"
            " shipping_country, shipping_method, clarus_status, payload, payload_hash, created_at, received_at, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", order_rows)
        con.executemany(
            "INSERT INTO order_lines (order_id, line_id, sku, sku_raw, quantity, price, title) VALUES (?, ?, ?, ?, ?, ?, ?)",
            line_rows)
        con.executemany(
            "INSERT INTO order_events (order_id, occurred_at, system, state, cause, details) VALUES (?, ?, ?, ?, ?, ?)",
            sorted(event_rows, key=lambda r: r[1]))
        con.executemany(
            "INSERT INTO shipments (shipment_id, order_id, clarus_goods_out_id, carrier, service, tracking_number, tracking_url,"
            " state, netsuite_fulfilment_id, shopify_fulfilment_id, dispatched_at, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", shipment_rows)
        con.executemany("INSERT INTO shipment_lines (shipment_id, sku, quantity) VALUES (?, ?, ?)", shipment_line_rows)
        con.executemany(
            "INSERT INTO bindings (entity_type, our_id, clarus_id, netsuite_id, shopify_id, created_at, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)", binding_rows)
        con.executemany(
            "INSERT INTO outbound_writes (idempotency_key, system, operation, remote_id, status, attempts, last_error,"
            " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", write_rows)
        con.executemany(
            "INSERT INTO refunds (refund_id, order_id, kind, reasons, amount, state, payload, received_at, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", refund_rows)
        con.executemany("INSERT INTO order_holds (order_id, code, message, held_since) VALUES (?, ?, ?, ?)", [
            (r[0], r[3][0], "Shipping address has no postcode" if r[1] == "#1002"
             else "Shipping line 'Pigeon Post' matches no ship-method rule", r[12] + timedelta(seconds=9))
            for r in order_rows if r[2] == "HELD"])
        con.execute("UPDATE refunds SET currency = 'GBP'")
        con.execute("UPDATE refunds SET return_received_at = updated_at WHERE refund_id = 'R9004'")
        con.executemany(
            "INSERT INTO landed_events (landing_id, source, topic, known_topic, entity_type, entity_id, parent_id,"
            " entity_updated_at, received_at, webhook_id, dedupe_key, payload, via, ingested_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", sorted(landed_rows, key=lambda r: r[8]))
        # the flows have read everything landed; the dispatch flow saw each goods out when its webhook landed
        con.execute(
            "INSERT INTO event_consumers (consumer, last_seq, updated_at)"
            " SELECT c.consumer, (SELECT max(seq) FROM landed_events), ? FROM (VALUES ('orders'), ('dispatch'), ('refunds')) c(consumer)",
            [now - timedelta(minutes=1)])
        con.execute("UPDATE shipments SET first_seen_at = dispatched_at + INTERVAL 20 SECOND,"
                    " channel_fulfilled_at = CASE WHEN state = 'CHANNEL_CONFIRMED' THEN dispatched_at + INTERVAL 6 MINUTE END")
        con.executemany(
            "INSERT INTO reconciliation_findings (source, entity_type, entity_id, version, topic, found_at, landing_id)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)", finding_rows)
        con.executemany("INSERT INTO webhook_rejections (minute, source, reason, count) VALUES (?, ?, ?, ?)",
                        rejection_rows)
        con.executemany(
            "INSERT INTO stock_inventory_items (variant_id, inventory_item_id, sku, sku_raw, price, read_at)"
            " VALUES (?, ?, ?, ?, ?, ?)", inventory_rows)
        con.executemany("INSERT INTO stock_sku_values (sku, unit_value, source, seen_at) VALUES (?, ?, ?, ?)", value_rows)
        con.executemany(
            "INSERT INTO available_to_sell (sku, location_id, clarus_available, buffer, unsent, quantity, computed_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)", to_sell_rows)
        con.executemany(
            "INSERT INTO stock_pushes (inventory_item_id, location_id, sku, quantity, pushed_at, run_id)"
            " VALUES (?, ?, ?, ?, ?, ?)", push_rows)
        con.executemany(
            "INSERT INTO stock_shopify_levels (inventory_item_id, location_id, available, read_at) VALUES (?, ?, ?, ?)",
            shopify_level_rows)
        con.executemany(
            "INSERT INTO stock_snapshots (snapshot_hour, taken_at, clarus_product_id, sku, warehouse_id, account_id,"
            " available, allocated, on_hold) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", stock_rows)

        ago = lambda **kw: now - timedelta(**kw)  # noqa: E731
        held = next(r for r in order_rows if r[1] == "#1002")
        held_payload = json.loads(held[10])
        raise_ = exception_queue.raise_exception
        raise_(con, "ORDER_INCOMPLETE", held[0], "Shipping address has no postcode",
               {"missing": ["shipping_address.zip"], "shipping_address": held_payload["shipping_address"],
                "email": held_payload["email"]}, now=ago(hours=6, minutes=50))
        raise_(con, "ORDER_INCOMPLETE", held[0], "Shipping address has no postcode",
               {"missing": ["shipping_address.zip"], "shipping_address": held_payload["shipping_address"],
                "email": held_payload["email"]}, now=ago(minutes=5))
        pigeon = next(r for r in order_rows if r[1] == "#1003")
        raise_(con, "SHIP_METHOD_UNMAPPED", pigeon[0], "Shipping line 'Pigeon Post' matches no ship-method rule",
               {"shipping_line": {"title": "Pigeon Post", "code": "pigeon-post"}}, now=ago(minutes=50))
        exception_queue.acknowledge(con, "SHIP_METHOD_UNMAPPED", pigeon[0], "Priya Shah",
                                    "Asked the warehouse which service Pigeon Post should use", now=ago(minutes=30))
        raise_(con, "DISPATCH_AWAITING_ERP", specials["#1006"]["order_id"], "Dispatched 5 h ago; NetSuite sales order not committed",
               {"shipment_id": specials["#1006"]["shipment_id"], "netsuite_sales_order": "10006"}, now=ago(minutes=40))
        raise_(con, "TRACKING_MISSING", specials["#1007"]["shipment_id"], "Shipment dispatched by ROYAL_MAIL with no tracking number",
               {"order_id": specials["#1007"]["order_id"], "carrier": "ROYAL_MAIL"}, now=ago(hours=3))
        raise_(con, "REFUND_UNCLASSIFIED", "R9003", "Refund of 7.25 GBP with no line items, no restock and no mapped reason",
               {"order_id": specials["#1008"]["order_id"], "amount": "7.25"}, now=ago(hours=2))
        tee = levels["TEE-NAVY-M"]
        raise_(con, "STOCK_MISMATCH", "TEE-NAVY-M", f"Shopify shows {tee + 9}, we last set {tee} (tolerance 1)",
               {"shopify_available": tee + 9, "last_pushed": tee, "tolerance": 1, "location_id": location},
               now=ago(hours=1))
        raise_(con, "STRANDED_STOCK", STRANDED_SKU, "18 units in the warehouse; no Shopify variant maps to this SKU",
               {"available": 18, "warehouse_id": "1"}, now=ago(hours=30))
        bad_barcode = item_rows[5][3]
        raise_(con, "BARCODE_INVALID", "MUG-ENAMEL-BLUE", f"Barcode {bad_barcode} fails its GTIN-13 check digit",
               {"barcode": bad_barcode}, now=ago(days=2))
        raise_(con, "ORPHAN_ORDER", "GO-59999", "Clarus goods out GO-59999 has no Shopify order",
               {"clarus_reference": "MANUAL-0042"}, now=ago(hours=1, minutes=30))
        raise_(con, "WEBHOOK_REJECTED", "shopify", "5 webhooks with a bad HMAC signature in 10 minutes",
               {"rejected": 5, "window_minutes": 10}, now=ago(minutes=20))
        # history that has already cleared
        raise_(con, "CONNECTOR_FAILING", "netsuite", "NetSuite answered 503 to 12 calls in a row",
               {"status": 503}, now=ago(hours=30))
        exception_queue.clear_exception(con, "CONNECTOR_FAILING", "netsuite", now=ago(hours=29))
        raise_(con, "SKU_LEADING_ZEROS_LOST", "123", "Shopify variant SKU '123' matches item '000123' only with zeros restored",
               {"shopify_sku": "123", "master_sku": "000123"}, now=ago(hours=10))
        exception_queue.resolve(con, "SKU_LEADING_ZEROS_LOST", "123", "Sam Lee", "Re-entered as 000123 in Shopify",
                                now=ago(hours=8))
        late = next(r for r in order_rows if r[1] == "#1009")
        raise_(con, "ORDER_NOT_ACKNOWLEDGED", late[0], "No Clarus goods out id 15 min after sending",
               {}, now=ago(hours=20))
        exception_queue.clear_exception(con, "ORDER_NOT_ACKNOWLEDGED", late[0], now=ago(hours=19, minutes=40))

        journey_events = [(r[2], r[3]) for r in sorted(event_rows, key=lambda r: r[1]) if r[0] == specials["#1001"]["order_id"]]

    # the monitoring back end's own jobs: daily finance reports (which raise RECONCILIATION_MISMATCH),
    # alerts to the owners' channels (the default policies' log channels) and a data-quality result
    policies = get_policies()
    report_dates = sorted({(now - timedelta(days=1)).date(), now.date()})
    runs = [run_reconciliation(store, day, Path(path).parent / "reports", policies=policies, now=now)
            for day in report_dates]
    dispatch_alerts(store, policies, AlertSender(), now=now)
    # the live probes (sensors/probes.py): each system answered an authenticated read a few minutes ago
    from clarus_pipelines.domain.health import record_probe

    with store.write() as con:
        for system in ("shopify", "clarus", "netsuite"):
            record_probe(con, system, ok=True, at=now - timedelta(minutes=4), latency_ms=42.0)
    items_suite = next(s for s in data_quality.load_suites() if s.name == "items")
    with store.write() as con:
        data_quality.record_results(con, [data_quality.SuiteResult(items_suite, len(item_rows), [
            data_quality.ExpectationOutcome(
                "expect_column_values_to_be_valid_gtin", "barcodes are GTIN-8/12/13/14 with a correct check digit",
                ["barcode"], False, "warning", element_count=len(item_rows), unexpected_count=1,
                sample=[{"sku": "MUG-ENAMEL-BLUE", "barcode": bad_barcode}]),
            data_quality.ExpectationOutcome("expect_column_values_to_not_be_null", "every item has a SKU", ["sku"], True,
                                            "critical", element_count=len(item_rows), unexpected_count=0),
        ])], run_at=now - timedelta(minutes=20), run_id="seed")
        open_by_owner = dict(con.execute(
            "SELECT owner, count(*) FROM exceptions WHERE status <> 'resolved' GROUP BY owner").fetchall())
        mismatches = sorted({name for (name,) in con.execute(
            "SELECT o.order_name FROM exceptions e JOIN orders o ON o.order_id = e.entity_id"
            " WHERE e.code = 'RECONCILIATION_MISMATCH' AND e.status <> 'resolved'").fetchall()})

    j = specials["#1001"]
    first, last, email, *_ = j["customer"]
    return SeedSummary(
        path=Path(path), now=now, orders=orders, status_counts=status_counts, open_by_owner=open_by_owner,
        journey=JourneyOrder(j["order_id"], "#1001", j["goods_out_id"], j["shipment_id"], j["tracking"],
                             f"{first} {last}", email, journey_events),
        held_order_id=held[0], held_order_name="#1002", mismatch_sku="TEE-NAVY-M", stranded_sku=STRANDED_SKU,
        part_shipped_order_name="#1005", total_differs_order_name="#1008", skus=[sku for sku, *_r in ITEMS],
        report_dates=report_dates, report_paths=[run.path for run in runs], reconciliation_mismatches=mismatches,
        failing_suite=items_suite.name,
    )


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python tests/dashboard_seed.py STATE_DB_PATH")
    summary = seed_state(sys.argv[1])
    print(json.dumps({"path": str(summary.path), "orders": summary.orders, "status_counts": summary.status_counts,
                      "open_by_owner": summary.open_by_owner}))
