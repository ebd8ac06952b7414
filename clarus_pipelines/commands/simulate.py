"""`clarus-pipelines simulate`: rehearse a sale day against the sandbox, with faults.

Runs the whole integration in one process, through the parts production uses:

- the three sandbox systems (`sandbox.server.start_sandbox`) with the chosen fault level
  (HTTP errors, latency, timeouts, 429 bursts, duplicated, reordered and lost webhooks);
- the webhook receiver (`receiver.app.create_app`), landing into a fresh landing zone;
- the code location's real Definitions (`clarus_pipelines.definitions`: every domain's
  assets, checks, jobs, sensors and schedules, with `build_resources()`): sensors are
  evaluated tick by tick and the runs they request are executed in process; schedules
  are ticked on a compressed clock (the 15-minute reconciliation reads run every
  minute, and once more when all else is quiet), so they land what lost webhooks missed;
- the traffic generator placing `--orders` seeded orders (clean ones and the seed's
  failure cases) and playing their follow-ups (edits, cancellations, refunds, fixes).

Time is compressed: the warehouse moves an order on every second, NetSuite commits a
second after creation (slow orders a few seconds later), and the dispatch flow re-checks
and retries within seconds (run config of the `shipments` step; production paces them in
minutes). The run ends when nothing has changed for `quiet_s` after a last
reconciliation round, or at `--timeout`.

Prints one JSON object on stdout, counted from the sandbox systems' own records: orders
generated; goods outs in Clarus; sales orders and item fulfilments in NetSuite;
fulfilments in Shopify; held by reason and exceptions by code (from our queue); `lost`
(an order missing from a system it should have reached, with no hold, cancellation or
open exception explaining why), `duplicates` (a second record for one order or shipment
in any system) and `ordering_violations` (a Shopify fulfilment created before the
NetSuite item fulfilment of its shipment was posted); `latency`: the same figures as
`bench/latency.py` (`p95_to_wms_s`, `p95_to_channel_s`, `runs_per_order` counting the runs
sensors started, and p50/p95/max per interval), on the compressed clock. Logs go to stderr.
Exit code 0 when lost, duplicates and ordering violations are all 0.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from clarus_pipelines.settings import POLICIES_ENV, SANDBOX_POLICIES

log = logging.getLogger(__name__)

SECRET_NAMES = (
    "CLARUS_CLIENT_ID", "CLARUS_CLIENT_SECRET", "CLARUS_WEBHOOK_TOKEN", "SHOPIFY_ACCESS_TOKEN",
    "SHOPIFY_WEBHOOK_SECRET", "NETSUITE_CONSUMER_KEY", "NETSUITE_CONSUMER_SECRET", "NETSUITE_TOKEN_ID",
    "NETSUITE_TOKEN_SECRET", "NETSUITE_WEBHOOK_SECRET",
)

# Compressed time. Schedules: a production minute is four seconds here (the 15-minute
# reconciliation reads run every minute). Op config, applied to any op that has the field:
# the dispatch flow re-checks the ERP and retries within seconds, and the reconciliation
# reads land changes at once (their grace period would outlast the whole rehearsal).
TIME_COMPRESSION = 15.0
FINAL_ROUND_MINUTES = 15.0  # schedules at least this frequent run once more before the run ends
RUN_WORKERS = 4  # runs executed side by side (the daemon runs them concurrently too)
# Runs here finish before the next tick, so a drain that lives until idle adds nothing and would
# stall the tick loop: the per-flow sensors (which yield to a running drain in production) carry
# the event path, each of its runs in process.
LONG_LIVED_SENSORS = frozenset({"event_path"})
COMPRESSED_OP_CONFIG: dict[str, Any] = {
    "erp_recheck_s": 1.0, "erp_recheck_max_s": 3.0, "retry_base_s": 1.0, "retry_max_s": 5.0,
    "grace_minutes": 0,
}
# The connectors' pacing, compressed the same way: an injected 5xx is retried after 50 ms, not
# production's 0.2 s doubling up to 8 s (still six attempts, still backing off), and a call the
# sandbox leaves hanging (3 s under heavy faults) times out on our side after 1 s, a client
# timeout as in production rather than a slow 504. Retry-After is honoured as ever.
COMPRESSED_CONNECTOR_CONFIG: dict[str, Any] = {
    "timeout_s": 1.0, "retry_initial_s": 0.05, "retry_max_backoff_s": 1.0, "retry_jitter_s": 0.05,
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--orders", type=int, default=200, help="orders the traffic generator places (default 200)")
    parser.add_argument("--seed", type=int, default=7, help="seed of the traffic and the faults (default 7)")
    parser.add_argument("--faults", choices=["none", "light", "heavy"], default="light",
                        help="sandbox fault injection level (default light)")
    parser.add_argument("--timeout", type=float, default=1800.0,
                        help="stop waiting for the integration to go quiet after this many seconds (default 1800)")
    parser.add_argument("--home", type=Path, default=None,
                        help="keep the state, landings and Dagster storage here (default: a temporary folder, removed)")
    parser.add_argument("--state-url", default=None,
                        help="run on this state: postgresql://... (the PostgreSQL state store and webhook inbox; the "
                             "database must hold no orders yet) or a DuckDB file (default $CLARUS_PIPELINES_STATE_URL, "
                             "else state.duckdb in --home)")


def _stop_on_sigterm(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")  # unwinds through the finally blocks: sandbox and receiver stop


def run(args: argparse.Namespace) -> int:
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    report = simulate(orders=args.orders, seed=args.seed, faults=args.faults, timeout_s=args.timeout, home=args.home,
                      state_url=args.state_url)
    print(json.dumps(report, indent=2, sort_keys=False, default=str))
    return 0 if not (report["lost"] or report["duplicates"] or report["ordering_violations"]) else 1


# ------------------------------------------------------------------------ environment


@contextlib.contextmanager
def _environment(updates: Mapping[str, str]) -> Iterator[None]:
    """Set environment variables for the run and restore them after (the CLI may run in tests)."""
    saved = {key: os.environ.get(key) for key in updates}
    os.environ.update(updates)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _sandbox_secrets() -> dict[str, str]:
    """Random credentials for this run's sandbox: real ones never meet it (never printed).
    NetSuite is reached with OAuth 2.0 M2M, the method new integrations must use."""
    from clarus_pipelines.sandbox.server import generate_m2m_credentials

    return {**{name: secrets.token_urlsafe(24) for name in SECRET_NAMES}, **generate_m2m_credentials(),
            "NETSUITE_AUTH_METHOD": "oauth2_m2m"}


# ------------------------------------------------------------------------ driving Dagster


def _config_fields(definition) -> set[str]:
    """Names of an op's config fields (empty when it takes no structured config)."""
    schema = getattr(definition, "config_schema", None)
    try:
        return set(schema.as_field().config_type.fields) if schema is not None else set()
    except AttributeError:
        return set()


