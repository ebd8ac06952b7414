"""The great-expectations suites in quality/suites/ against a real state (a DuckDB file or PostgreSQL).

Clean rows pass every suite; each kind of bad row (SKU format, GTIN check digit, tracking
format, referential integrity, uniqueness, negative stock) fails its suite, and the
failing rows' ids are in the sample. The Dagster check step reports the same.
"""

from __future__ import annotations

import random
from datetime import datetime

import dagster as dg
import pytest

from clarus_pipelines.data_quality import load_suites, read_tables, suite_parameters, validate
from clarus_pipelines.domain.barcodes import gtin_check_digit
from clarus_pipelines.resources import PoliciesResource, StateStoreResource
from clarus_pipelines.sandbox.clarus import generate_tracking_number
from clarus_pipelines.settings import SANDBOX_POLICIES, load_policies
from clarus_pipelines.state import StateStore
from world import make_store

STATE_BACKENDS = ("duckdb", "postgres")  # every test that uses `store` once per state backend (tests/flows/conftest.py)

NOW = datetime(2026, 3, 2, 9, 0)


def gtin(body: str) -> str:
    return body + str(gtin_check_digit(body))


def royal_mail() -> str:
    return generate_tracking_number("ROYAL_MAIL", random.Random(4))


def wrong_check_digit(number: str) -> str:
    digit = int(number[10])
    return number[:10] + str((digit + 1) % 10) + number[11:]


def seed_clean(store: StateStore) -> None:
    with store.write() as con:
        con.executemany(
            "INSERT INTO items (sku, sku_raw, description, barcode, updated_at) VALUES (?, ?, ?, ?, ?)",
            [("000123", "000123", "Sleeve", gtin("501234567890"), NOW), ("TEE-NAVY-M", " tee-navy-m", "Tee", None, NOW)],
        )
        con.executemany(
            "INSERT INTO orders (order_id, order_name, status, currency, total_price, received_at, updated_at)"
            " VALUES (?, ?, ?, 'GBP', ?, ?, ?)",
            [("5870000000001", "#1001", "ACKNOWLEDGED", 28.50, NOW, NOW), ("5870000000002", "#1002", "HELD", 9.00, NOW, NOW)],
        )
        con.executemany(
            "INSERT INTO order_lines (order_id, line_id, sku, quantity, price, ships) VALUES (?, ?, ?, ?, ?, ?)",
            [("5870000000001", "L1", "000123", 1, 4.50, True), ("5870000000001", "L2", "TEE-NAVY-M", 1, 24.00, True),
             # held for an unknown SKU: allowed, it never reached Clarus
             ("5870000000002", "L3", "NOT-IN-MASTER", 1, 9.00, True)],
        )
        con.execute(
            "INSERT INTO shipments (shipment_id, order_id, carrier, tracking_number, state, dispatched_at, updated_at)"
            " VALUES ('SHP-1', '5870000000001', 'ROYAL_MAIL', ?, 'CHANNEL_CONFIRMED', ?, ?)",
            [royal_mail(), NOW, NOW],
        )
        con.executemany("INSERT INTO shipment_lines (shipment_id, sku, quantity) VALUES ('SHP-1', ?, 1)",
                        [("000123",), ("TEE-NAVY-M",)])
        con.execute(
            "INSERT INTO stock_balances_current VALUES ('P1', '000123', '1', '1', 5, 1, 0, 6, ?), ('P2', 'TEE-NAVY-M', '1', '1', 0, 0, 0, 0, ?)",
            [NOW, NOW],
        )
        con.execute("INSERT INTO available_to_sell VALUES ('000123', '655441491', 5, 2, 0, 3, ?)", [NOW])
        con.execute(
            "INSERT INTO refunds (refund_id, order_id, kind, amount, state, received_at, updated_at)"
            " VALUES ('R1', '5870000000001', 'RETURN', 4.50, 'AWAITING_RETURN', ?, ?)", [NOW, NOW],
        )
        con.execute(
            "INSERT INTO refund_lines (refund_id, line_id, sku, quantity, physical, amount, received_quantity)"
            " VALUES ('R1', 'L1', '000123', 1, true, 4.50, 0)"
        )


