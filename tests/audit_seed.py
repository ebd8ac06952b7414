"""Two stored integration audits (a week apart) in a state file, for the dashboard tests.

Built by the real rules (`clarus_pipelines.audit.findings`) from hand-made data, so the
page shows what an audit really reports: blockers and warnings with owners, and a trend.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from clarus_pipelines.audit.findings import AuditData, build_report, trend
from clarus_pipelines.audit.history import save_report
from clarus_pipelines.audit.render import to_markdown
from clarus_pipelines.exception_queue import utcnow
from clarus_pipelines.settings import SANDBOX_POLICIES, load_policies
from clarus_pipelines.state import StateStore

SECRETS = {name: f"{name.lower()}-5d1c9a8e7f" for name in (
    "CLARUS_CLIENT_SECRET", "CLARUS_WEBHOOK_TOKEN", "SHOPIFY_ACCESS_TOKEN", "SHOPIFY_WEBHOOK_SECRET",
    "NETSUITE_CONSUMER_SECRET", "NETSUITE_TOKEN_SECRET", "NETSUITE_WEBHOOK_SECRET")}


@dataclass
class AuditSeed:
    latest: dict
    previous: dict


def _data(now: datetime, *, unmapped_orders: int, weak_secret: bool = False) -> AuditData:
    policies = load_policies(SANDBOX_POLICIES)
    return AuditData(
        now=now, since=now - timedelta(days=30), policies=policies,
        secrets={**SECRETS, **({"SHOPIFY_WEBHOOK_SECRET": "changeme"} if weak_secret else {})},
        netsuite_items=[{"id": "201", "sku_raw": "000456", "barcode": None, "inactive": False},
                        {"id": "202", "sku_raw": "TEE-NAV-S", "barcode": "5012345678900", "inactive": False}],
        shopify_variants=[{"variant_id": "1", "sku_raw": "456", "barcode": None, "title": "Everyday Socks - Navy"},
                          {"variant_id": "2", "sku_raw": "TEE-NAV-S", "barcode": None, "title": "Tee - Navy / S"}],
        clarus_products=[{"id": "1", "code": "000456", "barcode": None},
                         {"id": "2", "code": "TEE-NAV-S", "barcode": "5012345678900"}],
        shopify_locations=[{"id": loc, "name": "Clarus DC", "active": True} for loc in policies.tenant.shopify_location_ids],
        webhook_subscriptions=[{"id": "1", "topic": t, "uri": "https://rx.example/webhooks/shopify"}
                               for t in ("orders/create", "orders/updated", "orders/edited", "orders/cancelled",
                                         "refunds/create")],
        connections={"clarus": None, "shopify": None, "netsuite": None},
        orders=[{"order_id": str(i), "order_name": f"#{1001 + i}", "shipping_code": "SAT-DEL",
                 "shipping_title": "Saturday Delivery"} for i in range(unmapped_orders)]
        + [{"order_id": "90", "order_name": "#1090", "shipping_code": "standard", "shipping_title": "Standard Shipping"}],
        timings=[{"order_id": str(i), "to_warehouse_min": 3.0 + i, "to_dispatch_min": 600.0 + 30 * i} for i in range(10)],
    )


def seed_audits(path: Path | str, *, now: datetime | None = None) -> AuditSeed:
    """Store last week's audit (3 unmapped orders, a default webhook secret) and today's (2 unmapped orders),
    with today's trend against last week's."""
    now = now or utcnow()
    previous = build_report(_data(now - timedelta(days=7), unmapped_orders=3, weak_secret=True))
    previous["trend"] = trend(previous, None)
    latest = build_report(_data(now, unmapped_orders=2))
    latest["trend"] = trend(latest, previous)
    with StateStore(path).write() as con:
        for report, origin in ((previous, "dagster"), (latest, "cli")):
            save_report(con, report, to_markdown(report), origin=origin)
    return AuditSeed(latest=latest, previous=previous)
