"""The heavy-fault rehearsal through the CLI (`clarus-pipelines simulate`), and what every one must show."""

import json
import os
import subprocess
import sys
from pathlib import Path

CLI = str(Path(sys.executable).parent / "clarus-pipelines")


def rehearse(tmp_path, *, orders: int, seed: int, timeout_s: int, state_url: str | None = None) -> dict:
    """Run `clarus-pipelines simulate` with heavy faults and check what every rehearsal must show."""
    done = subprocess.run(
        [CLI, "simulate", "--orders", str(orders), "--seed", str(seed), "--faults", "heavy", "--timeout", str(timeout_s),
         "--home", str(tmp_path / "rehearsal"), *(["--state-url", state_url] if state_url else [])],
        capture_output=True, text=True, timeout=timeout_s + 50, cwd=tmp_path,
        # the DuckDB rehearsal stays on DuckDB whatever state the shell points at
        env={k: v for k, v in os.environ.items() if k != "CLARUS_PIPELINES_STATE_URL"},
    )
    report = json.loads(done.stdout)  # stdout is exactly one JSON object; logs went to stderr
    assert "simulate:" in done.stderr
    assert not report["run"]["timed_out"], report["run"]
    assert (report["lost"], report["duplicates"], report["ordering_violations"]) == (0, 0, 0), (
        report["lost_orders"], report["duplicate_records"], report["ordering_violation_records"])
    assert done.returncode == 0
    assert report["orders_generated"] == orders and report["shopify"]["orders"] == orders
    assert report["run"]["state"] == ("postgresql" if state_url else "duckdb")
    return report


def assert_the_sale_went_through(report: dict, orders: int) -> None:
    """Most of the sale reached both systems and came back dispatched; the rest is held or explained.
    Few runs per order (issue 13): a tick's sensors batch what is due into one run per flow."""
    assert report["netsuite"]["sales_orders"] >= orders * 0.7 and report["clarus"]["goods_outs"] >= orders * 0.7
    assert report["netsuite"]["item_fulfilments"] >= orders * 0.3 and report["shopify"]["fulfilments"] >= orders * 0.3
    assert report["clarus"]["shipments"] >= report["shopify"]["fulfilments"]
    assert sum(report["run"]["runs"].values()) > 10  # (a run failing under heavy faults is retried by the next tick)
    latency = report["latency"]
    assert latency["runs_per_order"] is not None and latency["runs_per_order"] <= 4, latency["event_runs"]
    assert latency["to_wms"]["count"] >= orders * 0.7 and latency["p95_to_wms_s"] is not None
    assert latency["to_channel"]["count"] >= orders * 0.3 and latency["p95_to_channel_s"] is not None
