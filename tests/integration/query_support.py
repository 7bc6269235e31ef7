"""A daemon in-process with tokens of every role, for the query API's integration tests."""

from __future__ import annotations

import asyncio
import gzip
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from daemon.app import App
from daemon.config import parse_config
from daemon.index import CURSOR, Classifier

STRATUS = Path(__file__).resolve().parents[3] / "shared" / "data" / "cloudtrail-stratus"
if not STRATUS.is_dir():
    STRATUS = Path("/work/shared/data/cloudtrail-stratus")

TENANT_A = "056392974792"  # the most frequent account in the stratus data
TENANT_B = "017622104382"
AUDIT_TENANT = "trailkeeper"


@dataclass(frozen=True)
class Token:
    name: str
    secret: str
    role: str
    tenants: tuple[str, ...]

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.secret}"}

    def sees(self, tenant: str | None) -> bool:
        return self.tenants == ("*",) or (tenant is not None and tenant in self.tenants)


TOKENS = {
    t.name: t
    for t in (
        Token("producer-a", "p-a-secret-0001", "producer", (TENANT_A,)),
        Token("producer-all", "p-all-secret-0002", "producer", ("*",)),
        Token("auditor-a", "aud-a-secret-0003", "auditor", (TENANT_A,)),
        Token("auditor-b", "aud-b-secret-0004", "auditor", (TENANT_B, AUDIT_TENANT)),
        Token("admin", "admin-secret-0005", "admin", ("*",)),
    )
}


def auth_yaml(extra_tokens: str = "", rate: str = "{requests_per_second: 1000, burst: 1000}") -> str:
    import hashlib

    lines = ["auth:", f"  rate_limit: {rate}", f"  audit_tenant: {AUDIT_TENANT}", "  tokens:"]
    for t in TOKENS.values():
        digest = hashlib.sha256(t.secret.encode()).hexdigest()
        tenants = json.dumps(list(t.tenants))
        lines.append(f"    - {{name: {t.name}, sha256: {digest}, role: {t.role}, tenants: {tenants}}}")
    return "\n".join(lines) + "\n" + extra_tokens


def config_yaml(tmp: Path, *, auth: str | None = None, http_extra: str = "", index: str = "") -> str:
    return f"""
writer_id: test
ingest:
  http:
    listen: "127.0.0.1:0"
{http_extra}
journal: {{dir: {tmp}/journal, fsync: false}}
stores:
  local: {{type: local, path: {tmp}/archive, fsync: false}}
quarantine: {{store: local, max_age: 200ms}}
trackers:
  - name: default
    store: local
    file: {{max_age: 200ms}}
metrics: {{listen: null}}
index:
  path: {tmp}/index/events.db
{index}
{auth if auth is not None else auth_yaml()}
"""


@dataclass
class Daemon:
    app: App
    url: str
    session: aiohttp.ClientSession
    archive: Path
    ssl: Any = None
    seen: list[Any] = field(default_factory=list)

    async def settle(self, timeout: float = 15.0) -> None:
        """Wait until the index has consumed everything journaled so far."""
        target = self.app.journal.end_offset
        deadline = time.monotonic() + timeout
        while self.app.journal.cursor(CURSOR) < target:
            if time.monotonic() > deadline:
                raise AssertionError(f"index cursor stuck at {self.app.journal.cursor(CURSOR)} < {target}")
            await asyncio.sleep(0.02)

    async def get(self, path: str, token: Token | None = None, **params: str) -> tuple[int, Any, str]:
        headers = token.headers if token else {}
        async with self.session.get(self.url + path, params=params, headers=headers, ssl=self.ssl) as r:
            text = await r.text()
            return (
                r.status,
                (json.loads(text) if text and r.content_type == "application/json" else None),
                text,
            )

    async def post(self, body: bytes, token: Token | None = None) -> tuple[int, Any, str]:
        headers = {"Content-Type": "application/x-ndjson", **(token.headers if token else {})}
        async with self.session.post(self.url + "/v1/events", data=body, headers=headers, ssl=self.ssl) as r:
            text = await r.text()
            return r.status, json.loads(text), text

    async def walk(self, token: Token, limit: int = 50, **params: str) -> list[dict[str, Any]]:
        """Every page of a query, following next_cursor."""
        out: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            p = dict(params, limit=str(limit), **({"cursor": cursor} if cursor else {}))
            status, doc, text = await self.get("/v1/events", token, **p)
            assert status == 200, text
            out += doc["events"]
            cursor = doc["next_cursor"]
            if cursor is None:
                return out

    def archived_records(self) -> list[dict[str, Any]]:
        records = []
        for path in sorted((self.archive / "trails").rglob("*.json.gz")):
            records += [
                dict(r, _key=str(path.relative_to(self.archive)))
                for r in orjson.loads(gzip.decompress(path.read_bytes()))["Records"]
            ]
        return records


@asynccontextmanager
async def running(
    tmp: Path,
    text: str | None = None,
    classify: Classifier | None = None,
    ssl: Any = None,
    scheme: str = "http",
) -> AsyncIterator[Daemon]:
    app = App(parse_config(text or config_yaml(tmp)))
    app.classify = classify
    await app.start()
    try:
        async with aiohttp.ClientSession() as session:
            yield Daemon(app, f"{scheme}://127.0.0.1:{app.http_port}", session, tmp / "archive", ssl)
    finally:
        await app.stop(grace=5)


def stratus_records() -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    for path in sorted(STRATUS.glob("*.json")):
        records += json.loads(path.read_text())
    return records


def ndjson(records: list[dict[str, Any]]) -> bytes:
    return b"\n".join(orjson.dumps(r) for r in records) + b"\n"


async def ingest_and_wait(app: App, token: str, records: list[dict[str, Any]], timeout: float = 30) -> None:
    """POST the records as NDJSON with ``token`` and wait until the index holds that many."""
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            f"http://127.0.0.1:{app.http_port}/v1/events",
            data=ndjson(records),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/x-ndjson"},
        ) as r,
    ):
        assert r.status == 202, await r.text()
    assert app.index is not None
    async with asyncio.timeout(timeout):
        while await app.index.count() < len(records):
            await asyncio.sleep(0.1)
