"""Recovery after an outage is bounded by ``recovery_probe``, not by the grown backoff.

The retry delay here is at least 15 s from the first failure on (initial_backoff 30 s,
full jitter, floored at half); the endpoint comes back after about a second, and delivery
must follow within a few probe intervals (0.3 s each). A Retry-After the endpoint asked for
still holds: probing never sends before it.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import pytest

from daemon.app import App
from daemon.config import parse_config
from tests.conftest import base_config_text
from tests.notify_support import Receiver, event_ids_of, key_events, notify_yaml, post_events

pytestmark = pytest.mark.integration

SLOW_BACKOFF = "{max_age: 1h, initial_backoff: 30s, max_backoff: 5m, recovery_probe: 300ms}"
BOUND = 3.0  # seconds from the endpoint's return to delivery: probe interval plus slack


async def _app(tmp_path: Path, recv: Receiver) -> App:
    topics = (
        "    ops:\n      subscriptions:\n"
        f"      - {{name: hook, protocol: webhook, url: '{recv.url()}', delivery: {SLOW_BACKOFF}}}\n"
    )
    routes = "    - {topic: ops, categories: [high_risk]}\n"
    app = App(parse_config(base_config_text(tmp_path) + notify_yaml(topics, routes)))
    await app.start()
    return app


@pytest.mark.parametrize("outage", ["connection_refused", "http_503"])
async def test_delivery_resumes_within_the_probe_bound_after_the_endpoint_is_back(
    tmp_path: Path, outage: str
) -> None:
    recv = await Receiver(status=503).start()
    if outage == "connection_refused":
        await recv.down()
    app = await _app(tmp_path, recv)
    try:
        events = key_events(1)
        async with aiohttp.ClientSession() as s:
            await post_events(s, app.http_port or 0, events)
        if outage == "http_503":
            await recv.wait_for(lambda r: len(r.requests) >= 1, 10)
        # The first attempt has failed; the retry now waits 15 s or more.
        await asyncio.sleep(1.0)
        assert not recv.ok()
        recv.status = 200
        if outage == "connection_refused":
            await recv.up()
        back = time.monotonic()
        await recv.wait_for(lambda r: len(r.ok()) >= 1, 10)
        took = time.monotonic() - back
    finally:
        await app.stop()
        await recv.stop()
    assert event_ids_of(recv.ok()) == [events[0]["eventID"]]
    assert took <= BOUND, f"delivery resumed {took:.1f} s after the endpoint was back"
    if outage == "connection_refused":
        # The probe is a bare TCP connection: the receiver saw one request, the delivery.
        assert len(recv.requests) == 1


async def test_probing_never_sends_before_the_retry_after_the_endpoint_asked_for(tmp_path: Path) -> None:
    recv = await Receiver(status=429, headers={"Retry-After": "3"}).start()
    app = await _app(tmp_path, recv)
    try:
        async with aiohttp.ClientSession() as s:
            await post_events(s, app.http_port or 0, key_events(1))
        await recv.wait_for(lambda r: len(r.requests) >= 1, 10)
        recv.status = 200
        await recv.wait_for(lambda r: len(r.ok()) >= 1, 10)
    finally:
        await app.stop()
        await recv.stop()
    first, second = recv.requests[0], recv.requests[1]
    assert len(recv.requests) == 2
    # Not before Retry-After (3 s), and not the 15 s or more the backoff alone would wait.
    assert 3.0 <= second.at - first.at <= 3.0 + BOUND
