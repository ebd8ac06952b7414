"""The integration state: one DuckDB file, many processes, one writer at a time.

DuckDB lets a single process open a file read-write, and while it has it open no other
process may open it at all. Dagster runs, sensors, the CLI and the dashboard all need the
file, so nobody keeps it open: each unit of work takes an advisory lock file next to the
database (`fcntl.flock`, exclusive for writers, shared for readers), opens the file, does
its work in one transaction, closes it and releases the lock. Waiting for the lock is
normal and bounded; it never surfaces as DuckDB's "could not set lock" error. Waiters
are served in arrival order (`FairQueue`), so the longest waiter goes next and a
dashboard snapshot waits for the writers already queued, never for ones that came later.

"Opens the file" is an ATTACH into one in-memory DuckDB kept per process (`_AttachedFiles`),
not a new `duckdb.connect`: a new DuckDB instance costs about 40 ms of CPU, an ATTACH a few,
and the event path makes several transactions per shipment. The file is detached (closed)
when the process's last transaction on it ends, still inside the lock.

The dashboard goes one step further so that it never holds writers up for the length of
its queries: `snapshot()` copies the closed file under a shared lock (milliseconds) and
queries the copy.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import struct
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from importlib import resources
from pathlib import Path

import duckdb

from clarus_pipelines.state.pg import PgStateStore, is_postgres_url

log = logging.getLogger(__name__)

MIGRATIONS_PACKAGE = "clarus_pipelines.state.migrations"


class LockTimeout(TimeoutError):
    """The state file stayed locked by another process for longer than allowed."""


def duckdb_path(target: Path | str) -> Path:
    """The file of a DuckDB state target: a plain path or `duckdb:///path`."""
    text = str(target)
    if text.startswith("duckdb://"):
        text = text[len("duckdb://"):]
    return Path(text)


def open_state(target: Path | str, lock_timeout_s: float = 120.0) -> StateStore | PgStateStore:
    """The state store for `CLARUS_PIPELINES_STATE_URL`: a DuckDB file or `postgresql://...`."""
    if is_postgres_url(str(target)):
        return PgStateStore(str(target), lock_timeout_s=lock_timeout_s)
    return StateStore(duckdb_path(target), lock_timeout_s=lock_timeout_s)


class StateStore:
    """Handle on the state DuckDB file. Cheap to create; holds no open connection.

    Given a `postgresql://` URL instead of a path it returns a `PgStateStore` (same contract).
    """

    backend = "duckdb"

    def __new__(cls, path: Path | str = "", lock_timeout_s: float = 120.0):
        if cls is StateStore and is_postgres_url(str(path)):
            return PgStateStore(str(path), lock_timeout_s=lock_timeout_s)
        return super().__new__(cls)

    def __init__(self, path: Path | str, lock_timeout_s: float = 120.0):
        self.path = duckdb_path(path)
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self.lock_timeout_s = lock_timeout_s
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._migrated = False
        self._queue = FairQueue(self.path.with_name(self.path.name + ".queue"), on_timeout=self._timeout)

    # ------------------------------------------------------------------ locking
    @contextlib.contextmanager
    def _locked(self, mode: int) -> Iterator[None]:
        """Take the state lock (`LOCK_EX` or `LOCK_SH`) in arrival order, or raise `LockTimeout`.

        A queue in front of the lock serves waiters first come, first served (see
        `FairQueue`): the one at the head takes the lock, then lets the next come forward,
        so readers behind readers share the lock while a writer behind them waits, and
        nobody arriving later overtakes a waiting writer or a waiting snapshot.
        """
        deadline = time.monotonic() + self.lock_timeout_s
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            with self._queue.turn(deadline):
                if not _flock_until(fd, mode, deadline):
                    raise self._timeout()
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the flock

    def _timeout(self) -> LockTimeout:
        return LockTimeout(f"{self.path} stayed locked for {self.lock_timeout_s:.0f}s by another process")

    # ------------------------------------------------------------- connections
    @contextlib.contextmanager
    def write(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """Exclusive, transactional access: commits on success, rolls back on error."""
        with self._locked(fcntl.LOCK_EX), _FILES.connect(self.path, read_only=False) as con:
            if not self._migrated:
                migrate(con)
                self._migrated = True
            con.execute("BEGIN TRANSACTION")
            try:
                yield con
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")

    @contextlib.contextmanager
    def read(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """Shared read-only access; several readers at once, never during a write."""
        self.ensure_schema()
        with self._locked(fcntl.LOCK_SH), _FILES.connect(self.path, read_only=True) as con:
            yield con

    def ensure_schema(self) -> None:
        if self._migrated:
            return
        with self.write():
            pass

    @contextlib.contextmanager
    def check_reader(self, tables: Sequence[str]) -> Iterator[duckdb.DuckDBPyConnection]:
        """A DuckDB connection holding `tables` (`"name"` or `"name(col, ...)"`) for the data checks
        to read: here the state itself, read-only; in PostgreSQL a DuckDB copy (`PgStateStore`)."""
        with self.read() as con:
            yield con

    @contextlib.contextmanager
    def try_lock(self, name: str) -> Iterator[bool]:
        """A named lock between processes, not waited for: yields False when another holds it.

        A lock file beside the database (`<file>.<name>.lock`), released by the OS if the
        process dies. Independent of the state lock: it keeps a multi-transaction pass apart.
        """
        fd = os.open(self.path.with_name(f"{self.path.name}.{name}.lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            yield True
        finally:
            os.close(fd)

    def snapshot(self, target: Path | str | None = None) -> Path:
        """Copy the database under a shared lock and return the copy's path.

        Used by the dashboard: queries on the copy cannot block or break writers.
        """
        self.ensure_schema()
        if target is None:
            fd, name = tempfile.mkstemp(prefix="state-snapshot-", suffix=".duckdb")
            os.close(fd)
            target = Path(name)
        target = Path(target)
        tmp = target.with_name(target.name + ".partial")
        with self._locked(fcntl.LOCK_SH):
            shutil.copyfile(self.path, tmp)
        os.replace(tmp, target)
        return target


class _AttachedFiles:
    """Connections to state files through one in-memory DuckDB per process, which ATTACHes a file
    for as long as a transaction in this process uses it.

    Why: `duckdb.connect(path)` builds a whole database instance (its function catalogue, its
    threads) every time, about 40 ms of CPU on a small box, and every state transaction paid it;
    ATTACH opens just the file (a few ms). The file is still DETACHed (and so closed,
    checkpointed) as soon as the last transaction of this process on it ends, inside the state
    lock, so other processes open it exactly as before. Readers of one file in this process share
    a read-only attachment; a writer has it alone (the state lock keeps readers out).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._host: duckdb.DuckDBPyConnection | None = None
        self._attached: dict[str, list] = {}  # path -> [alias, read_only, users]
        self._aliases = iter(range(1, 2**62))

    def _host_connection(self) -> duckdb.DuckDBPyConnection:
        if self._host is None or self._pid != os.getpid():  # never reuse an instance across fork
            self._host, self._pid, self._attached = duckdb.connect(":memory:"), os.getpid(), {}
        return self._host

    @contextlib.contextmanager
    def connect(self, path: Path, *, read_only: bool) -> Iterator[duckdb.DuckDBPyConnection]:
        key = os.path.realpath(path)  # one attachment per file, however it is named
        with self._lock:
            host = self._host_connection()
            entry = self._attached.get(key)
            if entry is not None and entry[1] != read_only:  # the state lock makes this impossible
                raise RuntimeError(f"{key} is attached {'read-only' if entry[1] else 'read-write'} by another transaction")
            if entry is None:
                alias = f"state_{next(self._aliases)}"  # ours, never user input
                host.execute(f"ATTACH ? AS {alias}" + (" (READ_ONLY)" if read_only else ""), [key])
                entry = self._attached[key] = [alias, read_only, 0]
            entry[2] += 1
            try:
                con = host.cursor()
                con.execute(f"USE {entry[0]}")
            except BaseException:
                self._release(key, entry)
                raise
        try:
            yield con
        finally:
            con.close()
            with self._lock:
                self._release(key, entry)

    def _release(self, key: str, entry: list) -> None:
        entry[2] -= 1
        if entry[2] > 0 or self._attached.get(key) is not entry:
            return
        del self._attached[key]
        try:
            self._host.execute(f"DETACH {entry[0]}")
        except BaseException:  # an instance DuckDB invalidated: start a fresh one next time
            log.exception("could not detach %s; the in-process DuckDB instance is replaced", key)
            self._host = None
            raise


