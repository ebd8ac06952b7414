"""The main job as a new user runs it: every service up on its port, data moving within a minute."""

import json
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

CLI = str(Path(sys.executable).parent / "clarus-pipelines")


def _free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


@pytest.mark.slow
@pytest.mark.timeout(480)
def test_demo_brings_up_the_stack_and_moves_data(tmp_path):
    receiver, clarus, shopify, netsuite, dagster, dashboard = _free_ports(6)
    argv = [
        CLI, "demo", "--home", str(tmp_path / "demo"), "--receiver-port", str(receiver), "--clarus-port", str(clarus),
        "--shopify-port", str(shopify), "--netsuite-port", str(netsuite), "--dagster-port", str(dagster),
        "--dashboard-port", str(dashboard), "--orders-per-minute", "60", "--duration", "240",
    ]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stdout.readline()
        assert first, f"demo printed nothing; stderr:\n{proc.stderr.read()[-3000:]}"
        running = json.loads(first)
        assert running["status"] == "running"
        # what a new user opens: the Dagster UI and the dashboard answer on their ports
        assert httpx.get(f"{running['dagster']}/server_info", timeout=10).status_code == 200
        page = httpx.get(running["dashboard"], timeout=10)
        assert page.status_code == 200 and "<html" in page.text.lower()
        assert httpx.get(f"{running['receiver']}/healthz", timeout=10).status_code == 200
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=30)
    assert proc.returncode == 0, f"demo failed:\n{out}\n{err[-4000:]}"
    done = json.loads(out.strip().splitlines()[-1])
    assert done["status"] == "done" and done["data_moved"] is True
    assert done["webhooks_landed"] > 0 and done["orders_in_state"] > 0
    # secrets were generated once, private, and reused on a second start
    secrets_file = tmp_path / "demo" / "secrets.env"
    assert secrets_file.stat().st_mode & 0o777 == 0o600
