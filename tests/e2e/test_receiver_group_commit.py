"""Group commit in the PostgreSQL receiver (issue 14 item 7): many requests, one transaction.

Requests that arrive while a commit is in flight share the next one (`Inbox.land_many`, run by
`GroupCommit` here and by the receiver's inbox writer process over HTTP).
Each request is still answered with its own result: `landed`, or `duplicate` naming the
first delivery's landing id for exactly the rows whose key was already stored (by an
earlier batch, by the same batch, or by another receiver). A batch that fails as a whole
is stored row by row, so one row PostgreSQL refuses is quarantined alone and the others
land. Every acknowledged webhook is a committed row when its answer goes out.
"""

import asyncio
import json
from collections import Counter

import psycopg2
import pytest

from clarus_pipelines.receiver import auth
from clarus_pipelines.receiver.app import WebhookSecrets, create_app
from clarus_pipelines.receiver.groupcommit import GroupCommit
from clarus_pipelines.receiver.inbox import Inbox, InboxRowRefused
from clarus_pipelines.receiver.landing import Envelope
from clarus_pipelines.sandbox.serving import serve_in_thread
from clarus_pipelines.settings import SANDBOX_POLICIES, load_policies
from bursts import post_burst
from payloads import OURS
from pgstate import fresh_database

pytestmark = pytest.mark.postgres

SECRET = "group-commit-shopify-secret"
SECRETS = WebhookSecrets(shopify=SECRET, clarus_token="clarus-url-token", netsuite="shh-netsuite")
TENANT = load_policies(SANDBOX_POLICIES).tenant


@pytest.fixture
def pg_url():
    with fresh_database("recv_group_commit") as url:
        yield url


def stored_rows(url: str) -> dict[str, tuple[str, bool]]:
    """webhook id -> (landing id, quarantined) of every inbox row."""
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT webhook_id, landing_id, quarantined FROM webhook_inbox")
        return {webhook_id: (landing_id, quarantined) for webhook_id, landing_id, quarantined in cur.fetchall()}


def order_post(n: int, webhook_id: str) -> tuple[bytes, dict]:
    body = json.dumps({**OURS.order("order_python_api"), "id": 7_000_000_000 + n, "name": f"#G{n}"}).encode()
    return body, auth.shopify_headers(body, SECRET, topic="orders/create", webhook_id=webhook_id)


def envelope(webhook_id: str, body: bytes = b'{"id": 1}') -> Envelope:
    return Envelope(source="shopify", topic="orders/create", body=body, dedupe_key=f"shopify:webhook:{webhook_id}",
                    webhook_id=webhook_id)


def test_one_commit_answers_each_request_with_its_own_result(pg_url):
    inbox = Inbox(pg_url)
    first = inbox.land(envelope("stored-before"))

    async def burst():
        group = GroupCommit(inbox)
        ids = [f"gc-{i}" for i in range(20)] + ["gc-3", "gc-3", "gc-7", "stored-before"]
        results = await asyncio.gather(*(group.land(envelope(w)) for w in ids))
        return group, ids, results

    group, ids, results = asyncio.run(burst())
    assert group.commits == 1, "every request queued before the commit started shares it"
    by_status = Counter(r.status for r in results)
    assert by_status == {"landed": 20, "duplicate": 4}
    landed = {w: r.landing_id for w, r in zip(ids, results) if r.status == "landed"}
    assert sorted(landed) == sorted(f"gc-{i}" for i in range(20))
    for webhook_id, result in zip(ids, results):
        if result.status == "duplicate":  # names the delivery that was stored, in this batch or before it
            assert result.landing_id == landed.get(webhook_id, first.landing_id)
    rows = stored_rows(pg_url)
    assert len(rows) == 21 and all(rows[w][0] == landing_id for w, landing_id in landed.items())
    inbox.close()