def seed_bad(store: StateStore) -> None:
    with store.write() as con:
        con.executemany(
            "INSERT INTO items (sku, sku_raw, description, barcode, updated_at) VALUES (?, ?, ?, ?, ?)",
            [("bad sku!", "bad sku!", "Not cleaned", gtin("501234567890"), NOW),  # 000123's barcode
             ("MUG-1", "MUG-1", "Mug", gtin("501234567890")[:-1] + "9", NOW)],  # wrong check digit
        )
        con.execute(
            "INSERT INTO orders (order_id, order_name, status, currency, total_price, received_at, updated_at)"
            " VALUES ('5870000000003', '#1001', 'ACKNOWLEDGED', 'GBP', 5, ?, ?)", [NOW, NOW],  # name used twice
        )
        con.executemany(
            "INSERT INTO order_lines (order_id, line_id, sku, quantity, price, ships) VALUES (?, ?, ?, ?, ?, ?)",
            [("5870000000999", "L9", "000123", 1, 4.50, True),  # its order does not exist
             ("5870000000003", "L4", "GHOST-SKU", 1, 5.00, True),  # in Clarus, SKU not in the master
             ("5870000000003", "L5", "000123", -1, 4.50, True)],  # negative quantity
        )
        con.executemany(
            "INSERT INTO shipments (shipment_id, order_id, carrier, tracking_number, state, dispatched_at, updated_at)"
            " VALUES (?, ?, 'ROYAL_MAIL', ?, 'DISPATCHED_IN_WMS', ?, ?)",
            [("SHP-2", "5870000000003", wrong_check_digit(royal_mail()), NOW, NOW),
             ("SHP-3", "5870000000003", royal_mail(), NOW, NOW)],  # SHP-1's number, on another order
        )
        con.execute("UPDATE stock_balances_current SET available = -3 WHERE sku = 'TEE-NAVY-M'")
        con.execute("UPDATE refund_lines SET received_quantity = 2 WHERE refund_id = 'R1'")


@pytest.fixture
def store(state) -> StateStore:
    store = make_store(state)
    seed_clean(store)
    return store


@pytest.fixture(scope="module")
def policies():
    return load_policies(SANDBOX_POLICIES)


def run(store: StateStore, policies) -> dict:
    suites = load_suites()
    with store.read() as con:
        frames = read_tables(con, suites)
    return {r.suite.name: r for r in validate(suites, frames, suite_parameters(policies))}


def sample_values(result, rule_words: str, column: str) -> set:
    [outcome] = [o for o in result.failed if rule_words in o.rule]
    return {row.get(column) for row in outcome.sample}


def test_suites_are_well_formed():
    suites = load_suites()
    assert {s.name for s in suites} >= {"items", "orders", "order_lines", "shipments", "stock_balances", "refunds"}
    for suite in suites:
        assert suite.expectations and suite.id_columns, suite.name


def test_clean_rows_pass_then_each_kind_of_bad_row_fails_its_suite(store, policies):
    clean = run(store, policies)
    assert {name: r.summary() for name, r in clean.items() if not r.success} == {}
    assert clean["order_lines"].rows_checked == 3

    seed_bad(store)
    bad = run(store, policies)
    assert {name for name, r in bad.items() if not r.success} == {
        "items", "orders", "order_lines", "shipments", "stock_balances", "refunds"}
    assert bad["available_to_sell"].success and bad["shipment_lines"].success

    items = bad["items"]
    assert sample_values(items, "no character the SKU cleaning removes", "sku") == {"bad sku!"}
    assert sample_values(items, "letter case", "sku") == {"bad sku!"}
    assert sample_values(items, "GTIN", "sku") == {"MUG-1"}
    assert sample_values(items, "share a barcode", "sku") == {"000123", "bad sku!"}
    assert [o.severity for o in items.failed if "share a barcode" in o.rule] == ["warning"]
    assert items.critical

    assert sample_values(bad["orders"], "order names are unique", "order_name") == {"#1001"}

    lines = bad["order_lines"]
    assert sample_values(lines, "belongs to an order", "line_id") == {"L9"}
    assert sample_values(lines, "is an item of the master", "line_id") == {"L4"}  # the held line L3 is not flagged
    [negative] = [o for o in lines.failed if o.columns == ["quantity"]]
    assert [row["line_id"] for row in negative.sample] == ["L5"] and negative.unexpected_count == 1

    shipments = bad["shipments"]
    assert sample_values(shipments, "tracking formats", "shipment_id") == {"SHP-2"}
    assert sample_values(shipments, "not reused across orders", "shipment_id") == {"SHP-1", "SHP-3"}

    [stock] = bad["stock_balances"].failed
    assert stock.columns == ["available"] and stock.sample == [{"available": -3, "sku": "TEE-NAVY-M", "warehouse_id": "1"}]
    assert sample_values(bad["refunds"], "never more received back", "refund_id") == {"R1"}


def test_dagster_check_step_reports_each_suite_with_failing_rows(store, state, policies, tmp_path):
    from clarus_pipelines.assets.data_quality import data_quality_job, defs as quality_defs

    seed_bad(store)
    defs = dg.Definitions.merge(quality_defs, dg.Definitions(resources={
        "state": StateStoreResource(path=str(state)), "policies": PoliciesResource(path=str(SANDBOX_POLICIES)),
    }))
    result = defs.resolve_job_def(data_quality_job.name).execute_in_process()
    assert result.success  # failing checks do not fail the run; they are reported
    evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert set(evaluations) == {s.check_name for s in load_suites()}
    items = evaluations["quality_items"]
    assert items.asset_key == dg.AssetKey("item_master") and not items.passed
    assert items.severity == dg.AssetCheckSeverity.ERROR
    assert "MUG-1" in items.metadata["failing_rows_sample"].value
    assert evaluations["quality_available_to_sell"].passed
    with store.read() as con:
        stored = dict(con.execute("SELECT suite, success FROM data_quality_results").fetchall())
    assert stored["items"] is False and stored["available_to_sell"] is True
