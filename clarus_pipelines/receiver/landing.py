"""The landing zone: every accepted webhook as one durable, immutable JSON file.

Layout under the root folder::

    <source>/<topic>/<YYYY-MM-DD>/<landing_id>.json   accepted webhooks (the landings)
    _quarantine/<source>/<YYYY-MM-DD>/<id>.json       bodies that were not valid JSON
    _dedupe/<source>/<xx>/<sha256 of the dedupe key>  one marker (a symlink) per event
    _rejections/<YYYY-MM-DD>.jsonl                     one line per refused post (no body)
    _tmp/                                              files being written
    .commit.lock                                       commit lock and last landing id

Durability: a landing is written to `_tmp/`, fsynced, then renamed into place and its
folder fsynced; only then does the receiver answer 2xx. A half-written file is never
visible as a landing (it is in `_tmp/`, without the `.json` name).

Exactly once: the dedupe marker is created atomically (a symlink whose target text names
the landing; creating it fails if it exists) while holding the commit lock,
so of two concurrent posts of the same event (in any thread or worker process) exactly
one lands; the marker names its landing, so a later duplicate is answered without
writing anything. A marker whose landing never became visible (the writer was killed
between the two steps) is taken over by the next delivery of the same event.

Throughput: the commit step is taken by one thread for all landings waiting at that moment
(group commit), so the lock changes hands once per batch. The flushes are grouped too
(`GroupSync`): with `sync="syncfs"` (the default on Linux) one `syncfs` of the zone's
filesystem makes every landing written before it started durable, its bytes before its
rename and its folder entries after, so a burst of concurrent webhooks costs two flushes
per batch instead of three per webhook; each request still answers only after the flush
that covers it. With `sync="fsync"` (other systems) each file is fsynced in its own
thread and a folder fsync is shared by every landing renamed before it started.

Ordering: landing ids are UTC receive times with microseconds (`20250101T120000.123456Z`),
assigned under the same lock that renames the file into place and kept strictly
increasing across processes, so files become visible in id order. `list_landings` relies
on this to give sensors a plain "after this id" watermark that never skips a file.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import fcntl
import hashlib
import json
import logging
import mmap
import os
import re
import shutil
import struct
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Literal

from clarus_pipelines.catalogue import SOURCES

log = logging.getLogger(__name__)

VIA = ("webhook", "reconciliation", "replay")
FORMAT_VERSION = 1

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_ID_RE = re.compile(r"^\d{8}T\d{6}\.\d{6}Z$")
_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_TOPIC_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")
UNKNOWN_TOPIC = "unknown"
_LAST_ID = struct.Struct("<q")
SYNC_ENV = "CLARUS_PIPELINES_LANDING_SYNC"  # syncfs | fsync (default: syncfs where the system has it)
SYNC_MODES = ("syncfs", "fsync")


def _load_syncfs() -> Callable[[int], int] | None:
    try:
        function = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int]
    function.restype = ctypes.c_int
    return function


_SYNCFS = _load_syncfs()


def syncfs(fd: int) -> None:
    """Flush everything written to the filesystem holding `fd` (Linux `syncfs(2)`), raising on failure."""
    if _SYNCFS is None:
        raise OSError(38, "syncfs is not available on this system")
    if _SYNCFS(fd) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


# ---------------------------------------------------------------------------- ids and paths


_id_second: tuple[int, str] = (-1, "")  # (unix second, its "YYYYmmddTHHMMSS"): formatted once a second


def format_landing_id(micros: int) -> str:
    global _id_second
    seconds, fraction = divmod(micros, 1_000_000)
    cached = _id_second
    if cached[0] != seconds:
        cached = _id_second = (seconds, time.strftime("%Y%m%dT%H%M%S", time.gmtime(seconds)))
    return f"{cached[1]}.{fraction:06d}Z"


def landing_time(landing_id: str) -> datetime:
    """The receive time (naive UTC) a landing id encodes."""
    return datetime.strptime(landing_id, "%Y%m%dT%H%M%S.%fZ")


def landing_id_at(moment: datetime) -> str:
    """The smallest landing id at or after `moment` (naive = UTC); for time-range queries."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    delta = moment.astimezone(timezone.utc) - _EPOCH
    return format_landing_id(delta // timedelta(microseconds=1))


def is_landing_id(value: str) -> bool:
    return bool(_ID_RE.match(value))


def topic_dir(topic: str) -> str:
    """A topic as one safe folder name: 'orders/create' -> 'orders.create'."""
    name = _TOPIC_UNSAFE.sub("_", topic.strip().replace("/", "."))[:100].lstrip(".")
    return name or UNKNOWN_TOPIC


_second_text: tuple[int, str] = (-1, "")  # (unix second, its "YYYY-mm-ddTHH:MM:SS"): formatted once a second


def _utcnow_iso() -> str:
    """Now in UTC as "YYYY-mm-ddTHH:MM:SS.ffffffZ" (runs per webhook: strftime only once a second)."""
    global _second_text
    seconds, micros = divmod(time.time_ns() // 1000, 1_000_000)
    cached = _second_text
    if cached[0] != seconds:
        cached = _second_text = (seconds, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)))
    return f"{cached[1]}.{micros:06d}Z"


