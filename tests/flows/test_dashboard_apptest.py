"""The dashboard's pages, run with Streamlit's AppTest on seeded state, checked for what a person sees."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path

import duckdb
import pandas as pd
import polars as pl
import pytest
from dashboard_seed import SeedSummary, seed_state
from streamlit import config as st_config
from streamlit.testing.v1 import AppTest

from clarus_pipelines import catalogue, exception_queue
from clarus_pipelines.domain import health
from clarus_pipelines.domain import reconciliation as finance
from clarus_pipelines.state.store import StateStore
from clarus_pipelines.dashboards import auth, queries
from clarus_pipelines.dashboards.app_pages import common
from apptest import run_app

pytestmark = pytest.mark.timeout(120)

APP = Path(__file__).resolve().parents[2] / "dashboards" / "app.py"
PASSWORD = "s3cret shared phrase"


@pytest.fixture(scope="module")
def seeded(tmp_path_factory) -> SeedSummary:
    return seed_state(tmp_path_factory.mktemp("apptest") / "state.duckdb")


@pytest.fixture
def server_address() -> Iterator[Callable[[str | None], None]]:
    """Set the address Streamlit believes it is bound to (as --server.address would), restored afterwards."""
    before = st_config.get_option("server.address")

    def bind(address: str | None) -> None:
        st_config.set_option("server.address", address)

    bind("127.0.0.1")
    yield bind
    bind(before)


@pytest.fixture
def open_app(server_address, monkeypatch):
    """Start the app on a state file; returns the AppTest after its first run."""
    monkeypatch.delenv(auth.PASSWORD_ENV, raising=False)
    monkeypatch.setattr(auth, "FAILED_LOGIN_DELAY_S", 0.0)

    def start(state: Path, page: str | None = None) -> AppTest:
        monkeypatch.setenv("CLARUS_PIPELINES_STATE_DB", str(state))
        at = run_app(str(APP), default_timeout=30)
        if page:
            at.switch_page(f"app_pages/{page}.py").run()
        assert not at.exception, [e.value for e in at.exception]
        return at

    return start


def _frame_with(at: AppTest, *columns: str) -> pd.DataFrame:
    for frame in at.dataframe:
        value = frame.value
        if set(columns) <= set(value.columns):
            return value
    raise AssertionError(f"no table with columns {columns}; tables: {[list(f.value.columns) for f in at.dataframe]}")


def _metric(at: AppTest, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def _widget(widgets, label: str):
    return next(w for w in widgets if w.label == label)


def _texts(at: AppTest) -> str:
    return "\n".join([m.value for m in at.markdown] + [c.value for c in at.caption] + [str(j.value) for j in at.json])


# ---------------------------------------------------------------------------- pages


def test_health_overview_shows_orders_exceptions_and_connections(open_app, seeded: SeedSummary) -> None:
    at = open_app(seeded.path)
    assert [t.value for t in at.title] == ["Health overview"]
    assert int(_metric(at, "Open exceptions")) == sum(seeded.open_by_owner.values())
    assert int(_metric(at, "Orders held")) == seeded.status_counts["HELD"]

    statuses = _frame_with(at, "status", "orders")
    assert dict(zip(statuses["status"], statuses["orders"])) == seeded.status_counts

    pivot = _frame_with(at, "owner", "total")
    assert dict(zip(pivot["owner"], pivot["total"])) == seeded.open_by_owner

    oldest = _frame_with(at, "code", "sla_used", "breached")
    assert oldest.iloc[0]["code"] == "BARCODE_INVALID"  # two days old against a one-day SLA
    assert set(oldest[oldest["breached"]]["code"]) == {"BARCODE_INVALID", "ORDER_INCOMPLETE", "TRACKING_MISSING"}

    # flows and connections are the monitoring back end's own figures, as of the same minute
    con = duckdb.connect(str(seeded.path), read_only=True)
    try:
        as_of = common.minute_floor(common.now_utc())
        expected_flows = health.flow_health(con, now=as_of).to_pandas().set_index("title")
        expected_conns = health.connection_health(con, now=as_of).to_pandas().set_index("connection")
    finally:
        con.close()
    flows = _frame_with(at, "flow", "status", "why", "lag p90").set_index("flow")
    assert list(flows.index) == list(expected_flows.index)
    assert flows.loc["Orders into the warehouse", "status"] == "🟠 degraded"  # NetSuite 503s on sales orders
    assert "write attempts failed" in flows.loc["Orders into the warehouse", "why"]
    assert flows.loc["Orders into the warehouse", "error rate"] == pytest.approx(
        expected_flows.loc["Orders into the warehouse", "error_rate"])
    assert flows.loc["Dispatch to NetSuite and Shopify", "status"] == "🟢 ok"
    assert flows.loc["Stock to Shopify", "open exceptions"] == 2
    assert flows["open exceptions"].tolist() == expected_flows["open_exceptions"].tolist()

    connections = _frame_with(at, "system", "status", "rejected", "missed by webhooks").set_index("system")
    assert set(connections.index) == {"Shopify", "Clarus", "NetSuite"}  # alert channels are listed under Alerts
    assert connections["last authenticated read"].notna().all()  # the live probes answered
    assert set(connections["probe"]) == {"answers"}
    assert connections.loc["Shopify", "status"] == "🟠 degraded"
    assert connections.loc["Shopify", "rejected"] == 5
    assert connections.loc["Shopify", "missed by webhooks"] == 1  # order #1010 came by the reconciliation read
    assert connections.loc["Shopify", "pending writes"] == 1
    assert connections.loc["NetSuite", "failed / attempts"] == (
        f"{expected_conns.loc['netsuite', 'failures']} / {expected_conns.loc['netsuite', 'attempts']}")
    assert connections.loc["Clarus", "status"] == "🟢 ok"
    assert any("Degraded" in w.value and "Orders into the warehouse" in w.value for w in at.warning)

    suites = _frame_with(at, "suite", "result", "failed").set_index("suite")
    assert suites.loc[seeded.failing_suite, "result"] == "❌ failed"
    assert "MUG-ENAMEL-BLUE" in set(_frame_with(at, "sku", "barcode")["sku"])

    channels = _frame_with(at, "channel", "sent", "waiting", "status").set_index("channel")
    assert channels.loc["log:ops", "sent"] >= 1 and channels.loc["log:ops", "status"] == "🟢 ok"
    deliveries = _frame_with(at, "due_at", "code", "channel", "status")
    assert ("ORDER_INCOMPLETE", "log:ops", "sent") in set(zip(deliveries["code"], deliveries["channel"], deliveries["status"]))

    last = _frame_with(at, "system", "last_event", "last_state")
    assert set(last["system"]) == {"Shopify", "NetSuite", "Clarus", "Pipeline"}


def test_exception_queue_filters_and_shows_the_runbook(open_app, seeded: SeedSummary) -> None:
    at = open_app(seeded.path, "exceptions")
    queue = _frame_with(at, "code", "entity", "status", "sla_used")
    assert len(queue) == sum(seeded.open_by_owner.values())
    assert queue.iloc[0]["breached"]  # past SLA first
    assert "#1002" in set(queue["entity"])  # order exceptions show the order name
    # ops has an escalation contact (config/sandbox.yaml): its exceptions past their SLA show as escalated
    past_sla_ops = queue[(queue["owner"] == "ops") & queue["breached"] & (queue["status"] == "open")]
    assert len(past_sla_ops) and (past_sla_ops["escalations"] >= 1).all()
    assert (queue[~queue["breached"]]["escalations"] == 0).all()

    _widget(at.multiselect, "Owner").set_value(["finance"]).run()
    queue = _frame_with(at, "code", "entity", "status", "sla_used")
    assert set(queue["code"]) == {"DISPATCH_AWAITING_ERP", "RECONCILIATION_MISMATCH", "REFUND_UNCLASSIFIED"}

    _widget(at.multiselect, "Owner").set_value([]).run()
    _widget(at.selectbox, "Age").set_value("older than 1 day").run()
    queue = _frame_with(at, "code", "entity", "status", "sla_used")
    assert set(queue["code"]) == {"BARCODE_INVALID", "STRANDED_STOCK"}

    _widget(at.selectbox, "Age").set_value("any age").run()
    _widget(at.multiselect, "Status").set_value(["resolved"]).run()
    queue = _frame_with(at, "code", "entity", "status", "sla_used")
    assert set(queue["code"]) == {"CONNECTOR_FAILING", "SKU_LEADING_ZEROS_LOST", "ORDER_NOT_ACKNOWLEDGED"}

    _widget(at.multiselect, "Status").set_value(["open", "acknowledged"]).run()
    at.selectbox(key="selected_exception").set_value(f"ORDER_INCOMPLETE|{seeded.held_order_id}").run()
    assert at.subheader[0].value.startswith("ORDER_INCOMPLETE")
    texts = _texts(at)
    kind = catalogue.get("ORDER_INCOMPLETE")
    assert kind.resolution in texts and kind.escalation in texts  # the runbook entry for the type
    assert "Okafor" not in texts and "amara.okafor@example.com" not in texts  # personal data masked
    assert "A***" in texts
    history = _frame_with(at, "occurred_at", "action", "actor")
    assert history["action"].tolist() == ["raised"]


def _own_copy(seeded: SeedSummary, tmp_path: Path) -> SeedSummary:
    """A private copy of the seeded state, for tests that write."""
    copy = tmp_path / "state.duckdb"
    copy.write_bytes(seeded.path.read_bytes())
    return dataclasses.replace(seeded, path=copy)


def test_acknowledge_and_resolve_write_through_the_exception_queue(open_app, seeded, tmp_path) -> None:
    seeded = _own_copy(seeded, tmp_path)
    at = open_app(seeded.path, "exceptions")
    at.selectbox(key="selected_exception").set_value(f"ORDER_INCOMPLETE|{seeded.held_order_id}").run()

    at.button(key="acknowledge").click().run()  # no name given
    assert any("Enter your name" in e.value for e in at.error)

    at.text_input(key="actor_name").input("Alex Morgan")
    at.text_area(key="decision_note").input("Emailing the customer for the postcode")
    at.button(key="acknowledge").click().run()
    assert not at.exception
    assert any("acknowledged by Alex Morgan" in s.value for s in at.success)

    def row() -> tuple:
        with StateStore(seeded.path).read() as con:
            return con.execute(
                "SELECT status, resolved_by, note FROM exceptions WHERE code = 'ORDER_INCOMPLETE' AND entity_id = ?",
                [seeded.held_order_id]).fetchone()

    assert row() == ("acknowledged", None, "Emailing the customer for the postcode")
    queue = _frame_with(at, "code", "entity", "status", "sla_used").set_index("entity")
    assert queue.loc[seeded.held_order_name, "status"] == "acknowledged"

    at.selectbox(key="selected_exception").set_value(f"ORDER_INCOMPLETE|{seeded.held_order_id}").run()
    at.text_input(key="actor_name").input("Alex Morgan")
    at.text_area(key="decision_note").input("Customer sent the postcode; fixed in Shopify")
    at.button(key="resolve").click().run()
    assert row() == ("resolved", "Alex Morgan", "Customer sent the postcode; fixed in Shopify")
    queue = _frame_with(at, "code", "entity", "status", "sla_used")
    assert seeded.held_order_name not in set(queue["entity"])  # resolved ones leave the default view

    with StateStore(seeded.path).read() as con:
        actions = con.execute(
            "SELECT action, actor FROM exception_events WHERE code = 'ORDER_INCOMPLETE' AND entity_id = ?"
            " ORDER BY event_id", [seeded.held_order_id]).fetchall()
    assert actions[-2:] == [("acknowledged", "Alex Morgan"), ("resolved", "Alex Morgan")]


def test_a_decision_on_a_stale_view_does_not_reopen_what_the_pipeline_resolved(seeded, tmp_path, monkeypatch) -> None:
    seeded = _own_copy(seeded, tmp_path)
    monkeypatch.setenv("CLARUS_PIPELINES_STATE_DB", str(seeded.path))
    with StateStore(seeded.path).write() as con:
        exception_queue.clear_exception(con, "STOCK_MISMATCH", seeded.mismatch_sku)
    with pytest.raises(ValueError, match="already resolved by auto"):
        queries.record_decision("acknowledge", "STOCK_MISMATCH", seeded.mismatch_sku, "Sam", None)
    con = duckdb.connect(str(seeded.path), read_only=True)
    try:
        status = con.execute("SELECT status FROM exceptions WHERE code = 'STOCK_MISMATCH' AND entity_id = ?",
                             [seeded.mismatch_sku]).fetchone()[0]
    finally:
        con.close()
    assert status == "resolved"


def test_order_journey_finds_an_order_by_any_identifier(open_app, seeded: SeedSummary) -> None:
    journey = seeded.journey
    at = open_app(seeded.path, "journey")
    terms = [("order name", journey.order_name), ("order name", journey.order_name.lstrip("#")),
             ("Shopify order id", journey.order_id), ("Clarus id", journey.clarus_goods_out_id),
             ("shipment id", journey.shipment_id), ("tracking number", journey.tracking_number.lower())]
    for matched_on, term in terms:
        at.text_input(key="journey_search").input(term).run()
        assert not at.exception
        assert at.subheader[0].value == f"Order \\{journey.order_name}", term
        assert f"Matched on {matched_on}" in at.caption[1].value, (term, at.caption[1].value)
    assert _metric(at, "Status") == "DISPATCHED"
    assert _metric(at, "Clarus status") == "6 COMPLETED"

    steps = [m.value for m in at.markdown if m.value.startswith("`20")]
    seen = [(s.split("**")[1], s.split("· ", 1)[1].split(" —")[0].replace("\\", "")) for s in steps]
    labels = {"shopify": "Shopify", "netsuite": "NetSuite", "clarus": "Clarus", "pipeline": "Pipeline"}
    expected = [(labels[system], state) for system, state in journey.events]
    assert [s for s in seen if s in expected] == expected  # every order event, in time order
    assert ("Clarus", "SHIPMENT_DISPATCHED") in seen and ("Shopify", "REFUND_RETURN") in seen
    assert ("Shopify", "WEBHOOK orders/create") in seen and ("Clarus", "WEBHOOK goods_out/completed") in seen
    assert [s.split("`")[1] for s in steps] == sorted(s.split("`")[1] for s in steps)

    texts = _texts(at)
    assert journey.customer_name not in texts and journey.customer_email not in texts
    assert journey.tracking_number in texts


def test_order_journey_says_why_an_order_is_held(open_app, seeded: SeedSummary) -> None:
    at = open_app(seeded.path, "journey")
    at.text_input(key="journey_search").input(seeded.held_order_name).run()
    assert _metric(at, "Status") == "HELD"
    held = [w.value.replace("\\", "") for w in at.warning]
    assert any("ORDER_INCOMPLETE: Shipping address has no postcode" in w for w in held), held
    steps = [m.value for m in at.markdown if m.value.startswith("`20")]
    assert any("EXCEPTION_RAISED" in s.replace("\\", "") and "ORDER_INCOMPLETE" in s.replace("\\", "") for s in steps)


def test_order_journey_says_when_nothing_matches(open_app, seeded: SeedSummary) -> None:
    at = open_app(seeded.path, "journey")
    at.text_input(key="journey_search").input("#999999").run()
    assert any("No order matches" in w.value for w in at.warning)
    assert not at.subheader


def test_stock_page_shows_latest_balances_mismatches_and_stranded_stock(open_app, seeded: SeedSummary) -> None:
    at = open_app(seeded.path, "stock")
    assert _metric(at, "Stranded SKUs") == "1"
    assert _metric(at, "Channel mismatches") == "1"
    assert int(_metric(at, "SKUs in Clarus")) == len(seeded.skus) + 1
    latest = _frame_with(at, "sku", "available", "in_item_master").set_index("sku")
    assert not latest.loc[seeded.stranded_sku, "in_item_master"]
    assert latest.loc[seeded.mismatch_sku, "open_exceptions"] == "STOCK_MISMATCH"
    mismatch = latest.loc[seeded.mismatch_sku]
    assert mismatch["shopify_shows"] - mismatch["last_pushed"] == 9
    assert any(f"Not in the item master: {seeded.stranded_sku}" in c.value.replace("\\", "") and "worth 179.82" in c.value
               for c in at.caption)
    problems = _frame_with(at, "code", "entity_id", "message")
    assert set(zip(problems["code"], problems["entity_id"])) == {
        ("STOCK_MISMATCH", seeded.mismatch_sku), ("STRANDED_STOCK", seeded.stranded_sku)}


def test_reconciliation_shows_the_finance_reports_and_the_same_mismatches_now(open_app, seeded: SeedSummary) -> None:
    at = open_app(seeded.path, "reconciliation")
    # the stored daily reports, each downloadable as the file finance got
    buttons = {b.proto.label: b.proto for b in at.get("download_button")}
    for day, path in zip(seeded.report_dates, seeded.report_paths):
        assert path.exists() and f"{day}.csv" in buttons, buttons.keys()
        assert buttons[f"{day}.csv"].url  # served by Streamlit's media manager
        assert buttons[f"{day}.xlsx"].url  # and the same report for Excel, ids typed as text
    assert "Download CSV" in buttons  # and the check as of now
    listed = "\n".join(m.value for m in at.markdown)
    with duckdb.connect(str(seeded.path), read_only=True) as con:
        stored = finance.reports(con)
    for row in stored.iter_rows(named=True):
        assert f"**{row['report_date']}** · {row['orders']} order(s)" in listed

    # the newest report is picked first; its mismatches, or that it has none (just after UTC
    # midnight the seeded dispatches are all in yesterday's report)
    flagged_reports = _report_shown_as_stored(at, seeded.report_dates[-1], seeded.report_paths[-1])

    # the check as of now finds exactly what the reports raised, with the report's figures
    assert _metric(at, "Orders not reconciling") == str(len(seeded.reconciliation_mismatches))
    flagged = [f.value for f in at.dataframe if {"order_name", "status", "problems"} <= set(f.value.columns)
               and set(f.value["status"]) == {"mismatch"}]
    live = flagged[-1].set_index("order_name")  # the report's table comes first, the check as of now after it
    assert sorted(live.index) == seeded.reconciliation_mismatches
    part = live.loc[seeded.part_shipped_order_name]
    assert part["difference"] == pytest.approx(-36.00)  # one tee shipped, no mug
    assert "Clarus completed the order" in part["problems"]
    differs = live.loc[seeded.total_differs_order_name]
    assert differs["other_charges"] == pytest.approx(5.00)
    assert "not explained by goods" in differs["problems"]

    refunds = _frame_with(at, "kind", "refunds", "amount").set_index("kind")
    assert refunds.loc["UNCLASSIFIED", "amount"] == pytest.approx(7.25)
    assert refunds.loc["RETURN", "refunds"] == 2 and refunds.loc["RETURN", "goods_not_back"] == 1
    assert refunds.loc["RETURN", "refunded_goods_not_back"] == pytest.approx(4.50)

    # an older day's report can be looked at too
    at.selectbox(key="report_day").set_value(seeded.report_dates[0]).run()
    assert not at.exception
    flagged_reports += _report_shown_as_stored(at, seeded.report_dates[0], seeded.report_paths[0])
    assert flagged_reports  # at least one of the two days showed its table of mismatches


def _report_shown_as_stored(at, day, path) -> int:
    """The page shows the picked report's mismatches as stored, or says it has none; how many."""
    stored = finance.read_report(path).filter(pl.col("status") == "mismatch")
    if stored.is_empty():
        said = [s.value for s in at.success]
        assert (f"Every order in the {day} report reconciles." in said
                or f"Nothing was dispatched or returned on {day}." in said), said
        return 0
    shown = _frame_with(at, "order_name", "status", "problems", "difference")
    assert sorted(set(shown["order_name"])) == sorted(set(stored["order_name"]))
    return len(stored)


