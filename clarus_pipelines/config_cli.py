"""`clarus-pipelines check-config`: validate settings and policies before anything runs."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pydantic import ValidationError

from clarus_pipelines.settings import ConfigError, Settings, load_policies


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        help="policies YAML to check (default: $CLARUS_PIPELINES_CONFIG or the shipped config/sandbox.yaml)",
    )
    parser.add_argument(
        "--require-secrets",
        action="store_true",
        help="also fail when a secret the receiver and connectors need is not set in the environment",
    )


REQUIRED_SECRETS = (
    "CLARUS_CLIENT_ID", "CLARUS_CLIENT_SECRET", "CLARUS_WEBHOOK_TOKEN", "SHOPIFY_ACCESS_TOKEN",
    "SHOPIFY_WEBHOOK_SECRET", "NETSUITE_WEBHOOK_SECRET",
)  # plus what the chosen NETSUITE_AUTH_METHOD needs (Settings.netsuite_missing_credentials)


def run(args: argparse.Namespace) -> int:
    try:
        settings = Settings()
    except ValidationError as exc:
        for err in exc.errors():
            print(f"environment: {'.'.join(map(str, err['loc']))}: {err['msg']}", file=sys.stderr)
        return 1
    path = args.config or settings.policies_file
    try:
        policies = load_policies(path)
    except ConfigError as exc:
        print(f"invalid config: {exc}", file=sys.stderr)
        return 1
    missing = []
    netsuite_missing = settings.netsuite_missing_credentials()
    if args.require_secrets:
        fields = {f.validation_alias: name for name, f in Settings.model_fields.items()}
        missing = [env for env in REQUIRED_SECRETS if getattr(settings, fields[env]) is None] + netsuite_missing
        for env in missing:
            print(f"environment: {env}: not set", file=sys.stderr)
    elif netsuite_missing:
        print(f"environment: NetSuite auth {settings.netsuite_auth_method} still lacks "
              + ", ".join(netsuite_missing), file=sys.stderr)
    summary = {
        "config": str(path),
        "ship_methods": len(policies.ship_methods),
        "sku_buffers": len(policies.stock.buffers),
        "owners": sorted(policies.owners),
        "shopify_api_version": settings.shopify_api_version,
        "netsuite_auth_method": settings.netsuite_auth_method,
        "netsuite_auth_missing": netsuite_missing,
        "missing_secrets": missing,
        "ok": not missing,
    }
    print(json.dumps(summary))
    return 0 if not missing else 1
