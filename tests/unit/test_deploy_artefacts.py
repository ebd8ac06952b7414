"""The deployment artefacts agree with each other and with the code (issue 14, item 4).

compose.yaml is the single description of the topology; the Helm values, the Kubernetes
manifests and the Dockerfile must use the same image, commands, environment names and the
health endpoints the services really serve.
"""

import re
import tomllib
from pathlib import Path

import pytest
import yaml

from clarus_pipelines.cli import COMMANDS
from clarus_pipelines.logs import LOG_FORMAT_ENV
from clarus_pipelines.settings import Settings

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
DOT_ENV = {"POSTGRES_PASSWORD": "pw", "CLARUS_POLICIES_FILE": "./policies.yaml", "CLARUS_BASE_URL": "http://c",
           "SHOPIFY_BASE_URL": "http://s", "NETSUITE_BASE_URL": "http://n"}
# names the code reads outside `Settings`; CLARUS_PIPELINES_STATE_URL is the PostgreSQL state store's
EXTRA_NAMES = {LOG_FORMAT_ENV, "CLARUS_PIPELINES_STATE_URL", "DAGSTER_HOME", "DAGSTER_PG_URL",
               "DAGSTER_CODE_SERVER_HOST", "DAGSTER_CODE_SERVER_PORT"}


def interpolate(text: str, env: dict[str, str]) -> str:
    def one(match: re.Match) -> str:
        return env.get(match.group(1)) or (match.group(3) if match.group(2) in (":-", "-") else "")
    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}", one, text)


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(interpolate((DEPLOY / "compose.yaml").read_text(), DOT_ENV))


@pytest.fixture(scope="module")
def k8s() -> dict[str, list[dict]]:
    return {name: list(yaml.safe_load_all((DEPLOY / "k8s" / f"{name}.yaml").read_text())) for name in ("receiver", "dashboard")}


@pytest.fixture(scope="module")
def helm() -> dict:
    return yaml.safe_load((DEPLOY / "helm" / "values.yaml").read_text())


def known_names() -> set[str]:
    return {field.validation_alias for field in Settings.model_fields.values() if field.validation_alias} | EXTRA_NAMES


def of_kind(docs: list[dict], kind: str) -> dict:
    [doc] = [d for d in docs if d["kind"] == kind]
    return doc


