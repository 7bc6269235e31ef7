"""Delivery worker: retries, Retry-After, permanent refusals, maximum age, rate limit."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from daemon.notify.base import DeliveryError
from daemon.notify.config import DeliveryConfig
from daemon.notify.outbox import Outbox, OutMessage, list_dead_sync
from daemon.notify.worker import SubscriptionWorker, TokenBucket


class ScriptedSender:
    """Fails with the scripted errors in order, then succeeds; records each attempt."""

    def __init__(self, errors: list[DeliveryError]) -> None:
        self.errors = list(errors)
        self.attempts: list[tuple[str, float]] = []

    async def send(self, msg: OutMessage) -> None:
        self.attempts.append((msg.id, time.monotonic()))
        if self.errors:
            raise self.errors.pop(0)

    async def close(self) -> None:
        return None


async def _run(tmp: Path, sender: ScriptedSender, delivery: DeliveryConfig, n: int = 1) -> Outbox:
    box = Outbox(tmp / "box.sqlite")
    await box.add(
        [(f"m{i}", int(time.time() * 1000), {"title": "t", "text": "x", "doc": {}}) for i in range(n)]
    )
    worker = SubscriptionWorker("t", "s", "webhook", box, sender, delivery)
    task = asyncio.create_task(worker.run())
    for _ in range(200):
        counts = await box.counts()
        if counts.get("pending", 0) == 0:
            break
        await asyncio.sleep(0.02)
    worker.stop()
    await task
    return box


async def test_retries_honour_retry_after_and_keep_the_id(tmp_path: Path) -> None:
    sender = ScriptedSender(
        [
            DeliveryError("http_5xx", "503", retryable=True),
            DeliveryError("throttled", "429", retryable=True, retry_after=0.6),
        ]
    )
    box = await _run(tmp_path, sender, DeliveryConfig(initial_backoff=0.01, max_backoff=0.05))
    assert [a[0] for a in sender.attempts] == ["m0", "m0", "m0"]
    assert sender.attempts[2][1] - sender.attempts[1][1] >= 0.6
    assert (await box.counts()) == {"sent": 1}


async def test_permanent_refusal_parks_at_once(tmp_path: Path) -> None:
    sender = ScriptedSender([DeliveryError("http_4xx", "404 not found", retryable=False)])
    box = await _run(tmp_path, sender, DeliveryConfig(initial_backoff=0.01))
    assert len(sender.attempts) == 1
    [dead] = list_dead_sync(box.path)
    assert dead.id == "m0" and dead.last_error is not None and dead.last_error.startswith("http_4xx")


async def test_max_age_parks_then_replay_delivers(tmp_path: Path) -> None:
    sender = ScriptedSender([DeliveryError("http_5xx", "500", retryable=True)] * 1000)
    box = await _run(tmp_path, sender, DeliveryConfig(max_age=0.3, initial_backoff=0.02, max_backoff=0.05))
    assert len(sender.attempts) >= 3
    [dead] = list_dead_sync(box.path)
    assert dead.last_error is not None and dead.last_error.startswith("max_age")
    assert await box.replay(None) == 1
    ok = ScriptedSender([])
    worker = SubscriptionWorker("t", "s", "webhook", box, ok, DeliveryConfig())
    task = asyncio.create_task(worker.run())
    for _ in range(100):
        if (await box.counts()).get("sent"):
            break
        await asyncio.sleep(0.02)
    worker.stop()
    await task
    assert [a[0] for a in ok.attempts] == ["m0"]


async def test_duplicate_ids_are_dropped_by_the_outbox(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "b.sqlite")
    row = ("same", 0, {"title": "t", "text": "x", "doc": {}})
    assert await box.add([row]) == 1
    assert await box.add([row]) == 0
    box.close()


def test_token_bucket_spaces_messages_after_the_burst() -> None:
    bucket = TokenBucket(rate=10, burst=2)
    assert bucket.delay() == 0 and bucket.delay() == 0
    assert 0.05 < bucket.delay() <= 0.1
