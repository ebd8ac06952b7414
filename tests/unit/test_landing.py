"""The landing zone: durable files, exactly-once under concurrency, ordered listing, upkeep."""

import json
import multiprocessing
import os
import struct
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from clarus_pipelines.receiver.landing import (
    Envelope,
    LandingPathError,
    LandingZone,
    format_landing_id,
    landing_id_at,
    landing_time,
    topic_dir,
)


def envelope(key: str, topic: str = "orders/create", body: bytes = b'{"id": 1}', source: str = "shopify") -> Envelope:
    return Envelope(source=source, topic=topic, body=body, dedupe_key=key, headers={"x-shopify-webhook-id": key})


def visible_landings(root: Path) -> list[Path]:
    return sorted(p for p in root.glob("*/*/*/*.json") if not p.parts[-4].startswith("_"))


def test_land_writes_one_readable_file_with_exact_bytes(tmp_path):
    zone = LandingZone(tmp_path)
    body = '{"id": 450789469, "note": "caf\u00e9 \u2603"}'.encode()
    result = zone.land(envelope("w-1", body=body))
    assert result.status == "landed"
    path = tmp_path / result.relpath
    assert path.parts[-4:-1] == ("shopify", "orders.create", datetime.now(timezone.utc).strftime("%Y-%m-%d"))
    assert path.name == f"{result.landing_id}.json"
    stored = zone.read(result.relpath)
    assert stored.body == body and stored.topic == "orders/create" and stored.via == "webhook"
    assert list((tmp_path / "_tmp").iterdir()) == []


def test_binary_body_round_trips_as_base64(tmp_path):
    zone = LandingZone(tmp_path)
    body = b'{"a": "\xff\xfe"}'
    result = zone.land(envelope("bin", body=body))
    doc = json.loads((tmp_path / result.relpath).read_bytes())
    assert doc["body_encoding"] == "base64"
    assert zone.read(result.relpath).body == body


def test_same_key_lands_once_and_names_the_first_landing(tmp_path):
    zone = LandingZone(tmp_path)
    first = zone.land(envelope("dup"))
    again = zone.land(envelope("dup", body=b'{"id": 2}'))
    assert again.status == "duplicate" and again.landing_id == first.landing_id
    assert len(visible_landings(tmp_path)) == 1
    # a different source with the same key is a different event
    assert zone.land(envelope("dup", topic="salesorder/update", source="netsuite")).status == "landed"


def test_concurrent_duplicates_from_threads_land_exactly_once(tmp_path):
    zone = LandingZone(tmp_path)
    barrier = threading.Barrier(16)

    def post(i: int):
        barrier.wait()
        return zone.land(envelope(f"key-{i % 4}"))

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(post, range(16)))
    assert sum(r.status == "landed" for r in results) == 4
    assert len(visible_landings(tmp_path)) == 4
    by_key = {}
    for i, r in enumerate(results):
        by_key.setdefault(i % 4, set()).add(r.landing_id)
    assert all(len(ids) == 1 for ids in by_key.values())


def _land_in_process(root: str, key: str, start, out) -> None:
    start.wait()
    out.put(LandingZone(root).land(envelope(key)).status)


def test_concurrent_duplicates_from_processes_land_exactly_once(tmp_path):
    ctx = multiprocessing.get_context("fork")
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_land_in_process, args=(str(tmp_path), "same", start, out)) for _ in range(4)]
    for p in procs:
        p.start()
    start.set()
    statuses = sorted(out.get(timeout=30) for _ in procs)
    for p in procs:
        p.join(30)
    assert statuses == ["duplicate", "duplicate", "duplicate", "landed"]
    assert len(visible_landings(tmp_path)) == 1


def test_ids_increase_in_commit_order_across_zone_handles(tmp_path):
    a, b = LandingZone(tmp_path), LandingZone(tmp_path)
    ids = [(a if i % 2 else b).land(envelope(f"k{i}")).landing_id for i in range(50)]
    assert ids == sorted(ids) and len(set(ids)) == 50
    # the clock going backwards (or another process ahead of it) does not make ids go backwards
    ahead = int(datetime(2100, 1, 1, tzinfo=timezone.utc).timestamp() * 1_000_000)
    (tmp_path / ".commit.lock").write_bytes(struct.pack("<q", ahead))
    assert LandingZone(tmp_path).land(envelope("after-clock")).landing_id > format_landing_id(ahead)


def test_list_landings_after_watermark_topic_and_limit(tmp_path):
    zone = LandingZone(tmp_path)
    ids = [zone.land(envelope(f"k{i}", topic="orders/create" if i % 2 else "refunds/create")).landing_id for i in range(10)]
    assert [r.landing_id for r in zone.list_landings("shopify")] == ids
    assert [r.landing_id for r in zone.list_landings("shopify", after=ids[6])] == ids[7:]
    assert [r.landing_id for r in zone.list_landings("shopify", limit=3)] == ids[:3]
    assert [r.landing_id for r in zone.list_landings("shopify", topic="refunds/create")] == ids[0::2]
    assert [r.landing_id for r in zone.list_landings("shopify", after=ids[2], until=ids[5])] == ids[3:5]
    assert zone.list_landings("clarus") == []
    ref = zone.find(ids[4])
    assert ref is not None and ref.relpath.endswith(f"{ids[4]}.json") and zone.read(ref).dedupe_key == "k4"


