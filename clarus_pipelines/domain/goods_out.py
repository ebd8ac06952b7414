"""The Clarus goods out for a Shopify order, built per Clarus's OpenAPI spec.

`build_goods_outs` maps a whole batch of validated orders to JSON:API bodies at once
(polars structs); `body_dicts` hands them out as plain dicts for the connector. A body
carries `goods_out_type`, the stock `account_id` and `warehouse_id`, our `reference`
(the Shopify order name, or a replacement reference such as "#1001-R1"), the expected
dispatch date from the cut-off rule, one `lines_changes` ADD per shippable Shopify line
with the Clarus product id (Shopify line id in the line's `external_system_reference1`),
the delivery address in `relationships.address` with its ISO-2 country, and the Shopify
order id in `external_system_reference1`.

For an order that already exists in Clarus, `diff_lines` compares what was sent with the
order as it is now and `lines_changes_for` turns the difference into ADD/UPDATE/DESTROY.

`cancel_or_reduce` is the one place a goods out is cancelled or shortened (a Shopify
cancellation seen by the order-changes step, a cancellation refund seen by the refund
flow); it answers with a typed outcome: `Cancelled`, `Reduced`, `AlreadyDispatched`,
`NotFound` or `Refused`. What counts as dispatched is `GoodsOutStatus.is_dispatched`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone, tzinfo
from typing import Any

import polars as pl

from clarus_pipelines.connectors.clarus_model import (
    GoodsOutStatus,
    clarus_datetime,
    goods_out_line_add,
    goods_out_line_destroy,
    goods_out_line_update,
)
from clarus_pipelines.domain.orders import GB_FORMAT_COUNTRIES, OrderVerdicts
from clarus_pipelines.domain.ports import ConnectorError, Warehouse, refusal_text
from clarus_pipelines.policies import Policies

CARRIERS_SCHEMA = {"carrier": pl.Utf8, "service": pl.Utf8, "carrier_id": pl.Int64, "carrier_service_id": pl.Int64}
SENT_LINES_SCHEMA = {"line_id": pl.Utf8, "clarus_line_id": pl.Utf8, "clarus_product_id": pl.Utf8, "quantity": pl.Int64}
_EMAIL = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"


# ----------------------------------------------------------------------- dispatch date


def dispatch_day(now: datetime, cutoff: time, tz: tzinfo = timezone.utc) -> date:
    """The day an order released at `now` is due out: today before the cut-off, else the
    next working day; weekends are skipped. `now` is read in the warehouse's time zone."""
    if now.tzinfo is None:
        now = now.replace(tzinfo=timezone.utc)
    local = now.astimezone(tz)
    day = local.date()
    if local.time() >= cutoff:
        day += timedelta(days=1)
    while day.weekday() >= 5:  # Saturday, Sunday
        day += timedelta(days=1)
    return day


def expected_dispatch(now: datetime, cutoff: time, tz: tzinfo = timezone.utc) -> datetime:
    """The expected date of dispatch: the dispatch day at the cut-off time, in UTC."""
    local = datetime.combine(dispatch_day(now, cutoff, tz), cutoff, tzinfo=tz)
    return local.astimezone(timezone.utc)


# ------------------------------------------------------------------------ batch build


def carriers_frame(carriers: pl.DataFrame | Mapping[tuple[str, str], tuple[Any, Any]] | None) -> pl.DataFrame:
    """(carrier, service) codes -> Clarus integer ids, as a frame (empty when unknown)."""
    if carriers is None:
        return pl.DataFrame(schema=CARRIERS_SCHEMA)
    if isinstance(carriers, pl.DataFrame):
        return carriers.select(
            pl.col("carrier").cast(pl.Utf8), pl.col("service").cast(pl.Utf8),
            pl.col("carrier_id").cast(pl.Int64), pl.col("carrier_service_id").cast(pl.Int64),
        ).unique(["carrier", "service"], keep="first", maintain_order=True)
    rows = [
        {"carrier": c, "service": s, "carrier_id": int(cid) if cid is not None else None,
         "carrier_service_id": int(sid) if sid is not None else None}
        for (c, s), (cid, sid) in carriers.items()
    ]
    return pl.DataFrame(rows, schema=CARRIERS_SCHEMA)


