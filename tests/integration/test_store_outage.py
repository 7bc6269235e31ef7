"""An unwritable archive store: ingest accepts up to the journal budget, then 503; nothing is lost."""

from __future__ import annotations

import asyncio
import gzip
import shutil
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from tests.integration.test_crash_recovery import _archive_ids, _record

pytestmark = [pytest.mark.integration, pytest.mark.slow]


async def test_unwritable_store_fills_journal_then_503_then_drains(
    tmp_path: Path, daemon_process: Any
) -> None:
    archive = tmp_path / "archive"
    d = daemon_process(
        journal=f"journal: {{dir: {tmp_path}/journal, max_bytes: 100MiB, segment_bytes: 8MiB}}\n",
        trackers=(
            "trackers:\n  - name: default\n    store: local\n"
            "    file: {max_events: 5000, max_age: 200ms, compression_level: 1}\n"
        ),
    )
    # As root, permissions do not stop writes: a file where the store's directory
    # should be makes every write fail the way an unwritable mount does.
    archive.write_text("not a directory")
    d.start()
    accepted: list[int] = []
    rss: list[float] = []
    statuses: list[int] = []
    i = 0
    async with aiohttp.ClientSession() as s:
        async with asyncio.timeout(240):
            while True:
                ids = list(range(i, i + 1000))
                body = gzip.compress(b"\n".join(_record(n) for n in ids), compresslevel=1)
                async with s.post(
                    f"{d.url}/v1/events",
                    data=body,
                    headers={"Content-Type": "application/x-ndjson", "Content-Encoding": "gzip"},
                ) as resp:
                    statuses.append(resp.status)
                    if resp.status == 503:
                        assert int(resp.headers["Retry-After"]) >= 1
                        break
                    assert resp.status == 202
                    accepted.extend(ids)
                i += 1000
                if i % 10000 == 0:
                    rss.append(d.rss_mb())
        rss.append(d.rss_mb())
        # Still refusing while the store is down and the journal full.
        async with s.post(f"{d.url}/v1/events", data=_record(10**8)) as resp:
            assert resp.status == 503
        async with s.get(f"{d.url}/readyz") as resp:
            assert resp.status == 503
    assert len(accepted) > 50_000  # ~100 MiB of ~1 KiB events went in before the 503
    archive.unlink()
    archive.mkdir()
    async with asyncio.timeout(180):
        while True:
            rss.append(d.rss_mb())
            ids = _archive_ids(archive) if (archive / "trails").exists() else {}
            if len(ids) >= len(accepted):
                break
            await asyncio.sleep(1)
    assert max(rss) < 300, f"peak RSS {max(rss):.0f} MB"
    # Once drained, ingest accepts again.
    async with aiohttp.ClientSession() as s, s.post(f"{d.url}/v1/events", data=_record(10**8 + 1)) as resp:
        assert resp.status == 202
    assert d.terminate() == 0
    ids = _archive_ids(archive)
    assert all(v == 1 for v in ids.values())
    assert {f"crash-{n:08d}" for n in accepted} <= set(ids)
    assert any(e.get("event") == "archive.store_failed" for e in d.logs())
    assert any(e.get("event") == "archive.store_recovered" for e in d.logs())
    print(orjson.dumps({"accepted_before_503": len(accepted), "peak_rss_mb": round(max(rss), 1)}).decode())
    shutil.rmtree(tmp_path / "journal", ignore_errors=True)
