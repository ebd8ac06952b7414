"""Failed runs reach the integration engineer: a run-failure sensor raises RUN_FAILED.

`run_failures` watches every job of the code location; a run that ends in failure (after
its retries) raises RUN_FAILED for its job (one open exception per job, refreshed by each
further failure) with the run id, the failed step and Dagster's error message. The alerts
flow then tells the exception's owner (the integration engineer) like any other exception.
`run_successes` clears the job's RUN_FAILED at its next successful run.
"""

import dagster as dg

from clarus_pipelines.exception_queue import clear_exception, raise_exception, utcnow
from clarus_pipelines.resources import PoliciesResource, StateStoreResource

MESSAGE_CHARS = 400


def record_run_failure(state: StateStoreResource, policies: PoliciesResource, *, job_name: str, run_id: str,
                       error: str | None, steps: list[str]) -> str:
    """Raise (or refresh) RUN_FAILED for the job; returns the exception queue's action."""
    reason = (error or "no error message").strip().splitlines()[0][:MESSAGE_CHARS]
    with state.store().write() as con:
        return raise_exception(
            con, "RUN_FAILED", job_name,
            f"run {run_id[:8]} of {job_name} failed" + (f" at {', '.join(steps)}" if steps else "") + f": {reason}",
            {"job": job_name, "run_id": run_id, "failed_steps": steps, "error": reason},
            policies=policies.load(), now=utcnow(),
        )


@dg.run_failure_sensor(
    name="run_failures",
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="A failed run raises RUN_FAILED for its job (owner: the integration engineer).",
)
def run_failure_sensor(context: dg.RunFailureSensorContext, state: StateStoreResource, policies: PoliciesResource):
    run = context.dagster_run
    failures = context.get_step_failure_events()
    steps = sorted({event.step_key for event in failures if event.step_key})
    # the first failed step's own error says what went wrong; the run's event only that steps failed
    errors = [event.step_failure_data.error for event in failures if event.step_failure_data.error]
    error = context.failure_event.message
    if errors:
        root = errors[0]
        while root.cause is not None:  # Dagster wraps the op's exception; its own message is innermost
            root = root.cause
        error = root.message
    action = record_run_failure(state, policies, job_name=run.job_name, run_id=run.run_id, error=error, steps=steps)
    context.log.info("RUN_FAILED %s for %s (run %s)", action, run.job_name, run.run_id)


@dg.run_status_sensor(
    name="run_successes",
    run_status=dg.DagsterRunStatus.SUCCESS,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="A successful run clears its job's RUN_FAILED.",
)
def run_success_sensor(context: dg.RunStatusSensorContext, state: StateStoreResource):
    with state.store().write() as con:
        if clear_exception(con, "RUN_FAILED", context.dagster_run.job_name, now=utcnow()):
            context.log.info("RUN_FAILED cleared for %s", context.dagster_run.job_name)


defs = dg.Definitions(sensors=[run_failure_sensor, run_success_sensor])
