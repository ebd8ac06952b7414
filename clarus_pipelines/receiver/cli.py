"""`clarus-pipelines receiver`: serve the webhook receiver with uvicorn.

Stops gracefully on SIGTERM or SIGINT: the listening socket closes at once (new connections
are refused), every request in flight is finished and answered (its webhook stored) within
`--shutdown-timeout`, then the process exits. Prometheus metrics are served on
`--metrics-port`, bound to loopback by default (see `receiver.metrics`).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from clarus_pipelines.receiver.app import (
    BODY_TIMEOUT_ENV, DEFAULT_BODY_TIMEOUT_S, DEFAULT_MAX_BODY_BYTES, MAX_BODY_ENV, create_app,
)
from clarus_pipelines.receiver.metrics import prepare_multiprocess_dir, serve_metrics
from clarus_pipelines.settings import Settings, is_postgres_url

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8700, help="port to bind (default 8700)")
    parser.add_argument(
        "--landing-dir", type=Path, default=None,
        help="where accepted webhooks land (default $CLARUS_PIPELINES_LANDING_DIR or $CLARUS_PIPELINES_HOME/landing)",
    )
    parser.add_argument(
        "--state-url", default=None,
        help="postgresql://... : store webhooks in the PostgreSQL inbox instead of landing files (no local disk, "
        "any number of receivers side by side; default $CLARUS_PIPELINES_STATE_URL when it is a postgresql:// URL)",
    )
    parser.add_argument(
        "--workers", type=int, default=1,
        help="worker processes (default 1); landings stay exactly-once and ordered across workers",
    )
    parser.add_argument(
        "--max-body-bytes", type=int, default=int(os.environ.get(MAX_BODY_ENV, DEFAULT_MAX_BODY_BYTES)),
        help=f"largest accepted body; bigger posts get 413 (default {DEFAULT_MAX_BODY_BYTES})",
    )
    parser.add_argument("--header-timeout", type=float, default=DEFAULT_HEADER_TIMEOUT_S,
                        help="seconds a client has to send its request headers (default %(default)s)")
    parser.add_argument("--body-timeout", type=float, default=DEFAULT_BODY_TIMEOUT_S,
                        help="seconds a client has to send its body; slower gets 408 (default %(default)s)")
    parser.add_argument("--max-connections", type=int, default=DEFAULT_MAX_CONNECTIONS,
                        help="connections served at once; more get 503 (default %(default)s)")
    parser.add_argument("--shutdown-timeout", type=float, default=DEFAULT_SHUTDOWN_TIMEOUT_S,
                        help="on SIGTERM, seconds to finish the requests in flight before exiting (default "
                        "%(default)s; keep it above --body-timeout and below the orchestrator's kill grace period)")
    parser.add_argument("--metrics-port", type=int, default=_env_int(METRICS_PORT_ENV),
                        help=f"serve Prometheus /metrics on this port (default ${METRICS_PORT_ENV}; unset = no metrics)")
    parser.add_argument("--metrics-host", default="127.0.0.1",
                        help="interface for /metrics (default 127.0.0.1: unauthenticated, so keep it off public "
                        "interfaces; in a pod, bind the pod IP and let only Prometheus reach it)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def _env_int(name: str) -> int | None:
    value = os.environ.get(name, "").strip()
    return int(value) if value else None


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


def run(args: argparse.Namespace) -> int:
    settings = Settings()
    state_url = getattr(args, "state_url", None) or settings.inbox_url or ""
    if state_url and not is_postgres_url(state_url):
        raise SystemExit(f"--state-url must be a postgresql:// URL, not {state_url.split(':', 1)[0]}:...")
    landing_dir = (args.landing_dir or settings.landing_path).resolve()
    if not state_url:
        landing_dir.mkdir(parents=True, exist_ok=True)
    options = uvicorn_options(args.host, args.port, args.log_level, header_timeout_s=args.header_timeout,
                              max_connections=args.max_connections, shutdown_timeout_s=args.shutdown_timeout)
    where = "in the PostgreSQL webhook inbox" if state_url else f"landing in {landing_dir}"
    log.info("receiver on http://%s:%d %s (%d worker(s))", args.host, args.port, where, args.workers)
    if args.workers > 1:
        metrics_dir, own_dir = None, False
        if args.metrics_port is not None:  # workers write their counts to files; this process serves the sum
            metrics_dir, own_dir = prepare_multiprocess_dir()
            serve_metrics(args.metrics_host, args.metrics_port, multiprocess_mode=True)
            log.info("receiver metrics on http://%s:%d/metrics", args.metrics_host, args.metrics_port)
        # Worker processes build the app themselves from the environment.
        os.environ["CLARUS_PIPELINES_LANDING_DIR"] = str(landing_dir)
        if state_url:
            os.environ["CLARUS_PIPELINES_STATE_URL"] = state_url
        os.environ[MAX_BODY_ENV] = str(args.max_body_bytes)
        os.environ[BODY_TIMEOUT_ENV] = str(args.body_timeout)
        os.environ[HEADER_TIMEOUT_ENV] = str(args.header_timeout)
        try:
            uvicorn.run("clarus_pipelines.receiver.app:create_app_from_env", factory=True, workers=args.workers, **options)
        finally:
            if own_dir and metrics_dir is not None:
                shutil.rmtree(metrics_dir, ignore_errors=True)
    else:
        app = create_app(landing_dir, settings=settings, max_body_bytes=args.max_body_bytes, body_timeout_s=args.body_timeout,
                         state_url=state_url)
        if args.metrics_port is not None:
            serve_metrics(args.metrics_host, args.metrics_port, app.state.metrics.registry)
            log.info("receiver metrics on http://%s:%d/metrics", args.metrics_host, args.metrics_port)
        uvicorn.run(app, **options)
    return 0
