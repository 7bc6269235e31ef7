"""What every queue source shares: decode, make durable, then acknowledge.

The one rule: a broker message is acknowledged only after everything it
carried is fsynced in the journal (``Intake.submit`` returned), as events or,
for what cannot be decoded, as quarantine entries with the raw bytes, the
reason, the source and the message id. A poison message is therefore
quarantined and then acknowledged: it never blocks the queue and is never lost.

Delivery from a broker is at-least-once. The window between the journal's
fsync and the broker's acknowledgement (a crash, a dropped connection, an
expired lease) makes a broker redeliver a message whose events are already
durable. Each source remembers the ids of the events it made durable
recently (rebuilt from the journal's tail on start) and drops the events it
already holds from any later message (brokers do not always mark a copy as
redelivered), so a redelivery does not become a second copy in the archive.
Events are deduplicated by event id, as everywhere in the design. Across replicas (another daemon
picking up an expired lease) this memory is not shared; see DESIGN.md §10.

Back-pressure: when the journal is at its budget (JournalFull) a source keeps
the messages it holds unacknowledged, stops pulling, keeps their leases alive
and retries later. Nothing is acknowledged and nothing is dropped.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import itertools
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, wait_exponential, wait_random

from daemon import telemetry
from daemon.decodepool import (
    MESSAGES_INLINE_BELOW,
    Decoded,
    DecodedMessages,
    DecodePool,
    decode_messages,
)
from daemon.events import (
    KIND_EVENT,
    KIND_QUARANTINE,
    REASON_TOO_LARGE,
    QuarantineItem,
    Rejected,
    decode_entry,
    encode_quarantine,
    event_header,
    now_ms,
)
from daemon.intake import REASON_RESERVED_TENANT, RESERVED_SOURCES, Intake
from daemon.journal import Journal, JournalFull, JournalReader
from daemon.telemetry import get_logger
from daemon.units import Duration, Size

log = get_logger("ingest.queue")

SOURCE_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"

T = TypeVar("T")


class QueueSourceConfig(BaseModel):
    """Settings every queue source has. ``name`` labels metrics and events (default: the type)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    name: str | None = Field(default=None, pattern=SOURCE_NAME)
    """Names the source in metrics, logs, quarantine entries and events; default: its type."""
    max_message_bytes: Size = 8 * 1024**2
    """A message body over this is not decoded: it is quarantined as too_large and acknowledged."""
    max_event_bytes: Size = 256 * 1024
    """One event over this is quarantined (CloudTrail's own limit is 256 KiB)."""
    quarantine_keep_bytes: Size = 16 * 1024**2
    """How much of an oversize body the quarantine keeps: up to this the raw bytes are kept whole; beyond
    it the first bytes, with the full size and SHA-256 in the detail.
    """
    dedupe_window: int = Field(default=100_000, ge=0)
    """Recent event ids remembered (and rebuilt from the journal's tail on start) so a redelivered message
    does not append its events twice; 0 disables.
    """
    reconnect_initial: Duration = 0.2
    """First delay before reconnecting after the broker is lost; doubles up to reconnect_max."""
    reconnect_max: Duration = 30.0
    """Longest delay between reconnection attempts."""
    pushback_retry: Duration = 1.0
    """While the journal is full: how often held messages are retried (nothing is pulled, acked or dropped
    meanwhile).
    """
    lag_interval: Duration = 15.0
    """How often the broker is asked for the consumer's lag (the consumer lag metric)."""
    stop_timeout: Duration = 10.0
    """On shutdown, how long to wait for messages in hand to be made durable and acked; later ones stay
    unacked and are redelivered.
    """

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, value: str | None) -> str | None:
        if value is not None and value in RESERVED_SOURCES:
            raise ValueError(
                f"{value!r} is the source of trailkeeper's own audit records and cannot name a queue source"
            )
        return value

    @property
    def source_name(self) -> str:
        if self.name:
            return self.name
        kind = getattr(self, "type", "queue")
        return str(kind)


@dataclass(slots=True)
class Message:
    """One broker message as a source sees it. ``handle`` is whatever the broker needs to ack."""

    body: bytes
    ref: str
    redelivered: bool
    handle: Any = None
    generation: int = 0
    # Set by a source that already knows the message is unusable (e.g. a stream entry lacking its field).
    reject: Rejected | None = None


