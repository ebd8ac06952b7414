"""`clarus-pipelines explain-order`: one JSON object on stdout saying what would happen to an order."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from clarus_pipelines import cli
from clarus_pipelines.sandbox.openapi import request_problems
from clarus_pipelines.sandbox.serving import serve_in_thread
from clarus_pipelines.sandbox.shopify import ShopifySandbox
from order_samples import make_order, order_path
from pgstate import state_base
from world import make_store

CONSOLE_SCRIPT = Path(sys.executable).with_name("clarus-pipelines")
STATE_BACKENDS = ("duckdb", "postgres")  # every test that uses `home` once per state backend


def seed_items(home: Path, products: dict[str, str]) -> None:
    """The item master the flow would have built: cleaned SKU -> Clarus product id (in the state the
    command reads: the home's DuckDB file, or the PostgreSQL database of CLARUS_PIPELINES_STATE_URL)."""
    with make_store(os.environ.get("CLARUS_PIPELINES_STATE_URL") or home / "state.duckdb").write() as con:
        if products:
            con.executemany(
                "INSERT INTO items (sku, sku_raw, clarus_product_id, netsuite_item_id, updated_at) VALUES (?, ?, ?, ?, now())",
                [[sku, sku, pid, pid] for sku, pid in products.items()],
            )
        con.executemany(
            "INSERT INTO clarus_carriers (carrier, service, carrier_id, carrier_service_id, read_at) VALUES (?, ?, ?, ?, now())",
            [["ROYAL_MAIL", "TRACKED_48", "1", "801"], ["DPD", "NEXT_DAY", "2", "811"]],
        )


def run_console(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([str(CONSOLE_SCRIPT), "explain-order", *args], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=120)


@pytest.fixture(autouse=True)
def _restore_logging():
    """`cli.main` points the root logger at the (captured) stderr of the moment: undo it."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def home(tmp_path, monkeypatch, state_backend) -> Iterator[Path]:
    home = tmp_path / "home"
    monkeypatch.setenv("CLARUS_PIPELINES_HOME", str(home))
    with state_base(state_backend, home) as state:  # the home's DuckDB file, or a fresh database
        if state_backend == "postgres":
            monkeypatch.setenv("CLARUS_PIPELINES_STATE_URL", state)
        yield home


def test_console_script_explains_a_held_fixture_order(home, payloads):
    path = order_path("custom_line_no_sku", payloads)
    done = run_console(str(path), env={"CLARUS_PIPELINES_HOME": str(home)})
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)  # exactly one JSON document on stdout
    assert result == {
        "status": "held",
        "reasons": [
            {"code": "ORDER_INCOMPLETE", "message": "order has no shipping address"},
            {"code": "SKU_UNKNOWN", "message": f"line 1 ('{payloads['custom_line_title']}') has no SKU"},
            {"code": "SHIP_METHOD_UNMAPPED", "message": "order has no shipping line"},
        ],
        "goods_out": None,
    }
    assert "explained order" in done.stderr  # logs go to stderr


def test_ready_order_comes_with_its_goods_out(home, capsys, payloads):
    seed_items(home, payloads["products"])
    path = order_path("node_api", payloads)
    assert cli.main(["explain-order", str(path), "--at", "2025-03-07T16:00:00+00:00"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["status"], result["reasons"]) == ("ready", [])
    body = result["goods_out"]
    assert request_problems("post", "/api/goods_outs", body) == []
    attrs = body["data"]["attributes"]
    assert (attrs["reference"], attrs["external_system_reference1"]) == (payloads["order_name"], payloads["order_id"])
    assert attrs["expected_date_of_dispatch"] == "2025-03-10T15:00:00Z"  # Friday after the cut-off: Monday
    assert (attrs["carrier_id"], attrs["carrier_service_id"]) == (1, 801)
    assert [c["attributes"]["product_id"] for c in attrs["lines_changes"]] == [101, 102, 103]
    assert body["data"]["relationships"]["address"]["data"]["attributes"]["country_code"] == payloads["node_country"]


def test_every_reason_is_listed(home, tmp_path, capsys):
    seed_items(home, {"SKU-A": "201", "000123": "202"})
    order = make_order(lines=[("SKU-A", 1), ("123", 1), ("SKU-A", 1)], shipping=("pigeon", "Pigeon"))
    order["line_items"][2].update(quantity="two", current_quantity=None)
    order["shipping_address"].update(zip="NOT A CODE", city=None)
    path = tmp_path / "order.json"
    path.write_text(json.dumps({"order": order}))  # a REST read, wrapped
    assert cli.main(["explain-order", str(path)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["status"] == "held" and result["goods_out"] is None
    assert [(r["code"], r["message"]) for r in result["reasons"]] == [
        ("ORDER_INCOMPLETE", "shipping address has no city"),
        ("ORDER_INCOMPLETE", "postcode is not a valid GB postcode"),
        ("ORDER_INCOMPLETE", "line 3 ('Product SKU-A') has quantity 'two', not a positive whole number"),
        ("SKU_UNKNOWN", "line 2 ('Product 123'): SKU '123' is not in the item master; it matches item '000123' once leading zeros are restored"),
        ("SHIP_METHOD_UNMAPPED", "shipping line (code 'pigeon', title 'Pigeon') matches no ship_methods rule"),
    ]


def test_explains_an_order_read_from_shopify(home, tmp_path, monkeypatch, capsys):
    seed_items(home, {})
    token = os.environ["SHOPIFY_ACCESS_TOKEN"]
    shop = ShopifySandbox(access_token=token, webhook_secret=os.environ["SHOPIFY_WEBHOOK_SECRET"])
    served = serve_in_thread(shop.app)
    try:
        sku = next(i.shopify_sku for i in shop.catalog.clean_variants() if i.quirk is None)
        order = shop.create_order(line_items=[{"sku": sku, "quantity": 1}], shipping_address=None,
                                  shipping_lines=[{"code": "standard", "title": "Standard Shipping"}])
        monkeypatch.setenv("SHOPIFY_BASE_URL", served.url)
        assert cli.main(["explain-order", str(order["id"])]) == 0
        result = json.loads(capsys.readouterr().out)
        assert result["status"] == "held"
        assert {r["code"] for r in result["reasons"]} == {"ORDER_INCOMPLETE", "SKU_UNKNOWN"}
        # An id Shopify does not know: the error on stderr, and the failure shape on stdout.
        assert cli.main(["explain-order", "999999999"]) == 2
        captured = capsys.readouterr()
        assert json.loads(captured.out) == {"ok": False, "error": "Shopify has no order 999999999"}
        assert "explain-order: Shopify has no order 999999999" in captured.err
    finally:
        served.stop()
        shop.close()


def test_missing_file_is_an_error_not_a_traceback(home, capsys):
    assert cli.main(["explain-order", "/no/such/order.json"]) == 2
    captured = capsys.readouterr()
    failure = json.loads(captured.out)
    assert failure["ok"] is False and "no such file" in failure["error"]
    assert "Traceback" not in captured.err and "no such file" in captured.err
