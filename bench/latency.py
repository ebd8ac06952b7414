"""How long from webhook to warehouse and from dispatch back to the channel, on the real stack.

Starts the stack as `clarus-pipelines demo` does (the sandbox with light faults, the webhook
receiver, `dagster dev` with the demo's instance: its run queue, launcher and concurrency
limits; no dashboard), waits for the item master to bind, then places clean Shopify orders
at a fixed rate for a bounded time (default 1 order a second for 5 minutes, a big sale
hour), waits for them to settle, and reports from the state store, the sandboxes' records
and Dagster's run storage:

- p50 / p95 / max seconds from the order's webhook landing to the goods out acknowledged by
  Clarus, and from the Clarus dispatch to the Shopify fulfilment confirmed;
- runs per order (runs sensors started while the orders flowed, over orders placed);
- run queue wait (created -> started, p50 / p95 / max) and the queue length over time.

With `--state-url postgresql://...` the stack runs in PostgreSQL mode (state and webhook inbox
in that database, which must hold no orders yet), as a production deployment does.

With `--warm` the orders start only once the `event_path` drain run (started by the stack's
first landings) is running: a sale hour on a stack that is already up, where the figures show
the event path rather than process start-up on a busy box. The report carries the load average.

The whole bench stops after `--max-minutes` (default and ceiling 9) even if orders are still
moving; those are reported as pending. It ends with three lines:

    p95_to_wms_s: X
    p95_to_channel_s: Y
    runs_per_order: Z

A benchmark, not a test: it prints figures; goals (issue 13): both p95 <= 30 s at 1 order/s
on 2 cores, at most 4 runs per order, the queue at the end no longer than at minute one.

    .venv/bin/python bench/latency.py --rate 0.5 --minutes 2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from clarus_pipelines.commands import demo  # noqa: E402
from clarus_pipelines.sandbox.catalog_data import build_catalog  # noqa: E402

MAX_MINUTES = 9.0
ADDRESS = {"first_name": "Ada", "last_name": "Byron", "name": "Ada Byron", "address1": "1 Test Street", "city": "Leeds",
           "zip": "LS1 4AP", "country": "United Kingdom", "country_code": "GB"}
STANDARD = [{"code": "standard", "title": "Standard Shipping", "price": "3.95"}]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _quantiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"count": 0, "p50_s": None, "p95_s": None, "max_s": None}
    ordered = sorted(values)
    pick = lambda q: round(ordered[min(len(ordered) - 1, max(0, int(round(q * len(ordered) + 0.5)) - 1))], 1)  # noqa: E731
    return {"count": len(ordered), "p50_s": pick(0.5), "p95_s": pick(0.95), "max_s": round(ordered[-1], 1)}


class Stack:
    """The demo's services (without the dashboard) on free loopback ports, under a temporary home."""

    def __init__(self, home: Path, *, seed: int, faults: str, state_url: str | None = None):
        self.home = home
        self.args = argparse.Namespace(
            home=home, host="127.0.0.1", receiver_port=_free_port(), clarus_port=_free_port(),
            shopify_port=_free_port(), netsuite_port=_free_port(), dagster_port=_free_port(), dashboard_port=_free_port(),
            orders_per_minute=0.0, faults=faults, seed=seed, duration=0.0,
        )
        self.services = [s for s in demo.build_services(self.args, home) if s.name != "dashboard"]
        self.env = demo.demo_environment(self.args, home)
        if state_url:
            self.env["CLARUS_PIPELINES_STATE_URL"] = state_url
        self.shopify_url = f"http://127.0.0.1:{self.args.shopify_port}"
        self.clarus_url = f"http://127.0.0.1:{self.args.clarus_port}"

    def start(self, deadline: float) -> None:
        (self.home / "logs").mkdir(parents=True, exist_ok=True)
        for service in self.services:
            service.log_path = self.home / "logs" / f"{service.name}.log"
            with open(service.log_path, "ab") as log_file:
                service.process = subprocess.Popen(service.argv, env=self.env, cwd=REPO, stdout=log_file,
                                                   stderr=subprocess.STDOUT, start_new_session=True)
        for service in self.services:
            if not demo._wait_healthy(service, deadline):
                raise RuntimeError(f"{service.name} did not start; see {service.log_path}")

    def stop(self) -> None:
        demo._stop(self.services)