def dedupe_marker_name(source: str, dedupe_key: str) -> str:
    return hashlib.sha256(f"{source}\0{dedupe_key}".encode("utf-8")).hexdigest()


# ---------------------------------------------------------------------------- envelope


@dataclass(frozen=True)
class Envelope:
    """What one landing file holds: the exact body bytes plus how and when it came."""

    source: str
    topic: str
    body: bytes
    dedupe_key: str
    headers: Mapping[str, str] = field(default_factory=dict)
    received_at: str = field(default_factory=_utcnow_iso)
    via: str = "webhook"
    webhook_id: str | None = None
    known_topic: bool = True
    replay_of: str | None = None
    quarantine_reason: str | None = None

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"unknown source {self.source!r}; expected one of {SOURCES}")
        if self.via not in VIA:
            raise ValueError(f"unknown via {self.via!r}; expected one of {VIA}")

    def to_json(self) -> bytes:
        try:
            body, encoding = self.body.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            body, encoding = base64.b64encode(self.body).decode("ascii"), "base64"
        doc: dict[str, Any] = {
            "format": FORMAT_VERSION,
            "source": self.source,
            "topic": self.topic,
            "known_topic": self.known_topic,
            "received_at": self.received_at,
            "via": self.via,
            "dedupe_key": self.dedupe_key,
            "webhook_id": self.webhook_id,
            "headers": dict(self.headers),
            "body_encoding": encoding,
            "body": body,
        }
        if self.replay_of:
            doc["replay_of"] = self.replay_of
        if self.quarantine_reason:
            doc["quarantine_reason"] = self.quarantine_reason
        return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes | str) -> "Envelope":
        doc = json.loads(data)
        if doc.get("body_encoding") == "base64":
            body = base64.b64decode(doc["body"])
        else:
            body = doc["body"].encode("utf-8")
        return cls(
            source=doc["source"], topic=doc["topic"], body=body, dedupe_key=doc["dedupe_key"],
            headers=doc.get("headers") or {}, received_at=doc["received_at"], via=doc.get("via", "webhook"),
            webhook_id=doc.get("webhook_id"), known_topic=bool(doc.get("known_topic", True)),
            replay_of=doc.get("replay_of"), quarantine_reason=doc.get("quarantine_reason"),
        )

    def payload(self) -> Any:
        return json.loads(self.body)


@dataclass(frozen=True)
class LandingRef:
    """Where a landing (or quarantined body) is: `relpath` is relative to the zone root."""

    landing_id: str
    source: str
    topic_dir: str
    relpath: str

    @property
    def received(self) -> datetime:
        return landing_time(self.landing_id)


@dataclass(frozen=True)
class LandResult:
    status: Literal["landed", "duplicate", "recovered"]
    landing_id: str
    relpath: str

    @property
    def stored(self) -> bool:
        return self.status != "duplicate"


@dataclass(frozen=True)
class Rejection:
    at: str
    source: str
    reason: str


@dataclass
class PruneReport:
    cutoff: str
    landing_days_removed: int = 0
    landings_removed: int = 0
    quarantine_days_removed: int = 0
    markers_removed: int = 0
    rejection_logs_removed: int = 0
    temps_finished: int = 0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class LandingPathError(ValueError):
    """A relative path that does not name a landing inside the zone."""


