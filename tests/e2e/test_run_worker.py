"""Runs execute on the worker, not on the daemon's host (issue 14, item 3).

The control plane (Dagster webserver and daemon) and the worker (`dagster code-server`, the
user-code deployment) run as separate processes with their own working directory, HOME and
DAGSTER_HOME; they share only the PostgreSQL database of deploy/dagster.yaml. The control
plane has no policies, no secrets and no clarus-pipelines home: it cannot even load our code.
A webhook lands in the worker's landing zone; the daemon's sensor (evaluated by the code
server) asks for an ingest run, the daemon's run queue launches it through the code server,
and the run's own records in PostgreSQL show it ran in a process the code server started, in
the worker's directory.
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import dagster as dg
import httpx
import pytest

from clarus_pipelines.receiver.landing import Envelope, LandingZone
from clarus_pipelines.settings import SANDBOX_POLICIES
from clarus_pipelines.state import StateStore
from payloads import OURS
from pgstate import fresh_database

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
OURS_PREFIXES = ("CLARUS_", "SHOPIFY_", "NETSUITE_", "DAGSTER_", "PYTEST", "ALERT_")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def pg_database():
    """A fresh PostgreSQL database's URL, dropped after the test (tests/pgstate.py)."""
    with fresh_database("clarus_deploy") as url:
        yield url


