"""The built wheel works with no source tree (issue 14, item 5).

Builds the wheel from a copy of the working tree, installs it into a fresh virtual
environment outside the repo (uv, from its local cache where it can), and runs what a
deployment runs: `check-config`, `dagster definitions validate` and the receiver.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import httpx
import pytest

from clarus_pipelines.receiver import auth
from clarus_pipelines.receiver.landing import LandingZone
from payloads import OURS

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
UV = Path(sys.executable).parent / "uv"
SECRET = "k3J9x-Qw7Lp2Zr5Tb8Nm-wheel"
GENERIC_NAMES = {"assets", "sensors", "dashboards", "quality", "config", "tests", "docs"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run(argv: list, *, env: dict, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    result = subprocess.run([str(a) for a in argv], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{argv} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(venv, scratch dir): the wheel of the current working tree installed in a fresh venv."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"
    tracked = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                             capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, tracked):
        if (REPO / name).is_file():  # a file deleted in the working tree is not shipped
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    run([UV, "build", "--wheel", "--out-dir", root / "dist", source], env=env, cwd=root)
    [wheel] = (root / "dist").glob("clarus_pipelines-*.whl")
    venv = root / "venv"
    run([UV, "venv", "--quiet", "--python", sys.executable, venv], env=env, cwd=root)
    run([UV, "pip", "install", "--quiet", "--python", venv / "bin" / "python", wheel], env=env, cwd=root, timeout=600)
    shutil.rmtree(source)  # from here on there is no source tree to fall back on
    return venv, root, wheel


def clean_env(root: Path, **extra: str) -> dict[str, str]:
    """The environment of a deployment: secrets and paths, nothing pointing at the repo."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "CLARUS_PIPELINES_CONFIG") and not k.startswith("PYTEST")}
    dagster_home = root / "dagster_home"
    dagster_home.mkdir(exist_ok=True)
    (dagster_home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env.update(CLARUS_PIPELINES_HOME=str(root / "home"), DAGSTER_HOME=str(dagster_home), SHOPIFY_WEBHOOK_SECRET=SECRET)
    env.update(extra)
    return env


def test_the_wheel_puts_nothing_generic_at_the_top_of_site_packages(installed):
    venv, _root, wheel = installed
    tops = {name.split("/", 1)[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert tops == {"clarus_pipelines", wheel.name.split("-")[0] + "-" + wheel.name.split("-")[1] + ".dist-info"}
    [site] = venv.glob("lib/python*/site-packages")
    assert not GENERIC_NAMES & {p.name for p in site.iterdir()}
    names = set(zipfile.ZipFile(wheel).namelist())
    for data in ("clarus_pipelines/config/sandbox.yaml", "clarus_pipelines/quality/suites/orders.json",
                 "clarus_pipelines/sandbox/clarus_openapi_subset.json", "clarus_pipelines/sandbox/shopify_admin_2026-10.json.gz",
                 "clarus_pipelines/state/migrations/001_initial.sql",
                 "clarus_pipelines/dashboards/app.py", "clarus_pipelines/assets/orders.py", "clarus_pipelines/sensors/orders.py"):
        assert data in names


def test_the_installed_wheel_checks_config_validates_definitions_and_serves_webhooks(installed):
    venv, root, _wheel = installed
    work = root / "elsewhere"
    work.mkdir(exist_ok=True)
    bin_dir = venv / "bin"

    # the shipped example, read from inside the installed package
    where = run([bin_dir / "python", "-c", "from clarus_pipelines.settings import SANDBOX_POLICIES as p, package_file as f;"
                 "import clarus_pipelines.assets.orders as o; print(p); print(o.__file__); print(f('clarus_pipelines.quality', 'suites'))"],
                env=clean_env(root), cwd=work).stdout.split()
    assert all(path.startswith(str(venv)) for path in where), where
    policies = work / "policies.yaml"
    shutil.copy(where[0], policies)

    # no policies file is an error, never the sandbox tenant
    refused = subprocess.run([bin_dir / "clarus-pipelines", "check-config"], env=clean_env(root), cwd=work,
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode == 1 and "CLARUS_PIPELINES_CONFIG is not set" in refused.stderr

    # the runbook is a source-tree document: an install must not write it into site-packages
    nowhere = subprocess.run([bin_dir / "clarus-pipelines", "runbook"], env=clean_env(root), cwd=work,
                             capture_output=True, text=True, timeout=120)
    assert nowhere.returncode == 2 and "--output" in nowhere.stderr
    run([bin_dir / "clarus-pipelines", "runbook", "--output", work / "runbook.md"], env=clean_env(root), cwd=work)
    assert "## " in (work / "runbook.md").read_text()

    checked = run([bin_dir / "clarus-pipelines", "check-config", "--config", policies], env=clean_env(root), cwd=work)
    assert json.loads(checked.stdout)["ok"] is True

    # a production install has no sandbox look-alikes (the `sandbox` extra): the command says so
    no_sandbox = subprocess.run([bin_dir / "clarus-pipelines", "sandbox"], env=clean_env(root), cwd=work,
                                capture_output=True, text=True, timeout=120)
    assert no_sandbox.returncode == 2 and "pip install 'clarus-pipelines[sandbox]'" in no_sandbox.stderr

    env = clean_env(root, CLARUS_PIPELINES_CONFIG=str(policies))
    validated = run([bin_dir / "dagster", "definitions", "validate", "-m", "clarus_pipelines.definitions"],
                    env=env, cwd=work, timeout=600)
    assert "Validation successful" in validated.stdout + validated.stderr

    port, metrics_port = free_port(), free_port()
    log_path = work / "receiver.log"
    proc = subprocess.Popen([bin_dir / "clarus-pipelines", "receiver", "--port", str(port), "--metrics-port", str(metrics_port)],
                            env=env, cwd=work, stdout=subprocess.DEVNULL, stderr=log_path.open("ab"))
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, log_path.read_text()[-3000:]
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.1)
        order = OURS.order("order_python_api")
        body = json.dumps(order).encode()
        headers = auth.shopify_headers(body, SECRET, topic="orders/create", webhook_id="wh-wheel")
        answer = httpx.post(f"{url}/webhooks/shopify", content=body, headers=headers, timeout=10)
        assert answer.status_code == 200 and answer.json()["status"] == "landed", answer.text
        metrics = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
        assert 'clarus_receiver_webhooks_accepted_total{source="shopify"} 1.0' in metrics
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    [landed] = LandingZone(root / "home" / "landing").list_landings("shopify")  # under the deployment's home
    assert landed.landing_id == answer.json()["landing_id"]
