"""`clarus-pipelines audit`: read the three systems (read-only) and our state, report the gaps.

Writes the report (json, md or html) to stdout or `--out`, keeps it in state for the next
audit's trend, and exits 0 when there are no blockers, 1 when there are (2: bad arguments
or configuration).
"""

from __future__ import annotations

import argparse
import re
import sys
from datetime import timedelta
from pathlib import Path

from clarus_pipelines.settings import ConfigError, Settings, load_policies

_PERIOD = re.compile(r"^\s*(\d+)\s*([dhw])\s*$")
_UNITS = {"h": timedelta(hours=1), "d": timedelta(days=1), "w": timedelta(weeks=1)}


def parse_period(text: str) -> timedelta:
    """'30d', '12h', '2w' -> timedelta."""
    match = _PERIOD.match(text or "")
    if not match or int(match.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a period like 30d, 12h or 2w")
    return int(match.group(1)) * _UNITS[match.group(2)]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--since", type=parse_period, default=parse_period("30d"),
                        help="look-back period for orders, holds, refunds and timings (default 30d; h, d or w)")
    parser.add_argument("--format", choices=("html", "json", "md"), default="md", help="report format (default md)")
    parser.add_argument("--out", type=Path, help="write the report to this file instead of stdout")
    parser.add_argument("--config", type=Path, help="policies YAML (default: $CLARUS_PIPELINES_CONFIG)")
    parser.add_argument("--receiver-url", help="our receiver's public URL: webhook subscriptions must point at it")
    parser.add_argument("--no-keep", action="store_true", help="do not store this audit in state (no trend next time)")


def run(args: argparse.Namespace) -> int:
    from clarus_pipelines.audit import run_audit
    from clarus_pipelines.commands.output import fail
    from clarus_pipelines.audit.render import render
    from clarus_pipelines.exception_queue import utcnow
    from clarus_pipelines.state import StateStore

    settings = Settings()
    try:
        policies = load_policies(args.config or settings.require_policies_file())
    except ConfigError as exc:
        if args.format == "json" and not args.out:
            return fail("audit", f"invalid config: {exc}")
        print(f"audit: invalid config: {exc}", file=sys.stderr)
        return 2
    clients = connectors_from(settings)
    now = utcnow()
    try:
        report = run_audit(StateStore(settings.state_target), policies, now=now, since=now - args.since,
                           settings=settings, receiver_url=args.receiver_url, keep=not args.no_keep, **clients)
    finally:
        for client in clients.values():
            if client is not None:
                client.close()
    text = render(report, args.format)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")
        print(f"audit: {report['verdict']} ({report['blockers']} blocker(s), {report['warnings']} warning(s)); "
              f"report in {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0 if report["go_live"] else 1


def _secret(value) -> str | None:
    return value.get_secret_value() if value is not None else None


def connectors_from(settings: Settings) -> dict:
    """Read-only use of the three connectors, built from the environment; None for a system lacking credentials."""
    from clarus_pipelines.connectors.clarus import ClarusResource
    from clarus_pipelines.connectors.netsuite import NetSuiteResource
    from clarus_pipelines.connectors.shopify import ShopifyResource

    clients: dict = {"clarus": None, "shopify": None, "netsuite": None}
    if settings.clarus_client_id and settings.clarus_client_secret:
        clients["clarus"] = ClarusResource(base_url=settings.clarus_base_url, subdomain=settings.clarus_subdomain,
                                           client_id=settings.clarus_client_id,
                                           client_secret=_secret(settings.clarus_client_secret))
    if settings.shopify_access_token:
        clients["shopify"] = ShopifyResource(base_url=settings.shopify_base_url, api_version=settings.shopify_api_version,
                                             access_token=_secret(settings.shopify_access_token))
    if all((settings.netsuite_consumer_key, settings.netsuite_consumer_secret, settings.netsuite_token_id,
            settings.netsuite_token_secret)):
        clients["netsuite"] = NetSuiteResource(
            base_url=settings.netsuite_base_url, account_id=settings.netsuite_account_id,
            consumer_key=settings.netsuite_consumer_key, consumer_secret=_secret(settings.netsuite_consumer_secret),
            token_id=settings.netsuite_token_id, token_secret=_secret(settings.netsuite_token_secret))
    for system, client in clients.items():
        if client is None:
            print(f"audit: {system} credentials are not set; it is reported as not configured", file=sys.stderr)
    return clients
