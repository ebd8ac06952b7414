"""Limits before authentication: idle, slow and unauthenticated connections cannot hold the receiver.

The receiver runs as a real process (`clarus-pipelines receiver`) with short header and
body deadlines. Raw sockets open idle connections, trickle headers, announce 2 MiB bodies
without a valid token, and send signed bodies too slowly; the process's open sockets and
memory are read from /proc while they hang on, and a real webhook still lands after.
"""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from clarus_pipelines.receiver import auth
from clarus_pipelines.receiver.landing import LandingZone
from payloads import OURS

SECRET = "limits-test-shopify-secret-0123456789"
TOKEN = "limits-test-clarus-token-0123456789ab"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def open_sockets(pid: int) -> int:
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            count += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
        except FileNotFoundError:
            pass
    return count


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.fixture
def receiver(tmp_path):
    port = free_port()
    env = {**os.environ, "SHOPIFY_WEBHOOK_SECRET": SECRET, "CLARUS_WEBHOOK_TOKEN": TOKEN,
           "CLARUS_PIPELINES_HOME": str(tmp_path / "home"), "PYTHONUNBUFFERED": "1"}
    log_path = tmp_path / "receiver.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "clarus_pipelines.cli", "receiver", "--host", "127.0.0.1", "--port", str(port),
         "--landing-dir", str(tmp_path / "landing"), "--log-level", "warning",
         "--header-timeout", "1", "--body-timeout", "1", "--max-connections", "400"],
        env=env, stdout=log_path.open("ab"), stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, log_path.read_text()[-2000:]
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.05)
    yield proc, port, url, tmp_path / "landing"
    proc.kill()
    proc.wait(10)


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    return sock


def answer_of(sock: socket.socket) -> bytes | None:
    """What the server sent before closing (b'' if it closed without a word); None if it
    kept the connection open for 5 s."""
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except ConnectionResetError:
        pass
    except TimeoutError:
        return None
    return b"".join(chunks)


def test_idle_slow_and_unauthenticated_connections_are_bounded(receiver):
    proc, port, url, landing_dir = receiver
    baseline_rss = rss_mb(proc.pid)
    baseline_sockets = open_sockets(proc.pid)

    idle = [connect(port) for _ in range(150)]
    trickling = []
    for _ in range(30):
        sock = connect(port)
        sock.sendall(b"POST /webhooks/shopify HTTP/1.1\r\nHost: x\r\n")  # and never the rest
        trickling.append(sock)
    unauthenticated = []
    for _ in range(30):
        sock = connect(port)
        sock.sendall(b"POST /webhooks/clarus/not-the-token HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 2097152\r\n\r\n{")
        unauthenticated.append(sock)
    slow_bodies = []
    for n in range(20):
        body = b'{"id": %d}' % n + b" " * 1_000_000
        headers = auth.shopify_headers(body, SECRET, topic="orders/create", webhook_id=f"slow-{n}")
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        sock = connect(port)
        sock.sendall(f"POST /webhooks/shopify HTTP/1.1\r\nHost: x\r\n{head}Content-Length: {len(body)}\r\n\r\n".encode()
                     + body[:1000])  # then stalls
        slow_bodies.append(sock)

    # refused before the body is read: 401 at once, without waiting for 2 MiB
    for sock in unauthenticated:
        doc = answer_of(sock)
        assert doc is not None and doc.startswith(b"HTTP/1.1 401") and b'"bad_token"' in doc
    # a signed body that does not arrive in time is refused, and its connection closed
    for sock in slow_bodies:
        assert (answer_of(sock) or b"").startswith(b"HTTP/1.1 408")
    # idle connections and half-sent headers are closed by the server within the deadline
    for sock in idle + trickling:
        assert answer_of(sock) == b""
    time.sleep(0.5)
    assert open_sockets(proc.pid) <= baseline_sockets + 2
    assert rss_mb(proc.pid) - baseline_rss < 60  # 20 x 1 MB bodies announced, never buffered whole

    order = OURS.order("order_python_api")
    body = json.dumps(order).encode()
    response = httpx.post(f"{url}/webhooks/shopify", content=body,
                          headers=auth.shopify_headers(body, SECRET, topic="orders/create", webhook_id="after"))
    assert response.status_code == 200 and response.json()["status"] == "landed"
    assert [r.landing_id for r in LandingZone(landing_dir).list_landings()] == [response.json()["landing_id"]]
    rejections, _ = LandingZone(landing_dir).read_rejections({})
    assert sum(1 for r in rejections if r.reason == "bad_token") == 30
    for sock in idle + trickling + unauthenticated + slow_bodies:
        sock.close()


def test_a_half_committed_landing_is_finished_while_the_receiver_runs(tmp_path, monkeypatch):
    """A complete file a killed worker left in `_tmp/` becomes a landing without a restart."""
    from clarus_pipelines.receiver import app as receiver_app
    from clarus_pipelines.receiver.app import WebhookSecrets, create_app
    from clarus_pipelines.receiver.landing import Envelope
    from clarus_pipelines.sandbox.serving import serve_in_thread
    from clarus_pipelines.settings import SANDBOX_POLICIES, load_policies

    monkeypatch.setattr(receiver_app, "TMP_SWEEP_INTERVAL_S", 0.2)
    app = create_app(tmp_path / "landing", secrets=WebhookSecrets(shopify=SECRET),
                     tenant=load_policies(SANDBOX_POLICIES).tenant)
    zone = app.state.zone
    with serve_in_thread(app):
        left = zone.tmp_dir / "killed-worker.tmp"
        left.write_bytes(Envelope(source="shopify", topic="orders/create", body=b'{"id": 1}',
                                  dedupe_key="shopify:webhook:left").to_json())
        os.utime(left, (time.time() - 120, time.time() - 120))  # older than any write in flight
        deadline = time.monotonic() + 10
        while not zone.list_landings() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert [zone.read(r).dedupe_key for r in zone.list_landings()] == ["shopify:webhook:left"]
        assert not left.exists()
