"""Correlations end to end: a burst split by a restart is still one key event in the index."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from tests.conftest import DaemonProcess
from tests.integration.query_support import TOKENS, auth_yaml, config_yaml, ndjson, running

pytestmark = pytest.mark.integration

BURST = "aws.signin.console-login-failure-burst"
T0 = dt.datetime(2024, 7, 30, 21, 0, 0, tzinfo=dt.UTC)


def failed_login(i: int, ip: str = "203.0.113.7", every: float = 2.0) -> dict[str, Any]:
    return {
        "eventVersion": "1.08",
        "eventID": f"login-failure-{ip}-{i:04d}",
        "eventTime": (T0 + dt.timedelta(seconds=i * every)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "eventSource": "signin.amazonaws.com",
        "eventName": "ConsoleLogin",
        "eventType": "AwsConsoleSignIn",
        "sourceIPAddress": ip,
        "userIdentity": {
            "type": "IAMUser",
            "arn": "arn:aws:iam::056392974792:user/alice",
            "principalId": "AIDAEXAMPLE",
            "accountId": "056392974792",
        },
        "recipientAccountId": "056392974792",
        "errorMessage": "Failed authentication",
        "responseElements": {"ConsoleLogin": "Failure"},
        "additionalEventData": {"MFAUsed": "Yes"},
    }


def key_events(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if BURST in e.get("rules", [])]


async def test_a_burst_split_by_a_restart_is_one_key_event(tmp_path: Path) -> None:
    admin, producer = TOKENS["admin"], TOKENS["producer-all"]
    text = config_yaml(tmp_path)
    async with running(tmp_path, text) as d:
        status, _doc, body = await d.post(ndjson([failed_login(i) for i in range(10)]), producer)
        assert status == 202, body
        await d.settle()
        assert key_events(await d.walk(admin, operation="ConsoleLogin")) == []
    async with running(tmp_path, text) as d:
        # Another address's 19 failures within the same minute stay below the threshold.
        others = [failed_login(i, ip="198.51.100.9", every=3.0) for i in range(19)]
        status, _doc, body = await d.post(ndjson([failed_login(i) for i in range(10, 20)] + others), producer)
        assert status == 202, body
        await d.settle()
        everything = await d.walk(admin, operation="ConsoleLogin")
        assert len(everything) == 39
        [key] = key_events(everything)
        assert key["id"] == "login-failure-203.0.113.7-0019"
        # The completing event is the one key event of the burst's category and severity.
        high = await d.walk(admin, operation="ConsoleLogin", category="high_risk", severity="high")
        assert [e["id"] for e in high] == [key["id"]]
        status, doc, _ = await d.get(f"/v1/events/{key['id']}", admin)
        assert status == 200 and BURST in doc["classification"]["rules"], doc


async def _get(session: aiohttp.ClientSession, url: str, **params: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        p = dict(params, limit="100", **({"cursor": cursor} if cursor else {}))
        async with session.get(url + "/v1/events", params=p, headers=TOKENS["admin"].headers) as r:
            assert r.status == 200, await r.text()
            doc = await r.json()
        out += doc["events"]
        cursor = doc["next_cursor"]
        if cursor is None:
            return out


async def _post(session: aiohttp.ClientSession, url: str, records: list[dict[str, Any]]) -> None:
    headers = {"Content-Type": "application/x-ndjson", **TOKENS["producer-all"].headers}
    async with session.post(url + "/v1/events", data=ndjson(records), headers=headers) as r:
        assert r.status == 202, await r.text()


async def _indexed(session: aiohttp.ClientSession, url: str, count: int, timeout: float = 20.0) -> list[Any]:
    deadline = time.monotonic() + timeout
    while True:
        got = await _get(session, url, operation="ConsoleLogin")
        if len(got) >= count or time.monotonic() > deadline:
            return got
        await asyncio.sleep(0.1)


@pytest.mark.parametrize("wait_for_snapshot", [True, False])
async def test_a_kill_in_the_middle_of_a_burst_neither_resets_nor_repeats_it(
    daemon_process: Any, wait_for_snapshot: bool
) -> None:
    proc: DaemonProcess = daemon_process(auth=auth_yaml())
    proc.start()
    async with aiohttp.ClientSession() as session:
        await _post(session, proc.url, [failed_login(i) for i in range(10)])
        assert len(await _indexed(session, proc.url, 10)) == 10
        if wait_for_snapshot:
            await asyncio.sleep(1.5)  # a correlation snapshot is taken every second
    proc.kill9()
    if not wait_for_snapshot:
        # As if killed before any snapshot: the state comes from the journal alone.
        for snapshot in (proc.tmp / "journal" / "state" / "correlation").glob("*.json"):
            snapshot.unlink()
    proc.start()
    async with aiohttp.ClientSession() as session:
        await _post(session, proc.url, [failed_login(i) for i in range(10, 20)])
        got = await _indexed(session, proc.url, 20)
        assert len(got) == 20
        assert [e["id"] for e in key_events(got)] == ["login-failure-203.0.113.7-0019"]
    assert proc.terminate() == 0
    snapshot = proc.tmp / "journal" / "state" / "correlation" / "index.json"
    assert orjson.loads(snapshot.read_bytes())["fed"] >= 20
