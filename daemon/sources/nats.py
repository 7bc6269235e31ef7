"""NATS JetStream source: a durable pull consumer with explicit acks.

Several daemons bound to the same durable consumer share its messages (each
message goes to one of them). A message is acked only once its content is
durable in the journal; while that takes long (journal full), an in-progress
signal every third of ``ack_wait`` keeps JetStream from redelivering it.
``max_ack_pending`` bounds how many messages all the consumer's clients hold
unacknowledged: JetStream stops delivering beyond it, which is the flow control.

Pulling speaks JetStream's pull API directly (``$JS.API.CONSUMER.MSG.NEXT`` with
a batch and an expiry, answered on an inbox subscription whose callback files
each message), rather than through the client's ``fetch``: that one waits for
each message of a batch in its own task with its own timeout, which cost the
event loop about three times what the messages themselves did. One pull request
is open at a time; it ends when its batch is delivered or with a status (408 at
its expiry, 409 when the server refuses it).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from typing import Any, Literal

import nats
import nats.errors
import nats.js.errors
import orjson
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, Header
from pydantic import Field, model_validator

from daemon.intake import Intake
from daemon.sources.base import Message, QueueSource, QueueSourceConfig
from daemon.units import Duration


class NatsSourceConfig(QueueSourceConfig):
    """``ingest.sources[]`` entry with ``type: nats``."""

    type: Literal["nats"]
    """A NATS JetStream durable pull consumer."""
    servers: list[str] = Field(default_factory=lambda: ["nats://127.0.0.1:4222"], min_length=1)
    """NATS server URLs."""
    user: str | None = None
    """User name, when the server requires one."""
    password: str | None = None
    """Password for user."""
    token: str | None = None
    """Authentication token, when the server requires one."""
    stream: str = Field(min_length=1)
    """The JetStream stream to consume."""
    create_stream: bool = False
    """Create the stream (with stream_subjects) when it does not exist."""
    stream_subjects: list[str] = Field(default_factory=list)
    """Subjects a stream created by create_stream captures."""
    consumer: str = Field(default="trailkeeper", min_length=1)
    """Durable consumer name; replicas using the same name share the messages."""
    filter_subject: str | None = None
    """Only messages on this subject (wildcards allowed); null: every subject of the stream."""
    create_consumer: bool = True
    """Create the durable consumer when it does not exist."""
    ack_wait: Duration = 30.0
    """JetStream redelivers a message not acked within this; held messages get an in-progress signal every
    third of it.
    """
    max_ack_pending: int = Field(default=10_000, ge=1)
    """Messages delivered and not yet acked, across every replica, before JetStream stops delivering (flow
    control).
    """
    max_deliver: int = -1
    """Deliveries before JetStream gives up on a message; -1: no limit (nothing dropped)."""
    batch: int = Field(default=500, ge=1)
    """Messages per fetch (at most max_ack_pending)."""
    fetch_timeout: Duration = 1.0
    """How long one fetch waits for messages."""
    connect_timeout: Duration = 5.0
    """How long to wait for a connection."""

    @model_validator(mode="after")
    def _check(self) -> NatsSourceConfig:
        if self.batch > self.max_ack_pending:
            raise ValueError(f"batch ({self.batch}) cannot exceed max_ack_pending ({self.max_ack_pending})")
        if self.create_stream and not self.stream_subjects:
            raise ValueError("create_stream needs stream_subjects (the subjects the new stream captures)")
        if self.ack_wait < 1:
            raise ValueError("ack_wait must be at least 1s")
        return self


# JetStream's API subject prefix (no domain or custom prefix is configured).
JS_API = "$JS.API"
# How long past a pull request's expiry its end (a 408 status) may take before the
# connection is taken for dead.
PULL_GRACE = 5.0
# Statuses that end a pull request for a reason that passes: another request is tried
# one fetch_timeout after it. Any other status but 404/408 (a deleted consumer, a request over the
# consumer's limits) ends the session with the server's description.
TRANSIENT_409 = ("409 Exceeded MaxWaiting", "409 Leadership Change", "409 Server Shutdown")


class NatsSource(QueueSource):
    type = "nats"
    fetch_ahead = True

    def __init__(self, config: NatsSourceConfig, intake: Intake, writer_id: str) -> None:
        super().__init__(config, intake, writer_id)
        self.cfg = config
        self.keepalive_interval = config.ack_wait / 3
        self._nc: Any = None
        self._js: Any = None
        self._sub: Any = None
        self._client_error: str | None = None
        # The pull in progress: messages delivered and not yet fetched, how many the open
        # request still owes, and why it ended when it ended with a status.
        self._inbox = ""
        self._next_subject = ""
        self._ready: collections.deque[Msg] = collections.deque()
        self._owed = 0
        self._delivered = 0  # by the last request
        self._pulled_at = 0.0
        self._refused: str | None = None
        self._arrived = asyncio.Event()

    async def connect(self) -> None:
        c = self.cfg
        options: dict[str, Any] = {
            "servers": c.servers,
            # Reconnection is ours (with backoff and health reporting), not the client's:
            # messages of a lost connection are then never acked on a new one.
            "allow_reconnect": False,
            # One connect is one attempt: the client would otherwise retry each unreachable server
            # itself (60 times, 2 s apart: two minutes with nothing but debug logs) before
            # failing, bypassing the source's backoff, reconnect counter and warnings. It
            # tries each server at most twice (its minimum), 0.1 s apart.
            "max_reconnect_attempts": 1,
            "reconnect_time_wait": 0.1,
            "connect_timeout": c.connect_timeout,
            "name": f"trailkeeper {self.writer_id} {self.name}",
            "error_cb": self._on_error,
            "closed_cb": self._on_closed,
        }
        if c.user is not None:
            options["user"] = c.user
            options["password"] = c.password
        if c.token is not None:
            options["token"] = c.token
        self._client_error = None
        try:
            self._nc = await nats.connect(**options)
        except nats.errors.NoServersError:
            # The client's own error names no server; the last refusal it reported does.
            raise ConnectionError(
                f"no NATS server reachable at {', '.join(c.servers)}: {self._client_error}"
            ) from None
        self._js = self._nc.jetstream()
        await self._ensure_stream()
        await self._ensure_consumer()
        self._forget_pull()
        self._next_subject = f"{JS_API}.CONSUMER.MSG.NEXT.{c.stream}.{c.consumer}"
        self._inbox = self._nc.new_inbox()
        self._sub = await self._nc.subscribe(self._inbox, cb=self._on_message)

    async def _on_error(self, exc: Exception) -> None:
        self._client_error = f"{type(exc).__name__}: {exc}"
        self.log.debug("nats.client_error", error=str(exc))

    async def _on_closed(self) -> None:
        # A fetch waiting on the pull wakes up and finds the connection closed.
        self._arrived.set()

    async def _on_message(self, msg: Msg) -> None:
        """The inbox's callback: file a stream message, or end the pull on a status. Never raises."""
        if msg.reply:
            # A stream message (its reply subject is where its ack goes).
            self._ready.append(msg)
            self._owed -= 1
            self._delivered += 1
        else:
            headers = msg.headers or {}
            status = headers.get(Header.STATUS)
            if status == "100":
                return  # an idle heartbeat: the request is still open
            if status not in ("404", "408"):
                # 404 and 408 (nothing more to deliver, or the request expired) end it quietly;
                # anything else ends it with a refusal the next fetch deals with.
                self._refused = f"{status} {headers.get(Header.DESCRIPTION, '') or ''}".strip()
            self._owed = 0
        self._arrived.set()

    def _forget_pull(self) -> None:
        """Drop the pull of a connection that is going or gone."""
        self._ready.clear()
        self._owed = 0
        self._pulled_at = 0.0
        self._refused = None

    async def _pull(self) -> None:
        """Ask for the next batch; it is delivered to the inbox as messages become available,
        until the batch is full or the request expires."""
        c = self.cfg
        self._owed = c.batch
        self._delivered = 0
        self._pulled_at = time.monotonic()
        request = {"batch": c.batch, "expires": int(c.fetch_timeout * 1e9)}
        await self._nc.publish(self._next_subject, orjson.dumps(request), reply=self._inbox)

    async def _ensure_stream(self) -> None:
        c = self.cfg
        try:
            await self._js.stream_info(c.stream)
        except nats.js.errors.NotFoundError:
            if not c.create_stream:
                raise RuntimeError(
                    f"NATS stream {c.stream!r} does not exist: create it, or set create_stream and "
                    "stream_subjects in this source's config"
                ) from None
            await self._js.add_stream(name=c.stream, subjects=c.stream_subjects)
            self.log.info("nats.stream_created", stream=c.stream, subjects=c.stream_subjects)

    async def _ensure_consumer(self) -> None:
        c = self.cfg
        try:
            info = await self._js.consumer_info(c.stream, c.consumer)
        except nats.js.errors.NotFoundError:
            if not c.create_consumer:
                raise RuntimeError(
                    f"NATS consumer {c.consumer!r} on stream {c.stream!r} does not exist and "
                    "create_consumer is false"
                ) from None
            await self._js.add_consumer(
                c.stream,
                ConsumerConfig(
                    durable_name=c.consumer,
                    ack_policy=AckPolicy.EXPLICIT,
                    deliver_policy=DeliverPolicy.ALL,
                    ack_wait=c.ack_wait,
                    max_ack_pending=c.max_ack_pending,
                    max_deliver=c.max_deliver,
                    filter_subject=c.filter_subject,
                ),
            )
            self.log.info("nats.consumer_created", stream=c.stream, consumer=c.consumer)
            return
        existing = info.config
        if existing.ack_policy not in (AckPolicy.EXPLICIT, "explicit"):
            raise RuntimeError(
                f"NATS consumer {c.consumer!r} does not use explicit acks: "
                "trailkeeper acks each message only once it is durable; recreate the consumer"
            )
        if (existing.filter_subject or None) != c.filter_subject:
            raise RuntimeError(
                f"NATS consumer {c.consumer!r} filters {existing.filter_subject!r}, "
                f"the config says {c.filter_subject!r}: use another consumer name or fix the config"
            )

    async def disconnect(self) -> None:
        # Messages delivered and not yet fetched are never acked: JetStream redelivers them.
        self._forget_pull()
        nc, self._nc, self._sub, self._js = self._nc, None, None, None
        if nc is not None:
            with contextlib.suppress(Exception):
                await nc.close()

    def _check_open(self) -> None:
        if self._nc is None or self._nc.is_closed or not self._nc.is_connected:
            raise ConnectionError("NATS connection closed")

    async def fetch(self, worker: int) -> list[Message]:
        self._check_open()
        c = self.cfg
        if not self._ready:
            if self._owed <= 0 and self._refused is None:
                # A request that ended early with nothing (a server answering at once
                # that it has nothing, or refusing it for a passing reason) does not make
                # the next one go out at once: at most one request per fetch_timeout while
                # nothing flows.
                if not self._delivered:
                    await asyncio.sleep(max(0.0, self._pulled_at + c.fetch_timeout - time.monotonic()))
                await self._pull()
            # Wait for the first messages, or the request's end; a server that lets an
            # expired request go unanswered is taken for gone.
            deadline = self._pulled_at + c.fetch_timeout + PULL_GRACE
            while not self._ready and self._owed > 0:
                self._arrived.clear()
                self._check_open()
                try:
                    await asyncio.wait_for(self._arrived.wait(), max(0.0, deadline - time.monotonic()))
                except TimeoutError:
                    raise ConnectionError(
                        f"NATS pull request on {c.stream}/{c.consumer} unanswered "
                        f"{c.fetch_timeout + PULL_GRACE:.0f}s after it was sent"
                    ) from None
            refused = self._refused
            if refused is not None and not self._ready:
                # Messages delivered before the refusal are handed out first; then it counts.
                self._refused = None
                if not refused.startswith(TRANSIENT_409):
                    raise RuntimeError(
                        f"NATS refused a pull request on consumer {c.consumer!r} of stream "
                        f"{c.stream!r}: {refused}"
                    )
                self.log.warning("nats.pull_refused", status=refused)
            if not self._ready:
                self._check_open()
                return []
        out: list[Message] = []
        ready = self._ready
        stream = c.stream
        generation = self.generation
        for _ in range(min(len(ready), c.batch)):
            msg = ready.popleft()
            meta = msg.metadata
            out.append(
                Message(
                    body=msg.data,
                    ref=f"{stream}/{meta.sequence.stream}",
                    redelivered=meta.num_delivered > 1,
                    handle=msg,
                    generation=generation,
                )
            )
        return out

    async def ack(self, messages: list[Message], whole_batch: bool) -> None:
        current = [m for m in messages if m.generation == self.generation]
        stale = len(messages) - len(current)
        if stale:
            # Their connection is gone: JetStream redelivers them after ack_wait, and
            # the dedupe memory keeps their events from being appended twice.
            self.log.info("nats.stale_acks_skipped", messages=stale)
        self._check_open()
        for m in current:
            await m.handle.ack()
        # Acks are plain publishes: one round trip confirms the server has them all.
        await self._nc.flush(timeout=10)

    async def keepalive(self, messages: list[Message]) -> None:
        for m in messages:
            if m.generation == self.generation:
                await m.handle.in_progress()

    async def consumer_lag(self) -> int | None:
        if self._js is None:
            return None
        info = await self._js.consumer_info(self.cfg.stream, self.cfg.consumer)
        return int(info.num_pending or 0)
