"""The stuck-state sync: a short scheduled job that raises and clears the exceptions of orders
and dispatches that stopped.

Every minute the `stuck_states_sync` job reads the state database, computes the current
offenders of ORDER_NOT_ACKNOWLEDGED, NOT_DISPATCHED_BY_CUTOFF, DISPATCH_AWAITING_ERP and
TRACKING_NOT_POSTED (see `clarus_pipelines.domain.stuck_states`, timings from the
policies) and syncs each code's exceptions in one short write: new offenders are raised,
entities that moved on are auto-resolved. It is a run, not work inside the daemon's sensor
tick: each sync has a run log (what was raised and cleared, in words, and the open count per
code as metadata), is retried when the state file is briefly unavailable, and never overlaps
itself (tag `flow=stuck_states`).
"""

from collections import Counter
from dataclasses import dataclass, field

import dagster as dg

from clarus_pipelines.domain.stuck_states import STUCK_CODES, stuck_findings
from clarus_pipelines.exception_queue import sync_exceptions, utcnow
from clarus_pipelines.resources import PoliciesResource, StateStoreResource


@dataclass
class StuckSync:
    """What one sync changed: exceptions raised and cleared per code, and how many are open now."""

    open: dict[str, int]
    raised: Counter = field(default_factory=Counter)
    cleared: Counter = field(default_factory=Counter)

    @property
    def changed(self) -> bool:
        return bool(self.raised or self.cleared)

    @property
    def summary(self) -> str:
        open_text = ", ".join(f"{code} {n}" for code, n in self.open.items() if n) or "none"
        if not self.changed:
            return f"No stuck state changed; open: {open_text}."
        parts = []
        if self.raised:
            parts.append("raised " + ", ".join(f"{n} {code}" for code, n in self.raised.items()))
        if self.cleared:
            parts.append("cleared " + ", ".join(f"{n} {code}" for code, n in self.cleared.items()))
        text = "; ".join(parts)
        return text[0].upper() + text[1:] + f". Open now: {open_text}."


def sync_stuck_states(state: StateStoreResource, policies: PoliciesResource) -> StuckSync:
    """Raise the stuck states found now and auto-resolve the ones that moved on (one short write)."""
    now = utcnow()
    policy = policies.load()
    with state.store().write() as con:
        findings = stuck_findings(con, policy.timings, now, policy.tenant.tzinfo)
        outcomes = {code: sync_exceptions(con, code, findings[code], policies=policy, now=now) for code in STUCK_CODES}
    result = StuckSync(open={code: len(findings[code]) for code in STUCK_CODES})
    for code, outcome in outcomes.items():
        for action in outcome.values():
            if action in ("raised", "reopened"):
                result.raised[code] += 1
            elif action == "auto_resolved":
                result.cleared[code] += 1
    return result


@dg.op(
    description="Raise and clear ORDER_NOT_ACKNOWLEDGED, NOT_DISPATCHED_BY_CUTOFF, DISPATCH_AWAITING_ERP and "
    "TRACKING_NOT_POSTED from the state database and the policies' timings.",
    retry_policy=dg.RetryPolicy(max_retries=3, delay=5, backoff=dg.Backoff.EXPONENTIAL),
)
def sync_stuck_states_op(context: dg.OpExecutionContext, state: StateStoreResource, policies: PoliciesResource) -> dict:
    result = sync_stuck_states(state, policies)
    (context.log.warning if result.raised else context.log.info)(result.summary)
    context.add_output_metadata({
        "summary": result.summary, "open": dg.MetadataValue.json(result.open),
        "raised": dg.MetadataValue.json(dict(result.raised)), "cleared": dg.MetadataValue.json(dict(result.cleared)),
    })
    return {"summary": result.summary, "open": result.open, "raised": dict(result.raised), "cleared": dict(result.cleared)}


@dg.job(description="Raise and clear the exceptions of orders and dispatches that stopped (stuck states).",
        tags={"flow": "stuck_states"})
def stuck_states_sync():
    sync_stuck_states_op()


stuck_states_schedule = dg.ScheduleDefinition(
    name="stuck_states",
    job=stuck_states_sync,
    cron_schedule="* * * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Every minute: raise the orders and dispatches stuck past the policies' timings, clear the ones that moved on.",
)

defs = dg.Definitions(jobs=[stuck_states_sync], schedules=[stuck_states_schedule])
