"""Must show 3, 4 and 5: outages lose nothing and keep webhook ids, kill -9 loses nothing,
a dead endpoint ends in the dead-letter store without slowing a healthy one, replay
delivers, and a storm of 10,000 deletes becomes a handful of summaries."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from daemon.app import App
from daemon.config import parse_config
from daemon.notify.outbox import list_dead_sync, outbox_path
from tests.conftest import base_config_text
from tests.notify_support import (
    Receiver,
    background_events,
    event_ids_of,
    key_events,
    notify_yaml,
    post_events,
)

pytestmark = pytest.mark.integration

# The issue asks for a 60 s outage; the default suite uses 10 s to stay fast.
# TK_NOTIFY_OUTAGE_SECONDS=60 runs the full size.
OUTAGE = float(os.environ.get("TK_NOTIFY_OUTAGE_SECONDS", "10"))


def _hook(name: str, r: Receiver, path: str, extra: str = "") -> str:
    return f"      - {{name: {name}, protocol: webhook, url: '{r.url(path)}'{extra}}}\n"


def _p99(values: list[float]) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(len(s) * 0.99))]


async def test_outage_under_load_loses_nothing_and_keeps_ids(tmp_path: Path) -> None:
    recv = await Receiver(status=503).start()
    topics = "    ops:\n      subscriptions:\n" + _hook("hook", recv, "/hook")
    routes = "    - {topic: ops, categories: [high_risk]}\n"
    delivery = "{max_age: 1h, initial_backoff: 200ms, max_backoff: 2s}"
    app = App(parse_config(base_config_text(tmp_path) + notify_yaml(topics, routes, delivery)))
    await app.start()
    sent: list[str] = []
    try:
        async with aiohttp.ClientSession() as s:
            port = app.http_port or 0
            start = time.monotonic()
            downed = False
            # Key events at ~20/s among ~500 background events/s for the whole outage.
            while time.monotonic() - start < OUTAGE:
                batch = key_events(2)
                sent += [r["eventID"] for r in batch]
                await post_events(s, port, batch + background_events(50))
                if not downed and time.monotonic() - start > OUTAGE / 2:
                    await recv.down()  # second half: connection refused
                    downed = True
                await asyncio.sleep(0.1)
            failed_before = [r for r in recv.requests if r.status != 200]
            recv.status = 200
            await recv.up()
            want = set(sent)
            await recv.wait_for(lambda r: want <= set(event_ids_of(r.ok())), 60 + OUTAGE)
    finally:
        await app.stop()
        await recv.stop()
    delivered = recv.ok()
    assert set(event_ids_of(delivered)) == set(sent)
    assert failed_before, "the receiver must have refused attempts during the outage"
    by_id = {r.headers["webhook-id"]: r for r in delivered}
    for attempt in failed_before:
        wid = attempt.headers["webhook-id"]
        assert wid in by_id, "a retried message changed its webhook-id"
        assert by_id[wid].body == attempt.body
    assert len({r.headers["webhook-id"] for r in delivered}) == len(set(sent))


async def test_kill9_mid_delivery_loses_nothing(tmp_path: Path, daemon_process: Any) -> None:
    recv = await Receiver(delay=0.02).start()
    topics = "    ops:\n      subscriptions:\n" + _hook("hook", recv, "/hook")
    routes = "    - {topic: ops, categories: [high_risk]}\n"
    delivery = "{max_age: 1h, initial_backoff: 100ms, max_backoff: 1s}"
    proc = daemon_process(notify=notify_yaml(topics, routes, delivery))
    proc.start()
    events = key_events(300)
    try:
        async with aiohttp.ClientSession() as s:
            for i in range(0, len(events), 50):
                await post_events(s, proc.http_port, events[i : i + 50] + background_events(100))
        await recv.wait_for(lambda r: len(r.ok()) >= 60, 60)
        proc.kill9()
        got_before = len(recv.ok())
        assert got_before < len(events), "the kill must land mid-delivery"
        proc.start()
        want = {e["eventID"] for e in events}
        await recv.wait_for(lambda r: want <= set(event_ids_of(r.ok())), 90)
    finally:
        proc.terminate()
        await recv.stop()
    ids = event_ids_of(recv.ok())
    assert set(ids) == {e["eventID"] for e in events}
    # At-least-once: a message in flight at the kill may come twice, never more than a few.
    assert len(ids) - len(set(ids)) <= 5


async def _latencies(tmp_path: Path, with_dead: bool, n: int) -> tuple[list[float], Receiver, Receiver, App]:
    good = await Receiver().start()
    dead = await Receiver(status=500).start()
    subs = _hook("good", good, "/good")
    if with_dead:
        subs += _hook(
            "dead", dead, "/dead", ", delivery: {max_age: 2s, initial_backoff: 50ms, max_backoff: 300ms}"
        )
    topics = "    ops:\n      subscriptions:\n" + subs
    routes = "    - {topic: ops, categories: [high_risk]}\n"
    app = App(parse_config(base_config_text(tmp_path) + notify_yaml(topics, routes)))
    await app.start()
    sent_at: dict[str, float] = {}
    async with aiohttp.ClientSession() as s:
        for rec in key_events(n):
            sent_at[rec["eventID"]] = time.time()
            await post_events(s, app.http_port or 0, [rec])
            await asyncio.sleep(0.01)
    await good.wait_for(lambda r: len(r.ok()) >= n, 30)
    lat = [r.at - sent_at[r.json()["event"]["id"]] for r in good.ok()]
    return lat, good, dead, app


async def test_dead_endpoint_parks_without_slowing_the_healthy_one(tmp_path: Path) -> None:
    # 300 samples: the p99 is then the third-highest latency, not the highest, so one
    # scheduling hiccup of a shared 2-core machine does not decide the comparison.
    n = 300
    base_lat, g0, d0, app0 = await _latencies(tmp_path / "alone", False, n)
    await app0.stop()
    await g0.stop()
    await d0.stop()

    lat, good, dead, app = await _latencies(tmp_path / "beside", True, n)
    try:
        state = tmp_path / "beside" / "journal" / "state"
        box = outbox_path(state, "ops", "dead")
        for _ in range(200):
            if len(await asyncio.to_thread(list_dead_sync, box)) == n:
                break
            await asyncio.sleep(0.1)
        parked = await asyncio.to_thread(list_dead_sync, box)
        assert len(parked) == n
        assert all(m.last_error and m.last_error.startswith("max_age") for m in parked)
        assert len(dead.requests) >= n  # each was tried before it was parked

        # The endpoint is fixed; replay from the CLI while the daemon runs.
        dead.status = 200
        out = await asyncio.to_thread(
            subprocess.run,
            [
                sys.executable,
                "-m",
                "daemon",
                "notify",
                "dlq",
                "replay",
                "--state-dir",
                str(state),
                "--subscription",
                "ops/dead",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        assert f'"replayed":{n}' in out.stdout
        await dead.wait_for(lambda r: len(r.ok()) >= n, 30)
        await asyncio.sleep(1.5)
        assert await asyncio.to_thread(list_dead_sync, box) == []
    finally:
        await app.stop()
        await good.stop()
        await dead.stop()
    ids = event_ids_of(dead.ok())
    assert len(ids) == len(set(ids)) == n, "replay must deliver each parked message once"
    # Latencies of a few ms are noise-bound on a shared 2-core machine running another test
    # file in parallel (stalls of 200 ms were seen beside the flood and schemathesis tests):
    # compare against a 150 ms floor. A dead subscription that held up the healthy one would
    # add its retries until max_age (2 s per parked message), an order of magnitude above.
    assert _p99(lat) <= 2 * max(_p99(base_lat), 0.15), (_p99(lat), _p99(base_lat))


async def test_delete_storm_becomes_a_handful_of_summaries(tmp_path: Path) -> None:
    recv = await Receiver().start()
    topics = "    storage:\n      subscriptions:\n" + _hook("hook", recv, "/hook")
    routes = (
        "    - {topic: storage, rules: [aws.s3.bucket-created-or-deleted], group_by: [user_name, operation],"
        " group_wait: 1s, group_interval: 3s, repeat_interval: 1h}\n"
    )
    app = App(parse_config(base_config_text(tmp_path) + notify_yaml(topics, routes)))
    await app.start()
    events = key_events(10_000, operation="DeleteBucket", user="eve")
    started = time.monotonic()
    try:
        async with aiohttp.ClientSession() as s:
            for i in range(0, len(events), 1000):
                await post_events(s, app.http_port or 0, events[i : i + 1000])
        assert time.monotonic() - started < 60
        await recv.wait_for(lambda r: sum(q.json()["group"]["count"] for q in r.ok()) >= 10_000, 60)
        await asyncio.sleep(1)
    finally:
        await app.stop()
        await recv.stop()
    msgs = [r.json() for r in recv.ok()]
    assert 1 <= len(msgs) <= 6, len(msgs)
    assert sum(m["group"]["count"] for m in msgs) == 10_000
    first = msgs[0]
    assert first["type"] == "GroupNotification"
    assert first["group"]["key"] == {"user_name": "eve", "operation": "DeleteBucket"}
    assert first["group"]["operations"] == {"DeleteBucket": first["group"]["count"]}
    assert first["group"]["principals"] == {"eve": first["group"]["count"]}
    assert len(first["group"]["event_ids"]) == 10
    assert first["group"]["first_time"] <= first["group"]["last_time"]
    assert "DeleteBucket x" in first["text"] and "eve x" in first["text"]
