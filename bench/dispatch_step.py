"""What one shipment costs from Clarus dispatch to Shopify fulfilment confirmed, in process.

Builds the flow tests' sandbox world (tests/world.py: Clarus, Shopify and NetSuite served on
loopback from this process, the real receiver, a DuckDB state file), places `--shipments`
orders whose sales orders NetSuite has committed, lets the warehouse dispatch them, takes the
Clarus webhooks in, then advances each shipment (`domain.dispatch.advance_shipment`) one after
another and prints, per shipment: wall time, CPU of this whole process (pipeline and the
sandboxes' servers, which share the cores in `bench/latency.py` too), CPU per thread, and
state transactions. `--profile` adds the pipeline thread's cProfile.

A benchmark, not a test (issue 13: the to-channel p95 is `bench/latency.py`'s, on the real stack).

    .venv/bin/python bench/dispatch_step.py [--shipments 10] [--profile]
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import os
import pstats
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO)]

from conftest import TEST_SECRETS  # noqa: E402  (the flow tests' made-up credentials)

for _key, _value in TEST_SECRETS.items():
    os.environ.setdefault(_key, _value)

from clarus_pipelines.domain import dispatch  # noqa: E402
from clarus_pipelines.domain.tracking import TrackingRules  # noqa: E402
from clarus_pipelines.settings import POLICIES_ENV, SANDBOX_POLICIES  # noqa: E402
from clarus_pipelines.state import store as store_module  # noqa: E402

os.environ.setdefault(POLICIES_ENV, str(SANDBOX_POLICIES))


def _thread_cpu() -> dict[str, float]:
    found = {}
    for thread in threading.enumerate():
        with contextlib.suppress(Exception):
            found[thread.name] = time.clock_gettime(time.pthread_getcpuclockid(thread.ident))
    return found


@contextlib.contextmanager
def _counting_transactions(counts: Counter):
    cls = store_module.StateStore
    read, write = cls.read, cls.write

    def counted(kind, original):
        @contextlib.contextmanager
        def wrapper(self):
            counts[kind] += 1
            with original(self) as con:
                yield con
        return wrapper

    cls.read, cls.write = counted("read", read), counted("write", write)
    try:
        yield
    finally:
        cls.read, cls.write = read, write


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shipments", type=int, default=10)
    parser.add_argument("--profile", action="store_true", help="print the pipeline thread's cProfile (top 40, cumulative)")
    args = parser.parse_args(argv)

    from world import POLICIES, World

    tmp = Path(tempfile.mkdtemp(prefix="bench-dispatch-"))
    world = World.local(tmp)
    try:
        items = world.items(6)
        for i in range(args.shipments):
            order = world.place_order([(items[i % 6], 1), (items[(i + 1) % 6], 2)], commit=True)
            world.warehouse(order["goods_out_id"])
        world.ingest()
        dispatch.take_in_landings(world.store, TrackingRules.from_policies(POLICIES), POLICIES.sku_cleaning)
        with world.store.read() as con:
            due = [shipment_id for _, shipment_id in dispatch.due_shipments(con, dispatch.utcnow())]
        config = dispatch.DispatchConfig(erp_recheck_s=0, retry_base_s=0)
        transactions: Counter = Counter()
        outcomes: Counter = Counter()
        walls = []
        profile = cProfile.Profile() if args.profile else None
        threads_before, cpu_before = _thread_cpu(), time.process_time()
        with _counting_transactions(transactions):
            for shipment_id in due:
                began = time.perf_counter()
                if profile:
                    profile.enable()
                outcomes[dispatch.advance_shipment(world.store, shipment_id, world.netsuite, world.shopify, config=config)] += 1
                if profile:
                    profile.disable()
                walls.append(time.perf_counter() - began)
        cpu = time.process_time() - cpu_before
        threads_after = _thread_cpu()
        n = len(due)
        names = {url.rsplit(":", 1)[1]: system for system, url in world.urls.items()}
        names[world.receiver.url.rsplit(":", 1)[1]] = "receiver"
        print(f"shipments: {n}, outcomes {dict(outcomes)}")
        print(f"state transactions per shipment: {transactions['read'] / n:g} read, {transactions['write'] / n:g} write")
        print("CPU per shipment by thread (s):")
        for name, after in sorted(threads_after.items()):
            spent = after - threads_before.get(name, 0.0)
            if spent >= 0.0005 * n:
                print(f"  {name} {names.get(name.rsplit(':', 1)[-1], '')}: {spent / n:.4f}")
        print(f"wall per shipment (s): {[round(w, 3) for w in walls]}")
        print(f"wall_per_shipment_s: {sum(walls) / n:.3f}")
        print(f"cpu_per_shipment_s: {cpu / n:.3f}")
        if profile:
            out = io.StringIO()
            pstats.Stats(profile, stream=out).sort_stats("cumulative").print_stats(40)
            print(out.getvalue())
    finally:
        world.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
