"""The quarantine keeps exactly the bytes received for a rejected NDJSON line: padding, tabs, \\r.

Both decode paths: inline (decode_workers: 0) and a worker process (a body over the inline
threshold with decode_workers: 1).
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from daemon.app import App
from daemon.config import parse_config
from daemon.decodepool import INLINE_BELOW
from tests.conftest import base_config_text, read_archive


def _good(i: int, pad: int = 0) -> bytes:
    doc = {"eventSource": "iam.amazonaws.com", "eventName": "CreateUser", "eventID": f"ok{i}"}
    if pad:
        doc["pad"] = "p" * pad
    return orjson.dumps(doc)


BAD = {
    # index in the body: the exact bytes of that line, as sent (the body splits on \n only)
    1: b"  {this is not json}\t\r",
    2: b"\t 42  \r",
    3: b' {"eventSource": "s3.amazonaws.com"}\t',  # a CloudTrail record without eventName
    4: b'\r{"neither": "format"}   ',
    5: b'  {"eventSource": "s3.amazonaws.com", "eventName": "\xc3\x28"}  \r',
    7: b" " + _good(99, pad=2000) + b"\t\r",  # over max_event_bytes
    8: b'  {"specversion": "1.0", "id": "c", "source": "s", "type": "t", "data": "{bad"}\r',
}


def _body(filler: int) -> tuple[bytes, int]:
    lines: list[bytes] = [b"\t" + _good(0) + b"  \r"]
    for i in range(1, 9):
        lines.append(BAD.get(i, b"  \t \r"))  # 6: whitespace only, skipped
    good = 1
    while sum(len(x) + 1 for x in lines) < filler:
        lines.append(b" " + _good(good, pad=500) + b" \r")
        good += 1
    return b"\n".join(lines) + b"\n", good


async def _quarantined(root: Path, n: int) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    async with asyncio.timeout(15):
        while len(found) < n:
            await asyncio.sleep(0.1)
            found = [
                json.loads(line)
                for p in (root / "quarantine").rglob("*.jsonl.gz")
                for line in gzip.decompress(p.read_bytes()).splitlines()
            ]
    return found


@pytest.mark.parametrize(("workers", "filler"), [(0, 0), (1, 2 * INLINE_BELOW)])
async def test_rejected_lines_are_quarantined_byte_exact(tmp_path: Path, workers: int, filler: int) -> None:
    ingest = (
        "ingest:\n  http: {listen: '127.0.0.1:0', max_event_bytes: 1024, "
        f"decode_workers: {workers}}}\n"
    )
    app = App(parse_config(base_config_text(tmp_path, ingest=ingest)))
    await app.start()
    try:
        body, good = _body(filler)
        async with (
            aiohttp.ClientSession() as s,
            s.post(
                f"http://127.0.0.1:{app.http_port}/v1/events",
                data=body,
                headers={"Content-Type": "application/x-ndjson"},
            ) as resp,
        ):
            assert resp.status == 202
            doc = await resp.json()
        assert doc["accepted"] == good
        assert sorted(r["index"] for r in doc["rejected"]) == sorted(BAD)
        items = await _quarantined(tmp_path / "archive", len(BAD))
        assert len(items) == len(BAD)
        by_index = {q["index"]: q for q in items}
        for index, sent in BAD.items():
            assert base64.b64decode(by_index[index]["raw_b64"]) == sent, by_index[index]["reason"]
        # Accepted events are stored trimmed, one record per archive line.
        async with asyncio.timeout(15):
            while len(records := read_archive(tmp_path / "archive")) < good:
                await asyncio.sleep(0.1)
        assert records[0] == _good(0)
    finally:
        await app.stop()
