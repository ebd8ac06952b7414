"""What the orders flow would do with one Shopify order now: ready or held, every reason, and
the goods out body it would send. The same batch functions as the flow do the work; the
`explain-order` command (`clarus_pipelines.commands.explain_order`) prints it."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from clarus_pipelines.domain.goods_out import body_dicts, build_goods_outs
from clarus_pipelines.domain.orders import parse_orders, products_frame, validate_orders
from clarus_pipelines.policies import Policies


def explain(
    order: dict[str, Any],
    *,
    policies: Policies,
    products: Any,
    carriers: Any = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The verdict for one Shopify order: status, every reason, and the goods out body if ready."""
    parsed = parse_orders([order], policies.sku_cleaning)
    if parsed.orders["order_id"][0] is None:
        return {
            "status": "held",
            "reasons": [{"code": "ORDER_INCOMPLETE", "message": "payload has no order id: not a Shopify order"}],
            "goods_out": None,
        }
    verdicts = validate_orders(parsed, products=products_frame(products), policies=policies)
    order_id = parsed.orders["order_id"][0]
    status = verdicts.orders["status"][0]
    goods_out = None
    if status == "ready":
        bodies = body_dicts(
            build_goods_outs(verdicts, policies=policies, now=now or datetime.now(timezone.utc), carriers=carriers)
        )
        goods_out = bodies.get(order_id)
    return {"status": status, "reasons": verdicts.reasons_for(order_id), "goods_out": goods_out}
