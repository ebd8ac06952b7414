"""Finance reconciliation: shipped value against order totals, refunds against returns received.

For each order, from the state database (as of the time the reconciliation runs):

**Dispatch** (goods only; shipping and tax are charged once and reconciled by the order
total check below):

- `charged_goods`: Shopify's `total_line_items_price` less the discounts on goods
  (`total_discounts` less the discounts allocated to shipping lines), less the value of
  lines that never ship (gift cards, digital goods);
- `cancelled_goods`: money refunded for lines cancelled before dispatch (refund lines of
  kind CANCELLATION);
- `expected_goods` = charged_goods - cancelled_goods: what the goods shipped should be worth;
- `shipped_goods`: every dispatched shipment line, quantity x the order line's unit price,
  less the same share of discount;
- `difference` = shipped_goods - expected_goods.

It is a mismatch when the order shipped more than was charged for (`difference` above the
tolerance), when a SKU not on the order was shipped, when less was shipped and the
warehouse is done with the order (Clarus status COMPLETED, or nothing dispatched for
`settle_after`), or when the order total is not goods - discounts + shipping (+ tax when
prices exclude it): tips, duties or fees finance has to book by hand. An order still
being dispatched is `partial`, not a mismatch.

**Returns** (refund lines of kind RETURN / EXCHANGE that need goods back): money refunded
for the goods against the value of what Clarus received. A return refunded above the
goods' price (after discount) is a mismatch; one not yet received is `awaiting`, or
`overdue` after its due date (that is RETURN_NOT_RECEIVED, raised by the refunds flow,
so it is not raised again here).

Every order with a mismatch is a RECONCILIATION_MISMATCH finding (entity: the order id).
`run_reconciliation` writes the day's report to
`$CLARUS_PIPELINES_HOME/reports/reconciliation-YYYY-MM-DD.csv` (and the same rows as
`.xlsx`, ids and SKUs typed as text so Excel keeps them exact): the orders with a
dispatch, a return refund or a return receipt that UTC day, reconciled as of the run,
and syncs the exceptions over a rolling window of recent orders (plus any order whose
mismatch is still open), so re-running any day gives the same exceptions.
"""

from __future__ import annotations

import os
import tempfile
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import duckdb
import polars as pl

from clarus_pipelines.connectors.clarus_model import GoodsOutStatus
from clarus_pipelines.domain import payouts
from clarus_pipelines.exception_queue import Finding, sync_exceptions, utcnow
from clarus_pipelines.policies import Policies
from clarus_pipelines.state import StateStore

CODE = "RECONCILIATION_MISMATCH"
CENT = Decimal("0.01")
ZERO = Decimal("0")
COMPLETED = GoodsOutStatus.COMPLETED  # dispatched in full
RETURN_KINDS = ("RETURN", "EXCHANGE")

COLUMNS = [
    "report_date", "as_of", "section", "order_id", "order_name", "refund_id", "currency", "status", "problems",
    "order_total", "goods_ordered", "goods_discounts", "shipping", "tax_added", "other_charges", "non_shipping_goods",
    "charged_goods", "cancelled_goods", "expected_goods", "shipped_goods", "difference", "shipped_qty", "shipments",
    "first_dispatched_at", "last_dispatched_at", "refunded_goods", "refunded_qty", "received_qty", "received_value",
    "return_due_at", "return_received_at",
    # Shopify Payments payouts (`domain.payouts`): section `payout` (one row per payout issued that day)
    # and `payout_transaction` (each of its transactions that is not ok)
    "payout_id", "transaction_id", "transaction_kind", "shopify_amount", "our_amount", "shopify_fee", "expected_fee",
    "shopify_net", "expected_net",
]


