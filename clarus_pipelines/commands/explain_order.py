"""`clarus-pipelines explain-order FILE_OR_ORDER_ID`: what the pipeline would do with an order now.

Prints one JSON object on stdout:

    {"status": "ready" | "held",
     "reasons": [{"code": ..., "message": ...}, ...],   # every problem, not only the first
     "goods_out": <the JSON:API body for Clarus> | null}

The order comes from a JSON file (a webhook body or a REST read, wrapped in {"order": ...}
or not) or, given an order id, from Shopify through the configured connector. Clarus
product ids and carrier ids come from the state database, exactly as the orders flow
sees them. On failure: `{"ok": false, "error": ...}` and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import logging
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from clarus_pipelines.commands.output import emit, fail
from clarus_pipelines.domain.explain import explain
from clarus_pipelines.logs import mask_pii
from clarus_pipelines.settings import Settings, get_settings, load_policies

log = logging.getLogger(__name__)


def _state_tables(settings: Settings):
    from clarus_pipelines.domain.order_flow import carriers_table, products_table
    from clarus_pipelines.state import StateStore

    store = StateStore(settings.state_target)
    with store.read() as con:
        return products_table(con), carriers_table(con)


def _load_order(source: str, settings: Settings) -> dict[str, Any]:
    path = Path(source)
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    if not source.strip().isdigit():
        raise FileNotFoundError(f"{source}: no such file, and not a Shopify order id")
    from clarus_pipelines.connectors.shopify import ShopifyResource

    if settings.shopify_access_token is None:
        raise LookupError("SHOPIFY_ACCESS_TOKEN is not set: cannot read the order from Shopify")
    shopify = ShopifyResource(
        base_url=settings.shopify_base_url, api_version=settings.shopify_api_version,
        access_token=settings.shopify_access_token.get_secret_value(),
    )
    try:
        order = shopify.get_order(source.strip())
    finally:
        shopify.close()
    if order is None:
        raise LookupError(f"Shopify has no order {source}")
    return order


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("order", metavar="FILE_OR_ORDER_ID", help="a Shopify order JSON file, or a Shopify order id")
    parser.add_argument(
        "--at", metavar="ISO_DATETIME", default=None,
        help="explain as of this time (sets the expected dispatch date); default now",
    )


def run(args: argparse.Namespace) -> int:
    settings = get_settings()
    try:
        policies = load_policies(settings.require_policies_file())
        order = _load_order(args.order, settings)
        products, carriers = _state_tables(settings)
        now = datetime.fromisoformat(args.at) if args.at else datetime.now(timezone.utc)
    except Exception as exc:  # a CLI answers with a message, not a traceback
        return fail("explain-order", str(exc))
    if not isinstance(order, dict):
        return fail("explain-order", f"{args.order} does not hold a JSON object")
    result = explain(order, policies=policies, products=products, carriers=carriers, now=now)
    log.info("explained order: status %s, %d reason(s)", result["status"], len(result["reasons"]))
    log.debug("order explained: %s", mask_pii(order))
    emit(result)
    return 0