def test_a_missing_report_file_is_said_not_raised(open_app, seeded: SeedSummary, tmp_path) -> None:
    seeded = _own_copy(seeded, tmp_path)
    with StateStore(seeded.path).write() as con:
        con.execute("UPDATE reconciliation_reports SET path = ?", [str(tmp_path / "gone.csv")])
    at = open_app(seeded.path, "reconciliation")
    assert [b.proto.label for b in at.get("download_button")] == ["Download CSV"]
    assert any("file not found" in c.value for c in at.caption)
    assert any("is not on this machine" in w.value for w in at.warning)


def test_every_page_shows_an_empty_state_before_the_pipelines_ran(open_app, tmp_path) -> None:
    missing = tmp_path / "not-yet" / "state.duckdb"
    at = open_app(missing)
    for page in ("health", "exceptions", "journey", "stock", "reconciliation", "audit"):
        at.switch_page(f"app_pages/{page}.py").run()
        assert not at.exception
        assert any("No pipeline state yet" in i.value for i in at.info), page
    assert not missing.exists()  # looking must not create the database


# ---------------------------------------------------------------------------- access


def test_a_password_protects_the_data_and_signing_in_allows_revealing_it(open_app, seeded, monkeypatch) -> None:
    monkeypatch.setenv(auth.PASSWORD_ENV, PASSWORD)
    monkeypatch.setenv("CLARUS_PIPELINES_STATE_DB", str(seeded.path))
    at = run_app(str(APP), default_timeout=30)
    assert not at.metric and not at.dataframe  # nothing but the sign-in form
    at.text_input[0].input("wrong").run()
    at.button[0].click().run()
    assert any("Wrong password" in e.value for e in at.error)
    assert not at.metric

    at.text_input[0].input(PASSWORD)
    at.button[0].click().run()
    assert [t.value for t in at.title] == ["Health overview"]

    at.switch_page("app_pages/journey.py").run()
    at.text_input(key="journey_search").input(seeded.journey.order_name).run()
    assert seeded.journey.customer_name not in _texts(at)
    at.toggle(key="show_personal_data").set_value(True).run()
    assert seeded.journey.customer_name in _texts(at)


