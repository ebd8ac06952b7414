"""`clarus-pipelines receiver`: serve the webhook receiver with uvicorn."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Any

import uvicorn

from clarus_pipelines.receiver.app import DEFAULT_MAX_BODY_BYTES, MAX_BODY_ENV, create_app
from clarus_pipelines.settings import Settings

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8700, help="port to bind (default 8700)")
    parser.add_argument(
        "--landing-dir", type=Path, default=None,
        help="where accepted webhooks land (default $CLARUS_PIPELINES_LANDING_DIR or $CLARUS_PIPELINES_HOME/landing)",
    )
    parser.add_argument(
        "--workers", type=int, default=1,
        help="worker processes (default 1); landings stay exactly-once and ordered across workers",
    )
    parser.add_argument(
        "--max-body-bytes", type=int, default=int(os.environ.get(MAX_BODY_ENV, DEFAULT_MAX_BODY_BYTES)),
        help=f"largest accepted body; bigger posts get 413 (default {DEFAULT_MAX_BODY_BYTES})",
    )
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def uvicorn_options(host: str, port: int, log_level: str = "info") -> dict[str, Any]:
    """Server settings shared by the receiver and the benchmark's bare endpoint."""
    return dict(
        host=host,
        port=port,
        log_level=log_level,
        log_config=None,  # keep our stderr handler (with its personal-data filter)
        access_log=False,  # the Clarus URL carries a secret token: never log request paths
        server_header=False,
        backlog=2048,
        timeout_keep_alive=15,
        timeout_graceful_shutdown=10,
    )


def run(args: argparse.Namespace) -> int:
    settings = Settings()
    landing_dir = (args.landing_dir or settings.landing_path).resolve()
    landing_dir.mkdir(parents=True, exist_ok=True)
    options = uvicorn_options(args.host, args.port, args.log_level)
    log.info("receiver on http://%s:%d landing in %s (%d worker(s))", args.host, args.port, landing_dir, args.workers)
    if args.workers > 1:
        # Worker processes build the app themselves from the environment.
        os.environ["CLARUS_PIPELINES_LANDING_DIR"] = str(landing_dir)
        os.environ[MAX_BODY_ENV] = str(args.max_body_bytes)
        uvicorn.run("clarus_pipelines.receiver.app:create_app_from_env", factory=True, workers=args.workers, **options)
    else:
        app = create_app(landing_dir, settings=settings, max_body_bytes=args.max_body_bytes)
        uvicorn.run(app, **options)
    return 0