def _postcode() -> pl.Expr:
    compact = pl.col("ship_zip").str.to_uppercase().str.replace_all(r"\s+", "")
    gb = pl.concat_str([compact.str.slice(0, compact.str.len_chars() - 3), pl.lit(" "), compact.str.slice(-3)])
    return pl.when(pl.col("ship_country_code").is_in(GB_FORMAT_COUNTRIES)).then(gb).otherwise(pl.col("ship_zip"))


def build_goods_outs(
    verdicts: OrderVerdicts,
    *,
    policies: Policies,
    now: datetime,
    carriers: pl.DataFrame | Mapping[tuple[str, str], tuple[Any, Any]] | None = None,
    references: Mapping[str, str] | None = None,
    tz: tzinfo | None = None,
) -> pl.DataFrame:
    """Goods out bodies for the ready orders of a batch.

    Returns `order_id`, `reference`, `body` (struct) and `body_json` (text). Orders that
    are held get no body. `references` overrides the reference per order id (replacement
    orders); otherwise it is the Shopify order name. The cut-off is read in `tz`, by
    default the tenant's time zone.
    """
    tenant = policies.tenant
    dispatch_at = clarus_datetime(expected_dispatch(now, policies.timings.dispatch_cutoff, tz or tenant.tzinfo))
    ready = verdicts.orders.filter(pl.col("status") == "ready")
    if references:
        overrides = pl.DataFrame(
            {"order_id": list(references), "_ref": list(references.values())}, schema={"order_id": pl.Utf8, "_ref": pl.Utf8}
        )
        ready = ready.join(overrides, on="order_id", how="left", maintain_order="left")
    else:
        ready = ready.with_columns(pl.lit(None, dtype=pl.Utf8).alias("_ref"))
    ready = ready.with_columns(pl.coalesce("_ref", "order_name").alias("reference")).join(
        carriers_frame(carriers), on=["carrier", "service"], how="left", maintain_order="left"
    )

    line_change = pl.struct(
        pl.lit("ADD").alias("type"),
        pl.struct(
            pl.col("clarus_product_id").cast(pl.Int64).alias("product_id"),
            pl.col("quantity").alias("order_quantity"),
            pl.col("line_id").alias("external_system_reference1"),
            pl.col("sku").alias("alt_product_code"),
        ).alias("attributes"),
    )
    changes = (
        verdicts.lines.filter(pl.col("ships"))
        .join(ready.select("order_id"), on="order_id", how="semi")
        .sort("order_id", "line_index")
        .group_by("order_id", maintain_order=True)
        .agg(line_change.alias("lines_changes"))
    )
    ready = ready.join(changes, on="order_id", how="left", maintain_order="left")

    email = pl.col("email").str.strip_chars()
    phone = pl.coalesce(pl.col("ship_phone"), pl.col("phone"))
    attributes = pl.struct(
        pl.lit(tenant.goods_out_type.lower()).alias("goods_out_type"),
        pl.lit(tenant.account_id, dtype=pl.Int64).alias("account_id"),
        pl.lit(tenant.warehouse_id, dtype=pl.Int64).alias("warehouse_id"),
        pl.col("reference"),
        pl.lit(dispatch_at).alias("expected_date_of_dispatch"),
        pl.col("order_id").alias("external_system_reference1"),
        pl.col("carrier_id"),
        pl.col("carrier_service_id"),
        pl.col("lines_changes"),
    )
    address = pl.struct(
        pl.lit("addresses").alias("type"),
        pl.struct(
            pl.col("ship_name").alias("name"),
            pl.col("ship_address1").alias("address_1"),
            pl.col("ship_address2").alias("address_2"),
            pl.col("ship_city").alias("address_3"),
            pl.col("ship_province").alias("address_4"),
            pl.col("ship_company").alias("address_5"),
            _postcode().alias("postcode"),
            pl.col("ship_country_code").alias("country_code"),
            pl.when(email.str.contains(_EMAIL) & (email.str.len_chars() <= 254)).then(email).alias("email_address"),
            pl.when(phone.str.len_chars() <= 50).then(phone).alias("phone_number"),
        ).alias("attributes"),
    )
    body = pl.struct(
        pl.struct(
            pl.lit("goods_outs").alias("type"),
            attributes.alias("attributes"),
            pl.struct(pl.struct(address.alias("data")).alias("address")).alias("relationships"),
        ).alias("data")
    )
    out = ready.select("order_id", "reference", body.alias("body"))
    return out.with_columns(pl.col("body").struct.json_encode().alias("body_json"))


