"""Notification metrics tell subscriptions apart: with a dead and a healthy webhook in one
topic, the dead one's queue depth and dead-letter count grow while the healthy one's stay 0;
the dead-letter gauge holds across a restart and follows a replay and a purge from the CLI."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from daemon.app import App
from daemon.config import parse_config
from tests.conftest import ROOT, base_config_text
from tests.notify_support import Receiver, event_ids_of, key_events, notify_yaml, post_events

pytestmark = pytest.mark.integration


async def _gauge(app: App, name: str) -> dict[str, float]:
    """Scrape the daemon's /metrics: subscription -> value of ``name`` in topic ops."""
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{app.metrics_port}/metrics") as r:
        text = await r.text()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels.get("topic") == "ops":
                out[sample.labels["subscription"]] = sample.value
    return out


async def _until(
    app: App, name: str, pred: Callable[[dict[str, float]], bool], timeout: float = 15
) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    while True:
        seen = await _gauge(app, name)
        if pred(seen) or time.monotonic() > deadline:
            return seen
        await asyncio.sleep(0.1)


async def _dead_letters(app: App, want: float) -> float:
    """The dead subscription's dead-letter gauge once it reads ``want`` (or at the timeout)."""
    seen = await _until(app, "trailkeeper_notify_dead_letters", lambda d: d.get("dead") == want)
    return seen["dead"]


def _config(tmp: Path, good: Receiver, dead: Receiver, dead_delivery: str) -> str:
    topics = (
        "    ops:\n      subscriptions:\n"
        f"      - {{name: good, protocol: webhook, url: '{good.url('/good')}'}}\n"
        f"      - {{name: dead, protocol: webhook, url: '{dead.url('/dead')}', delivery: {dead_delivery}}}\n"
    )
    routes = "    - {topic: ops, categories: [high_risk]}\n"
    return base_config_text(tmp) + notify_yaml(topics, routes)


def _dlq(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "daemon",
            "notify",
            "dlq",
            *args,
            "--state-dir",
            str(state),
            "--subscription",
            "ops/dead",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


async def test_queue_depth_of_a_dead_subscription_grows_beside_a_healthy_one(tmp_path: Path) -> None:
    good = await Receiver().start()
    dead = await Receiver(status=503).start()
    app = App(
        parse_config(_config(tmp_path, good, dead, "{max_age: 1h, initial_backoff: 1s, max_backoff: 5s}"))
    )
    await app.start()
    try:
        async with aiohttp.ClientSession() as s:
            await post_events(s, app.http_port or 0, key_events(20))
        await good.wait_for(lambda r: len(r.ok()) >= 20, 15)
        depth = await _until(app, "trailkeeper_notify_queue_depth", lambda d: d == {"good": 0, "dead": 20})
        assert depth == {"good": 0, "dead": 20}
        assert dead.requests, "the dead subscription must have been tried"
        dead_letters = await _gauge(app, "trailkeeper_notify_dead_letters")
        assert dead_letters == {"good": 0, "dead": 0}
    finally:
        await app.stop()
        await good.stop()
        await dead.stop()


async def test_dead_letter_gauge_holds_across_restart_replay_and_purge(tmp_path: Path) -> None:
    good = await Receiver().start()
    dead = await Receiver(status=503).start()
    text = _config(tmp_path, good, dead, "{max_age: 1s, initial_backoff: 100ms, max_backoff: 300ms}")
    state = tmp_path / "journal" / "state"
    app = App(parse_config(text))
    await app.start()
    try:
        async with aiohttp.ClientSession() as s:
            await post_events(s, app.http_port or 0, key_events(5))
        parked = await _until(app, "trailkeeper_notify_dead_letters", lambda d: d.get("dead") == 5)
        assert parked == {"good": 0, "dead": 5}
        await app.stop()

        # A restart reads the dead-letter store: the gauge does not start again from 0.
        app = App(parse_config(text))
        await app.start()
        assert await _gauge(app, "trailkeeper_notify_dead_letters") == {"good": 0, "dead": 5}

        # Purge refuses without --yes and deletes nothing.
        refused = await asyncio.to_thread(_dlq, state, "purge")
        assert refused.returncode == 2 and "5 message(s)" in refused.stderr and "--yes" in refused.stderr
        await asyncio.sleep(1.5)
        assert (await _gauge(app, "trailkeeper_notify_dead_letters"))["dead"] == 5
        purged = await asyncio.to_thread(_dlq, state, "purge", "--yes")
        assert purged.returncode == 0 and '"purged":5' in purged.stdout, purged
        assert await _dead_letters(app, 0) == 0

        # New dead letters, then a replay once the endpoint works: delivered, and the gauge is 0.
        events = key_events(3)
        async with aiohttp.ClientSession() as s:
            await post_events(s, app.http_port or 0, events)
        assert await _dead_letters(app, 3) == 3
        dead.status = 200
        replayed = await asyncio.to_thread(_dlq, state, "replay")
        assert replayed.returncode == 0 and '"replayed":3' in replayed.stdout, replayed
        await dead.wait_for(lambda r: len(r.ok()) >= 3, 15)
        assert set(event_ids_of(dead.ok())) == {e["eventID"] for e in events}
        after = await _until(app, "trailkeeper_notify_dead_letters", lambda d: d.get("dead") == 0)
        assert after == {"good": 0, "dead": 0}
        assert (await _gauge(app, "trailkeeper_notify_queue_depth")) == {"good": 0, "dead": 0}
    finally:
        await app.stop()
        await good.stop()
        await dead.stop()
