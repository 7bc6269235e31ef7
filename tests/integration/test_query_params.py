"""``GET /v1/events`` parameters against the running daemon: checked as the document says,
refused with a JSON 400 naming the parameter, and every refusal is in the audit trail."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.integration.query_support import (
    AUDIT_TENANT,
    TENANT_A,
    TOKENS,
    Daemon,
    ndjson,
    running,
    stratus_records,
)

pytestmark = pytest.mark.integration


async def _audited(d: Daemon, code: str) -> list[dict[str, Any]]:
    await d.settle()
    _, doc, _ = await d.get(
        "/v1/events", TOKENS["admin"], tenant=AUDIT_TENANT, operation="queryEvents", limit="1000"
    )
    return [e for e in doc["events"] if e["code"] == code and e["user_name"] == "auditor-a"]


async def test_limit_must_be_ascii_digits_and_refusals_are_audited(tmp_path: Path) -> None:
    async with running(tmp_path) as d:
        # "²" passed str.isdigit() and then failed int(): a text/plain 500, unaudited.
        # "\uff11\uff10" (full-width "10") passed both and was served.
        for raw in ("²", "\uff11\uff10", "+5", " 5", "-1", "1001"):
            status, doc, text = await d.get("/v1/events", TOKENS["auditor-a"], limit=raw)
            assert status == 400, (raw, text)
            assert doc["error"].startswith("limit: expected an integer from 1 to 1000 in ASCII digits"), text
        assert (await d.get("/v1/events", TOKENS["auditor-a"], limit="10"))[0] == 200
        refused = await _audited(d, "400")
        assert len(refused) == 6


async def test_a_cursor_longer_than_512_characters_pages_on(tmp_path: Path) -> None:
    base = stratus_records()[0]
    long_ids = [f"{'x' * 490}-{i}" for i in range(3)]
    async with running(tmp_path) as d:
        records = [dict(base, eventID=i, recipientAccountId=TENANT_A) for i in long_ids]
        assert (await d.post(ndjson(records), TOKENS["admin"]))[0] == 202
        await d.settle()
        status, doc, text = await d.get("/v1/events", TOKENS["auditor-a"], user_id=_user_id(base), limit="1")
        assert status == 200, text
        cursor = doc["next_cursor"]
        assert cursor is not None and len(cursor) > 512  # was refused: "longer than 512 characters"
        seen = [e["id"] for e in doc["events"]]
        while cursor is not None:
            status, doc, text = await d.get(
                "/v1/events", TOKENS["auditor-a"], user_id=_user_id(base), limit="1", cursor=cursor
            )
            assert status == 200, text
            seen += [e["id"] for e in doc["events"]]
            cursor = doc["next_cursor"]
        assert sorted(seen) == sorted(long_ids)
        # Within the document's maxLength but not made by the server: refused as a cursor.
        status, doc, _ = await d.get("/v1/events", TOKENS["auditor-a"], cursor="A" * 3000)
        assert status == 400 and doc["error"].startswith("cursor: not a cursor"), doc


def _user_id(rec: dict[str, Any]) -> str:
    ident = rec["userIdentity"]
    return str(ident.get("principalId") or ident.get("arn"))


async def test_time_bounds_follow_the_document(tmp_path: Path) -> None:
    async with running(tmp_path) as d:
        assert (await d.post(ndjson(stratus_records()[:5]), TOKENS["admin"]))[0] == 202
        await d.settle()
        auditor = TOKENS["admin"]
        status, doc, _ = await d.get("/v1/events", auditor, start="0", end="99999999999999999999")
        assert status == 200 and len(doc["events"]) >= 5
        # Bounds are compared as times, whatever their form.
        status, doc, _ = await d.get("/v1/events", auditor, start="2024-07-30T00:00:00Z", end="1722297600000")
        assert status == 400 and doc["error"].startswith(
            "start (2024-07-30T00:00:00.000Z) must be before end"
        )
        status, doc, _ = await d.get(
            "/v1/events", auditor, start="2024-07-30T01:00:00+02:00", end="2024-07-29T23:30:00.000Z"
        )
        assert status == 200 and doc["events"] == []
        for bad in ("yesterday", "2024-07-30", "2024-07-30 00:00:00Z", "0999-12-31T00:00:00Z"):
            status, doc, _ = await d.get("/v1/events", auditor, start=bad)
            assert status == 400 and doc["error"].startswith("start: expected"), (bad, doc)
        status, doc, _ = await d.get("/v1/events", auditor, bogus="1")
        assert status == 400 and doc["error"].startswith("bogus: unknown parameter")
