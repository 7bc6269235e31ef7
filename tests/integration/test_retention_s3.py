"""Retention on S3: a lifecycle rule per tracker, set and checked; never a delete."""

from __future__ import annotations

from typing import Any

import pytest

from daemon.archive.retention import Retention, RetentionConfig, TrackerRetention, tracker_root
from daemon.stores.s3 import S3Store, S3StoreConfig
from tests.fixtures.s3 import boto3_client, new_bucket, s3_store_config

pytestmark = pytest.mark.integration


class NoDeleteS3Store(S3Store):
    """Records any delete attempt, so the test can prove retention never makes one."""

    deletes: list[str]

    async def delete(self, key: str) -> None:
        self.deletes.append(key)
        await super().delete(key)


def make(endpoint: str, bucket: str, **extra: Any) -> NoDeleteS3Store:
    store = NoDeleteS3Store("s3", S3StoreConfig.model_validate(s3_store_config(endpoint, bucket, **extra)))
    store.deletes = []
    return store


async def test_lifecycle_rule_is_set_checked_and_repaired(s3_server: str) -> None:
    bucket = new_bucket(s3_server)
    s3 = boto3_client(s3_server)
    foreign = {"ID": "ops-logs", "Filter": {"Prefix": "ops/"}, "Status": "Enabled", "Expiration": {"Days": 3}}
    s3.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": [foreign]})
    store = make(s3_server, bucket, prefix="org")
    retention = Retention(
        [TrackerRetention("audit", store, tracker_root("trails", "audit"), 365)], RetentionConfig()
    )
    try:
        first = await retention.run_once()
        assert first.lifecycle == {"audit": "set"}
        rules = {r["ID"]: r for r in s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]}
        assert rules["ops-logs"]["Expiration"] == {"Days": 3}, "someone else's rule must be kept"
        ours = rules["trailkeeper-audit"]
        assert ours["Filter"] == {"Prefix": "org/trails/audit/"}
        assert ours["Expiration"] == {"Days": 365}
        assert ours["Status"] == "Enabled"

        assert (await retention.run_once()).lifecycle == {"audit": "unchanged"}

        # Someone weakens the rule: the next round notices and puts it back.
        ours["Expiration"] = {"Days": 1}
        s3.put_bucket_lifecycle_configuration(
            Bucket=bucket, LifecycleConfiguration={"Rules": [rules["ops-logs"], ours]}
        )
        assert (await retention.run_once()).lifecycle == {"audit": "set"}
        rules = {r["ID"]: r for r in s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]}
        assert rules["trailkeeper-audit"]["Expiration"] == {"Days": 365}
        assert store.deletes == []
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
