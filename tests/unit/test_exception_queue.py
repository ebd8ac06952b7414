"""One API to raise and clear exceptions, keyed by (code, entity)."""

from datetime import datetime, timedelta

import pytest

from clarus_pipelines import catalogue
from clarus_pipelines import exception_queue as q
from clarus_pipelines.settings import SANDBOX_POLICIES, load_policies
from clarus_pipelines.state import StateStore

REQUIRED = """ORDER_INCOMPLETE SHIP_METHOD_UNMAPPED SKU_UNKNOWN SKU_NOT_IN_MASTER SKU_LEADING_ZEROS_LOST
BARCODE_INVALID WMS_REJECTED ORDER_NOT_ACKNOWLEDGED NOT_DISPATCHED_BY_CUTOFF DISPATCH_AWAITING_ERP
TRACKING_MISSING TRACKING_INVALID TRACKING_NOT_POSTED ORDER_EDIT_NEEDS_REVIEW CANCEL_AFTER_DISPATCH
ORPHAN_ORDER STOCK_MISMATCH STRANDED_STOCK RETURN_NOT_RECEIVED REFUND_UNCLASSIFIED
RECONCILIATION_MISMATCH WEBHOOK_REJECTED CONNECTOR_FAILING""".split()


def test_catalogue_has_every_required_code_with_owner_and_text():
    assert set(REQUIRED) <= set(catalogue.CATALOGUE)
    for kind in catalogue.CATALOGUE.values():
        assert kind.owner in {"ops", "finance", "cx", "merchandising", "integration"}
        assert kind.severity in catalogue.SEVERITY_RANK
        assert kind.meaning and kind.resolution and kind.escalation and kind.sla_minutes > 0


@pytest.fixture
def store(tmp_path):
    return StateStore(tmp_path / "state.duckdb")


def _rows(store, code):
    with store.read() as con:
        return con.execute(
            "SELECT entity_id, status, occurrences, owner FROM exceptions WHERE code = ? ORDER BY entity_id", [code]
        ).fetchall()


def test_raising_twice_does_not_duplicate(store):
    with store.write() as con:
        assert q.raise_exception(con, "SKU_UNKNOWN", "1001", "SKU X unknown") == "raised"
    with store.write() as con:
        assert q.raise_exception(con, "SKU_UNKNOWN", "1001", "SKU X unknown") == "refreshed"
    assert _rows(store, "SKU_UNKNOWN") == [("1001", "open", 2, "merchandising")]


def test_sync_auto_resolves_cleared_within_scope_only(store):
    t0 = datetime(2026, 11, 27, 9, 0)
    with store.write() as con:
        q.sync_exceptions(con, "TRACKING_MISSING", [q.Finding("s1", "m"), q.Finding("s2", "m")], now=t0)
    with store.write() as con:
        out = q.sync_exceptions(con, "TRACKING_MISSING", [q.Finding("s2", "m")], scope=["s1", "s2"], now=t0 + timedelta(minutes=5))
    assert out == {"s2": "refreshed", "s1": "auto_resolved"}
    with store.write() as con:
        # a flow that looked only at s3 must not clear s2
        q.sync_exceptions(con, "TRACKING_MISSING", [], scope=["s3"])
    assert [r[:2] for r in _rows(store, "TRACKING_MISSING")] == [("s1", "resolved"), ("s2", "open")]
    with store.read() as con:
        actions = con.execute(
            "SELECT entity_id, action, actor FROM exception_events WHERE code = 'TRACKING_MISSING' ORDER BY event_id"
        ).fetchall()
    assert actions == [("s1", "raised", "pipeline"), ("s2", "raised", "pipeline"), ("s1", "auto_resolved", "auto")]


def test_resolved_exception_reopens_when_condition_returns(store):
    with store.write() as con:
        q.raise_exception(con, "ORPHAN_ORDER", "1001", "m")
        assert q.clear_exception(con, "ORPHAN_ORDER", "1001")
        assert not q.clear_exception(con, "ORPHAN_ORDER", "1001")
        assert q.raise_exception(con, "ORPHAN_ORDER", "1001", "m") == "reopened"
    assert _rows(store, "ORPHAN_ORDER") == [("1001", "open", 2, "ops")]


def test_manual_acknowledge_and_resolve_need_a_name(store):
    with store.write() as con:
        q.raise_exception(con, "STOCK_MISMATCH", "SKU1", "m")
        with pytest.raises(ValueError):
            q.acknowledge(con, "STOCK_MISMATCH", "SKU1", actor="")
        q.acknowledge(con, "STOCK_MISMATCH", "SKU1", actor="Priya", note="looking")
        q.resolve(con, "STOCK_MISMATCH", "SKU1", actor="Priya", note="fixed in Shopify")
        with pytest.raises(KeyError):
            q.resolve(con, "STOCK_MISMATCH", "nope", actor="Priya")
    with store.read() as con:
        assert con.execute("SELECT status, resolved_by, note FROM exceptions").fetchone() == ("resolved", "Priya", "fixed in Shopify")


def test_unknown_code_is_refused(store):
    with store.write() as con:
        with pytest.raises(KeyError, match="unknown exception code"):
            q.raise_exception(con, "NOT_A_CODE", "x", "m")


def test_policy_overrides_owner(store, tmp_path):
    text = SANDBOX_POLICIES.read_text() + "\nexception_overrides:\n  STOCK_MISMATCH: {owner: ops, severity: high}\n"
    path = tmp_path / "p.yaml"
    path.write_text(text)
    policies = load_policies(path)
    with store.write() as con:
        q.raise_exception(con, "STOCK_MISMATCH", "SKU1", "m", policies=policies)
    assert _rows(store, "STOCK_MISMATCH")[0][3] == "ops"
