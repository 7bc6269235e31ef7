"""A tracker with ``layout: cloudtrail`` writes the archive as CloudTrail does, so tools made
for CloudTrail archives read it: keys as CloudTrail names them, ``{"Records": [...]}`` gzip
files, every record once and byte for byte, and the signed digests still validate it."""

from __future__ import annotations

import asyncio
import gzip
import json
import re
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from daemon.app import App
from daemon.cli import main
from daemon.config import ConfigError, parse_config
from tests.conftest import base_config_text

pytestmark = pytest.mark.integration

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "cloudtrail-stratus"
# CloudTrail's own key layout, as Athena's CloudTrail table and the SIEM add-ons expect it.
CLOUDTRAIL_KEY = re.compile(
    r"^trails/AWSLogs/(?P<account>[^/]+)/CloudTrail/(?P<region>[^/]+)/\d{4}/\d{2}/\d{2}/"
    r"(?P=account)_CloudTrail_(?P=region)_\d{8}T\d{4}Z_[A-Za-z0-9-]+\.json\.gz$"
)

TRACKER = (
    "trackers:\n  - name: ct\n    store: local\n    prefix: trails\n    layout: cloudtrail\n"
    "    file: {max_events: 10000, max_bytes: 16MiB, max_age: 300ms}\n"
)


def records() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for path in sorted(DATA.glob("*.json")):
        out.extend(json.loads(path.read_text()))
    return out


async def test_the_archive_is_laid_out_and_written_as_cloudtrail_s(tmp_path: Path, capsys: Any) -> None:
    integrity = f"integrity: {{keys_dir: {tmp_path}/keys, state_dir: {tmp_path}/state}}\n"
    app = App(parse_config(base_config_text(tmp_path, trackers=TRACKER, integrity=integrity)))
    await app.start()
    sent = records()
    lines = [orjson.dumps(r) for r in sent]
    try:
        async with (
            aiohttp.ClientSession() as s,
            s.post(
                f"http://127.0.0.1:{app.http_port}/v1/events",
                data=b"\n".join(lines),
                headers={"Content-Type": "application/x-ndjson"},
            ) as r,
        ):
            assert r.status == 202, await r.text()
        root = tmp_path / "archive"
        async with asyncio.timeout(30):
            while sum(len(_records(p)) for p in _files(root)) < len(sent):
                await asyncio.sleep(0.2)
    finally:
        await app.stop()

    files = _files(root)
    stored: list[bytes] = []
    for path in files:
        key = path.relative_to(root).as_posix()
        m = CLOUDTRAIL_KEY.match(key)
        assert m, key
        for raw in _records(path):
            rec = json.loads(raw)
            # Partitioned by the record's own account and region, as CloudTrail is.
            if rec.get("recipientAccountId") and not rec.get("eventSource", "").startswith("trailkeeper"):
                assert m["account"] == rec["recipientAccountId"] and m["region"] == rec["awsRegion"]
            stored.append(raw)
    producer = [r for r in stored if b'"trailkeeper"' not in r]
    assert sorted(producer) == sorted(lines)  # each record once, byte for byte
    assert not list((root / "trails" / "ct").glob("[!_]*")), "no file outside AWSLogs/ but digests"

    args = ["validate", str(root), "--prefix", "trails", "--public-key", str(tmp_path / "keys")]
    code = await asyncio.to_thread(main, args)
    captured = capsys.readouterr()
    assert code == 0, captured.out[-3000:] + captured.err[-3000:]
    # The digests cover these files: one changed byte is found.
    victim = files[0]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01
    victim.write_bytes(bytes(data))
    assert await asyncio.to_thread(main, args) != 0
    assert victim.relative_to(root).as_posix() in capsys.readouterr().out


def _files(root: Path) -> list[Path]:
    return sorted((root / "trails" / "AWSLogs").rglob("*.json.gz")) if (root / "trails").exists() else []


def _records(path: Path) -> list[bytes]:
    """The file's records as stored, after checking it reads as CloudTrail readers read it
    (gunzip, parse ``{"Records": [...]}``); [] while it is still being written."""
    from daemon.archive.fileformat import read_records

    try:
        doc = json.loads(gzip.decompress(path.read_bytes()))
    except (OSError, EOFError, ValueError):
        return []
    raw = list(read_records(path.read_bytes()))
    assert [json.loads(r) for r in raw] == doc["Records"]
    return raw


@pytest.mark.parametrize(
    ("trackers", "words"),
    [
        (
            TRACKER.replace("max_age: 300ms}", "max_age: 300ms, compression: zstd}"),
            "trackers[0]: file.compression",
        ),
        (TRACKER + TRACKER.replace("trackers:\n", "").replace("name: ct", "name: ct2"), "trackers[1].layout"),
    ],
)
def test_a_cloudtrail_layout_that_would_collide_or_is_not_gzip_is_a_config_error(
    tmp_path: Path, trackers: str, words: str
) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config(base_config_text(tmp_path, trackers=trackers))
    assert any(words in p for p in exc.value.problems), exc.value.problems
