"""The NATS source's pull requests against this machine's NATS JetStream.

The source speaks JetStream's pull API itself: one request open at a time,
ended by a full batch or a status. These tests hold it to what a consumer
expects: a lone message is not held back until a batch fills or a request
expires, an idle stream is polled at the expiry's pace rather than in a tight
loop, a consumer at its ack-pending limit keeps flowing as acks free it, a
passing refusal (another client holding the consumer's waiting slots) is waited
out, and a lasting refusal becomes the source's health error (what /readyz
shows) in the server's own words.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from daemon.events import KIND_EVENT, decode_entry
from daemon.intake import Intake
from daemon.journal import Journal, JournalReader
from daemon.sources.nats import NatsSource, NatsSourceConfig
from tests.contract.source_brokers import NatsBroker, live

pytestmark = pytest.mark.integration


@pytest.fixture
async def broker() -> AsyncIterator[NatsBroker]:
    async with live(NatsBroker()) as b:
        yield b


@pytest.fixture
async def journal(tmp_path: Path) -> AsyncIterator[Journal]:
    j = Journal(tmp_path / "j", max_bytes=256 * 1024**2, fsync=False)
    await j.open()
    try:
        yield j
    finally:
        await j.close()


class CountingSource(NatsSource):
    """The real source, counting the pull requests it sends."""

    pulls = 0

    async def _pull(self) -> None:
        self.pulls += 1
        await super()._pull()


def event(i: int) -> bytes:
    return orjson.dumps(
        {"eventSource": "iam.amazonaws.com", "eventName": "CreateUser", "eventID": f"n-{i:06d}"}
    )


def source_for(broker: NatsBroker, journal: Journal, **overrides: Any) -> CountingSource:
    cfg = NatsSourceConfig.model_validate(broker.source_config(**overrides))
    return CountingSource(cfg, Intake(journal), "w1")


async def event_ids(journal: Journal) -> Counter[str]:
    reader = JournalReader(journal, journal.start_offset)
    try:
        entries = [decode_entry(o, p) for o, p in await reader.read(1_000_000, timeout=0)]
    finally:
        reader.close()
    return Counter(e.id for e in entries if e.kind == KIND_EVENT)


async def wait_for(cond: Callable[[], Any], timeout: float, what: str) -> float:
    start = time.monotonic()
    try:
        async with asyncio.timeout(timeout):
            while not await cond():
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"not within {timeout}s: {what}") from None
    return time.monotonic() - start


async def test_a_lone_message_is_not_held_until_the_batch_fills_or_the_request_expires(
    broker: NatsBroker, journal: Journal
) -> None:
    source = source_for(broker, journal, fetch_timeout="20s", batch=500)
    await source.start()
    try:
        await wait_for(lambda: _healthy(source), 10, "source connected")
        for i in range(3):
            await asyncio.sleep(0.2)  # the open request lingers, waiting for messages
            await broker.publish([event(i)])
            took = await wait_for(lambda i=i: _journaled(journal, i + 1), 5, f"message {i} journaled")
            assert took < 5, took
        await wait_for(lambda: _outstanding_zero(broker), 10, "every message acked")
    finally:
        await source.stop()
    assert await event_ids(journal) == Counter(f"n-{i:06d}" for i in range(3))


async def test_an_idle_stream_is_polled_at_the_expiry_pace(broker: NatsBroker, journal: Journal) -> None:
    source = source_for(broker, journal, fetch_timeout="500ms")
    await source.start()
    try:
        pulls = await _pulls_in_3s(source)
    finally:
        await source.stop()
    # One request per expiry (0.5 s): about 6 in 3 s; a loop that re-polls at once makes thousands.
    assert 3 <= pulls <= 10, pulls
    assert source.healthy is False and source.last_error == "stopped"


class AnsweredAtOnce(CountingSource):
    """A server that answers every pull at once that it has nothing (a no_wait request)."""

    async def _pull(self) -> None:
        await super()._pull()
        c = self.cfg
        await self._nc.publish(
            f"$JS.API.CONSUMER.MSG.NEXT.{c.stream}.{c.consumer}",
            orjson.dumps({"batch": c.batch, "no_wait": True}),
            reply=self._inbox,
        )


async def test_requests_answered_at_once_with_nothing_do_not_spin(
    broker: NatsBroker, journal: Journal
) -> None:
    cfg = NatsSourceConfig.model_validate(broker.source_config(fetch_timeout="500ms"))
    source = AnsweredAtOnce(cfg, Intake(journal), "w1")
    await source.start()
    try:
        pulls = await _pulls_in_3s(source)
        await broker.publish([event(i) for i in range(5)])
        await wait_for(lambda: _outstanding_zero(broker), 10, "messages still flow")
    finally:
        await source.stop()
    assert 3 <= pulls <= 10, pulls
    assert await event_ids(journal) == Counter(f"n-{i:06d}" for i in range(5))


async def test_a_deleted_consumer_is_recreated_and_nothing_is_appended_twice(
    broker: NatsBroker, journal: Journal
) -> None:
    await broker.publish([event(i) for i in range(100)])
    source = source_for(broker, journal, reconnect_initial="100ms", reconnect_max="200ms")
    await source.start()
    try:
        await wait_for(lambda: _outstanding_zero(broker), 10, "the first 100 acked")
        await broker.js.delete_consumer(broker.stream, broker.consumer)
        await wait_for(lambda: _generation(source, 2), 15, "the session ended and reconnected")
        # The new consumer starts from the stream's beginning: the first 100 come again and
        # the dedupe memory drops them.
        await broker.publish([event(i) for i in range(100, 200)])
        await wait_for(lambda: _outstanding_zero(broker), 15, "everything acked on the new consumer")
    finally:
        await source.stop()
    assert await event_ids(journal) == Counter(f"n-{i:06d}" for i in range(200))


async def _generation(source: NatsSource, n: int) -> bool:
    return source.generation >= n and source.healthy


async def test_a_consumer_at_its_ack_pending_limit_keeps_flowing_as_acks_free_it(
    broker: NatsBroker, journal: Journal
) -> None:
    total = 2000
    await broker.publish([event(i) for i in range(total)])
    source = source_for(broker, journal, max_ack_pending=30, batch=25, fetch_timeout="2s")
    await source.start()
    try:
        await wait_for(lambda: _outstanding_zero(broker), 60, "every message acked")
    finally:
        await source.stop()
    assert await event_ids(journal) == Counter(f"n-{i:06d}" for i in range(total))


async def test_a_refused_pull_request_is_reported_with_the_servers_words(
    broker: NatsBroker, journal: Journal
) -> None:
    # The consumer was created by someone else with a smaller request limit than the source's batch.
    await _create_consumer(broker, max_batch=10)
    await broker.publish([event(i) for i in range(50)])
    source = source_for(broker, journal, batch=50, reconnect_initial="100ms", reconnect_max="200ms")
    await source.start()
    try:
        await wait_for(
            lambda: _error_says(source, "MaxRequestBatch"), 10, "the refusal reported as the source's error"
        )
        assert source.healthy is False
        assert "409" in str(source.last_error) and broker.consumer in str(source.last_error)
    finally:
        await source.stop()
    assert await event_ids(journal) == Counter(), "nothing was delivered to a refused request"


async def test_a_passing_refusal_is_waited_out_without_reconnecting(
    broker: NatsBroker, journal: Journal
) -> None:
    await _create_consumer(broker, max_waiting=1)
    # Another client holds the consumer's only waiting slot for 2 s (the stream is empty).
    nms = f"$JS.API.CONSUMER.MSG.NEXT.{broker.stream}.{broker.consumer}"
    other = broker.nc.new_inbox()
    statuses: list[str] = []

    async def on_other(msg: Any) -> None:
        statuses.append(str((msg.headers or {}).get("Status")))

    await broker.nc.subscribe(other, cb=on_other)
    await broker.nc.publish(nms, orjson.dumps({"batch": 1, "expires": 2_000_000_000}), reply=other)
    await broker.nc.flush()
    source = source_for(broker, journal, fetch_timeout="300ms")
    await source.start()
    try:
        await asyncio.sleep(1.0)
        assert source.healthy and source.generation == 1, source.last_error
        await wait_for(lambda: _said(statuses, "408"), 5, "the other client's request expired")
        await broker.publish([event(i) for i in range(10)])
        await wait_for(lambda: _outstanding_zero(broker), 10, "every message acked")
        assert source.healthy and source.generation == 1, "refused requests did not end the session"
    finally:
        await source.stop()
    assert await event_ids(journal) == Counter(f"n-{i:06d}" for i in range(10))


async def _create_consumer(broker: NatsBroker, **limits: int) -> None:
    """Create the test's consumer through the JetStream API itself (the client's config
    lacks some of the limits)."""
    config = {
        "durable_name": broker.consumer,
        "ack_policy": "explicit",
        "filter_subject": broker.subject,
        **limits,
    }
    reply = await broker.nc.request(
        f"$JS.API.CONSUMER.DURABLE.CREATE.{broker.stream}.{broker.consumer}",
        orjson.dumps({"stream_name": broker.stream, "config": config}),
        timeout=5,
    )
    created = orjson.loads(reply.data)
    assert all(created["config"][k] == v for k, v in limits.items()), created


async def _said(statuses: list[str], status: str) -> bool:
    return status in statuses


async def _pulls_in_3s(source: CountingSource) -> int:
    """Pull requests the connected source sends in 3 s."""
    await wait_for(lambda: _healthy(source), 10, "source connected")
    first = source.pulls
    await asyncio.sleep(3)
    return source.pulls - first


async def _healthy(source: NatsSource) -> bool:
    return source.healthy


async def _journaled(journal: Journal, n: int) -> bool:
    return journal.end_offset >= n


async def _outstanding_zero(broker: NatsBroker) -> bool:
    return await broker.outstanding() == 0


async def _error_says(source: NatsSource, text: str) -> bool:
    return text in str(source.last_error)
