"""`clarus-pipelines explain-refund FILE`: how a Shopify refund is classified, and why.

Prints one JSON object on stdout: `{"kind", "reasons": [...], "actions": [...], ...}`.
FILE is any Shopify refund document (a refunds/create webhook body, `{"refund": ...}`,
a refunds list, or an order with its refunds); `-` reads stdin. `--order` adds the
order's fulfilments, cancellation and tags; `--clarus-status` says where the goods out
is in Clarus (1..8), which settles whether the goods were dispatched.
On failure: `{"ok": false, "error": ...}` and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from clarus_pipelines.commands.output import emit, fail
from clarus_pipelines.domain.refunds import CLARUS_STATUS_NAMES, classify_refund, iter_refunds, order_context_from_shopify
from clarus_pipelines.policies import RefundRules

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE", help="Shopify refund JSON (or an order with refunds); '-' for stdin")
    parser.add_argument("--order", metavar="ORDER_FILE", help="the Shopify order JSON, for fulfilment/cancellation/tags")
    parser.add_argument("--refund-id", help="which refund, when the file holds several")
    parser.add_argument(
        "--clarus-status", type=int, choices=sorted(CLARUS_STATUS_NAMES),
        help="Clarus goods out status of the order (1 DRAFT .. 6 COMPLETED .. 8 CANCELLED)",
    )
    parser.add_argument("--policies", metavar="YAML", help="policies file (default: CLARUS_PIPELINES_CONFIG)")


def _read_json(name: str) -> Any:
    text = sys.stdin.read() if name == "-" else Path(name).read_text(encoding="utf-8")
    return json.loads(text)


def _policies(path: str | None):
    from clarus_pipelines.settings import ConfigError, get_policies, get_settings, load_policies

    try:
        return load_policies(path) if path else get_policies(get_settings())
    except ConfigError as exc:
        if path:
            raise
        log.warning("policies not loaded (%s); using default refund rules and timings", exc)
        return None


def run(args: argparse.Namespace) -> int:
    documents: dict[str, Any] = {}
    for role, name in (("refund", args.file), ("order", args.order)):
        if name is None:
            continue
        try:
            documents[role] = _read_json(name)
        except (OSError, json.JSONDecodeError) as exc:
            return fail("explain-refund", f"cannot read {role} file {name}: {exc}")
    document, order_document = documents["refund"], documents.get("order")
    pairs = iter_refunds(document)
    if args.refund_id:
        pairs = [(r, o) for r, o in pairs if str(r.get("id")) == args.refund_id]
    if not pairs:
        return fail("explain-refund", f"no Shopify refund found in {args.file}"
                    + (f" with id {args.refund_id}" if args.refund_id else ""))
    if len(pairs) > 1:
        ids = ", ".join(str(r.get("id")) for r, _ in pairs)
        return fail("explain-refund", f"{args.file} holds {len(pairs)} refunds ({ids}): choose one with --refund-id")
    refund, embedded_order = pairs[0]

    order = embedded_order
    if order_document is not None:
        order = order_document.get("order", order_document) if isinstance(order_document, dict) else None
    try:
        policies = _policies(args.policies)
    except Exception as exc:  # ConfigError names the offending key
        return fail("explain-refund", str(exc))
    context = None
    if order is not None or args.clarus_status is not None:
        context = order_context_from_shopify(order or {}, wms_status=args.clarus_status)

    result = classify_refund(
        refund,
        order=order,
        context=context,
        rules=policies.refund_rules if policies else RefundRules(),
        return_receipt_days=policies.timings.return_receipt_days if policies else 14,
        sku_rule=policies.sku_cleaning if policies else None,
    )
    log.info("refund %s on order %s classified %s", result.refund_id, result.order_id, result.kind.value)
    emit(result.explain())
    return 0
