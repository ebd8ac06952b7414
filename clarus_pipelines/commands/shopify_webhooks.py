"""`clarus-pipelines shopify-webhooks sync`: make the shop's webhook subscriptions match what we consume.

The plan (`plan_sync`) comes from `clarus_pipelines.shopify_webhooks`; this program reads the
shop's subscriptions, applies the plan (or only prints it with `--dry-run`) and prints JSON.
"""

from __future__ import annotations

import argparse
import json
import sys

from clarus_pipelines.shopify_webhooks import plan_sync, receiver_webhook_url


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["sync"], help="sync: make the shop's subscriptions match what we consume")
    parser.add_argument("--receiver-url", required=True,
                        help="the receiver's public base URL as Shopify reaches it, e.g. https://hooks.example.com")
    parser.add_argument("--dry-run", action="store_true", help="print the difference, change nothing")


def run(args: argparse.Namespace) -> int:
    from clarus_pipelines.connectors.http import ConnectorError
    from clarus_pipelines.connectors.shopify import ShopifyResource
    from clarus_pipelines.settings import Settings

    settings = Settings()
    if settings.shopify_access_token is None:
        print("environment: SHOPIFY_ACCESS_TOKEN: not set", file=sys.stderr)
        return 1
    shopify = ShopifyResource(base_url=settings.shopify_base_url, api_version=settings.shopify_api_version,
                              access_token=settings.shopify_access_token.get_secret_value())
    uri = receiver_webhook_url(args.receiver_url)
    try:
        plan = plan_sync(shopify.list_webhook_subscriptions(), uri)
        created, deleted = [], []
        if not args.dry_run:
            for sub in plan.delete:
                shopify.delete_webhook_subscription(sub["id"])
                deleted.append(sub)
            for topic in plan.create:
                created.append(shopify.create_webhook_subscription(topic, uri))
    except ConnectorError as exc:
        print(f"shopify-webhooks: {exc}", file=sys.stderr)
        return 1
    finally:
        shopify.close()
    print(json.dumps({
        "uri": uri, "dry_run": bool(args.dry_run),
        "create": plan.create, "delete": [{"id": s["id"], "topic": s["topic"]} for s in plan.delete],
        "unchanged": [s["topic"] for s in plan.keep],
        "created": [c["id"] for c in created], "deleted": [d["id"] for d in deleted],
    }))
    return 0
