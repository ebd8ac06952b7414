"""Finance reconciliation on a real state (DuckDB file or PostgreSQL) with known mismatches, and the daily CSV."""

from __future__ import annotations

import json
from datetime import date, datetime, timedelta
from decimal import Decimal

import dagster as dg
import pytest

from clarus_pipelines.domain.reconciliation import (
    CHECK_TABLES,
    COLUMNS,
    excel_path,
    read_report,
    reconcile,
    report_path,
    run_reconciliation,
    write_report,
)
from clarus_pipelines.resources import PoliciesResource, StateStoreResource
from clarus_pipelines.settings import SANDBOX_POLICIES
from clarus_pipelines.state import StateStore
from world import make_store

STATE_BACKENDS = ("duckdb", "postgres")  # every test that uses the state once per state backend

DAY = date(2026, 3, 2)
NOON = datetime(2026, 3, 2, 12, 0)
NOW = datetime(2026, 3, 3, 0, 30)
PRICES = {"SKU-A": Decimal("10.00"), "SKU-B": Decimal("20.00"), "000123": Decimal("4.50")}


def payload(lines: dict[str, int], *, discount="0.00", shipping="5.00", extra=Decimal("0")) -> str:
    goods = sum(PRICES[sku] * qty for sku, qty in lines.items())
    total = goods - Decimal(discount) + Decimal(shipping) + extra
    return json.dumps({
        "total_line_items_price": str(goods), "total_discounts": discount, "total_price": str(total),
        "total_shipping_price_set": {"shop_money": {"amount": shipping, "currency_code": "GBP"}},
        "shipping_lines": [{"price": shipping, "discount_allocations": []}],
        "taxes_included": True, "total_tax": "0.00",
    })


def add_order(con, number: int, lines: dict[str, int], *, shipped: dict[str, int] | None, dispatched_at=NOON,
              clarus_status=None, **money) -> str:
    order_id = f"58700000{number}"
    body = payload(lines, **money)
    con.execute(
        "INSERT INTO orders (order_id, order_name, status, currency, total_price, clarus_status, payload, received_at,"
        " updated_at) VALUES (?, ?, 'ACKNOWLEDGED', 'GBP', ?, ?, ?, ?, ?)",
        [order_id, f"#{number}", json.loads(body)["total_price"], clarus_status, body, NOON - timedelta(days=1), NOON],
    )
    for index, (sku, qty) in enumerate(lines.items()):
        con.execute("INSERT INTO order_lines (order_id, line_id, sku, quantity, price, ships) VALUES (?, ?, ?, ?, ?, true)",
                    [order_id, f"{number}-L{index}", sku, qty, PRICES[sku]])
    if shipped:
        shipment = f"SHP-{number}"
        con.execute("INSERT INTO shipments (shipment_id, order_id, state, dispatched_at, updated_at)"
                    " VALUES (?, ?, 'CHANNEL_CONFIRMED', ?, ?)", [shipment, order_id, dispatched_at, dispatched_at])
        for sku, qty in shipped.items():
            con.execute("INSERT INTO shipment_lines (shipment_id, sku, quantity) VALUES (?, ?, ?)", [shipment, sku, qty])
    return order_id


def add_refund(con, refund_id: str, order_id: str, kind: str, lines: list[tuple[str, str, int, str, int]], *,
               processed_at=NOON, received_at=None, due=None) -> None:
    amount = sum(Decimal(a) for _, _, _, a, _ in lines)
    con.execute(
        "INSERT INTO refunds (refund_id, order_id, kind, amount, state, currency, processed_at, received_at, updated_at,"
        " return_received_at, return_due_at) VALUES (?, ?, ?, ?, 'DONE', 'GBP', ?, ?, ?, ?, ?)",
        [refund_id, order_id, kind, amount, processed_at, processed_at, processed_at, received_at, due],
    )
    for line_id, sku, qty, line_amount, received in lines:
        con.execute(
            "INSERT INTO refund_lines (refund_id, line_id, sku, quantity, physical, kind, amount, received_quantity)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [refund_id, line_id, sku, qty, kind != "CANCELLATION", kind, line_amount, received],
        )