# A batch's decodable messages and their journal payloads, before dedupe.
Predecoded = tuple[list["Message"], DecodedMessages]
# Batches decoded ahead (while the previous one is made durable) go to a worker from this
# size: the round trip then hides behind the journal's fsync instead of adding to it.
AHEAD_INLINE_BELOW = 64 * 1024


class _Prepared:
    """One message on its way to the journal (a plain class: one is built per message)."""

    __slots__ = ("keys", "message", "payloads", "plain", "reasons")

    def __init__(self, message: Message) -> None:
        self.message = message
        self.payloads: list[bytes] = []  # journal payloads (events, quarantine entries) not seen before
        self.keys: list[str] = []
        self.reasons: list[str] = []  # of the rejected items kept
        self.plain = True  # only events: no quarantine entry needs this message's id


class _SeenIds:
    """Insertion-ordered set with a capacity: the ids of recently journaled items."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: dict[str, None] = {}

    def __contains__(self, key: str) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def add(self, key: str) -> None:
        self.update((key,))

    def update(self, keys: Iterable[str]) -> None:
        if self.capacity <= 0:
            return
        items = self._items
        items.update(dict.fromkeys(keys))
        excess = len(items) - self.capacity
        if excess > 0:
            for old in list(itertools.islice(items, excess)):
                del items[old]


def _quarantine_key(ref: str, index: int | None) -> str:
    return f"q\x00{ref}\x00{index}"


def _event_key(tenant: str, event_id: str) -> str:
    """The dedupe key of an event: its tenant and id, since the same id in another tenant is
    another event. The tenant's length comes first, so no tenant/id split is ambiguous."""
    return f"e\x00{len(tenant)}\x00{tenant}\x00{event_id}"


def scan_journal_tail(payloads: Sequence[tuple[int, bytes]], source: str) -> list[str]:
    """Dedupe keys of the entries ``source`` wrote among ``payloads`` (CPU: run in a thread)."""
    keys: list[str] = []
    for offset, payload in payloads:
        try:
            entry = decode_entry(offset, payload)
        except (ValueError, KeyError):
            continue
        if entry.source != source:
            continue
        if entry.kind == KIND_EVENT:
            ident = entry.canonical.get("id")
            if ident:
                keys.append(_event_key(entry.tenant or "", ident))
        elif entry.kind == KIND_QUARANTINE:
            meta = orjson.loads(entry.record)
            if meta.get("ref"):
                keys.append(_quarantine_key(meta["ref"], meta.get("index")))
    return keys


class SourceStopped(Exception):
    """The source was asked to stop while it waited."""


