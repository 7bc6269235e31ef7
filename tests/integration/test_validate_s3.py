"""An archive of 100,000 events in 50+ files on the S3 API server validates; a tampered object does not."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import aiohttp
import orjson
import pytest

from daemon.app import App
from daemon.config import parse_config
from tests.conftest import base_config_text
from tests.fixtures.s3 import boto3_client, new_bucket, s3_store_config

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EVENTS = int(os.environ.get("TK_VALIDATE_EVENTS", "100000"))


def _record(i: int) -> bytes:
    return orjson.dumps({
        "eventVersion": "1.08", "eventID": f"v-{i:08d}", "eventTime": "2024-07-31T14:23:46Z",
        "eventSource": "s3.amazonaws.com", "eventName": "GetObject", "awsRegion": "eu-west-1",
        "recipientAccountId": "111122223333", "sourceIPAddress": "255.090.254.5",
        "requestParameters": {"bucketName": "b", "key": f"k/{i}"},
    })


def _validate(config: Path, *args: str) -> tuple[int, dict]:
    trust = config.with_name("trust.json")
    if not trust.exists():  # pinned once, as an auditor keeps it
        subprocess.run(
            [sys.executable, "-m", "daemon", "keys", "export-public", "-c", str(config), "--out", str(trust)],
            check=True, capture_output=True, timeout=60,
        )
    res = subprocess.run(
        [sys.executable, "-m", "daemon", "validate", "--config", str(config), "--json", "--trust", str(trust),
         *args],
        capture_output=True, text=True, timeout=300,
    )
    return res.returncode, json.loads(res.stdout)


async def test_s3_archive_of_100k_events_validates_and_a_modified_object_is_caught(
    s3_server: str, tmp_path: Path
) -> None:
    bucket = new_bucket(s3_server)
    store = json.dumps(s3_store_config(s3_server, bucket))
    text = base_config_text(
        tmp_path,
        stores=f"stores:\n  local: {{type: local, path: {tmp_path}/archive}}\n  arch: {store}\n",
        trackers=("trackers:\n  - {name: default, store: arch, prefix: trails,"
                  " file: {max_events: 1900, max_age: 500ms}}\n"),
    ) + f"integrity: {{keys_dir: {tmp_path}/keys, digest_interval: 2s}}\nindex: {{enabled: false}}\n"
    config_path = tmp_path / "trailkeeper.yaml"
    config_path.write_text(text)
    app = App(parse_config(text))
    await app.start()
    try:
        async with aiohttp.ClientSession() as s:
            for start in range(0, EVENTS, 5000):
                body = b"\n".join(_record(i) for i in range(start, min(start + 5000, EVENTS)))
                async with s.post(f"http://127.0.0.1:{app.http_port}/v1/events", data=body,
                                  headers={"Content-Type": "application/x-ndjson"}) as resp:
                    assert resp.status == 202
        async with asyncio.timeout(180):
            while app.journal.cursor("archive.default") < app.journal.end_offset:
                await asyncio.sleep(0.2)
    finally:
        await app.stop()
    client = boto3_client(s3_server)
    keys = [o["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
            for o in page.get("Contents", [])]
    files = [k for k in keys if k.endswith(".json.gz")]
    assert len(files) >= 50 if EVENTS >= 100_000 else files

    code, report = await asyncio.to_thread(_validate, config_path, "--store", "arch")
    assert code == 0 and report["ok"], report["findings"][:5]
    assert report["counts"]["valid"] >= len(files)

    # The same bucket named as s3://bucket/prefix, with the store's settings.
    code, _ = await asyncio.to_thread(_validate, config_path, f"s3://{bucket}/trails")
    assert code == 0

    # One byte changed in one archived object: reported as modified, exit 1.
    victim = files[len(files) // 2]
    raw = bytearray(gzip.decompress(client.get_object(Bucket=bucket, Key=victim)["Body"].read()))
    raw[200] = ord("X") if raw[200] != ord("X") else ord("Y")
    client.put_object(Bucket=bucket, Key=victim, Body=gzip.compress(bytes(raw)))
    code, report = await asyncio.to_thread(_validate, config_path, "--store", "arch")
    assert code == 1 and not report["ok"]
    assert {f["key"]: f["category"] for f in report["findings"]}[victim] == "modified"
