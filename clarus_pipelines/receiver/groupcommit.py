"""Group commit in the receiver's landing zone: concurrent requests share one durable flush.

Without it every request takes a worker thread of its own and pays its own flush. With it
the event loop collects the envelopes that arrive while a commit is in flight and hands
them to the store in one call (`land_many`: the landing zone writes them, flushes once,
renames them under one hold of its lock and flushes once more). Used by
`Intake.accept_async` for file landing; the guarantees are the store's: each answer only
after its envelope is durable, duplicates answered as such, one failing envelope never
failing the others. (The PostgreSQL inbox's commits are run by a child process instead,
`receiver.inbox_writer`, which takes the same `land_many` batches.)
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from clarus_pipelines.receiver.landing import Envelope, LandResult

DEFAULT_MAX_BATCH = 256  # envelopes per commit (a PostgreSQL statement stays within a few MB at usual body sizes)


class BatchStore(Protocol):
    def land_many(self, envelopes: list[Envelope]) -> list[LandResult | BaseException]: ...


class GroupCommit:
    """Group commit in the app: the receiver's requests share one commit per batch.

    `land` queues the envelope and waits. While no commit is in flight, the first caller
    starts one; every envelope that arrives while it runs waits for the next, which takes
    them all (up to `max_batch`) into one `store.land_many` in one worker thread. Each
    caller is answered with its own result (landed, or duplicate for exactly the events
    already stored) or error, and only once its batch is durable.
    """

    def __init__(self, store: BatchStore, *, max_batch: int = DEFAULT_MAX_BATCH):
        self.store = store
        self.max_batch = max_batch
        self._pending: list[tuple[Envelope, asyncio.Future]] = []
        self._flusher: asyncio.Task | None = None
        self.commits = 0  # batches committed (tests and the benchmark)

    async def land(self, envelope: Envelope) -> LandResult:
        """Store `envelope` with whatever else is waiting; raises the error to answer it with."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()
        self._pending.append((envelope, future))
        if self._flusher is None:
            self._flusher = loop.create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        batch: list[tuple[Envelope, asyncio.Future]] = []
        try:
            while self._pending:
                batch, self._pending = self._pending[:self.max_batch], self._pending[self.max_batch:]
                try:
                    results = await loop.run_in_executor(None, self.store.land_many, [e for e, _ in batch])
                except Exception as exc:  # noqa: BLE001 - answered to every request of the batch (503, retried)
                    results = [exc] * len(batch)
                else:
                    self.commits += 1
                for (_, future), result in zip(batch, results):
                    if future.done():  # its request was cancelled; the row may still be stored (a retry is a duplicate)
                        continue
                    if isinstance(result, BaseException):
                        future.set_exception(result)
                    else:
                        future.set_result(result)
                batch = []
        finally:
            self._flusher = None
            # only when this task is cancelled (the loop stops): nobody is left to answer these
            left, self._pending = batch + self._pending, []
            for _, future in left:
                future.cancel()
