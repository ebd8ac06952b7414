"""Stateless receivers on PostgreSQL (issue 14 item 2): the webhook inbox.

Each test gets a fresh database on the local PostgreSQL server, dropped afterwards. A
receiver with a postgresql:// state URL stores each accepted webhook as one committed row
before its 2xx, answers `duplicate` for a re-post, quarantines bodies outside the contract
(never a 5xx), and two receiver processes on one database, one of them SIGKILLed in the
middle of a burst, store every acknowledged webhook exactly once; ingest takes each once.
"""

import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import psycopg2
import pytest

from clarus_pipelines.receiver import auth
from clarus_pipelines.receiver.app import WebhookSecrets, create_app
from clarus_pipelines.receiver.events import ingest_landings, intake_status
from clarus_pipelines.receiver.inbox import INBOX_LOCK, Inbox
from clarus_pipelines.sandbox.serving import serve_in_thread
from clarus_pipelines.settings import SANDBOX_POLICIES, load_policies
from clarus_pipelines.state import StateStore
from payloads import OURS
from pgstate import fresh_database
from processes import child_pids, exited

pytestmark = pytest.mark.postgres

PG = dict(host="127.0.0.1", port=5432, user="postgres")
SECRET = "pg-inbox-shopify-secret"
SECRETS = WebhookSecrets(shopify=SECRET, clarus_token="clarus-url-token", netsuite="shh-netsuite")
TENANT = load_policies(SANDBOX_POLICIES).tenant


@pytest.fixture
def pg_url():
    """A fresh PostgreSQL database's URL, dropped after the test (tests/pgstate.py)."""
    with fresh_database("clarus_pgintake") as url:
        yield url


def inbox_rows(url: str, where: str = "TRUE") -> list[tuple]:
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute(f"SELECT seq, landing_id, source, topic, dedupe_key, webhook_id, body, headers, quarantined,"
                    f" quarantine_reason FROM webhook_inbox WHERE {where} ORDER BY seq")
        return cur.fetchall()


@pytest.fixture
def order_template() -> dict:
    return OURS.order("order_python_api")


def signed(order_template: dict, n: int, prefix: str = "pg") -> tuple[str, bytes, dict]:
    webhook_id = f"{prefix}-{n:05d}"
    body = json.dumps({**order_template, "id": 6_000_000_000 + n, "name": f"#{20000 + n}"}).encode()
    return webhook_id, body, auth.shopify_headers(body, SECRET, topic="orders/create", webhook_id=webhook_id)


@pytest.fixture
def pg_receiver(tmp_path, pg_url):
    landing_dir = tmp_path / "landing-never-used"
    app = create_app(landing_dir, secrets=SECRETS, tenant=TENANT, state_url=pg_url)
    served = serve_in_thread(app)
    with httpx.Client(base_url=served.url, timeout=10) as client:
        client.inbox = app.state.zone
        client.intake = app.state.intake
        yield client
    served.stop()
    assert not landing_dir.exists(), "PostgreSQL mode must not write to local disk"


def test_signed_webhook_is_committed_before_the_2xx_and_a_repost_is_a_duplicate(pg_receiver, pg_url, order_template):
    webhook_id, body, headers = signed(order_template, 1)
    first = pg_receiver.post("/webhooks/shopify", content=body, headers=headers)
    assert first.status_code == 200, first.text
    assert first.json()["status"] == "landed"
    # committed: another connection sees the row as soon as the answer is in
    rows = inbox_rows(pg_url)
    assert len(rows) == 1
    seq, landing_id, source, topic, dedupe_key, stored_webhook_id, stored_body, headers_json, quarantined, _ = rows[0]
    assert (source, topic, stored_webhook_id, quarantined) == ("shopify", "orders/create", webhook_id, False)
    assert landing_id == first.json()["landing_id"]
    assert bytes(stored_body) == body
    assert auth.verify_shopify(bytes(stored_body), json.loads(headers_json), SECRET)  # the exact bytes and signature

    again = pg_receiver.post("/webhooks/shopify", content=body, headers=headers)
    assert again.status_code == 200
    assert again.json()["status"] == "duplicate"
    assert again.json()["landing_id"] == landing_id
    assert len(inbox_rows(pg_url)) == 1

    ready = pg_receiver.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"


