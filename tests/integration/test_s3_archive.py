"""The daemon archiving into S3 (a moto server on loopback), read back with boto3 like an auditor.

Must-show scenarios of the object-storage issue: delivery and readability, trackers
with their own stores and prefixes, Object Lock COMPLIANCE, a store outage under
load, and a 403 that is reported once per interval and loses nothing.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import shutil
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import structlog
from botocore.exceptions import ClientError

from daemon import telemetry
from daemon.app import App
from daemon.archive import archiver as archiver_module
from daemon.archive.retention import Retention, RetentionConfig
from daemon.config import parse_config
from daemon.stores.s3 import S3Store
from tests.conftest import base_config_text, stratus_records
from tests.fixtures.s3 import (
    AuthS3,
    RestartableMotoServer,
    boto3_client,
    new_bucket,
    s3_store_config,
)
from tests.integration.test_crash_recovery import _record

pytestmark = pytest.mark.integration


def flow(d: dict[str, Any]) -> str:
    """A mapping as one line of YAML flow style (JSON is YAML)."""
    return json.dumps(d)


def trackers_yaml(*trackers: dict[str, Any]) -> str:
    return "trackers:\n" + "".join(f"  - {flow(t)}\n" for t in trackers)


def stores_yaml(tmp: Path, **s3_stores: dict[str, Any]) -> str:
    lines = f"stores:\n  local: {flow({'type': 'local', 'path': str(tmp / 'archive')})}\n"
    for name, cfg in s3_stores.items():
        lines += f"  {name}: {flow(cfg)}\n"
    return lines


FAST_FILES = {"max_events": 5000, "max_age": "300ms", "compression_level": 1}


def bucket_records(
    endpoint: str,
    bucket: str,
    prefix: str = "",
    cache: dict[str, list[bytes]] | None = None,
    **client_kwargs: Any,
) -> dict[str, list[bytes]]:
    """key -> exact record lines, for every archive file under ``prefix``, via plain boto3 + gzip.

    Digests (``.../_digest/...json``) live beside the files and are not read here.

    Archive objects are written once, so keys already in ``cache`` are not downloaded again.
    """
    s3 = boto3_client(endpoint, **client_kwargs)
    out: dict[str, list[bytes]] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            if not obj["Key"].endswith(".json.gz"):
                continue
            if cache is not None and obj["Key"] in cache:
                out[obj["Key"]] = cache[obj["Key"]]
                continue
            body = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
            raw = gzip.decompress(body)
            doc = json.loads(raw)  # a CloudTrail file: {"Records": [...]}
            out[obj["Key"]] = [line.rstrip(b",") for line in raw.split(b"\n")[1:-2]]
            assert len(out[obj["Key"]]) == len(doc["Records"])
            if cache is not None:
                cache[obj["Key"]] = out[obj["Key"]]
    return out


def event_ids(files: dict[str, list[bytes]]) -> Counter[str]:
    ids: Counter[str] = Counter()
    for records in files.values():
        for rec in records:
            ids[orjson.loads(rec)["eventID"]] += 1
    return ids


async def wait_for_ids(endpoint: str, bucket: str, want: int, timeout: float, **kw: Any) -> Counter[str]:
    deadline = time.monotonic() + timeout
    ids: Counter[str] = Counter()
    cache: dict[str, list[bytes]] = {}
    while time.monotonic() < deadline:
        ids = await asyncio.to_thread(lambda: event_ids(bucket_records(endpoint, bucket, cache=cache, **kw)))
        if sum(ids.values()) >= want:
            return ids
        await asyncio.sleep(0.5)
    raise AssertionError(f"only {sum(ids.values())} of {want} events reached bucket {bucket} in {timeout}s")


async def post(url: str, body: bytes, content_type: str = "application/json") -> int:
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"{url}/v1/events", data=body, headers={"Content-Type": content_type}) as resp,
    ):
        await resp.read()
        return resp.status


# --- 1. events land in a bucket, readable with boto3 + gunzip + json -------------------------------


@pytest.mark.slow
async def test_daemon_process_delivers_cloudtrail_files_to_s3(
    s3_server: str, tmp_path: Path, daemon_process: Any
) -> None:
    records = stratus_records()
    bucket = new_bucket(s3_server)
    d = daemon_process(
        stores=stores_yaml(tmp_path, archive=s3_store_config(s3_server, bucket, sse="AES256")),
        trackers=trackers_yaml(
            {"name": "default", "store": "archive", "prefix": "AWSLogs", "file": FAST_FILES}
        ),
    )
    d.start()
    try:
        assert await post(d.url, orjson.dumps(records)) == 202
        ids = await wait_for_ids(s3_server, bucket, len(records), timeout=30)
    finally:
        assert d.terminate() == 0
    assert ids == Counter(r["eventID"] for r in records)

    await asyncio.to_thread(read_like_an_auditor, s3_server, bucket, tmp_path / "download", records)


def read_like_an_auditor(endpoint: str, bucket: str, into: Path, records: list[dict[str, Any]]) -> None:
    """The AWS SDK lists and downloads; gunzip and a JSON parser read each file."""
    s3 = boto3_client(endpoint)
    every = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]]
    assert all(k.startswith("AWSLogs/default/") for k in every)
    # Beside the files: the signed digests and each chain's published checkpoint.
    keys = [k for k in every if "/_digest/" not in k and "/_checkpoint/" not in k]
    assert keys and all(k.endswith(".json.gz") for k in keys)
    by_id = {r["eventID"]: r for r in records}
    for key in keys:
        local = into / key
        local.parent.mkdir(parents=True, exist_ok=True)
        s3.download_file(bucket, key, str(local))
        if shutil.which("gunzip"):
            text = subprocess.run(["gunzip", "-c", str(local)], check=True, capture_output=True).stdout
        else:
            text = gzip.decompress(local.read_bytes())
        doc = json.loads(text)
        assert set(doc) == {"Records"}
        for rec in doc["Records"]:
            assert rec == by_id[rec["eventID"]], "a record must come back exactly as it was sent"


# --- 2. several trackers, each with its store and prefix -------------------------------------------


async def test_trackers_with_their_own_stores_and_prefixes(s3_server: str, tmp_path: Path) -> None:
    records = stratus_records()[:120]
    bucket_a, bucket_b = new_bucket(s3_server), new_bucket(s3_server)
    config = parse_config(
        base_config_text(
            tmp_path,
            stores=stores_yaml(
                tmp_path,
                s3a=s3_store_config(s3_server, bucket_a, prefix="org-a"),
                s3b=s3_store_config(s3_server, bucket_b),
            ),
            trackers=trackers_yaml(
                {"name": "audit", "store": "s3a", "prefix": "trails", "file": FAST_FILES},
                {"name": "security", "store": "s3b", "prefix": "sec/logs", "file": FAST_FILES},
                {"name": "mirror", "store": "local", "prefix": "mirror", "file": FAST_FILES},
            ),
        )
    )
    app = App(config)
    await app.start()
    try:
        assert await post(f"http://127.0.0.1:{app.http_port}", orjson.dumps(records)) == 202
        ids_a = await wait_for_ids(s3_server, bucket_a, len(records), timeout=30)
        ids_b = await wait_for_ids(s3_server, bucket_b, len(records), timeout=30)
    finally:
        await app.stop(grace=5)
    want = Counter(r["eventID"] for r in records)
    assert ids_a == want and ids_b == want  # each exactly once
    client = boto3_client(s3_server)
    keys_a = [o["Key"] for o in client.list_objects_v2(Bucket=bucket_a)["Contents"]]
    keys_b = [o["Key"] for o in client.list_objects_v2(Bucket=bucket_b)["Contents"]]
    assert keys_a and all(k.startswith("org-a/trails/audit/") for k in keys_a)
    assert keys_b and all(k.startswith("sec/logs/security/") for k in keys_b)
    mirror = sorted((tmp_path / "archive" / "mirror" / "mirror").rglob("*.json.gz"))
    assert mirror, "the local tracker wrote its own files"
    assert not (tmp_path / "archive" / "trails").exists(), "S3 trackers write nothing locally"


# --- 3. Object Lock COMPLIANCE ---------------------------------------------------------------------


class _CountingS3Store(S3Store):
    deletes: list[str]

    async def delete(self, key: str) -> None:
        self.deletes.append(key)
        await super().delete(key)


async def test_object_lock_compliance_refuses_delete_and_overwrite(s3_server: str, tmp_path: Path) -> None:
    records = stratus_records()[:40]
    bucket = new_bucket(s3_server, object_lock=True)
    store_cfg = s3_store_config(s3_server, bucket, object_lock={"mode": "COMPLIANCE", "retain_days": 7})
    config = parse_config(
        base_config_text(
            tmp_path,
            stores=stores_yaml(tmp_path, worm=store_cfg),
            trackers=trackers_yaml(
                {
                    "name": "audit",
                    "store": "worm",
                    "prefix": "trails",
                    "retention_days": 1,
                    "file": FAST_FILES,
                }
            ),
        )
    )
    app = App(config)
    await app.start()
    try:
        assert await post(f"http://127.0.0.1:{app.http_port}", orjson.dumps(records)) == 202
        await wait_for_ids(s3_server, bucket, len(records), timeout=30)
    finally:
        await app.stop(grace=5)

    s3 = boto3_client(s3_server)
    versions = s3.list_object_versions(Bucket=bucket)["Versions"]
    assert versions
    for v in versions:
        head = s3.head_object(Bucket=bucket, Key=v["Key"], VersionId=v["VersionId"])
        assert head["ObjectLockMode"] == "COMPLIANCE"
    # trailkeeper's own retention never tries to delete a locked file: three days on, with
    # retention_days 1, every file has expired by its date but is locked for 7 days.
    store = _CountingS3Store("worm", config.stores["worm"])  # type: ignore[arg-type]
    store.deletes = []
    retention = Retention.from_config(RetentionConfig(), config.trackers, {"worm": store})
    retention.clock = lambda: time.time() + 3 * 86400
    try:
        report = await retention.run_once()
    finally:
        await store.close()
    archive_files = {v["Key"] for v in versions if v["Key"].endswith(".json.gz")}
    assert archive_files and sorted(report.locked["audit"]) == sorted(archive_files)
    assert report.deleted["audit"] == []
    assert store.deletes == []
    assert not s3.list_object_versions(Bucket=bucket).get("DeleteMarkers")

    target = versions[0]
    original = s3.get_object(Bucket=bucket, Key=target["Key"], VersionId=target["VersionId"])["Body"].read()

    # Deleting the archived version is refused, even when asking to bypass governance.
    with pytest.raises(ClientError) as err:
        s3.delete_object(Bucket=bucket, Key=target["Key"], VersionId=target["VersionId"])
    assert err.value.response["Error"]["Code"] == "AccessDenied"
    with pytest.raises(ClientError):
        s3.delete_object(
            Bucket=bucket, Key=target["Key"], VersionId=target["VersionId"], BypassGovernanceRetention=True
        )
    # Overwriting the key the way trailkeeper writes (write-once) is refused...
    with pytest.raises(ClientError) as err:
        s3.put_object(Bucket=bucket, Key=target["Key"], Body=b"forged", IfNoneMatch="*")
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    # ...and a plain PUT only stacks a new version on top: the locked version is unchanged.
    s3.put_object(Bucket=bucket, Key=target["Key"], Body=b"forged")
    again = s3.get_object(Bucket=bucket, Key=target["Key"], VersionId=target["VersionId"])["Body"].read()
    assert again == original
    with pytest.raises(ClientError):
        s3.delete_object(Bucket=bucket, Key=target["Key"], VersionId=target["VersionId"])
    after = s3.list_object_versions(Bucket=bucket)["Versions"]
    assert {(v["Key"], v["VersionId"]) for v in versions} <= {(v["Key"], v["VersionId"]) for v in after}


# --- 4. S3 server stopped while events flow --------------------------------------------------------

FULL_OUTAGE = os.environ.get("TK_S3_OUTAGE_FULL") == "1"


@pytest.mark.slow
async def test_s3_outage_under_load_loses_and_duplicates_nothing(
    restartable_s3: RestartableMotoServer, tmp_path: Path
) -> None:
    """Full size (TK_S3_OUTAGE_FULL=1): 50,000 events, 60 s outage. Default: 50,000 events, 10 s."""
    outage = 60.0 if FULL_OUTAGE else 10.0
    total, batch = 50_000, 250
    endpoint = restartable_s3.endpoint
    bucket = new_bucket(endpoint)
    config = parse_config(
        base_config_text(
            tmp_path,
            journal=f"journal: {{dir: {tmp_path}/journal, max_bytes: 1GiB, segment_bytes: 16MiB}}\n",
            stores=stores_yaml(
                tmp_path,
                archive=s3_store_config(endpoint, bucket, connect_timeout="1s", read_timeout="5s"),
            ),
            trackers=trackers_yaml({"name": "default", "store": "archive", "file": FAST_FILES}),
        )
    )
    app = App(config)
    await app.start()
    url = f"http://127.0.0.1:{app.http_port}"
    statuses: Counter[int] = Counter()
    send_span = outage + 6.0  # traffic before, during and after the outage
    pause = send_span / (total / batch)

    async def sender() -> None:
        async with aiohttp.ClientSession() as s:
            for start in range(0, total, batch):
                body = b"\n".join(_record(i) for i in range(start, start + batch))
                async with s.post(
                    f"{url}/v1/events", data=body, headers={"Content-Type": "application/x-ndjson"}
                ) as resp:
                    await resp.read()
                    statuses[resp.status] += 1
                await asyncio.sleep(pause)

    try:
        send = asyncio.create_task(sender())
        await asyncio.sleep(2.0)
        await asyncio.to_thread(restartable_s3.stop)
        stopped_at = time.monotonic()
        await asyncio.sleep(outage)
        assert not send.done(), "events must keep flowing during the outage"
        await asyncio.to_thread(restartable_s3.start)
        down_for = time.monotonic() - stopped_at
        await send
        sent_at = time.monotonic()
        ids = await wait_for_ids(endpoint, bucket, total, timeout=120 if FULL_OUTAGE else 90)
        drained_in = time.monotonic() - sent_at
    finally:
        await app.stop(grace=10)
    assert set(statuses) == {202}, f"ingest answered {dict(statuses)} while the journal had room"
    assert len(ids) == total, "an event was lost"
    assert max(ids.values()) == 1, "an event was stored twice"
    assert down_for >= outage
    print(
        orjson.dumps(
            {"events": total, "outage_s": round(down_for, 1), "drained_after_send_s": round(drained_in, 1)}
        ).decode()
    )
    failures = telemetry.REGISTRY.get_sample_value(
        "trailkeeper_archive_failures_total", {"tracker": "default", "reason": "unavailable"}
    )
    assert failures and failures > 0, "the outage was noticed"


# --- 6. 403: reported once per interval, with the bucket and the fix; nothing lost -----------------


async def test_bad_credentials_reported_once_per_interval_and_nothing_lost(
    s3_auth_server: AuthS3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    records = stratus_records()[:60]
    bucket = s3_auth_server.new_bucket()
    good = {"access_key_id": s3_auth_server.access_key, "secret_access_key": s3_auth_server.secret_key}
    bad = {"access_key_id": "AKIAREVOKEDKEY000000", "secret_access_key": "no-longer-valid"}

    def config(creds: dict[str, str]) -> Any:
        return parse_config(
            base_config_text(
                tmp_path,
                stores=stores_yaml(
                    tmp_path, archive=s3_store_config(s3_auth_server.endpoint, bucket, **creds)
                ),
                trackers=trackers_yaml({"name": "default", "store": "archive", "file": FAST_FILES}),
            )
        )

    # Fast retries so that many attempts fit in the test; the report interval stays long.
    monkeypatch.setattr(archiver_module, "RETRY_INITIAL", 0.05)
    monkeypatch.setattr(archiver_module, "RETRY_MAX", 0.2)
    monkeypatch.setattr(archiver_module, "REPORT_INTERVAL", 60.0)
    labels = {"tracker": "default", "reason": "permanent"}
    before = telemetry.REGISTRY.get_sample_value("trailkeeper_archive_failures_total", labels) or 0.0

    app = App(config(bad))
    with structlog.testing.capture_logs() as logs:
        await app.start()
        try:
            assert await post(f"http://127.0.0.1:{app.http_port}", orjson.dumps(records)) == 202
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                failed = (
                    telemetry.REGISTRY.get_sample_value("trailkeeper_archive_failures_total", labels) or 0.0
                )
                if failed - before >= 10:
                    break
                await asyncio.sleep(0.1)
            async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{app.http_port}/readyz") as r:
                ready = await r.json()
            health = await app.health.report(max_age=0)
        finally:
            await app.stop(grace=0.5)
    attempts = (
        telemetry.REGISTRY.get_sample_value("trailkeeper_archive_failures_total", labels) or 0
    ) - before
    assert attempts >= 10, "the archiver kept retrying"
    reports = [e for e in logs if e.get("event") == "archive.store_failed"]
    assert len(reports) == 1, f"{len(reports)} reports for {attempts:.0f} failed attempts: a flood"
    text = reports[0]["error"]
    assert bucket in text and "InvalidAccessKeyId" in text and "access_key_id" in text
    assert reports[0]["retryable"] is False
    # The journal holds the events through the outage: ingest stays in service, and the
    # downstream report (admins see its details) names the bucket.
    assert ready["ready"], ready
    assert not health.healthy and any(bucket in p.detail for p in health.problems), health
    assert not bucket_records(
        s3_auth_server.endpoint,
        bucket,
        aws_access_key_id=good["access_key_id"],
        aws_secret_access_key=good["secret_access_key"],
    )

    # The operator fixes the credentials and restarts: every event is delivered, once.
    app = App(config(good))
    await app.start()
    try:
        ids = await wait_for_ids(
            s3_auth_server.endpoint,
            bucket,
            len(records),
            timeout=30,
            aws_access_key_id=good["access_key_id"],
            aws_secret_access_key=good["secret_access_key"],
        )
    finally:
        await app.stop(grace=5)
    assert ids == Counter(r["eventID"] for r in records)
