"""Running the receiver in production (issue 14, item 6): Prometheus metrics on their own
loopback port, liveness apart from readiness, JSON logs with personal data masked, and a
graceful stop that finishes the requests in flight."""

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from clarus_pipelines.logs import configure_logging
from clarus_pipelines.receiver import auth
from clarus_pipelines.receiver.app import WebhookSecrets, create_app
from clarus_pipelines.receiver.landing import LandingZone
from clarus_pipelines.sandbox.serving import serve_in_thread
from clarus_pipelines.settings import SANDBOX_POLICIES, load_policies
from payloads import OURS

SECRET = "k3J9x-Qw7Lp2Zr5Tb8Nm-shopify"
CLI = [sys.executable, "-m", "clarus_pipelines.cli"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def order_body() -> bytes:
    doc = OURS.json("order_python_api")
    return json.dumps(doc["order"]).encode()


def start_receiver(tmp_path: Path, *extra: str, env: dict[str, str] | None = None):
    """`clarus-pipelines receiver` as a real process; returns (process, url, landing dir, log path)."""
    port = free_port()
    landing = tmp_path / "landing"
    log_path = tmp_path / "receiver.log"
    proc = subprocess.Popen(
        CLI + ["receiver", "--host", "127.0.0.1", "--port", str(port), "--landing-dir", str(landing), *extra],
        env={**os.environ, "SHOPIFY_WEBHOOK_SECRET": SECRET, "CLARUS_PIPELINES_HOME": str(tmp_path / "home"),
             "PYTHONUNBUFFERED": "1", **(env or {})},
        stdout=subprocess.DEVNULL, stderr=log_path.open("ab"),
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, log_path.read_text()[-3000:]
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return proc, url, landing, log_path
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError("receiver did not become ready: " + log_path.read_text()[-3000:])


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(30)


def post_order(url: str, body: bytes, webhook_id: str, secret: str = SECRET) -> httpx.Response:
    headers = auth.shopify_headers(body, secret, topic="orders/create", webhook_id=webhook_id)
    return httpx.post(f"{url}/webhooks/shopify", content=body, headers=headers, timeout=10)


def scrape(metrics_url: str) -> dict[tuple[str, tuple], float]:
    """Every sample of the metrics page, by (name, sorted labels)."""
    text = httpx.get(metrics_url, timeout=10).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def listening_addresses(port: int) -> set[str]:
    """Local addresses (hex, as /proc/net/tcp shows them) listening on `port`."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        address, hex_port = fields[1].split(":")
        if int(hex_port, 16) == port and fields[3] == "0A":  # 0A = LISTEN
            found.add(address)
    return found


@pytest.mark.parametrize("workers", [1, 2])
def test_metrics_count_accepted_duplicates_and_refusals_on_a_loopback_port_only(tmp_path, order_body, workers):
    metrics_port = free_port()
    proc, url, _landing, log_path = start_receiver(
        tmp_path, "--metrics-port", str(metrics_port), "--workers", str(workers),
        env={"CLARUS_PIPELINES_LOG_FORMAT": "json"})
    try:
        assert post_order(url, order_body, "wh-1").json()["status"] == "landed"
        assert post_order(url, order_body, "wh-1").json()["status"] == "duplicate"
        assert post_order(url, order_body, "wh-2", secret="not-the-secret").status_code == 401
        assert post_order(url, b'{"id": "not an order"', "wh-3").status_code == 400
        assert httpx.get(f"{url}/metrics", timeout=10).status_code == 404  # never on the webhook port

        samples = scrape(f"http://127.0.0.1:{metrics_port}/metrics")
        shopify = (("source", "shopify"),)
        assert samples[("clarus_receiver_webhooks_accepted_total", shopify)] == 1
        assert samples[("clarus_receiver_webhooks_duplicate_total", shopify)] == 1
        assert samples[("clarus_receiver_webhooks_refused_total", (("reason", "rejected"), ("source", "shopify")))] == 1
        assert samples[("clarus_receiver_webhooks_refused_total", (("reason", "malformed"), ("source", "shopify")))] == 1
        assert samples[("clarus_receiver_request_duration_seconds_count", shopify)] == 4
        assert listening_addresses(metrics_port) == {"0100007F"}  # 127.0.0.1 only
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    lines = [line for line in log_path.read_text().splitlines() if line.strip()]
    assert lines, "the receiver logged nothing"
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert any(r["level"] == "WARNING" and "rejected" in r["message"] for r in records)
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)


def test_liveness_stays_up_while_readiness_follows_the_landing_zone(tmp_path):
    tenant = load_policies(SANDBOX_POLICIES).tenant
    app = create_app(tmp_path / "landing", secrets=WebhookSecrets(shopify=SECRET), tenant=tenant)
    zone: LandingZone = app.state.zone
    with serve_in_thread(app) as served, httpx.Client(base_url=served.url, timeout=10) as client:
        assert client.get("/healthz").status_code == 200
        ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["status"] == "ready"

        # the landing zone stops taking writes (a file where its _tmp/ folder was: root cannot write either)
        zone.tmp_dir.rename(tmp_path / "tmp_aside")
        zone.tmp_dir.write_text("not a folder")
        broken = client.get("/readyz")
        assert broken.status_code == 503 and broken.json()["status"].startswith("landing zone not writable")
        alive = client.get("/healthz")
        assert alive.status_code == 200 and alive.json()["status"] == "ok"  # alive: do not restart, just no traffic

        zone.tmp_dir.unlink()
        (tmp_path / "tmp_aside").rename(zone.tmp_dir)
        assert client.get("/readyz").status_code == 200
    assert not list(zone.tmp_dir.iterdir())  # the probe leaves nothing behind


def test_json_logs_mask_personal_data_in_messages_extras_and_tracebacks(capsys):
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging(log_format="json")
        log = logging.getLogger("clarus_pipelines.test")
        log.warning("order for %s held", "jane.doe@example.com", extra={"email": "jane.doe@example.com", "sku": "ABC-1"})
        try:
            raise ValueError("customer rang from +44 20 7946 0958")
        except ValueError:
            log.exception("lookup failed")
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    first, second = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert first["logger"] == "clarus_pipelines.test" and first["level"] == "WARNING"
    assert first["message"] == "order for <email> held" and first["sku"] == "ABC-1"
    assert "jane" not in json.dumps(first)
    assert second["message"] == "lookup failed" and "ValueError" in second["exc_info"]
    assert "7946" not in second["exc_info"]


def test_a_bad_log_format_is_refused(tmp_path):
    result = subprocess.run(CLI + ["check-config", "--config", str(SANDBOX_POLICIES)], capture_output=True, text=True,
                            env={**os.environ, "CLARUS_PIPELINES_LOG_FORMAT": "xml"}, timeout=60)
    assert result.returncode == 2 and "CLARUS_PIPELINES_LOG_FORMAT='xml'" in result.stderr


def server_has_read(port: int, client_port: int) -> bool:
    """True when the server's end of our connection has nothing left unread in its socket."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port = int(fields[1].split(":")[1], 16)
        remote_port = int(fields[2].split(":")[1], 16)
        if local_port == port and remote_port == client_port:
            rx_queue = int(fields[4].split(":")[1], 16)
            return rx_queue == 0
    return False


def test_sigterm_finishes_the_request_in_flight_and_refuses_new_connections(tmp_path, order_body):
    proc, url, landing, log_path = start_receiver(tmp_path)
    port = int(url.rsplit(":", 1)[1])
    try:
        headers = auth.shopify_headers(order_body, SECRET, topic="orders/create", webhook_id="wh-slow")
        head = (f"POST /webhooks/shopify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(order_body)}\r\n"
                + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n").encode()
        half = len(order_body) // 2
        slow = socket.create_connection(("127.0.0.1", port), timeout=30)
        slow.sendall(head + order_body[:half])  # a slow sender: half the body, then a pause
        client_port = slow.getsockname()[1]
        deadline = time.monotonic() + 30
        while not server_has_read(port, client_port):  # the request is in the server's hands
            assert time.monotonic() < deadline, "the receiver never read the request"
            time.sleep(0.02)

        proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        while True:  # the listening socket closes: new connections are refused
            try:
                socket.create_connection(("127.0.0.1", port), timeout=5).close()
            except ConnectionRefusedError:
                break
            assert time.monotonic() < deadline, "still accepting connections after SIGTERM"
            time.sleep(0.05)
        assert proc.poll() is None  # ... while the request in flight keeps it running

        slow.sendall(order_body[half:])
        answer = b""
        while chunk := slow.recv(65536):
            answer += chunk
        slow.close()
        status_line, _, rest = answer.partition(b"\r\n")
        assert status_line.startswith(b"HTTP/1.1 200"), answer
        doc = json.loads(rest.split(b"\r\n\r\n", 1)[1])
        assert doc["status"] == "landed"
        # uvicorn re-raises the SIGTERM once it has stopped gracefully; the log shows the clean stop
        assert proc.wait(60) in (0, -signal.SIGTERM)
        assert "receiver stopped" in log_path.read_text()
    finally:
        stop(proc)
    zone = LandingZone(landing)
    [ref] = zone.list_landings("shopify")
    assert ref.landing_id == doc["landing_id"] and zone.read(ref).body == order_body
