"""A subscription that must confirm gets a SubscriptionConfirmation and nothing else until it
GETs the confirmation URL on trailkeeper's API; messages wait durably meanwhile."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

import aiohttp
import pytest
from standardwebhooks.webhooks import Webhook

from daemon.app import App
from daemon.config import parse_config
from tests.conftest import base_config_text
from tests.notify_support import Receiver, key_events, notify_yaml, post_events

pytestmark = pytest.mark.integration

SECRET = "whsec_" + base64.b64encode(b"c" * 32).decode()


async def test_nothing_but_the_confirmation_until_confirmed(tmp_path: Path) -> None:
    recv = await Receiver().start()
    topics = (
        "    ops:\n      subscriptions:\n"
        f"      - {{name: hook, protocol: webhook, url: '{recv.url('/hook')}', secrets: ['{SECRET}'],"
        " require_confirmation: true}\n"
    )
    routes = "    - {topic: ops, categories: [high_risk]}\n"
    app = App(parse_config(base_config_text(tmp_path) + notify_yaml(topics, routes)))
    await app.start()
    try:
        await recv.wait_for(lambda r: len(r.ok()) >= 1, 20)
        events = key_events(3)
        async with aiohttp.ClientSession() as s:
            await post_events(s, app.http_port or 0, events)
            await asyncio.sleep(1.5)
            [conf] = recv.ok()
            doc = conf.json()
            assert doc["type"] == "SubscriptionConfirmation"
            Webhook(SECRET).verify(conf.body, conf.headers)
            url = doc["confirm_url"]
            assert url.startswith(
                f"http://127.0.0.1:{app.http_port}/v1/subscriptions/ops/hook/confirm?token="
            )
            async with s.get(url.split("token=")[0] + "token=wrong") as resp:
                assert resp.status == 403
            await asyncio.sleep(0.5)
            assert len(recv.ok()) == 1  # still nothing else
            async with s.get(url) as resp:
                assert resp.status == 200 and (await resp.json())["confirmed"] is True
        await recv.wait_for(lambda r: len(r.ok()) >= 4, 20)
    finally:
        await app.stop()
    # Confirmed state survives a restart: no second confirmation request.
    app2 = App(parse_config(base_config_text(tmp_path) + notify_yaml(topics, routes)))
    await app2.start()
    try:
        async with aiohttp.ClientSession() as s:
            await post_events(s, app2.http_port or 0, key_events(1))
        await recv.wait_for(lambda r: len(r.ok()) >= 5, 20)
    finally:
        await app2.stop()
        await recv.stop()
    kinds = [r.json()["type"] for r in recv.ok()]
    assert kinds == ["SubscriptionConfirmation"] + ["Notification"] * 4
    assert {r.json()["event"]["id"] for r in recv.ok()[1:4]} == {e["eventID"] for e in events}
