"""Step 3 of the orders flow, re-check: held orders read again from the channel.

Every `timings.recheck_held_minutes` (and at once when the item master changes), read each
held order again from Shopify (the source may have been fixed without a webhook reaching
us), re-validate it against the current item master and ship-method table, release it when
complete, and raise its hold to the owner once it has been held past
`timings.held_alert_minutes`. A read is not a write: no intent is recorded for it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import polars as pl

from clarus_pipelines.domain import order_flow as flow
from clarus_pipelines.domain.order_flow import OrderStatus
from clarus_pipelines.domain.order_intake import intake_batch, revalidate
from clarus_pipelines.domain.ports import ConnectorError, OrderChannel
from clarus_pipelines.exception_queue import utcnow
from clarus_pipelines.policies import Policies
from clarus_pipelines.state import StateStore

log = logging.getLogger(__name__)


@dataclass
class RecheckReport:
    held: int = 0
    fetched: int = 0
    fetch_failed: int = 0
    released: int = 0
    still_held: int = 0
    raised: int = 0


def recheck_held_orders(store: StateStore, policies: Policies, *, shopify: OrderChannel,
                        now: datetime | None = None, limit: int = 500) -> RecheckReport:
    """Re-read held orders from Shopify, re-validate them, release the complete ones."""
    now = now or utcnow()
    report = RecheckReport()
    with store.read() as con:
        held = flow.frame(
            con, "SELECT order_id FROM orders WHERE status = 'HELD' ORDER BY held_since, order_id LIMIT ?", [limit]
        )["order_id"].to_list()
    report.held = len(held)
    if not held:
        return report
    fetched: list[dict[str, Any]] = []
    for order_id in held:
        try:
            order = shopify.get_order(order_id)
        except ConnectorError as exc:
            report.fetch_failed += 1
            log.warning("re-check of held order %s: Shopify read failed: %s", order_id, exc)
            continue
        if order is not None:
            fetched.append(order)
    report.fetched = len(fetched)
    with store.write() as con:
        if fetched:
            landed = pl.DataFrame(
                {
                    "landing_id": [f"recheck:{o.get('id')}:{now.isoformat()}" for o in fetched],
                    "topic": ["orders/recheck"] * len(fetched),
                    "received_at": [now] * len(fetched),
                    "payload": [json.dumps(o) for o in fetched],
                },
                schema={"landing_id": pl.Utf8, "topic": pl.Utf8, "received_at": pl.Datetime, "payload": pl.Utf8},
            )
            intake_batch(con, policies, landed, now=now, record_landings=False, sync_holds=False)
        # Also re-validate unchanged orders: the item master or the ship-method table may be fixed.
        _, transitions = revalidate(con, policies, held, now=now, cause="held re-check")
        outcome = flow.sync_hold_exceptions(con, policies, now=now)
        states = flow.frame(con, "SELECT status, count(*) AS n FROM orders WHERE order_id IN (SELECT unnest(?::VARCHAR[])) GROUP BY status", [held])
    counts = dict(zip(states["status"].to_list(), states["n"].to_list()))
    report.still_held = counts.get(OrderStatus.HELD.value, 0)
    report.released = counts.get(OrderStatus.READY.value, 0) + counts.get(OrderStatus.SENT_TO_ERP.value, 0)
    report.raised = sum(1 for per_code in outcome.values() for v in per_code.values() if v in ("raised", "reopened"))
    return report
