"""One sensor turning new landings of every webhook source into ingest runs, and one for refusals.

`webhook_landings` takes the Shopify, Clarus and NetSuite landings of a tick together: one
ingest run per tick carries all that is due (up to `BATCH_SIZE` landings a run), instead of
one small run per source. `build_landing_sensor(source)` builds a one-source sensor the same
way (for tests and a deployment that wants to pace one source apart).

A landing that arrives while the last requested ingest is still queued or running waits for
it (its newest landing shows in `processed_landings`, or two minutes pass), then goes in
the next run with everything else that arrived meanwhile: one ingest run at a time, each
taking all that is due, instead of a queue of small runs.

In PostgreSQL mode (CLARUS_PIPELINES_STATE_URL=postgresql://...) landings are rows of the
webhook inbox and the cursor is their sequence number, `{"after_seq": N, ...}`: the inbox
hands out only rows no insert still in flight can precede (`Inbox.refs_after_seq`), so
the cursor never skips a row committed late. Runs name them as `inbox:<seq>`.

Cursor: `{"after": "<newest landing id already requested>", "waiting_for": ..., "requested_at": ...}`. Landing ids are receive
times assigned in the order files become visible, and `LandingZone.list_landings`
re-lists up to the newest id it saw, so a plain watermark never skips a landing, even
one that was being written while the sensor listed.

Each run request carries one batch of landing paths and a `run_key` hashed from the
batch's landing ids: a daemon that restarts before saving its cursor re-derives the same
batches and Dagster skips the keys it has already launched. Ingest is idempotent anyway.
"""

import hashlib
import json
import os
from datetime import datetime, timedelta, timezone

import dagster as dg

from clarus_pipelines.assets.ingest import STALL_LOOKBACK, ingest_landings_job, webhook_rejections_job
from clarus_pipelines.exception_queue import utcnow
from clarus_pipelines.receiver.events import REJECTION_WINDOW, STALL_AFTER, unprocessed_landings
from clarus_pipelines.catalogue import SOURCE_NAMES, SOURCES
from clarus_pipelines.receiver.inbox import Inbox, ref_seq
from clarus_pipelines.receiver.landing import LandingRef, LandingZone
from clarus_pipelines.resources import LandingZoneResource, StateStoreResource
from clarus_pipelines.sensors.cursor import read_cursor
from clarus_pipelines.sensors.event_path import event_path_active

BATCH_SIZE = int(os.environ.get("CLARUS_PIPELINES_INGEST_BATCH_SIZE", "500"))
MAX_RUNS_PER_TICK = int(os.environ.get("CLARUS_PIPELINES_INGEST_MAX_RUNS_PER_TICK", "10"))


def batch_run_key(source: str, refs: list[LandingRef]) -> str:
    digest = hashlib.sha256("\n".join(r.landing_id for r in refs).encode("ascii")).hexdigest()[:24]
    return f"{source}:{refs[0].landing_id}:{len(refs)}:{digest}"


_load_cursor = read_cursor  # the landing sensors' cursor (see sensors.cursor)


def plan_batches(zone: LandingZone | Inbox, source: str | None, after: str | int | None, *, batch_size: int,
                 max_runs: int) -> list[list[LandingRef]]:
    """The next landings in runs of `batch_size`: after a landing id (files) or a seq (the PostgreSQL inbox)."""
    if isinstance(zone, Inbox):
        refs = zone.refs_after_seq(int(after or 0), source=source, limit=batch_size * max_runs)
    else:
        refs = zone.list_landings(source, after=after, limit=batch_size * max_runs)  # type: ignore[arg-type]
    return [refs[i:i + batch_size] for i in range(0, len(refs), batch_size)]


ALL_SOURCES = "webhook"  # the name and tag of the sensor over every source


WAIT_FOR_INGEST = timedelta(minutes=2)  # a request not ingested by then is taken as lost, and asked again


def previous_request_ingested(state: StateStoreResource, cursor: dict, now: datetime) -> bool:
    """Whether the last ingest this sensor requested is done (its newest landing is processed),
    or old enough to be given up on (a failed or lost run: its landings are asked for again by
    the catch-up path and the stall check)."""
    waiting_for, requested_at = cursor.get("waiting_for"), cursor.get("requested_at")
    if not waiting_for or not requested_at or now - datetime.fromisoformat(requested_at) >= WAIT_FOR_INGEST:
        return True
    with state.store().read() as con:
        return con.execute("SELECT count(*) FROM processed_landings WHERE landing_id = ?", [waiting_for]).fetchone()[0] > 0


