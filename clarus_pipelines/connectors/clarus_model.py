"""What Clarus WMS means by its codes and shapes, without Dagster or HTTP.

Shared by the Clarus connector, the Clarus sandbox, the webhook receiver and the domain
rules: goods out statuses, the webhook identity headers and payload, error symbols, and
builders for the JSON:API bodies Clarus expects. Clarus ids are integers on the REST API
and strings in GraphQL; this project keeps them as strings and converts at the edge.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from enum import IntEnum
from typing import Any


class GoodsOutStatus(IntEnum):
    """Goods out (sales order) status ids as Clarus numbers them."""

    DRAFT = 1
    PENDING = 2
    PICK = 3
    PART = 4  # part dispatched: some lines shipped, the rest still open
    ALLOCATED = 5
    COMPLETED = 6  # dispatched
    PART_ALLOCATED = 7
    CANCELLED = 8

    @property
    def label(self) -> str:
        return self.name.replace("_", " ").title()

    @classmethod
    def from_code(cls, code: str) -> "GoodsOutStatus":
        try:
            return cls[code.strip().upper()]
        except KeyError:
            raise ValueError(f"unknown Clarus goods out status code {code!r}") from None

    @classmethod
    def of(cls, goods_out: Mapping[str, Any] | None) -> "GoodsOutStatus | None":
        """The status of a goods out record (webhook `data` or GraphQL node); None without one."""
        if not goods_out:
            return None
        status = goods_out.get("goods_out_status")
        code = status.get("code") if isinstance(status, Mapping) else status
        return cls.from_code(str(code)) if code is not None else None

    @property
    def is_dispatched(self) -> bool:
        """Goods left the warehouse (all, COMPLETED, or some, PART): a cancel comes too late."""
        return self in (GoodsOutStatus.COMPLETED, GoodsOutStatus.PART)

    @property
    def is_final(self) -> bool:
        """Clarus is done with it: dispatched in full or cancelled."""
        return self in (GoodsOutStatus.COMPLETED, GoodsOutStatus.CANCELLED)

    @property
    def is_cancellable(self) -> bool:
        """Clarus still accepts a cancel (nothing dispatched, not cancelled already)."""
        return not self.is_dispatched and self is not GoodsOutStatus.CANCELLED

    @property
    def is_editable(self) -> bool:
        """Clarus still accepts line and address changes (DRAFT or PENDING)."""
        return self in (GoodsOutStatus.DRAFT, GoodsOutStatus.PENDING)


EDITABLE_STATUSES = frozenset(s for s in GoodsOutStatus if s.is_editable)
"""Statuses in which Clarus still accepts line and address changes."""
FINAL_STATUSES = frozenset(s for s in GoodsOutStatus if s.is_final)
DISPATCHED_STATUSES = frozenset(s for s in GoodsOutStatus if s.is_dispatched)
"""Statuses after goods left the warehouse (a cancellation comes too late)."""
FINAL_STATUS_IDS = sorted(int(s) for s in FINAL_STATUSES)
"""`orders.clarus_status` values of a finished goods out (SQL parameter)."""
OPEN_STATUSES = frozenset(GoodsOutStatus) - FINAL_STATUSES

# Webhook ("automation") identity headers. Clarus does not sign webhooks.
HEADER_DOMAIN = "X-ClarusWMS-Domain"
HEADER_API_DOMAIN = "X-ClarusWMS-API-Domain"
HEADER_SUBDOMAIN = "X-ClarusWMS-Subdomain"
HEADER_AUTOMATION_ID = "X-ClarusWMS-Automation-ID"
HEADER_INTEGRATION_ID = "X-ClarusWMS-Integration-ID"
WEBHOOK_HEADERS = (HEADER_DOMAIN, HEADER_API_DOMAIN, HEADER_SUBDOMAIN, HEADER_AUTOMATION_ID, HEADER_INTEGRATION_ID)

# (resource_name, event) pairs the sandbox emits, named as in Clarus automations.
WEBHOOK_EVENTS = (
    ("goods_out", "created"),
    ("goods_out", "updated"),  # any status change short of completion / cancellation
    ("goods_out", "completed"),
    ("goods_out", "cancelled"),
    ("stock_balance", "updated"),
    ("goods_in", "completed"),
)
"""Webhook body: ``{"resource_name": ..., "event": ..., "data": <full record>}``.

