"""HTTP ingest through the journal into the archive, in-process on ephemeral ports."""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
from pathlib import Path

import aiohttp
import orjson
import pytest

from daemon.app import App
from daemon.config import parse_config
from tests.conftest import base_config_text, read_archive, stratus_records


async def _post(app: App, body: bytes, ctype: str = "application/json", **headers: str) -> tuple[int, dict]:
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            f"http://127.0.0.1:{app.http_port}/v1/events",
            data=body,
            headers={"Content-Type": ctype, **headers},
        ) as resp,
    ):
        return resp.status, await resp.json(content_type=None)


async def _wait_archived(root: Path, n: int, prefix: str = "trails", timeout: float = 15) -> list[bytes]:
    async with asyncio.timeout(timeout):
        while True:
            recs = read_archive(root, prefix)
            if len(recs) >= n:
                return recs
            await asyncio.sleep(0.1)


async def test_stratus_records_archived_each_once_and_equal(app: App, tmp_path: Path) -> None:
    records = stratus_records()
    status, doc = await _post(app, orjson.dumps(records))
    assert status == 202, doc
    assert doc["accepted"] == 310 and doc["rejected"] == []
    archived = await _wait_archived(tmp_path / "archive", 310)
    assert len(archived) == 310
    got = sorted((orjson.loads(r) for r in archived), key=lambda r: r["eventID"])
    assert got == sorted(records, key=lambda r: r["eventID"])
    for path in (tmp_path / "archive" / "trails").rglob("*.json.gz"):
        doc = json.loads(gzip.decompress(path.read_bytes()))  # any JSON tool reads it as CloudTrail
        assert isinstance(doc["Records"], list)


async def test_ndjson_mix_rejects_per_item_and_quarantines_raw_bytes(app: App, tmp_path: Path) -> None:
    good = [
        orjson.dumps({"eventSource": "iam.amazonaws.com", "eventName": "CreateUser", "eventID": f"ok{i}"})
        for i in range(3)
    ]
    oversize = orjson.dumps(
        {"eventSource": "s3.amazonaws.com", "eventName": "PutObject", "pad": "x" * 300_000}
    )
    bad_utf8 = b'{"eventSource": "s3.amazonaws.com", "eventName": "\xc3\x28"}'
    lines = [good[0], b"{this is not json", b"42", good[1], oversize, bad_utf8, good[2]]
    status, doc = await _post(app, b"\n".join(lines), "application/x-ndjson")
    assert status == 202
    assert doc["accepted"] == 3
    reasons = {r["index"]: r["reason"] for r in doc["rejected"]}
    assert set(reasons) == {1, 2, 4, 5}
    assert reasons[1].startswith("invalid_json")
    assert reasons[2].startswith("not_object")
    assert reasons[4].startswith("too_large") and "262144" in reasons[4]
    assert reasons[5].startswith("invalid_utf8")
    archived = await _wait_archived(tmp_path / "archive", 3)
    assert sorted(orjson.loads(r)["eventID"] for r in archived) == ["ok0", "ok1", "ok2"]
    # The quarantine holds each rejected line's exact bytes with its reason.
    quarantined: list[dict] = []
    async with asyncio.timeout(10):
        while len(quarantined) < 4:
            quarantined = (
                [
                    json.loads(line)
                    for p in (tmp_path / "archive" / "quarantine").rglob("*.jsonl.gz")
                    for line in gzip.decompress(p.read_bytes()).splitlines()
                ]
                if (tmp_path / "archive" / "quarantine").exists()
                else []
            )
            await asyncio.sleep(0.1)
    by_index = {q["index"]: q for q in quarantined}
    assert base64.b64decode(by_index[1]["raw_b64"]) == b"{this is not json"
    assert base64.b64decode(by_index[2]["raw_b64"]) == b"42"
    assert base64.b64decode(by_index[4]["raw_b64"]) == oversize
    assert base64.b64decode(by_index[5]["raw_b64"]) == bad_utf8
    assert by_index[5]["reason"] == "invalid_utf8" and by_index[5]["source"] == "http"
    assert len({q["ref"] for q in quarantined}) == 1 and quarantined[0]["ref"] == doc["request_id"]


async def test_gzip_body_and_cts_traces(app: App, tmp_path: Path) -> None:
    traces = [
        {"service_type": "ECS", "trace_name": "rebootServer", "trace_id": "t1", "time": 1700000000000},
        {"service_type": "IAM", "trace_name": "deleteUser", "trace_id": "t2", "time": 1700000000000},
    ]
    status, doc = await _post(app, gzip.compress(orjson.dumps(traces)), **{"Content-Encoding": "gzip"})
    assert status == 202 and doc["accepted"] == 2
    archived = await _wait_archived(tmp_path / "archive", 2)
    assert sorted(orjson.loads(r)["trace_id"] for r in archived) == ["t1", "t2"]


async def test_refusals_415_413_400(tmp_path: Path) -> None:
    cfg = parse_config(
        base_config_text(
            tmp_path,
            ingest='ingest:\n  http: {listen: "127.0.0.1:0", max_body_bytes: 10KiB}\n',
        )
    )
    app = App(cfg)
    await app.start()
    try:
        status, doc = await _post(app, b"a=b", "application/x-www-form-urlencoded")
        assert status == 415 and "application/x-ndjson" in doc["accepted_types"]
        status, doc = await _post(app, b"[" + b"1," * 10000 + b"1]")
        assert status == 413 and "max_body_bytes" in doc["error"]
        # A gzip bomb is bounded by the same limit after decompression.
        status, doc = await _post(app, gzip.compress(b" " * 5_000_000), **{"Content-Encoding": "gzip"})
        assert status == 413
        status, doc = await _post(app, b"{nope")
        assert (
            status == 400 and doc["accepted"] == 0 and doc["rejected"][0]["reason"].startswith("invalid_json")
        )
        status, doc = await _post(app, b"   ")
        assert status == 400
    finally:
        await app.stop()


