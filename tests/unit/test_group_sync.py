"""Group commit of the landing zone's flushes: an acknowledgement waits for the flush that covers it."""

import threading
import time

import pytest

from clarus_pipelines.receiver import landing as landing_module
from clarus_pipelines.receiver.landing import Envelope, GroupSync, LandingZone


class GatedFlush:
    """A flush that records its batches and, while `gate` is closed, blocks (a slow disk)."""

    def __init__(self):
        self.batches: list[list] = []
        self.gate = threading.Event()
        self.started = threading.Event()
        self.fail_next: BaseException | None = None

    def __call__(self, items):
        self.batches.append(list(items))
        self.started.set()
        assert self.gate.wait(10)
        if self.fail_next is not None:
            error, self.fail_next = self.fail_next, None
            raise error


def start(group: GroupSync, item, done: dict, errors: dict) -> threading.Thread:
    def run():
        try:
            group.sync(item)
        except BaseException as exc:  # noqa: BLE001
            errors[item] = exc
        done[item] = True

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def wait_until(condition, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


def test_callers_arriving_during_a_flush_wait_for_the_next_one_and_share_it():
    flush = GatedFlush()
    group = GroupSync(flush)
    done, errors = {}, {}
    first = start(group, "a", done, errors)
    assert flush.started.wait(5)  # "a" leads the first flush, which is now running
    late = [start(group, item, done, errors) for item in ("b", "c", "d")]
    wait_until(lambda: len(group._pending) == 3)
    # the running flush began before b, c and d wrote: none of them may be answered by it
    assert not any(done.get(i) for i in "abcd")
    flush.gate.set()
    for thread in [first, *late]:
        thread.join(5)
    assert all(done.get(i) for i in "abcd") and not errors
    assert flush.batches[0] == ["a"]
    assert sorted(flush.batches[1]) == ["b", "c", "d"]  # one flush covers all three
    assert len(flush.batches) == 2 and group.flushes == 2


def test_a_failed_flush_raises_in_every_caller_it_covered_and_the_next_batch_goes_on():
    flush = GatedFlush()
    flush.fail_next = OSError(5, "Input/output error")
    group = GroupSync(flush)
    done, errors = {}, {}
    first = start(group, "a", done, errors)
    assert flush.started.wait(5)
    flush.gate.set()
    first.join(5)
    assert isinstance(errors.get("a"), OSError)  # never acknowledged as durable
    second = start(group, "b", done, errors)
    second.join(5)
    assert done["b"] and "b" not in errors


def test_syncfs_mode_flushes_bytes_before_the_rename_and_entries_before_the_answer(tmp_path, monkeypatch):
    if landing_module._SYNCFS is None:
        pytest.skip("syncfs(2) is not available here")
    zone = LandingZone(tmp_path / "landing", sync="syncfs")
    events: list[str] = []
    real_rename, real_syncfs = landing_module.os.rename, landing_module.syncfs

    def rename(src, dst):
        events.append("rename")
        return real_rename(src, dst)

    def syncfs(fd):
        events.append("flush")
        return real_syncfs(fd)

    monkeypatch.setattr(landing_module.os, "rename", rename)
    monkeypatch.setattr(landing_module, "syncfs", syncfs)
    result = zone.land(Envelope(source="shopify", topic="orders/create", body=b"{}", dedupe_key="k1"))
    events.append("answer")
    assert result.status == "landed"
    assert events == ["flush", "rename", "flush", "answer"]


def test_syncfs_mode_lands_concurrent_webhooks_once_each_with_fewer_flushes_than_webhooks(tmp_path):
    if landing_module._SYNCFS is None:
        pytest.skip("syncfs(2) is not available here")
    zone = LandingZone(tmp_path / "landing", sync="syncfs")
    results = []
    lock = threading.Lock()

    def post(n):
        r = zone.land(Envelope(source="shopify", topic="orders/create", body=b'{"n": %d}' % n, dedupe_key=f"k{n % 40}"))
        with lock:
            results.append(r)

    threads = [threading.Thread(target=post, args=(n,)) for n in range(80)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(results) == 80
    assert sum(r.status == "landed" for r in results) == 40  # every key once, the rest duplicates
    assert len(zone.list_landings("shopify")) == 40
    assert zone._group.flushes <= 2 * 40  # at most two flushes per stored webhook, usually far fewer


def test_sync_mode_from_the_environment_and_refused_when_unknown(tmp_path, monkeypatch):
    monkeypatch.setenv(landing_module.SYNC_ENV, "fsync")
    assert LandingZone(tmp_path / "a").sync_mode == "fsync"
    monkeypatch.setenv(landing_module.SYNC_ENV, "sometimes")
    with pytest.raises(ValueError, match="CLARUS_PIPELINES_LANDING_SYNC"):
        LandingZone(tmp_path / "b")
