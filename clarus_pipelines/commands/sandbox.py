"""`clarus-pipelines sandbox`: serve the Clarus, Shopify and NetSuite sandboxes until stopped.

Prints `{"clarus": url, "shopify": url, "netsuite": url, ...}` as one JSON line on stdout
once all three accept connections, then serves until Ctrl-C or SIGTERM. Credentials come
from the same environment variables the connectors read (see `SandboxSecrets`).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading

from clarus_pipelines.settings import SANDBOX_POLICIES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    parser.add_argument("--clarus-port", type=int, default=8701, help="Clarus sandbox port (default 8701; 0 = any free port)")
    parser.add_argument("--shopify-port", type=int, default=8702, help="Shopify sandbox port (default 8702)")
    parser.add_argument("--netsuite-port", type=int, default=8703, help="NetSuite sandbox port (default 8703)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the catalogue, traffic and fault injection (default 0)")
    parser.add_argument("--faults", choices=["none", "light", "heavy"], default="none", help="fault injection level (default none)")
    parser.add_argument("--receiver-url", default=None, help="webhook receiver base URL, e.g. http://127.0.0.1:8700 (default: no webhooks)")
    parser.add_argument("--orders-per-minute", type=float, default=0.0, help="generated Shopify orders per minute (default 0: no traffic)")
    parser.add_argument("--netsuite-commit-delay", type=float, default=30.0, help="seconds until NetSuite commits a new sales order (default 30)")
    parser.add_argument("--clarus-dispatch-after", type=float, default=120.0, help="seconds from goods out to dispatch in Clarus (default 120)")


def run(args: argparse.Namespace) -> int:
    from clarus_pipelines.sandbox.server import SandboxConfigError, SandboxSecrets, start_sandbox
    from clarus_pipelines.settings import ConfigError

    try:
        secrets = SandboxSecrets.from_env()
    except SandboxConfigError as exc:
        print(f"clarus-pipelines sandbox: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()

    def _on_signal(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    try:
        handle = start_sandbox(
            host=args.host, ports=(args.clarus_port, args.shopify_port, args.netsuite_port), seed=args.seed,
            faults=args.faults, receiver_url=args.receiver_url, secrets=secrets,
            traffic_rate_per_min=args.orders_per_minute,
            policies_path=os.environ.get("CLARUS_PIPELINES_CONFIG") or SANDBOX_POLICIES,
            netsuite_account_id=os.environ.get("NETSUITE_ACCOUNT_ID") or "SANDBOX",
            netsuite_commit_delay_s=args.netsuite_commit_delay, clarus_dispatch_after_s=args.clarus_dispatch_after,
        )
    except (OSError, RuntimeError, ConfigError) as exc:
        print(f"clarus-pipelines sandbox: could not start: {exc}", file=sys.stderr)
        return 1
    try:
        print(json.dumps({**handle.urls(), "faults": args.faults, "seed": args.seed,
                          "orders_per_minute": args.orders_per_minute}), flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        handle.stop()
    return 0
