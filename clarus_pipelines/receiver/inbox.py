"""The webhook inbox in PostgreSQL: stateless receivers, no file lock, no local disk.

Selected by `CLARUS_PIPELINES_STATE_URL=postgresql://...`. Every accepted webhook is one
row of `webhook_inbox` (migration 016) holding what a landing file holds: landing id,
source, topic, dedupe key, receive time, kept headers, the exact body, and for a body
outside the contract the quarantine reason. The receiver answers 2xx only after the
row's transaction committed with `synchronous_commit = on` (set on every connection),
so an acknowledged webhook is in PostgreSQL's WAL on disk. The receiver commits in
groups (`land_many`, run by its child process `receiver.inbox_writer`): the requests that
arrive while a commit is in flight go into the next transaction together, one statement
and one WAL flush for all of them, and each is answered with its own result once that
commit returned. The driver is psycopg 3: a batch's bodies go as one binary bytea array
(raw bytes, not bytea's hex text) and its other fields as one JSON text, and
the statement takes the shared lock itself, so a batch is one statement, one transaction
and one round trip; measured, PostgreSQL spends about a third of the CPU per row that
psycopg2's hex literals cost it. (psycopg 3 prepares a statement run five times on a
connection: behind PgBouncer in transaction mode that needs PgBouncer 1.21 or later with
`max_prepared_statements` set.)

Exactly once: `UNIQUE (source, dedupe_key)` and `INSERT ... ON CONFLICT DO NOTHING`. Of
two receivers posting the same event at once, the second waits for the first's commit
and then answers `duplicate` with the first's landing id. Any number of receivers run
side by side on one database; each keeps a small connection pool.

Reading by sequence without skipping: `seq` comes from a sequence, so a transaction can
take seq 7 and commit after another committed seq 8. A reader that moved its cursor to 8
would never see 7. Inserters therefore hold a shared transaction-level advisory lock
(`INBOX_LOCK`, many at once, released at their commit), and a reader takes it exclusively
for a moment to read the sequence's last value (`horizon`): every inserter that drew a
number up to it has finished by then, and later ones draw higher numbers. Readers only
take rows at or below the horizon, so "new since seq N" is complete and final.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime, timezone
from importlib import resources
from typing import Any

import orjson
import psycopg
import psycopg.errors
from psycopg.conninfo import conninfo_to_dict

from clarus_pipelines.settings import is_postgres_url
from clarus_pipelines.receiver.landing import (
    Envelope, LandingPathError, LandingRef, LandResult, PruneReport, Rejection, format_landing_id, topic_dir,
)

log = logging.getLogger(__name__)

INBOX_LOCK = 0x636C_6172_7573_0016  # advisory lock key: inserters share it, a reader's horizon takes it alone
INBOX_PREFIX = "inbox:"  # a landing reference in PostgreSQL mode: "inbox:<seq>"
REJECTIONS_LOG = "inbox"  # the name under which ingest keeps its rejection offset (the last seq counted)
DEFAULT_POOL_SIZE = 16  # connections per receiver process: concurrent commits share WAL flushes
MIGRATION = "016_webhook_inbox.sql"
_SCHEMA_LOCK = 0x636C_6172_7573_0000  # serialises schema creation across processes

_COLUMNS = ("seq", "landing_id", "source", "topic", "known_topic", "dedupe_key", "webhook_id", "received_at", "via",
            "replay_of", "headers", "body", "quarantine_reason")

_HEADERS_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def _headers_json(headers: Mapping[str, str]) -> str:
    """The kept headers as compact JSON text (what a landing file holds); orjson writes the
    same text faster, json takes what orjson refuses (a lone surrogate from a direct caller)."""
    try:
        return orjson.dumps(dict(headers)).decode("utf-8")
    except orjson.JSONEncodeError:
        return _HEADERS_JSON.encode(dict(headers))


# The shared lock (see the module docstring) is taken in the statement itself, before any row
# draws its seq: one statement is one transaction in autocommit, one round trip with its commit.
_LOCKED = "(SELECT pg_advisory_xact_lock_shared(%b)) AS inbox_lock"
# A batch is two parameters: its rows' fields as one JSON array (psycopg binds one string
# instead of ten lists, each inspected element by element) and the bodies as raw bytes in one
# bytea array, joined by position; rows draw their seq in the batch's order.
_INSERT_BATCH = (
    "INSERT INTO webhook_inbox (landing_id, source, topic, known_topic, dedupe_key, webhook_id, received_at, via,"
    " replay_of, headers, body)"
    " SELECT meta.landing_id, meta.source, meta.topic, meta.known_topic, meta.dedupe_key, meta.webhook_id,"
    " meta.received_at, meta.via, meta.replay_of, meta.headers, bodies.body"
    " FROM " + _LOCKED + ","
    " json_to_recordset(%t::json) AS meta(n bigint, landing_id varchar, source varchar, topic varchar,"
    " known_topic boolean, dedupe_key varchar, webhook_id varchar, received_at timestamp, via varchar,"
    " replay_of varchar, headers varchar)"
    " JOIN unnest(%b::bytea[]) WITH ORDINALITY AS bodies(body, n) ON bodies.n = meta.n"
    " ORDER BY meta.n"
    " ON CONFLICT (source, dedupe_key) DO NOTHING RETURNING seq, landing_id"
)
_INSERT_ONE = (
    "INSERT INTO webhook_inbox (landing_id, source, topic, known_topic, dedupe_key, webhook_id, received_at, via,"
    " replay_of, headers, body, quarantined, quarantine_reason)"
    " SELECT %b, %b, %b, %b, %b, %b, %b, %b, %b, %b, %b, %b, %b FROM " + _LOCKED +
    " ON CONFLICT (source, dedupe_key) DO NOTHING RETURNING seq"
)
_FIND_KEYS = ("SELECT i.source, i.dedupe_key, i.seq, i.landing_id FROM webhook_inbox i"
              " JOIN unnest(%s::varchar[], %s::varchar[]) AS k(source, dedupe_key)"
              " ON i.source = k.source AND i.dedupe_key = k.dedupe_key")


class InboxError(OSError):
    """The inbox could not store or read (PostgreSQL unreachable, failed, or refused): the
    receiver answers 503 and the sender retries."""

    def __init__(self, message: str):
        super().__init__(errno.EIO, message)


class InboxRowRefused(InboxError):
    """PostgreSQL cannot hold this delivery's values (a NUL character in a text field, say):
    the receiver quarantines it with the reason rather than have the sender retry forever."""

    row_refused = True


def inbox_ref(seq: int) -> str:
    return f"{INBOX_PREFIX}{seq}"


def ref_seq(ref: str) -> int:
    """The seq an "inbox:<seq>" reference names; LandingPathError for anything else."""
    if not isinstance(ref, str) or not ref.startswith(INBOX_PREFIX) or not ref[len(INBOX_PREFIX):].isdigit():
        raise LandingPathError(f"{ref!r} is not an inbox reference")
    return int(ref[len(INBOX_PREFIX):])


def _received(envelope: Envelope) -> datetime:
    """The envelope's receive time as naive UTC ("...T12:00:00.123456Z"; now if unreadable)."""
    text = envelope.received_at
    try:
        if not (isinstance(text, str) and len(text) == 27 and text[10] == "T" and text[26] == "Z"):
            raise ValueError(text)
        return datetime.fromisoformat(text[:26])
    except ValueError:
        return datetime.now(timezone.utc).replace(tzinfo=None)


