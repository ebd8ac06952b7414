"""The stuck-state sensor: raises and clears the exceptions of orders and dispatches that stopped.

Every evaluation reads the state database, computes the current offenders of
ORDER_NOT_ACKNOWLEDGED, NOT_DISPATCHED_BY_CUTOFF, DISPATCH_AWAITING_ERP and
TRACKING_NOT_POSTED (see `clarus_pipelines.domain.stuck_states`, timings from the
policies) and syncs each code's exceptions in one short write: new offenders are raised,
entities that moved on are auto-resolved. It launches no runs; its skip reason says
what changed, in words, and its JSON cursor keeps the last evaluation time and the
open count per code (shown in the Dagster UI).
"""

import json
from collections import Counter

import dagster as dg

from clarus_pipelines.domain.stuck_states import STUCK_CODES, stuck_findings
from clarus_pipelines.exception_queue import sync_exceptions, utcnow
from clarus_pipelines.resources import PoliciesResource, StateStoreResource

INTERVAL_S = 60


def _load_cursor(raw: str | None) -> dict:
    try:
        doc = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def evaluate_stuck_states(state: StateStoreResource, policies: PoliciesResource, cursor: dict) -> tuple[str, dict]:
    """Sync the stuck-state exceptions; returns (human-readable summary, new cursor)."""
    now = utcnow()
    policy = policies.load()
    with state.store().write() as con:
        findings = stuck_findings(con, policy.timings, now, policy.tenant.tzinfo)
        outcomes = {code: sync_exceptions(con, code, findings[code], policies=policy, now=now) for code in STUCK_CODES}
    raised: Counter = Counter()
    cleared: Counter = Counter()
    for code, outcome in outcomes.items():
        for action in outcome.values():
            if action in ("raised", "reopened"):
                raised[code] += 1
            elif action == "auto_resolved":
                cleared[code] += 1
    open_now = {code: len(findings[code]) for code in STUCK_CODES}
    changed = bool(raised or cleared)
    new_cursor = {
        "evaluated_at": now.isoformat(),
        "open": open_now,
        "last_change_at": now.isoformat() if changed else cursor.get("last_change_at"),
    }
    open_text = ", ".join(f"{code} {n}" for code, n in open_now.items() if n) or "none"
    if not changed:
        return f"No stuck state changed; open: {open_text}.", new_cursor
    parts = []
    if raised:
        parts.append("raised " + ", ".join(f"{n} {code}" for code, n in raised.items()))
    if cleared:
        parts.append("cleared " + ", ".join(f"{n} {code}" for code, n in cleared.items()))
    text = "; ".join(parts)
    return text[0].upper() + text[1:] + f". Open now: {open_text}.", new_cursor


@dg.sensor(
    name="stuck_states",
    minimum_interval_seconds=INTERVAL_S,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Raises and clears ORDER_NOT_ACKNOWLEDGED, NOT_DISPATCHED_BY_CUTOFF, DISPATCH_AWAITING_ERP and "
    "TRACKING_NOT_POSTED from the state database and the policies' timings.",
)
def stuck_states_sensor(
    context: dg.SensorEvaluationContext, state: StateStoreResource, policies: PoliciesResource
) -> dg.SensorResult:
    summary, cursor = evaluate_stuck_states(state, policies, _load_cursor(context.cursor))
    context.log.info(summary)
    return dg.SensorResult(skip_reason=dg.SkipReason(summary), cursor=json.dumps(cursor, sort_keys=True))


defs = dg.Definitions(sensors=[stuck_states_sensor])
