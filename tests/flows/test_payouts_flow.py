"""Shopify Payments payouts: the sandbox serves them, the daily asset reads and matches them,
a discrepancy raises RECONCILIATION_MISMATCH naming the payout, and the finance report lists them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import dagster as dg
import pytest

from clarus_pipelines.connectors.shopify import BALANCE_TRANSACTIONS_QUERY, PAYOUTS_QUERY, ShopifyResource
from clarus_pipelines.domain.reconciliation import read_report, run_reconciliation
from clarus_pipelines.resources import PoliciesResource, StateStoreResource
from clarus_pipelines.sandbox.serving import serve_in_thread
from clarus_pipelines.sandbox.shopify import ShopifySandbox
from clarus_pipelines.settings import SANDBOX_POLICIES
from clarus_pipelines.state import StateStore
from apptest import run_app
from pgstate import state_base
from world import make_store

STATE_BACKENDS = ("duckdb", "postgres")  # every test that uses `world` once per state backend

TOKEN = "payouts-token"
ADDRESS = {"first_name": "Ada", "last_name": "Lovelace", "address1": "12 Station Road", "city": "Leeds", "zip": "LS1 4AP",
           "country": "United Kingdom", "country_code": "GB"}


def _utc_naive(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(timezone.utc).replace(tzinfo=None)


class Shop:
    """A served Shopify sandbox with a few paid orders and a partial refund, mirrored into our state."""

    def __init__(self, shop: ShopifySandbox, url: str, state: str | Path):
        self.shop, self.url, self.state = shop, url, state  # a DuckDB file or a postgresql:// URL
        self.store = make_store(state)
        self.orders: list[dict] = []

    def place(self, quantity: int = 1) -> dict:
        variant = self.shop.catalog.clean_variants()[len(self.orders) % 3]
        order = self.shop.create_order(line_items=[{"variant_id": variant.variant_id, "quantity": quantity}],
                                       shipping_address=ADDRESS, email="ada@example.com",
                                       shipping_lines=[{"code": "standard", "title": "Standard", "price": "3.95"}])
        self.orders.append(order)
        self.mirror_order(order["id"])
        return order

    def mirror_order(self, order_id: int) -> None:
        """What the order flow stores from the order's webhook (the columns the payouts match reads)."""
        body = self.shop.order(order_id)
        with self.store.write() as con:
            con.execute(
                "INSERT OR REPLACE INTO orders (order_id, order_name, status, financial_status, currency, total_price,"
                " payload, created_at, received_at, updated_at) VALUES (?, ?, 'ACKNOWLEDGED', ?, ?, ?, ?, ?, ?, ?)",
                [str(body["id"]), body["name"], body["financial_status"], body["currency"], body["total_price"],
                 json.dumps(body), _utc_naive(body["created_at"]), datetime.now(), datetime.now()],
            )

    def refund(self, order: dict, amount: str) -> dict:
        refund = self.shop.refund_order(order["id"], amount=amount)
        with self.store.write() as con:
            con.execute(
                "INSERT INTO refunds (refund_id, order_id, kind, amount, state, currency, payload, processed_at, received_at,"
                " updated_at) VALUES (?, ?, 'GOODWILL', ?, 'DONE', 'GBP', ?, ?, ?, ?)",
                [str(refund["id"]), str(order["id"]), Decimal(amount), json.dumps(refund),
                 _utc_naive(refund["processed_at"]), datetime.now(), datetime.now()],
            )
        self.mirror_order(order["id"])
        return refund

    def resources(self) -> dict:
        return {"shopify": ShopifyResource(base_url=self.url, access_token=TOKEN, page_size=2),
                "state": StateStoreResource(path=str(self.state)),
                "policies": PoliciesResource(path=str(SANDBOX_POLICIES))}

    def today(self) -> date:
        """The UTC day the orders were placed (their payout's day), even if midnight passed since."""
        first = self.orders[0]["created_at"] if self.orders else None
        return _utc_naive(first).date() if first else self.shop.clock().astimezone(timezone.utc).date()

    def materialize(self, day: date | None = None) -> dg.ExecuteInProcessResult:
        from clarus_pipelines.assets.monitoring import shopify_payouts

        return dg.materialize([shopify_payouts], partition_key=(day or self.today()).isoformat(), resources=self.resources())

    def open_mismatches(self) -> dict[str, tuple[str, str]]:
        with self.store.read() as con:
            return {r[0]: (r[1], r[2]) for r in con.execute(
                "SELECT entity_id, entity_type, message FROM exceptions WHERE code = 'RECONCILIATION_MISMATCH'"
                " AND status <> 'resolved'").fetchall()}


@contextmanager
def served(tmp_path, state_backend: str = "duckdb") -> Iterator[Shop]:
    shop = ShopifySandbox(access_token=TOKEN, webhook_secret="payouts-secret")
    server = serve_in_thread(shop.app)
    try:
        with state_base(state_backend, tmp_path) as state:
            yield Shop(shop, server.url, state)
    finally:
        server.stop()
        shop.close()


