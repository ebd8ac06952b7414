"""The state store contract, on both backends (a DuckDB file and PostgreSQL): migrations, one
writer at a time, readers never failing on the lock; DuckDB snapshots for the dashboard."""

import json
import multiprocessing as mp
import time
from decimal import Decimal
from pathlib import Path

import duckdb
import polars as pl
import pytest

from clarus_pipelines.state import LockTimeout, PgStateStore, StateStore, open_state
from clarus_pipelines.state.store import _migration_files


def test_migrations_apply_once_in_order(state_target):
    store = StateStore(state_target)
    store.ensure_schema()
    again = StateStore(state_target)
    again.ensure_schema()
    with again.read() as con:
        applied = [r[0] for r in con.execute("SELECT version FROM schema_migrations ORDER BY version").fetchall()]
        tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    assert applied == [v for v, _, _ in _migration_files()]
    assert {"items", "bindings", "orders", "order_lines", "order_events", "shipments", "refunds",
            "stock_snapshots", "exceptions", "exception_events", "processed_landings", "outbound_writes"} <= tables


def test_write_rolls_back_on_error(state_target):
    store = StateStore(state_target)
    with pytest.raises(RuntimeError):
        with store.write() as con:
            con.execute(
                "INSERT INTO bindings VALUES ('product', '000123', 'c1', NULL, NULL, now(), now())"
            )
            raise RuntimeError("boom")
    with store.read() as con:
        assert con.execute("SELECT count(*) FROM bindings").fetchone()[0] == 0


def test_skus_with_leading_zeros_stay_strings(state_target):
    store = StateStore(state_target)
    with store.write() as con:
        con.execute("INSERT INTO items (sku, sku_raw, updated_at) VALUES (?, ?, now())", ["000123", " 000123 "])
    with store.read() as con:
        assert con.execute("SELECT sku FROM items").fetchone()[0] == "000123"


def test_writer_waits_for_lock_then_times_out_cleanly(state_target):
    path = state_target
    StateStore(path).ensure_schema()
    holder = StateStore(path)
    impatient = StateStore(path, lock_timeout_s=0.3)
    impatient._migrated = True
    with holder.write():
        with pytest.raises(LockTimeout):
            with impatient.write():
                pass


def _writer(path: str, worker: int, rows: int, errors) -> None:
    store = StateStore(path)
    try:
        for i in range(rows):
            with store.write() as con:
                con.execute(
                    "INSERT INTO processed_landings VALUES (?, 'shopify', 'orders/create', now(), NULL)",
                    [f"w{worker}-{i}"],
                )
    except Exception as exc:  # reported to the parent, which fails the test
        errors.put(f"writer {worker}: {exc!r}")


def _reader(path: str, worker: int, rounds: int, errors, snapshot_dir: str) -> None:
    store = StateStore(path)
    try:
        for i in range(rounds):
            with store.read() as con:
                con.execute("SELECT count(*) FROM processed_landings").fetchone()
            if isinstance(store, PgStateStore):
                continue  # PostgreSQL: no file to copy, readers read through transactions
            copy = store.snapshot(Path(snapshot_dir) / f"r{worker}-{i}.duckdb")
            with duckdb.connect(str(copy), read_only=True) as con:
                con.execute("SELECT count(*) FROM processed_landings").fetchone()
    except Exception as exc:
        errors.put(f"reader {worker}: {exc!r}")


@pytest.mark.slow
def test_concurrent_writers_and_readers_in_separate_processes(tmp_path, state_target):
    path = state_target
    StateStore(path).ensure_schema()
    ctx = mp.get_context("spawn")
    errors = ctx.Queue()
    writers = [ctx.Process(target=_writer, args=(path, w, 25, errors)) for w in range(3)]
    readers = [ctx.Process(target=_reader, args=(path, r, 20, errors, str(tmp_path))) for r in range(2)]
    for p in writers + readers:
        p.start()
    for p in writers + readers:
        p.join(timeout=240)
    problems = []
    while not errors.empty():
        problems.append(errors.get())
    assert problems == []
    assert all(p.exitcode == 0 for p in writers + readers)
    with StateStore(path).read() as con:
        assert con.execute("SELECT count(*) FROM processed_landings").fetchone()[0] == 75