def _state(target: Path | str):
    """The stack's state: its home's DuckDB file, or the PostgreSQL URL given with --state-url."""
    from clarus_pipelines.state import StateStore

    return StateStore(target, lock_timeout_s=30)


def _bound_products(target: Path | str) -> int:
    if isinstance(target, Path) and not target.exists():
        return 0
    try:
        with _state(target).read() as con:
            return con.execute("SELECT count(*) FROM items WHERE clarus_product_id IS NOT NULL").fetchone()[0]
    except Exception:  # the schema is still being created
        return 0


def _settled(target: Path | str, placed: set[str]) -> tuple[int, int]:
    """(orders not yet acknowledged, shipments not yet confirmed) among the placed orders."""
    with _state(target).read() as con:
        acknowledged = {r[0] for r in con.execute(
            "SELECT DISTINCT order_id FROM order_events WHERE state = 'ACKNOWLEDGED'").fetchall()}
        open_shipments = con.execute(
            "SELECT count(*) FROM shipments WHERE state <> 'CHANNEL_CONFIRMED' AND order_id IN (SELECT unnest(?))",
            [sorted(placed)]).fetchone()[0]
        dispatched = {r[0] for r in con.execute("SELECT DISTINCT order_id FROM shipments").fetchall()}
    return len(placed - acknowledged), open_shipments + len(placed - dispatched)


def _runs(dagster_home: Path, since: datetime) -> list:
    import dagster as dg

    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        return list(instance.get_run_records(filters=dg.RunsFilter(created_after=since)))


def _queued(dagster_home: Path) -> int:
    import dagster as dg

    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        return instance.get_runs_count(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.QUEUED]))


def _draining(dagster_home: Path) -> bool:
    import dagster as dg

    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        return instance.get_runs_count(filters=dg.RunsFilter(job_name="event_path", statuses=[dg.DagsterRunStatus.STARTED])) > 0


def run_bench(rate: float, minutes: float, *, max_minutes: float, seed: int, faults: str, keep: Path | None,
              warm: bool = False, state_url: str | None = None) -> dict:
    began = time.monotonic()
    deadline = began + min(max_minutes, MAX_MINUTES) * 60
    home = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="clarus-latency-"))
    home.mkdir(parents=True, exist_ok=True)
    stack = Stack(home, seed=seed, faults=faults, state_url=state_url)
    target: Path | str = state_url or home / "state.duckdb"
    catalogue = [v for v in build_catalog(seed).clean_variants() if v.quirk is None]
    placed: set[str] = set()
    queue: list[tuple[float, int]] = []
    try:
        stack.start(deadline)
        while _bound_products(target) == 0:  # orders before the item master would all be held SKU_UNKNOWN
            if time.monotonic() > deadline:
                raise RuntimeError("the item master never bound a product; see the dagster log")
            time.sleep(2)
        print(f"stack up and item master bound after {time.monotonic() - began:.0f} s", file=sys.stderr)
        if warm:  # a sale hour starts on a warm stack: the event_path drain (started by the first landings) is up
            while not _draining(home / "dagster_home"):
                if time.monotonic() > deadline:
                    raise RuntimeError("no event_path run started; see the dagster log")
                time.sleep(2)
            print(f"event_path run started after {time.monotonic() - began:.0f} s", file=sys.stderr)
        print("placing orders", file=sys.stderr)
        since = datetime.now(timezone.utc)
        placing_until = min(time.monotonic() + minutes * 60, deadline)
        next_at = time.monotonic()
        next_sample = 0.0
        with httpx.Client(base_url=stack.shopify_url, timeout=30) as shopify:
            n = 0
            while time.monotonic() < placing_until:
                item = catalogue[n % len(catalogue)]
                response = shopify.post("/_sandbox/orders", json={
                    "line_items": [{"variant_id": item.variant_id, "quantity": 1 + n % 2}],
                    "shipping_address": ADDRESS, "shipping_lines": STANDARD, "email": "ada@example.com"})
                response.raise_for_status()
                placed.add(str(response.json()["order"]["id"]))
                n += 1
                if time.monotonic() >= next_sample:
                    queue.append((round(time.monotonic() - began), _queued(home / "dagster_home")))
                    next_sample = time.monotonic() + 15
                next_at += 1.0 / rate
                time.sleep(max(0.0, next_at - time.monotonic()))
        print(f"{len(placed)} orders placed; waiting for them to settle", file=sys.stderr)
        while time.monotonic() < deadline:
            unacked, unconfirmed = _settled(target, placed)
            queue.append((round(time.monotonic() - began), _queued(home / "dagster_home")))
            if not (unacked or unconfirmed):
                break
            time.sleep(15)
        return _report(home, target, placed, since, queue, rate, minutes, time.monotonic() - began)
    finally:
        stack.stop()
        if not keep:
            shutil.rmtree(home, ignore_errors=True)


