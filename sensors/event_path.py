"""The event path in one long-lived run: webhook landings -> orders to NetSuite and Clarus ->
dispatches back to NetSuite and Shopify, within seconds of each webhook.

Why: every Dagster run starts a fresh Python process that imports the code location (3+ CPU
seconds, 8-15 s on a busy two-core box), and the event path used to take three run hops per
webhook (ingest, then orders or dispatch, each behind a sensor tick and the run queue). A
sale hour spent most of its latency starting processes (issue 13).

- `event_path` job (tag `flow=orders`: never beside another orders run): one op that drains
  the path in a loop, about once a second: new landings (every source) into `landed_events`,
  new Shopify order events through the orders intake and released orders to NetSuite and
  Clarus, new Clarus goods out events into shipments and every due shipment moved on
  (ERP-gated, the dispatch flow's own functions and locks). It stops after `idle_s` without
  work, after `max_runtime_s` (a fresh run picks up code changes), or as soon as another
  orders run waits in the queue (held re-checks, order edits go first). Each asset it moved
  gets a materialization (at most every `report_every_s`, with the counts since the last).
- `event_path` sensor: starts that run when landings arrived and none is queued or running.
  While one is, `webhook_landings`, `orders_sensor` and `dispatch_work` skip
  (`event_path_active`): the drain already takes their work. When it has stopped they act as
  before (retries, ERP re-checks, releases), so nothing depends on the drain running.

Idempotency is the flows' own: ingest skips processed landings, the orders and dispatch
flows record intent before each outside call, and one dispatch advancing pass runs at a time.
"""

import contextlib
import threading
import time
from collections import Counter
from concurrent import futures
from dataclasses import asdict
from datetime import timedelta

import dagster as dg
from pydantic import Field

from clarus_pipelines.assets.orders import (
    CONSUMER as ORDERS_CONSUMER,
    intake_landed_orders,
    refresh_carriers,
    send_ready_orders,
)
from clarus_pipelines.connectors.clarus import ClarusResource
from clarus_pipelines.connectors.netsuite import NetSuiteResource
from clarus_pipelines.connectors.shopify import ShopifyResource
from clarus_pipelines.domain import order_flow as flow
from clarus_pipelines.domain.dispatch import (
    CONSUMER as DISPATCH_CONSUMER,
    DISPATCH_TOPICS,
    DispatchConfig,
    advance_shipment,
    advancing_lock,
    due_shipments,
    erp_news_for_waiting,
    take_in_landings,
    wake_on_erp_news,
)
from clarus_pipelines.domain.tracking import TrackingRules
from clarus_pipelines.exception_queue import utcnow
from clarus_pipelines.receiver.events import ingest_landings, processed_ids
from clarus_pipelines.receiver.inbox import Inbox, ref_seq
from clarus_pipelines.receiver.landing import LandingRef, landing_id_at
from clarus_pipelines.resources import LandingZoneResource, PoliciesResource, StateStoreResource
from clarus_pipelines.state.event_log import new_events

JOB_NAME = "event_path"
ACTIVE_STATUSES = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
                   dg.DagsterRunStatus.STARTED]
LOOKBACK = timedelta(minutes=30)  # a new drain first takes unprocessed landings this recent (older: stalled_landings)
BATCH = 500  # landings per ingest write


