"""The query API end to end: real CloudTrail data in over HTTP, filtered pages out over HTTP."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
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


# --- issue 15: identity by (tenant, id), 404 for foreign ids, any value, origin ---------------


@pytest.fixture(params=["sqlite", "postgres"])
async def index_yaml(request: pytest.FixtureRequest, pg_database: Any) -> Any:
    """The ``index:`` lines for each backend (SQLite's path is already in config_yaml)."""
    if request.param == "sqlite":
        yield ""
        return
    async with pg_database() as dsn:
        yield f"  backend: postgres\n  dsn: {dsn}\n  pg_schema: tk_api\n"


def trail(event_id: str, tenant: str, name: str, **more: Any) -> dict[str, Any]:
    return {
        "eventVersion": "1.08",
        "eventTime": "2024-07-30T21:31:10Z",
        "eventSource": "iam.amazonaws.com",
        "eventName": name,
        "eventID": event_id,
        "recipientAccountId": tenant,
        "userIdentity": {"type": "IAMUser", "userName": "alice", "accountId": tenant},
        **more,
    }


async def test_one_tenant_cannot_hide_another_tenants_event(tmp_path: Path, index_yaml: str) -> None:
    """Finding 1: producer A posts event id X for tenant A; producer B then posts its real
    event X for tenant B. B's auditor must get B's event, by id and by filter."""
    from tests.integration.query_support import TENANT_A, TENANT_B, config_yaml

    planted = trail("X-collide", TENANT_A, "PlantedByA")
    real = trail("X-collide", TENANT_B, "RealEventOfB", requestParameters={"userName": "bob"})
    async with running(tmp_path, text=config_yaml(tmp_path, index=index_yaml)) as d:
        assert (await d.post(ndjson([planted]), TOKENS["producer-a"]))[0] == 202
        await d.settle()
        assert (await d.post(ndjson([real]), TOKENS["producer-all"]))[0] == 202
        await d.settle()

        status, doc, text = await d.get("/v1/events/X-collide", TOKENS["auditor-b"])
        assert status == 200, text
        assert doc["event"]["tenant"] == TENANT_B and doc["record"] == real
        got = await d.walk(TOKENS["auditor-b"], operation="RealEventOfB")
        assert [(e["id"], e["tenant"]) for e in got] == [("X-collide", TENANT_B)]
        status, doc, _ = await d.get("/v1/events/X-collide", TOKENS["auditor-a"])
        assert status == 200 and doc["record"] == planted

        # An admin sees both: 409 names the tenants, ?tenant= picks one.
        status, doc, text = await d.get("/v1/events/X-collide", TOKENS["admin"])
        assert status == 409, text
        assert sorted(doc["tenants"]) == sorted([TENANT_A, TENANT_B]) and "?tenant=" in doc["error"]
        status, doc, _ = await d.get("/v1/events/X-collide", TOKENS["admin"], tenant=TENANT_B)
        assert status == 200 and doc["record"] == real
        status, _, _ = await d.get("/v1/events/X-collide", TOKENS["auditor-a"], tenant=TENANT_B)
        assert status == 403

        # Each event's archive location is its own file and leaf, never the other tenant's.
        for token, rec in ((TOKENS["auditor-b"], real), (TOKENS["auditor-a"], planted)):
            located: list[dict[str, Any]] = []
            async with asyncio.timeout(10):
                while not located:
                    located = (await d.get("/v1/events/X-collide", token))[1]["archive"]
                    await asyncio.sleep(0.05)
            assert len(located) == 1
            in_file = [r for r in d.archived_records() if r["_key"] == located[0]["key"]]
            stored = dict(in_file[located[0]["leaf"]])
            stored.pop("_key")
            assert stored == rec


async def test_unknown_and_foreign_ids_answer_the_same_404_through_the_same_lookup(tmp_path: Path) -> None:
    """Finding 3: 403 for a foreign id told a tenant that the id exists elsewhere. (Both
    backends' scoped lookup is in tests/contract/test_index.py; this is the API over it.)"""
    from tests.integration.query_support import TENANT_A, TENANT_B

    async with running(tmp_path) as d:
        assert (await d.post(ndjson([trail("only-in-b", TENANT_B, "Secret")]), TOKENS["admin"]))[0] == 202
        await d.settle()
        index = d.app.index
        assert index is not None
        calls: list[tuple[str, Any]] = []
        real_find = index.find

        async def spy(event_id: str, tenants: Any, limit: int = 100) -> Any:
            calls.append((event_id, tenants))
            return await real_find(event_id, tenants, limit)

        index.find = spy  # type: ignore[method-assign]
        auditor = TOKENS["auditor-a"]
        foreign = await d.get("/v1/events/only-in-b", auditor)
        unknown = await d.get("/v1/events/never-xxx", auditor)
        assert foreign[0] == unknown[0] == 404
        assert foreign[2].replace("only-in-b", "ID") == unknown[2].replace("never-xxx", "ID")
        # One lookup each, within the caller's tenants only: no path for "exists elsewhere".
        assert calls == [("only-in-b", frozenset({TENANT_A})), ("never-xxx", frozenset({TENANT_A}))]


async def test_odd_values_are_stored_found_and_shown(tmp_path: Path, index_yaml: str) -> None:
    """Finding 2 end to end: NUL (which wedged PostgreSQL), a value too long for a B-tree
    entry, deep nesting, a lone surrogate and a 30-digit number in the record."""
    from tests.integration.query_support import TENANT_A, config_yaml

    deep: Any = "bottom"
    for _ in range(300):
        deep = [deep]
    records = [
        trail("nul-1", TENANT_A, "Nul\x00Name", userIdentity={"type": "IAMUser", "userName": "a\x00b"}),
        trail("long-1", TENANT_A, "L" * 200_000),
        trail("deep-1", TENANT_A, "Deep", requestParameters={"userName": deep}),
        trail("big-1", TENANT_A, "BigNumber", requestParameters={"n": 123456789012345678901234567890}),
    ]
    # The stdlib writes nesting deeper than orjson's limit (a producer's encoder may, too).
    body = b"".join(json.dumps(r, separators=(",", ":")).encode() + b"\n" for r in records) + (
        b'{"eventSource":"s3.amazonaws.com","eventName":"Surrogate","eventID":"sur-1",'
        b'"recipientAccountId":"' + TENANT_A.encode() + b'","requestParameters":{"note":"\\ud800"}}\n'
    )
    admin = TOKENS["admin"]
    async with running(tmp_path, text=config_yaml(tmp_path, index=index_yaml)) as d:
        status, doc, text = await d.post(body, TOKENS["producer-all"])
        assert status == 202 and doc["accepted"] == 5, text
        await d.settle(timeout=5)

        got = await d.walk(admin, operation="Nul\x00Name")
        assert [(e["id"], e["operation"], e["user_name"]) for e in got] == [
            ("nul-1", "Nul\x00Name", "a\x00b")
        ]
        assert [e["id"] for e in await d.walk(admin, user="a\x00b")] == ["nul-1"]
        assert "nul-1" in [e["id"] for e in await d.walk(admin, q="l\x00n")]
        status, doc, text = await d.get("/v1/events/nul-1", admin)
        assert status == 200 and doc["event"]["operation"] == "Nul\x00Name", text

        listed = {e["id"]: e for e in await d.walk(admin, tenant=TENANT_A, limit=2)}
        assert set(listed) == {"nul-1", "long-1", "deep-1", "big-1", "sur-1"}
        assert listed["long-1"]["operation"] == "L" * 200_000
        # The first element of a list names the resource (events.py), here 299 levels deep.
        assert listed["deep-1"]["resource_name"] == json.dumps(deep[0], separators=(",", ":"))

        for event_id in ("long-1", "deep-1", "big-1", "sur-1"):
            status, doc, text = await d.get(f"/v1/events/{event_id}", admin)
            assert status == 200, (event_id, text[:300])
        assert doc["record"]["requestParameters"]["note"] == "\ud800"  # the escape, written back
        assert doc["record_text"].endswith('"note":"\\ud800"}}')
        status, doc, _ = await d.get("/v1/events/big-1", admin)
        assert '"n":123456789012345678901234567890' in doc["record_text"]


async def test_items_say_whether_trailkeeper_or_a_producer_wrote_them(tmp_path: Path) -> None:
    """Finding 4: the daemon's own audit records carry origin "trailkeeper", everything a
    producer sent carries "producer", even when it claims to be trailkeeper's. (Both
    backends' rows are checked in tests/contract/test_index.py; this is the API over them.)"""

    spoof = {
        "trace_id": "spoof-1",
        "trace_name": "queryEvents",
        "service_type": "trailkeeper",
        "project_id": "p-spoof",
        "time": 1722375070000,
    }
    admin = TOKENS["admin"]
    async with running(tmp_path) as d:
        status, _, text = await d.post(ndjson([spoof, trail("p-1", "p-plain", "CreateUser")]), admin)
        assert status == 202, text
        assert (await d.get("/v1/events", admin, limit="1"))[0] == 200  # audited: one own record
        await d.settle()
        items = await d.walk(admin, service="trailkeeper", operation="queryEvents")
        origins = {e["id"]: e["origin"] for e in items}
        assert origins.pop("spoof-1") == "producer"
        assert origins and set(origins.values()) == {"trailkeeper"}
        assert {e["origin"] for e in await d.walk(admin, tenant="p-plain")} == {"producer"}
        own = next(iter(origins))
        for event_id, origin in ((own, "trailkeeper"), ("spoof-1", "producer"), ("p-1", "producer")):
            status, doc, text = await d.get(f"/v1/events/{event_id}", admin)
            assert status == 200 and doc["event"]["origin"] == origin, text