@pytest.fixture
def store(state) -> tuple[StateStore, dict[str, str]]:
    store = make_store(state)
    with store.write() as con:
        ids = {
            # 2 x A + 1 x B less 10% discount, shipped in full, one B returned and received: reconciles
            "ok": add_order(con, 2001, {"SKU-A": 2, "SKU-B": 1}, shipped={"SKU-A": 2, "SKU-B": 1}, discount="4.00"),
            "over": add_order(con, 2002, {"SKU-A": 2}, shipped={"SKU-A": 3}),  # one more shipped than sold
            "short": add_order(con, 2003, {"SKU-A": 2}, shipped={"SKU-A": 1}, clarus_status=6),  # Clarus done, one short
            "partial": add_order(con, 2004, {"SKU-A": 2}, shipped={"SKU-A": 1}, dispatched_at=NOON + timedelta(hours=11)),
            "cancelled": add_order(con, 2005, {"SKU-A": 2, "SKU-B": 1}, shipped={"SKU-A": 2}),  # B cancelled and refunded
            "tip": add_order(con, 2006, {"000123": 2}, shipped={"000123": 2}, extra=Decimal("3.00")),  # total has a tip
            "over_refund": add_order(con, 2007, {"SKU-B": 1}, shipped={"SKU-B": 1}, dispatched_at=NOON - timedelta(days=3)),
            "other_day": add_order(con, 2008, {"SKU-A": 1}, shipped={"SKU-A": 1}, dispatched_at=NOON - timedelta(days=1)),
        }
        add_refund(con, "R-OK", ids["ok"], "RETURN", [("2001-L1", "SKU-B", 1, "18.00", 1)], received_at=NOON)
        add_refund(con, "R-CANCEL", ids["cancelled"], "CANCELLATION", [("2005-L1", "SKU-B", 1, "20.00", 0)],
                   processed_at=NOON - timedelta(hours=2))
        add_refund(con, "R-OVER", ids["over_refund"], "RETURN", [("2007-L0", "SKU-B", 1, "25.00", 0)],
                   due=NOON + timedelta(days=14))
    return store, ids


def open_mismatches(store: StateStore) -> dict[str, str]:
    with store.read() as con:
        return dict(con.execute(
            "SELECT entity_id, message FROM exceptions WHERE code = 'RECONCILIATION_MISMATCH' AND status <> 'resolved'"
        ).fetchall())


def test_known_mismatches_are_found_and_written_to_the_day_report(store, tmp_path):
    store, ids = store
    run = run_reconciliation(store, DAY, tmp_path / "reports", now=NOW)
    assert run.path == report_path(tmp_path / "reports", DAY) == tmp_path / "reports" / "reconciliation-2026-03-02.csv"

    report = read_report(run.path)
    dispatch = {r["order_name"]: r for r in report.filter(report["section"] == "dispatch").to_dicts()}
    # #2008 shipped another day; #2007 too, but its return was refunded today: the whole order is reported
    assert {name: r["status"] for name, r in dispatch.items()} == {
        "#2001": "ok", "#2002": "mismatch", "#2003": "mismatch", "#2004": "partial", "#2005": "ok", "#2006": "mismatch",
        "#2007": "ok"}
    ok = dispatch["#2001"]
    assert (ok["goods_ordered"], ok["goods_discounts"], ok["expected_goods"], ok["shipped_goods"], ok["difference"]) == (
        "40.00", "4.00", "36.00", "36.00", "0.00")
    assert (dispatch["#2002"]["difference"], dispatch["#2003"]["difference"]) == ("10.00", "-10.00")
    assert "Clarus completed the order" in dispatch["#2003"]["problems"]
    assert (dispatch["#2005"]["cancelled_goods"], dispatch["#2005"]["expected_goods"]) == ("20.00", "20.00")
    assert dispatch["#2006"]["other_charges"] == "3.00" and "tips, duties or fees" in dispatch["#2006"]["problems"]
    assert dispatch["#2001"]["order_id"] == ids["ok"]  # ids stay text

    returns = {r["refund_id"]: r for r in report.filter(report["section"] == "return").to_dicts()}
    assert set(returns) == {"R-OK", "R-OVER"}
    assert (returns["R-OK"]["status"], returns["R-OK"]["refunded_goods"], returns["R-OK"]["received_value"]) == (
        "received", "18.00", "18.00")
    assert returns["R-OVER"]["status"] == "mismatch" and "paid 25.00 GBP for 1 x SKU-B worth 20.00" in returns["R-OVER"]["problems"]

    mismatches = open_mismatches(store)
    assert set(mismatches) == {ids["over"], ids["short"], ids["tip"], ids["over_refund"]}
    assert mismatches[ids["over"]].startswith("order #2002 does not reconcile: shipped goods worth 30.00 GBP")
    with store.read() as con:
        row = con.execute("SELECT orders, returns, mismatches, path FROM reconciliation_reports WHERE report_date = ?",
                          [DAY]).fetchone()
    assert row == (7, 2, 4, str(run.path))


