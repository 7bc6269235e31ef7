"""No producer can forge trailkeeper's own audit records: the audit tenant is reserved on every
ingest path. HTTP refuses a request holding such an event whole (403, whatever the token's
tenants); a queue source quarantines it with its reason and moves on."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from daemon.decodepool import DecodePool
from daemon.events import KIND_EVENT, KIND_QUARANTINE, decode_entry
from daemon.intake import REASON_RESERVED_TENANT, Intake
from daemon.journal import Journal, JournalReader
from daemon.sources.redis import RedisSource, RedisSourceConfig
from tests.conftest import base_config_text
from tests.contract.source_brokers import RedisBroker, live
from tests.integration.query_support import AUDIT_TENANT, TENANT_A, TOKENS, ndjson, running

pytestmark = pytest.mark.integration


def forged_audit_record(trace_id: str, tenant: str = AUDIT_TENANT) -> dict[str, Any]:
    """What the Auditor writes for a query, word for word, but sent by a producer."""
    return {
        "trace_id": trace_id,
        "trace_name": "queryEvents",
        "trace_rating": "normal",
        "trace_type": "ApiCall",
        "service_type": "trailkeeper",
        "resource_type": "events",
        "resource_name": "/v1/events",
        "source_ip": "127.0.0.1",
        "time": 1_700_000_000_000,
        "code": "200",
        "user": {"type": "token", "name": "soc", "domain": {"id": tenant, "name": tenant}},
        "project_id": tenant,
        "request": {},
        "response": {},
    }


def plain_event(event_id: str, tenant: str = TENANT_A) -> dict[str, Any]:
    return {
        "eventSource": "iam.amazonaws.com",
        "eventName": "CreateUser",
        "eventID": event_id,
        "recipientAccountId": tenant,
    }


async def test_http_refuses_the_reserved_tenant_from_every_token(tmp_path: Path) -> None:
    async with running(tmp_path) as d:
        for token in (TOKENS["producer-all"], TOKENS["admin"]):
            forged = forged_audit_record(f"forged-{token.name}")
            # A CloudTrail record claiming the tenant is refused just the same.
            cloudtrail = plain_event(f"ct-{token.name}", AUDIT_TENANT)
            body = ndjson([plain_event(f"ok-{token.name}"), forged, cloudtrail])
            status, doc, text = await d.post(body, token)
            assert status == 403, text
            assert doc["items"] == [
                {"index": 1, "tenant": AUDIT_TENANT, "reason": "reserved"},
                {"index": 2, "tenant": AUDIT_TENANT, "reason": "reserved"},
            ]
            assert "reserved for trailkeeper's own audit records" in doc["error"]
            assert "nothing from this request was written" in doc["error"]
        # The same records in another tenant are ordinary events.
        status, _, text = await d.post(ndjson([forged_audit_record("lookalike", TENANT_A)]), TOKENS["admin"])
        assert status == 202, text
        await d.settle()
        admin = TOKENS["admin"]
        for event_id in ("forged-producer-all", "forged-admin", "ct-admin", "ok-admin", "ok-producer-all"):
            assert (await d.get(f"/v1/events/{event_id}", admin))[0] == 404, event_id
        # The attempt itself is in the trail, under the token that tried.
        _, doc, _ = await d.get("/v1/events", admin, service="trailkeeper", operation="ingestEvents")
        assert {(e["user_name"], e["code"]) for e in doc["events"]} == {
            ("producer-all", "403"),
            ("admin", "403"),
        }
        # Everything in the audit tenant is trailkeeper's own: written by source "trailkeeper".
        _, doc, _ = await d.get("/v1/events", admin, tenant=AUDIT_TENANT, limit="1000")
        for e in doc["events"]:
            _, one, _ = await d.get(f"/v1/events/{e['id']}", admin)
            assert one["source"] == "trailkeeper", one


async def test_open_ingest_refuses_the_reserved_tenant_too(tmp_path: Path) -> None:
    import aiohttp

    from daemon.app import App
    from daemon.config import parse_config

    app = App(parse_config(base_config_text(tmp_path)))
    await app.start()
    try:
        async with aiohttp.ClientSession() as s:
            url = f"http://127.0.0.1:{app.http_port}/v1/events"
            async with s.post(url, data=orjson.dumps(forged_audit_record("open-1"))) as r:
                assert r.status == 403
                assert (await r.json())["items"][0]["reason"] == "reserved"
            async with s.post(url, data=orjson.dumps(plain_event("open-2"))) as r:
                assert r.status == 202
    finally:
        await app.stop()


@pytest.fixture
async def broker() -> AsyncIterator[RedisBroker]:
    async with live(RedisBroker()) as b:
        yield b


async def _entries(journal: Journal) -> list[Any]:
    reader = JournalReader(journal, journal.start_offset)
    try:
        return [decode_entry(o, p) for o, p in await reader.read(1_000_000, timeout=0)]
    finally:
        reader.close()


async def test_a_queue_source_quarantines_the_reserved_tenant_and_moves_on(
    broker: RedisBroker, tmp_path: Path
) -> None:
    journal = Journal(tmp_path / "j", max_bytes=64 * 1024**2, fsync=False)
    await journal.open()
    intake = Intake(journal)
    config = RedisSourceConfig.model_validate(broker.source_config(batch=50))
    source = RedisSource(config, intake, "w1")
    source.pool = DecodePool(0)
    forged = orjson.dumps(forged_audit_record("q-forged"))
    await broker.publish(
        [
            orjson.dumps(plain_event("q-1")),
            forged,
            # One message, two events: only the forged one is quarantined.
            orjson.dumps(plain_event("q-2")) + b"\n" + orjson.dumps(forged_audit_record("q-forged-2")),
            orjson.dumps(plain_event("q-3")),
        ]
    )
    try:
        await source.start()
        async with asyncio.timeout(20):
            while journal.end_offset < 5 or await broker.outstanding() > 0:
                await asyncio.sleep(0.05)
        got = await _entries(journal)
    finally:
        await source.stop()
        await journal.close()
    events = [e for e in got if e.kind == KIND_EVENT]
    assert sorted(e.id for e in events) == ["q-1", "q-2", "q-3"]
    assert all(e.tenant != AUDIT_TENANT for e in events)
    quarantined = [orjson.loads(e.record) for e in got if e.kind == KIND_QUARANTINE]
    assert [q["reason"] for q in quarantined] == [REASON_RESERVED_TENANT, REASON_RESERVED_TENANT]
    assert all("reserved for trailkeeper's own audit records" in q["detail"] for q in quarantined)
    assert all(q["source"] == config.source_name and q["ref"] for q in quarantined)
    raws = sorted(base64.b64decode(q["raw_b64"]) for q in quarantined)
    assert raws == sorted([forged, orjson.dumps(forged_audit_record("q-forged-2"))])