def test_listing_while_writers_run_never_skips_a_landing(tmp_path):
    """A watermark taken from each listing never jumps over a file that shows up later."""
    zone = LandingZone(tmp_path)
    stop = threading.Event()

    def writer(n: int):
        for i in range(60):
            zone.land(envelope(f"w{n}-{i}", topic=f"orders/t{i % 3}"))
        stop.set()

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    seen: list[str] = []
    after = None
    while True:
        done = all(not t.is_alive() for t in threads)
        batch = zone.list_landings("shopify", after=after)
        seen += [r.landing_id for r in batch]
        if batch:
            after = batch[-1].landing_id
        elif done:
            break
    for t in threads:
        t.join()
    everything = [r.landing_id for r in zone.list_landings("shopify")]
    assert len(everything) == 240
    assert seen == everything


def test_quarantine_keeps_body_and_reason(tmp_path):
    zone = LandingZone(tmp_path)
    env = Envelope(source="shopify", topic="orders/create", body=b"{not json", dedupe_key="",
                   quarantine_reason="malformed JSON: Expecting property name")
    ref = zone.quarantine(env)
    assert ref.relpath.startswith("_quarantine/shopify/")
    assert zone.read(ref).body == b"{not json"
    assert [r.landing_id for r in zone.list_landings(quarantined=True)] == [ref.landing_id]
    assert zone.list_landings() == []
    with pytest.raises(ValueError):
        zone.quarantine(envelope("no-reason"))


def test_resolve_refuses_paths_outside_landings(tmp_path):
    zone = LandingZone(tmp_path)
    result = zone.land(envelope("x"))
    assert zone.resolve(result.relpath) == tmp_path.resolve() / result.relpath
    for bad in ("../etc/passwd", "shopify/../../x.json", "_dedupe/shopify/ab/cd.json", "_tmp/a.json",
                "shopify/orders.create/2025-01-01/not-an-id.json", "/etc/passwd"):
        with pytest.raises(LandingPathError):
            zone.resolve(bad)


def test_topic_folder_names_are_safe():
    assert topic_dir("orders/create") == "orders.create"
    assert topic_dir("../../etc") == "etc"
    assert topic_dir("..") == "unknown" and topic_dir("") == "unknown"
    assert "/" not in topic_dir("a/b/c d")


def test_interrupted_commit_is_taken_over_by_the_next_delivery(tmp_path):
    """A writer killed between claiming the event and renaming its file must not lose it."""
    zone = LandingZone(tmp_path)
    first = zone.land(envelope("crashy"))
    [marker] = [p for p in (tmp_path / "_dedupe").rglob("*") if p.is_symlink()]
    assert os.readlink(marker).startswith(first.relpath + "|")
    # simulate the kill: the landing never became visible, its temp file is still there
    stale_tmp = tmp_path / "_tmp" / "deadbeef.tmp"
    (tmp_path / first.relpath).rename(stale_tmp)
    marker.unlink()
    marker.symlink_to(f"{first.relpath}|{stale_tmp.name}")
    assert zone.is_duplicate("shopify", "crashy") is None

    retry = zone.land(envelope("crashy"))
    assert retry.status == "recovered" and retry.landing_id > first.landing_id
    assert [p.name for p in visible_landings(tmp_path)] == [f"{retry.landing_id}.json"]
    assert not stale_tmp.exists()
    assert os.readlink(marker).startswith(retry.relpath + "|")
    assert zone.land(envelope("crashy")).status == "duplicate"


def test_finish_interrupted_commits_complete_temps_and_drops_torn_ones(tmp_path):
    zone = LandingZone(tmp_path)
    complete = tmp_path / "_tmp" / "complete.tmp"
    complete.write_bytes(envelope("orphan").to_json())
    torn = tmp_path / "_tmp" / "torn.tmp"
    torn.write_bytes(envelope("torn").to_json()[:40])
    assert zone.finish_interrupted(min_age_s=3600) == 0  # too young: may still be in flight
    assert zone.finish_interrupted(min_age_s=0) == 1
    assert list((tmp_path / "_tmp").iterdir()) == []
    [ref] = zone.list_landings()
    assert zone.read(ref).dedupe_key == "orphan"


def test_rejection_log_appends_and_reads_by_offset(tmp_path):
    zone = LandingZone(tmp_path)
    zone.record_rejection("shopify", "bad_signature")
    zone.record_rejection("clarus", "bad_token")
    found, offsets = zone.read_rejections({})
    assert [(r.source, r.reason) for r in found] == [("shopify", "bad_signature"), ("clarus", "bad_token")]
    # a half-appended line waits for its newline
    log_file = next((tmp_path / "_rejections").iterdir())
    with log_file.open("ab") as fh:
        fh.write(b'{"at": "2025-01-01T00:00:00Z", "source": "netsu')
    more, offsets2 = zone.read_rejections(offsets)
    assert more == [] and offsets2 == offsets
    with log_file.open("ab") as fh:
        fh.write(b'ite", "reason": "bad_signature"}\n')
    more, _ = zone.read_rejections(offsets2)
    assert [(r.source, r.reason) for r in more] == [("netsuite", "bad_signature")]
    assert "body" not in log_file.read_text()


