"""What the flows need of the systems they call, as the domain sees it.

Connectors (`clarus_pipelines.connectors`) implement these; a flow catches `ConnectorError`
and decides by `refused` whether a retry can ever pass.
"""

from __future__ import annotations

from typing import Any


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