class EventPathConfig(dg.Config):
    idle_s: float = Field(default=300.0, description="Stop after this long with no work (0: stop after the first idle pass).")
    max_runtime_s: float = Field(default=1800.0, description="Stop after this long; the sensor starts a fresh run if work remains.")
    poll_s: float = Field(default=1.0, description="Pause between passes that found no work.")
    report_every_s: float = Field(default=30.0, description="At most one materialization per asset this often.")
    resend_every_s: float = Field(default=30.0, description="Released orders not sent (a system down): retried this often.")
    erp_recheck_s: float = Field(default=60.0, description="First re-check of a dispatch held for NetSuite (doubles each time).")
    erp_recheck_max_s: float = Field(default=600.0, description="Longest wait between NetSuite re-checks.")
    retry_base_s: float = Field(default=30.0, description="Wait after a failed dispatch call (doubles each attempt).")
    retry_max_s: float = Field(default=1800.0, description="Longest wait between dispatch retries.")
    workers: int = Field(default=4, description="Orders whose shipments are advanced in parallel (NetSuite refuses more than 5 calls in flight).")
    netsuite_customer_id: str | None = Field(default=None, description="Book orders to this NetSuite customer instead of the tenant's.")

    def dispatch_config(self) -> DispatchConfig:
        return DispatchConfig(erp_recheck_s=self.erp_recheck_s, erp_recheck_max_s=self.erp_recheck_max_s,
                              retry_base_s=self.retry_base_s, retry_max_s=self.retry_max_s, workers=self.workers)


def event_path_active(context: dg.SensorEvaluationContext) -> bool:
    """Whether an `event_path` run is queued or running (False when the context has no instance)."""
    try:
        instance = context.instance
    except dg.DagsterInvariantViolationError:  # a test's bare sensor context
        return False
    return instance.get_runs_count(filters=dg.RunsFilter(job_name=JOB_NAME, statuses=ACTIVE_STATUSES)) > 0


def _other_orders_runs_waiting(context: dg.OpExecutionContext) -> bool:
    """An orders run (held re-check, order edits) queued behind this one: the drain gives way."""
    return context.instance.get_runs_count(
        filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.QUEUED], tags={"flow": "orders"})) > 0


