"""The query API end to end: real CloudTrail data in over HTTP, filtered pages out over HTTP."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from typing import Any

import orjson
import pytest

from daemon.events import Event
from daemon.index import Classification
from tests.integration.query_support import TOKENS, ndjson, running, stratus_records

pytestmark = pytest.mark.integration

# A classifier standing in for the rule engine: CloudTrail tampering is defense evasion.
EVASION = {"StopLogging", "DeleteTrail", "PutEventSelectors", "UpdateTrail"}


def classify(event: Event) -> Classification | None:
    if event.canonical["operation"] in EVASION:
        return Classification("defense-evasion", "high", ("cloudtrail-tampering",))
    return None


def user_of(rec: dict[str, Any]) -> str | None:
    ident = rec.get("userIdentity", {})
    name = ident.get("userName") or ident.get("sessionContext", {}).get("sessionIssuer", {}).get("userName")
    if not name and "/" in ident.get("arn", ""):
        name = ident["arn"].rsplit("/", 1)[-1]
    return name


def when(rec: dict[str, Any]) -> dt.datetime:
    return dt.datetime.fromisoformat(rec["eventTime"].replace("Z", "+00:00"))


def ids(records: list[dict[str, Any]]) -> list[str]:
    """Expected order: newest first, ties broken by id descending."""
    return [r["eventID"] for r in sorted(records, key=lambda r: (when(r), r["eventID"]), reverse=True)]


async def test_stratus_queries_return_exactly_the_matching_records(tmp_path: Path) -> None:
    records = stratus_records()
    assert len(records) == 310
    admin = TOKENS["admin"]
    async with running(tmp_path, classify=classify) as d:
        status, doc, text = await d.post(ndjson(records), TOKENS["producer-all"])
        assert status == 202 and doc["accepted"] == 310, text
        await d.settle()
        window = {"start": "2024-01-01T00:00:00Z", "end": "2025-01-01T00:00:00Z"}

        # Paging through everything returns each record exactly once, newest first.
        everything = await d.walk(admin, limit=13, **window)
        assert [e["id"] for e in everything] == ids(records)

        for op in ("StopLogging", "CreateAccessKey", "DescribeInstances", "GetSecretValue"):
            got = await d.walk(admin, limit=7, operation=op)
            want = ids([r for r in records if r["eventName"] == op])
            assert want, op
            assert [e["id"] for e in got] == want, op

        for user in ("christophe", "cli"):
            got = await d.walk(admin, limit=25, user=user, **window)
            assert [e["id"] for e in got] == ids([r for r in records if user_of(r) == user]), user

        times = sorted(when(r) for r in records)
        lo, hi = times[50], times[200]
        got = await d.walk(admin, start=lo.isoformat(), end=hi.isoformat())
        assert [e["id"] for e in got] == ids([r for r in records if lo <= when(r) < hi])

        got = await d.walk(admin, limit=3, category="defense-evasion")
        want = ids([r for r in records if r["eventName"] in EVASION])
        assert want and [e["id"] for e in got] == want
        assert all(e["severity"] == "high" and e["rules"] == ["cloudtrail-tampering"] for e in got)

        # Combined filters: an operation within one user's and one tenant's events.
        got = await d.walk(admin, user="christophe", tenant="056392974792", **window)
        assert [e["id"] for e in got] == ids(
            [
                r
                for r in records
                if user_of(r) == "christophe" and r.get("recipientAccountId") == "056392974792"
            ]
        )

        got = await d.walk(admin, q="logging")
        assert [e["id"] for e in got] == ids([r for r in records if "logging" in r["eventName"].lower()])

        # One event in full: the record as stored, byte for byte, and its classification.
        stop = next(r for r in records if r["eventName"] == "StopLogging")
        status, doc, text = await d.get(f"/v1/events/{stop['eventID']}", admin)
        assert status == 200, text
        assert doc["record"] == stop
        assert doc["classification"] == {
            "category": "defense-evasion",
            "severity": "high",
            "rules": ["cloudtrail-tampering"],
        }
        assert doc["proof"] is None


async def test_get_event_reports_its_archive_file_and_leaf(tmp_path: Path) -> None:
    records = stratus_records()[:40]
    admin = TOKENS["admin"]
    async with running(tmp_path) as d:
        status, _, text = await d.post(ndjson(records), TOKENS["producer-all"])
        assert status == 202, text
        await d.settle()
        archived: list[dict[str, Any]] = []
        for _ in range(200):
            archived = d.archived_records()
            if len(archived) >= 40:
                break
            await asyncio.sleep(0.05)
        for rec in records[:5]:
            located: dict[str, Any] | None = None
            for _ in range(100):
                status, doc, _ = await d.get(f"/v1/events/{rec['eventID']}", admin)
                assert status == 200
                if doc["archive"]:
                    located = doc["archive"][0]
                    break
                await asyncio.sleep(0.05)
            assert located is not None, "archive location never recorded"
            in_file = [r for r in archived if r["_key"] == located["key"]]
            assert in_file, located
            stored = dict(in_file[located["leaf"]])
            assert stored.pop("_key") == located["key"]
            assert stored == rec


async def test_bad_parameters_are_400_not_500(tmp_path: Path) -> None:
    admin = TOKENS["admin"]
    async with running(tmp_path) as d:
        for params in (
            {"limit": "0"},
            {"limit": "abc"},
            {"limit": "1001"},
            {"start": "yesterday"},
            {"start": "2024-02-01T00:00:00Z", "end": "2024-01-01T00:00:00Z"},
            {"cursor": "!!!"},
            {"cursor": "WzEsMl0"},
            {"nonsense": "1"},
            {"operation": ""},
            {"operation": "x" * 600},
        ):
            status, doc, text = await d.get("/v1/events", admin, **params)
            assert status == 400, (params, text)
            assert doc["error"]
        status, doc, _ = await d.get("/v1/events/no-such-event", admin)
        assert status == 404


async def test_categories_come_from_the_built_in_rules(tmp_path: Path) -> None:
    """Without an injected classifier the daemon's own rules classify what is indexed."""
    from daemon.rules.config import RulesConfig
    from daemon.rules.ruleset import RuleSet

    records = stratus_records()
    engine = RuleSet(RulesConfig(), metrics=False)
    decoded = [Event(orjson.dumps(r), {}, 0) for r in records]
    want_high = []
    for rec, ev in zip(records, decoded, strict=True):
        from daemon.events import canonicalise

        canonical = canonicalise(rec)
        assert isinstance(canonical, dict)
        ev.canonical = canonical
        if any(m.category == "high_risk" for m in engine.match(ev)):
            want_high.append(rec["eventID"])
    assert "StopLogging" in {r["eventName"] for r in records if r["eventID"] in want_high}
    admin = TOKENS["admin"]
    async with running(tmp_path) as d:
        status, _doc, text = await d.post(ndjson(records), TOKENS["producer-all"])
        assert status == 202, text
        # Failed authentications are themselves key events (built-in pack trailkeeper-self).
        for _ in range(3):
            status, _doc, _text = await d.get("/v1/events", None)
            assert status == 401
        await d.settle()
        got = await d.walk(admin, limit=50, category="high_risk")
        stratus = [e["id"] for e in got if e.get("service") != "trailkeeper"]
        assert sorted(stratus) == sorted(want_high)
        auth_failures = await d.walk(admin, limit=50, service="trailkeeper", operation="authenticate")
        assert len(auth_failures) == 3
        assert all(e["category"] == "high_risk" for e in auth_failures)


async def test_get_event_carries_an_inclusion_proof_once_a_digest_is_published(tmp_path: Path) -> None:
    from daemon.integrity.keys import load_verifiers
    from daemon.integrity.prove import verify_proof
    from tests.integration.query_support import config_yaml

    text = config_yaml(tmp_path) + f"integrity: {{keys_dir: {tmp_path}/keys, digest_interval: 1s}}\n"
    records = stratus_records()[:20]
    admin = TOKENS["admin"]
    async with running(tmp_path, text=text) as d:
        status, _, body = await d.post(ndjson(records), TOKENS["producer-all"])
        assert status == 202, body
        proof = None
        async with asyncio.timeout(20):
            while proof is None:
                status, doc, _ = await d.get(f"/v1/events/{records[3]['eventID']}", admin)
                assert status in (200, 404)  # 404 until the indexer has caught up
                proof = doc.get("proof") if status == 200 else None
                await asyncio.sleep(0.2)
    summary = verify_proof(proof, load_verifiers([str(tmp_path / "keys")]))
    assert records[3]["eventID"] in summary
    assert orjson.loads(__import__("base64").b64decode(proof["record"])) == records[3]