def test_a_row_postgresql_refuses_is_quarantined_alone_and_the_rest_of_its_batch_lands(pg_url):
    app = create_app("/nonexistent-landing", secrets=SECRETS, tenant=TENANT, state_url=pg_url)
    intake = app.state.intake
    posts = [order_post(n, f"ok-{n}") for n in range(12)]
    bad_body, bad_headers = order_post(99, "nul\x00id")  # HTTP cannot carry a NUL; a direct caller can

    async def burst():
        await asyncio.to_thread(intake.zone.ensure_schema)
        return await asyncio.gather(*(intake.accept_async("shopify", body, headers) for body, headers in posts[:6]),
                                    intake.accept_async("shopify", bad_body, bad_headers),
                                    *(intake.accept_async("shopify", body, headers) for body, headers in posts[6:]))

    outcomes = asyncio.run(burst())
    bad = outcomes[6]
    assert (bad.status_code, bad.result) == (400, "malformed") and "NUL" in bad.reason
    good = outcomes[:6] + outcomes[7:]
    assert [(o.status_code, o.result) for o in good] == [(200, "landed")] * 12
    rows = stored_rows(pg_url)
    assert all(rows[f"ok-{n}"][0] == o.landing_id and not rows[f"ok-{n}"][1] for n, o in enumerate(good))
    assert [q for q in rows.values() if q[1]] == [(bad.landing_id, True)], "the bad row alone, kept aside"
    intake.zone.close()


def test_a_batch_that_fails_whole_is_stored_row_by_row(pg_url, monkeypatch):
    inbox = Inbox(pg_url)

    def clash(envelopes):  # e.g. another receiver drew the same landing id
        raise InboxRowRefused("PostgreSQL inbox: UniqueViolation: landing_id")

    monkeypatch.setattr(inbox, "_insert_batch", clash)
    results = inbox.land_many([envelope("a"), envelope("b"), envelope("a")])
    assert [r.status for r in results] == ["landed", "landed", "duplicate"]
    assert results[2].landing_id == results[0].landing_id
    assert set(stored_rows(pg_url)) == {"a", "b"}
    inbox.close()


def test_two_receivers_posting_the_same_events_at_once_store_each_once(pg_url):
    """Two receivers (two pools) group-commit overlapping keys at the same moment: PostgreSQL's
    unique key decides, and each request learns which landing holds its event."""
    inboxes = [Inbox(pg_url), Inbox(pg_url)]
    inboxes[0].ensure_schema()

    async def burst():
        groups = [GroupCommit(i) for i in inboxes]
        ids = [f"both-{i}" for i in range(30)]
        return ids, await asyncio.gather(*(g.land(envelope(w)) for w in ids for g in groups))

    ids, results = asyncio.run(burst())
    rows = stored_rows(pg_url)
    assert set(rows) == set(ids)
    for k, webhook_id in enumerate(ids):
        pair = results[2 * k: 2 * k + 2]
        assert sorted(r.status for r in pair) == ["duplicate", "landed"]
        assert {r.landing_id for r in pair} == {rows[webhook_id][0]}
    for inbox in inboxes:
        inbox.close()


def test_concurrent_http_posts_every_acknowledged_webhook_is_a_committed_row(tmp_path, pg_url):
    """Many connections at once, each event posted three times: one `landed` per event, the
    re-posts `duplicate` of it, and every 2xx's row is in the inbox when the burst is answered."""
    app = create_app(tmp_path / "unused", secrets=SECRETS, tenant=TENANT, state_url=pg_url)
    served = serve_in_thread(app)

    def post(n: int) -> tuple[str, bytes, dict]:
        webhook_id = f"http-{n % 40}"
        return (webhook_id, *order_post(n % 40, webhook_id))

    try:
        answers = post_burst(served.url, senders=24, posts=120, make_post=post)
    finally:
        served.stop()
    assert len(answers) == 120 and {status for _, status, _ in answers} == {200}
    rows = stored_rows(pg_url)
    assert len(rows) == 40
    landed = Counter(w for w, _, doc in answers if doc["status"] == "landed")
    assert landed == Counter({f"http-{n}": 1 for n in range(40)}), "each event landed exactly once"
    assert all(doc["landing_id"] == rows[w][0] for w, _, doc in answers), "every answer names the stored row"
    app.state.zone.close()
