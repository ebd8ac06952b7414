"""One settings model: secrets and endpoints from the environment, policies from YAML.

`Settings` (pydantic-settings) reads environment variables: base URLs, credentials,
webhook secrets and where state lives. `Policies` is the YAML file of mappings and
business rules (ship-method table, SKU cleaning, stock buffers, hold and SLA timings,
exception owners). `load_policies` validates the file and names the offending key.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from clarus_pipelines.catalogue import CATALOGUE
from clarus_pipelines.policies import Policies

REPO_ROOT = Path(__file__).resolve().parents[1]  # the source tree; meaningless in a wheel install


def package_file(package: str, *parts: str) -> Path:
    """A data file shipped inside the installed package (source tree, editable install or wheel alike).

    Read with `importlib.resources`; wheels are installed unpacked, so the result is a real path
    that child processes (the sandbox, Streamlit) can be given."""
    return Path(str(resources.files(package).joinpath(*parts)))


# The shipped example policies: the sandbox tenant. Only `demo`, `simulate` and `sandbox` fall
# back to it; everything else needs CLARUS_PIPELINES_CONFIG (see `Settings.require_policies_file`).
SANDBOX_POLICIES = package_file("clarus_pipelines.config", "sandbox.yaml")
POLICIES_ENV = "CLARUS_PIPELINES_CONFIG"

# API versions (see docs/api-versions.md): the Shopify Admin API version we pin, and the
# oldest version we declare still supported by Shopify (each stable version lives at least
# 12 months). Move both when Shopify releases a new version; a test fails when the pin
# falls behind the declared oldest, or the declared oldest is out of Shopify's window.
SHOPIFY_API_VERSION = "2026-10"
SHOPIFY_OLDEST_SUPPORTED_VERSION = "2026-01"
NETSUITE_AUTH_METHODS = ("tba", "oauth2_m2m")


class Settings(BaseSettings):
    """Environment: endpoints, credentials and file locations. Secrets never have defaults."""

    model_config = SettingsConfigDict(env_file=None, extra="ignore", case_sensitive=False)

    home: Path = Field(default=Path(".demo"), validation_alias="CLARUS_PIPELINES_HOME")
    policies_file: Path | None = Field(default=None, validation_alias=POLICIES_ENV)
    state_db: Path | None = Field(default=None, validation_alias="CLARUS_PIPELINES_STATE_DB")
    # A DuckDB file (plain path or duckdb:///path; the demo, one host) or postgresql://...
    # (production: the state, and the webhook inbox the receivers insert into; no landing files).
    state_url: str | None = Field(default=None, validation_alias="CLARUS_PIPELINES_STATE_URL")
    landing_dir: Path | None = Field(default=None, validation_alias="CLARUS_PIPELINES_LANDING_DIR")

    clarus_base_url: str = Field(default="http://127.0.0.1:8701", validation_alias="CLARUS_BASE_URL")
    clarus_subdomain: str = Field(default="sandbox", validation_alias="CLARUS_SUBDOMAIN")
    clarus_client_id: str | None = Field(default=None, validation_alias="CLARUS_CLIENT_ID")
    clarus_client_secret: SecretStr | None = Field(default=None, validation_alias="CLARUS_CLIENT_SECRET")
    clarus_webhook_token: SecretStr | None = Field(default=None, validation_alias="CLARUS_WEBHOOK_TOKEN")

    shopify_base_url: str = Field(default="http://127.0.0.1:8702", validation_alias="SHOPIFY_BASE_URL")
    shopify_api_version: str = Field(default=SHOPIFY_API_VERSION, validation_alias="SHOPIFY_API_VERSION",
                                     pattern=r"^\d{4}-(01|04|07|10)$")
    shopify_access_token: SecretStr | None = Field(default=None, validation_alias="SHOPIFY_ACCESS_TOKEN")
    shopify_webhook_secret: SecretStr | None = Field(default=None, validation_alias="SHOPIFY_WEBHOOK_SECRET")

    netsuite_base_url: str = Field(default="http://127.0.0.1:8703", validation_alias="NETSUITE_BASE_URL")
    netsuite_account_id: str = Field(default="SANDBOX", validation_alias="NETSUITE_ACCOUNT_ID")
    # tba: OAuth 1.0a token-based authentication (no new TBA integrations from NetSuite 2027.1);
    # oauth2_m2m: OAuth 2.0 client credentials with a certificate (JWT assertion).
    netsuite_auth_method: Literal["tba", "oauth2_m2m"] = Field(default="tba", validation_alias="NETSUITE_AUTH_METHOD")
    netsuite_client_id: str | None = Field(default=None, validation_alias="NETSUITE_CLIENT_ID")
    netsuite_certificate_id: str | None = Field(default=None, validation_alias="NETSUITE_CERTIFICATE_ID")
    netsuite_private_key: SecretStr | None = Field(default=None, validation_alias="NETSUITE_PRIVATE_KEY")
    netsuite_private_key_file: Path | None = Field(default=None, validation_alias="NETSUITE_PRIVATE_KEY_FILE")
    netsuite_consumer_key: str | None = Field(default=None, validation_alias="NETSUITE_CONSUMER_KEY")
    netsuite_consumer_secret: SecretStr | None = Field(default=None, validation_alias="NETSUITE_CONSUMER_SECRET")
    netsuite_token_id: str | None = Field(default=None, validation_alias="NETSUITE_TOKEN_ID")
    netsuite_token_secret: SecretStr | None = Field(default=None, validation_alias="NETSUITE_TOKEN_SECRET")
    netsuite_webhook_secret: SecretStr | None = Field(default=None, validation_alias="NETSUITE_WEBHOOK_SECRET")

    # Alert e-mail (owners' "email" channels); without a host, e-mail alerts fail and say why.
    alert_smtp_host: str | None = Field(default=None, validation_alias="ALERT_SMTP_HOST")
    alert_smtp_port: int = Field(default=25, validation_alias="ALERT_SMTP_PORT")
    alert_smtp_from: str | None = Field(default=None, validation_alias="ALERT_SMTP_FROM")
    alert_smtp_starttls: bool = Field(default=False, validation_alias="ALERT_SMTP_STARTTLS")
    alert_smtp_username: str | None = Field(default=None, validation_alias="ALERT_SMTP_USERNAME")
    alert_smtp_password: SecretStr | None = Field(default=None, validation_alias="ALERT_SMTP_PASSWORD")

    @field_validator("shopify_api_version")
    @classmethod
    def _shopify_version_supported(cls, value: str) -> str:
        if value < SHOPIFY_OLDEST_SUPPORTED_VERSION:
            raise ValueError(f"Shopify API {value} is older than the oldest supported version "
                             f"{SHOPIFY_OLDEST_SUPPORTED_VERSION} (see docs/api-versions.md)")
        return value

    def netsuite_private_key_pem(self) -> str | None:
        """The M2M certificate's private key: NETSUITE_PRIVATE_KEY, else the file NETSUITE_PRIVATE_KEY_FILE."""
        if self.netsuite_private_key is not None:
            return self.netsuite_private_key.get_secret_value()
        if self.netsuite_private_key_file is not None and self.netsuite_private_key_file.is_file():
            return self.netsuite_private_key_file.read_text()
        return None

    def netsuite_missing_credentials(self) -> list[str]:
        """Environment variables the chosen NetSuite auth method still lacks."""
        if self.netsuite_auth_method == "oauth2_m2m":
            needed = {"NETSUITE_CLIENT_ID": self.netsuite_client_id, "NETSUITE_CERTIFICATE_ID": self.netsuite_certificate_id,
                      "NETSUITE_PRIVATE_KEY (or NETSUITE_PRIVATE_KEY_FILE)": self.netsuite_private_key_pem()}
        else:
            needed = {"NETSUITE_CONSUMER_KEY": self.netsuite_consumer_key, "NETSUITE_CONSUMER_SECRET": self.netsuite_consumer_secret,
                      "NETSUITE_TOKEN_ID": self.netsuite_token_id, "NETSUITE_TOKEN_SECRET": self.netsuite_token_secret}
        return [name for name, value in needed.items() if not value]

    @property
    def state_db_path(self) -> Path:
        """The DuckDB state file (CLARUS_PIPELINES_STATE_DB, or a duckdb URL / path in CLARUS_PIPELINES_STATE_URL)."""
        if self.state_url and not self.state_is_postgres:
            from clarus_pipelines.state.store import duckdb_path

            return duckdb_path(self.state_url)
        return self.state_db or self.home / "state.duckdb"

    @property
    def state_is_postgres(self) -> bool:
        return bool(self.state_url) and self.state_url.startswith(("postgresql://", "postgres://"))

    @property
    def state_target(self) -> str:
        """Where the state lives, as `open_state` takes it: the postgresql:// URL or the DuckDB file's path."""
        if self.state_is_postgres:
            return self.state_url
        return str(self.state_db_path.expanduser().resolve())

    @property
    def landing_path(self) -> Path:
        return self.landing_dir or self.home / "landing"

    @property
    def inbox_url(self) -> str | None:
        """The PostgreSQL URL webhooks are stored under instead of landing files, or None (file mode)."""
        url = (self.state_url or "").strip()
        return url if is_postgres_url(url) else None

    def require_policies_file(self) -> Path:
        """The policies file; not set is a configuration error, never a silent sandbox default
        (a deployment that forgot it would otherwise run on the sandbox tenant)."""
        if self.policies_file is None:
            raise ConfigError(f"{POLICIES_ENV} is not set: point it at your policies YAML "
                              f"(the shipped example is {SANDBOX_POLICIES.name}; `clarus-pipelines demo` and "
                              "`simulate` use it by themselves)")
        return self.policies_file