class _Drain:
    """One pass at a time over the event path; counts what each pass did."""

    def __init__(self, context: dg.OpExecutionContext, config: EventPathConfig, state: StateStoreResource,
                 policies: PoliciesResource, landing: LandingZoneResource, netsuite: NetSuiteResource,
                 clarus: ClarusResource, shopify: ShopifyResource):
        self.context, self.config = context, config
        self.store, self.policies, self.zone = state.store(), policies, landing.source()
        self.netsuite, self.clarus, self.shopify = netsuite, clarus, shopify
        self.after: str | None = None
        self.last_send = float("-inf")
        self.carriers_at = float("-inf")
        self.counts: dict[str, Counter] = {k: Counter() for k in
                                           ("landed_events", "shopify_orders", "orders_sent", "shipments")}
        self.counts_lock = threading.Lock()
        self.pool = futures.ThreadPoolExecutor(max_workers=max(1, config.workers), thread_name_prefix="event-path-dispatch")
        self.in_flight: dict[str, futures.Future] = {}
        self.advancing: contextlib.ExitStack | None = None

    def count(self, name: str, moved: dict) -> None:
        with self.counts_lock:
            self.counts[name].update(moved)

    def _new_landings(self) -> list[str]:
        if isinstance(self.zone, Inbox):  # PostgreSQL: by sequence, never past a row still committing
            refs = self.zone.refs_after_seq(int(self.after or 0), limit=BATCH * 10)
            if refs:
                self.after = str(ref_seq(refs[-1].relpath))
            with self.store.read() as con:
                done = processed_ids(con, [r.landing_id for r in refs])
            return [r.relpath for r in refs if r.landing_id not in done]
        if self.after is None:  # first pass: whatever recent landing no ingest took yet
            refs = self.zone.list_landings(after=landing_id_at(utcnow() - LOOKBACK))
            with self.store.read() as con:
                done = processed_ids(con, [r.landing_id for r in refs])
            self.after = refs[-1].landing_id if refs else landing_id_at(utcnow() - LOOKBACK)
            return [r.relpath for r in refs if r.landing_id not in done][:BATCH * 10]
        refs = self.zone.list_landings(after=self.after, limit=BATCH * 10)
        if refs:
            self.after = refs[-1].landing_id
        return [r.relpath for r in refs]

    def ingest(self) -> int:
        relpaths = self._new_landings()
        for start in range(0, len(relpaths), BATCH):
            report, loaded = ingest_landings(self.zone, self.store, relpaths[start:start + BATCH], run_id=self.context.run_id)
            self.count("landed_events", {"ingested": report.ingested, "landings": len(relpaths[start:start + BATCH])})
            if loaded.set_aside:
                self.context.log.warning("%d landing(s) set aside (LANDING_SET_ASIDE), the rest stored", len(loaded.set_aside))
        return len(relpaths)

    def orders(self) -> int:
        policy = self.policies.load()
        with self.store.read() as con:
            news = bool(new_events(con, ORDERS_CONSUMER, source="shopify", topics=flow.ORDER_TOPICS, limit=1))
        done = 0
        if news:
            report = intake_landed_orders(self.store, policy)
            self.count("shopify_orders", {k: v for k, v in asdict(report).items() if isinstance(v, int)})
            done += report.landings or 1
        now = time.monotonic()
        with self.store.read() as con:
            due = len(flow.due_for_sending(con, limit=1))
        # released orders go at once after news; ones a down system left behind every resend_every_s
        if due and (news or now - self.last_send >= self.config.resend_every_s):
            if now - self.carriers_at >= 300:
                refresh_carriers(self.store, self.clarus)
                self.carriers_at = now
            customer = self.config.netsuite_customer_id or policy.tenant.netsuite_customer_id
            report = send_ready_orders(self.store, policy, netsuite=self.netsuite, clarus=self.clarus, customer_id=customer)
            self.last_send = now
            self.count("orders_sent", {k: v for k, v in asdict(report).items() if isinstance(v, int)})
            done += report.wms_created + report.wms_found + report.erp_created + report.erp_found
        return done

    def dispatch(self) -> int:
        """Take landed goods outs in, then hand every due order's shipments to the pool as soon as
        they are due (not once a whole batch has finished): one order's shipments in sequence,
        orders side by side, under the advancing lock this run holds while it drains."""
        moved = self._collect()
        with self.store.read() as con:
            row = con.execute("SELECT last_seq FROM event_consumers WHERE consumer = ?", [DISPATCH_CONSUMER]).fetchone()
            events = con.execute(
                "SELECT count(*) FROM landed_events WHERE seq > ? AND source = 'clarus' AND topic IN (SELECT unnest(?))",
                [row[0] if row else 0, list(DISPATCH_TOPICS)]).fetchone()[0]
            erp_news = bool(erp_news_for_waiting(con))
        if events:
            policy = self.policies.load()
            taken = take_in_landings(self.store, TrackingRules.from_policies(policy), policy.sku_cleaning)
            self.count("shipments", {f"events_{k}": v for k, v in taken.items()})
            moved += int(events)
        if self.advancing is None:
            stack = contextlib.ExitStack()
            if not stack.enter_context(advancing_lock(self.store)):
                stack.close()  # another run advances (a sweep): it takes the due shipments
                return moved
            self.advancing = stack
        if erp_news:  # a NetSuite commit webhook ends its shipments' ERP back-off now
            with self.store.write() as con:
                wake_on_erp_news(con, utcnow())
        with self.store.read() as con:
            due = due_shipments(con, utcnow())
        by_order: dict[str, list[str]] = {}
        for order_id, shipment_id in due:
            if order_id not in self.in_flight:
                by_order.setdefault(order_id, []).append(shipment_id)
        for order_id, shipment_ids in by_order.items():
            self.in_flight[order_id] = self.pool.submit(self._advance_order, shipment_ids)
        moved += len(by_order)
        if self.in_flight and not moved:  # only work under way: wait for some of it, not a busy loop
            futures.wait(list(self.in_flight.values()), timeout=self.config.poll_s, return_when=futures.FIRST_COMPLETED)
            moved += self._collect()
        return moved + (1 if self.in_flight else 0)  # work under way is not idle

    def _advance_order(self, shipment_ids: list[str]) -> list[str]:
        return [advance_shipment(self.store, s, self.netsuite, self.shopify, config=self.config.dispatch_config())
                for s in shipment_ids]

    def _collect(self) -> int:
        """Outcomes of the orders whose shipments finished their turn; how many made progress."""
        progressed = 0
        for order_id, future in list(self.in_flight.items()):
            if future.done():
                del self.in_flight[order_id]
                outcomes = future.result()  # an unexpected error fails the run (after the other lanes stop)
                self.count("shipments", Counter(outcomes))
                progressed += any(o not in ("deferred", "waiting_erp", "failed", "raced") for o in outcomes)
        return progressed

    def close(self) -> None:
        """Let the shipments under way finish, count them, and release the advancing lock."""
        self.pool.shutdown(wait=True)
        try:
            self._collect()
        finally:
            if self.advancing is not None:
                self.advancing.close()
                self.advancing = None

    def report(self) -> None:
        """A materialization per asset that moved since the last report, with what moved."""
        keys = {"landed_events": ["landed_events"], "shopify_orders": ["shopify_orders"],
                "orders_sent": ["netsuite_sales_orders", "clarus_goods_outs"], "shipments": ["shipments"]}
        with self.counts_lock:
            moved = {name: +counter for name, counter in self.counts.items()}
            for counter in self.counts.values():
                counter.clear()
        for name, counter in moved.items():
            if not counter:
                continue
            for key in keys[name]:
                self.context.log_event(dg.AssetMaterialization(
                    asset_key=key, description="moved by the event path run", metadata=dict(sorted(counter.items()))))


