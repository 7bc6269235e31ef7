"""A daemon read from a config file, with notifications whose endpoint refuses everything.

Its ``ops/dead`` subscription answers 400, a permanent refusal, so every notification
of a high-risk event is parked in the dead-letter store at once; ``ops/confirm`` waits
for confirmation. The config file lets ``POST /v1/admin/reload`` re-read it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from daemon.app import App
from daemon.config import load_config
from tests.integration.query_support import TOKENS, Daemon, config_yaml, ndjson
from tests.notify_support import Receiver, key_events, notify_yaml


def notify_section(recv: Receiver) -> str:
    topics = (
        "    ops:\n      subscriptions:\n"
        f"      - {{name: dead, protocol: webhook, url: '{recv.url('/dead')}'}}\n"
        f"      - {{name: confirm, protocol: webhook, url: '{recv.url('/confirm')}',"
        " require_confirmation: true}\n"
    )
    return notify_yaml(topics, "    - {topic: ops, categories: [high_risk]}\n")


@dataclass
class AdminDaemon:
    d: Daemon
    receiver: Receiver
    config_path: Path

    async def park(self, n: int, tenant: str | None = None, timeout: float = 20.0) -> list[dict[str, Any]]:
        """Send ``n`` high-risk events (of ``tenant`` if given) and wait until their
        notifications are dead letters; returns those dead letters."""
        events = key_events(n)
        if tenant is not None:
            events = [dict(e, recipientAccountId=tenant) for e in events]
        status, _, text = await self.d.post(ndjson(events), TOKENS["admin"])
        assert status == 202, text
        ids = {e["eventID"] for e in events}
        deadline = time.monotonic() + timeout
        while True:
            status, doc, text = await self.d.get("/v1/admin/dlq", TOKENS["admin"], limit="1000")
            assert status == 200, text
            parked = [m for m in doc["dead_letters"] if m["event_id"] in ids and m["subscription"] == "dead"]
            if len(parked) >= n:
                return parked
            if time.monotonic() > deadline:
                raise AssertionError(f"only {len(parked)} of {n} notifications were parked")
            await asyncio.sleep(0.1)

    async def confirm_token(self, timeout: float = 20.0) -> str:
        """The token of the confirmation request ``ops/confirm`` sent (and had refused)."""

        def sent(r: Receiver) -> bool:
            return any(q.path == "/confirm" for q in r.requests)

        await self.receiver.wait_for(sent, timeout)
        request = next(q for q in self.receiver.requests if q.path == "/confirm")
        url: str = request.json()["confirm_url"]
        return url.split("token=", 1)[1]


@asynccontextmanager
async def running_admin(tmp: Path, auth: str | None = None) -> AsyncIterator[AdminDaemon]:
    recv = await Receiver(status=400).start()
    path = tmp / "trailkeeper.yaml"
    path.write_text(config_yaml(tmp, auth=auth) + notify_section(recv))
    app = App(load_config(path), str(path))
    await app.start()
    try:
        async with aiohttp.ClientSession() as session:
            d = Daemon(app, f"http://127.0.0.1:{app.http_port}", session, tmp / "archive")
            yield AdminDaemon(d, recv, path)
    finally:
        await app.stop(grace=5)
        await recv.stop()