def _excel_rows(path):
    """The sheet as Excel reads it: (value, data type, number format) per cell, by header."""
    from openpyxl import load_workbook

    sheet = load_workbook(path).active
    header = [c.value for c in sheet[1]]
    return [{h: (c.value, c.data_type, c.number_format) for h, c in zip(header, row)} for row in sheet.iter_rows(min_row=2)]


def test_the_day_report_is_also_an_excel_file_with_ids_as_text(store, tmp_path):
    store, ids = store
    run = run_reconciliation(store, DAY, tmp_path / "reports", now=NOW)
    xlsx = excel_path(run.path)
    assert xlsx == tmp_path / "reports" / "reconciliation-2026-03-02.xlsx" and xlsx.exists()
    csv_rows = read_report(run.path).to_dicts()
    sheet = _excel_rows(xlsx)
    assert len(sheet) == len(csv_rows)
    for csv_row, cells in zip(csv_rows, sheet):
        for column in ("order_id", "order_name", "refund_id", "problems"):
            value, kind, fmt = cells[column]
            if csv_row[column] is not None:
                assert (value, kind, fmt) == (csv_row[column], "s", "@"), column
        if csv_row["shipped_goods"] is not None:
            value, kind, _ = cells["shipped_goods"]
            assert kind == "n" and Decimal(str(value)) == Decimal(csv_row["shipped_goods"])
    assert {cells["order_id"][0] for cells in sheet} >= {ids["ok"], ids["tip"]}


def test_leading_zeros_and_long_ids_survive_excel(tmp_path):
    """What Excel does to a CSV (000123 -> 123, a 20-digit id rounded) cannot happen to the .xlsx."""
    import polars as pl

    row = {c: None for c in COLUMNS}
    row.update(report_date="2026-03-02", section="dispatch", order_id="000587", order_name="#0001",
               refund_id="12345678901234567890", currency="GBP", status="mismatch",
               problems="000123 shipped 3 / 2 ordered", shipped_goods="13.50", shipped_qty="3",
               first_dispatched_at="2026-03-02T12:00:00")
    path = write_report(pl.DataFrame([row], schema={c: pl.Utf8 for c in COLUMNS}), tmp_path / "r.csv")
    assert read_report(path)["order_id"].to_list() == ["000587"]
    (cells,) = _excel_rows(excel_path(path))
    assert cells["order_id"] == ("000587", "s", "@")
    assert cells["refund_id"] == ("12345678901234567890", "s", "@")
    assert cells["problems"][0].startswith("000123") and cells["first_dispatched_at"][1] == "s"
    assert cells["shipped_goods"][:2] == (13.5, "n") and cells["shipped_qty"][:2] == (3, "n")
    assert cells["difference"][0] is None


def test_fixing_the_data_clears_the_exception_on_the_next_run(store, tmp_path):
    store, ids = store
    run_reconciliation(store, DAY, tmp_path / "reports", now=NOW)
    with store.write() as con:
        con.execute("UPDATE shipment_lines SET quantity = 2 WHERE shipment_id = 'SHP-2002'")
    # any day's run re-evaluates the recent orders, so the fix is seen even from the next day's report
    run = run_reconciliation(store, DAY + timedelta(days=1), tmp_path / "reports", now=NOW + timedelta(hours=1))
    assert run.outcome.get(ids["over"]) == "auto_resolved"
    assert ids["over"] not in open_mismatches(store) and ids["short"] in open_mismatches(store)
    assert read_report(run.path).is_empty()  # nothing was dispatched or returned on the 3rd