async def test_budget_pushback_503_with_retry_after(tmp_path: Path) -> None:
    cfg = parse_config(
        base_config_text(
            tmp_path,
            journal=f"journal: {{dir: {tmp_path}/journal, max_bytes: 64KiB, segment_bytes: 8KiB}}\n",
            stores=f"stores:\n  local: {{type: local, path: {tmp_path}/archive}}\n  dead: {{type: local, path: {tmp_path}/dead}}\n",
            trackers="trackers:\n  - {name: default, store: dead, file: {max_events: 10, max_age: 50ms}}\n",
        )
    )
    (tmp_path / "dead").write_text("a file where the store's directory should be")
    app = App(cfg)
    await app.start()
    try:
        rec = orjson.dumps({"eventSource": "a", "eventName": "b", "pad": "p" * 900})
        statuses = []
        for _ in range(100):
            status, _doc = await _post(app, rec)
            statuses.append(status)
            if status == 503:
                break
        assert statuses[-1] == 503 and set(statuses[:-1]) == {202}
        async with (
            aiohttp.ClientSession() as s,
            s.post(f"http://127.0.0.1:{app.http_port}/v1/events", data=rec) as resp,
        ):
            assert resp.status == 503 and resp.headers["Retry-After"] == "5"
            assert "journal.max_bytes" in (await resp.json())["error"]
        async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{app.http_port}/readyz") as resp:
            assert resp.status == 503
            problems = (await resp.json())["problems"]
            assert any("budget" in p for p in problems), problems
        # Why the journal filled up is the downstream view's to say, not readiness'.
        async with (
            aiohttp.ClientSession() as s,
            s.get(f"http://127.0.0.1:{app.http_port}/healthz/downstream") as resp,
        ):
            assert resp.status == 503
            problems = (await resp.json())["problems"]
            assert any(p.startswith(("archive default", "store dead")) for p in problems), problems
    finally:
        await app.stop(grace=0.5)


async def test_health_and_metrics(app: App) -> None:
    await _post(app, orjson.dumps({"eventSource": "a", "eventName": "b", "eventID": "m1"}))
    await _post(app, b"[42]")
    async with aiohttp.ClientSession() as s:
        async with s.get(f"http://127.0.0.1:{app.http_port}/healthz") as resp:
            assert resp.status == 200
        async with s.get(f"http://127.0.0.1:{app.metrics_port}/metrics") as resp:
            text = await resp.text()
    assert 'trailkeeper_events_accepted_total{source="http"}' in text
    assert 'trailkeeper_events_rejected_total{reason="not_object",source="http"}' in text
    assert "trailkeeper_journal_lag_entries" in text
    assert "trailkeeper_journal_bytes" in text


@pytest.mark.parametrize("token_ok", [True, False])
async def test_producer_token(tmp_path: Path, token_ok: bool) -> None:
    import hashlib

    digest = hashlib.sha256(b"s3cret").hexdigest()
    cfg = parse_config(
        base_config_text(
            tmp_path, ingest=f'ingest:\n  http: {{listen: "127.0.0.1:0", tokens: ["sha256:{digest}"]}}\n'
        )
    )
    app = App(cfg)
    await app.start()
    try:
        status, _ = await _post(
            app,
            orjson.dumps({"eventSource": "a", "eventName": "b"}),
            Authorization=f"Bearer {'s3cret' if token_ok else 'wrong'}",
        )
        assert status == (202 if token_ok else 401)
    finally:
        await app.stop()


async def test_two_trackers_with_filters_each_get_exactly_their_events(tmp_path: Path) -> None:
    cfg = parse_config(
        base_config_text(
            tmp_path,
            stores=(
                f"stores:\n  local: {{type: local, path: {tmp_path}/archive}}\n"
                f"  keys: {{type: local, path: {tmp_path}/keyops}}\n"
            ),
            trackers=(
                "trackers:\n"
                "  - {name: iam, store: keys, prefix: iam-only, filter: {service: [iam.amazonaws.com]},"
                " file: {max_age: 200ms}}\n"
                "  - {name: writes, store: local, prefix: writes,"
                " filter: {record: {readOnly: [false]}}, file: {max_age: 200ms}}\n"
            ),
        )
    )
    app = App(cfg)
    await app.start()
    try:
        records = stratus_records()
        status, doc = await _post(app, orjson.dumps(records))
        assert status == 202 and doc["accepted"] == 310
        want_iam = sorted(r["eventID"] for r in records if r["eventSource"] == "iam.amazonaws.com")
        want_writes = sorted(r["eventID"] for r in records if r.get("readOnly") is False)
        assert want_iam and want_writes and len(want_writes) < 310
        iam = await _wait_archived(tmp_path / "keyops", len(want_iam), prefix="iam-only")
        writes = await _wait_archived(tmp_path / "archive", len(want_writes), prefix="writes")
        await asyncio.sleep(0.5)
        assert (
            sorted(orjson.loads(r)["eventID"] for r in read_archive(tmp_path / "keyops", "iam-only"))
            == want_iam
        )
        assert (
            sorted(orjson.loads(r)["eventID"] for r in read_archive(tmp_path / "archive", "writes"))
            == want_writes
        )
        assert len(iam) == len(want_iam) and len(writes) == len(want_writes)
    finally:
        await app.stop()