def period_minutes(cron: str | list[str]) -> float:
    """How often a cron schedule fires, in minutes (the shapes our schedules use)."""
    expression = cron[0] if isinstance(cron, list) else cron
    minute, hour, *_ = expression.split()
    if minute.startswith("*/"):
        return float(minute[2:])
    if minute == "*":
        return 1.0
    if hour == "*":
        return 60.0
    if hour.startswith("*/"):
        return 60.0 * float(hour[2:])
    return 1440.0


@dataclass
class Orchestrator:
    """Evaluates the code location's sensors and schedules and executes what they request."""

    defs: Any
    resources: dict[str, Any]
    instance: Any
    cursors: dict[str, str | None] = field(default_factory=dict)
    run_keys: set[str] = field(default_factory=set)
    runs: Counter = field(default_factory=Counter)
    event_runs: Counter = field(default_factory=Counter)  # runs sensors asked for (the event path), by job
    failed: Counter = field(default_factory=Counter)
    skipped: Counter = field(default_factory=Counter)
    seconds: Counter = field(default_factory=Counter)  # time spent per job
    last_tick: dict[str, float] = field(default_factory=dict)  # schedule -> monotonic time of its last tick
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.repo = self.defs.get_repository_def()

    def _run_config(self, job, requested: Mapping[str, Any] | None) -> dict[str, Any]:
        config = json.loads(json.dumps(dict(requested or {}), default=str))
        ops = config.setdefault("ops", {})
        for name, node in job.graph.node_dict.items():
            fields = _config_fields(node.definition)
            values = {k: v for k, v in COMPRESSED_OP_CONFIG.items() if k in fields}
            if values:
                ops.setdefault(name, {}).setdefault("config", {}).update(values)
        if not ops:
            config.pop("ops")
        return config

    def plan(self, request, default_job: str | None, origin: str, *, once_per_key: bool = True) -> tuple | None:
        """The (job, request, origin) to launch for a run request, or None (already launched, or not a flow run)."""
        if once_per_key and request.run_key:
            key = f"{origin}:{request.run_key}"
            if key in self.run_keys:
                return None  # the daemon launches a run key once
            self.run_keys.add(key)
        job_name = request.job_name or default_job
        if job_name in (None, "__ASSET_JOB"):
            if not request.asset_selection:
                # e.g. check-only freshness runs (Dagster names them __ASSET_JOB with no asset
                # selected, which would execute every asset here): not part of the flows
                self.skipped[origin] += 1
                return None
            job_name = "__ASSET_JOB"
        return job_name, request, origin

    def apply_partition_changes(self, changes) -> None:
        """Add and delete dynamic partitions as a sensor asked (the daemon does this in production)."""
        import dagster as dg

        for change in changes or []:
            if isinstance(change, dg.AddDynamicPartitionsRequest):
                self.instance.add_dynamic_partitions(change.partitions_def_name, list(change.partition_keys))
            elif isinstance(change, dg.DeleteDynamicPartitionsRequest):
                for key in change.partition_keys:
                    self.instance.delete_dynamic_partition(change.partitions_def_name, key)

    def _execute(self, job_name: str, request, origin: str, instance=None) -> None:
        import dagster as dg

        job = self.repo.get_job(job_name)
        started = time.monotonic()
        if instance is not None and request.partition_key and isinstance(job.partitions_def, dg.DynamicPartitionsDefinition):
            # a run beside others records into an instance of its own: give it the run's partition
            instance.add_dynamic_partitions(job.partitions_def.name, [request.partition_key])
        try:
            result = job.execute_in_process(
                run_config=self._run_config(job, request.run_config), instance=instance or self.instance,
                partition_key=request.partition_key, tags=dict(request.tags or {}), raise_on_error=False,
                asset_selection=list(request.asset_selection) if request.asset_selection and job_name == "__ASSET_JOB" else None,
            )
            ok = result.success
        except Exception:  # a run that cannot even start is a failed run; the next tick tries again
            log.exception("run of %s (from %s) could not start", job_name, origin)
            ok = False
        with self.lock:
            self.runs[job_name] += 1
            if origin.startswith("sensor:"):
                self.event_runs[job_name] += 1
            self.seconds[job_name] += time.monotonic() - started
            if not ok:
                self.failed[job_name] += 1
        if not ok:
            log.warning("run of %s (from %s) failed", job_name, origin)

    def _flow(self, item: tuple) -> str | None:
        """The run's `flow` tag: the instance runs one run per flow value at a time."""
        job_name, request, _ = item
        tags = {**self.repo.get_job(job_name).tags, **dict(request.tags or {})}
        return tags.get("flow")

    def launch(self, planned: list[tuple], *, parallel: bool = True) -> int:
        """Run a tick's requests side by side, as the daemon would, and wait for all of them.

        Runs of one `flow` (tag) go one after the other, as the instance's tag concurrency
        limit has them in production (`deploy/dagster.yaml`); other runs go side by side.
        Dagster's in-memory run storage is not safe for concurrent runs, so a run executed
        beside others records into an instance of its own; the flows keep their state in the
        state database, not in Dagster's run history.
        """
        if not parallel or len(planned) < 2:
            for item in planned:
                self._execute(*item)
            return len(planned)
        import dagster as dg

        lanes: dict[Any, list[tuple]] = {}
        for index, item in enumerate(planned):
            lanes.setdefault(self._flow(item) or index, []).append(item)

        def execute_lane(items: list[tuple]) -> None:
            for item in items:
                with dg.DagsterInstance.ephemeral() as instance:
                    self._execute(*item, instance=instance)

        with ThreadPoolExecutor(max_workers=min(RUN_WORKERS, len(lanes)), thread_name_prefix="run") as pool:
            for future in [pool.submit(execute_lane, items) for items in lanes.values()]:
                future.result()
        return len(planned)

    def tick_sensors(self) -> list[tuple]:
        """Evaluate every sensor once; returns the runs they request."""
        import dagster as dg

        planned = []
        for sensor in self.repo.sensor_defs:
            if sensor.name in LONG_LIVED_SENSORS:
                continue
            began = time.monotonic()
            with dg.build_sensor_context(
                instance=self.instance, instance_ref=self.instance.get_ref() if self.instance.is_persistent else None,
                cursor=self.cursors.get(sensor.name), definitions=self.defs, resources=self.resources,
            ) as context:
                try:
                    data = sensor.evaluate_tick(context)
                except Exception:
                    log.exception("sensor %s failed", sensor.name)
                    self.failed[f"sensor:{sensor.name}"] += 1
                    continue
            self.seconds[f"sensor:{sensor.name}"] += time.monotonic() - began
            if data.cursor is not None:
                self.cursors[sensor.name] = data.cursor
            self.apply_partition_changes(data.dynamic_partitions_requests)
            default_job = sensor.job_name if sensor.has_jobs and len(sensor.jobs) == 1 else None
            for request in data.run_requests or []:
                item = self.plan(request, default_job, f"sensor:{sensor.name}")
                if item:
                    planned.append(item)
        return planned

    def tick_schedules(self, *, all_now: bool = False, within_minutes: float | None = None) -> list[tuple]:
        """Tick the schedules due on the compressed clock; with `all_now`, every schedule that
        fires at least every `within_minutes` production minutes (all of them without a bound)."""
        import dagster as dg

        planned = []
        for schedule in self.repo.schedule_defs:
            now = time.monotonic()
            period = period_minutes(schedule.cron_schedule) * 60 / TIME_COMPRESSION
            if all_now:
                if within_minutes is not None and period_minutes(schedule.cron_schedule) > within_minutes:
                    continue
            elif now - self.last_tick.get(schedule.name, float("-inf")) < period:
                continue
            self.last_tick[schedule.name] = now
            with dg.build_schedule_context(
                instance=self.instance, repository_def=self.repo, resources=self.resources,
                scheduled_execution_time=datetime.now(timezone.utc),
            ) as context:
                try:
                    data = schedule.evaluate_tick(context)
                except Exception:
                    log.exception("schedule %s failed", schedule.name)
                    self.failed[f"schedule:{schedule.name}"] += 1
                    continue
            for request in data.run_requests or []:  # every compressed tick is a new scheduled run
                item = self.plan(request, schedule.job_name, f"schedule:{schedule.name}", once_per_key=False)
                if item:
                    planned.append(item)
        return planned


