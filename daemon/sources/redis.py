"""Redis Streams source: a consumer group, XACK after durability, recovery of pending entries.

On every (re)connect the consumer first re-reads its own pending entries
(delivered to it before, never acknowledged: a crash or a lost connection),
then reads new ones. Periodically it takes over, with XAUTOCLAIM, entries
that other consumers of the group have held longer than ``claim_min_idle``
(a dead replica); while it holds entries it resets their idle time so a
live consumer's entries are not taken from it.

The consumer name must be stable across restarts for the pending entries to be
found again: it defaults to the daemon's writer id.

Reads ahead (while the previous batch is made durable) run in a decode worker
process, which holds its own connection, parses the reply and decodes the
entries: with a pure-Python reply parser, parsing costs as much per entry as
everything the daemon does after it, and there it would share the event loop.
Those reads never block; when the stream is empty the event loop's own
connection does the blocking read. A worker read that fails or whose worker
dies ends the session: entries it may have been delivered are pending at this
consumer, and the reconnect reads them again first.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Literal

import orjson
import redis
import redis.asyncio as aioredis
import redis.exceptions
from pydantic import Field
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff

from daemon.events import REASON_UNKNOWN_FORMAT, Rejected
from daemon.intake import Intake
from daemon.sources.base import Message, Predecoded, QueueSource, QueueSourceConfig
from daemon.sources.redis_read import ReadParams, client_options, read_ahead, text
from daemon.units import Duration


class RedisSourceConfig(QueueSourceConfig):
    """``ingest.sources[]`` entry with ``type: redis``."""

    type: Literal["redis"]
    """A Redis Streams consumer group."""
    url: str = "redis://127.0.0.1:6379/0"
    """Redis URL (redis:// or rediss://)."""
    stream: str = Field(min_length=1)
    """The stream key."""
    group: str = Field(default="trailkeeper", min_length=1)
    """Consumer group; replicas in the same group share the entries."""
    consumer: str | None = None
    """Consumer name within the group; must be stable across restarts for pending entries to be recovered.
    Default: the writer id.
    """
    field: str = "body"
    """The entry field holding the message body; an entry without it is quarantined."""
    create_group: bool = True
    """Create the group (and the stream) when missing."""
    start_id: str = "0"
    """Where a newly created group starts: 0 reads what the stream holds, $ only new entries."""
    batch: int = Field(default=500, ge=1)
    """Entries per read."""
    block: Duration = 1.0
    """How long one read waits for entries."""
    claim_min_idle: Duration = 60.0
    """Entries pending at another consumer this long are taken over (XAUTOCLAIM); held entries are re-
    claimed every third of it so they are not taken.
    """
    claim_interval: Duration = 15.0
    """How often abandoned entries are looked for."""


class RedisSource(QueueSource):
    type = "redis"
    fetch_ahead = True
    fetch_depth = 2

    def __init__(self, config: RedisSourceConfig, intake: Intake, writer_id: str) -> None:
        super().__init__(config, intake, writer_id)
        self.cfg = config
        self.consumer = config.consumer or writer_id
        self.keepalive_interval = max(config.claim_min_idle / 3, 0.1)
        self._r: Any = None
        self._recover_from = "0"
        self._recovering = True
        self._claim_from = "0-0"
        self._last_claim = 0.0
        self._field = config.field.encode()
        self._read_params = ReadParams(
            config.url,
            f"trailkeeper-{self.name}-{self.consumer}-reader",
            config.stream,
            config.group,
            self.consumer,
            config.batch,
            self._field,
            config.max_message_bytes,
            config.max_event_bytes,
            self.name,
        )

    async def connect(self) -> None:
        c = self.cfg
        # As in the worker: no silent retry on a new socket; a lost connection ends the session.
        self._r = aioredis.Redis.from_url(
            c.url,
            retry=AsyncRetry(NoBackoff(), 0),
            **client_options(f"trailkeeper-{self.name}-{self.consumer}", c.block + 10),
        )
        await self._r.ping()
        if c.create_group:
            try:
                await self._r.xgroup_create(c.stream, c.group, id=c.start_id, mkstream=True)
                self.log.info("redis.group_created", stream=c.stream, group=c.group, start=c.start_id)
            except redis.exceptions.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
        # Entries delivered to this consumer and never acked are read again first.
        self._recovering = True
        self._recover_from = "0"
        self._last_claim = time.monotonic()

    async def disconnect(self) -> None:
        r, self._r = self._r, None
        if r is not None:
            with contextlib.suppress(Exception):
                await r.aclose()

    def _message(self, entry_id: bytes, fields: dict[bytes, bytes] | None, redelivered: bool) -> Message:
        fields = fields or {}
        return self._entry(entry_id, fields.get(self._field), fields, redelivered)

    def _entry(
        self, entry_id: bytes, body: bytes | None, fields: dict[bytes, bytes], redelivered: bool
    ) -> Message:
        ref = f"{self.cfg.stream}/{text(entry_id)}"
        reject = None
        if body is None:
            body = orjson.dumps({text(k): text(v) for k, v in fields.items()})
            reject = Rejected(
                0,
                REASON_UNKNOWN_FORMAT,
                f"stream entry has no {self.cfg.field!r} field (fields: {sorted(text(k) for k in fields)})",
                body,
            )
        return Message(body, ref, redelivered, entry_id, self.generation, reject)

    async def fetch(self, worker: int) -> list[Message]:
        c = self.cfg
        if self._recovering:
            resp = await self._r.xreadgroup(
                c.group, self.consumer, {c.stream: self._recover_from}, count=c.batch
            )
            entries = resp[0][1] if resp else []
            if not entries:
                self._recovering = False
                return []
            self._recover_from = text(entries[-1][0])
            out = []
            for entry_id, fields in entries:
                if fields is None:
                    await self._lost_entry(entry_id)
                    continue
                out.append(self._message(entry_id, fields, True))
            self.log.info("redis.recovered_pending", entries=len(entries))
            return out
        if self._claim_due():
            self._last_claim = time.monotonic()
            claimed = await self._claim()
            if claimed:
                return claimed
        resp = await self._r.xreadgroup(
            c.group, self.consumer, {c.stream: ">"}, count=c.batch, block=int(c.block * 1000)
        )
        if not resp:
            return []
        return [self._message(entry_id, fields, False) for entry_id, fields in resp[0][1]]

    async def fetch_decoded(self, worker: int) -> tuple[list[Message], Predecoded | None]:
        pool = self.pool
        if pool is None or pool.workers <= 0 or self._recovering or self._claim_due():
            return await super().fetch_decoded(worker)
        read = await pool.call(read_ahead, self._read_params)
        if not read.ids:
            # Nothing waiting: block on the event loop's connection until entries come.
            return await super().fetch_decoded(worker)
        fields = read.fields
        messages = [
            self._entry(entry_id, body, fields.get(i, {}), False)
            for i, (entry_id, body) in enumerate(zip(read.ids, read.bodies, strict=True))
        ]
        return messages, ([m for m in messages if self._decodable(m)], read.decoded)

    def _claim_due(self) -> bool:
        return time.monotonic() - self._last_claim >= self.cfg.claim_interval

    async def _claim(self) -> list[Message]:
        c = self.cfg
        resp = await self._r.xautoclaim(
            c.stream,
            c.group,
            self.consumer,
            int(c.claim_min_idle * 1000),
            start_id=self._claim_from,
            count=c.batch,
        )
        next_id, entries = resp[0], resp[1]
        deleted = resp[2] if len(resp) > 2 else []
        self._claim_from = text(next_id) if next_id else "0-0"
        for entry_id in deleted:
            await self._lost_entry(entry_id, claimed=True)
        out = [self._message(entry_id, fields, True) for entry_id, fields in entries if fields is not None]
        if out:
            self.log.info("redis.claimed_abandoned", entries=len(out))
        return out

    async def _lost_entry(self, entry_id: bytes, claimed: bool = False) -> None:
        # The entry was trimmed or deleted from the stream while pending: its content is gone
        # from Redis before it reached us. Ack it so it stops blocking, and say so loudly.
        self.log.error(
            "redis.pending_entry_deleted",
            stream=self.cfg.stream,
            entry=text(entry_id),
            hint="the stream was trimmed (MAXLEN/XTRIM/XDEL) before this entry was consumed",
        )
        if not claimed:
            await self._r.xack(self.cfg.stream, self.cfg.group, entry_id)

    async def ack(self, messages: list[Message], whole_batch: bool) -> None:
        if not messages:
            return
        ids = [m.handle for m in messages]
        await self._r.xack(self.cfg.stream, self.cfg.group, *ids)

    async def keepalive(self, messages: list[Message]) -> None:
        # Re-claiming one's own entries resets their idle time: no other consumer's
        # XAUTOCLAIM takes them while they are being made durable.
        if messages and self._r is not None:
            await self._r.xclaim(
                self.cfg.stream, self.cfg.group, self.consumer, 0, [m.handle for m in messages], justid=True
            )

    async def consumer_lag(self) -> int | None:
        if self._r is None:
            return None
        for group in await self._r.xinfo_groups(self.cfg.stream):
            name = group.get("name")
            if name in (self.cfg.group, self.cfg.group.encode()):
                lag = group.get("lag")
                return int(lag) if lag is not None else int(group.get("pending", 0))
        return None
