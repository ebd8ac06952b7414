"""What the flows need of the systems they call, as the domain sees it.

Connectors (`clarus_pipelines.connectors`) implement these; a flow catches `ConnectorError`
and decides by `refused` whether a retry can ever pass.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol


class ConnectorError(RuntimeError):
    """A call failed for good (after retries, or with a non-retryable answer)."""

    def __init__(self, system: str, message: str, status: int | None = None, body: Any = None):
        super().__init__(f"{system}: {message}")
        self.system = system
        self.status = status
        self.body = body

    @property
    def refused(self) -> bool:
        """The system refused this request (a 4xx about the data): a retry will not pass.
        Authentication, a missing record, a timeout or throttling may pass later."""
        return self.status is not None and 400 <= self.status < 500 and self.status not in (401, 404, 408, 429)


def refusal_text(exc: ConnectorError) -> str:
    """A refusal as people read it: the system's own code and message when it gave them."""
    code = getattr(exc, "code", None) or getattr(exc, "symbol", None) or exc.status
    message = getattr(exc, "message", None) or getattr(exc, "detail", None) or str(exc)
    return f"{code} {message}"


# ---------------------------------------------------------------- the orders flow's ports


class OrderChannel(Protocol):
    """The sales channel (Shopify), as the orders flow reads it: `ShopifyResource`."""

    def get_order(self, order_id: int | str) -> dict[str, Any] | None: ...


class Warehouse(Protocol):
    """The warehouse (Clarus goods outs), as the orders and refund flows use it: `ClarusResource`.
    Writes are idempotent per our reference; a refusal is a `ConnectorError` with `refused`."""

    def get_goods_out(self, goods_out_id: str | int) -> dict | None: ...

    def find_goods_out_by_reference(self, reference: str) -> dict | None: ...

    def ensure_goods_out(self, body: Mapping[str, Any]) -> tuple[str, bool]: ...

    def update_goods_out(self, goods_out_id: str | int, body: Mapping[str, Any]) -> dict: ...

    def cancel_goods_out(self, goods_out_id: str | int) -> dict: ...

    def carrier_service_ids(self, *, refresh: bool = False) -> dict[tuple[str, str], tuple[str, str]]: ...


class Erp(Protocol):
    """The ERP (NetSuite sales orders), as the orders flow uses it: `NetSuiteResource`.
    Writes are idempotent per the Shopify order id (the sales order's externalId)."""

    def ensure_sales_order(self, external_id: str, body: Mapping[str, Any]) -> tuple[str, bool]: ...

    def sync_sales_order(self, so_id: str, wanted_lines: Iterable[Mapping[str, Any]],
                         shipping_address: Mapping[str, Any] | None = None) -> dict: ...

    def close_open_lines(self, so_id: str) -> list[int]: ...