def test_bad_signature_is_refused_and_counted_in_the_inbox(pg_receiver, pg_url, order_template):
    _, body, headers = signed(order_template, 2)
    headers["X-Shopify-Hmac-Sha256"] = "bm90IHRoZSBzaWduYXR1cmU="
    response = pg_receiver.post("/webhooks/shopify", content=body, headers=headers)
    assert response.status_code == 401
    assert inbox_rows(pg_url) == []
    rejections, offsets = pg_receiver.inbox.read_rejections({})
    assert [(r.source, r.reason) for r in rejections] == [("shopify", "bad_signature")]
    assert pg_receiver.inbox.read_rejections(offsets)[0] == []


BAD_BODIES = [
    b"", b"not json", b"{", b"[1, 2, 3]", b'"a string"', b"null", b"\xff\xfe\x00garbage", b'{"a": "\\ud800"}',
    b'{"id": 1, "id": 2}', b"{" * 5000, b'{"a": NaN}', b"\x00" * 64, "{\"name\": \"caf\u00e9\"".encode(),
]


def test_fuzz_of_bad_bodies_quarantines_and_never_answers_5xx(pg_receiver, pg_url):
    rng = random.Random(14)
    bodies = list(BAD_BODIES) + [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300))) for _ in range(40)]
    statuses = Counter()
    for i, body in enumerate(bodies):
        headers = auth.shopify_headers(body, SECRET, topic="orders/create", webhook_id=f"fuzz-{i}")
        response = pg_receiver.post("/webhooks/shopify", content=body, headers=headers)
        assert response.status_code < 500, (body[:40], response.status_code, response.text)
        statuses[response.status_code] += 1
        if response.status_code == 400:
            assert response.json()["status"] == "malformed" and response.json()["reason"]
    quarantined = inbox_rows(pg_url, "quarantined")
    assert statuses[400] == len(quarantined) > 0
    assert all(row[9] for row in quarantined), "every quarantined body keeps its reason"
    # quarantined rows are never handed to ingest
    handed = {r.relpath for r in pg_receiver.inbox.refs_after_seq(0)}
    assert handed.isdisjoint({f"inbox:{q[0]}" for q in quarantined})
    # a value PostgreSQL cannot hold (NUL in the webhook id; HTTP cannot carry it, a replay or a
    # direct caller can) is quarantined with the reason, not answered 503 for ever
    body = json.dumps(OURS.order("order_python_api")).encode()
    outcome = pg_receiver.intake.accept("shopify", body, auth.shopify_headers(body, SECRET, topic="orders/create",
                                                                              webhook_id="nul\x00id"))
    assert (outcome.status_code, outcome.result) == (400, "malformed") and "NUL" in outcome.reason
    assert len(inbox_rows(pg_url, "quarantined")) == len(quarantined) + 1
    # and a good webhook after the fuzz is still accepted
    _, body, headers = signed(OURS.order("order_python_api"), 99, "after-fuzz")
    assert pg_receiver.post("/webhooks/shopify", content=body, headers=headers).json()["status"] == "landed"