@pytest.fixture
def world(tmp_path, state_backend) -> Iterator[Shop]:
    with served(tmp_path, state_backend) as w:
        first = w.place(2)
        w.place(1)
        w.place(3)
        w.refund(first, "7.50")  # a partial refund
        yield w


def test_payout_documents_pass_shopifys_schema_and_the_sandbox_serves_them(world):
    from clarus_pipelines.sandbox.shopify_graphql import schema_problems

    assert schema_problems(PAYOUTS_QUERY) == [] and schema_problems(BALANCE_TRANSACTIONS_QUERY) == []
    client = world.resources()["shopify"]
    start = datetime.combine(world.today(), datetime.min.time(), tzinfo=timezone.utc)
    [payout] = client.iter_payouts(start, start + timedelta(days=1))
    transactions = list(client.iter_balance_transactions(payout["payout_id"]))  # page size 2: three pages
    assert sorted(t["type"] for t in transactions) == ["CHARGE", "CHARGE", "CHARGE", "REFUND"]
    assert Decimal(payout["net"]) == sum(Decimal(t["net"]) for t in transactions)
    paid = sum(Decimal(o["total_price"]) for o in world.orders)
    assert Decimal(payout["summary"]["chargesGross"]["amount"]) == paid
    refund = next(t for t in transactions if t["type"] == "REFUND")
    assert (refund["amount"], refund["fee"]) == ("-7.50", "0.00") and refund["source_order_transaction_id"]
    assert not list(client.iter_payouts(start - timedelta(days=1), start))  # nothing issued the day before
    calls = world.shop.graphql_calls("shopifyPaymentsAccount")
    assert calls and all(c["status"] == 200 for c in calls)


def test_the_asset_matches_the_days_payouts_and_all_reconcile(world):
    result = world.materialize()
    assert result.success
    [check] = result.get_asset_check_evaluations()
    assert check.check_name == "payouts_reconcile" and check.passed
    [materialization] = result.asset_materializations_for_node("shopify_payouts")
    assert materialization.metadata["payouts"].value == 1 and materialization.metadata["transactions"].value == 4
    with world.store.read() as con:
        statuses = con.execute("SELECT kind, status FROM payout_matches ORDER BY line_no").fetchall()
    assert statuses[0] == ("payout", "ok") and sorted(statuses[1:]) == [("charge", "ok")] * 3 + [("refund", "ok")]
    assert world.open_mismatches() == {}


def test_an_injected_discrepancy_raises_a_mismatch_naming_the_payout_and_clears_when_fixed(world):
    second = world.orders[1]
    world.shop.payments.inject("fee", order_id=second["id"], amount="0.40")
    result = world.materialize()
    [check] = result.get_asset_check_evaluations()
    assert not check.passed and check.metadata["mismatched_payouts"].value == 1
    [(entity, (entity_type, message))] = world.open_mismatches().items()
    payout_id = entity.removeprefix("payout:")
    assert entity_type == "payout" and f"payout {payout_id}" in message
    assert f"order {second['name']}: fee" in message

    world.shop.payments.reset()  # Shopify corrected the fee
    world.materialize()
    assert world.open_mismatches() == {}


def test_dropped_and_unknown_charges_are_missing_on_either_side(world):
    third = world.orders[2]
    world.shop.payments.inject("drop_charge", order_id=third["id"])
    world.shop.payments.inject("unknown_charge", order_id=world.orders[0]["id"], amount="12.00")
    world.materialize()
    [(_, (_, message))] = world.open_mismatches().items()
    assert f"missing at Shopify: order {third['name']}" in message
    assert "missing on our side: Shopify charged 12.00 GBP for order #9999" in message


def test_backfilling_a_day_twice_writes_the_same_rows(world):
    def snapshot():
        with world.store.read() as con:
            return [sorted(con.sql(f"SELECT * FROM {table}").pl().drop(stamp).rows(), key=repr)
                    for table, stamp in (("shopify_payouts", "read_at"), ("shopify_balance_transactions", "read_at"),
                                         ("payout_matches", "matched_at"))]

    world.shop.payments.inject("payout_net", order_id=world.orders[0]["id"], amount="1.00")
    world.materialize()
    first = snapshot()
    world.materialize()
    assert snapshot() == first and [len(t) for t in first] == [1, 4, 5]
    assert len(world.open_mismatches()) == 1


