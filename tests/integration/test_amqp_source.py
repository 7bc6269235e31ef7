"""The RabbitMQ source's own consumption path, against this machine's RabbitMQ.

The source consumes from aio-pika's underlying aiormq channel, so what
aio-pika's messages would carry is read from the raw delivery here: the
message id names a quarantined message (or, without one, a digest of its body),
a redelivery is counted as one, and acks go to the channel that delivered.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aio_pika
import orjson
import pytest
from aiormq import spec
from aiormq.abc import ContentHeader, DeliveredMessage

from daemon import telemetry
from daemon.events import KIND_EVENT, KIND_QUARANTINE, decode_entry
from daemon.intake import Intake
from daemon.journal import Journal, JournalReader
from daemon.sources.amqp import AmqpSource, AmqpSourceConfig
from tests.contract.source_brokers import AmqpBroker, live

pytestmark = pytest.mark.integration


@pytest.fixture
async def broker() -> AsyncIterator[AmqpBroker]:
    async with live(AmqpBroker()) as b:
        yield b


async def wait_for(cond: Callable[[], Any], timeout: float, what: str) -> None:
    try:
        async with asyncio.timeout(timeout):
            while not cond():
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"not within {timeout}s: {what}") from None


def event(i: int) -> bytes:
    return orjson.dumps(
        {"eventSource": "iam.amazonaws.com", "eventName": "CreateUser", "eventID": f"a-{i:06d}"}
    )


async def publish(broker: AmqpBroker, body: bytes, message_id: str | None = None) -> None:
    await broker.channel.default_exchange.publish(
        aio_pika.Message(body, message_id=message_id, delivery_mode=2), routing_key=broker.queue
    )


async def test_refs_redeliveries_and_acks_come_from_the_raw_delivery(
    broker: AmqpBroker, tmp_path: Path
) -> None:
    await publish(broker, b'{"eventName": ', message_id="mid-1")
    # Five events delivered to another consumer that dies without acking: RabbitMQ requeues
    # them, marked redelivered.
    for i in range(5):
        await publish(broker, event(i), message_id=f"ev-{i}")
    other = await broker.conn.channel()
    await other.set_qos(prefetch_count=100)
    queue = await other.declare_queue(broker.queue, passive=True)
    seen: list[Any] = []

    async def hold(message: Any) -> None:
        seen.append(message)

    tag = await queue.consume(hold, no_ack=False)
    await wait_for(lambda: len(seen) == 6, 10, "the other consumer received everything")
    await queue.cancel(tag)
    await other.close()
    for i in range(5, 10):
        await publish(broker, event(i), message_id=f"ev-{i}")

    journal = Journal(tmp_path / "j", max_bytes=64 * 1024**2, fsync=False)
    await journal.open()
    cfg = AmqpSourceConfig.model_validate(broker.source_config())
    source = AmqpSource(cfg, Intake(journal), "w1")
    redelivered = telemetry.SOURCE_MESSAGES_REDELIVERED.labels(source=source.name)
    before = redelivered._value.get()
    await source.start()
    try:
        await wait_for(lambda: journal.end_offset >= 11, 20, "every message journaled")
        await asyncio.sleep(0.5)
        ready = await broker.channel.declare_queue(broker.queue, passive=True)
        assert ready.declaration_result.message_count == 0
    finally:
        await source.stop()
    # Nothing is left unacked: reopened, the queue hands nothing out.
    check = await broker.conn.channel()
    q = await check.declare_queue(broker.queue, passive=True)
    assert await q.get(fail=False, timeout=2) is None, "every delivery was acked on its channel"
    await check.close()

    reader = JournalReader(journal, journal.start_offset)
    entries = [decode_entry(o, p) for o, p in await reader.read(1000, timeout=0)]
    reader.close()
    await journal.close()
    assert Counter(e.id for e in entries if e.kind == KIND_EVENT) == Counter(f"a-{i:06d}" for i in range(10))
    refs = [orjson.loads(e.record)["ref"] for e in entries if e.kind == KIND_QUARANTINE]
    assert refs == ["mid-1"], "the message id names the quarantined message"
    assert redelivered._value.get() - before == 6, "the six requeued deliveries counted as redelivered"


async def test_a_delivery_without_message_id_is_named_by_its_bodys_digest(tmp_path: Path) -> None:
    # aiormq gives every message it publishes an id, so other publishers' messages are built
    # here: a raw delivery as aiormq hands it over, without one.
    journal = Journal(tmp_path / "j", max_bytes=1024**2, fsync=False)
    source = AmqpSource(
        AmqpSourceConfig.model_validate({"type": "amqp", "queue": "audit"}), Intake(journal), "w1"
    )
    channel: Any = object()
    body = b"[1, "
    delivery = DeliveredMessage(
        delivery=spec.Basic.Deliver(consumer_tag="c", delivery_tag=7, redelivered=True, routing_key="audit"),
        header=ContentHeader(properties=spec.Basic.Properties()),
        body=body,
        channel=channel,
    )
    source._on_message(delivery, source.generation)
    message = source._inbox.get_nowait()
    assert message.ref == f"audit/sha256:{hashlib.sha256(body).hexdigest()[:32]}"
    assert message.redelivered is True
    assert (message.handle.channel, message.handle.tag) == (channel, 7)
    source._on_message(delivery, source.generation - 1)  # a late delivery of an old channel
    assert source._inbox.empty(), "an old channel's delivery is never handed out"
