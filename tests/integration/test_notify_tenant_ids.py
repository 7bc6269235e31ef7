"""The same event id in two tenants is two events for the notifier too (issue 15, finding 1).

Outbox message ids are (topic, subscription, event id), so the second tenant's key event
is dropped by the outbox as a replay of the first. The notifier is outside the index's
files; this test records the gap until its message id includes the tenant.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import aiohttp
import pytest

from daemon.app import App
from daemon.config import parse_config
from tests.conftest import base_config_text
from tests.notify_support import Receiver, notify_yaml

pytestmark = pytest.mark.integration


def stop_logging(tenant: str) -> bytes:
    return json.dumps(
        {
            "eventSource": "cloudtrail.amazonaws.com",
            "eventName": "StopLogging",
            "eventID": "same-id",
            "recipientAccountId": tenant,
            "userIdentity": {"type": "IAMUser", "userName": "mallory", "accountId": tenant},
            "requestParameters": {"name": "trail"},
        }
    ).encode()


async def test_a_key_event_is_notified_for_each_tenant_that_has_its_id(tmp_path: Path) -> None:
    hooks = await Receiver().start()
    topics = f"    security:\n      subscriptions:\n      - {{name: hook, protocol: webhook, url: '{hooks.url()}'}}\n"
    text = base_config_text(tmp_path) + notify_yaml(
        topics, "    - {topic: security, categories: [high_risk]}\n"
    )
    app = App(parse_config(text))
    await app.start()
    try:
        async with aiohttp.ClientSession() as s:
            for tenant in ("111111111111", "222222222222"):
                async with s.post(
                    f"http://127.0.0.1:{app.http_port}/v1/events",
                    data=stop_logging(tenant),
                    headers={"Content-Type": "application/json"},
                ) as resp:
                    assert resp.status == 202
        await hooks.wait_for(lambda r: len(r.ok()) >= 1, 10)
        with contextlib.suppress(TimeoutError):
            await hooks.wait_for(lambda r: len(r.ok()) >= 2, 0.5)
        tenants = {q.json()["event"]["tenant"] for q in hooks.ok()}
        assert tenants == {"111111111111", "222222222222"}
    finally:
        await app.stop()
        await hooks.stop()
