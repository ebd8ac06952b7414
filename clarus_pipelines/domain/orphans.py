"""ORPHAN_ORDER: an order in one system but not the other, found by comparison.

Two directions, one exception code (catalogue entity "order"):

- **In Shopify, not in Clarus** (entity: the Shopify order id): an order we received,
  not cancelled, not held (held orders have their own exceptions), with no Clarus goods
  out bound to it `timings.orphan_after_minutes` after it became sendable (created in
  Shopify, or released from a hold). When the Clarus goods outs were read, an order
  whose goods out Clarus does have (found by our reference or the Shopify order id in
  `external_system_reference1`) is not an orphan: it is merely not bound yet, which the
  orders flow and ORDER_NOT_ACKNOWLEDGED deal with.
- **In Clarus, no Shopify order** (entity: `goods_out:<Clarus id>`): a goods out of our
  account and goods-out type, not cancelled, older than `orphan_after_minutes`, that
  matches no order we know: not by binding, not by the Shopify order id in
  `external_system_reference1`, not by its reference (order name or replacement
  reference). It would ship goods nobody bought through the channel.

The Clarus side comes from a reconciliation read (`ClarusResource.iter_goods_outs`,
goods outs updated within a look-back window); `goods_outs_frame` flattens the records
to the few fields compared (no address or other personal data is kept). When the read
fails, only the Shopify side is evaluated and the Clarus-side exceptions are left as
they were (`OrphanReport.scope`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import duckdb
import polars as pl

from clarus_pipelines.exception_queue import Finding, utcnow
from clarus_pipelines.policies import Policies

CODE = "ORPHAN_ORDER"
GOODS_OUT_PREFIX = "goods_out:"
CANCELLED = "CANCELLED"
# statuses with their own exceptions, or that never go to Clarus
NOT_ORPHANABLE = ("HELD", "CANCELLED", "WMS_REJECTED")
EXPLAINED_BY = "ERP_REJECTED"  # an order NetSuite refuses already has its exception: no orphan alert on top

GOODS_OUT_SCHEMA = {
    "goods_out_id": pl.Utf8, "reference": pl.Utf8, "external_ref": pl.Utf8, "status": pl.Utf8,
    "goods_out_type": pl.Utf8, "account_id": pl.Utf8, "created_at": pl.Datetime("us"), "updated_at": pl.Datetime("us"),
}


def _naive_utc(value: Any) -> datetime | None:
    if value in (None, ""):
        return None
    if isinstance(value, datetime):
        moment = value
    else:
        text = str(value).strip().replace("Z", "+00:00")
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            return None
    return moment.astimezone(timezone.utc).replace(tzinfo=None) if moment.tzinfo else moment


def _text(value: Any) -> str | None:
    return None if value is None or value == "" else str(value)


def goods_outs_frame(records: Iterable[Mapping[str, Any]]) -> pl.DataFrame:
    """Clarus goods out records (GraphQL node shape) -> the fields the comparison needs."""
    rows = []
    for record in records:
        status = record.get("goods_out_status") if isinstance(record.get("goods_out_status"), Mapping) else {}
        account = record.get("account") if isinstance(record.get("account"), Mapping) else {}
        rows.append({
            "goods_out_id": _text(record.get("id")),
            "reference": _text(record.get("reference")),
            "external_ref": _text(record.get("external_system_reference1")),
            "status": _text(status.get("code") or status.get("name")),
            "goods_out_type": _text(record.get("goods_out_type")),
            "account_id": _text(account.get("id")),
            "created_at": _naive_utc(record.get("created_at")),
            "updated_at": _naive_utc(record.get("updated_at")),
        })
    return pl.DataFrame(rows, schema=GOODS_OUT_SCHEMA)


@dataclass
class OrphanReport:
    findings: list[Finding]
    scope: list[str]  # entity ids evaluated: sync ORPHAN_ORDER with these
    orders_checked: int
    goods_outs_read: int | None
    not_in_clarus: int = 0
    not_in_shopify: int | None = None
    unbound_in_clarus: list[str] = field(default_factory=list)  # order ids Clarus has but we have not bound


def _age(minutes: float) -> str:
    minutes = max(int(minutes), 0)
    if minutes < 120:
        return f"{minutes} min"
    hours = minutes // 60
    return f"{hours} h" if hours < 48 else f"{hours // 24} days"


def unbound_candidates(con: duckdb.DuckDBPyConnection, policies: Policies, *, now: datetime | None = None) -> list[dict[str, Any]]:
    """Orders past `orphan_after_minutes` with no Clarus goods out bound: the ones worth a
    targeted Clarus lookup when the window read did not bring their goods out."""
    now = now or utcnow()
    cur = con.execute(
        "WITH released AS (SELECT order_id, max(occurred_at) AS at FROM order_events"
        "   WHERE state IN ('RELEASED', 'READY') GROUP BY order_id)"
        " SELECT o.order_id, o.order_name, o.clarus_reference FROM orders o LEFT JOIN released r USING (order_id)"
        " LEFT JOIN bindings b ON b.entity_type = 'order' AND b.our_id = o.order_id"
        " WHERE o.status NOT IN (SELECT unnest(?::VARCHAR[])) AND o.shopify_cancelled_at IS NULL AND b.clarus_id IS NULL"
        "   AND NOT EXISTS (SELECT 1 FROM exceptions x WHERE x.code = ? AND x.entity_id = o.order_id AND x.status <> 'resolved')"
        "   AND greatest(coalesce(o.created_at, o.received_at), coalesce(r.at, o.received_at), o.received_at) <= ?"
        " ORDER BY o.order_id",
        [list(NOT_ORPHANABLE), EXPLAINED_BY, now - timedelta(minutes=policies.timings.orphan_after_minutes)],
    )
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row)) for row in cur.fetchall()]


def matched_in(frame: pl.DataFrame, candidate: Mapping[str, Any]) -> bool:
    """Whether the goods outs read include one for this order (by Shopify id or reference)."""
    references = [r for r in (candidate.get("order_name"), candidate.get("clarus_reference")) if r]
    return not frame.filter(
        (pl.col("external_ref") == candidate["order_id"]) | pl.col("reference").is_in(references)
    ).is_empty()


def _register(con: duckdb.DuckDBPyConnection, name: str, frame: pl.DataFrame) -> None:
    con.register(name, frame.to_arrow())


def orphan_orders(
    con: duckdb.DuckDBPyConnection,
    policies: Policies,
    goods_outs: pl.DataFrame | None,
    *,
    now: datetime | None = None,
) -> OrphanReport:
    """Both directions of ORPHAN_ORDER (see the module docstring). Reads only.

    `goods_outs`: the frame of `goods_outs_frame` from the Clarus read, or None when the
    read failed (then only orders without a binding are considered, and the Clarus
    side is not evaluated).
    """
    now = now or utcnow()
    after = timedelta(minutes=policies.timings.orphan_after_minutes)
    frame = goods_outs if goods_outs is not None else pl.DataFrame(schema=GOODS_OUT_SCHEMA)
    _register(con, "_orphan_goods_outs", frame.select(list(GOODS_OUT_SCHEMA)))
    try:
        shopify_side = con.execute(
            "WITH released AS (SELECT order_id, max(occurred_at) AS at FROM order_events"
            "   WHERE state IN ('RELEASED', 'READY') GROUP BY order_id),"
            " candidates AS ("
            "   SELECT o.order_id, o.order_name, o.status, o.clarus_reference,"
            "     greatest(coalesce(o.created_at, o.received_at), coalesce(r.at, o.received_at), o.received_at) AS since"
            "   FROM orders o LEFT JOIN released r USING (order_id)"
            "   LEFT JOIN bindings b ON b.entity_type = 'order' AND b.our_id = o.order_id"
            "   WHERE o.status NOT IN (SELECT unnest(?::VARCHAR[])) AND o.shopify_cancelled_at IS NULL"
            "     AND b.clarus_id IS NULL AND NOT EXISTS (SELECT 1 FROM exceptions x WHERE x.code = ?"
            "       AND x.entity_id = o.order_id AND x.status <> 'resolved'))"
            " SELECT c.order_id, c.order_name, c.status, c.since,"
            "   (SELECT min(g.goods_out_id) FROM _orphan_goods_outs g WHERE g.external_ref = c.order_id"
            "      OR g.reference = c.order_name OR g.reference = c.clarus_reference) AS clarus_goods_out"
            " FROM candidates c WHERE c.since <= ? ORDER BY c.since, c.order_id",
            [list(NOT_ORPHANABLE), EXPLAINED_BY, now - after],
        ).fetchall()
        checked = con.execute(
            "SELECT count(*) FROM orders WHERE status NOT IN (SELECT unnest(?::VARCHAR[]))", [list(NOT_ORPHANABLE)]
        ).fetchall()[0][0]
        clarus_side = []
        if goods_outs is not None:
            clarus_side = con.execute(
                "SELECT g.goods_out_id, g.reference, g.external_ref, g.status, g.created_at FROM _orphan_goods_outs g"
                " WHERE coalesce(g.status, '') <> ? AND coalesce(g.created_at, g.updated_at) <= ?"
                "   AND (g.goods_out_type IS NULL OR upper(g.goods_out_type) = upper(?))"
                "   AND (g.account_id IS NULL OR g.account_id = ?)"
                "   AND NOT EXISTS (SELECT 1 FROM bindings b WHERE b.entity_type = 'order' AND b.clarus_id = g.goods_out_id)"
                "   AND NOT EXISTS (SELECT 1 FROM orders o WHERE o.order_id = g.external_ref"
                "     OR o.order_name = g.reference OR o.clarus_reference = g.reference)"
                " ORDER BY g.created_at, g.goods_out_id",
                [CANCELLED, now - after, policies.tenant.goods_out_type, str(policies.tenant.account_id)],
            ).fetchall()
    finally:
        con.unregister("_orphan_goods_outs")

    findings: list[Finding] = []
    unbound: list[str] = []
    for order_id, name, status, since, goods_out_id in shopify_side:
        if goods_out_id is not None:
            unbound.append(order_id)
            continue
        minutes = (now - since).total_seconds() / 60
        where = "no Clarus goods out found in the read" if goods_outs is not None else "no Clarus goods out bound"
        findings.append(Finding(
            order_id,
            f"order {name or order_id} ({status}) has been in Shopify {_age(minutes)} and is not in Clarus ({where})",
            {"order_name": name, "status": status, "since": since, "direction": "not_in_clarus",
             "orphan_after_minutes": policies.timings.orphan_after_minutes, "clarus_read": goods_outs is not None},
        ))
    not_in_clarus = len(findings)
    for goods_out_id, reference, external_ref, status, created_at in clarus_side:
        findings.append(Finding(
            GOODS_OUT_PREFIX + goods_out_id,
            f"Clarus goods out {goods_out_id} (reference {reference or '-'}, {status or 'status unknown'}) matches no"
            " Shopify order we know",
            {"goods_out_id": goods_out_id, "reference": reference, "external_system_reference1": external_ref,
             "status": status, "created_at": created_at, "direction": "not_in_shopify"},
        ))
    open_now = [r[0] for r in con.execute(
        "SELECT entity_id FROM exceptions WHERE code = ? AND status <> 'resolved'", [CODE]
    ).fetchall()]
    evaluated_sides = [e for e in open_now if not e.startswith(GOODS_OUT_PREFIX) or goods_outs is not None]
    scope = sorted({f.entity_id for f in findings} | set(evaluated_sides))
    return OrphanReport(
        findings, scope, int(checked), None if goods_outs is None else frame.height, not_in_clarus,
        None if goods_outs is None else len(clarus_side), unbound,
    )


def record_check(con: duckdb.DuckDBPyConnection, report: OrphanReport, *, now: datetime, clarus_error: str | None = None,
                 run_id: str | None = None) -> None:
    con.execute(
        "INSERT OR REPLACE INTO orphan_checks (run_at, orders_checked, goods_outs_read, not_in_clarus, not_in_shopify,"
        " clarus_error, run_id) VALUES (?, ?, ?, ?, ?, ?, ?)",
        [now, report.orders_checked, report.goods_outs_read, report.not_in_clarus, report.not_in_shopify,
         clarus_error, run_id],
    )
