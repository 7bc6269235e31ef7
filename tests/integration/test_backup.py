"""Backup: every object copied to a second bucket, verified by hash, damage repaired next round."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest

from daemon import telemetry
from daemon.archive.backup import Backup, BackupConfig, BackupJob, BackupJobConfig
from daemon.stores.local import LocalStore, LocalStoreConfig
from daemon.stores.s3 import S3Store, S3StoreConfig
from tests.fixtures.s3 import boto3_client, new_bucket, s3_store_config

pytestmark = pytest.mark.integration


def s3(endpoint: str, bucket: str, name: str, **extra: Any) -> S3Store:
    return S3Store(name, S3StoreConfig.model_validate(s3_store_config(endpoint, bucket, **extra)))


def metric(name: str, **labels: str) -> float:
    value = telemetry.REGISTRY.get_sample_value(name, labels)
    return value or 0.0


async def fill(store: Any, n: int, prefix: str = "trails/audit") -> dict[str, bytes]:
    objects = {}
    for i in range(n):
        key = f"{prefix}/acct/r1/2024/03/{i % 3 + 1:02d}/w1_audit_20240301T0000Z_{i:020d}-{i:020d}.json.gz"
        data = os.urandom(200 + i)
        await store.put(key, data)
        objects[key] = data
    return objects


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def test_backup_copies_verifies_and_repairs_between_buckets(s3_server: str, tmp_path: Path) -> None:
    src_bucket, dst_bucket = new_bucket(s3_server), new_bucket(s3_server)
    source, dest = s3(s3_server, src_bucket, "primary"), s3(s3_server, dst_bucket, "offsite")
    config = BackupJobConfig.model_validate(
        {"name": "offsite-s3", "from": "primary", "to": "offsite", "prefixes": ["trails/"]}
    )
    job = BackupJob(config, source, dest, tmp_path / "state")
    client = boto3_client(s3_server)
    try:
        objects = await fill(source, 12)
        await source.put("elsewhere/not-backed-up", b"x")
        copied_before = metric("trailkeeper_backup_copied_objects_total", job="offsite-s3")

        report = await job.run_once()
        assert sorted(report.copied) == sorted(objects)
        assert report.pending == 0 and not report.failed and report.aborted is None
        for key, data in objects.items():
            body = client.get_object(Bucket=dst_bucket, Key=key)["Body"].read()
            assert sha(body) == sha(data)
        listed = {o["Key"] for o in client.list_objects_v2(Bucket=dst_bucket)["Contents"]}
        assert listed == set(objects)
        assert metric("trailkeeper_backup_copied_objects_total", job="offsite-s3") - copied_before == 12
        assert metric("trailkeeper_backup_pending_objects", job="offsite-s3") == 0

        # Nothing new: nothing copied.
        assert (await job.run_once()).copied == []

        # A copy is deleted, another one replaced with other bytes: both repaired next round.
        deleted, altered = sorted(objects)[3], sorted(objects)[7]
        client.delete_object(Bucket=dst_bucket, Key=deleted)
        client.put_object(Bucket=dst_bucket, Key=altered, Body=b"forged")
        repaired_before = metric("trailkeeper_backup_repaired_total", job="offsite-s3")
        report = await job.run_once()
        assert sorted(report.repaired) == sorted([deleted, altered])
        for key in (deleted, altered):
            body = client.get_object(Bucket=dst_bucket, Key=key)["Body"].read()
            assert body == objects[key]
        assert metric("trailkeeper_backup_repaired_total", job="offsite-s3") - repaired_before == 2

        # New objects are picked up by the next round.
        more = await fill(source, 2, prefix="trails/second")
        report = await job.run_once()
        assert sorted(report.copied) == sorted(more)
    finally:
        await source.close()
        await dest.close()


async def test_progress_is_durable_and_same_size_tampering_is_caught(s3_server: str, tmp_path: Path) -> None:
    source = LocalStore("local", LocalStoreConfig(path=tmp_path / "archive", fsync=False))
    dst_bucket = new_bucket(s3_server)
    dest = s3(s3_server, dst_bucket, "offsite")
    config = BackupJobConfig.model_validate({"name": "local-to-s3", "from": "local", "to": "offsite"})
    client = boto3_client(s3_server)
    try:
        objects = await fill(source, 5)
        first = await BackupJob(config, source, dest, tmp_path / "state").run_once()
        assert len(first.copied) == 5
        assert (tmp_path / "state" / "backup.local-to-s3.json").exists()

        # A fresh job (a restart) resumes from the state file: nothing is copied again.
        job = BackupJob(config, source, dest, tmp_path / "state")
        assert (await job.run_once()).copied == []

        # Same size, other bytes: found by the rolling re-verification and repaired.
        victim = sorted(objects)[2]
        forged = bytes(b ^ 0xFF for b in objects[victim])
        client.put_object(Bucket=dst_bucket, Key=victim, Body=forged)
        report = await job.run_once()
        assert report.repaired == [victim]
        assert client.get_object(Bucket=dst_bucket, Key=victim)["Body"].read() == objects[victim]
    finally:
        await dest.close()


async def test_changed_source_is_reported_and_backup_kept(tmp_path: Path) -> None:
    source = LocalStore("a", LocalStoreConfig(path=tmp_path / "a", fsync=False))
    dest = LocalStore("b", LocalStoreConfig(path=tmp_path / "b", fsync=False))
    config = BackupJobConfig.model_validate({"name": "ab", "from": "a", "to": "b"})
    job = BackupJob(config, source, dest, tmp_path / "state")
    await source.put("k/file", b"original evidence")
    await job.run_once()
    (tmp_path / "a/k/file").chmod(0o644)
    (tmp_path / "a/k/file").write_bytes(b"rewritten")
    before = metric("trailkeeper_backup_failures_total", job="ab", reason="source_changed")
    report = await job.run_once()
    assert report.source_changed == ["k/file"]
    assert await dest.get("k/file") == b"original evidence"
    assert metric("trailkeeper_backup_failures_total", job="ab", reason="source_changed") - before == 1


async def test_the_published_checkpoint_is_copied_as_it_changes_without_an_alarm(tmp_path: Path) -> None:
    source = LocalStore("a", LocalStoreConfig(path=tmp_path / "a", fsync=False))
    dest = LocalStore("b", LocalStoreConfig(path=tmp_path / "b", fsync=False))
    config = BackupJobConfig.model_validate({"name": "cp", "from": "a", "to": "b"})
    job = BackupJob(config, source, dest, tmp_path / "state")
    key = "trails/default/_checkpoint/w1"
    before = metric("trailkeeper_backup_failures_total", job="cp", reason="source_changed")
    for note in (b"checkpoint at 10\n", b"checkpoint at 25\n", b"checkpoint at 99\n"):  # same size
        await source.replace(key, note)
        report = await job.run_once()
        assert report.source_changed == [] and await dest.get(key) == note
    # A copy damaged in place is put right on the next round.
    (tmp_path / "b" / key).chmod(0o644)
    (tmp_path / "b" / key).write_bytes(b"checkpoint at 00\n")
    await job.run_once()
    assert await dest.get(key) == b"checkpoint at 99\n"
    assert metric("trailkeeper_backup_failures_total", job="cp", reason="source_changed") == before


async def test_unreachable_destination_aborts_the_round_and_loses_nothing(tmp_path: Path) -> None:
    from tests.fixtures.s3 import free_port

    source = LocalStore("a", LocalStoreConfig(path=tmp_path / "a", fsync=False))
    dead = s3(f"http://127.0.0.1:{free_port()}", "tk-x", "dead", retries={"attempts": 1})
    job = BackupJob(
        BackupJobConfig.model_validate({"name": "dead", "from": "a", "to": "dead"}),
        source,
        dead,
        tmp_path / "state",
    )
    try:
        await fill(source, 3)
        report = await job.run_once()
        assert report.aborted is not None and "tk-x" in report.aborted
        assert job.state.objects == {}
    finally:
        await dead.close()


async def test_backup_runtime_runs_rounds_until_stopped(tmp_path: Path) -> None:
    import asyncio

    stores = {
        "a": LocalStore("a", LocalStoreConfig(path=tmp_path / "a", fsync=False)),
        "b": LocalStore("b", LocalStoreConfig(path=tmp_path / "b", fsync=False)),
    }
    cfg = BackupConfig.model_validate({"jobs": [{"name": "ab", "from": "a", "to": "b", "interval": "50ms"}]})
    backup = Backup.from_config(cfg, stores, tmp_path / "state")
    task = asyncio.create_task(backup.run())
    await stores["a"].put("x/1", b"one")
    for _ in range(100):
        if await stores["b"].head("x/1") is not None:
            break
        await asyncio.sleep(0.05)
    backup.stop()
    await asyncio.wait_for(task, 5)
    assert await stores["b"].get("x/1") == b"one"
