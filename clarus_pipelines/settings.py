"""One settings model: secrets and endpoints from the environment, policies from YAML.

`Settings` (pydantic-settings) reads environment variables: base URLs, credentials,
webhook secrets and where state lives. `Policies` is the YAML file of mappings and
business rules (ship-method table, SKU cleaning, stock buffers, hold and SLA timings,
exception owners). `load_policies` validates the file and names the offending key.
"""

from __future__ import annotations

import re
from datetime import time
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from clarus_pipelines.domain.refunds import RefundRules  # the refund rules live with the classifier

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

Owner = Literal["ops", "finance", "cx", "merchandising", "integration"]
Severity = Literal["low", "medium", "high", "critical"]


class Settings(BaseSettings):
    """Environment: endpoints, credentials and file locations. Secrets never have defaults."""

    model_config = SettingsConfigDict(env_file=None, extra="ignore", case_sensitive=False)

    home: Path = Field(default=Path(".demo"), validation_alias="CLARUS_PIPELINES_HOME")
    policies_file: Path | None = Field(default=None, validation_alias=POLICIES_ENV)
    state_db: Path | None = Field(default=None, validation_alias="CLARUS_PIPELINES_STATE_DB")
    landing_dir: Path | None = Field(default=None, validation_alias="CLARUS_PIPELINES_LANDING_DIR")

    clarus_base_url: str = Field(default="http://127.0.0.1:8701", validation_alias="CLARUS_BASE_URL")
    clarus_subdomain: str = Field(default="sandbox", validation_alias="CLARUS_SUBDOMAIN")
    clarus_client_id: str | None = Field(default=None, validation_alias="CLARUS_CLIENT_ID")
    clarus_client_secret: SecretStr | None = Field(default=None, validation_alias="CLARUS_CLIENT_SECRET")
    clarus_webhook_token: SecretStr | None = Field(default=None, validation_alias="CLARUS_WEBHOOK_TOKEN")

    shopify_base_url: str = Field(default="http://127.0.0.1:8702", validation_alias="SHOPIFY_BASE_URL")
    shopify_api_version: str = Field(default="2025-07", validation_alias="SHOPIFY_API_VERSION")
    shopify_access_token: SecretStr | None = Field(default=None, validation_alias="SHOPIFY_ACCESS_TOKEN")
    shopify_webhook_secret: SecretStr | None = Field(default=None, validation_alias="SHOPIFY_WEBHOOK_SECRET")

    netsuite_base_url: str = Field(default="http://127.0.0.1:8703", validation_alias="NETSUITE_BASE_URL")
    netsuite_account_id: str = Field(default="SANDBOX", validation_alias="NETSUITE_ACCOUNT_ID")
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

    @property
    def state_db_path(self) -> Path:
        return self.state_db or self.home / "state.duckdb"

    @property
    def landing_path(self) -> Path:
        return self.landing_dir or self.home / "landing"

    def require_policies_file(self) -> Path:
        """The policies file; not set is a configuration error, never a silent sandbox default
        (a deployment that forgot it would otherwise run on the sandbox tenant)."""
        if self.policies_file is None:
            raise ConfigError(f"{POLICIES_ENV} is not set: point it at your policies YAML "
                              f"(the shipped example is {SANDBOX_POLICIES.name}; `clarus-pipelines demo` and "
                              "`simulate` use it by themselves)")
        return self.policies_file