def build_landing_sensor(
    source: str | None = None, *, batch_size: int = BATCH_SIZE, max_runs_per_tick: int = MAX_RUNS_PER_TICK,
    interval_s: int = 10, wait_for_ingest: bool = True,
) -> dg.SensorDefinition:
    """The sensor that turns new landings (of `source`, or of every source) into `ingest_landings` runs.

    With `wait_for_ingest`, landings that arrive while the last requested ingest is queued or
    running wait for it to finish and then go in one run together, so runs never pile up
    behind a busy run queue (one run per flow at a time, each taking all that is due)."""
    if source is not None and source not in SOURCES:
        raise ValueError(f"unknown source {source!r}")
    label = SOURCE_NAMES[source] if source else ALL_SOURCES
    tag_source = source or ALL_SOURCES

    @dg.sensor(
        name=f"{tag_source}_landings",
        job=ingest_landings_job,
        minimum_interval_seconds=interval_s,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"New {label} webhook landings -> ingest runs of up to {batch_size} landings each.",
    )
    def _sensor(
        context: dg.SensorEvaluationContext, landing: LandingZoneResource, state: StateStoreResource
    ) -> dg.SensorResult | dg.SkipReason:
        if event_path_active(context):  # the running drain ingests every landing itself
            return dg.SkipReason("an event_path run is queued or running; it ingests new landings")
        cursor = _load_cursor(context.cursor)
        zone = landing.source()
        inbox = isinstance(zone, Inbox)
        after = cursor.get("after_seq", 0) if inbox else cursor.get("after")
        batches = plan_batches(zone, source, after, batch_size=batch_size, max_runs=max_runs_per_tick)
        if not batches:
            return dg.SkipReason(f"no new {label} landings since "
                                 f"{(f'inbox seq {after}' if inbox else after) or 'the landing zone was created'}")
        now = datetime.now(timezone.utc)
        if wait_for_ingest and not previous_request_ingested(state, cursor, now):
            return dg.SkipReason(
                f"{sum(map(len, batches))} new {label} landing(s) wait for the ingest requested at "
                f"{cursor['requested_at'][11:19]} UTC (up to {cursor['waiting_for']}) to finish"
            )
        requests = [
            dg.RunRequest(
                run_key=batch_run_key(tag_source, batch),
                run_config={"ops": {"landed_events": {"config": {"landings": [r.relpath for r in batch]}}}},
                tags={"intake/source": tag_source, "intake/first": batch[0].landing_id, "intake/last": batch[-1].landing_id,
                      "intake/count": str(len(batch))},
            )
            for batch in batches
        ]
        newest = batches[-1][-1].landing_id
        context.log.info("%d %s landing(s) in %d run(s), up to %s", sum(map(len, batches)), label, len(requests), newest)
        position = {"after_seq": ref_seq(batches[-1][-1].relpath)} if inbox else {"after": newest}
        return dg.SensorResult(
            run_requests=requests,
            cursor=json.dumps({**position, "waiting_for": newest, "requested_at": now.isoformat()}),
        )

    return _sensor


landing_sensors = [build_landing_sensor()]  # every source in one run per tick


@dg.sensor(
    name="webhook_rejection_log",
    job=webhook_rejections_job,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Counts refused webhooks when the rejection log grows, and once more after it goes "
    "quiet so WEBHOOK_REJECTED can clear.",
)
def webhook_rejections_sensor(
    context: dg.SensorEvaluationContext, landing: LandingZoneResource
) -> dg.SensorResult | dg.SkipReason:
    cursor = _load_cursor(context.cursor)
    sizes = landing.source().rejection_log_sizes()
    now = datetime.now(timezone.utc)
    fingerprint = hashlib.sha256(json.dumps(sizes, sort_keys=True).encode()).hexdigest()[:24]
    seen = cursor.get("sizes", {})
    if any(size > seen.get(name, 0) for name, size in sizes.items()):
        return dg.SensorResult(
            run_requests=[dg.RunRequest(run_key=f"rejections:{fingerprint}", tags={"intake/rejections": "new"})],
            cursor=json.dumps({"sizes": sizes, "changed_at": now.isoformat(), "settled": False}),
        )
    if sizes != seen:  # only old logs pruned: nothing new to count
        return dg.SensorResult(cursor=json.dumps({**cursor, "sizes": sizes}), skip_reason="rejection logs pruned")
    changed_at = cursor.get("changed_at")
    if changed_at and not cursor.get("settled") and now - datetime.fromisoformat(changed_at) > REJECTION_WINDOW:
        return dg.SensorResult(
            run_requests=[dg.RunRequest(run_key=f"rejections-settled:{fingerprint}:{changed_at}",
                                        tags={"intake/rejections": "settled"})],
            cursor=json.dumps({**cursor, "settled": True}),
        )
    return dg.SkipReason(f"no new webhook rejections since {changed_at or 'the receiver started'}")


# --- intake that never stalls (issue 12) ---
@dg.sensor(
    name="stalled_landings",
    job=ingest_landings_job,
    minimum_interval_seconds=120,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Landings that no ingest has stored or set aside within "
    f"{int(STALL_AFTER.total_seconds() // 60)} minutes (a failed run, a lost request) -> ingest runs for exactly them.",
)
def stalled_landings_sensor(
    context: dg.SensorEvaluationContext, landing: LandingZoneResource, state: StateStoreResource
) -> dg.SensorResult | dg.SkipReason:
    """The landing sensors' cursor moves on once a run is requested; this one makes sure no
    landing is left behind when that run failed: every landing neither stored nor set aside
    after STALL_AFTER is requested again (once per STALL_AFTER window, by its ids)."""
    now = utcnow()
    stalled = unprocessed_landings(landing.source(), state.store(), now - STALL_LOOKBACK, now - STALL_AFTER)
    if not stalled:
        return dg.SkipReason("no landing waits longer than its ingest deadline")
    window = int(now.timestamp() // STALL_AFTER.total_seconds())
    requests = []
    for i in range(0, min(len(stalled), BATCH_SIZE * MAX_RUNS_PER_TICK), BATCH_SIZE):
        batch = stalled[i:i + BATCH_SIZE]
        digest = hashlib.sha256("\n".join(batch).encode()).hexdigest()[:24]
        requests.append(dg.RunRequest(
            run_key=f"stalled:{window}:{len(batch)}:{digest}",
            run_config={"ops": {"landed_events": {"config": {"landings": batch}}}},
            tags={"intake/stalled": str(len(batch))},
        ))
    context.log.warning("%d landing(s) stalled before ingest; requesting them again", len(stalled))
    return dg.SensorResult(run_requests=requests, cursor=json.dumps({"last_stalled": len(stalled), "at": now.isoformat()}))


defs = dg.Definitions(sensors=[*landing_sensors, webhook_rejections_sensor, stalled_landings_sensor])
