"""kill -9 while events stream in: every acknowledged event is archived exactly once."""

from __future__ import annotations

import asyncio
import gzip
import os
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from daemon.archive.fileformat import read_records

pytestmark = pytest.mark.integration

TOTAL = int(os.environ.get("TK_CRASH_EVENTS", "200000"))
BATCH = 1000


def _record(i: int) -> bytes:
    # About 1 KiB, shaped like a CloudTrail management event.
    return orjson.dumps(
        {
            "eventVersion": "1.08",
            "eventID": f"crash-{i:08d}",
            "eventTime": "2024-07-31T14:23:46Z",
            "eventSource": "ec2.amazonaws.com",
            "eventName": "DescribeInstances",
            "awsRegion": "eu-west-1",
            "sourceIPAddress": "198.51.100.7",
            "userAgent": "aws-cli/2.15.0 Python/3.11.6 Linux/6.1",
            "recipientAccountId": f"1111{i % 4}",
            "requestID": f"req-{i:08d}",
            "userIdentity": {
                "type": "IAMUser",
                "principalId": "AIDAEXAMPLE",
                "accountId": "111122223333",
                "arn": "arn:aws:iam::111122223333:user/alice",
                "userName": "alice",
            },
            "requestParameters": {
                "instancesSet": {"items": [{"instanceId": "i-0123456789abcdef0"}]},
                "filterSet": {},
                "pad": "p" * 420,
            },
            "responseElements": None,
            "readOnly": True,
            "eventType": "AwsApiCall",
            "managementEvent": True,
        }
    )


async def _sender(url: str, batches: list[list[int]], acked: set[int], stop: asyncio.Event) -> None:
    async with aiohttp.ClientSession() as s:
        while batches and not stop.is_set():
            ids = batches.pop(0)
            body = gzip.compress(b"\n".join(_record(i) for i in ids), compresslevel=1)
            try:
                async with s.post(
                    url,
                    data=body,
                    headers={"Content-Type": "application/x-ndjson", "Content-Encoding": "gzip"},
                ) as resp:
                    if resp.status == 202:
                        doc = await resp.json()
                        assert doc["accepted"] == len(ids), doc
                        acked.update(ids)
            except (aiohttp.ClientError, ConnectionError):
                return  # the daemon died mid-request: this batch was never acknowledged


def _archive_ids(root: Path) -> Counter[str]:
    ids: Counter[str] = Counter()
    for path in sorted((root / "trails").rglob("*.json.gz")):
        for rec in read_records(path.read_bytes()):  # raises on a corrupt or truncated file
            ids[orjson.loads(rec)["eventID"]] += 1
    return ids


@pytest.mark.slow
async def test_kill9_midstream_then_restart_archives_every_ack_once(
    tmp_path: Path, daemon_process: Any
) -> None:
    d = daemon_process(
        journal=f"journal: {{dir: {tmp_path}/journal, max_bytes: 1GiB, segment_bytes: 16MiB}}\n",
        trackers=(
            "trackers:\n  - name: default\n    store: local\n"
            "    file: {max_events: 5000, max_bytes: 16MiB, max_age: 500ms, compression_level: 1}\n"
        ),
    )
    d.start()
    acked: set[int] = set()
    batches = [list(range(i, min(i + BATCH, TOTAL))) for i in range(0, TOTAL, BATCH)]
    stop = asyncio.Event()
    url = f"{d.url}/v1/events"
    senders = [asyncio.create_task(_sender(url, batches, acked, stop)) for _ in range(3)]
    async with asyncio.timeout(300):
        while len(acked) < TOTAL // 2:
            await asyncio.sleep(0.05)
    d.kill9()
    stop.set()
    await asyncio.gather(*senders)
    assert len(acked) < TOTAL  # the kill really interrupted the stream
    killed_at = len(acked)

    d.start()
    # The daemon said what it recovered.
    async with asyncio.timeout(10):
        while not any(e.get("event") == "journal.recovered" for e in d.logs()[1:]):
            await asyncio.sleep(0.1)
    recovered = [e for e in d.logs() if e.get("event") == "journal.recovered"][-1]
    assert recovered["end_offset"] >= killed_at
    # The rest of the stream after the restart.
    stop = asyncio.Event()
    senders = [asyncio.create_task(_sender(url, batches, acked, stop)) for _ in range(3)]
    await asyncio.gather(*senders)
    assert d.terminate() == 0
    ids = _archive_ids(tmp_path / "archive")
    duplicates = [k for k, v in ids.items() if v > 1]
    assert not duplicates, f"{len(duplicates)} events archived twice, e.g. {duplicates[:3]}"
    missing = [i for i in acked if f"crash-{i:08d}" not in ids]
    assert not missing, f"{len(missing)} acknowledged events missing, e.g. {missing[:3]}"
    assert len(acked) >= TOTAL - 3 * BATCH
    shutil.rmtree(tmp_path / "journal", ignore_errors=True)


async def test_second_signal_forces_exit(tmp_path: Path, daemon_process: Any) -> None:
    d = daemon_process(
        stores=f"stores:\n  local: {{type: local, path: {tmp_path}/archive}}\n  dead: {{type: local, path: {tmp_path}/dead}}\n",
        trackers="trackers:\n  - {name: default, store: dead, file: {max_age: 50ms}}\n",
    )
    (tmp_path / "dead").write_text("not a directory")
    d.start()
    async with aiohttp.ClientSession() as s, s.post(f"{d.url}/v1/events", data=_record(1)) as resp:
        assert resp.status == 202
    await asyncio.sleep(0.3)
    assert d.proc is not None
    d.proc.send_signal(15)  # graceful stop waits for the dead store (up to its grace period)
    d.proc.send_signal(15)  # the same stop request delivered twice at once must not force exit
    await asyncio.sleep(1.3)
    assert d.proc.poll() is None  # still stopping gracefully (the kernel may have merged the two)
    started = time.monotonic()
    d.proc.send_signal(15)
    assert d.proc.wait(5) != 0
    assert time.monotonic() - started < 5
    assert any(e.get("event") == "app.forced_exit" for e in d.logs())


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.add(child)
            todo.append(child)
    return out


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
async def test_kill9_leaves_no_decode_workers_behind(daemon_process: Any) -> None:
    d = daemon_process()
    d.start()
    body = b"\n".join(_record(i) for i in range(200))  # over the inline size: decoded in a worker
    async with aiohttp.ClientSession() as s, s.post(
        f"{d.url}/v1/events", data=body, headers={"Content-Type": "application/x-ndjson"}
    ) as resp:
        assert resp.status == 202
    assert d.proc is not None
    helpers = _descendants(d.proc.pid)
    assert helpers, "the decode pool should have started its processes"
    d.kill9()
    async with asyncio.timeout(10):
        while any(Path(f"/proc/{p}").exists() for p in helpers):
            await asyncio.sleep(0.1)
