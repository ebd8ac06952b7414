"""How fast the event path is, measured from the state store: what `simulate` reports and
`bench/latency.py` prints.

- to WMS: from the first landing of a Shopify order's webhook (our receive time) to the
  order's first ACKNOWLEDGED event (Clarus confirmed the goods out).
- to channel: from the landing of the Clarus goods out event that reported a shipment (the
  last one carrying dispatched shipments before we recorded it; or, for one only a sweep
  found, when we first saw it) to the shipment's CHANNEL_CONFIRMED event (the Shopify
  fulfilment read back with its tracking). Until issue 13 the clock started at the goods
  out's first `goods_out/updated` (allocation, picking), so it counted the warehouse's
  picking time too.

Both in seconds, p50 / p95 / max over the orders (shipments) that completed the interval;
those still under way are counted as `pending` (held, cancelled and rejected orders are
not under way: they wait for a person, not for us).
"""

from __future__ import annotations

from typing import Any

import duckdb

from clarus_pipelines.domain.dispatch import DISPATCH_TOPICS
from clarus_pipelines.domain.order_flow import ORDER_TOPICS

TO_WMS_SQL = """
    WITH landed AS (
        SELECT entity_id AS order_id, min(received_at) AS landed_at FROM landed_events
        WHERE source = 'shopify' AND topic IN (SELECT unnest(?)) AND via = 'webhook' AND entity_id IS NOT NULL
        GROUP BY ALL
    ), acknowledged AS (
        SELECT order_id, min(occurred_at) AS done_at FROM order_events WHERE state = 'ACKNOWLEDGED' GROUP BY ALL
    )
    SELECT epoch(a.done_at - l.landed_at) AS seconds
    FROM landed l JOIN orders o USING (order_id) LEFT JOIN acknowledged a USING (order_id)
    WHERE a.done_at IS NOT NULL OR o.status NOT IN ('HELD', 'CANCELLED', 'WMS_REJECTED')  -- held ones are not late
"""

TO_CHANNEL_SQL = """
    WITH carried AS (  -- landed goods out events that carried dispatched shipments (not mere status updates)
        SELECT e.entity_id AS goods_out_id, e.received_at AS landed_at
        FROM landed_events e JOIN dispatch_landings d USING (landing_id)
        WHERE e.source = 'clarus' AND e.topic IN (SELECT unnest(?)) AND d.outcome <> 'no_shipments'
    ), confirmed AS (
        SELECT json_extract_string(details, '$.shipment_id') AS shipment_id, min(occurred_at) AS done_at
        FROM order_events WHERE state = 'CHANNEL_CONFIRMED' GROUP BY ALL
    )
    SELECT epoch(c.done_at - coalesce(
        (SELECT max(r.landed_at) FROM carried r
         WHERE r.goods_out_id = s.clarus_goods_out_id AND r.landed_at <= s.first_seen_at),  -- the event that brought it
        s.first_seen_at)) AS seconds
    FROM shipments s LEFT JOIN confirmed c USING (shipment_id)
"""


def _summary(seconds: list[float | None]) -> dict[str, Any]:
    done = sorted(s for s in seconds if s is not None)
    if not done:
        return {"count": 0, "pending": len(seconds), "p50_s": None, "p95_s": None, "max_s": None}

    def quantile(q: float) -> float:  # nearest rank
        return round(done[min(len(done) - 1, max(0, int(round(q * len(done) + 0.5)) - 1))], 1)

    return {"count": len(done), "pending": len(seconds) - len(done), "p50_s": quantile(0.50),
            "p95_s": quantile(0.95), "max_s": round(done[-1], 1)}


def latency_figures(con: duckdb.DuckDBPyConnection) -> dict[str, Any]:
    """p50 / p95 / max seconds of both intervals (see the module docstring)."""
    to_wms = [r[0] for r in con.execute(TO_WMS_SQL, [list(ORDER_TOPICS)]).fetchall()]
    to_channel = [r[0] for r in con.execute(TO_CHANNEL_SQL, [list(DISPATCH_TOPICS)]).fetchall()]
    return {"to_wms": _summary(to_wms), "to_channel": _summary(to_channel)}


def runs_per_order(runs: int, orders: int) -> float | None:
    return round(runs / orders, 2) if orders else None
