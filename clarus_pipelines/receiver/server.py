"""How uvicorn serves the webhook receiver: bounded under slow or idle clients, graceful on SIGTERM.

`uvicorn_options` is shared by `clarus-pipelines receiver` (commands/receiver.py) and the
benchmark's bare endpoint; `GuardedH11Protocol` is module-level so worker processes load it.
"""

from __future__ import annotations

import asyncio
import gc
import os
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

DEFAULT_HEADER_TIMEOUT_S = 10.0
HEADER_TIMEOUT_ENV = "CLARUS_PIPELINES_RECEIVER_HEADER_TIMEOUT_S"
DEFAULT_MAX_CONNECTIONS = 256
DEFAULT_SHUTDOWN_TIMEOUT_S = 25.0  # above the body timeout; below Kubernetes' default 30 s grace period
METRICS_PORT_ENV = "CLARUS_PIPELINES_RECEIVER_METRICS_PORT"


class GuardedH11Protocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with a deadline for the request line and headers.

    uvicorn arms no timer on a new connection and re-arms nothing while headers trickle
    in, so idle or slow connections would stay open forever. Here every request's headers
    must be complete within `header_timeout_s` of the connection opening or of the
    previous response (keep-alive); otherwise the connection is closed. Module-level (and
    the timeout from the environment) so worker processes can load it.
    """

    header_timeout_s = float(os.environ.get(HEADER_TIMEOUT_ENV, DEFAULT_HEADER_TIMEOUT_S))
    _header_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_deadline()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self._arm_header_deadline()  # still waiting for a complete request head
        else:
            self._cancel_header_deadline()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.conn.their_state is h11.IDLE:
            self._arm_header_deadline(restart=True)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_deadline()
        super().connection_lost(exc)

    def _arm_header_deadline(self, restart: bool = False) -> None:
        if restart:
            self._cancel_header_deadline()
        if self._header_deadline is None:
            self._header_deadline = self.loop.call_later(self.header_timeout_s, self._headers_too_slow)

    def _cancel_header_deadline(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_too_slow(self) -> None:
        self._header_deadline = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()


def freeze_startup_heap() -> None:
    """Move every object alive after start-up (modules, settings, the app) out of the garbage
    collector's way, so each collection under load walks only what requests allocated.
    Call once, in the serving process, right before it serves."""
    gc.collect()
    gc.freeze()


def uvicorn_options(host: str, port: int, log_level: str = "info", *, header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S,
                    max_connections: int = DEFAULT_MAX_CONNECTIONS,
                    shutdown_timeout_s: float = DEFAULT_SHUTDOWN_TIMEOUT_S) -> dict[str, Any]:
    """Server settings shared by the receiver and the benchmark's bare endpoint.

    Bounded under slow or idle clients: headers within `header_timeout_s`, at most 16 KiB
    of them, at most `max_connections` served at once (more get 503 and retry), idle
    keep-alive connections closed after 5 s; the app bounds the body's size and time. On
    SIGTERM uvicorn stops listening and waits up to `shutdown_timeout_s` for requests in flight.
    """
    GuardedH11Protocol.header_timeout_s = header_timeout_s
    return dict(
        host=host,
        port=port,
        log_level=log_level,
        log_config=None,  # keep our stderr handler (with its personal-data filter)
        access_log=False,  # the Clarus URL carries a secret token: never log request paths
        server_header=False,
        backlog=2048,
        http=GuardedH11Protocol,
        h11_max_incomplete_event_size=16 * 1024,
        limit_concurrency=max_connections,
        timeout_keep_alive=5,
        timeout_graceful_shutdown=shutdown_timeout_s,
    )