def test_prune_removes_only_what_is_past_retention(tmp_path):
    zone = LandingZone(tmp_path)
    fresh = zone.land(envelope("fresh"))
    old_day = (datetime.now(timezone.utc) - timedelta(days=100)).strftime("%Y-%m-%d")
    old_dir = tmp_path / "shopify" / "orders.create" / old_day
    old_dir.mkdir(parents=True)
    (old_dir / "20000101T000000.000000Z.json").write_bytes(envelope("old").to_json())
    (tmp_path / "_quarantine" / "shopify" / old_day).mkdir(parents=True)
    (tmp_path / "_rejections" / f"{old_day}.jsonl").write_text("{}\n")
    old_marker = tmp_path / "_dedupe" / "shopify" / "00" / "00old"
    old_marker.parent.mkdir(parents=True)
    old_marker.symlink_to("shopify/orders.create/2000-01-01/20000101T000000.000000Z.json|x.tmp")
    hundred_days = (datetime.now() - timedelta(days=100)).timestamp()
    os.utime(old_marker, (hundred_days, hundred_days), follow_symlinks=False)

    report = zone.prune(datetime.now(timezone.utc) - timedelta(days=90))
    assert report.landing_days_removed == 1 and report.landings_removed == 1
    assert report.quarantine_days_removed == 1 and report.rejection_logs_removed == 1
    assert report.markers_removed == 1
    assert not old_dir.exists() and not old_marker.is_symlink()
    assert (tmp_path / fresh.relpath).exists()
    assert zone.land(envelope("fresh")).status == "duplicate"  # the fresh marker survived


def test_landing_id_time_helpers():
    moment = datetime(2025, 3, 4, 5, 6, 7, 890123)
    lid = landing_id_at(moment)
    assert lid == "20250304T050607.890123Z"
    assert landing_time(lid) == moment


# ---------------------------------------------------------------------------- one batch, shared flushes (group commit)


def test_land_many_answers_each_envelope_with_its_own_result(tmp_path):
    zone = LandingZone(tmp_path, sync="syncfs")
    before = zone.land(envelope("stored-before"))
    flushes = zone._group.flushes
    batch = [envelope(f"b-{i}") for i in range(10)] + [envelope("b-3"), envelope("stored-before"), envelope("b-3")]
    results = zone.land_many(batch)
    assert [r.status for r in results] == ["landed"] * 10 + ["duplicate"] * 3
    assert results[10].landing_id == results[12].landing_id == results[3].landing_id
    assert results[11].landing_id == before.landing_id
    assert zone._group.flushes - flushes == 2, "one flush before the renames, one after, for the whole batch"
    landed = visible_landings(tmp_path)
    assert len(landed) == 11 and not list(zone.tmp_dir.iterdir()), "no copy of a duplicate is left behind"
    ids = [r.landing_id for r in results[:10]]
    assert ids == sorted(ids) and len(set(ids)) == 10
    for result, env in zip(results[:10], batch):
        assert zone.read(result.relpath).body == env.body
        assert zone.is_duplicate("shopify", env.dedupe_key).landing_id == result.landing_id


def test_land_many_one_failing_envelope_never_fails_the_others(tmp_path, monkeypatch):
    zone = LandingZone(tmp_path, sync="syncfs")
    real_write = zone._write_tmp

    def write(data: bytes, *, durable: bool = True) -> str:
        if b"poison" in data:
            raise OSError(28, "No space left on device")
        return real_write(data, durable=durable)

    monkeypatch.setattr(zone, "_write_tmp", write)
    results = zone.land_many([envelope("ok-1"), envelope("bad", body=b'{"poison": 1}'), envelope("ok-2")])
    assert [type(r).__name__ for r in results] == ["LandResult", "OSError", "LandResult"]
    assert {zone.read(r.relpath).dedupe_key for r in (results[0], results[2])} == {"ok-1", "ok-2"}
    assert zone.is_duplicate("shopify", "bad") is None, "the failed one can land when it is sent again"


def test_land_many_reports_nothing_landed_when_the_final_flush_fails(tmp_path, monkeypatch):
    zone = LandingZone(tmp_path, sync="syncfs")
    calls = []

    def flush(items):
        calls.append(len(items))
        if len(calls) == 2:  # the flush after the renames
            raise OSError(5, "Input/output error")

    monkeypatch.setattr(zone._group, "_flush", flush)
    results = zone.land_many([envelope("f-1"), envelope("f-2")])
    assert all(isinstance(r, OSError) for r in results), "no answer before the renames are durable"
    assert len(calls) == 2