# ---------------------------------------------------------------------------- policies


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TenantPolicy(_Strict):
    """Identifies our Clarus tenant; webhook identity headers must match these."""

    clarus_domain: str
    clarus_api_domain: str
    clarus_subdomain: str
    clarus_automation_ids: list[str] = Field(min_length=1)
    clarus_integration_id: str
    account_id: int = Field(gt=0)
    warehouse_id: int = Field(gt=0)
    goods_out_type: str = "SALES_ORDER"
    shopify_location_ids: list[int] = Field(default_factory=list)
    netsuite_customer_id: str = Field(
        min_length=1, description="Internal id of the NetSuite customer record web orders (and their credits) are booked to.")
    timezone: str = Field(default="UTC", description="IANA zone of the warehouse: the dispatch cut-off is read in it.")

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r} (use an IANA name such as Europe/London)") from exc
        return value

    @property
    def tzinfo(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


class SkuCleaning(_Strict):
    """Applied identically everywhere a SKU is compared. SKUs stay strings."""

    trim: bool = True
    case: Literal["preserve", "upper", "lower"] = "upper"
    remove_pattern: str = r"[^A-Za-z0-9._/\-]"

    @field_validator("remove_pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from exc
        return value


class ShipMethodRule(_Strict):
    """A Shopify shipping line (by code and/or title) -> Clarus carrier and service."""

    code: str | None = None
    title: str | None = None
    carrier: str
    service: str

    @model_validator(mode="after")
    def _needs_a_key(self) -> "ShipMethodRule":
        if not (self.code or self.title):
            raise ValueError("a ship-method rule needs a 'code' or a 'title' to match on")
        return self


class StockPolicy(_Strict):
    default_buffer: int = Field(default=0, ge=0)
    buffers: dict[str, int] = Field(default_factory=dict)
    mismatch_tolerance: int = Field(default=0, ge=0)
    snapshot_freshness_minutes: int = Field(default=120, gt=0)
    snapshot_retention_days: int = Field(default=35, gt=0)  # hourly history kept (the newest balances always stay)

    @field_validator("buffers")
    @classmethod
    def _non_negative(cls, value: dict[str, int]) -> dict[str, int]:
        bad = [sku for sku, qty in value.items() if qty < 0]
        if bad:
            raise ValueError(f"buffers must be >= 0; negative for {bad}")
        return value


class Timings(_Strict):
    """Hold, SLA and retention timings (minutes unless named otherwise)."""

    recheck_held_minutes: int = Field(default=15, gt=0)
    held_alert_minutes: int = Field(default=240, gt=0)
    ack_timeout_minutes: int = Field(default=15, gt=0)
    dispatch_cutoff: time = time(15, 0)
    erp_wait_alert_minutes: int = Field(default=60, gt=0)
    tracking_post_alert_minutes: int = Field(default=60, gt=0)
    orphan_after_minutes: int = Field(default=120, gt=0)
    return_receipt_days: int = Field(default=14, gt=0)
    landing_retention_days: int = Field(default=90, gt=0)


class AlertChannel(_Strict):
    kind: Literal["slack", "email", "webhook", "log"]
    target: str = ""  # webhook URL or email address; "log" needs none


class OwnerPolicy(_Strict):
    channels: list[AlertChannel] = Field(default_factory=list)
    digest_minutes: int = Field(default=0, ge=0)


class ExceptionOverride(_Strict):
    owner: Owner | None = None
    severity: Severity | None = None
    sla_minutes: int | None = Field(default=None, gt=0)


class Policies(_Strict):
    tenant: TenantPolicy
    refund_rules: RefundRules = RefundRules()
    sku_cleaning: SkuCleaning = SkuCleaning()
    ship_methods: list[ShipMethodRule] = Field(default_factory=list)
    stock: StockPolicy = StockPolicy()
    timings: Timings = Timings()
    owners: dict[Owner, OwnerPolicy] = Field(default_factory=dict)
    exception_overrides: dict[str, ExceptionOverride] = Field(default_factory=dict)
    order_edit_policy: Literal["amend_lines", "cancel_and_recreate", "manual_review"] = "amend_lines"
    tracking_patterns: dict[str, str] = Field(default_factory=dict)

    @field_validator("exception_overrides")
    @classmethod
    def _known_codes(cls, value: dict[str, ExceptionOverride]) -> dict[str, ExceptionOverride]:
        from clarus_pipelines.catalogue import CATALOGUE

        unknown = sorted(set(value) - set(CATALOGUE))
        if unknown:
            raise ValueError(f"unknown exception code(s) {unknown}")
        return value

    @field_validator("tracking_patterns")
    @classmethod
    def _patterns_compile(cls, value: dict[str, str]) -> dict[str, str]:
        for carrier, pattern in value.items():
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"pattern for {carrier!r} is not a valid regular expression: {exc}") from exc
        return value


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
    try:
        return Policies.model_validate(raw)
    except ValidationError as exc:
        lines = _key_lines(text)
        problems = []
        for err in exc.errors():
            line = _nearest_line(lines, err["loc"])
            where = f"{path}:{line}" if line else str(path)
            problems.append(f"{where}: {_format_location(err['loc'])}: {err['msg']}")
        raise ConfigError("; ".join(problems)) from exc


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
