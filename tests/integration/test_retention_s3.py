"""Retention on S3: expired archive files go; digests and objects under Object Lock never do."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from daemon.archive.retention import Retention, RetentionConfig, TrackerRetention, tracker_root
from daemon.stores.s3 import S3Store, S3StoreConfig
from tests.fixtures.s3 import boto3_client, new_bucket, s3_store_config

pytestmark = pytest.mark.integration

NOW = dt.datetime(2024, 3, 20, 12, 0, tzinfo=dt.UTC)


class CountingS3Store(S3Store):
    """Records every delete it is asked for, so a test can prove which ones retention made."""

    deletes: list[str]

    async def delete(self, key: str) -> None:
        self.deletes.append(key)
        await super().delete(key)


def make(endpoint: str, bucket: str, **extra: Any) -> CountingS3Store:
    store = CountingS3Store("s3", S3StoreConfig.model_validate(s3_store_config(endpoint, bucket, **extra)))
    store.deletes = []
    return store


def file_key(day: str, first: int) -> str:
    stamp = day.replace("/", "") + "T0000Z"
    return f"trails/audit/acct/r1/{day}/w1_audit_{stamp}_{first:020d}-{first + 9:020d}.json.gz"


DIGEST = "trails/audit/_digest/w1/2024/01/01/w1_audit_20240101T010000Z_1.json"


async def test_expired_files_are_swept_and_digests_kept(s3_server: str) -> None:
    bucket = new_bucket(s3_server)
    store = make(s3_server, bucket, prefix="org")
    old = [file_key("2024/01/05", i * 10) for i in range(3)]
    young = file_key("2024/03/19", 100)
    retention = Retention(
        [TrackerRetention("audit", store, tracker_root("trails", "audit"), 30)],
        RetentionConfig(),
        clock=NOW.timestamp,
    )
    try:
        for key in [*old, young, DIGEST]:
            await store.put(key, key.encode())
        report = await retention.run_once()
        assert sorted(report.deleted["audit"]) == sorted(old)
        assert store.deletes == report.deleted["audit"]
        left = sorted(o["Key"] for o in boto3_client(s3_server).list_objects_v2(Bucket=bucket)["Contents"])
        assert left == sorted(["org/" + young, "org/" + DIGEST])
    finally:
        await store.close()


async def test_objects_under_compliance_lock_are_never_deleted(s3_server: str) -> None:
    bucket = new_bucket(s3_server, object_lock=True)
    store = make(s3_server, bucket, object_lock={"mode": "COMPLIANCE", "retain_days": 30})
    files = [file_key("2020/01/0" + str(d), d * 10) for d in range(1, 4)]
    # Retention of one day: by their dates these files expired years ago, but the lock set
    # at write time runs for 30 more days.
    retention = Retention(
        [TrackerRetention("audit", store, "trails/audit/", 1)],
        RetentionConfig(),
        clock=lambda: dt.datetime.now(dt.UTC).timestamp(),
    )
    try:
        for key in files:
            await store.put(key, key.encode())
        report = await retention.run_once()
        assert sorted(report.locked["audit"]) == sorted(files)
        assert report.deleted["audit"] == []
        assert store.deletes == [], "retention must not even ask to delete a locked object"
        versions = boto3_client(s3_server).list_object_versions(Bucket=bucket)
        assert sorted(v["Key"] for v in versions["Versions"]) == sorted(files)
        assert not versions.get("DeleteMarkers")
    finally:
        await store.close()


async def test_retention_failure_is_reported_not_raised(s3_server: str) -> None:
    store = make(s3_server, "tk-missing-bucket-for-retention")
    retention = Retention([TrackerRetention("audit", store, "trails/audit/", 30)], RetentionConfig())
    try:
        report = await retention.run_once()
    finally:
        await store.close()
    assert "tk-missing-bucket-for-retention" in report.failures["audit"]