# ------------------------------------------------------------------------ the run


def simulate(
    *,
    orders: int,
    seed: int = 7,
    faults: str = "light",
    timeout_s: float = 1800.0,
    home: Path | None = None,
    quiet_s: float = 6.0,
    batch: int | None = None,
    state_url: str | None = None,
) -> dict[str, Any]:
    """Run the rehearsal and return the report (see the module docstring). `state_url`
    (default `CLARUS_PIPELINES_STATE_URL`): postgresql://... runs the receiver, the runs and
    the accounting on the PostgreSQL state store and webhook inbox; else a DuckDB file."""
    if orders < 1:
        raise ValueError("--orders must be at least 1")
    state_url = (state_url if state_url is not None else os.environ.get("CLARUS_PIPELINES_STATE_URL") or "").strip()
    own_home = home is None
    home = Path(tempfile.mkdtemp(prefix="clarus-simulate-")) if own_home else Path(home)
    home.mkdir(parents=True, exist_ok=True)
    creds = _sandbox_secrets()
    try:
        # everything under the rehearsal's home, whatever state or landing folder the shell points at
        paths = {"CLARUS_PIPELINES_HOME": str(home), "CLARUS_PIPELINES_STATE_DB": str(home / "state.duckdb"),
                 # postgresql://... (store + inbox) or a DuckDB file; empty: state.duckdb in the home
                 "CLARUS_PIPELINES_STATE_URL": state_url,
                 "CLARUS_PIPELINES_LANDING_DIR": str(home / "landing"),
                 # a rehearsal runs on the sandbox tenant unless told otherwise
                 POLICIES_ENV: os.environ.get(POLICIES_ENV) or str(SANDBOX_POLICIES)}
        with _environment({**creds, **paths}):
            return _simulate(home, orders=orders, seed=seed, faults=faults, timeout_s=timeout_s, quiet_s=quiet_s,
                             batch=batch or max(50, orders // 4))
    finally:
        if own_home:
            shutil.rmtree(home, ignore_errors=True)


def _simulate(home: Path, *, orders: int, seed: int, faults: str, timeout_s: float, quiet_s: float,
              batch: int) -> dict[str, Any]:
    import dagster as dg

    from clarus_pipelines import definitions as code_location
    from clarus_pipelines.receiver.app import WebhookSecrets, create_app
    from clarus_pipelines.sandbox.serving import serve_in_thread
    from clarus_pipelines.settings import Settings, get_policies

    started = time.monotonic()
    settings = Settings()
    policies = get_policies(settings)
    state = settings.state_target
    _require_fresh_state(state)
    settings.landing_path.mkdir(parents=True, exist_ok=True)
    receiver = serve_in_thread(
        create_app(settings.landing_path, secrets=WebhookSecrets.from_settings(settings), tenant=policies.tenant,
                   settings=settings),
        name="receiver",
    )
    sandbox = SandboxProcess(seed=seed, receiver_url=receiver.url, policies_path=settings.require_policies_file())
    try:
        urls = sandbox.call("urls")
        with _environment({"CLARUS_BASE_URL": urls["clarus"], "SHOPIFY_BASE_URL": urls["shopify"],
                           "NETSUITE_BASE_URL": urls["netsuite"]}):
            resources = code_location.build_resources(Settings(), connector_config=COMPRESSED_CONNECTOR_CONFIG)
            defs = dg.Definitions.merge(*code_location.DOMAINS, dg.Definitions(resources=resources))
            # persistent, as the daemon's: a sensor context needs the instance's ref to check a
            # partitioned run request against the dynamic partitions (the stock hours)
            (home / "dagster").mkdir(exist_ok=True)
            with dg.DagsterInstance.local_temp(str(home / "dagster")) as instance:
                orchestrator = Orchestrator(defs, resources, instance)
                log.info("simulate: %d orders, seed %d, faults %s; sandbox %s; receiver %s", orders, seed, faults,
                         urls, receiver.url)
                # the hourly and daily jobs ran before the sale, one after the other (item master first)
                orchestrator.launch(orchestrator.tick_schedules(all_now=True), parallel=False)
                sandbox.call("set_faults", faults)  # the sale starts with the catalogue synced
                timed_out = _drive(orchestrator, sandbox, orders=orders, batch=batch, timeout_s=timeout_s,
                                   quiet_s=quiet_s, started=started, state_path=state)
            report = build_report(sandbox.call("records"), state)
        report["latency"] = latency_report(state, orchestrator, report["orders_generated"])
        report["run"] = {
            "seed": seed, "faults": faults, "state": "postgresql" if settings.state_is_postgres else "duckdb", "seconds": round(time.monotonic() - started, 1), "timed_out": timed_out,
            "runs": dict(sorted(orchestrator.runs.items())), "failed_runs": dict(sorted(orchestrator.failed.items())),
            "run_seconds": {k: round(v, 1) for k, v in sorted(orchestrator.seconds.items())},
        }
        return report
    finally:
        sandbox.stop()
        receiver.stop()


def _require_fresh_state(state: Path | str) -> None:
    """A rehearsal starts from an empty state: the sandbox numbers its orders afresh, so orders
    left by an earlier run would be taken for this run's (and the accounting would count them)."""
    from clarus_pipelines.state.pg import is_postgres_url, masked_url
    from clarus_pipelines.state.store import open_state

    with open_state(state).read() as con:
        left = con.execute("SELECT count(*) FROM orders").fetchone()[0]
    if left:
        where = masked_url(str(state)) if is_postgres_url(str(state)) else str(state)
        raise SystemExit(f"simulate: the state at {where} already holds {left} orders; give it a fresh database or file")


# ------------------------------------------------------------------------ the sandbox process


class SandboxProcess:
    """The three sandboxes and the traffic generator in a child process, driven over pipes.

    The systems we integrate with run elsewhere in real life; here they get their own
    process (and CPU), so they neither slow the pipeline down nor are slowed by it. One
    JSON line per command and per answer; the child logs to stderr like we do.
    """

    def __init__(self, *, seed: int, receiver_url: str, policies_path: Path):
        import subprocess
        import sys

        config = {"seed": seed, "receiver_url": receiver_url, "policies_path": str(policies_path),
                  "log_level": logging.getLogger().level}
        self._process = subprocess.Popen(
            [sys.executable, "-c", "from clarus_pipelines.commands.simulate import sandbox_child; sandbox_child()", json.dumps(config)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
        )
        ready = self._receive(timeout=120)
        if ready != "ready":
            raise RuntimeError(f"the sandbox process did not start: {ready}")

    def _receive(self, timeout: float) -> Any:
        import select

        ready, _, _ = select.select([self._process.stdout], [], [], timeout)
        if not ready:
            raise TimeoutError(f"the sandbox process did not answer within {timeout:.0f}s")
        line = self._process.stdout.readline()
        if not line:
            raise RuntimeError(f"the sandbox process exited (code {self._process.poll()})")
        answer = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"sandbox process: {answer['error']}")
        return answer["ok"]

    def call(self, command: str, *args: Any, timeout: float = 300) -> Any:
        self._process.stdin.write(json.dumps({"command": command, "args": list(args)}) + "\n")
        self._process.stdin.flush()
        return self._receive(timeout)

    def stop(self) -> None:
        if self._process.poll() is None:
            with contextlib.suppress(Exception):
                self.call("stop", timeout=30)
            with contextlib.suppress(Exception):
                self._process.wait(10)
        if self._process.poll() is None:
            self._process.terminate()
            self._process.wait(5)


def sandbox_child() -> None:
    """Entry point of the sandbox process: serve, place traffic, answer commands on stdin."""
    import sys

    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything printed goes to stderr: stdout carries the protocol only
    config = json.loads(sys.argv[1])
    from clarus_pipelines.logs import configure_logging

    configure_logging(config["log_level"])

    def answer(**doc: Any) -> None:
        protocol.write(json.dumps(doc, default=str) + "\n")

    try:
        host = _SandboxHost(config["seed"], config["receiver_url"], config["policies_path"])
    except Exception as exc:  # tell the parent why, then give up
        answer(error=f"{type(exc).__name__}: {exc}")
        return
    answer(ok="ready")
    for line in sys.stdin:
        request = json.loads(line)
        command = request["command"]
        try:
            result = getattr(host, command)(*request["args"])
        except Exception as exc:
            log.exception("sandbox command %s failed", command)
            answer(error=f"{command}: {type(exc).__name__}: {exc}")
            continue
        answer(ok=result)
        if command == "stop":
            return
    host.stop()  # the parent went away


class _SandboxHost:
    """What the sandbox process runs: `start_sandbox` plus the traffic generator."""

    def __init__(self, seed: int, receiver_url: str, policies_path: str):
        from clarus_pipelines.sandbox.server import SandboxSecrets, start_sandbox
        from clarus_pipelines.sandbox.shopify import LeakyBucket
        from clarus_pipelines.sandbox.shopify_graphql import CostBucket
        from clarus_pipelines.sandbox.traffic import TrafficGenerator, TrafficProfile
        from clarus_pipelines.settings import load_policies

        # orders fulfilled by hand in Shopify are left out: the rehearsal measures what the
        # integration loses or doubles of its own flow (FULFILLED_OUTSIDE_WMS has flow tests)
        profile = TrafficProfile(fix_after_s=(1.0, 4.0), followup_after_s=(0.0, 2.0), slow_commit_s=8.0,
                                 fulfilled_outside_wms=0.0)
        self.sandbox = start_sandbox(
            seed=seed, faults="none", receiver_url=receiver_url, secrets=SandboxSecrets.from_env(), profile=profile,
            policies_path=policies_path, netsuite_commit_delay_s=1.0, clarus_dispatch_after_s=1.0, tick_interval_s=0.25,
        )
        self.sandbox.clarus.missing_tracking_rate = profile.missing_tracking  # a warehouse fault, as in real traffic
        self.sandbox.shopify.bucket = LeakyBucket(size=400, leak_rate=20.0)  # a sale-day store is on Shopify Plus limits
        self.sandbox.shopify.graphql.bucket = CostBucket(10_000, 1_000.0)  # GraphQL: Plus's cost bucket
        self.traffic = TrafficGenerator(self.sandbox.shopify, self.sandbox.netsuite, self.sandbox.clarus, profile, seed,
                                        policies=load_policies(policies_path))

    def urls(self) -> dict[str, str]:
        return self.sandbox.urls()

    def set_faults(self, level: str) -> None:
        from clarus_pipelines.sandbox.faults import FaultConfig

        set_faults(self.sandbox, FaultConfig.preset(level))

    def generate(self, n: int) -> int:
        return len(self.traffic.generate_orders(n))

    def progress(self) -> tuple:
        """Counters that move whenever a system changes (every change emits a webhook), the
        follow-ups played, and whether every webhook has been delivered (or given up)."""
        self.traffic.apply_followups()
        sandbox = self.sandbox
        emitted = (len(sandbox.clarus.webhooks_emitted()), len(sandbox.shopify.webhooks), len(sandbox.netsuite.webhooks))
        played = sum(1 for o in self.traffic.orders for f in o.followups if not f.pending)
        return emitted, played, _senders_idle(sandbox)

    def records(self) -> dict[str, Any]:
        sandbox = self.sandbox
        transforms = [
            {"time": r["time"], "duration_ms": r.get("duration_ms", 0), "body": r.get("body")}
            for r in sandbox.netsuite.requests()
            if r["method"] == "POST" and "!transform/itemFulfillment" in r["path"] and r.get("status") == 204
        ]
        return {
            "generated": [{"order_id": str(o.order_id), "name": o.name, "case": o.case} for o in self.traffic.orders],
            "shopify_orders": sandbox.shopify.orders(),
            "fulfilments": sandbox.shopify.fulfillments(),
            "goods_outs": sandbox.clarus.goods_outs(),
            "sales_orders": sandbox.netsuite.sales_orders(),
            "item_fulfilments": sandbox.netsuite.item_fulfillments(),
            "item_fulfilment_posts": transforms,
            "webhooks_lost": {name: len(system.webhook_sender.lost)
                              for name, system in (("clarus", sandbox.clarus), ("shopify", sandbox.shopify),
                                                   ("netsuite", sandbox.netsuite))
                              if getattr(system, "webhook_sender", None) is not None},
        }

    def stop(self) -> None:
        self.sandbox.stop()


def set_faults(sandbox, config) -> None:
    """Switch fault injection of all three systems (API middleware and webhook senders)."""
    from clarus_pipelines.sandbox.faults import FaultMiddleware

    for system in (sandbox.clarus, sandbox.shopify, sandbox.netsuite):
        if hasattr(system, "set_faults"):
            system.set_faults(config)
            continue
        app, seen = system.app, 0
        while app is not None and not isinstance(app, FaultMiddleware) and seen < 10:
            app, seen = getattr(app, "app", None), seen + 1
        if not isinstance(app, FaultMiddleware):
            raise RuntimeError(f"{type(system).__name__} has no fault middleware to configure")
        app.config = config
        system.faults = config
        if getattr(system, "webhook_sender", None) is not None:
            system.webhook_sender.config = config


def _senders_idle(sandbox) -> bool:
    for system in (sandbox.clarus, sandbox.shopify, sandbox.netsuite):
        sender = getattr(system, "webhook_sender", None)
        if sender is not None and not sender.flush(0.01):
            return False
    return True


# ------------------------------------------------------------------------ until quiet


def _state_progress(state_path: Path | str) -> tuple:
    """Our side's progress counters (retries and periodic reads do not move them)."""
    from clarus_pipelines.state.store import open_state

    with open_state(state_path).read() as con:
        return (
            tuple(con.execute("SELECT status, count(*) FROM orders GROUP BY ALL ORDER BY 1").fetchall()),
            tuple(con.execute("SELECT state, count(*) FROM shipments GROUP BY ALL ORDER BY 1").fetchall()),
            con.execute("SELECT count(*) FROM landed_events").fetchone()[0],
            con.execute("SELECT count(*) FROM items WHERE clarus_product_id IS NOT NULL").fetchone()[0],
            tuple(con.execute("SELECT code, status, count(*) FROM exceptions GROUP BY ALL ORDER BY 1, 2").fetchall()),
        )


def _drive(orchestrator: Orchestrator, sandbox: SandboxProcess, *, orders: int, batch: int, timeout_s: float,
           quiet_s: float, started: float, state_path: Path | str) -> bool:
    """Place the orders, then tick until the integration is quiet; True if it timed out."""
    placed = 0
    last_change = time.monotonic()
    last_print = 0.0
    previous = None
    final_round_done = False
    while True:
        if time.monotonic() - started > timeout_s:
            log.warning("simulate: not quiet after %.0fs; reporting what happened so far", timeout_s)
            return True
        if placed < orders:  # a sale-day rush: orders arrive in a few large waves
            placed += sandbox.call("generate", min(batch, orders - placed))
        launched = orchestrator.launch(orchestrator.tick_sensors() + orchestrator.tick_schedules())
        emitted, played, idle = sandbox.call("progress")
        fingerprint = (emitted, played, _state_progress(state_path))
        # quiet = no progress anywhere (periodic runs that change nothing do not count)
        if fingerprint != previous or placed < orders or not idle:
            last_change = time.monotonic()
            previous = fingerprint
            final_round_done = False
        elif time.monotonic() - last_change >= quiet_s:
            if final_round_done:
                return False
            # quiet: one more round of the frequent schedules (the reconciliation reads and
            # sweeps) lands whatever lost webhooks never brought
            orchestrator.launch(orchestrator.tick_schedules(all_now=True, within_minutes=FINAL_ROUND_MINUTES))
            final_round_done = True
            last_change = time.monotonic()
        if time.monotonic() - last_print > 15:
            last_print = time.monotonic()
            log.info("simulate: %d/%d orders placed, %.0fs elapsed, runs %s", placed, orders,
                     time.monotonic() - started, dict(orchestrator.runs))
        if not launched:
            time.sleep(0.25)


# ------------------------------------------------------------------------ the report


def _shipment_lines_key(lines) -> frozenset:
    return frozenset((str(line.get("external_system_reference1")), int(float(line.get("quantity") or 0))) for line in lines or [])


def _norm(number: Any) -> str | None:
    from clarus_pipelines.domain.tracking import normalise_tracking_number

    return normalise_tracking_number(number) if number not in (None, "") else None


def latency_report(state_path: Path | str, orchestrator: Orchestrator, orders: int) -> dict[str, Any]:
    """The event path's latency (see `clarus_pipelines.latency`) and the runs sensors started per
    order. Time is compressed here and sensors tick back to back, so these are a rehearsal's
    figures, not a benchmark's (`bench/latency.py` measures the real stack)."""
    from clarus_pipelines.latency import latency_figures, runs_per_order
    from clarus_pipelines.state.store import open_state

    with open_state(state_path).read() as con:
        figures = latency_figures(con)
    event_runs = sum(orchestrator.event_runs.values())
    return {
        "p95_to_wms_s": figures["to_wms"]["p95_s"], "p95_to_channel_s": figures["to_channel"]["p95_s"],
        "runs_per_order": runs_per_order(event_runs, orders), **figures,
        "event_runs": dict(sorted(orchestrator.event_runs.items())),
    }


def build_report(records: Mapping[str, Any], state_path: Path | str) -> dict[str, Any]:
    """Count what happened from the sandbox systems' own records (and our exception queue);
    `state_path` is the DuckDB file or the postgresql:// URL of the state."""
    from clarus_pipelines.state.store import open_state

    generated = {o["order_id"]: o for o in records["generated"]}
    shop_orders = {str(o["id"]): o for o in records["shopify_orders"]}
    goods_outs = records["goods_outs"]
    sales_orders = records["sales_orders"]
    item_fulfilments = records["item_fulfilments"]
    fulfilments = records["fulfilments"]

    with open_state(state_path).read() as con:
        held = dict(con.execute(
            "SELECT code, count(DISTINCT order_id) FROM order_holds JOIN orders USING (order_id)"
            " WHERE orders.status = 'HELD' GROUP BY code ORDER BY code").fetchall())
        statuses = dict(con.execute("SELECT order_id, status FROM orders").fetchall())
        awaiting_erp = con.execute(
            "SELECT count(DISTINCT order_id) FROM shipments WHERE state = 'DISPATCHED_IN_WMS'").fetchone()[0]
        open_exceptions = con.execute(
            "SELECT code, entity_id, details::VARCHAR FROM exceptions WHERE status <> 'resolved'").fetchall()
        raised = dict(con.execute("SELECT code, count(*) FROM exceptions GROUP BY code ORDER BY code").fetchall())
        shipment_orders = dict(con.execute("SELECT shipment_id, order_id FROM shipments").fetchall())
    if awaiting_erp:
        held["DISPATCH_AWAITING_ERP"] = awaiting_erp

    # which orders an open exception speaks for (order-level, or through a shipment of the order)
    explained: set[str] = set()
    for code, entity_id, details in open_exceptions:
        explained.add(entity_id)
        if entity_id in shipment_orders:
            explained.add(shipment_orders[entity_id])
        with contextlib.suppress(ValueError, TypeError):
            doc = json.loads(details or "{}")
            if isinstance(doc, dict) and doc.get("order_id"):
                explained.add(str(doc["order_id"]))

    def excused(order_id: str) -> str | None:
        shop = shop_orders.get(order_id) or {}
        if shop.get("cancelled_at"):
            return "cancelled"
        if statuses.get(order_id) in ("HELD", "CANCELLED", "WMS_REJECTED"):
            return statuses[order_id].lower()
        if order_id in explained:
            return "exception"
        return None

    # --- records per order in each system
    live_goods_outs: dict[str, list[dict]] = defaultdict(list)
    for go in goods_outs:
        order_id = str(go.get("external_system_reference1") or "")
        if (go.get("goods_out_status") or {}).get("code") != "CANCELLED":
            live_goods_outs[order_id].append(go)
    any_goods_out = {str(go.get("external_system_reference1") or "") for go in goods_outs}
    so_by_order: dict[str, list[dict]] = defaultdict(list)
    for so in sales_orders:
        so_by_order[str(so.get("externalId") or "")].append(so)
    so_order = {str(so["id"]): str(so.get("externalId") or "") for so in sales_orders}
    ifs_by_shipment: dict[str, list[dict]] = defaultdict(list)
    for record in item_fulfilments:
        ifs_by_shipment[str(record.get("externalId") or "")].append(record)
    fulfilments_by_order: dict[str, list[dict]] = defaultdict(list)
    for f in fulfilments:
        fulfilments_by_order[str(f["order_id"])].append(f)
    shipments_by_order: dict[str, list[dict]] = defaultdict(list)
    for go in goods_outs:
        for shipment in go.get("shipments") or []:
            shipments_by_order[str(go.get("external_system_reference1") or "")].append(shipment)

    # when each item fulfilment was posted, from NetSuite's own request log
    posted_at: dict[str, float] = {}
    for request in records["item_fulfilment_posts"]:
        body = request.get("body")
        if isinstance(body, dict) and body.get("externalId"):
            posted_at.setdefault(str(body["externalId"]), request["time"] + request.get("duration_ms", 0) / 1000)

    lost: dict[str, list[str]] = {}
    duplicates: list[dict[str, Any]] = []
    violations: list[dict[str, Any]] = []
    for order_id, order in generated.items():
        name = order["name"]
        missing: list[str] = []
        if not so_by_order.get(order_id):
            missing.append("netsuite sales order")
        if order_id not in any_goods_out:
            missing.append("clarus goods out")
        if len(so_by_order.get(order_id, [])) > 1:
            duplicates.append({"order": name, "system": "netsuite", "record": "sales order", "count": len(so_by_order[order_id])})
        if len(live_goods_outs.get(order_id, [])) > 1:
            duplicates.append({"order": name, "system": "clarus", "record": "goods out", "count": len(live_goods_outs[order_id])})

        # every dispatched Clarus shipment: one item fulfilment, one Shopify fulfilment, in that order
        remaining = list(fulfilments_by_order.get(order_id, []))
        for shipment in shipments_by_order.get(order_id, []):
            shipment_id = str(shipment["id"])
            posted_ifs = ifs_by_shipment.get(shipment_id, [])
            if not posted_ifs:
                missing.append(f"netsuite item fulfilment for shipment {shipment_id}")
            elif len(posted_ifs) > 1:
                duplicates.append({"order": name, "system": "netsuite", "record": f"item fulfilment of {shipment_id}",
                                   "count": len(posted_ifs)})
            number = _norm(shipment.get("tracking_number"))
            lines = _shipment_lines_key(shipment.get("lines"))
            matches = [f for f in remaining if (_norm(f.get("tracking_number")) == number if number else
                                                 not f.get("tracking_number") and _shipment_lines_key(
                                                     [{"external_system_reference1": li["id"], "quantity": li["quantity"]}
                                                      for li in f.get("line_items") or []]) == lines)]
            if not matches:
                missing.append(f"shopify fulfilment for shipment {shipment_id}")
                continue
            fulfilment = matches[0]
            remaining.remove(fulfilment)
            if len(matches) > 1 and number:
                duplicates.append({"order": name, "system": "shopify", "record": f"fulfilment of {shipment_id}", "count": len(matches)})
                for extra in matches[1:]:
                    remaining.remove(extra)
            posted = posted_at.get(shipment_id)
            if posted is None or fulfilment["recorded_at"] < posted:
                violations.append({"order": name, "shipment": shipment_id, "shopify_fulfilment": fulfilment["id"],
                                   "item_fulfilment_posted": posted is not None})
        for extra in remaining:  # a Shopify fulfilment no Clarus shipment accounts for
            duplicates.append({"order": name, "system": "shopify", "record": f"fulfilment {extra['id']} without a shipment", "count": 1})
        if missing and not excused(order_id):
            lost[name] = missing

    stray_ifs = [r for r in item_fulfilments if str(r.get("externalId") or "") not in
                 {str(s["id"]) for ss in shipments_by_order.values() for s in ss}]
    for record in stray_ifs:
        duplicates.append({"order": so_order.get(str((record.get("createdFrom") or {}).get("id")), "?"), "system": "netsuite",
                           "record": f"item fulfilment {record['id']} without a shipment", "count": 1})

    open_by_code = Counter(code for code, _, _ in open_exceptions)
    return {
        "orders_generated": len(generated),
        "cases": dict(sorted(Counter(o["case"] for o in generated.values()).items())),
        "shopify": {"orders": len(shop_orders), "fulfilments": len(fulfilments),
                    "orders_fulfilled": sum(1 for o in shop_orders.values() if o.get("fulfillment_status") == "fulfilled"),
                    "orders_cancelled": sum(1 for o in shop_orders.values() if o.get("cancelled_at"))},
        "clarus": {"goods_outs": len(goods_outs), "orders_with_goods_out": len(any_goods_out - {""}),
                   "by_status": dict(sorted(Counter((g.get("goods_out_status") or {}).get("code") for g in goods_outs).items())),
                   "shipments": sum(len(v) for v in shipments_by_order.values())},
        "netsuite": {"sales_orders": len(sales_orders), "item_fulfilments": len(item_fulfilments)},
        "held_by_reason": dict(sorted(held.items())),
        "exceptions": dict(sorted(open_by_code.items())),
        "exceptions_raised": raised,
        "webhooks_lost_by_sandbox": records["webhooks_lost"],
        "lost": len(lost),
        "duplicates": sum(d["count"] - 1 if d["count"] > 1 else 1 for d in duplicates),
        "ordering_violations": len(violations),
        "lost_orders": dict(list(sorted(lost.items()))[:25]),
        "duplicate_records": duplicates[:25],
        "ordering_violation_records": violations[:25],
    }
