"""The hourly stock partitions that should exist, and the ones retention removes (pure)."""

from datetime import datetime, timedelta, timezone

import pytest

from clarus_pipelines.domain.stock import expired_hour_keys, hour_key, key_hour, wanted_hour_keys

GO_LIVE = datetime(2026, 1, 1)


def test_go_live_inside_the_window_starts_the_keys():
    now = datetime(2026, 1, 2, 3, 30)
    keys = wanted_hour_keys(GO_LIVE, 35, now)
    assert keys[0] == "2026-01-01-00:00" and keys[-1] == "2026-01-02-03:00"
    assert len(keys) == 28  # 24 hours of the first day and 4 of the second
    assert keys == sorted(set(keys))


def test_retention_starts_the_keys_once_go_live_is_older():
    now = datetime(2026, 3, 10, 14, 30)
    keys = wanted_hour_keys(GO_LIVE, 2, now)
    # the cutoff 2026-03-08 14:30 deletes the 14:00 hour: the first kept hour is 15:00
    assert keys[0] == "2026-03-08-15:00" and keys[-1] == "2026-03-10-14:00"
    assert len(keys) == 48


def test_on_the_hour_the_cutoff_hour_itself_is_kept():
    now = datetime(2026, 3, 10, 14, 0)
    keys = wanted_hour_keys(GO_LIVE, 1, now)
    assert keys[0] == "2026-03-09-14:00" and keys[-1] == "2026-03-10-14:00"
    assert len(keys) == 25


def test_an_aware_now_is_read_in_utc():
    now = datetime(2026, 3, 10, 16, 30, tzinfo=timezone(timedelta(hours=2)))
    assert wanted_hour_keys(GO_LIVE, 1, now)[-1] == "2026-03-10-14:00"


def test_before_go_live_no_key_exists():
    assert wanted_hour_keys(datetime(2026, 6, 1), 35, datetime(2026, 5, 31, 23, 59)) == []
    assert wanted_hour_keys(datetime(2026, 6, 1), 35, datetime(2026, 6, 1, 0, 0)) == ["2026-06-01-00:00"]


def test_every_kept_snapshot_hour_has_a_key_and_no_older_one():
    now = datetime(2026, 3, 10, 14, 30)
    cutoff = now - timedelta(days=2)
    keys = set(wanted_hour_keys(GO_LIVE, 2, now))
    hours = [datetime(2026, 3, 8, 10) + timedelta(hours=h) for h in range(60)]
    kept_by_retention = {hour_key(h) for h in hours if h >= cutoff and h <= now}
    assert kept_by_retention == keys & {hour_key(h) for h in hours}


def test_keys_and_hours_round_trip():
    assert hour_key(datetime(2026, 3, 1, 14, 59, 59)) == "2026-03-01-14:00"
    assert key_hour("2026-03-01-14:00") == datetime(2026, 3, 1, 14)
    with pytest.raises(ValueError):
        key_hour("2026-03-01-14:30")
    with pytest.raises(ValueError):
        key_hour("2026-03-01")


def test_expired_keys_are_old_hours_without_rows():
    cutoff = datetime(2026, 3, 8, 14, 30)
    keys = ["2026-03-08-13:00", "2026-03-08-14:00", "2026-03-08-15:00", "2026-02-01-00:00", "not-an-hour"]
    # 2026-02-01 00:00 still has rows (the newest hour stays whatever its age)
    assert expired_hour_keys(keys, cutoff, [datetime(2026, 2, 1)]) == ["2026-03-08-13:00", "2026-03-08-14:00"]