class QueueSource(ABC):
    """Base of the queue sources: connection lifecycle, the decode/submit/ack loop, back-pressure.

    Subclasses implement ``connect``, ``disconnect``, ``fetch`` and ``ack``, and may
    implement ``keepalive`` (extend leases of held messages) and ``consumer_lag``.
    ``start``/``stop`` are the runtime interface for the app.
    """

    type: ClassVar[str] = "queue"
    # Seconds between lease extensions of messages held while their events are made durable;
    # None when the broker has no lease to extend.
    keepalive_interval: float | None = None
    workers: int = 1
    # Fetch the next batch while the current one is made durable (for brokers whose fetch
    # is a round trip and whose unacked messages are simply redelivered if dropped).
    fetch_ahead: bool = False
    # How many batches may be fetched ahead at once: more than one only for brokers whose
    # concurrent fetches each get their own messages (a Redis consumer group does).
    fetch_depth: int = 1

    def __init__(self, config: QueueSourceConfig, intake: Intake, writer_id: str) -> None:
        self.config = config
        self.intake = intake
        self.writer_id = writer_id
        self.name = config.source_name
        # Set by the app: large batches of messages are decoded in its worker processes.
        self.pool: DecodePool | None = None
        self.log = get_logger(f"ingest.{self.type}").bind(source=self.name)
        self.healthy = False
        self.last_error: str | None = "not connected yet"
        self.paused = False
        self.generation = 0
        self._seen = _SeenIds(config.dedupe_window)
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._progress = False
        # Refs of messages being made durable right now: a second delivery of one of them
        # (SQS may hand a message to two receivers) is left alone; the first one's ack settles it.
        self._inflight: set[str] = set()
        self._m_received = telemetry.SOURCE_MESSAGES_RECEIVED.labels(source=self.name)
        self._m_acked = telemetry.SOURCE_MESSAGES_ACKED.labels(source=self.name)
        self._m_redelivered = telemetry.SOURCE_MESSAGES_REDELIVERED.labels(source=self.name)
        self._m_duplicates = telemetry.SOURCE_DUPLICATES_DROPPED.labels(source=self.name)
        self._m_connected = telemetry.SOURCE_CONNECTED.labels(source=self.name)
        self._m_lag = telemetry.SOURCE_CONSUMER_LAG.labels(source=self.name)

    # --- to implement -------------------------------------------------------------------------

    @abstractmethod
    async def connect(self) -> None:
        """Connect and make sure the queue/stream/consumer exists. May raise (retried with backoff)."""

    @abstractmethod
    async def disconnect(self) -> None:
        """Drop the connection. Must not raise; held messages are left to the broker to redeliver."""

    @abstractmethod
    async def fetch(self, worker: int) -> list[Message]:
        """Wait up to a poll interval for messages; [] when there are none. May raise on broker loss."""

    @abstractmethod
    async def ack(self, messages: list[Message], whole_batch: bool) -> None:
        """Acknowledge messages whose content is durable. ``whole_batch``: they are every message
        of the fetched batch, in order. Must never acknowledge a message of an older connection."""

    async def keepalive(self, messages: list[Message]) -> None:  # noqa: B027 - optional hook
        """Extend the lease of messages still being made durable (default: nothing to extend)."""

    async def consumer_lag(self) -> int | None:
        """Messages waiting in the broker for this consumer, when the broker reports it."""
        return None

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Rebuild the dedupe memory from the journal's tail, then consume in the background."""
        await self._load_seen(self.intake.journal)
        self._task = asyncio.create_task(self._run(), name=f"source-{self.name}")

    async def stop(self) -> None:
        """Stop pulling, finish (or abandon, unacknowledged) what is in hand, disconnect.

        Idempotent. Never acknowledges anything that is not durable: messages still
        held when ``stop_timeout`` expires stay unacknowledged and the broker redelivers them.
        """
        self._stopping.set()
        task, self._task = self._task, None
        if task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(task), timeout=self.config.stop_timeout)
            except TimeoutError:
                self.log.warning("source.stop_timeout", timeout=self.config.stop_timeout)
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            except Exception as exc:
                self.log.error("source.failed", error=str(exc))
        await self.disconnect()
        self._set_health(False, "stopped")

    async def _load_seen(self, journal: Journal) -> None:
        window = self.config.dedupe_window
        if window <= 0:
            return
        start = max(journal.start_offset, journal.end_offset - window)
        reader = JournalReader(journal, start)
        try:
            while reader.next_offset < journal.end_offset:
                chunk = await reader.read(max_entries=10_000, timeout=0)
                if not chunk:
                    break
                for key in await asyncio.to_thread(scan_journal_tail, chunk, self.name):
                    self._seen.add(key)
        finally:
            reader.close()
        self.log.info("source.dedupe_loaded", entries=len(self._seen), from_offset=start)

    def _set_health(self, healthy: bool, error: str | None) -> None:
        self.healthy = healthy
        self.last_error = error
        self._m_connected.set(1 if healthy else 0)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)

    def _before_retry(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        delay = state.next_action.sleep if state.next_action else 0.0
        self._set_health(False, f"{type(exc).__name__}: {exc}")
        telemetry.SOURCE_RECONNECTS.labels(source=self.name).inc()
        self.log.warning(
            "source.reconnecting",
            error=str(exc),
            error_type=type(exc).__name__,
            attempt=state.attempt_number,
            retry_in=round(delay, 2),
        )

    async def _run(self) -> None:
        # A fresh backoff per outage: a session that made progress returns, and the next
        # outage starts again from the initial delay.
        while not self._stopping.is_set():
            retrying = AsyncRetrying(
                wait=wait_exponential(multiplier=self.config.reconnect_initial, max=self.config.reconnect_max)
                + wait_random(0, self.config.reconnect_initial),
                retry=retry_if_exception(lambda e: isinstance(e, Exception) and not self._stopping.is_set()),
                sleep=self._sleep,
                before_sleep=self._before_retry,
                reraise=True,
            )
            try:
                async for attempt in retrying:
                    with attempt:
                        await self._session()
            except Exception as exc:
                if not self._stopping.is_set():
                    raise
                self.log.info("source.stopped_during_outage", error=str(exc))
                return

    async def _session(self) -> None:
        if self._stopping.is_set():
            return
        self.generation += 1
        # Progress belongs to one session: a connect that fails after an earlier session made
        # progress is a failed attempt, retried with backoff, not another lost session retried
        # at once (that would spin on a broker that is down).
        self._progress = False
        try:
            await self.connect()
            self._set_health(True, None)
            self.log.info("source.connected", generation=self.generation)
            lag = asyncio.create_task(self._lag_loop())
            workers = [asyncio.create_task(self._worker(i)) for i in range(self.workers)]
            try:
                done, _ = await asyncio.wait(workers, return_when=asyncio.FIRST_EXCEPTION)
                for task in done:
                    task.result()
            finally:
                for task in (*workers, lag):
                    task.cancel()
                await asyncio.gather(*workers, lag, return_exceptions=True)
        except Exception as exc:
            await self.disconnect()
            if self._stopping.is_set():
                return
            if self._progress:
                # It worked until now: report, and reconnect at once with a fresh backoff.
                self._set_health(False, f"{type(exc).__name__}: {exc}")
                telemetry.SOURCE_RECONNECTS.labels(source=self.name).inc()
                self.log.warning("source.connection_lost", error=str(exc), error_type=type(exc).__name__)
                return
            raise

    async def _until_stopped(self, coro: Awaitable[T]) -> T:
        """Await ``coro`` unless stop is requested first (then it is cancelled)."""
        task = asyncio.ensure_future(coro)
        stopper = asyncio.create_task(self._stopping.wait())
        try:
            await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
        if task.done():
            return task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        raise SourceStopped()

    async def _worker(self, index: int) -> None:
        ahead: collections.deque[asyncio.Future[tuple[list[Message], Predecoded | None]]] = (
            collections.deque()
        )
        try:
            while not self._stopping.is_set():
                predecoded: Predecoded | None = None
                try:
                    if ahead:
                        messages, predecoded = await self._until_stopped(ahead.popleft())
                    else:
                        messages = await self._until_stopped(self.fetch(index))
                except SourceStopped:
                    return
                if not messages:
                    continue
                while self.fetch_ahead and not self.paused and len(ahead) < self.fetch_depth:
                    # Pull (and decode, in a worker process) the next batches while this one
                    # is made durable: round trips and parsing hide behind the journal's
                    # fsync. None while the journal pushes back.
                    ahead.append(asyncio.ensure_future(self.fetch_decoded(index)))
                await self._handle(messages, predecoded)
        finally:
            for future in ahead:
                if not future.done():
                    # Its messages, if any arrive, stay unacknowledged: the broker redelivers them.
                    future.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await future

    async def _lag_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                lag = await self.consumer_lag()
            except Exception as exc:
                self.log.debug("source.lag_unavailable", error=str(exc))
            else:
                if lag is not None:
                    self._m_lag.set(lag)
            await self._sleep(self.config.lag_interval)

    # --- the one rule -------------------------------------------------------------------------

    def _too_large(self, message: Message) -> Rejected:
        size = len(message.body)
        keep = self.config.quarantine_keep_bytes
        detail = (
            f"message body is {size} bytes, over the limit of {self.config.max_message_bytes} "
            f"(ingest.sources[].max_message_bytes)"
        )
        raw = message.body
        if size > keep:
            digest = hashlib.sha256(message.body).hexdigest()
            detail += f"; raw kept: first {keep} bytes of {size}, sha256 of the whole body {digest}"
            raw = message.body[:keep]
        return Rejected(0, REASON_TOO_LARGE, detail, raw)

    def _reserved(self, message: Message, payload: bytes, position: int) -> tuple[bytes, int, str]:
        """The quarantine payload, index and reason replacing an event of the reserved tenant.

        ``position`` (the item's place among the message's decoded items) is its index: an
        event carries no index of its own, and the quarantine key needs one."""
        record = payload[event_header(payload)[5] :]
        item = QuarantineItem(
            record,
            REASON_RESERVED_TENANT,
            self.intake.reserved_detail(),
            self.name,
            now_ms(),
            position,
            message.ref,
        )
        return encode_quarantine(item), position, REASON_RESERVED_TENANT

    def _decodable(self, message: Message) -> bool:
        """Whether the message is decoded, rather than refused whole (the source's own
        reject, or over ``max_message_bytes``)."""
        return message.reject is None and len(message.body) <= self.config.max_message_bytes

    async def _decode(self, ordinary: list[Message], inline_below: int) -> DecodedMessages:
        """Journal payloads of decodable messages (dedupe comes later, at ``_prepare_all``)."""
        args = [(m.body, m.ref) for m in ordinary]
        if self.pool is not None:
            return await self.pool.decode_messages(
                args, self.config.max_event_bytes, self.name, inline_below=inline_below
            )
        return decode_messages(args, self.config.max_event_bytes, self.name)

    async def fetch_decoded(self, worker: int) -> tuple[list[Message], Predecoded | None]:
        """A fetch ahead, decoded in a worker process while the current batch is made durable.

        A source may override it to read in the worker too (``_prepare_all`` uses the
        payloads only when they cover exactly the batch's decodable messages, in order).
        May raise on broker loss, like ``fetch``."""
        messages = await self.fetch(worker)
        if not messages or self.pool is None:
            return messages, None
        ordinary = [m for m in messages if self._decodable(m)]
        return messages, (ordinary, await self._decode(ordinary, AHEAD_INLINE_BELOW))

    async def _prepare_all(
        self, messages: list[Message], predecoded: Predecoded | None = None
    ) -> list[_Prepared]:
        """Decode every message (in the decode pool when the batch is large) and drop what
        is already durable. Keeps delivery order. ``predecoded`` is used when it covers
        exactly these messages."""
        prepared = [_Prepared(m) for m in messages]
        ordinary = [p for p in prepared if self._decodable(p.message)]
        mine = [p.message for p in ordinary]
        if (
            predecoded is not None
            and len(predecoded[0]) == len(mine)
            and all(a is b for a, b in zip(predecoded[0], mine, strict=True))
        ):
            decoded = predecoded[1]
        else:
            decoded = await self._decode(mine, MESSAGES_INLINE_BELOW)
        seen = self._seen
        dropped = 0
        reserved = self.intake.reserved_tenant
        position, last_owner = -1, -1
        for payload, owner, ident, index, reason in zip(*decoded, strict=True):
            p = ordinary[owner]
            position = position + 1 if owner == last_owner else 0
            last_owner = owner
            if ident is not None:
                # The tenant from the entry's fixed header, as scan_journal_tail reads it back.
                tenant = event_header(payload)[2].decode()
                if tenant == reserved:
                    # trailkeeper's own records live there: an event claiming it is quarantined
                    # (never dropped), keyed like any quarantine entry of this message.
                    payload, index, reason = self._reserved(p.message, payload, position)
                    key = _quarantine_key(p.message.ref, index)
                else:
                    key = _event_key(tenant, ident)
            else:
                key = _quarantine_key(p.message.ref, index)
            # Not only for messages the broker marks redelivered: a queue may deliver a copy
            # without saying so (SQS's at-least-once), and (tenant, event id) names one event.
            if key in seen:
                dropped += 1
                continue
            p.payloads.append(payload)
            p.keys.append(key)
            if reason is not None:
                p.reasons.append(reason)
                p.plain = False
        for p in prepared:
            m = p.message
            if self._decodable(m):
                continue
            # Refused whole, before decoding: the source's own reject, or oversize.
            item = m.reject if m.reject is not None else self._too_large(m)
            key = _quarantine_key(m.ref, item.index)
            if key in seen:
                dropped += 1
                continue
            p.payloads.append(
                encode_quarantine(
                    QuarantineItem(item.raw, item.reason, item.detail, self.name, now_ms(), item.index, m.ref)
                )
            )
            p.keys.append(key)
            p.reasons.append(item.reason)
            p.plain = False
        if dropped:
            self._m_duplicates.inc(dropped)
        return prepared

    def _units(self, prepared: list[_Prepared]) -> list[list[_Prepared]]:
        """Group messages into submit calls: runs of event-only messages share one call (their
        events need no message id), a message with rejected items gets its own (the quarantine
        entries carry its id). Runs keep delivery order, and stay well under the journal's
        budget so that a run always fits once consumers catch up."""
        cap = max(1, min(4 * 1024**2, self.intake.journal.max_bytes // 8))
        units: list[list[_Prepared]] = []
        size = 0
        for p in prepared:
            n = len(p.message.body)
            if p.plain and units and units[-1][0].plain and size + n <= cap:
                units[-1].append(p)
                size += n
            else:
                units.append([p])
                size = n
        return units

    async def _submit(self, unit: list[_Prepared]) -> None:
        payloads = [x for p in unit for x in p.payloads]
        if payloads:
            rejected = sum(len(p.reasons) for p in unit)
            decoded = Decoded(
                payloads,
                len(payloads) - rejected,
                [(0, reason, "") for p in unit for reason in p.reasons],
            )
            await self.intake.submit_decoded(decoded, self.name)
        for p in unit:
            self._seen.update(p.keys)
            if p.reasons:
                telemetry.SOURCE_MESSAGES_QUARANTINED.labels(source=self.name, reason=p.reasons[0]).inc()
                self.log.info(
                    "source.quarantined",
                    ref=p.message.ref,
                    items=len(p.reasons),
                    reason=p.reasons[0],
                    events=len(p.payloads) - len(p.reasons),
                )

    async def _keepalive_loop(self, held: list[Message]) -> None:
        assert self.keepalive_interval is not None
        while True:
            await asyncio.sleep(self.keepalive_interval)
            try:
                await self.keepalive(held)
            except Exception as exc:
                self.log.warning("source.keepalive_failed", error=str(exc), messages=len(held))

    async def _handle(self, messages: list[Message], predecoded: Predecoded | None = None) -> None:
        """Make every message's content durable, then acknowledge it; on JournalFull hold and retry."""
        self._m_received.inc(len(messages))
        redelivered = sum(1 for m in messages if m.redelivered)
        if redelivered:
            self._m_redelivered.inc(redelivered)
        twice = [m for m in messages if m.ref in self._inflight]
        if twice:
            self._m_duplicates.inc(len(twice))
            self.log.info("source.concurrent_duplicate_skipped", messages=len(twice), ref=twice[0].ref)
            messages = [m for m in messages if m.ref not in self._inflight]
        refs = {m.ref for m in messages}
        self._inflight |= refs
        try:
            await self._handle_owned(messages, predecoded)
        finally:
            self._inflight -= refs

    async def _handle_owned(self, messages: list[Message], predecoded: Predecoded | None = None) -> None:
        prepared = await self._prepare_all(messages, predecoded)
        held = list(messages)
        keeper = (
            asyncio.create_task(self._keepalive_loop(held)) if self.keepalive_interval is not None else None
        )
        try:
            pending = self._units(prepared)
            first_round = True
            while pending:
                # Concurrent submits share the journal's group commit: one fsync for the batch.
                # gather starts them in order, so journal order follows delivery order.
                results = await asyncio.gather(*(self._submit(u) for u in pending), return_exceptions=True)
                durable = [p.message for u, r in zip(pending, results, strict=True) if r is None for p in u]
                failed = [(u, r) for u, r in zip(pending, results, strict=True) if r is not None]
                if durable:
                    await self.ack(durable, whole_batch=first_round and not failed)
                    self._m_acked.inc(len(durable))
                    self._progress = True
                    done = {id(m) for m in durable}
                    held[:] = [m for m in held if id(m) not in done]
                for _, exc in failed:
                    if not isinstance(exc, JournalFull):
                        assert isinstance(exc, BaseException)
                        raise exc
                pending = [p for p, _ in failed]
                first_round = False
                if pending:
                    # Back-pressure: keep holding (unacknowledged, leases extended), pull nothing.
                    if not self.paused:
                        self.log.warning(
                            "source.paused_journal_full",
                            held=sum(len(u) for u in pending),
                            error=str(failed[0][1]),
                        )
                    self.paused = True
                    telemetry.SOURCE_PAUSED.labels(source=self.name).set(1)
                    await self._sleep(self.config.pushback_retry)
                    if self._stopping.is_set():
                        self.log.info(
                            "source.stopped_while_paused", unacknowledged=sum(len(u) for u in pending)
                        )
                        return
            if self.paused:
                self.paused = False
                telemetry.SOURCE_PAUSED.labels(source=self.name).set(0)
                self.log.info("source.resumed")
        finally:
            if keeper is not None:
                keeper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await keeper

    def status(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "healthy": self.healthy,
            "paused": self.paused,
            "last_error": self.last_error,
        }