def container(docs: list[dict]) -> dict:
    [box] = of_kind(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    return box


def test_compose_has_the_production_topology(compose):
    services = compose["services"]
    assert {"postgres", "code-server", "webserver", "daemon", "receiver-1", "receiver-2", "proxy", "dashboard"} <= set(services)
    ours = [name for name, svc in services.items() if str(svc["image"]).startswith("clarus-pipelines:")]
    assert set(ours) == {"code-server", "webserver", "daemon", "receiver-1", "receiver-2", "dashboard"}
    assert {services[name]["image"] for name in ours} == {f"clarus-pipelines:{VERSION}"}
    for name, svc in services.items():
        assert svc["healthcheck"]["test"][0] == "CMD", name
    assert services["receiver-1"]["command"] == services["receiver-2"]["command"]
    # the control plane holds no API credentials; everything that calls the systems or takes webhooks does
    for name in ("webserver", "daemon"):
        assert "env_file" not in services[name] and "CLARUS_PIPELINES_CONFIG" not in services[name]["environment"]
    for name in ("code-server", "receiver-1", "receiver-2", "dashboard"):
        assert services[name]["env_file"] == ["clarus.env"]
        assert services[name]["environment"]["CLARUS_PIPELINES_STATE_URL"].startswith("postgresql://")
    for svc in services.values():
        for name in svc.get("environment") or {}:
            assert name.startswith("POSTGRES_") or name in known_names(), name


def test_every_command_is_an_entry_point_of_the_wheel(compose, k8s, helm):
    for name, svc in compose["services"].items():
        command = svc.get("command")
        if not command or not str(svc["image"]).startswith("clarus-pipelines"):
            continue
        assert command[0] in {"dagster", "dagster-webserver", "dagster-daemon", "clarus-pipelines"}, name
        if command[0] == "clarus-pipelines":
            assert command[1] in COMMANDS, name
    assert container(k8s["receiver"])["command"] == compose["services"]["receiver-1"]["command"]
    assert container(k8s["dashboard"])["command"] == compose["services"]["dashboard"]["command"]
    code_server = compose["services"]["code-server"]["command"]
    assert code_server[:3] == ["dagster", "code-server", "start"]
    [deployment] = helm["dagster-user-deployments"]["deployments"]
    args = deployment["codeServerArgs"]
    assert args == [a for a in code_server[3:] if a not in ("-h", "0.0.0.0", "-p", "4000")]


def test_kubernetes_and_helm_use_our_image_and_the_same_environment(compose, k8s, helm):
    [deployment] = helm["dagster-user-deployments"]["deployments"]
    image = f"{deployment['image']['repository']}:{deployment['image']['tag']}"
    assert deployment["image"]["tag"] == VERSION
    compose_env = set(compose["services"]["code-server"]["environment"])
    for docs in k8s.values():
        box = container(docs)
        assert box["image"] == image
        names = {e["name"] for e in box["env"]}
        assert names <= compose_env
        assert [s["secretRef"]["name"] for s in box["envFrom"]] == [s["name"] for s in deployment["envSecrets"]]
    helm_env = {e["name"] for e in deployment["env"]}
    assert helm_env <= compose_env and compose_env - helm_env <= EXTRA_NAMES  # Helm writes Dagster's own
    assert helm["runLauncher"]["type"] == "K8sRunLauncher"
    assert deployment["includeConfigInLaunchedRuns"]["enabled"] is True
    assert helm["runLauncher"]["config"]["k8sRunLauncher"]["envSecrets"] == deployment["envSecrets"]
    assert helm["postgresql"]["enabled"] is False


def test_the_instance_limits_are_the_same_in_compose_and_helm(helm):
    instance = yaml.safe_load((DEPLOY / "dagster.yaml").read_text())
    assert instance["storage"]["postgres"]["postgres_url"] == {"env": "DAGSTER_PG_URL"}
    assert helm["additionalInstanceConfig"]["concurrency"] == instance["concurrency"]
    assert helm["additionalInstanceConfig"]["retention"] == instance["retention"]
    assert helm["dagsterDaemon"]["runCoordinator"]["type"] == "QueuedRunCoordinator"
    assert helm["computeLogManager"]["type"] == instance["compute_logs"]["class"]
    run_monitoring = helm["dagsterDaemon"]["runMonitoring"]
    assert run_monitoring["startTimeoutSeconds"] == instance["run_monitoring"]["start_timeout_seconds"]
    assert helm["dagsterDaemon"]["runRetries"]["maxRetries"] == instance["run_retries"]["max_retries"]
    from clarus_pipelines.commands.demo import DAGSTER_CONCURRENCY_YAML

    assert yaml.safe_load(DAGSTER_CONCURRENCY_YAML)["concurrency"] == instance["concurrency"]


def test_probes_point_at_endpoints_the_services_serve(tmp_path, compose, k8s):
    from clarus_pipelines.receiver.app import create_app
    from clarus_pipelines.receiver.app import WebhookSecrets

    paths = {route.path for route in create_app(tmp_path / "landing", secrets=WebhookSecrets()).routes}
    box = container(k8s["receiver"])
    assert box["readinessProbe"]["httpGet"]["path"] == "/readyz" and box["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert {"/readyz", "/healthz"} <= paths
    assert "/readyz" in " ".join(compose["services"]["receiver-1"]["healthcheck"]["test"])
    cfg = (DEPLOY / "haproxy.cfg").read_text()
    assert "option httpchk GET /readyz" in cfg
    for name in ("receiver-1", "receiver-2"):
        assert re.search(rf"server {name} {name}:8700 check", cfg)
    assert "8700" in compose["services"]["receiver-1"]["command"]
    ports = {p["name"]: p["containerPort"] for p in box["ports"]}
    assert ports == {"http": 8700, "metrics": 9700}
    pdb = of_kind(k8s["receiver"], "PodDisruptionBudget")
    assert of_kind(k8s["receiver"], "Deployment")["spec"]["replicas"] == 2 and pdb["spec"]["minAvailable"] == 1
    dashboard = container(k8s["dashboard"])
    assert dashboard["readinessProbe"]["httpGet"]["path"] == "/_stcore/health"
    assert "/_stcore/health" in " ".join(compose["services"]["dashboard"]["healthcheck"]["test"])


def test_the_dockerfile_installs_from_the_lockfile_without_the_sandbox(compose):
    text = (REPO / "Dockerfile").read_text()
    stages = re.split(r"^FROM ", text, flags=re.M)
    runtime = next(s for s in stages if s.split("\n", 1)[0].endswith(" AS runtime"))
    assert stages[-1] == runtime, "the runtime stage is the default build target"
    assert "python:3.11-slim" in text
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    syncs = re.findall(r"uv sync [^\n]*", code)
    assert syncs and all("--locked" in s and "--no-dev" in s for s in syncs)
    build = next(s for s in stages if s.split("\n", 1)[0].endswith(" AS build"))
    assert "--extra" not in build and "COPY --from=build /opt/venv" in runtime
    assert "USER clarus" in runtime and "--from=uv" not in runtime and "uv sync" not in runtime
    copied = dict(re.findall(r"^COPY (deploy/\S+) (\S+)$", runtime, flags=re.M))
    assert copied == {"deploy/dagster.yaml": "/opt/dagster/dagster_home/dagster.yaml",
                      "deploy/workspace.yaml": "/opt/dagster/workspace.yaml"}
    for name in ("webserver", "daemon"):
        assert "/opt/dagster/workspace.yaml" in compose["services"][name]["command"]
    ignored = (REPO / ".dockerignore").read_text().split()
    assert ".venv" in ignored and "uv.lock" not in ignored and "pyproject.toml" not in ignored


def test_the_secrets_example_names_only_settings_the_code_reads():
    example = [line.split("=", 1)[0] for line in (DEPLOY / "clarus.env.example").read_text().splitlines()
               if "=" in line and not line.startswith("#")]
    assert example and set(example) <= known_names()
    from clarus_pipelines.commands.demo import SECRET_NAMES

    assert set(SECRET_NAMES) <= set(example)