def host_env(root: Path, **extra: str) -> dict[str, str]:
    """A host's environment: nothing of ours inherited from the test run, its own HOME and DAGSTER_HOME."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(OURS_PREFIXES) and k not in ("PYTHONPATH", "HOME")}
    dagster_home = root / "dagster_home"
    dagster_home.mkdir(parents=True)
    shutil.copy(REPO / "deploy" / "dagster.yaml", dagster_home / "dagster.yaml")
    env.update(HOME=str(root / "home"), DAGSTER_HOME=str(dagster_home), PYTHONUNBUFFERED="1", **extra)
    (root / "home").mkdir()
    return env


def descendants(root_pid: int) -> dict[int, str]:
    """pid -> cwd of every live process below `root_pid` (read from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int(next(line for line in (entry / "status").read_text().splitlines() if line.startswith("PPid:")).split()[1])
            except (OSError, StopIteration, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found: dict[int, str] = {}
    todo = list(children.get(root_pid, []))
    while todo:
        pid = todo.pop()
        try:
            found[pid] = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            continue
        todo.extend(children.get(pid, []))
    return found


def in_directory(folder: str) -> dict[int, str]:
    """pid -> cwd of every live process whose working directory is `folder`."""
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cwd = os.readlink(entry / "cwd")
            except OSError:
                continue
            if cwd == folder:
                found[int(entry.name)] = cwd
    return found


class Watcher(threading.Thread):
    """Records every process the code server (or the daemon) starts, with its working directory;
    and, for the worker, every process in the worker's directory (a run process whose launching
    parent has already exited is re-parented and no longer below the code server)."""

    def __init__(self, roots: dict[str, int], folders: dict[str, str] | None = None):
        super().__init__(daemon=True)
        self.roots, self.seen = roots, {name: {} for name in roots}
        self.folders = folders or {}
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            for name, pid in list(self.roots.items()):
                self.seen[name].update(descendants(pid))
            for name, folder in self.folders.items():
                self.seen[name].update(in_directory(folder))
            time.sleep(0.05)


def start(argv: list, env: dict, cwd: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen([str(a) for a in argv], env=env, cwd=cwd, stdout=log.open("ab"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def stop(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


@pytest.mark.timeout(600)
def test_a_run_launched_by_the_daemon_executes_in_the_worker(tmp_path, pg_database):
    control, worker = tmp_path / "control", tmp_path / "worker"
    grpc_port, web_port = free_port(), free_port()
    worker_env = host_env(
        worker, DAGSTER_PG_URL=pg_database, CLARUS_PIPELINES_HOME=str(worker / "clarus"),
        CLARUS_PIPELINES_CONFIG=str(SANDBOX_POLICIES), SHOPIFY_WEBHOOK_SECRET="worker-only-secret",
    )
    control_env = host_env(control, DAGSTER_PG_URL=pg_database, DAGSTER_CODE_SERVER_HOST="127.0.0.1",
                           DAGSTER_CODE_SERVER_PORT=str(grpc_port))
    workspace = REPO / "deploy" / "workspace.yaml"

    # a Shopify order webhook, landed in the worker's landing zone only
    order = OURS.order("order_python_api")
    landed = LandingZone(worker / "clarus" / "landing").land(Envelope(
        source="shopify", topic="orders/create", body=json.dumps(order).encode(), dedupe_key="wh-worker-1",
        webhook_id="wh-worker-1"))

    procs: list[subprocess.Popen] = []
    try:
        code_server = start([BIN / "dagster", "code-server", "start", "-h", "127.0.0.1", "-p", grpc_port,
                             "-m", "clarus_pipelines.definitions", "--location-name", "clarus_pipelines"],
                            worker_env, worker, worker / "code-server.log")
        procs.append(code_server)
        deadline = time.monotonic() + 240  # loading our definitions takes a minute on a busy 2-core box
        while subprocess.run([BIN / "dagster", "api", "grpc-health-check", "-p", str(grpc_port)], env=worker_env,
                             cwd=worker, capture_output=True).returncode != 0:
            assert code_server.poll() is None, (worker / "code-server.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "code server not serving"
            time.sleep(1)
        watcher = Watcher({"worker": code_server.pid}, folders={"worker": str(worker)})
        watcher.start()
        webserver = start([BIN / "dagster-webserver", "-h", "127.0.0.1", "-p", web_port, "-w", workspace],
                          control_env, control, control / "webserver.log")
        daemon = start([BIN / "dagster-daemon", "run", "-w", workspace], control_env, control, control / "daemon.log")
        procs += [webserver, daemon]
        watcher.roots.update(daemon=daemon.pid, webserver=webserver.pid)
        watcher.seen.update(daemon={}, webserver={})

        # the sensor sees the landing through the code server; the daemon queues and launches the run
        (tmp_path / "reader").mkdir()
        with dg.instance_for_test(temp_dir=str(tmp_path / "reader"), overrides={
            "storage": {"postgres": {"postgres_url": pg_database}}}) as instance:
            run = None
            while time.monotonic() < deadline + 240:
                assert daemon.poll() is None, (control / "daemon.log").read_text()[-3000:]
                runs = instance.get_runs(filters=dg.RunsFilter(job_name="ingest_landings"))
                if runs and runs[0].is_finished:
                    run = runs[0]
                    break
                time.sleep(1)
            assert run is not None, (control / "daemon.log").read_text()[-3000:]
            assert run.status == dg.DagsterRunStatus.SUCCESS, (worker / "code-server.log").read_text()[-3000:]
            events = instance.all_logs(run.run_id)
        assert httpx.get(f"http://127.0.0.1:{web_port}/server_info", timeout=10).status_code == 200
        watcher.stopping.set()
        watcher.join()
    finally:
        stop(procs)

    # the run's own records: every event was written by a process the code server started, in the worker's cwd
    run_pids = {event.dagster_event.pid for event in events if event.is_dagster_event and event.dagster_event.pid}
    assert run_pids, "the run's events carry no pid"
    started = [int(match.group(1)) for event in events
               if (match := re.match(r"Started process for run \(pid: (\d+)\)", event.message or ""))]
    assert len(started) == 1 and started[0] in run_pids, [event.message for event in events][:10]
    assert run_pids <= set(watcher.seen["worker"]), (run_pids, watcher.seen)
    assert {watcher.seen["worker"][pid] for pid in run_pids} == {str(worker)}
    assert not run_pids & ({daemon.pid, webserver.pid} | set(watcher.seen["daemon"]) | set(watcher.seen["webserver"]))
    assert run.tags.get("dagster/sensor_name") == "webhook_landings"

    # what the run did landed in the worker's state, and the control plane's directories hold no state
    with StateStore(worker / "clarus" / "state.duckdb").read() as con:
        rows = con.execute("SELECT source, topic, entity_id FROM landed_events").fetchall()
    assert rows == [("shopify", "orders/create", str(order["id"]))]
    assert landed.landing_id
    assert not list(control.rglob("*.duckdb")) and not (control / "dagster_home" / "storage").exists()
