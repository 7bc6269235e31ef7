"""Failed authentication is throttled and audited in summaries, without slowing valid tokens.

A flood of bad requests from one address gets 401 until its bucket is spent, then 429
with Retry-After; the trail holds a bounded number of events about it (a few one by
one, then one summary per window and kind) whose counts add up to every refused
request, the last windows written at shutdown. Valid tokens from the same address
are never throttled by it.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from daemon.api.audit import SUMMARY_OPERATION
from tests.integration.query_support import (
    TOKENS,
    Daemon,
    Token,
    auth_yaml,
    config_yaml,
    running,
)

pytestmark = pytest.mark.integration

FLOOD = 2_000
AUDIT_OPERATIONS = ("authenticate", SUMMARY_OPERATION)


def flood_auth(
    failures: str = "", extra: str = "", rate: str = "{requests_per_second: 1000, burst: 1000}"
) -> str:
    text = auth_yaml(extra, rate=rate)
    if failures:
        text += f"  failures: {failures}\n"
    return text


def refusal_records(d: Daemon) -> list[dict[str, Any]]:
    """trailkeeper's records of refused requests, from the archive (complete after stop)."""
    return [
        r
        for r in d.archived_records()
        if r.get("service_type") == "trailkeeper" and r.get("trace_name") in AUDIT_OPERATIONS
    ]


def accounted(records: list[dict[str, Any]]) -> int:
    """Refused requests the records account for: each one recorded alone, plus what each
    summary counted beyond the ones of its window recorded alone."""
    alone = [r for r in records if r["trace_name"] == "authenticate"]
    summaries = [r for r in records if r["trace_name"] == SUMMARY_OPERATION]
    return len(alone) + sum(s["request"]["count"] - s["request"]["recorded_individually"] for s in summaries)


async def _hammer(
    d: Daemon, n: int, headers: dict[str, str], concurrency: int = 16
) -> tuple[Counter[int], list[tuple[aiohttp.ClientResponse, Any]]]:
    """``n`` requests with ``headers``; the statuses, and a few 429 answers with their bodies."""
    statuses: Counter[int] = Counter()
    throttled: list[tuple[aiohttp.ClientResponse, Any]] = []
    queue = iter(range(n))

    async def worker() -> None:
        for i in queue:
            path = "/v1/events" if i % 2 else "/v1/events/some-id"
            async with d.session.get(d.url + path, headers=headers) as r:
                body = await r.read()
                statuses[r.status] += 1
                if r.status == 429 and len(throttled) < 5:
                    throttled.append((r, orjson.loads(body)))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return statuses, throttled


async def test_a_flood_of_bad_tokens_is_throttled_and_costs_a_bounded_number_of_audit_events(
    tmp_path: Path,
) -> None:
    # A window longer than the test: the summaries are written at shutdown, which must lose nothing.
    text = config_yaml(tmp_path, auth=flood_auth("{audit_window: 1h}"))
    legit_statuses: Counter[int] = Counter()
    async with running(tmp_path, text) as d:

        async def legit() -> None:
            # A valid token from the flooding address, all along: never throttled by the flood.
            for _ in range(60):
                status, _, _ = await d.get("/v1/events", TOKENS["auditor-a"], limit="1")
                legit_statuses[status] += 1
                await asyncio.sleep(0.01)

        bad = {"Authorization": "Bearer guess-0000"}
        (statuses, throttled), _ = await asyncio.gather(_hammer(d, FLOOD, bad), legit())
        assert statuses[401] + statuses[429] == FLOOD, statuses
        # The default bucket: a burst of 100, then one per second.
        assert 100 <= statuses[401] <= 100 + 30, statuses
        assert statuses[429] >= FLOOD - 130
        assert throttled
        for r, doc in throttled:
            assert int(r.headers["Retry-After"]) >= 1 and r.content_type == "application/json"
            assert doc["retry_after"] >= 1 and "retry after" in doc["error"]
        assert legit_statuses == Counter({200: 60})
        assert (await d.get("/v1/events", TOKENS["admin"], limit="1"))[0] == 200
    records = refusal_records(d)
    kinds = Counter((r["trace_name"], r["code"]) for r in records)
    # 5 recorded alone and one summary per kind (bad_token 401, throttled 429), one window each.
    assert len(records) <= 20, kinds
    assert kinds[("authenticate", "401")] == 5 and kinds[("authenticate", "429")] == 5, kinds
    summaries = {r["request"]["kind"]: r for r in records if r["trace_name"] == SUMMARY_OPERATION}
    assert set(summaries) == {"bad_token", "throttled"}, kinds
    assert summaries["bad_token"]["request"]["count"] == statuses[401]
    assert summaries["bad_token"]["request"]["distinct_tokens"] == 1
    assert summaries["bad_token"]["source_ip"] == "127.0.0.1"
    assert summaries["throttled"]["request"]["count"] == statuses[429]
    # Nothing is lost: the records account for every refused request.
    assert accounted(records) == FLOOD


