"""The alerts sensor: tells owners about new and SLA-breaching exceptions, every minute.

Each evaluation runs `clarus_pipelines.alerts.dispatch_alerts`: alerts now due are
recorded once (a re-evaluation never repeats one), due messages go out on each owner's
channels (digests when their window closes), failures are retried with backoff and a
channel that keeps failing raises CONNECTOR_FAILING (cleared when it delivers again).
It launches no runs: the skip reason says in words what was sent, what is waiting and
which channel is failing. The JSON cursor keeps the last evaluation, the last time
something was sent, how many deliveries wait and the failing channels.
"""


import json

import dagster as dg

from clarus_pipelines.alerts import AlertSender, DispatchReport, dispatch_alerts
from clarus_pipelines.connectors.http import RetryPolicy
from clarus_pipelines.exception_queue import utcnow
from clarus_pipelines.resources import PoliciesResource, StateStoreResource
from clarus_pipelines.settings import get_settings

INTERVAL_S = 60
# A sensor evaluation has about a minute: bound each channel's retries well inside it
# (channels are sent to in parallel; a channel that fails is retried on the next tick).
SENSOR_RETRY = RetryPolicy(attempts=3, max_elapsed_s=15.0, initial_s=0.5, max_backoff_s=4.0, jitter_s=0.2,
                           max_retry_after_s=5.0)


def _load_cursor(raw: str | None) -> dict:
    try:
        doc = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def next_cursor(report: DispatchReport, previous: dict, now) -> dict:
    return {
        "evaluated_at": now.isoformat(),
        "last_sent_at": now.isoformat() if report.messages_sent else previous.get("last_sent_at"),
        "waiting": report.waiting,
        "failing_channels": sorted(report.failing_channels),
    }


@dg.sensor(
    name="alerts",
    minimum_interval_seconds=INTERVAL_S,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Sends alerts for new and SLA-breaching exceptions to each owner's channels (Slack, e-mail, webhook, "
    "log), deduplicated, with digests; a channel that keeps failing raises CONNECTOR_FAILING.",
)
def alerts_sensor(context: dg.SensorEvaluationContext, state: StateStoreResource, policies: PoliciesResource) -> dg.SensorResult:
    previous = _load_cursor(context.cursor)
    now = utcnow()
    sender = AlertSender.from_settings(get_settings(), retry=SENSOR_RETRY, timeout_s=5.0)
    report = dispatch_alerts(state.store(), policies.load(), sender, now=now)
    summary = report.summary()
    (context.log.warning if report.failing_channels else context.log.info)(summary)
    return dg.SensorResult(skip_reason=dg.SkipReason(summary), cursor=json.dumps(next_cursor(report, previous, now), sort_keys=True))


defs = dg.Definitions(sensors=[alerts_sensor])
