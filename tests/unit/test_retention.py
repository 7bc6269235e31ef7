"""Retention sweeper on the local store: expired files go, files under retention never do."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

from daemon.archive.retention import (
    Retention,
    RetentionConfig,
    TrackerRetention,
    file_day_end,
    is_expired,
    tracker_root,
)
from daemon.stores.local import LocalStore, LocalStoreConfig

NOW = dt.datetime(2024, 3, 20, 12, 0, tzinfo=dt.UTC).timestamp()


def key(day: str, tracker: str = "audit", first: int = 0) -> str:
    stamp = day.replace("/", "") + "T0000Z"
    return f"trails/{tracker}/acct/eu-west-1/{day}/w1_{tracker}_{stamp}_{first:020d}-{first + 9:020d}.json.gz"


def test_expiry_counts_whole_days() -> None:
    k = key("2024/03/10")
    assert file_day_end(k, 0) == dt.datetime(2024, 3, 11, tzinfo=dt.UTC).timestamp()
    # Day ended 2024-03-11T00:00; with 9 days it expires at 2024-03-20T00:00, not before.
    assert is_expired(k, 0, 9, NOW)
    assert not is_expired(k, 0, 10, NOW)
    assert not is_expired(k, 0, 9, dt.datetime(2024, 3, 19, 23, 59, tzinfo=dt.UTC).timestamp())


def test_key_without_date_uses_mtime() -> None:
    assert file_day_end("loose/file.json.gz", 1234.0) == 1234.0
    assert file_day_end("x/2024/13/40/bad-date.json.gz", 99.0) == 99.0


async def test_sweeper_deletes_only_expired_archive_files(tmp_path: Path) -> None:
    store = LocalStore("local", LocalStoreConfig(path=tmp_path))
    old = [key("2024/02/01", first=i * 10) for i in range(3)]
    boundary_keep = key("2024/03/10", first=100)  # expires only at 2024-03-21 with 10 days
    young = key("2024/03/19", first=200)
    other_tracker_old = key("2024/01/01", tracker="other")
    digest_like = "trails/audit/acct/eu-west-1/2024/01/01/digest-2024-01-01.json"
    for k in [*old, boundary_keep, young, other_tracker_old, digest_like]:
        await store.put(k, k.encode())
    retention = Retention(
        [TrackerRetention("audit", store, tracker_root("trails", "audit"), 10)],
        RetentionConfig(interval=60),
        clock=lambda: NOW,
    )
    report = await retention.run_once()
    assert sorted(report.deleted["audit"]) == sorted(old)
    assert report.kept["audit"] == 2
    remaining = [o.key async for o in store.list()]
    assert sorted(remaining) == sorted([boundary_keep, young, other_tracker_old, digest_like])
    # A second round finds nothing more to do.
    again = await retention.run_once()
    assert again.deleted["audit"] == []


async def test_sweeper_uses_mtime_for_undated_files(tmp_path: Path) -> None:
    store = LocalStore("local", LocalStoreConfig(path=tmp_path))
    name = "w1_audit_20240101T0000Z_00000000000000000000-00000000000000000009.json.gz"
    await store.put(f"trails/audit/{name}", b"x")
    await store.put(f"trails/audit/new/{name}", b"y")
    old_time = NOW - 40 * 86400
    os.utime(tmp_path / "trails/audit" / name, (old_time, old_time))
    os.utime(tmp_path / "trails/audit/new" / name, (NOW - 86400, NOW - 86400))
    retention = Retention(
        [TrackerRetention("audit", store, "trails/audit/", 30)], RetentionConfig(), clock=lambda: NOW
    )
    report = await retention.run_once()
    assert report.deleted["audit"] == [f"trails/audit/{name}"]
    assert [o.key async for o in store.list()] == [f"trails/audit/new/{name}"]


def test_from_config_selects_trackers_with_retention(tmp_path: Path) -> None:
    from daemon.config import parse_config

    cfg = parse_config(
        f"""
stores:
  local: {{type: local, path: {tmp_path}}}
trackers:
  - {{name: kept, prefix: a}}
  - {{name: short, prefix: b/c, retention_days: 7}}
retention: {{interval: 10m}}
"""
    )
    stores = {"local": LocalStore("local", LocalStoreConfig(path=tmp_path))}
    r = Retention.from_config(cfg.retention, cfg.trackers, stores)
    assert [(t.tracker, t.root, t.days) for t in r.trackers] == [("short", "b/c/short/", 7)]
    assert r.config.interval == 600


async def test_a_cloudtrail_layout_tracker_sweeps_its_own_old_files_only(tmp_path: Path) -> None:
    from daemon.archive import keys

    store = LocalStore("local", LocalStoreConfig(path=tmp_path))
    now = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
    old_ms = int(dt.datetime(2026, 1, 1, tzinfo=dt.UTC).timestamp() * 1000)
    young_ms = int(dt.datetime(2026, 2, 28, tzinfo=dt.UTC).timestamp() * 1000)
    old_key = keys.cloudtrail_file_key(
        "trails", "w1", keys.partition_of("1111", "us-east-1", old_ms), old_ms, 0, 4
    )
    young_key = keys.cloudtrail_file_key(
        "trails", "w1", keys.partition_of("1111", "us-east-1", young_ms), young_ms, 5, 9
    )
    digest = "trails/ct/_digest/w1/2026/01/01/w1_ct_20260101T000000Z_000000000001.json"
    stranger = "trails/AWSLogs/1111/CloudTrail/us-east-1/2026/01/01/notes.txt"
    for k in (old_key, young_key, digest, stranger):
        await store.put(k, b"x")
    retention = Retention(
        [TrackerRetention("ct", store, tracker_root("trails", "ct", "cloudtrail"), 30, "cloudtrail")],
        RetentionConfig(interval=60),
        clock=lambda: now.timestamp(),
    )
    report = await retention.run_once()
    assert report.deleted["ct"] == [old_key]
    left = {o.key async for o in store.list("trails/")}
    assert left == {young_key, digest, stranger}
