"""SIGKILL the receiver in the middle of a burst: every acknowledged webhook must be on disk.

The receiver runs as a real process (`python -m clarus_pipelines.cli receiver`). Threads
post signed Shopify orders as fast as it answers; once enough have been acknowledged the
process is killed without warning. Then every webhook that got a 2xx must be a readable,
correctly signed landing, no half-written file may look like a landing, and a restarted
receiver must take the senders' retries without storing anything twice.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from clarus_pipelines.receiver import auth
from clarus_pipelines.receiver.landing import Envelope, LandingZone
from payloads import OURS

SECRET = "crash-test-shopify-secret"
THREADS = 8
ACKS_BEFORE_KILL = 150


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_receiver(landing_dir: Path, log_path: Path, env: dict) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "clarus_pipelines.cli", "receiver", "--host", "127.0.0.1", "--port", str(port),
         "--landing-dir", str(landing_dir), "--log-level", "warning"],
        env=env, stdout=log_path.open("ab"), stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"receiver exited with {proc.returncode}: {log_path.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    proc.kill()
    pytest.fail("receiver did not become healthy within 30s")


@pytest.fixture
def order_template() -> dict:
    return OURS.order("order_python_api")


def signed(order_template: dict, n: int) -> tuple[str, bytes, dict]:
    webhook_id = f"crash-{n:05d}"
    body = json.dumps({**order_template, "id": 5_000_000_000 + n, "name": f"#{10000 + n}"}).encode()
    return webhook_id, body, auth.shopify_headers(body, SECRET, topic="orders/create", webhook_id=webhook_id)


def test_every_acknowledged_webhook_survives_sigkill(tmp_path, order_template):
    landing_dir = tmp_path / "landing"
    env = {**os.environ, "SHOPIFY_WEBHOOK_SECRET": SECRET, "CLARUS_PIPELINES_HOME": str(tmp_path / "home"),
           "PYTHONUNBUFFERED": "1"}
    proc, url = start_receiver(landing_dir, tmp_path / "receiver.log", env)

    acked: set[str] = set()
    sent: set[str] = set()
    lock = threading.Lock()
    enough = threading.Event()
    counter = iter(range(1_000_000))

    def sender() -> None:
        with httpx.Client(base_url=url, timeout=5) as client:
            while True:
                with lock:
                    n = next(counter)
                webhook_id, body, headers = signed(order_template, n)
                with lock:
                    sent.add(webhook_id)
                try:
                    response = client.post("/webhooks/shopify", content=body, headers=headers)
                except httpx.HTTPError:
                    return  # the server is gone
                if 200 <= response.status_code < 300:
                    with lock:
                        acked.add(webhook_id)
                        if len(acked) >= ACKS_BEFORE_KILL:
                            enough.set()

    threads = [threading.Thread(target=sender, daemon=True) for _ in range(THREADS)]
    for t in threads:
        t.start()
    assert enough.wait(60), "the receiver did not acknowledge enough webhooks"
    os.kill(proc.pid, signal.SIGKILL)  # mid-burst: other posts are in flight right now
    proc.wait(10)
    for t in threads:
        t.join(10)
    assert len(sent) > len(acked) or len(sent) >= ACKS_BEFORE_KILL

    # 1. every acknowledged webhook is a readable landing with its exact, correctly signed body
    zone = LandingZone(landing_dir)
    landed: Counter[str] = Counter()
    for ref in zone.list_landings("shopify"):
        envelope = zone.read(ref)
        assert auth.verify_shopify(envelope.body, envelope.headers, SECRET)
        assert json.loads(envelope.body)["id"] >= 5_000_000_000
        landed[envelope.webhook_id] += 1
    missing = acked - set(landed)
    assert not missing, f"{len(missing)} acknowledged webhooks are not in the landing zone: {sorted(missing)[:5]}"
    assert all(n == 1 for n in landed.values()), "a webhook landed twice"

    # 2. nothing half-written is visible as a landing: every *.json outside _tmp parses as an envelope
    for path in landing_dir.rglob("*.json"):
        if "_tmp" not in path.parts and "_dedupe" not in path.parts:
            Envelope.from_json(path.read_bytes())
    assert not list(landing_dir.rglob("*.json.new"))

    # 3. after a restart, the senders' retries of everything land exactly once
    proc2, url2 = start_receiver(landing_dir, tmp_path / "receiver.log", env)
    try:
        with httpx.Client(base_url=url2, timeout=10) as client:
            for webhook_id in sorted(sent):
                n = int(webhook_id.split("-")[1])
                _, body, headers = signed(order_template, n)
                response = client.post("/webhooks/shopify", content=body, headers=headers)
                assert response.status_code == 200, response.text
                expected = "duplicate" if webhook_id in acked else response.json()["status"]
                assert response.json()["status"] == expected
    finally:
        proc2.send_signal(signal.SIGTERM)
        proc2.wait(15)
    final = Counter(zone.read(ref).webhook_id for ref in zone.list_landings("shopify"))
    assert set(final) == sent
    assert all(n == 1 for n in final.values())
