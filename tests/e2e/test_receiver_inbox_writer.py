"""The PostgreSQL receiver's commits in a child process (`receiver.inbox_writer`, issue 14 item 7).

Each envelope goes to the child the moment it is checked; the child stores what has
arrived as one batch and answers each envelope in order. These tests hold it to the
inbox's guarantees: each request its own answer (landed, or duplicate naming the stored
row), a 2xx only for a committed row, and when the child dies or stops answering, a 503
for exactly the envelopes waiting on it and a new child for the next one. The child never
outlives the receiver.
"""

import asyncio
import os
import signal
import time
from collections import Counter

import psycopg2
import pytest

from clarus_pipelines.receiver.inbox import Inbox, InboxError
from clarus_pipelines.receiver.inbox_writer import InboxWriter
from clarus_pipelines.receiver.landing import Envelope
from pgstate import fresh_database
from processes import exited

pytestmark = pytest.mark.postgres


@pytest.fixture
def pg_url():
    with fresh_database("recv_writer") as url:
        Inbox(url).ensure_schema()
        yield url


def envelope(webhook_id: str, body: bytes = b'{"id": 1}') -> Envelope:
    return Envelope(source="shopify", topic="orders/create", body=body, dedupe_key=f"shopify:webhook:{webhook_id}",
                    webhook_id=webhook_id)


def stored_rows(url: str) -> dict[str, str]:
    """webhook id -> landing id of every inbox row."""
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT webhook_id, landing_id FROM webhook_inbox")
        return dict(cur.fetchall())


def test_each_envelope_is_answered_with_its_own_committed_result(pg_url):
    first = Inbox(pg_url)
    stored_before = first.land(envelope("stored-before"))
    first.close()
    ids = [f"w-{i}" for i in range(150)] + ["w-3", "w-3", "w-77", "stored-before"]

    async def burst():
        writer = InboxWriter(pg_url)
        await writer.start()
        try:
            results = await asyncio.gather(*(writer.land(envelope(w, b'{"n": %d}' % n)) for n, w in enumerate(ids)))
            return writer, results, writer.pid
        finally:
            await writer.close()

    writer, results, pid = asyncio.run(burst())
    assert Counter(r.status for r in results) == {"landed": 150, "duplicate": 4}
    assert results[-1].landing_id == stored_before.landing_id, "a duplicate names the row stored before"
    rows = stored_rows(pg_url)
    assert len(rows) == 151
    for webhook_id, result in zip(ids, results):
        assert result.landing_id == rows[webhook_id], "every answer names the row that holds its event"
        assert result.relpath.startswith("inbox:")
    seqs = [int(r.relpath.removeprefix("inbox:")) for r in results if r.status == "landed"]
    assert seqs == sorted(seqs), "rows draw their seq in the order their envelopes reached the child"
    assert 1 <= writer.commits < len(ids), "envelopes that reach the child together share a commit"
    assert writer.started == 1
    assert exited(pid), "the child exits when the receiver closes it"


def test_a_killed_child_answers_503_for_what_it_held_and_the_next_envelope_starts_a_new_one(pg_url):
    async def scenario():
        writer = InboxWriter(pg_url)
        await writer.start()
        try:
            landed = await writer.land(envelope("before"))
            pid = writer.pid
            os.kill(pid, signal.SIGSTOP)  # holds whatever it is sent from now on
            waiting = [asyncio.ensure_future(writer.land(envelope(f"held-{i}"))) for i in range(5)]
            await asyncio.sleep(0.3)
            assert not any(w.done() for w in waiting), "nothing is answered before the child answers"
            os.kill(pid, signal.SIGKILL)
            held = await asyncio.gather(*waiting, return_exceptions=True)
            await asyncio.sleep(1.1)  # a child that died is restarted at most once a second
            after = await writer.land(envelope("after"))
            return landed, held, after, pid, writer.pid, writer.started
        finally:
            await writer.close()

    landed, held, after, old_pid, new_pid, started = asyncio.run(scenario())
    assert landed.status == "landed" and after.status == "landed"
    assert all(isinstance(h, InboxError) for h in held), "each held envelope is answered 503, none is lost silently"
    assert started == 2 and new_pid != old_pid
    rows = stored_rows(pg_url)
    assert {"before", "after"} <= set(rows) and not any(w.startswith("held-") for w in rows)


def test_a_child_that_stops_answering_is_replaced_after_the_answer_timeout(pg_url):
    async def scenario():
        writer = InboxWriter(pg_url, answer_timeout_s=1.0)
        await writer.start()
        try:
            pid = writer.pid
            os.kill(pid, signal.SIGSTOP)  # alive, but answers nothing
            started = time.monotonic()
            with pytest.raises(InboxError, match="stopped answering"):
                await writer.land(envelope("stuck"))
            waited = time.monotonic() - started
            assert exited(pid), "the stuck child is killed"
            assert await writer.ready() is None, "readiness starts a new child"
            return waited, await writer.land(envelope("later")), writer.started
        finally:
            await writer.close()

    waited, later, started = asyncio.run(scenario())
    assert 1.0 <= waited < 5.0
    assert later.status == "landed" and started == 2
    assert set(stored_rows(pg_url)) == {"later"}


def test_a_row_postgresql_refuses_is_refused_alone_and_its_batch_lands(pg_url):
    async def burst():
        writer = InboxWriter(pg_url)
        try:
            return await asyncio.gather(*(writer.land(envelope(w)) for w in ["a", "nul\x00id", "b"]),
                                        return_exceptions=True)
        finally:
            await writer.close()

    a, bad, b = asyncio.run(burst())
    assert (a.status, b.status) == ("landed", "landed")
    assert isinstance(bad, InboxError) and getattr(bad, "row_refused", False) and "NUL" in bad.strerror
    assert set(stored_rows(pg_url)) == {"a", "b"}


def test_postgresql_down_answers_503_and_the_child_stays(pg_url):
    async def scenario():
        writer = InboxWriter("postgresql://postgres@127.0.0.1:1/nowhere?connect_timeout=1")
        try:
            with pytest.raises(InboxError, match="unreachable"):
                await writer.land(envelope("x"))
            return writer.pid is not None, writer.started
        finally:
            await writer.close()

    alive, started = asyncio.run(scenario())
    assert alive and started == 1, "a database that does not answer is not the child's fault"