def test_a_row_committed_after_a_later_seq_is_never_skipped(pg_url, order_template):
    """seq 1 drawn first but committed last: a reader never moves its cursor past it unseen."""
    inbox = Inbox(pg_url)
    inbox.ensure_schema()
    slow = psycopg2.connect(pg_url)
    with slow.cursor() as cur:  # a receiver between its INSERT and its COMMIT
        cur.execute("SELECT pg_advisory_xact_lock_shared(%s)", [INBOX_LOCK])
        cur.execute("INSERT INTO webhook_inbox (landing_id, source, topic, known_topic, dedupe_key, received_at, via,"
                    " headers, body) VALUES ('20260101T000000.000001Z', 'shopify', 'orders/create', true, 'slow',"
                    " now(), 'webhook', '{}', %s) RETURNING seq", [psycopg2.Binary(b"{}")])
        slow_seq = cur.fetchone()[0]
    _, body, headers = signed(order_template, 7)
    from clarus_pipelines.receiver.landing import Envelope
    fast = inbox.land(Envelope(source="shopify", topic="orders/create", body=body, dedupe_key="fast", headers=headers))
    assert fast.status == "landed" and int(fast.relpath.split(":")[1]) > slow_seq
    seen: list = []
    reader = threading.Thread(target=lambda: seen.append(inbox.refs_after_seq(0)))
    reader.start()
    time.sleep(0.3)
    slow.commit()  # the reader was waiting for it, not past it
    reader.join(10)
    slow.close()
    assert seen and [r.relpath for r in seen[0]] == [f"inbox:{slow_seq}", fast.relpath]
    inbox.close()


# ---------------------------------------------------------------------------- two receivers, one killed


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_receiver(pg_url: str, home: Path, log_path: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "SHOPIFY_WEBHOOK_SECRET": SECRET, "CLARUS_PIPELINES_HOME": str(home), "PYTHONUNBUFFERED": "1",
           "CLARUS_PIPELINES_CONFIG": str(SANDBOX_POLICIES)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "clarus_pipelines.cli", "receiver", "--host", "127.0.0.1", "--port", str(port),
         "--state-url", pg_url, "--log-level", "warning"],
        env=env, stdout=log_path.open("ab"), stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"receiver exited with {proc.returncode}: {log_path.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    proc.kill()
    pytest.fail("receiver did not become ready within 30s")