# ---------------------------------------------------------------------------- the zone


@dataclass
class _Commit:
    """One landing waiting for the commit lock, and what became of it."""

    source: str
    topic: str
    dedupe_key: str
    tmp: str
    result: LandResult | None = None
    stale_tmp: str | None = None
    error: BaseException | None = None
    done: bool = False


class _SharedDirSync:
    """fsync of one folder shared by concurrent callers (group commit).

    A caller needs a sync that *started* after its rename; if one is running it may have
    started too early, so the caller waits for the next, which covers every rename made
    before it began. Under load one fsync serves many landings.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._started = 0
        self._done = 0
        self._running = False

    def sync(self, fsync_dir) -> None:
        with self._cond:
            needed = self._started + 1
            while self._done < needed:
                if self._running:
                    self._cond.wait()
                    continue
                self._running = True
                self._started += 1
                generation = self._started
                self._cond.release()
                ok = False
                try:
                    fsync_dir()
                    ok = True
                finally:
                    self._cond.acquire()
                    self._running = False
                    if ok:
                        self._done = generation
                    self._cond.notify_all()



class GroupSync:
    """Group commit of flushes: many threads' writes made durable by one flush.

    `sync(item)` returns only after a flush that *started after* the call (so it covers
    every write the caller made before calling) has finished. The first caller to find
    no flush running becomes the leader: it takes every item waiting at that moment and
    flushes them together (`flush(items)`); callers arriving meanwhile wait for the next
    flush. A failed flush raises its error in every caller it was meant to cover.
    """

    def __init__(self, flush: Callable[[list[Any]], None]):
        self._flush = flush
        self._cond = threading.Condition()
        self._pending: list[list[Any]] = []  # [item, done, error] per waiting caller
        self._running = False
        self.flushes = 0  # how many flushes ran (for tests and the benchmark)

    def sync(self, item: Any = None) -> None:
        ticket: list[Any] = [item, False, None]
        with self._cond:
            self._pending.append(ticket)
            while not ticket[1]:
                if self._running:
                    self._cond.wait()
                    continue
                self._running = True
                batch, self._pending = self._pending, []
                self._cond.release()
                error: BaseException | None = None
                try:
                    self._flush([t[0] for t in batch])
                except BaseException as exc:  # handed to every caller of this batch
                    error = exc
                finally:
                    self._cond.acquire()
                    self._running = False
                    self.flushes += 1
                    for waiting in batch:
                        waiting[1], waiting[2] = True, error
                    self._cond.notify_all()
        if ticket[2] is not None:
            raise ticket[2]


class LandingZone:
    """One landing folder. Thread-safe and safe to share between processes."""

    def __init__(self, root: Path | str, *, fsync: bool = True, sync: str | None = None):
        self.root = Path(root).resolve()
        self.fsync = fsync
        mode = sync or os.environ.get(SYNC_ENV, "").strip().lower() or ("syncfs" if _SYNCFS else "fsync")
        if mode not in SYNC_MODES:
            raise ValueError(f"{SYNC_ENV} must be one of {SYNC_MODES}, not {mode!r}")
        self.sync_mode = mode if _SYNCFS or mode == "fsync" else "fsync"
        self.tmp_dir = self.root / "_tmp"
        self.quarantine_dir = self.root / "_quarantine"
        self.dedupe_dir = self.root / "_dedupe"
        self.rejections_dir = self.root / "_rejections"
        for folder in (self.root, self.tmp_dir, self.quarantine_dir, self.dedupe_dir, self.rejections_dir):
            folder.mkdir(parents=True, exist_ok=True)
        self._root = str(self.root)  # the write path uses plain strings: it runs per webhook
        self._tmp = str(self.tmp_dir)
        self._dedupe = str(self.dedupe_dir)
        self._thread_lock = threading.Lock()
        self._lock_fd: int | None = None
        self._lock_map: mmap.mmap | None = None
        self._last_micros = 0
        self._known_dirs: set[str] = set()
        self._dir_syncs: dict[str, _SharedDirSync] = {}
        self._commit_cond = threading.Condition()
        self._commit_queue: list[_Commit] = []
        self._committing = False
        self._root_fd: int | None = None
        self._group = GroupSync(self._syncfs)

    def _syncfs(self, _items: list[Any]) -> None:
        """One flush of the zone's filesystem for a whole batch of waiting landings."""
        if self._root_fd is None:
            with self._thread_lock:
                if self._root_fd is None:
                    self._root_fd = os.open(self._root, os.O_RDONLY | os.O_DIRECTORY)
        syncfs(self._root_fd)

    def _durable(self, folders: tuple[str, ...] = ()) -> None:
        """Make what this thread wrote (file bytes, or renames into `folders`) durable before answering."""
        if not self.fsync:
            return
        if self.sync_mode == "syncfs":
            self._group.sync()
        else:
            for folder in folders:
                self._sync_landed(folder)

    # ------------------------------------------------------------------ low level
    def _fsync_dir(self, path: str | Path) -> None:
        if not self.fsync:
            return
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _sync_landed(self, folder: str) -> None:
        """Make the renames into `folder` durable, sharing the fsync with concurrent landings."""
        if not self.fsync:
            return
        syncer = self._dir_syncs.get(folder)
        if syncer is None:
            with self._thread_lock:
                syncer = self._dir_syncs.setdefault(folder, _SharedDirSync())
        syncer.sync(lambda: self._fsync_dir(folder))

    def _ensure_dir(self, path: str) -> None:
        """mkdir -p, fsyncing each parent whose entry list changed (cached per process)."""
        if path in self._known_dirs:
            return
        missing = []
        probe = path
        while not os.path.isdir(probe):
            missing.append(probe)
            probe = os.path.dirname(probe)
        for folder in reversed(missing):
            try:
                os.mkdir(folder)
            except FileExistsError:
                pass
            self._fsync_dir(os.path.dirname(folder))
        self._known_dirs.add(path)

    def _write_tmp(self, data: bytes, *, durable: bool = True) -> str:
        tmp = f"{self._tmp}/{uuid.uuid4().hex}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if self.fsync and self.sync_mode == "fsync":
                os.fsync(fd)
        finally:
            os.close(fd)
        if durable and self.sync_mode == "syncfs":
            self._durable()  # the bytes are on disk before the file is renamed into place
        return tmp

    @contextlib.contextmanager
    def _commit_lock(self) -> Iterator[mmap.mmap]:
        """Serialises commits in this process (thread lock) and across processes (flock).

        Yields the lock file mapped in memory: its 8 bytes hold the last landing id
        assigned (microseconds), read and written without a system call while held.
        """
        with self._thread_lock:
            if self._lock_fd is None:
                fd = os.open(f"{self._root}/.commit.lock", os.O_RDWR | os.O_CREAT, 0o640)
                fcntl.flock(fd, fcntl.LOCK_EX)
                try:
                    if os.fstat(fd).st_size < 8:
                        os.ftruncate(fd, 8)
                    self._lock_map = mmap.mmap(fd, 8)
                finally:
                    fcntl.flock(fd, fcntl.LOCK_UN)
                self._lock_fd = fd
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            try:
                yield self._lock_map
            finally:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def _next_id(self, state: mmap.mmap) -> str:
        """A landing id later than every id any process has assigned in this zone."""
        last = _LAST_ID.unpack_from(state, 0)[0]
        micros = max(time.time_ns() // 1000, last + 1, self._last_micros + 1)
        _LAST_ID.pack_into(state, 0, micros)
        self._last_micros = micros
        return format_landing_id(micros)

    # A dedupe marker is a symlink named after the event's key whose target text is
    # "<landing relpath>|<temp file name>": created in one atomic call that fails if it
    # exists, read in one call, never followed.
    def _marker_path(self, source: str, dedupe_key: str) -> str:
        name = dedupe_marker_name(source, dedupe_key)
        return f"{self._dedupe}/{source}/{name[:2]}/{name}"

    @staticmethod
    def _read_marker(path: str) -> tuple[str, str] | None:
        try:
            landing, _, temp = os.readlink(path).partition("|")
        except OSError:
            return None
        return (landing, temp) if landing else None

    def _landing_exists(self, relpath: str) -> bool:
        return os.path.isfile(f"{self._root}/{relpath}")

    def _relpath(self, source: str, topic: str, landing_id: str) -> str:
        day = f"{landing_id[0:4]}-{landing_id[4:6]}-{landing_id[6:8]}"
        return f"{source}/{topic_dir(topic)}/{day}/{landing_id}.json"

    # ------------------------------------------------------------------ landing
    def is_duplicate(self, source: str, dedupe_key: str) -> LandResult | None:
        """Fast check without writing: the event's landing if it is already visible."""
        marker = self._read_marker(self._marker_path(source, dedupe_key))
        if marker and self._landing_exists(marker[0]):
            return LandResult("duplicate", os.path.basename(marker[0])[:-5], marker[0])
        return None

    def land(self, envelope: Envelope) -> LandResult:
        """Store `envelope` durably unless its dedupe key already landed. Safe under concurrency."""
        known = self.is_duplicate(envelope.source, envelope.dedupe_key)
        if known:
            return known
        tmp = self._write_tmp(envelope.to_json())
        result: LandResult | None = None
        try:
            result = self._commit(envelope.source, envelope.topic, envelope.dedupe_key, tmp)
            return result
        finally:
            if result is None or not result.stored:  # a duplicate's copy, or a failed commit
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)

    def land_many(self, envelopes: list[Envelope]) -> list[LandResult | BaseException]:
        """`land` for a batch in one thread, each flush shared: write every file, flush once,
        claim and rename them all under one hold of the commit lock, flush once more. Per
        envelope, its result (landed, recovered, or duplicate) or the error to answer it with;
        a landing is only reported once the flush after its rename returned."""
        results: list[LandResult | BaseException | None] = [None] * len(envelopes)
        jobs: dict[int, _Commit] = {}
        for i, envelope in enumerate(envelopes):
            try:
                known = self.is_duplicate(envelope.source, envelope.dedupe_key)
                if known:
                    results[i] = known
                    continue
                self._ensure_dir(os.path.dirname(self._marker_path(envelope.source, envelope.dedupe_key)))
                tmp = self._write_tmp(envelope.to_json(), durable=False)
                jobs[i] = _Commit(envelope.source, envelope.topic, envelope.dedupe_key, tmp)
            except OSError as exc:
                results[i] = exc
        try:
            if jobs and self.sync_mode == "syncfs":
                self._durable()  # every file's bytes on disk before any is renamed into place
            if jobs:
                with self._commit_lock() as state:
                    for job in jobs.values():
                        try:
                            self._commit_one(job, state)
                        except Exception as exc:  # answered to its own request only
                            job.error = exc
            folders: set[str] = set()
            for job in jobs.values():
                if job.result is not None and job.result.stored:
                    folders.add(os.path.dirname(f"{self._root}/{job.result.relpath}"))
                    folders.add(os.path.dirname(self._marker_path(job.source, job.dedupe_key)))
            if folders:
                self._durable(tuple(sorted(folders)))
        except OSError as exc:  # a failed flush or lock: nothing of this batch is acknowledged
            for i, job in jobs.items():
                if job.error is None:
                    job.error = exc
        for i, job in jobs.items():
            if job.error is not None or job.result is None or not job.result.stored:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(job.tmp)  # a duplicate's copy, or a failed commit
            if job.stale_tmp is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(job.stale_tmp)
            if job.error is not None:
                results[i] = job.error
            else:
                results[i] = job.result
                if job.result is not None and job.result.status == "recovered":
                    log.warning("landing %s took over %s event whose first write was interrupted",
                                job.result.landing_id, job.source)
        return results  # type: ignore[return-value]

    def _commit(self, source: str, topic: str, dedupe_key: str, tmp: str) -> LandResult:
        """Claim the event and rename `tmp` into place; then make it durable."""
        job = _Commit(source, topic, dedupe_key, tmp)
        self._ensure_dir(os.path.dirname(self._marker_path(source, dedupe_key)))
        self._run_commits(job)
        if job.error is not None:
            raise job.error
        result = job.result
        assert result is not None
        if result.stored:
            # the landing's folder entry, and the dedupe marker's: after a power cut the event
            # must still be known as landed
            self._durable((os.path.dirname(f"{self._root}/{result.relpath}"),
                           os.path.dirname(self._marker_path(source, dedupe_key))))
        if job.stale_tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(job.stale_tmp)
        if result.status == "recovered":
            log.warning("landing %s took over %s event whose first write was interrupted", result.landing_id, source)
        return result

    def _run_commits(self, job: "_Commit") -> None:
        """Group commit: the thread that finds no commit running takes every queued one
        through a single hold of the lock; the others wait for their result. Under load
        this turns many short lock hand-overs between threads into one."""
        with self._commit_cond:
            self._commit_queue.append(job)
            while not job.done:
                if self._committing:
                    self._commit_cond.wait()
                    continue
                self._committing = True
                batch, self._commit_queue = self._commit_queue, []
                self._commit_cond.release()
                try:
                    with self._commit_lock() as state:
                        for item in batch:
                            try:
                                self._commit_one(item, state)
                            except Exception as exc:  # handed to the thread that asked
                                item.error = exc
                except BaseException as exc:
                    for item in batch:
                        if item.result is None and item.error is None:
                            item.error = exc
                    raise
                finally:
                    self._commit_cond.acquire()
                    self._committing = False
                    for item in batch:
                        item.done = True
                    self._commit_cond.notify_all()

    def _commit_one(self, job: "_Commit", state: mmap.mmap) -> None:
        """Under the commit lock: assign the id, claim the dedupe marker, rename into place."""
        marker = self._marker_path(job.source, job.dedupe_key)
        tmp_name = os.path.basename(job.tmp)
        landing_id = self._next_id(state)
        relpath = self._relpath(job.source, job.topic, landing_id)
        final = f"{self._root}/{relpath}"
        self._ensure_dir(os.path.dirname(final))
        try:
            os.symlink(f"{relpath}|{tmp_name}", marker)
            status: Literal["landed", "recovered"] = "landed"
        except FileExistsError:
            existing = self._read_marker(marker)
            if existing and self._landing_exists(existing[0]):
                job.result = LandResult("duplicate", os.path.basename(existing[0])[:-5], existing[0])
                return
            # The first writer of this event died before its landing became visible
            # (or the landing was removed): this delivery takes the event over.
            os.symlink(f"{relpath}|{tmp_name}", marker + ".new")
            os.replace(marker + ".new", marker)
            status = "recovered"
            if existing and existing[1] and existing[1] != tmp_name:
                job.stale_tmp = f"{self._tmp}/{os.path.basename(existing[1])}"
        os.rename(job.tmp, final)
        job.result = LandResult(status, landing_id, relpath)

    def quarantine(self, envelope: Envelope) -> LandingRef:
        """Keep a body that could not be accepted (e.g. not JSON), with the reason, durably."""
        if not envelope.quarantine_reason:
            raise ValueError("a quarantined envelope needs its quarantine_reason")
        tmp = self._write_tmp(envelope.to_json())
        try:
            return self._commit_quarantine(envelope.source, tmp)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def _commit_quarantine(self, source: str, tmp: str) -> LandingRef:
        with self._commit_lock() as state:
            qid = self._next_id(state)
            day = f"{qid[0:4]}-{qid[4:6]}-{qid[6:8]}"
            relpath = f"_quarantine/{source}/{day}/{qid}.json"
            final = f"{self._root}/{relpath}"
            self._ensure_dir(os.path.dirname(final))
            os.rename(tmp, final)
        self._durable((os.path.dirname(final),))
        return LandingRef(qid, source, "_quarantine", relpath)

    # ------------------------------------------------------------------ reading
    def resolve(self, relpath: str) -> Path:
        """Absolute path of a landing or quarantined file; refuses anything else."""
        parts = Path(relpath).parts
        is_landing = len(parts) == 4 and parts[0] in SOURCES and parts[1] not in ("", ".", "..")
        is_quarantined = len(parts) == 4 and parts[0] == "_quarantine" and parts[1] in SOURCES
        if not (is_landing or is_quarantined) or not _DATE_RE.match(parts[2]) or not parts[3].endswith(".json") \
                or not is_landing_id(parts[3][:-5]):
            raise LandingPathError(f"{relpath!r} is not a landing path")
        return self.root.joinpath(*parts)

    def read(self, ref: LandingRef | str) -> Envelope:
        relpath = ref.relpath if isinstance(ref, LandingRef) else ref
        return Envelope.from_json(self.resolve(relpath).read_bytes())

    def _scan(self, base: Path, sources: list[str], after: str | None, until: str | None,
              topics: set[str] | None, from_day: str | None = None) -> list[LandingRef]:
        first = after or from_day
        after_day = f"{first[0:4]}-{first[4:6]}-{first[6:8]}" if first else ""
        until_day = f"{until[0:4]}-{until[4:6]}-{until[6:8]}" if until else "9999"
        found: dict[str, LandingRef] = {}
        for source in sources:
            source_dir = base / source
            if not source_dir.is_dir():
                continue
            if base == self.root:
                # every topic folder: whatever was acknowledged must be seen (folders
                # such as `_x` only came from older receivers; see contract.check_topic)
                topic_dirs = [(e.name, Path(e.path)) for e in os.scandir(source_dir)
                              if e.is_dir(follow_symlinks=False) and e.name not in (".", "..")]
            else:
                topic_dirs = [("_quarantine", source_dir)]
            for name, folder in topic_dirs:
                if topics is not None and name not in topics:
                    continue
                for day in os.scandir(folder):
                    if not (day.is_dir() and _DATE_RE.match(day.name) and after_day <= day.name <= until_day):
                        continue
                    prefix = f"{source}/{name}/{day.name}" if base == self.root else f"_quarantine/{source}/{day.name}"
                    for entry in os.scandir(day.path):
                        stem = entry.name[:-5]
                        if not entry.name.endswith(".json") or not is_landing_id(stem):
                            continue
                        if (after and stem <= after) or (until and stem >= until):
                            continue
                        found[stem] = LandingRef(stem, source, name, f"{prefix}/{entry.name}")
        return [found[k] for k in sorted(found)]

    def list_landings(
        self,
        source: str | None = None,
        *,
        after: str | None = None,
        until: str | None = None,
        topic: str | None = None,
        limit: int | None = None,
        quarantined: bool = False,
    ) -> list[LandingRef]:
        """Landings with `after < id < until`, oldest first, at most `limit`.

        Safe against files being renamed in while listing: a second pass, bounded by the
        newest id the first pass saw, returns every landing up to it. Files become
        visible in id order, and all of them existed before the second pass began.
        """
        sources = [source] if source else list(SOURCES)
        topics = {topic_dir(topic)} if topic else None
        base = self.quarantine_dir if quarantined else self.root
        first = self._scan(base, sources, after, until, topics)
        if not first:
            return []
        newest = first[-1].landing_id
        bound = min(until, newest + "~") if until else newest + "~"  # "~" sorts after the id
        second = self._scan(base, sources, after, bound, topics)
        return second[:limit] if limit is not None else second

    def find(self, landing_id: str, *, quarantined: bool = False) -> LandingRef | None:
        """A landing by id alone (searches that id's day in every topic)."""
        if not is_landing_id(landing_id):
            return None
        base = self.quarantine_dir if quarantined else self.root
        day_start = landing_id[:9] + "000000.000000Z"
        refs = self._scan(base, list(SOURCES), None, landing_id + "~", None, from_day=day_start)
        return next((r for r in refs if r.landing_id == landing_id), None)

    # ------------------------------------------------------------------ rejections
    def record_rejection(self, source: str, reason: str, at: datetime | None = None) -> None:
        """Append one line (no body, no sender address) to the day's rejection log."""
        moment = at or datetime.now(timezone.utc)
        line = json.dumps({"at": moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), "source": source, "reason": reason[:80]}) + "\n"
        path = self.rejections_dir / f"{moment:%Y-%m-%d}.jsonl"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        try:
            os.write(fd, line.encode("utf-8"))  # one write of a short line: appended whole
        finally:
            os.close(fd)

    def read_rejections(self, offsets: Mapping[str, int]) -> tuple[list[Rejection], dict[str, int]]:
        """Rejections logged since `offsets` (file name -> bytes read); returns them and new offsets."""
        found: list[Rejection] = []
        new_offsets = dict(offsets)
        for path in sorted(self.rejections_dir.glob("*.jsonl")):
            start = offsets.get(path.name, 0)
            with path.open("rb") as fh:
                fh.seek(start)
                chunk = fh.read()
            complete = chunk[: chunk.rfind(b"\n") + 1]  # a line still being appended waits
            for line in complete.splitlines():
                try:
                    doc = json.loads(line)
                    found.append(Rejection(doc["at"], doc["source"], doc["reason"]))
                except (ValueError, KeyError):
                    log.warning("skipping an unreadable line in %s", path.name)
            new_offsets[path.name] = start + len(complete)
        return found, new_offsets

    def rejection_log_sizes(self) -> dict[str, int]:
        return {p.name: p.stat().st_size for p in sorted(self.rejections_dir.glob("*.jsonl"))}

    # ------------------------------------------------------------------ upkeep
    def finish_interrupted(self, min_age_s: float = 60.0) -> int:
        """Complete commits a killed writer left in `_tmp/` (they are complete files).

        A file younger than `min_age_s` may still be in flight in another thread or
        worker, so it is left alone. Landing it is safe: the dedupe marker decides
        whether it is new, and a torn file (killed before fsync) is dropped.
        """
        finished = 0
        cutoff = time.time() - min_age_s
        for entry in os.scandir(self.tmp_dir):
            path = Path(entry.path)
            try:
                if entry.stat().st_mtime > cutoff:
                    continue
                envelope = Envelope.from_json(path.read_bytes())
            except FileNotFoundError:
                continue
            except (ValueError, KeyError, TypeError):
                log.warning("dropping torn temporary file %s", path.name)
                path.unlink(missing_ok=True)
                continue
            try:
                if self.fsync:  # its writer may have been killed before making the bytes durable
                    fd = os.open(path, os.O_RDONLY)
                    try:
                        os.fsync(fd)
                    finally:
                        os.close(fd)
                if envelope.quarantine_reason:
                    self._commit_quarantine(envelope.source, str(path))
                    finished += 1
                else:
                    result = self._commit(envelope.source, envelope.topic, envelope.dedupe_key, str(path))
                    finished += result.stored
            except FileNotFoundError:
                continue  # another process finished it first
            finally:
                path.unlink(missing_ok=True)
        return finished

    def prune(self, older_than: datetime) -> PruneReport:
        """Delete landings, quarantined bodies, markers and rejection logs received before `older_than` (UTC)."""
        if older_than.tzinfo is not None:
            older_than = older_than.astimezone(timezone.utc).replace(tzinfo=None)
        cutoff_day = older_than.strftime("%Y-%m-%d")
        report = PruneReport(cutoff=older_than.isoformat())
        report.temps_finished = self.finish_interrupted()
        for source in SOURCES:
            for base, is_quarantine in ((self.root / source, False), (self.quarantine_dir / source, True)):
                if not base.is_dir():
                    continue
                day_parents = [base] if is_quarantine else [Path(e.path) for e in os.scandir(base) if e.is_dir()]
                for parent in day_parents:
                    for day in os.scandir(parent):
                        if day.is_dir() and _DATE_RE.match(day.name) and day.name < cutoff_day:
                            count = sum(1 for _ in os.scandir(day.path))
                            shutil.rmtree(day.path)
                            if is_quarantine:
                                report.quarantine_days_removed += 1
                            else:
                                report.landing_days_removed += 1
                                report.landings_removed += count
        cutoff_ts = older_than.replace(tzinfo=timezone.utc).timestamp()
        for dirpath, _dirs, files in os.walk(self.dedupe_dir):
            for name in files:
                path = os.path.join(dirpath, name)
                try:
                    if os.lstat(path).st_mtime < cutoff_ts:  # markers are symlinks: never follow
                        os.unlink(path)
                        report.markers_removed += 1
                except FileNotFoundError:
                    pass
        for path in self.rejections_dir.glob("*.jsonl"):
            if path.stem < cutoff_day:
                path.unlink(missing_ok=True)
                report.rejection_logs_removed += 1
        return report