def test_threads_of_one_process_and_another_process_share_a_duckdb_file(tmp_path):
    """Threads of this process (each transaction ATTACHes the file to the process's one in-memory
    DuckDB; readers share the attachment) and a writer in another process: no write lost, no
    reader fails, and the file is closed between transactions (the other process opens it)."""
    import threading

    path = tmp_path / "state.duckdb"
    StateStore(path).ensure_schema()
    (tmp_path / "via").symlink_to(tmp_path, target_is_directory=True)
    ctx = mp.get_context("spawn")
    errors = ctx.Queue()
    other = ctx.Process(target=_writer, args=(str(path), 9, 20, errors))
    other.start()
    failures: list[str] = []
    seen: list[int] = []
    names = (path, tmp_path / "via" / "state.duckdb")

    def write(worker: int) -> None:
        try:
            for i in range(20):
                with StateStore(path).write() as con:
                    con.execute("INSERT INTO processed_landings VALUES (?, 'shopify', 'orders/create', now(), NULL)",
                                [f"t{worker}-{i}"])
        except Exception as exc:
            failures.append(f"writer thread {worker}: {exc!r}")

    def read(worker: int) -> None:
        try:
            for _ in range(30):
                with StateStore(names[worker % 2]).read() as con:  # the file by either of two names
                    seen.append(con.execute("SELECT count(*) FROM processed_landings").fetchone()[0])
        except Exception as exc:
            failures.append(f"reader thread {worker}: {exc!r}")

    threads = [threading.Thread(target=write, args=(w,)) for w in range(3)]
    threads += [threading.Thread(target=read, args=(r,)) for r in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=240)
    other.join(timeout=240)
    while not errors.empty():
        failures.append(errors.get())
    assert failures == [] and other.exitcode == 0
    assert seen and max(seen) <= 80
    with StateStore(path).read() as con:
        assert con.execute("SELECT count(*) FROM processed_landings").fetchone()[0] == 80


def _saturating_writer(path: str, worker: int, seconds: float, results) -> None:
    store = StateStore(path, lock_timeout_s=30)
    written, timeouts, longest = 0, 0, 0.0
    stop = time.monotonic() + seconds
    while time.monotonic() < stop:
        asked = time.monotonic()
        try:
            with store.write() as con:
                longest = max(longest, time.monotonic() - asked)
                con.execute("INSERT INTO processed_landings VALUES (?, 'shopify', 'orders/create', now(), NULL)",
                            [f"w{worker}-{written}"])
                time.sleep(0.01)  # a transaction that takes a while: the lock is never free for long
            written += 1
        except LockTimeout:
            timeouts += 1
    results.put(("writer", worker, written, timeouts, longest))


def _snapshot_reader(path: str, worker: int, seconds: float, results, snapshot_dir: str) -> None:
    store = StateStore(path, lock_timeout_s=30)
    taken, timeouts, longest = 0, 0, 0.0
    stop = time.monotonic() + seconds
    while time.monotonic() < stop:
        asked = time.monotonic()
        try:
            copy = store.snapshot(Path(snapshot_dir) / f"snap-{worker}.duckdb")
            longest = max(longest, time.monotonic() - asked)
            with duckdb.connect(str(copy), read_only=True) as con:
                con.execute("SELECT count(*) FROM processed_landings").fetchone()
            taken += 1
        except LockTimeout:
            timeouts += 1
    results.put(("reader", worker, taken, timeouts, longest))


@pytest.mark.slow
def test_lock_serves_waiters_in_arrival_order_under_saturation(tmp_path):
    """3 writers that keep the lock busy and 2 dashboard snapshots, in separate processes: no
    timeouts, every snapshot within a few seconds, and every acknowledged write is there."""
    path = str(tmp_path / "state.duckdb")
    StateStore(path).ensure_schema()
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    seconds = 8.0
    procs = [ctx.Process(target=_saturating_writer, args=(path, w, seconds, results)) for w in range(3)]
    procs += [ctx.Process(target=_snapshot_reader, args=(path, r, seconds, results, str(tmp_path))) for r in range(2)]
    for p in procs:
        p.start()
    reports = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert all(p.exitcode == 0 for p in procs)
    writers = [r for r in reports if r[0] == "writer"]
    readers = [r for r in reports if r[0] == "reader"]
    assert sum(r[3] for r in reports) == 0, reports  # no LockTimeout anywhere
    assert all(r[2] > 0 for r in reports), reports  # nobody starved
    assert max(r[4] for r in readers) < 3.0, readers  # a snapshot waits for the queue ahead of it only
    with StateStore(path).read() as con:
        assert con.execute("SELECT count(*) FROM processed_landings").fetchone()[0] == sum(r[2] for r in writers)


