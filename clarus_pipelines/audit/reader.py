"""Gathers what the audit's rules look at: read-only calls to Clarus, Shopify and NetSuite, and our state.

Nothing here writes to another system. A system that cannot be read is recorded (its
error in `connections` and `read_errors`) and the audit carries on with the others.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

import duckdb

from clarus_pipelines.audit.findings import AuditData, OPTIONAL_SECRETS, REQUIRED_SECRETS
from clarus_pipelines.connectors.clarus import ClarusResource
from clarus_pipelines.connectors.netsuite import NetSuiteResource
from clarus_pipelines.connectors.shopify import ShopifyResource
from clarus_pipelines.exception_queue import open_exceptions
from clarus_pipelines.settings import Settings
from clarus_pipelines.policies import Policies
from clarus_pipelines.state import StateStore

log = logging.getLogger(__name__)


def _error(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]


def read_systems(data: AuditData, *, clarus: ClarusResource | None, shopify: ShopifyResource | None,
                 netsuite: NetSuiteResource | None) -> None:
    """Fill the systems' part of `data` through the connectors (reads only)."""

    def attempt(system: str, read: Callable[[], Any]) -> Any:
        if system in data.read_errors:
            return None
        try:
            return read()
        except Exception as exc:  # one unreadable system must not stop the audit of the others
            log.warning("audit: reading %s failed: %s", system, _error(exc))
            data.read_errors[system] = _error(exc)
            data.connections[system] = _error(exc)
            return None

    for system, client in (("netsuite", netsuite), ("shopify", shopify), ("clarus", clarus)):
        if client is None:
            data.read_errors[system] = "not configured"
            data.connections[system] = "not configured"

    if netsuite is not None:
        items = attempt("netsuite", lambda: list(netsuite.iter_inventory_items())) or []
        data.netsuite_items = [
            {"id": str(i.get("id")), "sku_raw": i.get("itemId") if isinstance(i.get("itemId"), str) or i.get("itemId") is None
             else str(i.get("itemId")), "barcode": i.get("upcCode"), "inactive": bool(i.get("isInactive") or False)}
            for i in items
        ]
    if shopify is not None:
        variants = attempt("shopify", lambda: list(shopify.iter_variants())) or []
        data.shopify_variants = [
            {"variant_id": str(v.get("id")), "sku_raw": v.get("sku") or None, "barcode": v.get("barcode"),
             "title": " - ".join(t for t in (v.get("product_title"), v.get("title")) if t and t != "Default Title")}
            for v in variants
        ]
        data.shopify_locations = attempt("shopify", shopify.list_locations) or []
        data.webhook_subscriptions = attempt("shopify", shopify.list_webhook_subscriptions)
    if clarus is not None:
        attempt("clarus", clarus.check_connection)
        products = attempt("clarus", lambda: list(clarus.iter_products())) or []
        data.clarus_products = [{"id": str(p.get("id")), "code": p.get("code"), "barcode": p.get("barcode")}
                                for p in products]
        balances = attempt("clarus", lambda: list(clarus.iter_stock_balances())) or []
        data.clarus_balances = [
            {"code": (b.get("product") or {}).get("code"), "warehouse_id": str((b.get("warehouse") or {}).get("id") or ""),
             "available": b.get("available")}
            for b in balances
        ]
    for system in ("netsuite", "shopify", "clarus"):
        data.connections.setdefault(system, None)


def _rows(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any]) -> list[dict[str, Any]]:
    cur = con.execute(sql, params)
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row)) for row in cur.fetchall()]


def read_state(data: AuditData, con: duckdb.DuckDBPyConnection) -> None:
    """Fill the state's part of `data`: orders, holds, exceptions, refunds and timings of the period."""
    since = [data.since]
    data.orders = _rows(con, (
        "SELECT order_id, order_name, created_at,"
        " json_extract_string(payload, '$.shipping_lines[0].code') AS shipping_code,"
        " json_extract_string(payload, '$.shipping_lines[0].title') AS shipping_title"
        " FROM orders WHERE received_at >= ? ORDER BY received_at"), since)
    data.ordered_skus = dict(con.execute(
        "SELECT l.sku_raw, count(DISTINCT l.order_id) FROM order_lines l JOIN orders o USING (order_id)"
        " WHERE o.received_at >= ? AND l.sku_raw IS NOT NULL GROUP BY l.sku_raw", since).fetchall())
    data.held_orders = _rows(con, (
        "SELECT h.order_id, o.order_name, h.code, h.message, h.held_since FROM order_holds h"
        " JOIN orders o USING (order_id) WHERE o.status = 'HELD' ORDER BY h.held_since, h.order_id"), [])
    data.open_exceptions = open_exceptions(con)
    data.period_exceptions = _rows(con, (
        "SELECT code, entity_id, owner, status, message, first_seen FROM exceptions WHERE first_seen >= ?"
        " ORDER BY first_seen"), since)
    data.unclassified_refunds = _rows(con, (
        "SELECT refund_id, order_id, reasons FROM refunds WHERE kind = 'UNCLASSIFIED' AND received_at >= ?"
        " ORDER BY received_at"), since)
    data.timings = _rows(con, (
        "WITH acked AS (SELECT order_id, min(occurred_at) AS at FROM order_events WHERE state = 'ACKNOWLEDGED'"
        "  GROUP BY order_id),"
        " shipped AS (SELECT order_id, min(dispatched_at) AS at FROM shipments GROUP BY order_id)"
        " SELECT o.order_id,"
        " date_diff('second', coalesce(o.created_at, o.received_at), a.at) / 60.0 AS to_warehouse_min,"
        " date_diff('second', coalesce(o.created_at, o.received_at), s.at) / 60.0 AS to_dispatch_min"
        " FROM orders o LEFT JOIN acked a USING (order_id) LEFT JOIN shipped s USING (order_id)"
        " WHERE o.received_at >= ?"), since)


def secrets_from(settings: Settings) -> dict[str, str | None]:
    """The secrets' values by environment name, for the weak-secret rule (never reported)."""
    values: dict[str, str | None] = {}
    for name in (*REQUIRED_SECRETS, *OPTIONAL_SECRETS):
        value = getattr(settings, name.lower(), None)
        values[name] = value.get_secret_value() if hasattr(value, "get_secret_value") else value
    return values


def gather(
    store: StateStore,
    policies: Policies,
    *,
    now: datetime,
    since: datetime,
    clarus: ClarusResource | None,
    shopify: ShopifyResource | None,
    netsuite: NetSuiteResource | None,
    settings: Settings | None = None,
    receiver_url: str | None = None,
) -> AuditData:
    """Everything the rules need: the systems first (no state lock held), then one short state read."""
    data = AuditData(now=now, since=since, policies=policies, receiver_url=receiver_url,
                     secrets=secrets_from(settings or Settings()))
    read_systems(data, clarus=clarus, shopify=shopify, netsuite=netsuite)
    with store.read() as con:
        read_state(data, con)
    return data