# Columns Excel may read as numbers: written as numbers in the .xlsx. Every other column
# (ids, order names, SKUs in `problems`, dates) is text there, so no leading zero is lost
# and no long id is rounded to 15 digits.
MONEY_COLUMNS = frozenset({
    "order_total", "goods_ordered", "goods_discounts", "shipping", "tax_added", "other_charges", "non_shipping_goods",
    "charged_goods", "cancelled_goods", "expected_goods", "shipped_goods", "difference", "refunded_goods",
    "received_value", "shopify_amount", "our_amount", "shopify_fee", "expected_fee", "shopify_net", "expected_net",
})
COUNT_COLUMNS = frozenset({"shipped_qty", "shipments", "refunded_qty", "received_qty"})


def report_path(reports_dir: Path | str, day: date) -> Path:
    return Path(reports_dir) / f"reconciliation-{day.isoformat()}.csv"


def excel_path(csv_path: Path | str) -> Path:
    """The .xlsx written beside a report's CSV (same rows; ids and SKUs typed as text)."""
    return Path(csv_path).with_suffix(".xlsx")


def _money(value: Any) -> Decimal | None:
    if value is None or value == "":
        return None
    try:
        return Decimal(str(value))
    except ArithmeticError:
        return None


def _q(value: Decimal | None) -> Decimal | None:
    return None if value is None else value.quantize(CENT, rounding=ROUND_HALF_UP)


def _sum(values: Iterable[Any]) -> Decimal:
    return sum((_money(v) or ZERO for v in values), ZERO)


def _rows(con: duckdb.DuckDBPyConnection, query: str, params: Sequence[Any]) -> list[dict[str, Any]]:
    con.complete()
    cur = con.execute(query, list(params))
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row)) for row in cur.fetchall()]


# ------------------------------------------------------------------------------- scope


def _day_bounds(day: date) -> tuple[datetime, datetime]:
    start = datetime.combine(day, time())
    return start, start + timedelta(days=1)


def orders_touched(con: duckdb.DuckDBPyConnection, since: datetime, until: datetime) -> list[str]:
    """Orders with a dispatch, a return refund or a return receipt in [since, until)."""
    return [r[0] for r in con.execute(
        "SELECT order_id FROM shipments WHERE dispatched_at >= ? AND dispatched_at < ?"
        " UNION SELECT order_id FROM refunds WHERE kind IN (SELECT unnest(?::VARCHAR[])) AND"
        "  ((coalesce(processed_at, received_at) >= ? AND coalesce(processed_at, received_at) < ?)"
        "   OR (return_received_at >= ? AND return_received_at < ?))"
        " ORDER BY 1",
        [since, until, list(RETURN_KINDS), since, until, since, until],
    ).fetchall()]


# ---------------------------------------------------------------------------- compute


@dataclass
class Reconciliation:
    """Rows (dispatch and return sections, see COLUMNS) and the mismatch findings."""

    rows: pl.DataFrame
    findings: list[Finding]
    order_ids: list[str]

    @property
    def mismatches(self) -> int:
        return len(self.findings)


