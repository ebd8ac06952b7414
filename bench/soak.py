"""Soak: a 1,000-order sale day with heavy faults, through `clarus-pipelines simulate`.

The rehearsal CI keeps is 200 orders (tests/e2e/test_simulate.py); this is the full-size one.
It runs the same command, then prints the counts that matter and how long it took:

    .venv/bin/python bench/soak.py [--orders 1000] [--seed 7] [--faults heavy] [--timeout 2700]

It ends with the lines `lost: N`, `duplicates: N`, `ordering_violations: N` and `seconds: X`,
and exits non-zero when anything was lost, doubled or misordered, or the run timed out.
About 17-19 minutes on 2 cores at the defaults.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CLI = str(Path(sys.executable).parent / "clarus-pipelines")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--faults", choices=["none", "light", "heavy"], default="heavy")
    parser.add_argument("--timeout", type=float, default=2700.0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="soak-") as home:
        started = time.monotonic()
        done = subprocess.run(
            [CLI, "simulate", "--orders", str(args.orders), "--seed", str(args.seed), "--faults", args.faults,
             "--timeout", str(args.timeout), "--home", str(Path(home) / "rehearsal")],
            capture_output=True, text=True, timeout=args.timeout + 120,
        )
        seconds = time.monotonic() - started
    try:
        report = json.loads(done.stdout)
    except json.JSONDecodeError:
        sys.stderr.write(done.stderr[-4000:])
        print(f"simulate printed no report (exit {done.returncode})")
        return 2

    print(f"orders: {args.orders} (seed {args.seed}, faults {args.faults})")
    print(f"shopify: {json.dumps(report['shopify'])}")
    print(f"clarus: {json.dumps(report['clarus'])}")
    print(f"netsuite: {json.dumps(report['netsuite'])}")
    print(f"held_by_reason: {json.dumps(report['held_by_reason'])}")
    print(f"exceptions: {json.dumps(report['exceptions'])}")
    print(f"runs: {sum(report['run']['runs'].values())} (timed_out: {report['run']['timed_out']})")
    for key in ("latency", "runs_per_order"):
        if key in report:
            print(f"{key}: {json.dumps(report[key])}")
    print(f"lost: {report['lost']}")
    print(f"duplicates: {report['duplicates']}")
    print(f"ordering_violations: {report['ordering_violations']}")
    print(f"seconds: {seconds:.0f}")
    failed = report["lost"] or report["duplicates"] or report["ordering_violations"] or report["run"]["timed_out"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