def test_partial_dispatch_becomes_a_mismatch_once_it_stops_moving(store):
    store, ids = store
    with store.check_reader(CHECK_TABLES) as con:  # as the product runs it (PostgreSQL: on a DuckDB copy)
        early = reconcile(con, [ids["partial"]], now=NOW)
        late = reconcile(con, [ids["partial"]], now=NOW + timedelta(days=3))
    assert early.findings == [] and early.rows["status"].to_list() == ["partial"]
    [finding] = late.findings
    assert "nothing dispatched since 2026-03-02 23:00" in finding.message


def test_dagster_asset_writes_the_partition_report_under_home(store, state, tmp_path):
    from clarus_pipelines.assets.monitoring import finance_reconciliation

    store, _ = store
    result = dg.materialize(
        [finance_reconciliation], partition_key=DAY.isoformat(),
        resources={"state": StateStoreResource(path=str(state)), "policies": PoliciesResource(path=str(SANDBOX_POLICIES))},
    )
    assert result.success
    [materialization] = result.asset_materializations_for_node("finance_reconciliation")
    path = materialization.metadata["path"].value
    assert path == str((tmp_path / "home" / "reports" / "reconciliation-2026-03-02.csv").resolve())
    [check] = result.get_asset_check_evaluations()
    # run at the real clock, long after the day: the partial dispatch #2004 has settled short as well
    assert check.check_name == "day_reconciles" and not check.passed and check.metadata["mismatches"].value == 5


def test_real_shopify_order_with_discount_and_tax_added_reconciles_when_shipped_in_full(state, payloads):
    order = payloads.json("order_rest_2025_07")
    want = payloads["reconcile"]
    order = order.get("order", order)
    store = make_store(state)
    with store.write() as con:
        con.execute(
            "INSERT INTO orders (order_id, order_name, status, currency, total_price, payload, received_at, updated_at)"
            " VALUES (?, ?, 'ACKNOWLEDGED', ?, ?, ?, ?, ?)",
            [str(order["id"]), order["name"], order["currency"], order["total_price"], json.dumps(order), NOON, NOON],
        )
        for line in order["line_items"]:
            con.execute("INSERT INTO order_lines (order_id, line_id, sku, quantity, price, ships) VALUES (?, ?, ?, ?, ?, true)",
                        [str(order["id"]), str(line["id"]), line["sku"], line["quantity"], line["price"]])
        con.execute("INSERT INTO shipments (shipment_id, order_id, state, dispatched_at, updated_at)"
                    " VALUES ('S-REAL', ?, 'CHANNEL_CONFIRMED', ?, ?)", [str(order["id"]), NOON, NOON])
        for line in order["line_items"][:2]:
            con.execute("INSERT INTO shipment_lines (shipment_id, sku, quantity, line_id) VALUES ('S-REAL', ?, ?, ?)",
                        [line["sku"], line["quantity"], str(line["id"])])
    with store.check_reader(CHECK_TABLES) as con:  # as the product runs it (PostgreSQL: on a DuckDB copy)
        partly = reconcile(con, [str(order["id"])], now=NOW).rows.to_dicts()[0]
    assert (partly["status"], partly["tax_added"], partly["other_charges"]) == ("partial", want["tax_added"], want["other_charges"])
    assert (partly["goods_ordered"], partly["goods_discounts"], partly["expected_goods"]) == (
        want["goods_ordered"], want["goods_discounts"], want["expected_goods"])

    with store.write() as con:
        last = order["line_items"][2]
        con.execute("INSERT INTO shipment_lines (shipment_id, sku, quantity, line_id) VALUES ('S-REAL', ?, ?, ?)",
                    [last["sku"], last["quantity"], str(last["id"])])
    with store.check_reader(CHECK_TABLES) as con:
        result = reconcile(con, [str(order["id"])], now=NOW)
    row = result.rows.to_dicts()[0]
    assert (row["status"], row["shipped_goods"], row["difference"]) == ("ok", want["expected_goods"], "0.00") and result.findings == []
