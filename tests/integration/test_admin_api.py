"""The admin API on a running daemon: the dead-letter store, reload and the integrity state."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.integration.admin_support import AdminDaemon, running_admin
from tests.integration.query_support import AUDIT_TENANT, TOKENS

pytestmark = pytest.mark.integration

ADMIN = TOKENS["admin"]


async def _post(a: AdminDaemon, path: str, body: Any = None, content_type: str = "application/json") -> Any:
    headers = {"Content-Type": content_type, **ADMIN.headers}
    data = body if isinstance(body, bytes) else orjson.dumps(body) if body is not None else None
    async with a.d.session.post(a.d.url + path, data=data, headers=headers) as r:
        assert r.content_type == "application/json"
        return r.status, orjson.loads(await r.read())


async def _audit(a: AdminDaemon, operation: str) -> list[str]:
    await a.d.settle()
    _, doc, _ = await a.d.get("/v1/events", ADMIN, tenant=AUDIT_TENANT, operation=operation, limit="1000")
    return sorted(e["code"] for e in doc["events"])


async def test_dead_letters_are_listed_paged_and_replayed(tmp_path: Path) -> None:
    async with running_admin(tmp_path) as a:
        parked = await a.park(3)
        m = parked[0]
        assert (m["topic"], m["subscription"], m["kind"], m["active"]) == ("ops", "dead", "event", True)
        assert m["attempts"] == 1 and "400" in m["error"] and m["parked"] >= m["created"]
        assert m["tenant"] and m["title"]
        # Paging walks every dead letter once.
        seen: list[str] = []
        cursor: str | None = None
        while True:
            params = {"limit": "1", **({"cursor": cursor} if cursor else {})}
            status, doc, text = await a.d.get("/v1/admin/dlq", ADMIN, **params)
            assert status == 200, text
            seen += [x["id"] for x in doc["dead_letters"]]
            cursor = doc["next_cursor"]
            if cursor is None:
                break
        assert sorted(seen) == sorted(x["id"] for x in parked) and len(set(seen)) == 3
        # Filters.
        for params, count in (
            ({"topic": "ops", "subscription": "dead"}, 3),
            ({"subscription": "confirm"}, 0),
            ({"topic": "other"}, 0),
            ({"tenant": m["tenant"]}, 3),
            ({"tenant": "nobody"}, 0),
        ):
            status, doc, _ = await a.d.get("/v1/admin/dlq", ADMIN, **params)
            assert status == 200 and len(doc["dead_letters"]) == count, params
        status, doc, _ = await a.d.get("/v1/admin/dlq", ADMIN, cursor="bm90LWEtY3Vyc29y")
        assert status == 400 and doc["error"].startswith("cursor: not a cursor")

        # Replay one by id, then all, once the endpoint takes them.
        a.receiver.status = 200
        status, doc = await _post(a, "/v1/admin/dlq/replay", {"ids": [m["id"], "no-such-id"]})
        assert status == 200 and doc["replayed"] == 1 and doc["missing"] == ["no-such-id"]
        assert doc["subscriptions"] == [
            {"topic": "ops", "subscription": "dead", "replayed": 1, "active": True}
        ]
        await a.receiver.wait_for(lambda r: len(r.ok("/dead")) == 1, 10)
        assert a.receiver.ok("/dead")[0].json()["event"]["id"] == m["event_id"]
        status, doc = await _post(a, "/v1/admin/dlq/replay", {"all": True, "topic": "ops"})
        assert status == 200 and doc["replayed"] == 2 and doc["missing"] == []
        await a.receiver.wait_for(lambda r: len(r.ok("/dead")) == 3, 10)
        status, doc, _ = await a.d.get("/v1/admin/dlq", ADMIN)
        assert status == 200 and doc == {"dead_letters": [], "next_cursor": None}

        # Bodies are checked against the document; refusals are audited like the rest.
        for body, content_type, expected in (
            ({}, "application/json", 400),
            ({"ids": ["a"], "all": True}, "application/json", 400),
            ({"all": True, "extra": 1}, "application/json", 400),
            (b"{not json", "application/json", 400),
            (b'{"all": true}', "text/plain", 415),
        ):
            status, doc = await _post(a, "/v1/admin/dlq/replay", body, content_type)
            assert status == expected and doc["error"], (body, doc)
        assert await _audit(a, "replayDeadLetters") == ["200", "200", "400", "400", "400", "400", "415"]
        assert "200" in await _audit(a, "listDeadLetters")


async def test_reload_answers_like_sighup_and_dead_letters_of_a_removed_subscription_stay(
    tmp_path: Path,
) -> None:
    async with running_admin(tmp_path) as a:
        parked = await a.park(1)
        good = a.config_path.read_text()
        a.config_path.write_text(good.replace("notify:", "notify: [not, a, mapping]\nnothing:"))
        status, doc = await _post(a, "/v1/admin/reload")
        assert status == 422 and "the ones in force stay" in doc["error"]
        # The subscription leaves the config: its outbox, and its dead letters, stay on disk.
        lines = [ln for ln in good.splitlines() if "name: dead" not in ln]
        a.config_path.write_text("\n".join(lines) + "\n")
        status, doc = await _post(a, "/v1/admin/reload")
        assert status == 200 and doc == {"reloaded": True, "config": str(a.config_path)}
        status, doc, _ = await a.d.get("/v1/admin/dlq", ADMIN)
        assert [(x["id"], x["active"]) for x in doc["dead_letters"]] == [(parked[0]["id"], False)]
        status, doc = await _post(a, "/v1/admin/dlq/replay", {"ids": [parked[0]["id"]]})
        assert doc["subscriptions"] == [
            {"topic": "ops", "subscription": "dead", "replayed": 1, "active": False}
        ]
        assert await _audit(a, "reloadConfig") == ["200", "422"]


async def test_integrity_shows_each_chains_head(tmp_path: Path) -> None:
    async with running_admin(tmp_path) as a:
        status, doc, text = await a.d.get("/v1/admin/integrity", ADMIN)
        assert status == 200, text
        assert doc["last_validation"] is None
        (chain,) = doc["chains"]
        assert chain["tracker"] == "default" and chain["writer"] == "test" and chain["witnesses"] == []
        head = chain["head"]
        assert head is not None and "/_digest/" in head["key"] and head["tree_size"] >= 0
        assert len(head["sha256"]) == 64 and chain["checkpoint"].startswith("trailkeeper")
        assert chain["sequence"] >= 1 and chain["pending"] is None
        # The digest named is in the archive.
        assert (a.d.archive / head["key"]).exists()
        assert await _audit(a, "getIntegrity") == ["200"]
        # A validation run against this daemon's archive shows up as the last one.
        import asyncio
        import sys

        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "daemon", "validate", "-c", str(a.config_path), "--trust-keys-dir", "--json",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        _out, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()
        status, doc, text = await a.d.get("/v1/admin/integrity", ADMIN)
        last = doc["last_validation"]
        assert status == 200 and last is not None, text
        assert last["ok"] is True and last["target"].startswith("local:") and last["findings_total"] == 0
        assert "NOT pinned" in last["trust"]