def test_open_state_picks_the_backend_from_the_target(tmp_path):
    assert isinstance(open_state(tmp_path / "a.duckdb"), StateStore)
    assert open_state(f"duckdb://{tmp_path}/b.duckdb").path == tmp_path / "b.duckdb"
    assert isinstance(open_state("postgresql://postgres@127.0.0.1:5432/x"), PgStateStore)
    assert isinstance(StateStore("postgresql://postgres@127.0.0.1:5432/x"), PgStateStore)


def test_duckdb_dialect_runs_unchanged_on_both(state_target):
    """What the flows rely on: `?` parameters, lists, registered frames (lists, NULL versus empty
    text), INSERT OR REPLACE, GROUP BY ALL, JSON read back as text, DML answering its row count."""
    import polars as pl

    store = StateStore(state_target)
    with store.write() as con:
        con.executemany("INSERT INTO items (sku, sku_raw, updated_at) VALUES (?, ?, now())",
                        [["000123", "000123"], ["A-1", "a-1"]])
        frame = pl.DataFrame({"sku": ["000123", "B-2", None], "note": ["", None, "x"],
                              "tags": [["p", "q"], [], None]})
        con.register("_frame", frame)
        got = con.sql("SELECT sku, note, tags FROM _frame ORDER BY sku NULLS LAST").pl()
        con.unregister("_frame")
        assert got.to_dicts() == [{"sku": "000123", "note": "", "tags": ["p", "q"]},
                                  {"sku": "B-2", "note": None, "tags": []},
                                  {"sku": None, "note": "x", "tags": None}]
        assert con.execute("SELECT sku FROM items WHERE sku IN (SELECT unnest(?::VARCHAR[])) ORDER BY sku",
                           [["000123", "A-1", "Z"]]).fetchall() == [("000123",), ("A-1",)]
        assert con.execute("SELECT sku FROM items WHERE sku IN (SELECT unnest(?))", [[]]).fetchall() == []
        con.execute("INSERT OR REPLACE INTO items (sku, sku_raw, description, updated_at) VALUES (?, ?, ?, now())",
                    ["000123", " 000123", "50% off"])
        assert con.execute("SELECT sku_raw, description FROM items WHERE sku LIKE '0%'").fetchall() == [
            (" 000123", "50% off")]
        assert con.execute("UPDATE items SET barcode = ? WHERE sku LIKE ?", ["1", "%"]).fetchone()[0] == 2
        assert sorted(con.execute("SELECT left(sku, 1) AS first, count(*) FROM items GROUP BY ALL").fetchall()) == [
            ("0", 1), ("A", 1)]
        con.execute("INSERT INTO exceptions VALUES ('X', 'e1', 'order', 'ops', 'warning', 'open', 'm', ?::JSON,"
                    " now(), now(), 1, NULL, NULL, NULL)", ['{"b": 1, "a": [1]}'])
        details = con.execute("SELECT details, json_extract_string(details, '$.b') FROM exceptions").fetchone()
        assert details[1] == "1" and isinstance(details[0], str)
    with store.read() as con:
        assert con.execute("SELECT count(*) FROM items").fetchone()[0] == 2


def test_postgres_readers_take_no_lock_and_never_write():
    from pgstate import fresh_database

    with fresh_database() as url:
        store = StateStore(url, lock_timeout_s=5)
        store.ensure_schema()
        with store.write() as con:  # the writer lock is held: a reader still reads
            con.execute("INSERT INTO processed_landings VALUES ('a', 'shopify', 'orders/create', now(), NULL)")
            with store.read() as reader:
                assert reader.execute("SELECT count(*) FROM processed_landings").fetchone()[0] == 0
        with store.read() as con:
            con.execute("INSERT INTO processed_landings VALUES ('b', 'shopify', 'orders/create', now(), NULL)")
        with store.read() as con:
            assert [r[0] for r in con.execute("SELECT landing_id FROM processed_landings").fetchall()] == ["a"]


