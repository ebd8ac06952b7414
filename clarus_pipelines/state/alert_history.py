"""What the alert history says: reads and retention of `alert_messages`, `alert_deliveries`
and `alerts`, for health, the dashboard and the retention job. Sending lives in
`clarus_pipelines.alerts`."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import duckdb


def channel_status(con: duckdb.DuckDBPyConnection, since: datetime) -> list[dict[str, Any]]:
    """Per alert channel: last message sent, messages sent and failed since a time, waiting alerts."""
    cur = con.execute(
        "WITH m AS (SELECT channel, max(finished_at) FILTER (WHERE status = 'sent') AS last_sent,"
        "   max(finished_at) FILTER (WHERE status = 'failed') AS last_failed,"
        "   count(*) FILTER (WHERE status = 'sent' AND finished_at >= ?) AS sent,"
        "   count(*) FILTER (WHERE status = 'failed' AND finished_at >= ?) AS failed,"
        "   arg_max(error, finished_at) FILTER (WHERE status = 'failed') AS last_error FROM alert_messages GROUP BY channel),"
        " w AS (SELECT channel, count(*) AS waiting FROM alert_deliveries WHERE status IN ('pending', 'sending') GROUP BY channel)"
        " SELECT coalesce(m.channel, w.channel) AS channel, m.last_sent, m.last_failed, coalesce(m.sent, 0) AS sent,"
        " coalesce(m.failed, 0) AS failed, m.last_error, coalesce(w.waiting, 0) AS waiting"
        " FROM m FULL OUTER JOIN w USING (channel) ORDER BY channel",
        [since, since],
    )
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row)) for row in cur.fetchall()]


def prune_alert_history(con: duckdb.DuckDBPyConnection, now: datetime, keep: timedelta) -> None:
    """Forget alert history older than `keep`, except what dedupes a still-open exception."""
    cutoff = now - keep
    con.execute("DELETE FROM alert_messages WHERE finished_at < ?", [cutoff])
    con.execute("DELETE FROM alert_deliveries WHERE status IN ('sent', 'dropped') AND updated_at < ?", [cutoff])
    con.execute(
        "DELETE FROM alerts a WHERE a.due_at < ?"
        " AND NOT EXISTS (SELECT 1 FROM alert_deliveries d WHERE d.code = a.code AND d.entity_id = a.entity_id"
        "   AND d.reason = a.reason AND d.episode_started_at = a.episode_started_at)"
        " AND NOT EXISTS (SELECT 1 FROM exceptions e WHERE e.code = a.code AND e.entity_id = a.entity_id"
        "   AND e.status <> 'resolved')",
        [cutoff],
    )
