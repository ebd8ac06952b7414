"""`clarus-pipelines replay`: re-submit landed or quarantined webhooks through the receiver path.

Each selected event goes through `Intake.accept`, the function the HTTP handlers call:
the signature or token is verified again on the exact stored bytes, then the event is
landed with `via='replay'` and picked up by the ingest sensors like any other landing.

Idempotent: a replayed landing is keyed by (original landing id, `--tag`), so running
the same replay twice stores nothing the second time; pass a new `--tag` to replay the
same events again on purpose. A quarantined body keeps its own dedupe key (e.g. the
Shopify webhook id), so it lands at most once however often it is replayed.
Prints a JSON summary on stdout.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from clarus_pipelines.receiver.app import Intake, WebhookSecrets
from clarus_pipelines.receiver.landing import SOURCES, LandingRef, LandingZone, landing_id_at
from clarus_pipelines.settings import Settings, get_policies

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--landing-dir", type=Path, default=None,
                        help="landing zone (default $CLARUS_PIPELINES_LANDING_DIR or $CLARUS_PIPELINES_HOME/landing)")
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


def _parse_time(value: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {value!r}") from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def select(zone: LandingZone, *, ids: list[str] | None = None, source: str | None = None, topic: str | None = None,
           since: datetime | None = None, until: datetime | None = None, quarantined: bool = False,
           limit: int | None = None) -> tuple[list[LandingRef], list[str]]:
    """The landings to replay, oldest first, and the ids asked for that were not found."""
    if ids:
        refs, unknown = [], []
        for landing_id in ids:
            ref = zone.find(landing_id, quarantined=quarantined)
            if ref is None:
                unknown.append(landing_id)
            elif source is None or ref.source == source:
                refs.append(ref)
        refs.sort(key=lambda r: r.landing_id)
        return refs[:limit] if limit else refs, unknown
    after = landing_id_at(since - timedelta(microseconds=1)) if since is not None else None  # since is inclusive
    bound = landing_id_at(until) if until is not None else None
    refs = zone.list_landings(source, after=after, until=bound, topic=None if quarantined else topic,
                              quarantined=quarantined, limit=None)
    if quarantined and topic:
        refs = [r for r in refs if zone.read(r).topic == topic]
    return (refs[:limit] if limit else refs), []


def replay(intake: Intake, refs: list[LandingRef], *, quarantined: bool, tag: str = "1",
           clarus_token: str | None = None, dry_run: bool = False) -> dict[str, Any]:
    """Re-submit each landing through `intake.accept`; returns counts and per-event results."""
    results: list[dict[str, Any]] = []
    counts: Counter[str] = Counter()
    for ref in refs:
        envelope = intake.zone.read(ref)
        if dry_run:
            results.append({"id": ref.landing_id, "source": envelope.source, "topic": envelope.topic, "result": "would_replay"})
            counts["would_replay"] += 1
            continue
        outcome = intake.accept(
            envelope.source,
            envelope.body,
            envelope.headers,
            token=clarus_token,  # the URL token is never stored; this trusted local caller supplies ours
            via="replay",
            replay_of=None if quarantined else ref.landing_id,
            replay_tag=tag,
            check_freshness=False,
            quarantine_malformed=False,
        )
        counts[outcome.result] += 1
        results.append({"id": ref.landing_id, "source": envelope.source, "topic": outcome.topic or envelope.topic,
                        "result": outcome.result, "landing_id": outcome.landing_id, "reason": outcome.reason})
    return {"selected": len(refs), "counts": dict(sorted(counts.items())), "results": results}


def run(args: argparse.Namespace) -> int:
    settings = Settings()
    landing_dir = (args.landing_dir or settings.landing_path).resolve()
    if not landing_dir.is_dir():
        print(json.dumps({"error": f"no landing zone at {landing_dir}"}))
        return 2
    if not (args.ids or args.source or args.topic or args.since or args.until):
        print(json.dumps({"error": "say what to replay: --id, --source, --topic, --since or --until"}))
        return 2
    zone = LandingZone(landing_dir)
    secrets = WebhookSecrets.from_settings(settings)
    intake = Intake(zone, secrets, get_policies(settings).tenant)
    refs, unknown = select(zone, ids=args.ids, source=args.source, topic=args.topic, since=args.since,
                           until=args.until, quarantined=args.quarantined, limit=args.limit)
    summary = replay(intake, refs, quarantined=args.quarantined, tag=args.tag, clarus_token=secrets.clarus_token,
                     dry_run=args.dry_run)
    if unknown:
        summary["not_found"] = unknown
    print(json.dumps(summary, indent=2))
    failed = sum(n for result, n in summary["counts"].items()
                 if result not in ("landed", "duplicate", "recovered", "would_replay"))
    return 1 if failed or unknown else 0