def test_without_sign_in_personal_data_cannot_be_revealed(open_app, seeded) -> None:
    at = open_app(seeded.path)
    assert not [t for t in at.toggle if t.label == "Show personal data"]
    at.session_state["show_personal_data"] = True  # even if the session state says so
    at.switch_page("app_pages/journey.py").run()
    at.text_input(key="journey_search").input(seeded.journey.order_name).run()
    assert seeded.journey.customer_name not in _texts(at)


def test_exposed_without_a_password_it_refuses_to_show_anything(open_app, seeded, server_address) -> None:
    server_address("0.0.0.0")
    at = open_app(seeded.path)
    assert any(auth.PASSWORD_ENV in e.value for e in at.error)
    assert not at.metric and not at.dataframe


@pytest.mark.parametrize(
    ("address", "password", "required"),
    [("127.0.0.1", None, False), ("localhost", None, False), ("::1", None, False), ("127.0.0.2", None, False),
     ("0.0.0.0", None, True), (None, None, True), ("10.1.2.3", "x", True), ("127.0.0.1", "x", True)],
)
def test_login_is_required_off_localhost_or_when_a_password_is_set(address, password, required) -> None:
    assert auth.login_required(address, password) is required


def test_password_comparison() -> None:
    assert auth.password_matches(PASSWORD, PASSWORD)
    assert not auth.password_matches(PASSWORD[:-1], PASSWORD)
    assert not auth.password_matches("", PASSWORD)