async def test_summaries_close_with_their_window_and_a_flood_is_a_key_event(tmp_path: Path) -> None:
    text = config_yaml(
        tmp_path,
        auth=flood_auth(
            "{audit_window: 1s, audit_first: 1, rate_limit: {requests_per_second: 1, burst: 10}}"
        ),
    )
    async with running(tmp_path, text) as d:
        statuses, _ = await _hammer(d, 300, {"Authorization": "Bearer wrong"})
        assert statuses[429] >= 280
        admin = TOKENS["admin"]
        summaries: list[dict[str, Any]] = []
        async with asyncio.timeout(15):
            # Written by the window's timer, not at shutdown.
            while not any(s.get("category") == "high_risk" for s in summaries):
                await asyncio.sleep(0.2)
                await d.settle()
                summaries = await d.walk(admin, service="trailkeeper", operation=SUMMARY_OPERATION)
        flood = [s for s in summaries if s.get("category") == "high_risk"]
        assert flood and all(s["code"] == "429" for s in flood)
        _, doc, _ = await d.get(f"/v1/events/{flood[0]['id']}", admin)
        assert "trailkeeper.auth-flood" in doc["classification"]["rules"]
        assert doc["record"]["request"]["count"] >= 100


async def test_a_valid_token_over_its_own_limit_is_audited_in_summaries(tmp_path: Path) -> None:
    text = config_yaml(tmp_path, auth=flood_auth(rate="{requests_per_second: 0.1, burst: 3}"))
    async with running(tmp_path, text) as d:
        statuses = Counter([(await d.get("/v1/events", TOKENS["auditor-a"]))[0] for _ in range(50)])
        assert statuses == Counter({200: 3, 429: 47})
    records = [
        r for r in d.archived_records() if r.get("service_type") == "trailkeeper" and r["code"] == "429"
    ]
    alone = [r for r in records if r["trace_name"] == "queryEvents"]
    summaries = [r for r in records if r["trace_name"] == SUMMARY_OPERATION]
    assert len(alone) == 5 and all(r["user"]["name"] == "auditor-a" for r in alone)
    assert len(summaries) == 1 and summaries[0]["request"]["kind"] == "rate_limited"
    assert summaries[0]["request"]["count"] == 47 and summaries[0]["user"]["name"] == "auditor-a"


async def test_an_expired_token_is_refused_like_an_unknown_one_and_the_trail_says_why(tmp_path: Path) -> None:
    old = Token("old-ci", "expired-secret-0009", "auditor", ("*",))
    digest = hashlib.sha256(old.secret.encode()).hexdigest()
    entry = f"    - {{name: old-ci, sha256: {digest}, role: auditor, tenants: ['*'], expires: 2020-01-01T00:00:00Z}}\n"
    text = config_yaml(tmp_path, auth=flood_auth(extra=entry))
    async with running(tmp_path, text) as d:
        expired = await d.get("/v1/events", old)
        unknown = await d.get("/v1/events", Token("x", "never-configured", "auditor", ("*",)))
        assert expired[0] == unknown[0] == 401
        assert expired[1] == unknown[1]  # the answer does not tell an expired token from a guess
        await d.settle()
        _, doc, _ = await d.get(
            "/v1/events", TOKENS["admin"], service="trailkeeper", operation="authenticate"
        )
        by_user = {e["user_name"]: e for e in doc["events"]}
        assert "expired" in by_user["old-ci"]["error"] and "2020-01-01" in by_user["old-ci"]["error"]
        assert "expired" not in by_user["anonymous"]["error"]


async def test_x_forwarded_for_counts_only_behind_a_trusted_proxy(tmp_path: Path) -> None:
    limits = "{audit_first: 1, rate_limit: {requests_per_second: 0.01, burst: 3}}"
    trusted = flood_auth(limits) + "  trusted_proxies: [127.0.0.0/8]\n"
    async with running(tmp_path, config_yaml(tmp_path, auth=trusted)) as d:
        for client in ("198.51.100.7", "203.0.113.9"):
            headers = {"X-Forwarded-For": f"10.9.9.9, {client}"}
            got = []
            for _ in range(4):
                async with d.session.get(d.url + "/v1/events", headers=headers) as r:
                    got.append(r.status)
            # Each forwarded client has its own bucket; a spoofed hop to its left is ignored.
            assert got == [401, 401, 401, 429], (client, got)
    sources = {r["source_ip"] for r in refusal_records(d)}
    assert sources == {"198.51.100.7", "203.0.113.9"}

    tmp2 = tmp_path / "untrusted"
    tmp2.mkdir()
    async with running(tmp2, config_yaml(tmp2, auth=flood_auth(limits))) as d:
        got = []
        for i in range(4):
            async with d.session.get(d.url + "/v1/events", headers={"X-Forwarded-For": f"192.0.2.{i}"}) as r:
                got.append(r.status)
        # Without a trusted proxy the header changes nothing: one peer, one bucket.
        assert got == [401, 401, 401, 429]
    assert {r["source_ip"] for r in refusal_records(d)} == {"127.0.0.1"}