_FILES = _AttachedFiles()


def _flock_until(fd: int, mode: int, deadline: float) -> bool:
    """flock `fd` before `deadline`. Only the head of the queue waits here, so polling is fair."""
    delay = 0.0005
    while True:
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(delay)
            delay = min(delay * 2, 0.01)


class FairQueue:
    """A first-come, first-served queue between processes (and threads), safe against crashes.

    Each waiter draws a ticket (a counter in `<dir>/next`, under a short flock), creates
    `<dir>/<ticket>` and holds a flock on it while it waits and until it is through; it
    waits for the holder of the ticket before its own to let go. A waiter that dies lets
    go with its descriptor (the kernel releases the flock), so a crash never blocks the
    queue. The queue only orders arrivals; exclusion is the state lock's.
    """

    _COUNTER = struct.Struct("<q")

    def __init__(self, folder: Path, on_timeout) -> None:
        self.folder = folder
        self.on_timeout = on_timeout
        folder.mkdir(parents=True, exist_ok=True)

    def _draw(self) -> tuple[int, int]:
        """(ticket, descriptor of our ticket file, flocked)."""
        counter = os.open(self.folder / "next", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(counter, fcntl.LOCK_EX)  # held for a read and a write: microseconds
            raw = os.pread(counter, self._COUNTER.size, 0)
            ticket = self._COUNTER.unpack(raw)[0] if len(raw) == self._COUNTER.size else 0
            os.pwrite(counter, self._COUNTER.pack(ticket + 1), 0)
            mine = os.open(self.folder / str(ticket), os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(mine, fcntl.LOCK_EX)
            return ticket, mine
        finally:
            os.close(counter)

    @contextlib.contextmanager
    def turn(self, deadline: float) -> Iterator[None]:
        """Wait until every earlier arrival has gone through; hold the turn for the block."""
        ticket, mine = self._draw()
        try:
            if ticket > 0:
                self._wait_for(ticket - 1, deadline)
            yield
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.folder / str(ticket))
            os.close(mine)  # lets the next ticket through

    def _wait_for(self, ticket: int, deadline: float) -> None:
        try:
            ahead = os.open(self.folder / str(ticket), os.O_RDONLY)
        except FileNotFoundError:
            return  # already through
        try:
            if not _flock_until(ahead, fcntl.LOCK_SH, deadline):
                raise self.on_timeout()
        finally:
            os.close(ahead)


def _migration_files() -> list[tuple[int, str, str]]:
    found = []
    for entry in resources.files(MIGRATIONS_PACKAGE).iterdir():
        if entry.name.endswith(".sql"):
            version = int(entry.name.split("_", 1)[0])
            found.append((version, entry.name, entry.read_text(encoding="utf-8")))
    return sorted(found)


def _pg_overrides() -> dict[int, str]:
    """PostgreSQL texts for migrations whose transpiled DuckDB text is wrong: `postgres/NNN_*.sql`."""
    found: dict[int, str] = {}
    folder = resources.files(MIGRATIONS_PACKAGE).joinpath("postgres")
    if folder.is_dir():
        for entry in folder.iterdir():
            if entry.name.endswith(".sql"):
                found[int(entry.name.split("_", 1)[0])] = entry.read_text(encoding="utf-8")
    return found


def migrate(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Apply every migration not yet applied, each in its own transaction. Returns names applied."""
    con.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " version INTEGER PRIMARY KEY, name VARCHAR NOT NULL, applied_at TIMESTAMP NOT NULL)"
    )
    applied = {row[0] for row in con.execute("SELECT version FROM schema_migrations").fetchall()}
    done = []
    for version, name, sql in _migration_files():
        if version in applied:
            continue
        con.execute("BEGIN TRANSACTION")
        try:
            con.execute(sql)
            con.execute(
                "INSERT INTO schema_migrations VALUES (?, ?, now()::TIMESTAMP)", [version, name]
            )
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        log.info("applied state migration %s", name)
        done.append(name)
    return done
