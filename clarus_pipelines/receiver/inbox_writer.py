"""The PostgreSQL inbox's group commit, run by a child process of the receiver.

Why a process: a receiver is bound by its one interpreter lock. With the commits in a
thread of its own, each commit waited for the event loop to let go of the lock, up to
Python's 5 ms switch interval, before it could bind its batch or hand back the answers;
and a commit started only when the event loop had come round to the previous one's
answer. The commits ran a few milliseconds apart for one millisecond of PostgreSQL work,
and the receiver's requests spent most of their time waiting for them.

How: the receiver writes each checked envelope to the child over a socket the moment it
is checked (`InboxWriter.land`) and awaits the answer on its event loop. The child takes
whatever has arrived (up to `max_batch`), stores it with `Inbox.land_many` (one
statement, one commit), answers each envelope in order, and takes the next batch at once:
commits run back to back, at PostgreSQL's pace, not the event loop's.

The guarantees are `Inbox.land_many`'s: an envelope is answered 2xx only after the child
reported its row committed; a duplicate is answered as such; one failing row never fails
the others. If the child dies, or answers nothing for `answer_timeout_s` (it is then
killed), every envelope waiting on it is answered `InboxError` (503: the sender retries; a
row the child had committed is then answered as a duplicate), and the next envelope (or
the next readiness check) starts a new child.
The child exits when the receiver closes its socket (also when the receiver is killed),
after the batch it is storing; signals sent to the process group do not interrupt it.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import pickle
import signal
import socket
import subprocess
import sys
import time

from clarus_pipelines.receiver.groupcommit import DEFAULT_MAX_BATCH
from clarus_pipelines.receiver.inbox import Inbox, InboxError, InboxRowRefused
from clarus_pipelines.receiver.landing import Envelope, LandResult

log = logging.getLogger(__name__)

URL_ENV = "CLARUS_PIPELINES_INBOX_WRITER_URL"  # the child's PostgreSQL URL: in its environment, never its argv
DEFAULT_ANSWER_TIMEOUT_S = 60.0
RESTART_INTERVAL_S = 1.0  # a child that keeps dying is not restarted more often than this
_LENGTH = 4  # a frame is a 4-byte big-endian length and a pickle


def _frame(obj: object) -> bytes:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return len(data).to_bytes(_LENGTH, "big") + data


def _take_frames(buffer: bytearray, limit: int | None = None) -> list[bytearray]:
    """Remove the whole frames at the start of `buffer` (at most `limit`) and return their payloads."""
    frames: list[bytearray] = []
    start = 0
    while (limit is None or len(frames) < limit) and len(buffer) - start >= _LENGTH:
        end = start + _LENGTH + int.from_bytes(buffer[start:start + _LENGTH], "big")
        if len(buffer) < end:
            break
        frames.append(buffer[start + _LENGTH:end])
        start = end
    del buffer[:start]
    return frames


def _fields(envelope: Envelope) -> tuple:
    e = envelope
    return (e.source, e.topic, e.body, e.dedupe_key, dict(e.headers), e.received_at, e.via, e.webhook_id,
            e.known_topic, e.replay_of, e.quarantine_reason)


def _envelope(fields: tuple) -> Envelope:
    (source, topic, body, dedupe_key, headers, received_at, via, webhook_id, known_topic, replay_of,
     quarantine_reason) = fields
    return Envelope(source=source, topic=topic, body=body, dedupe_key=dedupe_key, headers=headers,
                    received_at=received_at, via=via, webhook_id=webhook_id, known_topic=known_topic,
                    replay_of=replay_of, quarantine_reason=quarantine_reason)


def _encode(result: LandResult | BaseException) -> tuple:
    if isinstance(result, LandResult):
        return (result.status, result.landing_id, result.relpath)
    message = result.strerror if isinstance(result, OSError) and result.strerror else str(result)
    return ("refused" if getattr(result, "row_refused", False) else "error", str(message)[:500], None)


def _decode(item: tuple) -> LandResult | InboxError:
    status, text, ref = item
    if status == "error":
        return InboxError(text)
    if status == "refused":
        return InboxRowRefused(text)
    return LandResult(status, text, ref)


# ---------------------------------------------------------------------------- the receiver's side


class _ChildLink(asyncio.Protocol):
    """The socket to one child: envelopes out, answers in, matched in order."""

    def __init__(self, on_lost):
        self.transport: asyncio.Transport | None = None
        self.waiting: collections.deque[tuple[asyncio.Future, float]] = collections.deque()
        self.lost = False
        self.batches = 0  # answers received: one per commit in the child
        self._buffer = bytearray()
        self._on_lost = on_lost

    def connection_made(self, transport) -> None:
        self.transport = transport

    def send(self, envelope: Envelope) -> asyncio.Future:
        if self.lost or self.transport is None or self.transport.is_closing():
            raise InboxError("inbox writer process stopped")
        future = asyncio.get_running_loop().create_future()
        # written at once: the child is usually waiting, and a commit started now answers sooner
        # than a larger one started after this turn of the event loop (measured)
        self.transport.write(_frame(_fields(envelope)))  # type: ignore[union-attr]
        self.waiting.append((future, time.monotonic()))
        return future

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        for frame in _take_frames(self._buffer):  # one answer frame per batch the child committed
            self.batches += 1
            for item in pickle.loads(frame):
                future, _sent = self.waiting.popleft()
                if not future.done():  # its request was cancelled; the row may still be stored
                    result = _decode(item)
                    if isinstance(result, BaseException):
                        future.set_exception(result)
                    else:
                        future.set_result(result)

    def fail_waiting(self, reason: str) -> None:
        while self.waiting:
            future, _sent = self.waiting.popleft()
            if not future.done():
                future.set_exception(InboxError(reason))

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.fail_waiting("inbox writer process stopped before answering")
        self._on_lost(self)


class InboxWriter:
    """Group commit for the receiver in PostgreSQL mode: `land` (on the event loop) stores an
    envelope through the child process and answers once its row is committed."""

    def __init__(self, url: str, *, max_batch: int = DEFAULT_MAX_BATCH,
                 answer_timeout_s: float = DEFAULT_ANSWER_TIMEOUT_S):
        self.url = url
        self.max_batch = max_batch
        self.answer_timeout_s = answer_timeout_s
        self._link: _ChildLink | None = None
        self._proc: subprocess.Popen | None = None
        self._starting: asyncio.Lock | None = None
        self._last_start = float("-inf")
        self._watchdog: asyncio.TimerHandle | None = None
        self._closing = False
        self.started = 0  # children started
        self._earlier_commits = 0
        self.last_failure: str | None = None

    @property
    def commits(self) -> int:
        """Batches the children answered (each one commit), for tests and the benchmark."""
        return self._earlier_commits + (self._link.batches if self._link is not None else 0)

    @property
    def pid(self) -> int | None:
        """The running child's process id (None when there is none)."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    async def land(self, envelope: Envelope) -> LandResult:
        """Store `envelope` with whatever else reaches the child meanwhile; raises the
        `InboxError` to answer it with (503) when it could not be stored."""
        link = self._link
        if link is None or link.lost:
            link = await self._start()
        future = link.send(envelope)
        if self._watchdog is None:
            self._arm_watchdog()
        return await future

    async def start(self) -> None:
        """Start the child now (the receiver does at start-up, so the first webhook does not wait)."""
        await self._start()

    async def _start(self) -> _ChildLink:
        if self._starting is None:
            self._starting = asyncio.Lock()
        async with self._starting:
            if self._link is not None and not self._link.lost:
                return self._link
            if self._closing:
                raise InboxError("the receiver is stopping")
            if time.monotonic() - self._last_start < RESTART_INTERVAL_S:
                raise InboxError(self.last_failure or "inbox writer process stopped")
            self._last_start = time.monotonic()
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, self._reap)
            ours, theirs = socket.socketpair()
            try:
                self._proc = await loop.run_in_executor(None, self._spawn, theirs)
            except OSError as exc:
                ours.close()
                self.last_failure = f"inbox writer process could not start: {exc}"
                raise InboxError(self.last_failure) from exc
            finally:
                theirs.close()
            _transport, link = await loop.create_unix_connection(lambda: _ChildLink(self._lost), sock=ours)
            self._link = link
            self.started += 1
            self.last_failure = None
            return link

    def _spawn(self, theirs: socket.socket) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "clarus_pipelines.receiver.inbox_writer", str(theirs.fileno()), str(self.max_batch)],
            pass_fds=[theirs.fileno()], env={**os.environ, URL_ENV: self.url}, stdin=subprocess.DEVNULL,
            start_new_session=True)  # its own process group: a Ctrl-C meant for the receiver is not its to act on

    def _lost(self, link: _ChildLink) -> None:
        if link is not self._link:  # closed by `close`, which counted it
            return
        self._earlier_commits += link.batches
        self._link = None
        if not self._closing:
            self.last_failure = self.last_failure or "inbox writer process stopped"
            log.error("inbox writer process stopped; the next webhook (or readiness check) starts a new one")

    def _arm_watchdog(self) -> None:
        self._watchdog = asyncio.get_running_loop().call_later(self.answer_timeout_s / 4, self._check_stuck)

    def _check_stuck(self) -> None:
        """A child that has not answered its oldest envelope within `answer_timeout_s` is
        killed: everything waiting on it is answered 503, the next envelope starts a new one."""
        self._watchdog = None
        link = self._link
        if link is None or link.lost or not link.waiting:
            return
        if time.monotonic() - link.waiting[0][1] > self.answer_timeout_s:
            log.error("inbox writer process answered nothing for %.0fs: stopping it (%d webhook(s) answered 503)",
                      self.answer_timeout_s, len(link.waiting))
            self.last_failure = "inbox writer process stopped answering"
            link.lost = True  # nothing more is sent to it; the next envelope starts a new child
            link.fail_waiting(self.last_failure)
            self._lost(link)
            if self._proc is not None:
                self._proc.kill()
            if link.transport is not None:
                link.transport.abort()
            return
        self._arm_watchdog()

    def _reap(self, timeout_s: float = 5.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    async def close(self) -> None:
        """Close the child's socket and wait for it to finish the batch it holds and exit."""
        self._closing = True
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        link, self._link = self._link, None
        if link is not None:
            self._earlier_commits += link.batches
            if link.transport is not None:
                link.transport.close()
        await asyncio.get_running_loop().run_in_executor(None, self._reap)

    async def ready(self) -> str | None:
        """None when a child is running (one is started if none is); else why not, for readiness."""
        try:
            await self._start()
        except OSError as exc:
            return str(exc.strerror or exc)
        return None


# ---------------------------------------------------------------------------- the child


class _Frames:
    """The child's end of the socket: whole frames in, answers out, as few system calls as it takes."""

    RECV_BYTES = 1 << 20

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buffer = bytearray()

    def _drain(self) -> None:
        """Take whatever the receiver has sent so far, without waiting."""
        while True:
            try:
                data = self.sock.recv(self.RECV_BYTES, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return
            if not data:
                return  # the end is seen by the next blocking read
            self.buffer += data

    def next_batch(self, limit: int) -> list[bytearray]:
        """At least one frame (waits for it), and up to `limit` of those that have arrived.
        EOFError when the receiver closed the socket."""
        self._drain()
        while True:
            frames = _take_frames(self.buffer, limit)
            if frames:
                return frames
            data = self.sock.recv(self.RECV_BYTES)
            if not data:
                raise EOFError
            self.buffer += data
            self._drain()

    def answer(self, obj: object) -> None:
        self.sock.sendall(_frame(obj))


def serve(fd: int, url: str, max_batch: int = DEFAULT_MAX_BATCH) -> None:
    """The child: store what has arrived as one batch, answer each envelope, repeat."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the receiver stops it by closing the socket
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    frames = _Frames(socket.socket(fileno=fd))
    inbox = Inbox(url, pool_size=1)
    try:
        while True:
            try:
                batch = frames.next_batch(max_batch)
            except (EOFError, OSError):
                return  # the receiver closed the socket, or is gone
            envelopes = [_envelope(pickle.loads(frame)) for frame in batch]
            try:
                results: list = inbox.land_many(envelopes)
            except Exception as exc:  # noqa: BLE001 - answered to each envelope (503, retried)
                log.exception("inbox batch failed")
                results = [InboxError(f"inbox batch failed: {type(exc).__name__}")] * len(envelopes)
            try:
                frames.answer([_encode(r) for r in results])
            except OSError:
                return
    finally:
        inbox.close()


if __name__ == "__main__":
    from clarus_pipelines.logs import configure_logging

    configure_logging()
    serve(int(sys.argv[1]), os.environ.pop(URL_ENV), int(sys.argv[2]) if len(sys.argv) > 2 else DEFAULT_MAX_BATCH)