class _Lanes:
    """Ingest, orders and dispatch each loop in a thread of their own (an orders backlog never
    holds a dispatch back); the drain is idle once every lane had a pass with nothing to do
    that began after the last work anywhere."""

    LANES = ("ingest", "orders", "dispatch")

    def __init__(self, drain: _Drain, poll_s: float):
        self.drain, self.poll_s = drain, poll_s
        self.stop = threading.Event()
        # an idle lane sleeps until its poll is due or the ingest lane stored new events (or the drain
        # stops): new orders and dispatches do not wait out a poll interval behind ingest
        self.woken = {lane: threading.Event() for lane in self.LANES}
        self.lock = threading.Lock()
        self.last_work = time.monotonic()
        self.quiet: dict[str, float | None] = dict.fromkeys(self.LANES)
        self.passes: Counter = Counter()
        self.error: BaseException | None = None

    def _loop(self, lane: str) -> None:
        step = getattr(self.drain, lane)
        try:
            while not self.stop.is_set():
                began = time.monotonic()
                moved = step()
                with self.lock:
                    self.passes[lane] += 1
                    if moved:
                        self.passes[f"{lane}_busy"] += 1
                        self.last_work = time.monotonic()
                        self.quiet[lane] = None
                    else:
                        self.quiet[lane] = began
                if moved and lane == "ingest":
                    for other in ("orders", "dispatch"):
                        self.woken[other].set()
                if not moved:
                    self.woken[lane].wait(self.poll_s)
                    self.woken[lane].clear()
        except BaseException as exc:  # the run fails with it (after the other lanes stop)
            self.error = exc
            self.halt()

    def halt(self) -> None:
        """Stop every lane after its current pass (an idle one at once)."""
        self.stop.set()
        for woken in self.woken.values():
            woken.set()

    def idle_for(self) -> float | None:
        """Seconds since the last work, once every lane has looked since then; else None."""
        with self.lock:
            if any(q is None or q < self.last_work for q in self.quiet.values()):
                return None
            return time.monotonic() - self.last_work


@dg.op(description="Drain the event path: landings -> orders -> NetSuite and Clarus -> dispatches -> Shopify, "
                   "about once a second, until idle, too old, or another orders run waits.")