test_postgres_readers_take_no_lock_and_never_write = pytest.mark.postgres(
    test_postgres_readers_take_no_lock_and_never_write)


def test_migrations_in_duckdb_dialect_are_taken_as_they_come(monkeypatch):
    """A new NNN_*.sql written for DuckDB applies to PostgreSQL too (transpiled), recorded once."""
    from clarus_pipelines.state import store as store_module
    from pgstate import fresh_database

    extra = (99, "099_extra.sql", "CREATE SEQUENCE extra_seq;\nCREATE TABLE extra (id BIGINT PRIMARY KEY DEFAULT"
             " nextval('extra_seq'), tags VARCHAR[], body JSON, ratio DOUBLE, at TIMESTAMP NOT NULL);\n"
             "ALTER TABLE extra ADD COLUMN n INTEGER DEFAULT 0;")
    files = store_module._migration_files() + [extra]
    monkeypatch.setattr(store_module, "_migration_files", lambda: files)
    with fresh_database() as url:
        store = StateStore(url)
        with store.write() as con:
            con.execute("INSERT INTO extra (tags, body, ratio, at) VALUES (?, ?, 0.5, now())", [["a"], '{"k": 1}'])
        with StateStore(url).read() as con:
            assert con.execute("SELECT id, tags, n FROM extra").fetchall() == [(1, ["a"], 0)]
            assert con.execute("SELECT max(version) FROM schema_migrations").fetchone()[0] == 99


test_migrations_in_duckdb_dialect_are_taken_as_they_come = pytest.mark.postgres(
    test_migrations_in_duckdb_dialect_are_taken_as_they_come)


def test_a_refused_statement_is_a_duckdb_error_on_both(state_target):
    """Flows set a bad record aside by catching duckdb.Error: PostgreSQL's refusals are one too."""
    store = StateStore(state_target)
    with pytest.raises(duckdb.Error) as refused:
        with store.write() as con:
            con.execute("INSERT INTO items (sku, sku_raw, updated_at) VALUES ('A', 'a', now())")
            con.execute("INSERT INTO items (sku, sku_raw, updated_at) VALUES ('A', 'a', now())")
    assert "items" in str(refused.value) or "PRIMARY KEY" in str(refused.value) or "unique" in str(refused.value)
    with store.read() as con:
        assert con.execute("SELECT count(*) FROM items").fetchone()[0] == 0


def test_a_refused_statement_in_a_read_leaves_the_read_usable_on_both(state_target):
    """The data-quality step reads every suite in one read and reports a suite whose query fails:
    the suites after it still run (in PostgreSQL a failed statement aborts its transaction)."""
    store = StateStore(state_target)
    with store.write() as con:
        con.execute("INSERT INTO items (sku, sku_raw, updated_at) VALUES ('A', 'a', now())")
    with store.read() as con:
        with pytest.raises(duckdb.Error):
            con.execute("SELECT no_such_column FROM items")
        assert con.execute("SELECT sku FROM items").fetchall() == [("A",)]
        con.register("frame", pl.DataFrame({"sku": ["A"]}))
        with pytest.raises(duckdb.Error):
            con.sql("SELECT no_such_column FROM frame")
        assert con.sql("SELECT count(*) FROM frame JOIN items USING (sku)").fetchall() == [(1,)]


def test_try_cast_is_null_not_an_error_on_both(state_target):
    with StateStore(state_target).read() as con:
        assert con.execute("SELECT TRY_CAST(? AS DECIMAL(18, 2)), TRY_CAST(? AS DECIMAL(18, 2)), TRY_CAST(? AS BOOLEAN),"
                           " TRY_CAST(? AS TIMESTAMPTZ) IS NULL", ["12.345", "twelve", "maybe", "not a time"]
                           ).fetchone() == (Decimal("12.35"), None, None, True)