def test_every_page_copes_with_a_fresh_empty_database(open_app, tmp_path) -> None:
    empty = tmp_path / "state.duckdb"
    StateStore(empty).ensure_schema()
    at = open_app(empty)
    assert _metric(at, "Open exceptions") == "0"
    expected = {"health": "No orders yet.", "exceptions": "The exception queue is empty.",
                "stock": "No stock snapshot yet", "reconciliation": "No orders dispatched", "audit": "No audit yet"}
    extra = {"health": ("No data-quality run recorded yet", "No alert sent or waiting yet"),
             "reconciliation": ("No daily report yet",)}
    for page, message in expected.items():
        at.switch_page(f"app_pages/{page}.py").run()
        assert not at.exception, (page, [e.value for e in at.exception])
        for text in (message, *extra.get(page, ())):
            assert any(text in i.value for i in at.info), (page, text, [i.value for i in at.info])
    at.switch_page("app_pages/journey.py").run()
    at.text_input(key="journey_search").input("#1001").run()
    assert any("No order matches" in w.value for w in at.warning)


# ---------------------------------------------------------------------------- never in the pipelines' way


def test_queries_read_a_snapshot_so_pipeline_writes_never_wait(seeded: SeedSummary, monkeypatch, tmp_path) -> None:
    state = _own_copy(seeded, tmp_path).path
    monkeypatch.setenv("CLARUS_PIPELINES_STATE_DB", str(state))
    snapshot = queries.current_snapshot(force=True)
    assert Path(snapshot.path) != state
    assert queries.current_snapshot() == snapshot  # reused for a few seconds

    reader = duckdb.connect(snapshot.path, read_only=True)  # a dashboard query still running
    try:
        with StateStore(state, lock_timeout_s=2).write() as con:  # the pipeline writes meanwhile
            exception_queue.raise_exception(con, "ORPHAN_ORDER", "GO-1", "stray goods out")
    finally:
        reader.close()
    fresh = queries.current_snapshot(force=True)
    assert fresh.path != snapshot.path
    found = queries.exceptions(fresh.path, codes=("ORPHAN_ORDER",))
    assert "GO-1" in set(found["entity_id"])
    queries.current_snapshot(force=True)
    assert len(list(Path(fresh.path).parent.glob("snapshot-*.duckdb"))) == queries.SNAPSHOTS_KEPT


