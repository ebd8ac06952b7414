"""Replay: re-submit landed or quarantined webhooks through the receiver path
(the `clarus-pipelines replay` command is `clarus_pipelines.commands.replay`).

Each selected event goes through `Intake.accept`, the function the HTTP handlers call:
the signature or token is verified again on the exact stored bytes, then the event is
landed with `via='replay'` and picked up by the ingest sensors like any other landing.

Idempotent: a replayed landing is keyed by (original landing id, `--tag`), so running
the same replay twice stores nothing the second time; pass a new `--tag` to replay the
same events again on purpose. A quarantined body keeps its own dedupe key (e.g. the
Shopify webhook id), so it lands at most once however often it is replayed.
"""

from __future__ import annotations

import logging
from collections import Counter
from datetime import datetime, timedelta
from typing import Any

from clarus_pipelines.receiver.app import Intake
from clarus_pipelines.receiver.landing import LandingRef, LandingZone, landing_id_at

log = logging.getLogger(__name__)


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