def test_a_json_array_cast_to_a_list_gives_its_elements_on_both(state_target):
    """As the payouts match reads `payment_gateway_names` (PostgreSQL's own cast reads only '{a,b}')."""
    store = StateStore(state_target)
    with store.write() as con:
        con.execute("INSERT INTO orders (order_id, order_name, status, payload, created_at, received_at, updated_at)"
                    " VALUES ('1', '#1', 'READY', ?, now(), now(), now())",
                    [json.dumps({"payment_gateway_names": ["manual", "shopify_payments"], "tags": "not a list"})])
    with store.read() as con:
        assert con.execute(
            "SELECT TRY_CAST(json_extract(payload, '$.payment_gateway_names') AS VARCHAR[]),"
            " list_contains(TRY_CAST(json_extract(payload, '$.payment_gateway_names') AS VARCHAR[]), ?),"
            " list_contains(TRY_CAST(json_extract(payload, '$.payment_gateway_names') AS VARCHAR[]), ?),"
            " TRY_CAST(json_extract(payload, '$.tags') AS VARCHAR[]) FROM orders", ["shopify_payments", "paypal"]
        ).fetchone() == (["manual", "shopify_payments"], True, False, None)


def test_a_json_path_given_as_a_parameter_reads_as_in_duckdb_on_both(state_target):
    """A JSONPath, a JSON pointer or a plain key passed at run time (PostgreSQL's own ->> would take
    '$.a.b' as one key and silently give NULL)."""
    store = StateStore(state_target)
    with store.write() as con:
        con.execute("INSERT INTO orders (order_id, order_name, status, payload, created_at, received_at, updated_at)"
                    " VALUES ('1', '#1', 'READY', ?, now(), now(), now())",
                    [json.dumps({"a": {"b": [5, {"c": "deep"}]}, "x.y": "dotted", "p/q": "slashed", "t~": "tilde"})])
    paths = ["$.a.b[0]", "$.a.b[1].c", "/a/b/1/c", "x.y", "/p~1q", "/t~0", "$.missing", "a"]
    with store.read() as con:
        texts = [con.execute("SELECT json_extract_string(payload, ?) FROM orders", [path]).fetchone()[0]
                 for path in paths]
        values = [con.execute("SELECT json_extract(payload, ?) FROM orders", [path]).fetchone()[0]
                  for path in ["$.a.b[1]", "/a/b/0", "$.missing"]]
    assert texts[:-1] == ["5", "deep", "deep", "dotted", "slashed", "tilde", None]
    assert json.loads(texts[-1]) == {"b": [5, {"c": "deep"}]}  # an object as its JSON text (spacing may differ)
    assert [None if v is None else json.loads(v) for v in values] == [{"c": "deep"}, 5, None]


def test_a_distinct_count_over_a_window_on_both(state_target):
    """As the shipments quality suite counts the orders sharing a tracking number (PostgreSQL has no
    DISTINCT in a window aggregate): NULLs not counted, an ORDER BY counts up to the row."""
    with StateStore(state_target).read() as con:
        rows = con.execute(
            "SELECT k, n, count(DISTINCT v) OVER (PARTITION BY k), count(DISTINCT v) OVER (PARTITION BY k ORDER BY n)"
            " FROM (VALUES ('a', 1, 'x'), ('a', 2, 'x'), ('a', 3, 'y'), ('a', 4, NULL), ('b', 1, NULL)) AS t(k, n, v)"
            " ORDER BY k, n").fetchall()
    assert rows == [("a", 1, 2, 1), ("a", 2, 2, 1), ("a", 3, 2, 2), ("a", 4, 2, 2), ("b", 1, 0, 0)]


def test_checks_read_a_duckdb_holding_the_tables_they_name(state_target):
    """The data checks' engine is DuckDB on both backends; in PostgreSQL mode a copy through Arrow."""
    store = StateStore(state_target)
    with store.write() as con:
        con.execute("INSERT INTO orders (order_id, order_name, status, hold_reasons, payload, total_price, received_at,"
                    " updated_at) VALUES ('1', '#1', 'HELD', ['SKU_UNKNOWN'], '{\"a\": [1, 2]}', 12.50, now(), now())")
    with store.check_reader(("orders", "order_lines(order_id, line_id)")) as con:
        assert isinstance(con, duckdb.DuckDBPyConnection)
        assert con.execute("SELECT order_name, hold_reasons, json_array_length(payload, '$.a'), total_price"
                           " FROM orders").fetchall() == [("#1", ["SKU_UNKNOWN"], 2, Decimal("12.50"))]
        assert con.execute("SELECT count(*) FROM order_lines").fetchone() == (0,)