def test_a_busy_writer_means_the_previous_snapshot_is_shown(seeded: SeedSummary, monkeypatch, tmp_path) -> None:
    state = _own_copy(seeded, tmp_path).path
    monkeypatch.setenv("CLARUS_PIPELINES_STATE_DB", str(state))
    monkeypatch.setattr(queries, "SNAPSHOT_LOCK_TIMEOUT_S", 0.2)
    first = queries.current_snapshot(force=True)
    with StateStore(state).write():  # a long pipeline transaction holds the lock
        served = queries.current_snapshot(force=True)
    assert served.path == first.path and "LockTimeout" in served.error
    assert queries.current_snapshot(force=True).error is None


def test_dispatch_sla_splits_orders_by_outcome(tmp_path) -> None:
    path = tmp_path / "sla.duckdb"
    store = StateStore(path)
    day = pd.Timestamp("2026-11-20 09:00").to_pydatetime()
    orders = [("1", day, None), ("2", day, day + pd.Timedelta(hours=3)), ("3", day, day + pd.Timedelta(hours=30)),
              ("4", day + pd.Timedelta(days=1), day + pd.Timedelta(days=1, hours=2))]
    with store.write() as con:
        for order_id, placed, dispatched in orders:
            con.execute(
                "INSERT INTO orders (order_id, order_name, status, created_at, received_at, updated_at)"
                " VALUES (?, ?, 'ACKNOWLEDGED', ?, ?, ?)", [order_id, f"#{order_id}", placed, placed, placed])
            if dispatched:
                con.execute(
                    "INSERT INTO shipments (shipment_id, order_id, state, dispatched_at, updated_at)"
                    " VALUES (?, ?, 'DISPATCHED_IN_WMS', ?, ?)", [f"s{order_id}", order_id, dispatched, dispatched])
        con.execute(
            "INSERT INTO orders (order_id, order_name, status, created_at, received_at, updated_at)"
            " VALUES ('5', '#5', 'CANCELLED', ?, ?, ?)", [day, day, day])
    frame = queries.dispatch_sla(str(path), day - pd.Timedelta(days=1))
    got = {(pd.Timestamp(r.day).strftime("%Y-%m-%d"), r.outcome): r.orders for r in frame.itertuples()}
    assert got == {
        ("2026-11-20", "not dispatched yet"): 1, ("2026-11-20", "within SLA"): 1, ("2026-11-20", "late"): 1,
        ("2026-11-21", "within SLA"): 1,
    }
