"""Settings from the environment, policies from YAML, and `check-config` naming the bad key."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from clarus_pipelines.commands.check_config import REQUIRED_SECRETS
from clarus_pipelines.resources import PoliciesResource
from clarus_pipelines.settings import SANDBOX_POLICIES, ConfigError, Settings, load_policies

CLI = [str(Path(sys.executable).parent / "clarus-pipelines")]


def test_shipped_sandbox_config_is_valid():
    policies = load_policies(SANDBOX_POLICIES)
    assert policies.ship_methods and policies.tenant.account_id == 1
    assert policies.stock.buffers == {"000123": 0}  # SKU keys stay strings with their zeros


def _write(tmp_path, mutate) -> Path:
    data = yaml.safe_load(SANDBOX_POLICIES.read_text())
    mutate(data)
    path = tmp_path / "policies.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    "mutate, key, why",
    [
        (lambda d: d["ship_methods"].append({"carrier": "DPD", "service": "X"}), "ship_methods[6]", "needs a 'code' or a 'title'"),
        (lambda d: d["stock"].update(default_buffer=-1), "stock.default_buffer", "greater than or equal to 0"),
        (lambda d: d["timings"].update(held_alert_minutes="soon"), "timings.held_alert_minutes", "valid integer"),
        (lambda d: d["sku_cleaning"].update(remove_pattern="[a-"), "sku_cleaning.remove_pattern", "not a valid regular expression"),
        (lambda d: d.update(exception_overrides={"NOPE": {"owner": "ops"}}), "exception_overrides", "unknown exception code"),
        (lambda d: d["tenant"].pop("account_id"), "tenant.account_id", "Field required"),
        (lambda d: d["tenant"].update(timezone="Europe/Londn"), "tenant.timezone", "unknown time zone 'Europe/Londn'"),
        (lambda d: d["tenant"].pop("netsuite_customer_id"), "tenant.netsuite_customer_id", "Field required"),
        (lambda d: d.update(typo_section={}), "typo_section", "Extra inputs are not permitted"),
    ],
)
def test_bad_policies_name_the_key_and_why(tmp_path, mutate, key, why):
    path = _write(tmp_path, mutate)
    with pytest.raises(ConfigError) as err:
        load_policies(path)
    assert key in str(err.value) and why in str(err.value)
    result = subprocess.run(CLI + ["check-config", "--config", str(path)], capture_output=True, text=True)
    assert result.returncode == 1
    assert key in result.stderr and why in result.stderr


def test_check_config_ok_prints_summary():
    result = subprocess.run(CLI + ["check-config"], capture_output=True, text=True, check=True)
    summary = json.loads(result.stdout)
    assert summary["ok"] is True and summary["ship_methods"] == 6


def test_check_config_require_secrets_names_missing(monkeypatch):
    # a bare environment has no CLARUS_PIPELINES_CONFIG (issue 14: no sandbox default), so --config names it
    env = {"PATH": "/usr/bin:/bin", "SHOPIFY_WEBHOOK_SECRET": "s"}
    result = subprocess.run(CLI + ["check-config", "--require-secrets", "--config", str(SANDBOX_POLICIES)], capture_output=True, text=True, env=env)
    assert result.returncode == 1
    assert "CLARUS_CLIENT_SECRET: not set" in result.stderr
    assert "SHOPIFY_WEBHOOK_SECRET: not set" not in result.stderr


def test_check_config_require_secrets_refuses_weak_webhook_secrets():
    strong = "k3J9x-Qw7Lp2Zr5Tb8Nm"
    tba = ("NETSUITE_CONSUMER_KEY", "NETSUITE_CONSUMER_SECRET", "NETSUITE_TOKEN_ID", "NETSUITE_TOKEN_SECRET")
    env = {"PATH": "/usr/bin:/bin", **{name: strong for name in (*REQUIRED_SECRETS, *tba)},
           "SHOPIFY_WEBHOOK_SECRET": "s", "NETSUITE_WEBHOOK_SECRET": "a" * 40}
    result = subprocess.run(CLI + ["check-config", "--require-secrets", "--config", str(SANDBOX_POLICIES)], capture_output=True, text=True, env=env)
    assert result.returncode == 1
    summary = json.loads(result.stdout)
    assert summary["weak_secrets"] == ["SHOPIFY_WEBHOOK_SECRET", "NETSUITE_WEBHOOK_SECRET"] and not summary["ok"]
    assert "SHOPIFY_WEBHOOK_SECRET: too weak" in result.stderr and "NETSUITE_WEBHOOK_SECRET: too weak" in result.stderr
    assert "CLARUS_WEBHOOK_TOKEN" not in result.stderr and "aaaa" not in result.stderr  # never the value
    ok = subprocess.run(CLI + ["check-config", "--require-secrets", "--config", str(SANDBOX_POLICIES)], capture_output=True, text=True,
                        env={**env, "SHOPIFY_WEBHOOK_SECRET": strong, "NETSUITE_WEBHOOK_SECRET": strong})
    assert ok.returncode == 0 and json.loads(ok.stdout)["ok"] is True


def test_secrets_are_not_in_settings_repr(monkeypatch):
    monkeypatch.setenv("SHOPIFY_WEBHOOK_SECRET", "very-secret-value")
    settings = Settings()
    assert settings.shopify_webhook_secret.get_secret_value() == "very-secret-value"
    assert "very-secret-value" not in repr(settings)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_policies(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("tenant:\n  account_id: 1\n  name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML") as err:
        load_policies(bad)
    assert str(err.value).startswith(f"{bad}:4: ")  # the file and the line, not '<unicode string>'
    assert "<unicode string>" not in str(err.value)


def test_a_bad_key_names_the_file_and_its_line(tmp_path):
    path = tmp_path / "policies.yaml"
    text = SANDBOX_POLICIES.read_text()
    path.write_text(text.replace("default_buffer:", "default_buffer: -1\n  _was_default_buffer:", 1))
    with pytest.raises(ConfigError) as err:
        load_policies(path)
    line = next(i for i, row in enumerate(path.read_text().splitlines(), 1) if "default_buffer: -1" in row)
    assert f"{path}:{line}: stock.default_buffer: " in str(err.value)


def test_every_subcommand_has_help():
    from clarus_pipelines.cli import COMMANDS

    top = subprocess.run(CLI + ["--help"], capture_output=True, text=True)
    assert top.returncode == 0
    for name in COMMANDS:
        assert name in top.stdout
        sub = subprocess.run(CLI + [name, "--help"], capture_output=True, text=True)
        assert sub.returncode == 0, f"{name} --help failed: {sub.stderr[-500:]}"
        assert "usage: clarus-pipelines " + name in sub.stdout


def test_version_names_the_installed_release():
    from importlib.metadata import version

    done = subprocess.run(CLI + ["--version"], capture_output=True, text=True)
    assert done.returncode == 0
    assert done.stdout.strip() == f"clarus-pipelines {version('clarus-pipelines')}"


def test_policies_resource_parses_once_per_version_of_the_file(tmp_path):
    path = _write(tmp_path, lambda d: None)
    resource = PoliciesResource(path=str(path))
    first = resource.load()
    assert resource.load() is first  # unchanged file: the parsed policies are reused
    data = yaml.safe_load(path.read_text())
    data["timings"]["held_alert_minutes"] = 30
    path.write_text(yaml.safe_dump(data))
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1_000_000))
    assert resource.load().timings.held_alert_minutes == 30  # an edit is picked up without a restart
    path.unlink()
    with pytest.raises(ConfigError, match="file not found"):
        resource.load()


def test_web_orders_are_booked_to_the_tenants_netsuite_customer_unless_a_run_says_otherwise():
    from clarus_pipelines.assets.orders import OrdersConfig

    policies = load_policies(SANDBOX_POLICIES)
    assert policies.tenant.netsuite_customer_id == "110"  # the sandbox's web customer
    assert OrdersConfig().customer_id(policies) == "110"
    assert OrdersConfig(netsuite_customer_id="4242").customer_id(policies) == "4242"


def test_check_config_names_what_the_chosen_netsuite_auth_method_lacks():
    base = {"PATH": "/usr/bin:/bin", "NETSUITE_AUTH_METHOD": "oauth2_m2m", "NETSUITE_CLIENT_ID": "client-1"}
    result = subprocess.run(CLI + ["check-config", "--config", str(SANDBOX_POLICIES)], capture_output=True, text=True, env=base)
    summary = json.loads(result.stdout)
    assert summary["netsuite_auth_method"] == "oauth2_m2m"
    assert summary["netsuite_auth_missing"] == ["NETSUITE_CERTIFICATE_ID", "NETSUITE_PRIVATE_KEY (or NETSUITE_PRIVATE_KEY_FILE)"]
    assert "oauth2_m2m still lacks NETSUITE_CERTIFICATE_ID" in result.stderr
    strict = subprocess.run(CLI + ["check-config", "--require-secrets", "--config", str(SANDBOX_POLICIES)], capture_output=True, text=True, env=base)
    assert strict.returncode == 1 and "NETSUITE_CERTIFICATE_ID: not set" in strict.stderr
    assert "NETSUITE_TOKEN_SECRET" not in strict.stderr  # TBA's credentials are not asked of an M2M install
    tba = subprocess.run(CLI + ["check-config", "--require-secrets", "--config", str(SANDBOX_POLICIES)], capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin"})
    assert "NETSUITE_TOKEN_SECRET: not set" in tba.stderr and "NETSUITE_CERTIFICATE_ID" not in tba.stderr
    bad = subprocess.run(CLI + ["check-config", "--config", str(SANDBOX_POLICIES)], capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin", "NETSUITE_AUTH_METHOD": "oauth3"})
    assert bad.returncode == 1 and "NETSUITE_AUTH_METHOD" in bad.stderr


def test_no_policies_file_is_an_error_not_the_sandbox_tenant(monkeypatch, tmp_path):
    """Issue 14: a deployment that forgets CLARUS_PIPELINES_CONFIG must not run on the sandbox tenant."""
    monkeypatch.delenv("CLARUS_PIPELINES_CONFIG", raising=False)
    settings = Settings()
    assert settings.policies_file is None
    with pytest.raises(ConfigError, match="CLARUS_PIPELINES_CONFIG is not set"):
        settings.require_policies_file()
    from clarus_pipelines.settings import get_policies

    with pytest.raises(ConfigError, match="CLARUS_PIPELINES_CONFIG is not set"):
        get_policies(settings)
    env = {k: v for k, v in os.environ.items() if k != "CLARUS_PIPELINES_CONFIG"}
    checked = subprocess.run(CLI + ["check-config"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert checked.returncode == 1 and "CLARUS_PIPELINES_CONFIG is not set" in checked.stderr
    served = subprocess.run(CLI + ["receiver", "--port", "0"], capture_output=True, text=True, env=env, cwd=tmp_path,
                            timeout=60)
    assert served.returncode == 2 and "configuration error: CLARUS_PIPELINES_CONFIG is not set" in served.stderr


def test_a_policies_file_without_a_tenant_is_refused(tmp_path):
    data = yaml.safe_load(SANDBOX_POLICIES.read_text())
    del data["tenant"]
    path = tmp_path / "no_tenant.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="tenant: Field required"):
        load_policies(path)


def test_shipped_data_files_are_read_from_inside_the_package():
    """Policies example, quality suites and the sandbox's spec resolve through importlib.resources."""
    from clarus_pipelines.data_quality import SUITES_DIR, load_suites
    from clarus_pipelines.sandbox.openapi import SUBSET_PATH

    assert SANDBOX_POLICIES.is_file() and SANDBOX_POLICIES.parent.name == "config"
    assert load_suites(SUITES_DIR) and SUBSET_PATH.is_file()