def _report(home: Path, target: Path | str, placed: set[str], since: datetime, queue: list, rate: float, minutes: float, seconds: float) -> dict:
    from clarus_pipelines.latency import latency_figures, runs_per_order

    with _state(target).read() as con:  # every order in this stack is one the bench placed
        figures = latency_figures(con)
        dispatched = con.execute("SELECT count(DISTINCT order_id) FROM shipments").fetchone()[0]
    # an order not even taken in yet is pending too
    figures["to_wms"]["pending"] = len(placed) - figures["to_wms"]["count"]
    figures["to_channel"]["orders_dispatched_by_clarus"] = dispatched
    records = _runs(home / "dagster_home", since)
    from_sensors = [r for r in records if "dagster/sensor_name" in r.dagster_run.tags]
    waits = [r.start_time - r.create_timestamp.timestamp() for r in records if r.start_time]
    by_job: dict[str, int] = {}
    for r in from_sensors:
        by_job[r.dagster_run.job_name] = by_job.get(r.dagster_run.job_name, 0) + 1
    return {
        "rate_per_s": rate, "minutes": minutes, "state": "duckdb" if isinstance(target, Path) else "postgresql", "load_average": [round(x, 1) for x in os.getloadavg()], "orders_placed": len(placed), "seconds": round(seconds, 1),
        **figures,
        "runs": {"total": len(records), "from_sensors": len(from_sensors), "by_job": dict(sorted(by_job.items())),
                 "failed": sum(1 for r in records if r.dagster_run.status.value == "FAILURE")},
        "runs_per_order": runs_per_order(len(from_sensors), len(placed)),
        "queue_wait": {**_quantiles(waits), "mean_s": round(statistics.fmean(waits), 1) if waits else None},
        "queue_length": [{"at_s": at, "queued": n} for at, n in queue],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=1.0, help="orders placed per second (default 1)")
    parser.add_argument("--minutes", type=float, default=5.0, help="minutes of placing orders (default 5)")
    parser.add_argument("--max-minutes", type=float, default=MAX_MINUTES,
                        help=f"the whole bench stops after this long (default and ceiling {MAX_MINUTES:g})")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--faults", choices=["none", "light", "heavy"], default="light")
    parser.add_argument("--keep", type=Path, default=None, help="keep the stack's home (state, landings, logs) here")
    parser.add_argument("--warm", action="store_true",
                        help="place orders only once the event_path drain run has started (a warm stack, as in a sale hour)")
    parser.add_argument("--state-url", default=None,
                        help="run the stack on this PostgreSQL state (postgresql://...; it must hold no orders yet)")
    args = parser.parse_args()
    if args.rate <= 0 or args.minutes <= 0:
        parser.error("--rate and --minutes must be positive")
    report = run_bench(args.rate, args.minutes, max_minutes=args.max_minutes, seed=args.seed, faults=args.faults,
                       keep=args.keep, warm=args.warm, state_url=args.state_url)
    print(json.dumps(report, indent=2, default=str))
    print(f"p95_to_wms_s: {report['to_wms']['p95_s']}")
    print(f"p95_to_channel_s: {report['to_channel']['p95_s']}")
    print(f"runs_per_order: {report['runs_per_order']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