def is_postgres_url(url: str | None) -> bool:
    """Whether `url` names a PostgreSQL database (postgresql://... or postgres://...)."""
    return bool(url) and url.split(":", 1)[0] in ("postgresql", "postgres")  # type: ignore[union-attr]


# ---------------------------------------------------------------------------- policies


class ConfigError(ValueError):
    """A configuration problem, with the offending key and why."""


def _format_location(loc: tuple) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts) or "<root>"


def load_policies(path: Path | str) -> Policies:
    """Read and validate a policies YAML file; raise ConfigError naming the file, line and key."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: file not found") from exc
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{where}: not valid YAML: {problem}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    problems: list[tuple[tuple, str]] = []
    policies = None
    try:
        policies = Policies.model_validate(raw)
    except ValidationError as exc:
        problems = [(tuple(err["loc"]), err["msg"]) for err in exc.errors()]
    overrides = raw.get("exception_overrides")
    unknown = sorted(set(overrides) - set(CATALOGUE)) if isinstance(overrides, dict) else []
    if unknown:
        problems.append((("exception_overrides",), f"unknown exception code(s) {unknown}"))
    if problems:
        lines = _key_lines(text)
        messages = []
        for loc, message in problems:
            line = _nearest_line(lines, loc)
            where = f"{path}:{line}" if line else str(path)
            messages.append(f"{where}: {_format_location(loc)}: {message}")
        raise ConfigError("; ".join(messages))
    return policies


def _key_lines(text: str) -> dict[tuple, int]:
    """1-based line of every key and list item in a YAML document, by its location path."""
    lines: dict[tuple, int] = {}

    def walk(node: yaml.Node, loc: tuple) -> None:
        lines[loc] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                child = (*loc, key.value)
                walk(value, child)
                lines[child] = key.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                walk(item, (*loc, index))

    root = yaml.compose(text, Loader=yaml.SafeLoader)
    if root is not None:
        walk(root, ())
    return lines


def _nearest_line(lines: dict[tuple, int], loc: tuple) -> int | None:
    """The line of `loc`, or of its nearest ancestor present in the file (a missing key)."""
    for end in range(len(loc), 0, -1):
        if loc[:end] in lines:
            return lines[loc[:end]]
    return None


@lru_cache(maxsize=8)
def _cached_policies(path: str, mtime_ns: int, size: int) -> Policies:
    return load_policies(path)


def get_settings() -> Settings:
    return Settings()


def get_policies(settings: Settings | None = None) -> Policies:
    """Policies of the current settings, re-read when the file changes."""
    return policies_at((settings or get_settings()).require_policies_file())


def policies_at(path: Path | str) -> Policies:
    """The policies file at `path`, parsed once per version of the file (keyed by mtime and size)."""
    path = Path(path)
    try:
        stat = path.stat()
    except FileNotFoundError:
        return load_policies(path)  # raises ConfigError naming the file
    return _cached_policies(str(path), stat.st_mtime_ns, stat.st_size)
