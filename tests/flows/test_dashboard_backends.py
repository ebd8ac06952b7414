"""The dashboard shows the same on both state backends: every query over the same seeded state,
once read from a DuckDB snapshot file and once from PostgreSQL in read transactions."""

import inspect
import json
from datetime import datetime, timedelta, timezone

import pandas as pd
import pytest

from dashboard_seed import seed_state
from dashboards import queries
from pgstate import fresh_database

pytestmark = pytest.mark.postgres

NOW = datetime(2026, 12, 3, 12, 0)
ARGS = {"since": NOW - timedelta(days=3), "until": NOW, "now": NOW, "code": "ORDER_INCOMPLETE", "term": "#1001",
        "order_name": "#1001", "sku": "TEE-NAVY-M"}
VARYING = {"path", "generated_at"}  # where each backend's seed wrote its report files


def _query_functions():
    for name, fn in inspect.getmembers(queries, callable):
        target = getattr(fn, "__wrapped__", None) or getattr(getattr(fn, "_info", None), "func", None) or fn
        if name.startswith("_") or not inspect.isfunction(target):
            continue
        params = inspect.signature(target).parameters
        if list(params)[:1] == ["db"]:
            yield name, target, params


def _normal(value):
    if isinstance(value, pd.DataFrame):
        frame = value.drop(columns=[c for c in value.columns if c in VARYING])
        rows = [{k: _normal(v) for k, v in row.items()} for row in frame.astype(object).to_dict("records")]
        return sorted(rows, key=repr)  # rows tied on the ORDER BY come in either order
    if isinstance(value, dict):
        return {k: _normal(v) for k, v in value.items() if k not in VARYING}
    if isinstance(value, list):
        return [_normal(v) for v in value]
    if isinstance(value, str) and value[:1] in "{[":
        try:
            return json.loads(value)  # JSON built in SQL: same document, spacing differs by engine
        except ValueError:
            return value
    if value is None or (not isinstance(value, (list, str)) and pd.isna(value)):
        return None
    if isinstance(value, pd.Timestamp):
        value = value.to_pydatetime()
    if isinstance(value, datetime):
        value = value.replace(tzinfo=None)
        # what the seed stamped with the wall clock (alert deliveries) differs run to run
        return "wall clock" if abs(value - datetime.now(timezone.utc).replace(tzinfo=None)) < timedelta(hours=1) else value
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) or type(value).__name__ == "Decimal":
        return round(float(value), 6)
    return value


def test_every_dashboard_query_answers_the_same_on_duckdb_and_postgres(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    duck = tmp_path / "state.duckdb"
    seed_state(duck, now=NOW)
    with fresh_database() as url:
        seed_state(url, now=NOW)
        with queries.open_state(url).read() as con:
            order_id = con.execute("SELECT order_id FROM orders ORDER BY order_id LIMIT 1").fetchone()[0]
        ARGS.update(order_id=order_id, entity_id=order_id)
        compared = []
        for name, fn, params in _query_functions():
            args = [ARGS[p] for p, spec in params.items() if p != "db" and spec.default is inspect.Parameter.empty]
            on_duckdb, on_postgres = fn(str(duck), *args), fn(url, *args)
            assert _normal(on_postgres) == _normal(on_duckdb), name
            compared.append(name)
    assert len(compared) >= 25, compared
