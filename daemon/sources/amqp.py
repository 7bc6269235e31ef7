"""RabbitMQ (AMQP 0-9-1) source: manual acks, prefetch, quorum queues with a delivery limit.

Delivery tags belong to the channel that delivered them. After a lost
connection the source opens a new one and never acks a message of the old
one (its tag would name a different message, or none, on the new channel):
RabbitMQ requeues those messages itself, marks them redelivered, and the dedupe
memory keeps their events from being appended twice.

A quorum queue's ``x-delivery-limit`` drops (or dead-letters) a message after
that many redeliveries. Poison messages are quarantined and acked on their
first delivery, so only a daemon that keeps crashing on a message reaches the
limit; set ``dead_letter_exchange`` so such a message is kept, not dropped.

aio-pika opens the connection and channel and declares the queue; deliveries are
consumed from its underlying aiormq channel. aio-pika would wrap each delivery in
an IncomingMessage and run the callback in a task of its own, on top of aiormq's
task per delivery: that was a third of what the event loop spent per message.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from typing import Any, Literal, NamedTuple

import aio_pika
from aiormq import spec
from aiormq.abc import AbstractChannel, DeliveredMessage
from pydantic import Field

from daemon import telemetry
from daemon.intake import Intake
from daemon.sources.base import Message, QueueSource, QueueSourceConfig
from daemon.units import Duration


class AmqpSourceConfig(QueueSourceConfig):
    """``ingest.sources[]`` entry with ``type: amqp``."""

    type: Literal["amqp"]
    """A RabbitMQ (AMQP 0-9-1) queue with manual acks."""
    url: str = "amqp://guest:guest@127.0.0.1:5672/"
    """AMQP URL with credentials and virtual host."""
    queue: str = Field(min_length=1)
    """The queue to consume."""
    declare: bool = True
    """Declare the queue (durable) when missing; false: it must exist."""
    queue_type: Literal["quorum", "classic"] = "quorum"
    """Type of a declared queue: quorum (replicated) or classic."""
    delivery_limit: int | None = Field(default=20, ge=1)
    """Quorum queues: redeliveries before RabbitMQ drops or dead-letters a message (only a daemon crashing
    on it repeatedly gets there).
    """
    dead_letter_exchange: str | None = None
    """Exchange that receives messages over the delivery limit, so they are kept rather than dropped."""
    prefetch: int = Field(default=1000, ge=1)
    """Unacked messages RabbitMQ sends ahead (basic.qos)."""
    batch: int = Field(default=500, ge=1)
    """Messages made durable per group commit at most."""
    poll_timeout: Duration = 1.0
    """How long to wait for a delivery before checking the connection."""
    heartbeat: int = Field(default=30, ge=0)
    """AMQP heartbeat in seconds (0: off): a dead connection is noticed within about twice this."""


class _Tag(NamedTuple):
    """What acks a delivery: its delivery tag, on the channel that delivered it."""

    channel: AbstractChannel
    tag: int


class AmqpSource(QueueSource):
    type = "amqp"

    def __init__(self, config: AmqpSourceConfig, intake: Intake, writer_id: str) -> None:
        super().__init__(config, intake, writer_id)
        self.cfg = config
        self._conn: Any = None
        self._channel: Any = None
        self._queue: Any = None
        self._inbox: asyncio.Queue[Message] = asyncio.Queue()
        self._lost: asyncio.Future[BaseException] | None = None

    def _arguments(self) -> dict[str, Any]:
        c = self.cfg
        args: dict[str, Any] = {}
        if c.queue_type == "quorum":
            args["x-queue-type"] = "quorum"
            if c.delivery_limit is not None:
                args["x-delivery-limit"] = c.delivery_limit
        if c.dead_letter_exchange is not None:
            args["x-dead-letter-exchange"] = c.dead_letter_exchange
        return args

    async def connect(self) -> None:
        c = self.cfg
        loop = asyncio.get_running_loop()
        self._lost = loop.create_future()
        # A fresh inbox per connection: nothing from the old channel is ever handed out again.
        self._inbox = asyncio.Queue()
        self._conn = await aio_pika.connect(
            c.url,
            timeout=10,
            client_properties={"connection_name": f"trailkeeper {self.writer_id} {self.name}"},
            heartbeat=c.heartbeat,
        )
        self._conn.close_callbacks.add(self._on_close)
        self._channel = await self._conn.channel()
        self._channel.close_callbacks.add(self._on_close)
        await self._channel.set_qos(prefetch_count=c.prefetch)
        if c.declare:
            self._queue = await self._channel.declare_queue(
                c.queue, durable=True, arguments=self._arguments()
            )
        else:
            self._queue = await self._channel.declare_queue(c.queue, passive=True)
        generation = self.generation

        async def deliver(message: DeliveredMessage) -> None:
            self._on_message(message, generation)

        underlay = await self._channel.get_underlay_channel()
        await underlay.basic_consume(queue=self._queue.name, consumer_callback=deliver, no_ack=False)

    def _on_close(self, _sender: Any, exc: BaseException | None = None) -> None:
        lost = self._lost
        if lost is not None and not lost.done():
            lost.set_result(exc or ConnectionError("AMQP channel closed"))

    def _on_message(self, message: DeliveredMessage, generation: int) -> None:
        if generation != self.generation:
            return  # a late delivery of an old channel: RabbitMQ requeues it
        body = message.body
        ref = (
            message.header.properties.message_id
            or f"{self.cfg.queue}/sha256:{hashlib.sha256(body).hexdigest()[:32]}"
        )
        delivery = message.delivery
        assert isinstance(delivery, spec.Basic.Deliver) and delivery.delivery_tag is not None
        handle = _Tag(message.channel, delivery.delivery_tag)
        self._inbox.put_nowait(Message(body, ref, bool(delivery.redelivered), handle, generation))

    async def disconnect(self) -> None:
        conn, self._conn, self._channel, self._queue = self._conn, None, None, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()

    def _raise_if_lost(self) -> None:
        if self._lost is not None and self._lost.done():
            exc = self._lost.result()
            raise ConnectionError(f"AMQP connection lost: {exc}")

    async def fetch(self, worker: int) -> list[Message]:
        self._raise_if_lost()
        assert self._lost is not None
        getter = asyncio.ensure_future(self._inbox.get())
        waiters: set[asyncio.Future[Any]] = {getter, self._lost}
        done, _ = await asyncio.wait(
            waiters, timeout=self.cfg.poll_timeout, return_when=asyncio.FIRST_COMPLETED
        )
        if getter not in done:
            getter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await getter
            self._raise_if_lost()
            return []
        out = [getter.result()]
        while len(out) < self.cfg.batch and not self._inbox.empty():
            out.append(self._inbox.get_nowait())
        return out

    async def ack(self, messages: list[Message], whole_batch: bool) -> None:
        current = [m for m in messages if m.generation == self.generation]
        stale = len(messages) - len(current)
        if stale:
            telemetry.SOURCE_ACK_FAILURES.labels(source=self.name).inc(stale)
            self.log.info("amqp.stale_acks_skipped", messages=stale)
        if not current:
            return
        self._raise_if_lost()
        if whole_batch and not stale:
            # One frame acks the batch: every earlier tag of this channel was acked before
            # (batches complete in delivery order), so "multiple" covers exactly this batch.
            last: _Tag = current[-1].handle
            await last.channel.basic_ack(last.tag, multiple=True)
        else:
            for m in current:
                await m.handle.channel.basic_ack(m.handle.tag)

    async def consumer_lag(self) -> int | None:
        if self._channel is None:
            return None
        queue = await self._channel.declare_queue(self.cfg.queue, passive=True)
        result = queue.declaration_result
        return int(result.message_count) if result is not None else None