The record has the shape of the matching GraphQL node (ids as strings): a goods out with
`goods_out_status {id code name}`, `lines`, `shipments` (with `packages` and tracking),
`delivery_address`; a stock balance with `product`, `account`, `warehouse`, `available`,
`allocated`, ...; a goods in receipt with `lines` and received quantities.
"""

# Error symbols in Clarus's `{"errors": [{"code", "symbol", "details", "source"}]}` body.
ERROR_CODES: dict[str, int] = {
    "validation_failed": 1000,  # body does not conform to the API schema
    "taken": 1001,  # unique value already used (goods out reference, product SKU)
    "not_found": 1002,  # a referenced record does not exist
    "invalid_state": 1003,  # not allowed in the record's current status
    "blank": 1004,  # required business field missing
    "invalid": 1005,  # value present but not acceptable
    "bad_request": 1006,  # body is not JSON
}


def clarus_datetime(value: datetime | str | None) -> str | None:
    """ISO 8601 in UTC with a `Z`, as Clarus writes date-times."""
    if value is None or isinstance(value, str):
        return value
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    timespec = "milliseconds" if value.microsecond else "seconds"
    return value.astimezone(timezone.utc).isoformat(timespec=timespec).replace("+00:00", "Z")


def _int_id(value: str | int, what: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a Clarus id (digits), got {value!r}") from None


def goods_out_line_add(product_id: str | int, quantity: float, **attributes: Any) -> dict:
    """A `lines_changes` ADD entry; put our line id in `external_system_reference1`."""
    return {"type": "ADD", "attributes": {"product_id": _int_id(product_id, "product_id"), "order_quantity": quantity, **attributes}}


def goods_out_line_update(line_id: str | int, **attributes: Any) -> dict:
    return {"type": "UPDATE", "id": _int_id(line_id, "line id"), "attributes": attributes}


def goods_out_line_destroy(line_id: str | int) -> dict:
    return {"type": "DESTROY", "id": _int_id(line_id, "line id")}


def address_relationship(address: Mapping[str, Any]) -> dict:
    """`relationships.address` for a delivery address (keys as Clarus's `Address` schema)."""
    return {"address": {"data": {"type": "addresses", "attributes": {k: v for k, v in address.items() if v is not None}}}}


def build_goods_out_body(
    *,
    reference: str,
    account_id: str | int,
    expected_date_of_dispatch: datetime | str,
    lines: Iterable[Mapping[str, Any]] = (),
    address: Mapping[str, Any] | None = None,
    warehouse_id: str | int | None = None,
    carrier_id: str | int | None = None,
    carrier_service_id: str | int | None = None,
    goods_out_type: str = "sales_order",
    external_system_reference1: str | None = None,
    lines_changes: Iterable[Mapping[str, Any]] | None = None,
    **attributes: Any,
) -> dict:
    """JSON:API body for POST /api/goods_outs (or a full-header PATCH).

    `lines` are ``{"product_id", "quantity", ...extra line attributes}`` and become ADD
    changes; pass `lines_changes` instead for UPDATE/DESTROY on an existing order.
    """
    attrs: dict[str, Any] = {
        "goods_out_type": goods_out_type.lower(),
        "account_id": _int_id(account_id, "account_id"),
        "reference": reference,
        "expected_date_of_dispatch": clarus_datetime(expected_date_of_dispatch),
    }
    if warehouse_id is not None:
        attrs["warehouse_id"] = _int_id(warehouse_id, "warehouse_id")
    if carrier_id is not None:
        attrs["carrier_id"] = _int_id(carrier_id, "carrier_id")
    if carrier_service_id is not None:
        attrs["carrier_service_id"] = _int_id(carrier_service_id, "carrier_service_id")
    if external_system_reference1 is not None:
        attrs["external_system_reference1"] = external_system_reference1
    attrs.update({k: v for k, v in attributes.items() if v is not None})
    changes = [dict(c) for c in lines_changes] if lines_changes is not None else []
    for line in lines:
        extra = {k: v for k, v in line.items() if k not in ("product_id", "quantity") and v is not None}
        changes.append(goods_out_line_add(line["product_id"], line["quantity"], **extra))
    if changes:
        attrs["lines_changes"] = changes
    data: dict[str, Any] = {"type": "goods_outs", "attributes": attrs}
    if address is not None:
        data["relationships"] = address_relationship(address)
    return {"data": data}


def build_product_body(attributes: Mapping[str, Any]) -> dict:
    """JSON:API body for POST /api/products or PATCH /api/products/{id}."""
    return {"data": {"type": "products", "attributes": dict(attributes)}}


def clarus_record(payload: Any) -> Any:
    """The record a Clarus webhook carries: its `data` member, or the body itself."""
    if isinstance(payload, dict) and isinstance(payload.get("data"), dict):
        return payload["data"]
    return payload
