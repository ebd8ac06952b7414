"""`clarus-pipelines receiver`: serve the webhook receiver with uvicorn.

Stops gracefully on SIGTERM or SIGINT: the listening socket closes at once (new connections
are refused), every request in flight is finished and answered (its webhook stored) within
`--shutdown-timeout`, then the process exits. Prometheus metrics are served on
`--metrics-port`, bound to loopback by default (see `receiver.metrics`). The server settings
live in `receiver.server`.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
from pathlib import Path

import uvicorn

from clarus_pipelines.receiver.app import (
    BODY_TIMEOUT_ENV, DEFAULT_BODY_TIMEOUT_S, DEFAULT_MAX_BODY_BYTES, MAX_BODY_ENV, create_app,
)
from clarus_pipelines.receiver.metrics import prepare_multiprocess_dir, serve_metrics
from clarus_pipelines.receiver.server import (
    DEFAULT_HEADER_TIMEOUT_S, DEFAULT_MAX_CONNECTIONS, DEFAULT_SHUTDOWN_TIMEOUT_S, HEADER_TIMEOUT_ENV, METRICS_PORT_ENV,
    freeze_startup_heap, uvicorn_options,
)
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
        freeze_startup_heap()
        uvicorn.run(app, **options)
    return 0