def _load(con: duckdb.DuckDBPyConnection, order_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
    ids = [list(order_ids)]
    amount = "TRY_CAST(json_extract_string(o.payload, ?) AS DECIMAL(18, 2))"
    sum_of = "(SELECT sum(TRY_CAST(x AS DECIMAL(18, 2))) FROM unnest(json_extract_string(o.payload, ?)) AS u(x))"
    return {
        "orders": _rows(
            con,
            "SELECT o.order_id, o.order_name, o.currency, o.total_price, o.clarus_status, o.status,"
            f" {amount} AS line_items_price, {amount} AS total_discounts, {amount} AS shipping_set,"
            f" {sum_of} AS shipping_lines, {sum_of} AS shipping_discounts, {amount} AS total_tax,"
            " coalesce(TRY_CAST(json_extract_string(o.payload, '$.taxes_included') AS BOOLEAN), true) AS taxes_included"
            " FROM orders o WHERE o.order_id IN (SELECT unnest(?::VARCHAR[])) ORDER BY o.order_id",
            ["$.total_line_items_price", "$.total_discounts", "$.total_shipping_price_set.shop_money.amount",
             "$.shipping_lines[*].price", "$.shipping_lines[*].discount_allocations[*].amount", "$.total_tax", *ids],
        ),
        "lines": _rows(
            con,
            "SELECT order_id, line_id, sku, quantity, price, coalesce(ships, true) AS ships FROM order_lines"
            " WHERE order_id IN (SELECT unnest(?::VARCHAR[]))",
            ids,
        ),
        "shipped": _rows(
            con,
            "SELECT s.order_id, s.shipment_id, s.dispatched_at, l.sku, l.line_id, l.quantity"
            " FROM shipments s JOIN shipment_lines l USING (shipment_id)"
            " WHERE s.order_id IN (SELECT unnest(?::VARCHAR[])) AND s.dispatched_at IS NOT NULL",
            ids,
        ),
        "refund_lines": _rows(
            con,
            "SELECT r.order_id, r.refund_id, coalesce(l.kind, r.kind) AS kind, l.line_id, l.sku, l.quantity,"
            " l.received_quantity, l.amount, l.physical, r.amount AS refund_amount, r.shipping_amount,"
            " r.return_due_at, r.return_received_at, r.currency"
            " FROM refunds r JOIN refund_lines l USING (refund_id)"
            " WHERE r.order_id IN (SELECT unnest(?::VARCHAR[])) ORDER BY r.refund_id, l.line_id",
            ids,
        ),
    }


def reconcile(
    con: duckdb.DuckDBPyConnection,
    order_ids: Sequence[str],
    *,
    now: datetime | None = None,
    report_date: date | None = None,
    tolerance: Decimal = CENT,
    settle_after: timedelta = timedelta(days=2),
) -> Reconciliation:
    """Reconcile the given orders (see the module docstring). Reads only."""
    now = now or utcnow()
    order_ids = sorted(set(order_ids))
    data = _load(con, order_ids) if order_ids else {"orders": [], "lines": [], "shipped": [], "refund_lines": []}
    lines_by_order: dict[str, list[dict]] = defaultdict(list)
    for line in data["lines"]:
        lines_by_order[line["order_id"]].append(line)
    shipped_by_order: dict[str, list[dict]] = defaultdict(list)
    for line in data["shipped"]:
        shipped_by_order[line["order_id"]].append(line)
    refunds_by_order: dict[str, list[dict]] = defaultdict(list)
    for line in data["refund_lines"]:
        refunds_by_order[line["order_id"]].append(line)

    rows: list[dict[str, Any]] = []
    findings: list[Finding] = []
    base = {"report_date": report_date.isoformat() if report_date else None, "as_of": now.isoformat(timespec="seconds")}
    for order in data["orders"]:
        oid = order["order_id"]
        dispatch_row, dispatch_problems = _dispatch(order, lines_by_order[oid], shipped_by_order[oid],
                                                    refunds_by_order[oid], now, tolerance, settle_after)
        problems = list(dispatch_problems)
        if dispatch_row is not None:
            rows.append({**base, **dispatch_row})
        discount_ratio = dispatch_row["_discount_ratio"] if dispatch_row else _discount_ratio(order, lines_by_order[oid])
        for return_row, return_problems in _returns(order, lines_by_order[oid], refunds_by_order[oid], discount_ratio,
                                                    now, tolerance):
            rows.append({**base, **return_row})
            problems += return_problems
        if problems:
            name = order["order_name"] or oid
            findings.append(Finding(
                oid,
                f"order {name} does not reconcile: " + "; ".join(problems),
                {"order_name": name, "problems": problems,
                 "expected_goods": str(dispatch_row["expected_goods"]) if dispatch_row else None,
                 "shipped_goods": str(dispatch_row["shipped_goods"]) if dispatch_row else None,
                 "difference": str(dispatch_row["difference"]) if dispatch_row else None,
                 "currency": order["currency"]},
            ))
    for row in rows:
        row.pop("_discount_ratio", None)
    frame = pl.DataFrame(
        [{c: (None if row.get(c) is None else str(row[c]) if not isinstance(row.get(c), datetime)
              else row[c].isoformat(timespec="seconds")) for c in COLUMNS} for row in rows],
        schema={c: pl.Utf8 for c in COLUMNS},
    )
    return Reconciliation(frame, findings, order_ids)


def _discount_ratio(order: dict[str, Any], lines: list[dict[str, Any]]) -> Decimal:
    gross = _money(order["line_items_price"]) or _sum(Decimal(ln["quantity"] or 0) * (_money(ln["price"]) or ZERO) for ln in lines)
    goods_discounts = max((_money(order["total_discounts"]) or ZERO) - (_money(order["shipping_discounts"]) or ZERO), ZERO)
    return goods_discounts / gross if gross > 0 else ZERO


def _unit_prices(lines: list[dict[str, Any]]) -> tuple[dict[str, Decimal], dict[str, Decimal]]:
    by_line = {ln["line_id"]: _money(ln["price"]) or ZERO for ln in lines}
    totals: dict[str, list[Decimal]] = defaultdict(lambda: [ZERO, ZERO])
    for ln in lines:
        if ln["sku"] is not None:
            qty = Decimal(ln["quantity"] or 0) or Decimal(1)  # a line edited to zero still names a price
            totals[ln["sku"]][0] += qty * (_money(ln["price"]) or ZERO)
            totals[ln["sku"]][1] += qty
    by_sku = {sku: value / qty for sku, (value, qty) in totals.items() if qty}
    return by_line, by_sku


def _dispatch(order, lines, shipped, refund_lines, now, tolerance, settle_after) -> tuple[dict[str, Any] | None, list[str]]:
    if not shipped:
        return None, []
    currency = order["currency"] or ""
    by_line, by_sku = _unit_prices(lines)
    gross = _money(order["line_items_price"])
    detail_missing = gross is None
    if gross is None:
        gross = _sum(Decimal(ln["quantity"] or 0) * (_money(ln["price"]) or ZERO) for ln in lines)
    ratio = _discount_ratio(order, lines)
    goods_discounts = max((_money(order["total_discounts"]) or ZERO) - (_money(order["shipping_discounts"]) or ZERO), ZERO)
    non_shipping = _sum(Decimal(ln["quantity"] or 0) * (_money(ln["price"]) or ZERO) for ln in lines if not ln["ships"])
    non_shipping_net = non_shipping * (1 - ratio)
    charged = gross - goods_discounts - non_shipping_net
    cancelled = _sum(
        (ln["amount"] if ln["amount"] is not None else Decimal(ln["quantity"] or 0) * by_line.get(ln["line_id"], ZERO) * (1 - ratio))
        for ln in refund_lines if ln["kind"] == "CANCELLATION"
    )
    expected = charged - cancelled

    problems: list[str] = []
    shipped_gross = ZERO
    unknown: set[str] = set()
    for ln in shipped:
        price = by_line.get(ln["line_id"]) if ln["line_id"] in by_line else by_sku.get(ln["sku"])
        if price is None:
            unknown.add(ln["sku"])
            continue
        shipped_gross += Decimal(ln["quantity"] or 0) * price
    shipped_value = shipped_gross * (1 - ratio)
    difference = _q(shipped_value - expected)
    dispatched = [ln["dispatched_at"] for ln in shipped]
    last_dispatch = max(dispatched)

    shipping = _money(order["shipping_set"])
    if shipping is None:
        shipping = _money(order["shipping_lines"]) or ZERO
    total_tax = _money(order["total_tax"]) or ZERO
    tax_added = ZERO if order["taxes_included"] else total_tax
    total = _money(order["total_price"])
    other = None
    if total is not None and not detail_missing:
        other = _q(total - (gross - (_money(order["total_discounts"]) or ZERO) + shipping + tax_added))
        if abs(other) > tolerance:
            problems.append(f"order total {total} {currency} includes {other} not explained by goods, discounts, "
                            "shipping and tax (tips, duties or fees?)")
    if unknown:
        problems.append("shipped SKU(s) not on the order: " + ", ".join(sorted(s or "(none)" for s in unknown)))
    if difference > tolerance:
        problems.append(f"shipped goods worth {_q(shipped_value)} {currency}, more than the {_q(expected)} charged"
                        f" (+{difference})")
        status = "mismatch"
    elif difference < -tolerance:
        finished = order["clarus_status"] == COMPLETED
        settled = now - last_dispatch >= settle_after
        if finished or settled:
            why = "Clarus completed the order" if finished else f"nothing dispatched since {last_dispatch:%Y-%m-%d %H:%M}"
            problems.append(f"shipped goods worth {_q(shipped_value)} {currency} against {_q(expected)} charged"
                            f" ({difference}) and {why}: refund or ship the rest")
            status = "mismatch"
        else:
            status = "partial"
    else:
        status = "ok"
    if problems:
        status = "mismatch"
    row = {
        "section": "dispatch", "order_id": order["order_id"], "order_name": order["order_name"], "refund_id": None,
        "currency": currency, "status": status, "problems": "; ".join(problems) or None,
        "order_total": total, "goods_ordered": _q(gross), "goods_discounts": _q(goods_discounts), "shipping": _q(shipping),
        "tax_added": _q(tax_added), "other_charges": other, "non_shipping_goods": _q(non_shipping_net),
        "charged_goods": _q(charged), "cancelled_goods": _q(cancelled), "expected_goods": _q(expected),
        "shipped_goods": _q(shipped_value), "difference": difference,
        "shipped_qty": sum(int(ln["quantity"] or 0) for ln in shipped), "shipments": len({ln["shipment_id"] for ln in shipped}),
        "first_dispatched_at": min(dispatched), "last_dispatched_at": last_dispatch, "_discount_ratio": ratio,
    }
    return row, problems


def _returns(order, lines, refund_lines, ratio, now, tolerance) -> list[tuple[dict[str, Any], list[str]]]:
    by_line, by_sku = _unit_prices(lines)
    per_refund: dict[str, list[dict]] = defaultdict(list)
    for ln in refund_lines:
        if ln["kind"] in RETURN_KINDS and ln["physical"]:
            per_refund[ln["refund_id"]].append(ln)
    currency = order["currency"] or ""
    out = []
    for refund_id, lines_ in per_refund.items():
        first = lines_[0]
        refunded = ZERO
        received_value = ZERO
        problems: list[str] = []
        for ln in lines_:
            qty = Decimal(ln["quantity"] or 0)
            unit_price = by_line.get(ln["line_id"]) if ln["line_id"] in by_line else by_sku.get(ln["sku"])
            net_unit = unit_price * (1 - ratio) if unit_price is not None else None
            amount = _money(ln["amount"])
            if amount is None:
                amount = qty * (net_unit or ZERO)
            refunded += amount
            per_unit = amount / qty if qty else ZERO
            received_value += Decimal(ln["received_quantity"] or 0) * per_unit
            if net_unit is not None and qty and amount - qty * net_unit > tolerance:
                problems.append(f"refund {refund_id} paid {_q(amount)} {currency} for {int(qty)} x {ln['sku']}"
                                f" worth {_q(qty * net_unit)}")
        refunded_qty = sum(int(ln["quantity"] or 0) for ln in lines_)
        received_qty = sum(int(ln["received_quantity"] or 0) for ln in lines_)
        if problems:
            status = "mismatch"
        elif first["return_received_at"] is not None or (refunded_qty and received_qty >= refunded_qty):
            status = "received"
        elif first["return_due_at"] is not None and first["return_due_at"] <= now:
            status = "overdue"
        else:
            status = "awaiting"
        out.append(({
            "section": "return", "order_id": order["order_id"], "order_name": order["order_name"], "refund_id": refund_id,
            "currency": first["currency"] or currency, "status": status, "problems": "; ".join(problems) or None,
            "refunded_goods": _q(refunded), "refunded_qty": refunded_qty, "received_qty": received_qty,
            "received_value": _q(received_value), "difference": _q(received_value - refunded),
            "return_due_at": first["return_due_at"], "return_received_at": first["return_received_at"],
        }, problems))
    return out


# ------------------------------------------------------------------------------- report


def _atomic_write(path: Path, write: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".partial", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _excel_value(column: str, text: str | None) -> Any:
    if text is None or text == "":
        return None
    try:
        if column in MONEY_COLUMNS:
            return Decimal(text)
        if column in COUNT_COLUMNS:
            return int(text)
    except (ArithmeticError, ValueError):
        pass
    return text


def write_excel(rows: pl.DataFrame, path: Path) -> Path:
    """The report as .xlsx for finance: ids, order names and SKUs are text cells with the
    Text format ("@"), so Excel neither drops leading zeros nor rounds long ids; money and
    quantities are numbers. Written atomically."""
    from openpyxl import Workbook
    from openpyxl.utils import get_column_letter

    book = Workbook()
    sheet = book.active
    sheet.title = "reconciliation"
    columns = rows.columns
    sheet.append(columns)
    for record in rows.iter_rows():
        sheet.append([_excel_value(c, v) for c, v in zip(columns, record)])
    for index, column in enumerate(columns, start=1):
        numeric = column in MONEY_COLUMNS or column in COUNT_COLUMNS
        number_format = "#,##0.00" if column in MONEY_COLUMNS else "0" if numeric else "@"
        letter = get_column_letter(index)
        sheet.column_dimensions[letter].width = max(10, min(40, len(column) + 2))
        for (cell,) in sheet.iter_rows(min_row=2, min_col=index, max_col=index):
            cell.number_format = number_format
    sheet.freeze_panes = "A2"
    if rows.height:
        sheet.auto_filter.ref = sheet.dimensions
    _atomic_write(path, book.save)
    return path


def write_report(rows: pl.DataFrame, path: Path) -> Path:
    """Write the CSV, and the .xlsx beside it, atomically (a reader never sees half a report)."""
    _atomic_write(path, rows.write_csv)
    write_excel(rows, excel_path(path))
    return path


def read_report(path: Path | str) -> pl.DataFrame:
    """A report as written: every column as text (ids and amounts stay exact)."""
    return pl.read_csv(path, infer_schema=False)


def with_payouts(report: Reconciliation, rows: list[dict[str, Any]], day: date, now: datetime) -> Reconciliation:
    """The day's report with its Shopify Payments payout rows (`payouts.report_rows`) appended."""
    if not rows:
        return report
    base = {"report_date": day.isoformat(), "as_of": now.isoformat(timespec="seconds")}
    extra = [{**base, "section": "payout" if r["line_no"] == 0 else "payout_transaction", "transaction_kind": r["kind"],
              **{k: r[k] for k in ("payout_id", "transaction_id", "order_id", "order_name", "refund_id", "currency",
                                   "status", "problems", "difference", *payouts.MONEY)}} for r in rows]
    frame = pl.DataFrame([{c: None if r.get(c) is None else str(r[c]) for c in COLUMNS} for r in extra],
                         schema={c: pl.Utf8 for c in COLUMNS})
    return Reconciliation(pl.concat([report.rows, frame]), report.findings, report.order_ids)


@dataclass
class ReconciliationRun:
    day: date
    path: Path
    report: Reconciliation  # the day's rows
    window: Reconciliation  # what the exceptions were synced from
    outcome: dict[str, str] = field(default_factory=dict)

    def as_metadata(self) -> dict[str, Any]:
        rows = self.report.rows
        dispatch = rows.filter(pl.col("section") == "dispatch")
        returns = rows.filter(pl.col("section") == "return")
        return {
            "path": str(self.path),
            "orders": dispatch.height,
            "returns": returns.height,
            "mismatches_in_report": mismatch_count(rows),
            "payouts": rows.filter(pl.col("section") == "payout").height,
            "payouts_mismatched": _payouts_mismatched(rows),
            "partial": dispatch.filter(pl.col("status") == "partial").height,
            "open_mismatches_window": self.window.mismatches,
            "raised": sum(1 for a in self.outcome.values() if a in ("raised", "reopened")),
            "cleared": sum(1 for a in self.outcome.values() if a == "auto_resolved"),
        }


def _payouts_mismatched(rows: pl.DataFrame) -> int:
    return rows.filter((pl.col("section") == "payout") & (pl.col("status") == "mismatch")).height


def mismatch_count(rows: pl.DataFrame) -> int:
    """Orders and payouts in a report that do not reconcile."""
    orders = rows.filter(pl.col("section").is_in(["dispatch", "return"]) & (pl.col("status") == "mismatch"))
    return orders["order_id"].n_unique() + _payouts_mismatched(rows)


def _total(rows: pl.DataFrame, column: str) -> Decimal:
    return _sum(rows.filter(pl.col("section") == "dispatch")[column].to_list())


def run_reconciliation(
    store: StateStore,
    day: date,
    reports_dir: Path | str,
    *,
    policies: Policies | None = None,
    now: datetime | None = None,
    lookback: timedelta = timedelta(days=14),
    tolerance: Decimal = CENT,
    run_id: str | None = None,
) -> ReconciliationRun:
    """Reconcile one UTC day: write its CSV, sync RECONCILIATION_MISMATCH, record the report."""
    now = now or utcnow()
    start, end = _day_bounds(day)
    with store.check_reader(CHECK_TABLES) as con:  # PostgreSQL: a DuckDB copy of these tables
        day_orders = orders_touched(con, start, end)
        report = reconcile(con, day_orders, now=now, report_date=day, tolerance=tolerance)
        recent = orders_touched(con, now - lookback, now + timedelta(seconds=1))
        still_open = [r[0] for r in con.execute(  # payouts' mismatches are synced by `domain.payouts`
            "SELECT entity_id FROM exceptions WHERE code = ? AND status <> 'resolved' AND entity_type <> 'payout'", [CODE]
        ).fetchall()]
        window = reconcile(con, [*recent, *still_open, *day_orders], now=now, tolerance=tolerance)
        report = with_payouts(report, payouts.report_rows(con, day), day, now)
    path = write_report(report.rows, report_path(reports_dir, day))
    with store.write() as con:
        outcome = sync_exceptions(con, CODE, window.findings, scope=window.order_ids, policies=policies, now=now)
        rows = report.rows
        con.execute(
            "INSERT OR REPLACE INTO reconciliation_reports (report_date, generated_at, path, orders, returns, mismatches,"
            " shipped_value, expected_value, run_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [day, now, str(path), rows.filter(pl.col("section") == "dispatch").height,
             rows.filter(pl.col("section") == "return").height,
             mismatch_count(rows),
             _total(rows, "shipped_goods"), _total(rows, "expected_goods"), run_id],
        )
    return ReconciliationRun(day, path, report, window, outcome)


# What `run_reconciliation` reads (in PostgreSQL mode pulled into DuckDB for the computation).
CHECK_TABLES = ("orders", "order_lines", "shipments", "shipment_lines", "refunds", "refund_lines", "exceptions",
                "payout_matches")  # the report's payout rows (`payouts.report_rows`)


def reports(con: duckdb.DuckDBPyConnection, limit: int = 60) -> pl.DataFrame:
    """The latest reports (newest first): date, path, counts, totals (for the dashboard's downloads)."""
    con.complete()
    return con.sql(
        "SELECT report_date, generated_at, path, orders, returns, mismatches, shipped_value, expected_value"
        " FROM reconciliation_reports ORDER BY report_date DESC LIMIT ?", params=[limit],
    ).pl()
