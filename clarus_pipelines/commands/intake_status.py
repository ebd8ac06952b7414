"""`clarus-pipelines intake-status --json`: per source, what the receiver acknowledged and what became of it.

Per source: acknowledged (landed), ingested, set aside (with reasons), refused at the
door (quarantined), unread, the oldest unread landing and its age, and `stalled` (a
landing waits longer than 10 minutes). Exit 0 when no source is stalled, 1 otherwise, so
monitoring can call it. Same settings as the receiver and `clarus-pipelines ingest`.
"""

from __future__ import annotations

import argparse
import json

from clarus_pipelines.commands import ingest
from clarus_pipelines.receiver.events import intake_status


def add_arguments(parser: argparse.ArgumentParser) -> None:
    ingest.add_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print JSON (the only format; kept for scripts)")


def run(args: argparse.Namespace) -> int:
    _, zone, store = ingest.open_intake(args)
    status = intake_status(zone, store)
    print(json.dumps(status, default=str))
    return 1 if any(doc["stalled"] for doc in status.values()) else 0