def prune_nulls(value: Any) -> Any:
    """A copy without null members (Clarus treats an absent field as "not given")."""
    if isinstance(value, dict):
        return {k: prune_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [prune_nulls(v) for v in value]
    return value


def body_dicts(goods_outs: pl.DataFrame) -> dict[str, dict]:
    """order_id -> goods out body as a plain dict (nulls removed)."""
    return {
        order_id: prune_nulls(body)
        for order_id, body in zip(goods_outs["order_id"].to_list(), goods_outs["body"].to_list())
    }


# ----------------------------------------------------------------------------- edits


def sent_lines_frame(rows: list[Mapping[str, Any]] | pl.DataFrame) -> pl.DataFrame:
    if isinstance(rows, pl.DataFrame):
        return rows.select([pl.col(c).cast(t) for c, t in SENT_LINES_SCHEMA.items()])
    return pl.DataFrame([{k: r.get(k) for k in SENT_LINES_SCHEMA} for r in rows], schema=SENT_LINES_SCHEMA)


# Clarus applies changes in order: remove before adding, so a replaced line never doubles up.
_CHANGE_ORDER = {"DESTROY": 0, "UPDATE": 1, "ADD": 2}


def diff_lines(sent: pl.DataFrame, current: pl.DataFrame) -> pl.DataFrame:
    """What changed between the lines Clarus has and the order's lines now.

    `sent`: `line_id`, `clarus_line_id`, `clarus_product_id`, `quantity` (see
    `sent_lines_frame`). `current`: the validated lines of one order (`line_id`, `sku`,
    `clarus_product_id`, `quantity`, `ships`). Returns one row per changed line with
    `change` ADD | UPDATE | DESTROY, the old and new quantity and product.
    """
    now = current.filter(pl.col("ships")).select(
        "line_id", "sku", pl.col("clarus_product_id").alias("new_product_id"), pl.col("quantity").alias("new_quantity")
    )
    was = sent_lines_frame(sent).select(
        "line_id", "clarus_line_id", pl.col("clarus_product_id").alias("old_product_id"), pl.col("quantity").alias("old_quantity")
    )
    both = was.join(now, on="line_id", how="full", coalesce=True, maintain_order="left_right")
    changed_product = pl.col("old_product_id") != pl.col("new_product_id")
    diff = both.with_columns(
        pl.when(pl.col("old_quantity").is_null())
        .then(pl.lit("ADD"))
        .when(pl.col("new_quantity").is_null())
        .then(pl.lit("DESTROY"))
        .when(changed_product)
        .then(pl.lit("REPLACE"))
        .when(pl.col("old_quantity") != pl.col("new_quantity"))
        .then(pl.lit("UPDATE"))
        .otherwise(None)
        .alias("change")
    ).drop_nulls("change")
    # A line whose product changed is removed and added again: Clarus lines keep their product.
    replaced = diff.filter(pl.col("change") == "REPLACE")
    return pl.concat(
        [
            diff.filter(pl.col("change") != "REPLACE"),
            replaced.with_columns(pl.lit("DESTROY").alias("change")),
            replaced.with_columns(pl.lit("ADD").alias("change"), pl.lit(None, dtype=pl.Utf8).alias("clarus_line_id")),
        ]
    ).select(
        "change", "line_id", "sku", "clarus_line_id", "old_product_id", "new_product_id", "old_quantity", "new_quantity"
    ).sort(pl.col("change").replace_strict(_CHANGE_ORDER, return_dtype=pl.Int8), "line_id")


def lines_changes_for(diff: pl.DataFrame) -> list[dict]:
    """`lines_changes` entries for a diff; raises ValueError when a Clarus line id is unknown."""
    changes: list[dict] = []
    for row in diff.iter_rows(named=True):
        if row["change"] == "ADD":
            changes.append(
                goods_out_line_add(
                    row["new_product_id"], row["new_quantity"],
                    external_system_reference1=row["line_id"], alt_product_code=row["sku"],
                )
            )
            continue
        if not row["clarus_line_id"]:
            raise ValueError(f"Clarus line id of Shopify line {row['line_id']} is unknown; cannot {row['change']} it")
        if row["change"] == "UPDATE":
            changes.append(goods_out_line_update(row["clarus_line_id"], order_quantity=row["new_quantity"]))
        else:
            changes.append(goods_out_line_destroy(row["clarus_line_id"]))
    return changes


def describe_diff(diff: pl.DataFrame, old_body: Mapping[str, Any] | None, new_body: Mapping[str, Any] | None) -> dict:
    """A readable difference for ORDER_EDIT_NEEDS_REVIEW: lines and changed address fields."""
    lines = [
        {"change": r["change"], "line_id": r["line_id"], "sku": r["sku"], "was": r["old_quantity"], "now": r["new_quantity"]}
        for r in diff.iter_rows(named=True)
    ]
    return {"lines": lines, "address_fields_changed": address_changes(old_body, new_body), "carrier_changed": carrier_changed(old_body, new_body)}


def _address(body: Mapping[str, Any]) -> dict:
    try:
        return dict(body["data"]["relationships"]["address"]["data"]["attributes"])
    except (KeyError, TypeError):
        return {}


def address_changes(old_body: Mapping[str, Any] | None, new_body: Mapping[str, Any] | None) -> list[str]:
    """Names of the address fields that differ (values are personal data: never listed).
    Empty when either body is unknown: no body, nothing to compare."""
    if old_body is None or new_body is None:
        return []
    old, new = _address(old_body), _address(new_body)
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def carrier_changed(old_body: Mapping[str, Any] | None, new_body: Mapping[str, Any] | None) -> bool:
    if old_body is None or new_body is None:
        return False

    def ids(body: Mapping[str, Any]) -> tuple:
        attrs = body.get("data", {}).get("attributes", {})
        return attrs.get("carrier_id"), attrs.get("carrier_service_id")

    return ids(old_body) != ids(new_body)


def amendment_body(sent_body: Mapping[str, Any], new_body: Mapping[str, Any], changes: list[dict]) -> dict:
    """Full-header PATCH body: the new header and address, the sent reference and dispatch
    date, and the line changes."""
    attrs = dict(new_body["data"]["attributes"])
    sent_attrs = sent_body["data"]["attributes"]
    attrs["reference"] = sent_attrs["reference"]
    attrs["expected_date_of_dispatch"] = sent_attrs["expected_date_of_dispatch"]
    attrs.pop("lines_changes", None)
    if changes:
        attrs["lines_changes"] = changes
    data = {"type": "goods_outs", "attributes": attrs}
    if "relationships" in new_body["data"]:
        data["relationships"] = new_body["data"]["relationships"]
    return {"data": data}


def replacement_reference(order_name: str, attempt: int) -> str:
    """Reference of the `attempt`-th replacement of an order: "#1001" -> "#1001-R1"."""
    if attempt < 1:
        raise ValueError("replacement attempts start at 1")
    return f"{order_name}-R{attempt}"


# ------------------------------------------------------------------ cancel or reduce


@dataclass(frozen=True)
class Cancelled:
    """The goods out is cancelled in Clarus (by this call, or `already` before it)."""

    goods_out: Mapping[str, Any]
    was: GoodsOutStatus | None
    already: bool = False


@dataclass(frozen=True)
class Reduced:
    """Lines shortened or removed; `changes` is (Shopify line id, was, now) per line.
    No changes: the goods out already had the reduced quantities."""

    goods_out: Mapping[str, Any]
    was: GoodsOutStatus
    changes: tuple[tuple[str, int, int], ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class AlreadyDispatched:
    """Goods already left the warehouse (`meanwhile`: between our read and the cancel)."""

    goods_out: Mapping[str, Any]
    status: GoodsOutStatus
    meanwhile: bool = False


@dataclass(frozen=True)
class NotFound:
    """Clarus has no such goods out."""

    goods_out_id: str | None


@dataclass(frozen=True)
class Refused:
    """Clarus will not take the change: `error` is its refusal (a retry will not pass), or
    None when the goods out is past the statuses that accept line changes."""

    goods_out: Mapping[str, Any]
    status: GoodsOutStatus
    reason: str
    error: ConnectorError | None = None


GoodsOutChange = Cancelled | Reduced | AlreadyDispatched | NotFound | Refused


def clarus_quantities(goods_out: Mapping[str, Any]) -> dict[str, int]:
    """Shopify line id (each line's external_system_reference1) -> units Clarus has."""
    return {str(ln.get("external_system_reference1")): int(round(float(ln.get("order_quantity") or 0)))
            for ln in goods_out.get("lines") or []}


def cancel_or_reduce(
    warehouse: Warehouse,
    goods_out_id: str | None,
    *,
    goods_out: Mapping[str, Any] | None = None,
    reduce_to: Callable[[dict[str, int]], Mapping[str, int]] | None = None,
) -> GoodsOutChange:
    """Cancel a goods out, or, with `reduce_to` (current quantities per Shopify line ->
    the quantities wanted), shorten its lines; a reduction that leaves nothing cancels.

    `goods_out` is the record when already read. Connection failures propagate (retried
    by the caller's next run); a refusal is `Refused`. Cancelling re-reads the goods out
    after a refusal, so a dispatch that raced the cancel is `AlreadyDispatched`.
    """
    if goods_out is None:
        goods_out = warehouse.get_goods_out(goods_out_id) if goods_out_id else None
    if goods_out is None:
        return NotFound(goods_out_id)
    goods_out_id = str(goods_out["id"])
    status = GoodsOutStatus.of(goods_out)
    if status is GoodsOutStatus.CANCELLED:
        return Cancelled(goods_out, status, already=True)
    if status is GoodsOutStatus.COMPLETED:
        return AlreadyDispatched(goods_out, status)
    if reduce_to is not None:
        current = clarus_quantities(goods_out)
        targets = {line: min(int(q), current[line]) for line, q in reduce_to(dict(current)).items() if line in current}
        if any(q > 0 for q in {**current, **targets}.values()):
            return _reduce(warehouse, goods_out, status, current, targets)
    if status.is_dispatched:
        return AlreadyDispatched(goods_out, status)
    try:
        done = warehouse.cancel_goods_out(goods_out_id)
    except ConnectorError as exc:
        if not exc.refused:
            raise
        again = warehouse.get_goods_out(goods_out_id)
        now_status = GoodsOutStatus.of(again)
        if again is not None and now_status is not None and now_status.is_dispatched:
            return AlreadyDispatched(again, now_status, meanwhile=True)
        return Refused(goods_out, status, refusal_text(exc), exc)
    return Cancelled(done or goods_out, status)


def _reduce(warehouse: Warehouse, goods_out: Mapping[str, Any], status: GoodsOutStatus,
            current: dict[str, int], targets: Mapping[str, int]) -> GoodsOutChange:
    lines = {str(ln.get("external_system_reference1")): ln for ln in goods_out.get("lines") or []}
    shorter = tuple((line, current[line], target) for line, target in targets.items() if current[line] > target)
    if not shorter:
        return Reduced(goods_out, status)
    if not status.is_editable:
        return Refused(goods_out, status, f"the warehouse is already working on it ({status.name})")
    changes = [goods_out_line_destroy(lines[line]["id"]) if target == 0
               else goods_out_line_update(lines[line]["id"], order_quantity=target) for line, _, target in shorter]
    try:
        warehouse.update_goods_out(goods_out["id"], {"data": {"type": "goods_outs", "attributes": {"lines_changes": changes}}})
    except ConnectorError as exc:
        if not exc.refused:
            raise
        return Refused(goods_out, status, refusal_text(exc), exc)
    return Reduced(goods_out, status, shorter)
