"""`clarus-pipelines ingest` (and the helpers `intake-status` shares): the intake, from the command line.

`ingest` takes what is in the landing zone into the state store with the code the
ingest run uses (`events.ingest_landings`): every landing neither stored nor set aside
yet, in batches; a landing that cannot be stored is set aside alone. It prints a JSON
report and exits 0 when nothing is stalled afterwards.

`intake-status --json` prints, per source: acknowledged, ingested, set aside (with
reasons), refused at the door, the oldest unread landing and `stalled`. Exit 0 when no
source is stalled, 1 otherwise (for monitoring).

Both read the same settings as the receiver: `--landing-dir` or
`$CLARUS_PIPELINES_LANDING_DIR` / `$CLARUS_PIPELINES_HOME/landing`, and the state file
`--state` or `$CLARUS_PIPELINES_STATE_DB` / `$CLARUS_PIPELINES_HOME/state.duckdb`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from clarus_pipelines.receiver.events import IngestReport, ingest_landings, intake_status, unread_landings
from clarus_pipelines.receiver.landing import LandingZone
from clarus_pipelines.receiver.inbox import Inbox
from clarus_pipelines.settings import Settings, get_policies
from clarus_pipelines.state import StateStore

BATCH_SIZE = 500


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--landing-dir", type=Path, default=None,
                        help="landing zone (default $CLARUS_PIPELINES_LANDING_DIR or $CLARUS_PIPELINES_HOME/landing)")
    parser.add_argument("--state", type=str, default=None,
                        help="state: a DuckDB file or postgresql:// URL (default $CLARUS_PIPELINES_STATE_URL, $CLARUS_PIPELINES_STATE_DB or $CLARUS_PIPELINES_HOME/state.duckdb)")


def open_intake(args: argparse.Namespace) -> tuple[Settings, LandingZone | Inbox, StateStore]:
    """The landings (the PostgreSQL inbox when CLARUS_PIPELINES_STATE_URL is postgresql:// and
    no --landing-dir is given, else the landing zone) and the state."""
    settings = Settings()
    zone: LandingZone | Inbox
    if settings.inbox_url and args.landing_dir is None:
        zone = Inbox(settings.inbox_url, pool_size=2)
    else:
        zone = LandingZone(args.landing_dir or settings.landing_path)
    store = StateStore(args.state or settings.state_target)
    return settings, zone, store


def run(args: argparse.Namespace) -> int:
    settings, zone, store = open_intake(args)
    policies = get_policies(settings)
    total = IngestReport()
    first_causes: dict[str, str] = {}
    previous: list[str] = []
    while True:
        pending = unread_landings(zone, store, limit=BATCH_SIZE)
        if not pending or pending == previous:
            break  # done, or only files this command cannot take (vanished meanwhile)
        previous = pending
        report, loaded = ingest_landings(zone, store, pending, run_id="cli:ingest", policies=policies)
        for name in ("ingested", "already_processed", "duplicate_events", "missing", "unreadable", "set_aside",
                     "unknown_topics"):
            setattr(total, name, getattr(total, name) + getattr(report, name))
        total.by_topic.update(report.by_topic)
        first_causes.update({s.landing_id: s.reason for s in loaded.set_aside})
    status = intake_status(zone, store)
    stalled = sorted(source for source, doc in status.items() if doc["stalled"])
    print(json.dumps({"ok": not stalled, "report": total.as_metadata(), "set_aside": first_causes, "stalled": stalled,
                      "status": status}, default=str))
    return 1 if stalled else 0
