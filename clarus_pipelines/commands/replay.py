"""`clarus-pipelines replay`: re-submit landed or quarantined webhooks through the receiver path.

Selects landings by id, source, topic or time (`receiver.replay.select`) and passes each
through the same verification and landing as a live webhook (`receiver.replay.replay`), so
a replay is idempotent. Prints one JSON object: counts per outcome and one result per landing.
"""

from __future__ import annotations

import argparse
from datetime import datetime, timezone
from pathlib import Path

from clarus_pipelines.commands.output import emit, fail
from clarus_pipelines.receiver.app import Intake, WebhookSecrets
from clarus_pipelines.receiver.inbox import Inbox
from clarus_pipelines.receiver.landing import LandingZone
from clarus_pipelines.receiver.replay import replay, select
from clarus_pipelines.catalogue import SOURCES
from clarus_pipelines.settings import Settings, get_policies


def _parse_time(value: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {value!r}") from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--landing-dir", type=Path, default=None,
                        help="landing zone (default: the PostgreSQL webhook inbox when $CLARUS_PIPELINES_STATE_URL is "
                        "postgresql://, else $CLARUS_PIPELINES_LANDING_DIR or $CLARUS_PIPELINES_HOME/landing)")
    parser.add_argument("--id", dest="ids", action="append", default=[], metavar="LANDING_ID",
                        help="a landing (or quarantine) id to replay; repeatable")
    parser.add_argument("--source", choices=SOURCES, help="only this source")
    parser.add_argument("--topic", help="only this topic, e.g. orders/create")
    parser.add_argument("--since", type=_parse_time, help="received at or after (ISO 8601; naive = UTC)")
    parser.add_argument("--until", type=_parse_time, help="received before (ISO 8601; naive = UTC)")
    parser.add_argument("--quarantined", action="store_true", help="replay quarantined bodies instead of landings")
    parser.add_argument("--tag", default="1",
                        help="replay generation: the same tag never replays an event twice (default 1)")
    parser.add_argument("--limit", type=int, default=10_000, help="at most this many events (default 10000)")
    parser.add_argument("--dry-run", action="store_true", help="list what would be replayed, change nothing")


def run(args: argparse.Namespace) -> int:
    settings = Settings()
    if not (args.ids or args.source or args.topic or args.since or args.until):
        return fail("replay", "say what to replay: --id, --source, --topic, --since or --until", indent=None)
    zone: LandingZone | Inbox
    if settings.inbox_url and args.landing_dir is None:  # PostgreSQL mode: the webhook inbox
        zone = Inbox(settings.inbox_url, pool_size=1)
    else:
        landing_dir = (args.landing_dir or settings.landing_path).resolve()
        if not landing_dir.is_dir():
            return fail("replay", f"no landing zone at {landing_dir}", indent=None)
        zone = LandingZone(landing_dir)
    secrets = WebhookSecrets.from_settings(settings)
    intake = Intake(zone, secrets, get_policies(settings).tenant)
    refs, unknown = select(zone, ids=args.ids, source=args.source, topic=args.topic, since=args.since,
                           until=args.until, quarantined=args.quarantined, limit=args.limit)
    summary = replay(intake, refs, quarantined=args.quarantined, tag=args.tag, clarus_token=secrets.clarus_token,
                     dry_run=args.dry_run)
    if unknown:
        summary["not_found"] = unknown
    failed = sum(n for result, n in summary["counts"].items()
                 if result not in ("landed", "duplicate", "recovered", "would_replay"))
    emit({"ok": not (failed or unknown), **summary})
    return 1 if failed or unknown else 0