class Inbox:
    """Handle on the inbox tables of one PostgreSQL database. Thread-safe; one small pool.

    Offers the write side of `LandingZone` (`land`, `quarantine`, `record_rejection`) for
    the receiver, and the read side ingest needs (`list_landings`, `refs_after_seq`,
    `read`, `read_rejections`), so ingest takes landings from either.
    """

    def __init__(self, url: str, *, pool_size: int = DEFAULT_POOL_SIZE, connect_timeout_s: int = 5):
        if not is_postgres_url(url):
            raise ValueError("the webhook inbox needs a postgresql:// URL")
        self.url = url
        self.pool_size = pool_size
        self.connect_timeout_s = connect_timeout_s
        # A small lazy pool: connections are opened on demand up to `pool_size` and kept open
        # (no psycopg_pool dependency for one list and a semaphore).
        self._idle: list[psycopg.Connection] = []
        self._slots = threading.BoundedSemaphore(pool_size)
        self._pool_lock = threading.Lock()
        self._closed = False
        self._schema_ready = False
        self._last_micros = 0
        self._id_lock = threading.Lock()

    # ------------------------------------------------------------------ connections
    @property
    def root(self) -> str:
        """Where the landings are, for logs: the database, never its password."""
        dsn = conninfo_to_dict(self.url)
        return f"postgresql://{dsn.get('host', '')}:{dsn.get('port', '5432')}/{dsn.get('dbname', '')} (webhook_inbox)"

    def _checkout(self) -> psycopg.Connection:
        """An idle pooled connection, or a new one (the caller holds a slot)."""
        with self._pool_lock:
            while self._idle:
                conn = self._idle.pop()
                if not conn.closed:
                    return conn
        conn = psycopg.connect(
            self.url, connect_timeout=self.connect_timeout_s, application_name="clarus-pipelines-inbox",
            # durable on commit whatever the server default; a transaction left open by a frozen
            # client is ended by the server (it would hold readers' horizon up)
            options="-c synchronous_commit=on -c idle_in_transaction_session_timeout=30000",
        )
        try:
            # bodies over ~2 KB are compressed into TOAST: lz4 costs the server about a third
            # less CPU per row than the default pglz (readers need nothing); kept as is where
            # the server has no lz4 (built without it, or older than PostgreSQL 14)
            with conn.cursor() as cur:
                cur.execute("SET default_toast_compression = 'lz4'")
            conn.commit()
        except psycopg.Error:
            with contextlib.suppress(psycopg.Error):
                conn.rollback()
        return conn

    def _checkin(self, conn: psycopg.Connection, broken: bool) -> None:
        if broken or conn.closed or self._closed:
            with contextlib.suppress(psycopg.Error):
                conn.close()
            return
        with self._pool_lock:
            self._idle.append(conn)

    @contextlib.contextmanager
    def connection(self, *, autocommit: bool = False) -> Iterator[psycopg.Connection]:
        """A pooled connection in a transaction: committed on success, rolled back on error
        (with `autocommit`, each query string is its own transaction, committed when it
        returns: one round trip for a write). A connection that failed is closed, never
        handed out again. PostgreSQL errors are raised as `InboxError` (an OSError: the
        receiver answers 503)."""
        if not self._slots.acquire(timeout=30):
            raise InboxError("no inbox connection free within 30s")
        broken = False
        conn = None
        try:
            try:
                conn = self._checkout()
            except psycopg.Error as exc:
                raise InboxError(f"PostgreSQL inbox unreachable: {str(exc).strip()[:200]}") from exc
            try:
                if conn.autocommit != autocommit:
                    conn.autocommit = autocommit
                yield conn
                if not autocommit:
                    conn.commit()
            except psycopg.Error as exc:
                broken = bool(conn.closed) or isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError))
                with contextlib.suppress(psycopg.Error):
                    if not conn.closed:
                        conn.rollback()
                error = InboxRowRefused if isinstance(exc, psycopg.DataError) else InboxError
                raise error(f"PostgreSQL inbox: {type(exc).__name__}: {str(exc).strip()[:200]}") from exc
            except BaseException:
                with contextlib.suppress(psycopg.Error):
                    if not conn.closed:
                        conn.rollback()
                raise
        finally:
            if conn is not None:
                self._checkin(conn, broken)
            self._slots.release()

    def close(self) -> None:
        """Close the idle connections (and any returned later)."""
        with self._pool_lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            with contextlib.suppress(psycopg.Error):
                conn.close()

    def ensure_schema(self) -> None:
        """Create the inbox tables if missing (migration 016; idempotent, one process at a time)."""
        if self._schema_ready:
            return
        # located from the top package: importing clarus_pipelines.state would load DuckDB, polars
        # and Arrow into every receiver (seconds at start, and a heap each garbage collection walks)
        sql = resources.files("clarus_pipelines").joinpath("state", "migrations", MIGRATION).read_text(encoding="utf-8")
        with self.connection() as conn, conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", [_SCHEMA_LOCK])
            cur.execute(sql)
        self._schema_ready = True

    def check_writable(self) -> str | None:
        """None when the inbox takes a write (readiness); the reason otherwise."""
        try:
            self.ensure_schema()
            with self.connection() as conn, conn.cursor() as cur:
                cur.execute("SELECT 1 FROM webhook_inbox LIMIT 0")
                cur.execute("SELECT pg_is_in_recovery()")
                if cur.fetchone()[0]:
                    return "PostgreSQL inbox is a read-only standby"
        except OSError as exc:
            return str(exc.strerror or exc)
        return None

    def _new_landing_id(self) -> str:
        with self._id_lock:
            micros = max(time.time_ns() // 1000, self._last_micros + 1)
            self._last_micros = micros
        return format_landing_id(micros)

    # ------------------------------------------------------------------ writing
    def _insert(self, envelope: Envelope, *, quarantined: bool) -> tuple[str, int | None, str | None]:
        """Insert one row; returns (status, seq, landing_id) with status landed or duplicate."""
        self.ensure_schema()
        headers = _headers_json(envelope.headers)
        texts = (envelope.source, envelope.topic, envelope.dedupe_key, envelope.webhook_id, envelope.via,
                 envelope.replay_of, headers, envelope.quarantine_reason)
        if any("\x00" in text for text in texts if text):  # PostgreSQL's text types cannot hold one
            raise InboxRowRefused("PostgreSQL cannot store this delivery: a NUL character in a text field")
        for _attempt in range(5):
            landing_id = self._new_landing_id()
            params = [landing_id, envelope.source, envelope.topic, envelope.known_topic,
                      None if quarantined else envelope.dedupe_key, envelope.webhook_id, _received(envelope),
                      envelope.via, envelope.replay_of, headers, envelope.body, quarantined,
                      envelope.quarantine_reason]
            try:
                with self.connection(autocommit=True) as conn:
                    rows = conn.execute(_INSERT_ONE, [*params, INBOX_LOCK], binary=True).fetchall()
                    if rows:
                        return "landed", rows[0][0], landing_id
                    cur = conn.execute("SELECT seq, landing_id FROM webhook_inbox WHERE source = %s AND dedupe_key = %s",
                                [envelope.source, envelope.dedupe_key])
                    found = cur.fetchone()
                    if found is None:  # the first writer rolled back between our two statements: try again
                        continue
                    return "duplicate", found[0], found[1]
            except InboxError as exc:
                cause = exc.__cause__
                if isinstance(cause, psycopg.errors.UniqueViolation) and "landing_id" in str(cause):
                    continue  # two receivers drew the same microsecond: draw again
                if not quarantined and _attempt == 0 and isinstance(cause, (psycopg.OperationalError,
                                                                            psycopg.InterfaceError)):
                    # a pooled connection the server dropped (restart, failover): once more on a
                    # new one; if the lost answer hid a commit, the retry answers duplicate
                    log.warning("inbox connection lost (%s); retrying once", type(cause).__name__)
                    continue
                raise
            except ValueError as exc:  # a value the driver cannot send
                raise InboxRowRefused(f"PostgreSQL cannot store this delivery: {exc}"[:200]) from exc
        raise InboxError("could not store the webhook after 5 attempts")

    def land_many(self, envelopes: list[Envelope]) -> list[LandResult | InboxError]:
        """Store many envelopes in one transaction (one statement, one commit); per envelope, its
        result (landed, or duplicate with the first's landing id) or the error to answer it with.

        Returns only after the commit is durable. If the batch fails as a whole (a row PostgreSQL
        refuses, a landing-id clash with another receiver, a lost connection), every envelope is
        stored on its own (`land`), so one bad row never fails the others."""
        if not envelopes:
            return []
        try:
            return self._insert_batch(envelopes)
        except (InboxError, ValueError, orjson.JSONEncodeError) as exc:
            if len(envelopes) > 1:
                log.info("inbox batch of %d failed (%s); storing each on its own", len(envelopes), type(exc).__name__)
        results: list[LandResult | InboxError] = []
        for envelope in envelopes:
            try:
                results.append(self.land(envelope))
            except InboxError as exc:
                results.append(exc)
        return results

    def _insert_batch(self, envelopes: list[Envelope]) -> list[LandResult | InboxError]:
        self.ensure_schema()
        ids = [self._new_landing_id() for _ in envelopes]
        rows = orjson.dumps([
            {"n": n, "landing_id": landing_id, "source": e.source, "topic": e.topic, "known_topic": e.known_topic,
             "dedupe_key": e.dedupe_key, "webhook_id": e.webhook_id, "received_at": _received(e).isoformat(),
             "via": e.via, "replay_of": e.replay_of, "headers": _headers_json(e.headers)}
            for n, (landing_id, e) in enumerate(zip(ids, envelopes), start=1)]).decode("utf-8")
        with self.connection(autocommit=True) as conn:
            # a key already stored, or twice in this batch, is skipped and looked up below
            inserted = conn.execute(_INSERT_BATCH, [INBOX_LOCK, rows, [e.body for e in envelopes]],
                                    binary=True).fetchall()
            stored = dict((landing_id, seq) for seq, landing_id in inserted)
            results: list[LandResult | InboxError | None] = [
                LandResult("landed", landing_id, inbox_ref(stored[landing_id])) if landing_id in stored else None
                for landing_id in ids]
            skipped = [i for i, r in enumerate(results) if r is None]
            if skipped:
                cur = conn.execute(_FIND_KEYS, [[envelopes[i].source for i in skipped],
                                                [envelopes[i].dedupe_key for i in skipped]])
                first = {(source, key): (seq, landing_id) for source, key, seq, landing_id in cur.fetchall()}
                for i in skipped:
                    found = first.get((envelopes[i].source, envelopes[i].dedupe_key))
                    if found is not None:
                        results[i] = LandResult("duplicate", found[1], inbox_ref(found[0]))
        for i, result in enumerate(results):
            if result is None:  # the first writer rolled back between our two statements: store it alone
                try:
                    results[i] = self.land(envelopes[i])
                except InboxError as exc:
                    results[i] = exc
        return results  # type: ignore[return-value]

    def land(self, envelope: Envelope) -> LandResult:
        """Store `envelope` (committed, durable) unless its dedupe key is already in the inbox."""
        status, seq, landing_id = self._insert(envelope, quarantined=False)
        return LandResult(status, landing_id, inbox_ref(seq))  # type: ignore[arg-type]

    def is_duplicate(self, source: str, dedupe_key: str) -> LandResult | None:
        self.ensure_schema()
        with self.connection() as conn, conn.cursor() as cur:
            cur.execute("SELECT seq, landing_id FROM webhook_inbox WHERE source = %s AND dedupe_key = %s",
                        [source, dedupe_key])
            row = cur.fetchone()
        return LandResult("duplicate", row[1], inbox_ref(row[0])) if row else None

    def quarantine(self, envelope: Envelope) -> LandingRef:
        """Keep a body that could not be accepted, with the reason (never ingested)."""
        if not envelope.quarantine_reason:
            raise ValueError("a quarantined envelope needs its quarantine_reason")
        _status, seq, landing_id = self._insert(envelope, quarantined=True)
        return LandingRef(landing_id or "", envelope.source, "_quarantine", inbox_ref(seq or 0))

    def record_rejection(self, source: str, reason: str, at: datetime | None = None) -> None:
        """One row per refused post (no body, no sender address)."""
        self.ensure_schema()
        moment = (at or datetime.now(timezone.utc))
        if moment.tzinfo is not None:
            moment = moment.astimezone(timezone.utc).replace(tzinfo=None)
        with self.connection(autocommit=True) as conn, conn.cursor() as cur:
            cur.execute("INSERT INTO webhook_inbox_rejections (refused_at, source, reason) VALUES (%s, %s, %s)",
                        [moment, source, reason[:80]])

    def finish_interrupted(self, min_age_s: float = 60.0) -> int:
        """Nothing to finish: a killed receiver's transaction simply never committed."""
        return 0

    # ------------------------------------------------------------------ reading
    def horizon(self) -> int:
        """The highest seq below which no insert is still in flight (see the module docstring)."""
        self.ensure_schema()
        with self.connection() as conn, conn.cursor() as cur:
            # bounded: inserters queue behind a waiting reader, so it never waits long (a tick retries)
            cur.execute("SET LOCAL lock_timeout = '2s'")
            cur.execute("SELECT pg_advisory_xact_lock(%s)", [INBOX_LOCK])
            cur.execute("SELECT last_value, is_called FROM webhook_inbox_seq")
            last_value, is_called = cur.fetchone()
        return int(last_value) if is_called else 0

    def refs_after_seq(self, after: int, *, source: str | None = None, limit: int | None = None) -> list[LandingRef]:
        """Accepted (not quarantined) landings with `after < seq <= horizon`, in seq order."""
        top = self.horizon()
        if top <= after:
            return []
        sql = ("SELECT seq, landing_id, source, topic FROM webhook_inbox WHERE seq > %s AND seq <= %s"
               " AND NOT quarantined" + (" AND source = %s" if source else "") + " ORDER BY seq"
               + (" LIMIT %s" if limit is not None else ""))
        params: list[Any] = [after, top] + ([source] if source else []) + ([limit] if limit is not None else [])
        with self.connection() as conn, conn.cursor() as cur:
            cur.execute(sql, params)
            rows = cur.fetchall()
        return [LandingRef(landing_id, src, topic_dir(topic), inbox_ref(seq)) for seq, landing_id, src, topic in rows]

    def list_landings(self, source: str | None = None, *, after: str | None = None, until: str | None = None,
                      topic: str | None = None, limit: int | None = None, quarantined: bool = False) -> list[LandingRef]:
        """Landings with `after < landing id < until` (receive-time ids), oldest first: as `LandingZone.list_landings`."""
        self.ensure_schema()
        clauses, params = ["quarantined = %s"], [quarantined]
        for column, op, value in (("source", "=", source), ("landing_id", ">", after), ("landing_id", "<", until)):
            if value is not None:
                clauses.append(f"{column} {op} %s")
                params.append(value)
        sql = f"SELECT seq, landing_id, source, topic FROM webhook_inbox WHERE {' AND '.join(clauses)} ORDER BY landing_id"
        with self.connection() as conn, conn.cursor() as cur:
            cur.execute(sql, params)
            rows = cur.fetchall()
        refs = [LandingRef(landing_id, src, "_quarantine" if quarantined else topic_dir(t), inbox_ref(seq))
                for seq, landing_id, src, t in rows]
        if topic is not None:
            refs = [r for r in refs if r.topic_dir == topic_dir(topic)]
        return refs[:limit] if limit is not None else refs

    def find(self, landing_id: str, *, quarantined: bool = False) -> LandingRef | None:
        """A landing (or quarantined body) by id alone: as `LandingZone.find`."""
        self.ensure_schema()
        with self.connection() as conn, conn.cursor() as cur:
            cur.execute("SELECT seq, source, topic FROM webhook_inbox WHERE landing_id = %s AND quarantined = %s",
                        [landing_id, quarantined])
            row = cur.fetchone()
        if row is None:
            return None
        seq, source, topic = row
        return LandingRef(landing_id, source, "_quarantine" if quarantined else topic_dir(topic), inbox_ref(seq))

    def read_many(self, refs: Iterable[str]) -> tuple[dict[str, tuple[str, Envelope | Exception]], list[str]]:
        """The rows `refs` name: {ref: (landing_id, envelope or why it cannot be one)}, plus refs that are not inbox references."""
        seqs: dict[int, str] = {}
        unreadable: list[str] = []
        for ref in refs:
            try:
                seqs[ref_seq(ref)] = ref
            except LandingPathError:
                unreadable.append(ref)
        found: dict[str, tuple[str, Envelope | Exception]] = {}
        if not seqs:
            return found, unreadable
        self.ensure_schema()
        with self.connection() as conn, conn.cursor() as cur:
            cur.execute(f"SELECT {', '.join(_COLUMNS)} FROM webhook_inbox WHERE seq = ANY(%s)", [sorted(seqs)])
            rows = cur.fetchall()
        for row in rows:
            doc = dict(zip(_COLUMNS, row))
            try:
                envelope = self._envelope(doc)
            except Exception as exc:  # noqa: BLE001 - one bad row is set aside, never stops the batch
                found[seqs[doc["seq"]]] = (doc["landing_id"], exc)
            else:
                found[seqs[doc["seq"]]] = (doc["landing_id"], envelope)
        return found, unreadable

    def read(self, ref: LandingRef | str) -> Envelope:
        key = ref.relpath if isinstance(ref, LandingRef) else ref
        found, _ = self.read_many([key])
        if key not in found:
            raise FileNotFoundError(key)
        value = found[key][1]
        if isinstance(value, Exception):
            raise value
        return value

    @staticmethod
    def _envelope(doc: Mapping[str, Any]) -> Envelope:
        received = doc["received_at"]
        return Envelope(
            source=doc["source"], topic=doc["topic"], body=bytes(doc["body"]), dedupe_key=doc["dedupe_key"] or "",
            headers=json.loads(doc["headers"] or "{}"),
            received_at=received.strftime("%Y-%m-%dT%H:%M:%S.%fZ") if isinstance(received, datetime) else str(received),
            via=doc["via"], webhook_id=doc["webhook_id"], known_topic=bool(doc["known_topic"]),
            replay_of=doc["replay_of"], quarantine_reason=doc["quarantine_reason"],
        )

    # ------------------------------------------------------------------ upkeep
    def prune(self, older_than: datetime) -> PruneReport:
        """Delete inbox rows (landings and quarantined bodies) and refusals received before `older_than` (UTC)."""
        if older_than.tzinfo is not None:
            older_than = older_than.astimezone(timezone.utc).replace(tzinfo=None)
        report = PruneReport(cutoff=older_than.isoformat())
        self.ensure_schema()
        with self.connection() as conn, conn.cursor() as cur:
            cur.execute("DELETE FROM webhook_inbox WHERE received_at < %s RETURNING quarantined", [older_than])
            removed = [row[0] for row in cur.fetchall()]
            cur.execute("DELETE FROM webhook_inbox_rejections WHERE refused_at < %s", [older_than])
            report.rejection_logs_removed = cur.rowcount
        report.landings_removed = sum(1 for q in removed if not q)
        report.markers_removed = report.landings_removed  # the dedupe key goes with its row
        report.quarantine_days_removed = sum(1 for q in removed if q)
        return report

    # ------------------------------------------------------------------ rejections
    def read_rejections(self, offsets: Mapping[str, int]) -> tuple[list[Rejection], dict[str, int]]:
        """Rejections after the last counted seq (`offsets["inbox"]`); returns them and the new offsets."""
        self.ensure_schema()
        start = int(offsets.get(REJECTIONS_LOG, 0))
        with self.connection() as conn, conn.cursor() as cur:
            cur.execute("SELECT seq, refused_at, source, reason FROM webhook_inbox_rejections WHERE seq > %s ORDER BY seq",
                        [start])
            rows = cur.fetchall()
        found = [Rejection(at.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), source, reason) for _seq, at, source, reason in rows]
        new_offsets = dict(offsets)
        new_offsets[REJECTIONS_LOG] = rows[-1][0] if rows else start
        return found, new_offsets

    def rejection_log_sizes(self) -> dict[str, int]:
        """{"inbox": the newest rejection's seq}: grows when a post is refused (the sensor's change signal)."""
        self.ensure_schema()
        with self.connection() as conn, conn.cursor() as cur:
            cur.execute("SELECT coalesce(max(seq), 0) FROM webhook_inbox_rejections")
            return {REJECTIONS_LOG: int(cur.fetchone()[0])}


# ---------------------------------------------------------------------------- one inbox per URL and process

_INBOXES: dict[str, Inbox] = {}
_INBOXES_LOCK = threading.Lock()


def shared_inbox(url: str) -> Inbox:
    """The process's inbox handle for `url` (sensors and assets reuse one pool)."""
    with _INBOXES_LOCK:
        inbox = _INBOXES.get(url)
        if inbox is None:
            inbox = _INBOXES[url] = Inbox(url, pool_size=4)
        return inbox

