"""The policies model: what a brand configures in its policies YAML, validated.

A leaf of the package: it imports nothing of ours, so every layer (domain rules, state,
assets, the CLI) can depend on it. `clarus_pipelines.settings.load_policies` reads a file
into `Policies`, naming the file, line and key of anything wrong.
"""

from __future__ import annotations

import re
from datetime import datetime, time, timezone
from decimal import Decimal
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Owner = Literal["ops", "finance", "cx", "merchandising", "integration"]
Severity = Literal["low", "medium", "high", "critical"]


def regular_expression(value: str, what: str = "") -> str:
    """`value` if it compiles as a regular expression, else a ValueError saying why."""
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"{what + ' is ' if what else ''}not a valid regular expression: {exc}") from exc
    return value


# ------------------------------------------------------------------------ refund rules

RuleField = Literal[
    "note", "order_tags", "cancel_reason", "adjustment_reason", "return_reason",
    "transaction_gateway", "line_property",
]
RuleKind = Literal["RETURN", "CANCELLATION", "GOODWILL", "SHIPPING_ONLY", "EXCHANGE"]


class RefundRule(BaseModel):
    """A pattern on one refund field that names a kind.

    `on` picks the field: the refund `note`, each of the order's `order_tags`, the
    order's `cancel_reason`, each `adjustment_reason`, the Shopify return's
    `return_reason`s, each `transaction_gateway`, or each line item property as
    `name=value` (`line_property`). `pattern` is a case-insensitive regular expression
    searched in the value. A rule adds its kind to what the payload shows; with
    `decides: true` a match settles the kind outright.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    on: RuleField
    pattern: str
    kind: RuleKind
    decides: bool = False
    name: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _yaml_on_key(cls, data: Any) -> Any:
        # YAML 1.1 reads an unquoted `on:` key as the boolean true
        if isinstance(data, dict) and True in data and "on" not in data:
            data = {("on" if k is True else k): v for k, v in data.items()}
        return data

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        return regular_expression(value)

    @property
    def label(self) -> str:
        return self.name or f"{self.on} ~ /{self.pattern}/ -> {self.kind}"


DEFAULT_REFUND_RULES: tuple[RefundRule, ...] = (
    RefundRule(
        on="note", pattern=r"\b(goodwill|good will|appeasement|gesture|courtesy|compensation)\b",
        kind="GOODWILL", name="note mentions goodwill",
    ),
    RefundRule(on="note", pattern=r"\bexchang(e|ed|ing)\b", kind="EXCHANGE", name="note mentions an exchange"),
)


class RefundRules(BaseModel):
    """`refund_rules` section of the policies: reason/note/tag patterns -> refund kind.

    Leaving the section out keeps the defaults (notes naming goodwill or an exchange);
    giving `rules` replaces them.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    rules: tuple[RefundRule, ...] = Field(default=DEFAULT_REFUND_RULES)
    netsuite_goodwill_item: str = Field(
        default="900", description="NetSuite other-charge item that goodwill credit memos post to")
    netsuite_shipping_item: str = Field(
        default="901", description="NetSuite other-charge item that shipping refund credit memos post to")



# ------------------------------------------------------------------------ the policies file


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
        return regular_expression(value)


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
    go_live: datetime = Field(
        default=datetime(2026, 1, 1),
        description="UTC hour the integration went live: no stock partition (hour) before it; the stock "
        "partitions start here or at the retention cutoff, whichever is later.")

    @field_validator("go_live")
    @classmethod
    def _whole_utc_hour(cls, value: datetime) -> datetime:
        if value.tzinfo is not None:
            value = value.astimezone(timezone.utc).replace(tzinfo=None)
        return value.replace(minute=0, second=0, microsecond=0)

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


class RetentionPolicy(_Strict):
    """How many days each class of record is kept before the daily retention job prunes it.

    Only finished records go: an order still moving (not cancelled and not completed in
    Clarus), an order or shipment with an open exception, an exception not resolved, and
    the alerts of an open exception stay whatever their age. Landed webhook payloads follow
    `timings.landing_retention_days`, hourly stock history `stock.snapshot_retention_days`.
    """

    orders_days: int = Field(default=400, gt=0)       # finished orders, their lines, holds and bindings
    order_events_days: int = Field(default=400, gt=0)  # the orders' history (journey)
    shipments_days: int = Field(default=400, gt=0)     # shipments confirmed in Shopify, and fulfilments judged
    exceptions_days: int = Field(default=180, gt=0)    # resolved exceptions and their events
    alerts_days: int = Field(default=90, gt=0)         # alert history and deliveries
    health_days: int = Field(default=30, gt=0)         # health snapshots behind the dashboard's charts


class PaymentsPolicy(_Strict):
    """The shop's Shopify Payments fees (its plan), against which each payout's fees are checked:
    `fee_percent` of a charge plus `fee_fixed` (payout currency), rounded half-up to the cent;
    `refund_fee` on a refund (Shopify keeps the charge's fee, so 0)."""

    fee_percent: Decimal = Field(default=Decimal("2.0"), ge=0, lt=100)
    fee_fixed: Decimal = Field(default=Decimal("0.25"), ge=0)
    refund_fee: Decimal = Field(default=Decimal("0.00"), ge=0)


class OutsideFulfilmentPolicy(_Strict):
    """What follows a Shopify fulfilment the warehouse did not make (FULFILLED_OUTSIDE_WMS).

    `hold`: nothing is written to Clarus; ops decide (the exception names the open goods
    out). `cancel`: the order's Clarus goods out is cancelled while Clarus still allows it.
    `grace_minutes`: how long a new fulfilment may wait for the dispatch flow to record it
    as ours before it is judged.
    """

    action: Literal["hold", "cancel"] = "hold"
    grace_minutes: int = Field(default=10, gt=0)


class AlertChannel(_Strict):
    kind: Literal["slack", "email", "webhook", "log"]
    target: str = ""  # webhook URL or email address; "log" needs none


class EscalationPolicy(_Strict):
    """Who hears about an owner's exception once it is past its SLA and still not acknowledged
    (the role's escalation contact), and how often they are reminded until someone acknowledges."""

    channels: list[AlertChannel] = Field(min_length=1)
    renotify_minutes: int = Field(default=60, ge=0)  # 0: escalate once, no reminders


class OwnerPolicy(_Strict):
    channels: list[AlertChannel] = Field(default_factory=list)
    digest_minutes: int = Field(default=0, ge=0)
    escalation: EscalationPolicy | None = None


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
    exception_overrides: dict[str, ExceptionOverride] = Field(default_factory=dict)  # codes checked by load_policies
    order_edit_policy: Literal["amend_lines", "cancel_and_recreate", "manual_review"] = "amend_lines"
    tracking_patterns: dict[str, str] = Field(default_factory=dict)
    outside_fulfilment: OutsideFulfilmentPolicy = OutsideFulfilmentPolicy()
    retention: RetentionPolicy = RetentionPolicy()
    payments: PaymentsPolicy = PaymentsPolicy()

    @field_validator("tracking_patterns")
    @classmethod
    def _patterns_compile(cls, value: dict[str, str]) -> dict[str, str]:
        for carrier, pattern in value.items():
            regular_expression(pattern, f"pattern for {carrier!r}")
        return value
