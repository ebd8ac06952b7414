"""Alert sending as a short scheduled job: owners hear about new, SLA-breaching and
escalated exceptions, every minute, with a run log and retries.

`alerts_job` runs one op, `send_alerts`, which runs `clarus_pipelines.alerts.dispatch_alerts`:
alerts now due are recorded once (a re-run never repeats one), due messages go out on each
owner's channels (digests when their window closes) and, past the SLA and not acknowledged,
to the owner role's escalation contact, again every `renotify_minutes`. A channel that
fails is retried within the op (HTTP/SMTP backoff), then the op asks Dagster for a retry
(`RETRIES` times, `RETRY_WAIT_S` apart) while that channel's alerts wait; a channel that
keeps failing raises CONNECTOR_FAILING (cleared when it delivers again) and the run still
succeeds, since the alerts stay pending for the next run. Each run's log and metadata say
in words what was sent, what is waiting and which channel is failing. Sending used to run
inside a sensor tick; a job gives it a run log, retries and no one-minute evaluation limit.
"""

import dagster as dg

from clarus_pipelines.alerts import AlertSender, DispatchReport, dispatch_alerts
from clarus_pipelines.connectors.http import RetryPolicy
from clarus_pipelines.exception_queue import utcnow
from clarus_pipelines.resources import PoliciesResource, StateStoreResource
from clarus_pipelines.settings import get_settings

RETRIES = 2
RETRY_WAIT_S = 20
# Each channel's own retries stay short: a channel still failing is retried by Dagster
# (RETRIES) and then on the next scheduled run; its alerts wait as pending deliveries.
SEND_RETRY = RetryPolicy(attempts=3, max_elapsed_s=20.0, initial_s=0.5, max_backoff_s=4.0, jitter_s=0.2,
                         max_retry_after_s=10.0)


def report_metadata(report: DispatchReport) -> dict:
    return {"summary": report.summary(), **report.as_metadata()}


@dg.op(
    description="Record due alerts (new, SLA breach, escalation) and send them on each owner's channels; "
    "asks for a retry while a channel fails.",
    tags={"flow": "monitoring"},
)
def send_alerts(context: dg.OpExecutionContext, state: StateStoreResource, policies: PoliciesResource) -> dict:
    sender = AlertSender.from_settings(get_settings(), retry=SEND_RETRY, timeout_s=10.0)
    report = dispatch_alerts(state.store(), policies.load(), sender, now=utcnow())
    metadata = report_metadata(report)
    context.add_output_metadata(metadata)
    if report.failing_channels:
        context.log.warning(metadata["summary"])
        if context.retry_number < RETRIES:
            raise dg.RetryRequested(max_retries=RETRIES, seconds_to_wait=RETRY_WAIT_S)
    else:
        context.log.info(metadata["summary"])
    return metadata


@dg.job(description="Send alerts for new, SLA-breaching and escalated exceptions to owners and escalation contacts.",
        tags={"flow": "monitoring"})
def alerts_job():
    send_alerts()


alerts_schedule = dg.ScheduleDefinition(
    name="alerts",
    job=alerts_job,
    cron_schedule="* * * * *",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Every minute: alerts to owners (Slack, e-mail, webhook, log), deduplicated, with digests; "
    "escalation past the SLA until acknowledged; a channel that keeps failing raises CONNECTOR_FAILING.",
)

defs = dg.Definitions(jobs=[alerts_job], schedules=[alerts_schedule])
