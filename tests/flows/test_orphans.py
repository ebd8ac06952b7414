"""ORPHAN_ORDER both ways: state tables against goods outs read from the Clarus sandbox over HTTP."""

from __future__ import annotations

import socket
from datetime import datetime, timedelta

import dagster as dg
import pytest
import yaml

from clarus_pipelines.connectors.clarus import ClarusResource
from clarus_pipelines.connectors.clarus_model import build_goods_out_body
from clarus_pipelines.domain import orphans
from clarus_pipelines.exception_queue import sync_exceptions, utcnow
from clarus_pipelines.resources import PoliciesResource, StateStoreResource
from clarus_pipelines.settings import SANDBOX_POLICIES, load_policies
from sandbox_helpers import clarus_credentials, served_clarus
from world import make_store

STATE_BACKENDS = ("duckdb", "postgres")  # every test once per state backend (tests/flows/conftest.py)

ADDRESS = {"name": "Jane Doe", "address_1": "1 High Street", "postcode": "AB1 2CD", "country_code": "GB"}


def clarus_client(url: str, **overrides) -> ClarusResource:
    client_id, client_secret = clarus_credentials()
    return ClarusResource(**{"base_url": url, "subdomain": "sandbox", "client_id": client_id, "client_secret": client_secret,
                             "timeout_s": 5.0, "min_interval_s": 0.0, **overrides})


def goods_out(client: ClarusResource, product_id: str, reference: str, shopify_id: str | None) -> str:
    body = build_goods_out_body(
        reference=reference, account_id=1, warehouse_id=1, expected_date_of_dispatch="2026-03-01T10:00:00Z",
        lines=[{"product_id": product_id, "quantity": 1, "external_system_reference1": f"{reference}-L1"}],
        address=ADDRESS, external_system_reference1=shopify_id,
    )
    return client.ensure_goods_out(body)[0]


def add_order(con, order_id: str, name: str, status: str, received: datetime, clarus_id: str | None = None) -> None:
    con.execute(
        "INSERT INTO orders (order_id, order_name, status, created_at, received_at, updated_at) VALUES (?, ?, ?, ?, ?, ?)",
        [order_id, name, status, received, received, received],
    )
    if clarus_id:
        con.execute("INSERT INTO bindings (entity_type, our_id, clarus_id, created_at, updated_at)"
                    " VALUES ('order', ?, ?, ?, ?)", [order_id, clarus_id, received, received])


@pytest.fixture
def world(state):
    """Clarus sandbox with goods outs, and a state with orders in every situation (only Clarus is
    needed, so not the shared three-sandbox world of tests/world.py; its state store is made the same way)."""
    with served_clarus(seed=3) as (sandbox, url):
        client = clarus_client(url)
        product = client.create_product({"code": "ORPH-1", "description": "Orphan test", "stock_unit_type_id": 1})
        bound = goods_out(client, product, "#3001", "5870000003001")
        goods_out(client, product, "#3002", "5870000003002")  # in Clarus, our binding never recorded
        stray = goods_out(client, product, "MANUAL-77", None)  # keyed by hand in Clarus
        cancelled = goods_out(client, product, "MANUAL-78", None)
        client.cancel_goods_out(cancelled)

        now = utcnow() + timedelta(hours=3)  # everything in Clarus is past the 120-minute grace
        store = make_store(state)
        with store.write() as con:
            add_order(con, "5870000003001", "#3001", "ACKNOWLEDGED", now - timedelta(hours=5), clarus_id=bound)
            add_order(con, "5870000003002", "#3002", "SENT_TO_WMS", now - timedelta(hours=5))
            add_order(con, "5870000003003", "#3003", "READY", now - timedelta(hours=4))  # never reached Clarus
            add_order(con, "5870000003004", "#3004", "HELD", now - timedelta(hours=9))  # held: its own exception
            add_order(con, "5870000003005", "#3005", "READY", now - timedelta(minutes=30))  # not late yet
            # released from a hold 20 minutes ago: counts from the release, not from the order's creation
            add_order(con, "5870000003006", "#3006", "READY", now - timedelta(days=2))
            con.execute("INSERT INTO order_events (order_id, occurred_at, system, state, cause)"
                        " VALUES ('5870000003006', ?, 'pipeline', 'RELEASED', 'postcode fixed')", [now - timedelta(minutes=20)])
        yield {"client": client, "url": url, "store": store, "target": state, "now": now, "stray": stray,
               "product": product}
        client.close()