def test_the_days_finance_report_lists_the_payouts_and_keeps_their_exceptions(world, tmp_path):
    world.shop.payments.inject("charge_amount", order_id=world.orders[1]["id"], amount="-1.00")
    world.materialize()
    day = world.today()
    run = run_reconciliation(world.store, day, tmp_path / "reports")
    report = read_report(run.path)
    payout_rows = report.filter(report["section"] == "payout").to_dicts()
    [transaction] = report.filter(report["section"] == "payout_transaction").to_dicts()
    assert [r["status"] for r in payout_rows] == ["mismatch"] and payout_rows[0]["payout_id"]
    assert transaction["order_name"] == world.orders[1]["name"] and transaction["transaction_kind"] == "charge"
    assert Decimal(transaction["shopify_amount"]) == Decimal(world.orders[1]["total_price"]) - 1
    assert run.as_metadata()["payouts_mismatched"] == 1
    # the order reconciliation syncs orders only: the payout's exception stays open
    assert [e for e, (t, _) in world.open_mismatches().items() if t == "payout"] == [f"payout:{payout_rows[0]['payout_id']}"]


def test_the_dashboards_reconciliation_page_shows_the_payouts(world, monkeypatch):
    from pathlib import Path

    from streamlit import config as st_config

    from clarus_pipelines.dashboards import auth

    world.shop.payments.inject("fee", order_id=world.orders[2]["id"], amount="0.30")
    world.materialize()
    monkeypatch.delenv(auth.PASSWORD_ENV, raising=False)
    state_env = "CLARUS_PIPELINES_STATE_URL" if str(world.state).startswith("postgresql://") else "CLARUS_PIPELINES_STATE_DB"
    monkeypatch.setenv(state_env, str(world.state))
    before = st_config.get_option("server.address")
    st_config.set_option("server.address", "127.0.0.1")
    try:
        at = run_app(str(Path(__file__).resolve().parents[2] / "dashboards" / "app.py"), default_timeout=60)
        at.switch_page("app_pages/reconciliation.py").run()
    finally:
        st_config.set_option("server.address", before)
    assert not at.exception, [e.value for e in at.exception]
    assert next(m.value for m in at.metric if m.label == "Payouts not reconciling") == "1"
    [payouts] = [f.value for f in at.dataframe if "payout_status" in f.value.columns]
    assert payouts["status"].tolist() == ["mismatch"] and payouts["difference"].tolist() == [pytest.approx(-0.30)]
    [lines] = [f.value for f in at.dataframe if {"kind", "expected_fee"} <= set(f.value.columns)]
    assert lines["order_name"].tolist() == [world.orders[2]["name"]] and "fee" in lines["problems"].iloc[0]


def test_a_charge_that_reached_a_later_payout_clears_the_earlier_payouts_mismatch(tmp_path):
    """Re-checked from what is stored: the later day's run clears the earlier payout without re-reading it."""
    from clarus_pipelines.domain.payouts import run_payout_reconciliation

    store = StateStore(tmp_path / "state.duckdb")
    day1, at = date(2026, 3, 2), datetime(2026, 3, 2, 10, 0)
    with store.write() as con:
        for number, minutes in ((1, 0), (2, 30), (3, 60)):
            con.execute(
                "INSERT INTO orders (order_id, order_name, status, financial_status, currency, total_price, payload,"
                " created_at, received_at, updated_at) VALUES (?, ?, 'ACKNOWLEDGED', 'paid', 'GBP', 20.00, ?, ?, ?, ?)",
                [str(number), f"#{number}", json.dumps({"payment_gateway_names": ["shopify_payments"]}),
                 at + timedelta(minutes=minutes), at, at])

    def bt(n: int, payout: str, when: datetime) -> dict:
        return {"transaction_id": f"bt-{n}", "payout_id": payout, "type": "CHARGE", "source_type": "CHARGE",
                "source_order_transaction_id": f"s-{n}", "order_id": str(n), "order_name": f"#{n}",
                "transaction_date": when, "currency": "GBP", "amount": "20.00", "fee": "0.65", "net": "19.35"}

    first = [bt(1, "P1", at), bt(3, "P1", at + timedelta(minutes=60))]  # #2's charge is not in P1
    payout1 = {"payout_id": "P1", "payout_gid": "gid://shopify/ShopifyPaymentsPayout/1", "issued_at": datetime(2026, 3, 2, 23),
               "status": "PAID", "currency": "GBP", "net": "38.70"}
    run1 = run_payout_reconciliation(store, day1, [payout1], first, now=datetime(2026, 3, 3, 0, 5))
    assert run1.outcome == {"payout:P1": "raised"}

    late = [bt(2, "P2", at + timedelta(minutes=30))]
    payout2 = {**payout1, "payout_id": "P2", "issued_at": datetime(2026, 3, 3, 23), "net": "19.35"}
    run2 = run_payout_reconciliation(store, day1 + timedelta(days=1), [payout2], late, now=datetime(2026, 3, 4, 0, 5))
    assert run2.outcome == {"payout:P1": "auto_resolved"} and list(run2.rechecked) == [day1]
    with store.read() as con:
        assert con.execute("SELECT status FROM payout_matches WHERE payout_id = 'P1' AND line_no = 0").fetchone() == ("ok",)
        assert con.execute("SELECT count(*) FROM shopify_balance_transactions WHERE payout_id = 'P1'").fetchone() == (2,)