def test_two_receivers_one_sigkilled_mid_burst_store_every_acknowledged_webhook_once(tmp_path, pg_url, order_template):
    homes = [tmp_path / "home-a", tmp_path / "home-b"]
    (proc_a, url_a), (proc_b, url_b) = (start_receiver(pg_url, homes[0], tmp_path / "a.log"),
                                        start_receiver(pg_url, homes[1], tmp_path / "b.log"))
    acked: set[str] = set()
    sent: set[str] = set()
    lock = threading.Lock()
    enough = threading.Event()
    stop = threading.Event()
    counter = iter(range(1_000_000))

    def sender(url: str, share_every: int) -> None:
        """Posts new webhooks, and every `share_every`-th one again to the other receiver (the
        same event arriving at two receivers at once must still be stored once)."""
        other = url_b if url == url_a else url_a
        with httpx.Client(base_url=url, timeout=5) as client, httpx.Client(base_url=other, timeout=5) as second:
            while not stop.is_set():
                with lock:
                    n = next(counter)
                webhook_id, body, headers = signed(order_template, n)
                with lock:
                    sent.add(webhook_id)
                targets = [client, second] if n % share_every == 0 else [client]
                for target in targets:
                    try:
                        response = target.post("/webhooks/shopify", content=body, headers=headers)
                    except httpx.HTTPError:
                        continue  # that receiver is gone; the other one goes on
                    if response.status_code == 200:
                        with lock:
                            acked.add(webhook_id)
                            if len(acked) >= 200:
                                enough.set()

    threads = [threading.Thread(target=sender, args=(url, 5), daemon=True) for url in (url_a, url_b) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        assert enough.wait(90), "the receivers did not acknowledge enough webhooks"
        writers = {proc: child_pids(proc.pid) for proc in (proc_a, proc_b)}
        assert all(len(pids) == 1 for pids in writers.values()), "each receiver runs one inbox writer process"
        os.kill(proc_a.pid, signal.SIGKILL)  # mid-burst: posts to A are in flight right now
        proc_a.wait(10)
        time.sleep(0.5)  # B keeps taking posts after A is gone
    finally:
        stop.set()
        for t in threads:
            t.join(20)
        proc_b.send_signal(signal.SIGTERM)
        proc_b.wait(30)
    for pids in writers.values():  # A's writer saw its socket close and finished; B stopped its own
        assert all(exited(pid) for pid in pids), "an inbox writer process outlived its receiver"
    for home in homes:
        assert not (home / "landing").exists(), "no landing files in PostgreSQL mode"

    rows = inbox_rows(pg_url)
    stored = Counter(row[5] for row in rows)
    missing = acked - set(stored)
    assert not missing, f"{len(missing)} acknowledged webhooks are not in the inbox: {sorted(missing)[:5]}"
    assert all(n == 1 for n in stored.values()), "a webhook stored twice"
    assert set(stored) <= sent
    for row in rows[:50]:
        assert auth.verify_shopify(bytes(row[6]), json.loads(row[7]), SECRET)

    # ingest takes each stored webhook exactly once, by sequence cursor, also when run twice
    inbox = Inbox(pg_url)
    store = StateStore(tmp_path / "state" / "state.duckdb")
    cursor, taken = 0, []
    while True:
        refs = inbox.refs_after_seq(cursor, limit=97)
        if not refs:
            break
        report, loaded = ingest_landings(inbox, store, [r.relpath for r in refs], run_id="pg-test")
        assert not loaded.set_aside and not loaded.missing
        taken += [r.relpath for r in refs]
        cursor = int(refs[-1].relpath.split(":")[1])
    assert len(taken) == len(set(taken)) == len(rows)
    again, _ = ingest_landings(inbox, store, taken, run_id="pg-test-again")
    assert again.ingested == 0 and again.already_processed == len(rows)
    with store.read() as con:
        events = Counter(r[0] for r in con.execute("SELECT webhook_id FROM landed_events").fetchall())
    assert events == stored
    status = intake_status(inbox, store)["shopify"]  # what `clarus-pipelines intake-status` prints
    assert (status["acknowledged"], status["ingested"], status["unread"]) == (len(rows), len(rows), 0)
    inbox.close()


# ---------------------------------------------------------------------------- sensor and asset in PostgreSQL mode


def test_sensor_reads_the_inbox_by_seq_cursor_and_ingest_takes_each_once(tmp_path, pg_url, order_template):
    import dagster as dg

    from clarus_pipelines.assets.ingest import landed_events, webhook_rejections
    from clarus_pipelines.receiver.app import Intake
    from clarus_pipelines.resources import LandingZoneResource, PoliciesResource, StateStoreResource
    from clarus_pipelines.sensors.webhooks import build_landing_sensor, webhook_rejections_sensor

    landing_dir = tmp_path / "landing-unused"
    resources = {
        "landing": LandingZoneResource(path=str(landing_dir), state_url=pg_url),
        "state": StateStoreResource(path=str(tmp_path / "state.duckdb")),
        "policies": PoliciesResource(path=str(SANDBOX_POLICIES)),
    }
    intake = Intake(Inbox(pg_url), SECRETS, TENANT)
    accepted = []
    for n in range(5):
        _, body, headers = signed(order_template, 100 + n, "sensor")
        accepted.append(intake.accept("shopify", body, headers))
    bad = b"not json"
    assert intake.accept("shopify", bad, auth.shopify_headers(bad, SECRET, topic="orders/create", webhook_id="bad")).status_code == 400
    assert all(o.result == "landed" for o in accepted)
    instance = dg.DagsterInstance.ephemeral()
    sensor = build_landing_sensor(batch_size=2, wait_for_ingest=False)

    def tick(the_sensor, cursor=None):
        with dg.build_sensor_context(cursor=cursor, instance=instance, resources=resources) as context:
            return the_sensor(context)

    result = tick(sensor)
    batches = [r.run_config["ops"]["landed_events"]["config"]["landings"] for r in result.run_requests]
    assert [len(b) for b in batches] == [2, 2, 1]
    refs = [ref for b in batches for ref in b]
    assert all(ref.startswith("inbox:") for ref in refs)  # the quarantined body is not among them
    cursor = json.loads(result.cursor)
    assert cursor["after_seq"] == int(refs[-1].split(":")[1])
    assert isinstance(tick(sensor, result.cursor), dg.SkipReason)

    for batch in batches + batches[:1]:  # the first batch twice: ingest stays idempotent
        run = dg.materialize([landed_events], resources=resources, instance=instance,
                             run_config={"ops": {"landed_events": {"config": {"landings": batch}}}})
        assert run.success
    with resources["state"].store().read() as con:
        stored = con.execute("SELECT landing_id FROM landed_events ORDER BY seq").fetchall()
    assert [r[0] for r in stored] == [o.landing_id for o in accepted]

    _, body, headers = signed(order_template, 200, "sensor")
    late = intake.accept("shopify", body, headers)
    later = tick(sensor, result.cursor)
    assert [r.run_config["ops"]["landed_events"]["config"]["landings"] for r in later.run_requests] == \
        [[f"inbox:{json.loads(later.cursor)['after_seq']}"]]
    assert late.result == "landed"

    # refusals at the door are counted from the inbox too
    wrong = {**headers, "X-Shopify-Hmac-Sha256": "d3Jvbmc="}
    for _ in range(3):
        assert intake.accept("shopify", body, wrong).status_code == 401
    assert tick(webhook_rejections_sensor).run_requests
    counted = dg.materialize([webhook_rejections], resources=resources, instance=instance)
    meta = counted.asset_materializations_for_node("webhook_rejections")[0].metadata
    assert meta["new_rejections"].value == 3
    assert not landing_dir.exists()


def test_a_pooled_connection_the_server_dropped_costs_no_503(pg_url, order_template):
    """After a PostgreSQL restart the pool's idle connections are dead: the next webhook is
    stored on a new connection rather than refused."""
    from clarus_pipelines.receiver.landing import Envelope

    inbox = Inbox(pg_url, pool_size=1)
    _, body, headers = signed(order_template, 300, "drop")
    assert inbox.land(Envelope(source="shopify", topic="orders/create", body=body, dedupe_key="d1")).status == "landed"
    with psycopg2.connect(dbname="postgres", **PG) as admin, admin.cursor() as cur:
        cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s"
                    " AND application_name = 'clarus-pipelines-inbox'", [pg_url.rsplit("/", 1)[1]])
        assert cur.fetchall()
    again = inbox.land(Envelope(source="shopify", topic="orders/create", body=body, dedupe_key="d2"))
    assert again.status == "landed"
    assert {row[4] for row in inbox_rows(pg_url)} == {"d1", "d2"}
    inbox.close()


