"""`clarus-pipelines check-config`: validate settings and policies before anything runs."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pydantic import ValidationError

from clarus_pipelines.commands.output import fail
from clarus_pipelines.settings import ConfigError, Settings, load_policies


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        help="policies YAML to check (default: $CLARUS_PIPELINES_CONFIG; not set is an error)",
    )
    parser.add_argument(
        "--require-secrets",
        action="store_true",
        help="also fail when a secret the receiver and connectors need is not set in the environment, "
        "or a webhook secret is too weak (under 16 characters or little variety)",
    )


REQUIRED_SECRETS = (
    "CLARUS_CLIENT_ID", "CLARUS_CLIENT_SECRET", "CLARUS_WEBHOOK_TOKEN", "SHOPIFY_ACCESS_TOKEN",
    "SHOPIFY_WEBHOOK_SECRET", "NETSUITE_WEBHOOK_SECRET",
)  # plus what the chosen NETSUITE_AUTH_METHOD needs (Settings.netsuite_missing_credentials)


# --- weak webhook secrets (issue 12) ---
# The secrets that guard our own door: we choose them (Shopify's is its app secret), so
# they must be long and random. Vendor-issued credentials are not judged here.
DOOR_SECRETS = ("CLARUS_WEBHOOK_TOKEN", "SHOPIFY_WEBHOOK_SECRET", "NETSUITE_WEBHOOK_SECRET")
MIN_SECRET_LENGTH = 16
MIN_DISTINCT_CHARACTERS = 8


def weak_secret_reason(value: str) -> str | None:
    """Why a webhook secret is too weak to guard the receiver, or None. Never echoes the value."""
    if len(value) < MIN_SECRET_LENGTH:
        return f"too weak: shorter than {MIN_SECRET_LENGTH} characters (use e.g. 32 random characters)"
    if len(set(value)) < MIN_DISTINCT_CHARACTERS:
        return f"too weak: fewer than {MIN_DISTINCT_CHARACTERS} different characters (use a random value)"
    return None


def run(args: argparse.Namespace) -> int:
    try:
        settings = Settings()
    except ValidationError as exc:
        problems = [f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in exc.errors()]
        return fail("check-config", "environment: " + "; ".join(problems), code=1, indent=None)
    path = args.config or settings.policies_file
    try:
        path = args.config or settings.require_policies_file()
        policies = load_policies(path)
    except ConfigError as exc:
        return fail("check-config", f"invalid config: {exc}", code=1, indent=None, config=str(path) if path else None)
    missing: list[str] = []
    weak: list[str] = []
    netsuite_missing = settings.netsuite_missing_credentials()
    if args.require_secrets:
        fields = {f.validation_alias: name for name, f in Settings.model_fields.items()}
        missing = [env for env in REQUIRED_SECRETS if getattr(settings, fields[env]) is None] + netsuite_missing
        for env in missing:
            print(f"environment: {env}: not set", file=sys.stderr)
        for env in DOOR_SECRETS:
            secret = getattr(settings, fields[env])
            reason = weak_secret_reason(secret.get_secret_value()) if secret is not None else None
            if reason:
                weak.append(env)
                print(f"environment: {env}: {reason}", file=sys.stderr)
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
        "weak_secrets": weak,
        "ok": not missing and not weak,
    }
    print(json.dumps(summary))
    return 0 if summary["ok"] else 1