def test_state_url_chooses_duckdb_or_postgresql(monkeypatch, tmp_path):
    """CLARUS_PIPELINES_STATE_URL: a DuckDB file (path or duckdb:///path) or postgresql://; the
    older CLARUS_PIPELINES_STATE_DB and the home default still name the DuckDB file."""
    from clarus_pipelines.definitions import build_resources
    from clarus_pipelines.state import PgStateStore, StateStore

    monkeypatch.setenv("CLARUS_PIPELINES_HOME", str(tmp_path))
    monkeypatch.delenv("CLARUS_PIPELINES_STATE_URL", raising=False)
    monkeypatch.delenv("CLARUS_PIPELINES_STATE_DB", raising=False)
    assert Settings().state_target == str((tmp_path / "state.duckdb").resolve())
    monkeypatch.setenv("CLARUS_PIPELINES_STATE_DB", str(tmp_path / "old.duckdb"))
    assert Settings().state_target == str(tmp_path / "old.duckdb")
    monkeypatch.setenv("CLARUS_PIPELINES_STATE_URL", f"duckdb://{tmp_path}/new.duckdb")
    assert Settings().state_db_path == tmp_path / "new.duckdb" and not Settings().state_is_postgres
    url = "postgresql://clarus:secret@db.internal:5432/clarus_state"
    monkeypatch.setenv("CLARUS_PIPELINES_STATE_URL", url)
    assert Settings().state_is_postgres and Settings().state_target == url
    state = build_resources(Settings())["state"]
    assert isinstance(state.store(), PgStateStore) and state.store().url == url
    assert isinstance(StateStore(tmp_path / "x.duckdb"), StateStore)