def test_orders_and_goods_outs_missing_on_either_side(world):
    store, now = world["store"], world["now"]
    policies = load_policies(SANDBOX_POLICIES)
    frame = orphans.goods_outs_frame(world["client"].iter_goods_outs())
    assert frame.height == 4 and frame["goods_out_id"].dtype.is_(frame["reference"].dtype)  # ids as text

    with store.write() as con:
        report = orphans.orphan_orders(con, policies, frame, now=now)
        outcome = sync_exceptions(con, orphans.CODE, report.findings, scope=report.scope, policies=policies, now=now)
    assert {f.entity_id for f in report.findings} == {"5870000003003", f"goods_out:{world['stray']}"}
    assert report.not_in_clarus == 1 and report.not_in_shopify == 1 and report.goods_outs_read == 4
    assert report.unbound_in_clarus == ["5870000003002"]
    by_entity = {f.entity_id: f for f in report.findings}
    assert "order #3003 (READY) has been in Shopify 4 h" in by_entity["5870000003003"].message
    assert "reference MANUAL-77" in by_entity[f"goods_out:{world['stray']}"].message
    assert set(outcome.values()) == {"raised"}

    # the order reaches Clarus and is bound; the stray goods out is cancelled: both clear
    later = now + timedelta(minutes=15)
    new_id = goods_out(world["client"], world["product"], "#3003", "5870000003003")
    world["client"].cancel_goods_out(world["stray"])
    with store.write() as con:
        con.execute("INSERT INTO bindings (entity_type, our_id, clarus_id, created_at, updated_at)"
                    " VALUES ('order', '5870000003003', ?, ?, ?)", [new_id, later, later])
        report = orphans.orphan_orders(con, policies, orphans.goods_outs_frame(world["client"].iter_goods_outs()),
                                       now=later)
        outcome = sync_exceptions(con, orphans.CODE, report.findings, scope=report.scope, policies=policies, now=later)
    assert outcome == {"5870000003003": "auto_resolved", f"goods_out:{world['stray']}": "auto_resolved"}


def test_without_the_clarus_read_only_the_shopify_side_is_judged(world):
    store, now = world["store"], world["now"]
    policies = load_policies(SANDBOX_POLICIES)
    with store.write() as con:
        sync_exceptions(con, orphans.CODE, [orphans.Finding(f"goods_out:{world['stray']}", "stray")], policies=policies, now=now)
        report = orphans.orphan_orders(con, policies, None, now=now)
    # unbound orders count (Clarus cannot vouch for #3002); the goods out exception is out of scope, kept open
    assert {f.entity_id for f in report.findings} == {"5870000003002", "5870000003003"}
    assert f"goods_out:{world['stray']}" not in report.scope
    assert report.goods_outs_read is None and report.not_in_shopify is None


def test_dagster_asset_compares_with_clarus_and_reports_a_failed_read(world, tmp_path, monkeypatch):
    import clarus_pipelines.assets.monitoring as monitoring

    monkeypatch.setattr(monitoring, "utcnow", lambda: world["now"])
    store = world["store"]
    config = tmp_path / "policies.yaml"
    base = load_policies(SANDBOX_POLICIES).model_dump(mode="json")
    config.write_text(yaml.safe_dump(base))
    resources = {"state": StateStoreResource(path=str(world["target"])), "policies": PoliciesResource(path=str(config))}

    result = dg.materialize([monitoring.orphan_orders], resources={**resources, "clarus": clarus_client(world["url"])})
    metadata = result.asset_materializations_for_node("orphan_orders")[0].metadata
    assert (metadata["not_in_clarus"].value, metadata["not_in_shopify"].value, metadata["goods_outs_read"].value) == (1, 1, 4)
    [check] = result.get_asset_check_evaluations()
    assert not check.passed and "2 order(s) in one system but not the other" in check.description

    # Clarus unreachable: the read fails, the Shopify side is still compared, nothing on the Clarus side is cleared
    with socket.socket() as sock:  # a free port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dead = clarus_client(f"http://127.0.0.1:{port}", max_attempts=1, max_elapsed_s=2.0)
    monkeypatch.setattr(monitoring, "utcnow", lambda: world["now"] + timedelta(minutes=15))
    result = dg.materialize([monitoring.orphan_orders], resources={**resources, "clarus": dead})
    metadata = result.asset_materializations_for_node("orphan_orders")[0].metadata
    assert metadata["clarus_read_error"].value and metadata["goods_outs_read"].value == -1
    [check] = result.get_asset_check_evaluations()
    assert "Clarus could not be read" in check.description
    with store.read() as con:
        open_now = {r[0] for r in con.execute(
            "SELECT entity_id FROM exceptions WHERE code = 'ORPHAN_ORDER' AND status <> 'resolved'").fetchall()}
        checks = con.execute("SELECT count(*), count(clarus_error) FROM orphan_checks").fetchone()
    assert open_now == {"5870000003002", "5870000003003", f"goods_out:{world['stray']}"}
    assert checks == (2, 1)
