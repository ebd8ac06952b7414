"""The state store: migrations, one writer at a time, readers and snapshots never failing on the lock."""

import multiprocessing as mp
import time
from pathlib import Path

import duckdb
import pytest

from clarus_pipelines.state import LockTimeout, StateStore
from clarus_pipelines.state.store import _migration_files


def test_migrations_apply_once_in_order(tmp_path):
    store = StateStore(tmp_path / "state.duckdb")
    store.ensure_schema()
    again = StateStore(tmp_path / "state.duckdb")
    again.ensure_schema()
    with again.read() as con:
        applied = [r[0] for r in con.execute("SELECT version FROM schema_migrations ORDER BY version").fetchall()]
        tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    assert applied == [v for v, _, _ in _migration_files()]
    assert {"items", "bindings", "orders", "order_lines", "order_events", "shipments", "refunds",
            "stock_snapshots", "exceptions", "exception_events", "processed_landings", "outbound_writes"} <= tables


def test_write_rolls_back_on_error(tmp_path):
    store = StateStore(tmp_path / "state.duckdb")
    with pytest.raises(RuntimeError):
        with store.write() as con:
            con.execute(
                "INSERT INTO bindings VALUES ('product', '000123', 'c1', NULL, NULL, now(), now())"
            )
            raise RuntimeError("boom")
    with store.read() as con:
        assert con.execute("SELECT count(*) FROM bindings").fetchone()[0] == 0


def test_skus_with_leading_zeros_stay_strings(tmp_path):
    store = StateStore(tmp_path / "state.duckdb")
    with store.write() as con:
        con.execute("INSERT INTO items (sku, sku_raw, updated_at) VALUES (?, ?, now())", ["000123", " 000123 "])
    with store.read() as con:
        assert con.execute("SELECT sku FROM items").fetchone()[0] == "000123"


def test_writer_waits_for_lock_then_times_out_cleanly(tmp_path):
    path = tmp_path / "state.duckdb"
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
            copy = store.snapshot(Path(snapshot_dir) / f"r{worker}-{i}.duckdb")
            with duckdb.connect(str(copy), read_only=True) as con:
                con.execute("SELECT count(*) FROM processed_landings").fetchone()
    except Exception as exc:
        errors.put(f"reader {worker}: {exc!r}")


def test_concurrent_writers_and_readers_in_separate_processes(tmp_path):
    path = str(tmp_path / "state.duckdb")
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