def drain_event_path(
    context: dg.OpExecutionContext, config: EventPathConfig, state: StateStoreResource, policies: PoliciesResource,
    landing: LandingZoneResource, netsuite: NetSuiteResource, clarus: ClarusResource, shopify: ShopifyResource,
) -> None:
    drain = _Drain(context, config, state, policies, landing, netsuite, clarus, shopify)
    lanes = _Lanes(drain, config.poll_s)
    threads = [threading.Thread(target=lanes._loop, args=(lane,), name=f"event-path-{lane}", daemon=True)
               for lane in lanes.LANES]
    began = last_report = last_queue_check = time.monotonic()
    for thread in threads:
        thread.start()
    why = "max runtime reached"
    try:
        while not lanes.stop.wait(min(config.poll_s, 1.0)):
            now = time.monotonic()
            if now - began >= config.max_runtime_s:
                break
            if now - last_report >= config.report_every_s:
                drain.report()
                last_report = now
            if now - last_queue_check >= 10:
                last_queue_check = now
                if _other_orders_runs_waiting(context):
                    why = "another orders run is queued"
                    break
            idle = lanes.idle_for()
            if idle is not None and idle >= config.idle_s:
                why = f"idle for {config.idle_s:g} s"
                break
    finally:
        lanes.halt()
        for thread in threads:
            thread.join()
        drain.close()
    drain.report()
    if lanes.error is not None:
        raise lanes.error
    context.log.info("event path drained in %.0f s; passes %s; stopped: %s",
                     time.monotonic() - began, dict(sorted(lanes.passes.items())), why)


@dg.job(
    name=JOB_NAME,
    description="The event path in one run: landings -> orders -> NetSuite and Clarus -> dispatches -> Shopify, "
    "drained until idle (see sensors/event_path.py).",
    # first out of the queue: housekeeping runs (alerts, stuck states, probes) wait behind it
    tags={"flow": "orders", "dagster/max_runtime": "2400", "dagster/priority": "10"},
)
def event_path_job():
    drain_event_path()


@dg.sensor(
    name="event_path",
    job=event_path_job,
    minimum_interval_seconds=5,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Starts an event_path run when webhooks landed and none is queued or running.",
)
def event_path_sensor(
    context: dg.SensorEvaluationContext, landing: LandingZoneResource, state: StateStoreResource
) -> dg.SensorResult | dg.SkipReason:
    """Cursor: the newest landing id seen. While a drain runs, it takes every landing itself;
    afterwards only landings no ingest has processed start a new one."""
    if event_path_active(context):
        return dg.SkipReason("an event_path run is queued or running; it takes new landings itself")
    zone = landing.source()
    refs: list[LandingRef]
    if isinstance(zone, Inbox):  # PostgreSQL: the cursor is the inbox sequence number
        after = context.cursor if (context.cursor or "").startswith("seq:") else "seq:0"
        refs = zone.refs_after_seq(int(after[4:]), limit=BATCH * 10)
        newest = f"seq:{ref_seq(refs[-1].relpath)}" if refs else after
    else:
        after = context.cursor or landing_id_at(utcnow() - LOOKBACK)
        refs = zone.list_landings(after=after)
        newest = refs[-1].landing_id if refs else after
    if not refs:
        return dg.SkipReason(f"no landings since {after}")
    with state.store().read() as con:
        done = processed_ids(con, [r.landing_id for r in refs])
    refs = [r for r in refs if r.landing_id not in done]
    if not refs:
        return dg.SensorResult(skip_reason=f"every landing up to {newest} is ingested", cursor=newest)
    return dg.SensorResult(
        run_requests=[dg.RunRequest(run_key=f"event_path:{refs[-1].landing_id}", tags={"event_path/landings": str(len(refs))})],
        cursor=newest,
    )


defs = dg.Definitions(jobs=[event_path_job], sensors=[event_path_sensor])