def test_replay_command_reads_the_inbox_in_postgresql_mode(pg_receiver, pg_url, order_template, monkeypatch, capsys):
    """`clarus-pipelines replay` with a postgresql:// state URL re-submits inbox rows through the
    receiver path: once per tag, by id or by source; an unknown id is reported, not guessed."""
    from clarus_pipelines.cli import main

    webhook_id, body, headers = signed(order_template, 7)
    landing_id = pg_receiver.post("/webhooks/shopify", content=body, headers=headers).json()["landing_id"]
    monkeypatch.setenv("CLARUS_PIPELINES_STATE_URL", pg_url)
    monkeypatch.setenv("SHOPIFY_WEBHOOK_SECRET", SECRET)

    def replay(*args: str) -> tuple[int, dict]:
        code = main(["replay", *args])
        return code, json.loads(capsys.readouterr().out)

    code, first = replay("--id", landing_id)
    assert code == 0 and first["counts"] == {"landed": 1}, first
    [copy] = inbox_rows(pg_url, "replay_of IS NOT NULL")
    assert bytes(copy[6]) == body and copy[5] == webhook_id  # the exact bytes, the same webhook
    assert replay("--id", landing_id)[1]["counts"] == {"duplicate": 1}  # the same tag replays once
    assert replay("--source", "shopify", "--tag", "2")[1]["counts"] == {"landed": 2}  # the original and the copy
    code, missing = replay("--id", "20000101T000000.000000Z")
    assert code == 1 and missing["not_found"] == ["20000101T000000.000000Z"]
