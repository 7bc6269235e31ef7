"""The archiver: a journal consumer that batches entries into files in a store.

Exactly-once files across crashes: before a file is written, its boundaries
(partition, first and last journal offset, key) are recorded durably as an
intent. After a crash the intent is carried out again, rewriting the same key
with the same bytes, and entries at or below a partition's recorded boundary
are skipped on replay. The cursor is committed only up to the oldest entry
still held by an open batch or an unfinished intent, so nothing is acknowledged
to the journal before it is stored.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from daemon import telemetry
from daemon.archive.fileformat import BuiltFile
from daemon.archive.keys import Partition, conflict_key
from daemon.durable import atomic_write
from daemon.events import KIND_EVENT, Entry, decode_entry, event_header
from daemon.journal import Journal, JournalReader
from daemon.stores.base import ObjectConflict, Store, StoreError
from daemon.telemetry import get_logger

log = get_logger("archive")

# Retry pacing for store writes: quick at first, then at most every 30 s, and a
# failing store is reported once per REPORT_INTERVAL instead of on every retry.
RETRY_INITIAL = 0.5
RETRY_MAX = 30.0
REPORT_INTERVAL = 60.0
COMMIT_INTERVAL = 1.0
READ_BATCH = 500


@dataclass(frozen=True, slots=True)
class StoredFile:
    """What the archiver tells its listeners about a file once it is durable in the store."""

    delivery: str
    store: str
    key: str
    sha256: str
    size: int
    raw_bytes: int
    records: list[bytes]
    ids: list[str | None]  # event id of each record, in file order
    first_offset: int
    last_offset: int
    first_received_ms: int
    oldest_time: str | None
    newest_time: str | None
    # The records' Merkle leaf hashes and root when the build computed them (else None).
    leaves: list[bytes] | None = None
    leaves_root: bytes | None = None


Listener = Callable[[StoredFile], Awaitable[None]]
# Runs a picklable CPU-heavy call elsewhere (a worker process) and returns its result.
Offload = Callable[[Callable[[list[bytes]], BuiltFile], list[bytes]], Awaitable[BuiltFile]]


@dataclass(slots=True)
class Delivery:
    """What one archiver delivers, where, and how files are cut and named."""

    name: str
    kind: int
    store: Store
    max_events: int
    max_bytes: int
    max_age: float
    select: Callable[[Entry], bool]
    partition: Callable[[Entry], Partition]
    key: Callable[[Partition, int, int, int], str]  # (partition, first ms, first, last)
    build: Callable[[list[bytes]], BuiltFile]
    max_open_bytes: int = 64 * 1024 * 1024
    # ``select`` takes every entry of ``kind`` and ``partition`` depends only on tenant,
    # region and receive day: the archiver may batch events from their fixed header alone.
    header_only: bool = False

    @property
    def cursor(self) -> str:
        return f"archive.{self.name}"


@dataclass(slots=True)
class _Batch:
    part: Partition
    first: int
    first_ms: int
    opened: float
    last: int = -1
    records: list[bytes] = field(default_factory=list)
    ids: list[str | None] = field(default_factory=list)
    received: list[int] = field(default_factory=list)
    nbytes: int = 0
    oldest: str | None = None
    newest: str | None = None

    def add(self, entry: Entry) -> None:
        self.add_fields(entry.offset, entry.received_ms, entry.record, entry.id, entry.time)

    def add_fields(
        self, offset: int, received_ms: int, record: bytes, eid: str | None, etime: str | None
    ) -> None:
        self.records.append(record)
        self.ids.append(eid)
        self.received.append(received_ms)
        self.nbytes += len(record) + 2
        self.last = offset
        if etime is not None:
            if self.oldest is None or etime < self.oldest:
                self.oldest = etime
            if self.newest is None or etime > self.newest:
                self.newest = etime


def _part_key(part: Partition) -> str:
    return "|".join(part)


class _State:
    """Per-partition boundaries and unfinished intents, persisted atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.through: dict[str, int] = {}
        self.pending: dict[str, dict[str, Any]] = {}

    def load(self) -> None:
        if self.path.exists():
            doc = orjson.loads(self.path.read_bytes())
            self.through = {k: int(v) for k, v in doc.get("through", {}).items()}
            self.pending = dict(doc.get("pending", {}))

    def _save_sync(self, data: bytes) -> None:
        atomic_write(self.path, data)

    async def save(self) -> None:
        data = orjson.dumps({"through": self.through, "pending": self.pending})
        await asyncio.to_thread(self._save_sync, data)

    def prune(self, cursor: int) -> None:
        # Entries below the committed cursor are never read again, so their bounds can go.
        self.through = {k: v for k, v in self.through.items() if v >= cursor}


class Archiver:
    """Consumes the journal for one delivery. At-least-once towards the store,
    exactly-once in the store's contents (deterministic keys, recorded intents).
    """

    def __init__(
        self,
        journal: Journal,
        delivery: Delivery,
        state_dir: Path,
        listeners: list[Listener] | None = None,
        offload: Offload | None = None,
    ) -> None:
        self.journal = journal
        self.d = delivery
        # Where files are built: a worker process keeps compression and hashing off the
        # process that serves ingest; without one, a thread.
        self._offload = offload
        self.state = _State(state_dir / f"{delivery.cursor}.json")
        self.listeners = listeners or []
        self._batches: dict[Partition, _Batch] = {}
        self._parts: dict[tuple[bytes, bytes, int], tuple[Partition, str]] = {}
        self._open_bytes = 0
        self._dirty = False
        self._flushed = False
        self._inflight: asyncio.Task[None] | None = None
        self._last_commit = 0.0
        self._stopping = asyncio.Event()
        self._stop_deadline: float | None = None
        self._last_report = 0.0
        self._failing_since: float | None = None
        self.last_error: str | None = None
        self._latency = telemetry.ARCHIVE_LATENCY.labels(tracker=delivery.name)
        journal.register(delivery.cursor)

    # --- lifecycle --------------------------------------------------------------------------

    async def run(self) -> None:
        """Deliver until ``stop``; then store every open batch (store permitting) and return."""
        await asyncio.to_thread(self.state.load)
        reader: JournalReader | None = None
        try:
            # Inside the try: a stop while the store is still down gives up here too.
            await self._redo_pending()
            reader = self.journal.reader(self.d.cursor)
            await self._loop(reader)
        except _GiveUp:
            log.warning(
                "archive.stop_incomplete",
                tracker=self.d.name,
                detail="the store is down; events stay in the journal and are delivered on the next start",
            )
        finally:
            if self._inflight is not None and not self._inflight.done():
                # Its intent stays recorded: the next start stores the file again.
                self._inflight.cancel()
            if reader is not None:
                reader.close()
            telemetry.ARCHIVE_OPEN_EVENTS.labels(tracker=self.d.name).set(0)

    async def _loop(self, reader: JournalReader) -> None:
        while True:
            stopping = self._stopping.is_set()
            timeout = 0.0 if stopping else self._next_timeout()
            # Small reads keep each pass short: the loop also serves ingest and notifications.
            entries = await reader.read(READ_BATCH, timeout=timeout, kind=self.d.kind)
            kind = self.d.kind
            fast = self.d.header_only and kind == KIND_EVENT
            for offset, payload in entries:
                if payload[0] != kind:
                    continue  # another consumer's kind of entry: skip without decoding
                if fast:
                    full = self._take_event(offset, payload)
                else:
                    full = self._take(decode_entry(offset, payload))
                if full is not None:
                    await self._flush(full)
                elif self._open_bytes > self.d.max_open_bytes:
                    await self._flush(max(self._batches.values(), key=lambda b: b.nbytes).part)
            flushed = await self._flush_due(force=stopping and not entries)
            # Commits cost an fsync: make them after a file is stored, on stop, or once a second.
            if flushed or stopping or time.monotonic() - self._last_commit >= COMMIT_INTERVAL:
                await self._commit(reader.next_offset)
            if stopping and not entries and not self._batches:
                await self._wait_inflight()
                await self._commit(reader.next_offset)
                return
            if stopping and self._past_deadline():
                raise _GiveUp()

    def stop(self, deadline: float | None = None) -> None:
        """Ask ``run`` to store what it holds and return; give up on a dead store after ``deadline`` s."""
        if deadline is not None:
            self._stop_deadline = time.monotonic() + deadline
        self._stopping.set()

    def _past_deadline(self) -> bool:
        return self._stop_deadline is not None and time.monotonic() >= self._stop_deadline

    def _until_deadline(self) -> float:
        if self._stop_deadline is None:
            return float("inf")
        return max(0.0, self._stop_deadline - time.monotonic())

    @property
    def healthy(self) -> bool:
        return self._failing_since is None

    # --- batching ---------------------------------------------------------------------------

    def _next_timeout(self) -> float:
        if not self._batches:
            return 1.0
        oldest = min(b.opened for b in self._batches.values())
        return max(0.0, min(1.0, oldest + self.d.max_age - time.monotonic()))

    def _take_event(self, offset: int, payload: bytes) -> Partition | None:
        """``_take`` for an event entry of a ``header_only`` delivery, from its fixed header.

        Same outcome as ``_take(decode_entry(...))``; partitions are cached per
        (tenant, region, day), so the common case builds no Entry and no key.
        """
        received, eid, tenant, region, etime, start = event_header(payload)
        cache_key = (tenant, region, received // 86_400_000)
        cached = self._parts.get(cache_key)
        if cached is None:
            if len(self._parts) >= 4096:
                self._parts.clear()
            part = self.d.partition(decode_entry(offset, payload))
            cached = self._parts[cache_key] = (part, _part_key(part))
        part, pkey = cached
        eid_text = eid.decode() if eid else None
        etime_text = etime.decode() if etime else None
        return self._add(part, pkey, offset, received, payload[start:], eid_text, etime_text)

    def _take(self, entry: Entry) -> Partition | None:
        """Add an entry to its partition's batch; return the partition if that batch is full."""
        if entry.kind != self.d.kind or not self.d.select(entry):
            return None
        part = self.d.partition(entry)
        return self._add(
            part, _part_key(part), entry.offset, entry.received_ms, entry.record, entry.id, entry.time
        )

    def _add(
        self,
        part: Partition,
        pkey: str,
        offset: int,
        received_ms: int,
        record: bytes,
        eid: str | None,
        etime: str | None,
    ) -> Partition | None:
        if offset <= self.state.through.get(pkey, -1):
            return None  # stored before a crash; the replay must not store it twice
        batch = self._batches.get(part)
        if batch is None:
            batch = _Batch(part, offset, received_ms, time.monotonic())
            self._batches[part] = batch
        batch.add_fields(offset, received_ms, record, eid, etime)
        self._open_bytes += len(record) + 2
        if len(batch.records) >= self.d.max_events or batch.nbytes >= self.d.max_bytes:
            return part
        return None

    async def _flush_due(self, force: bool) -> bool:
        now = time.monotonic()
        flushed = self._flushed
        self._flushed = False
        for part, batch in list(self._batches.items()):
            if (
                force
                or len(batch.records) >= self.d.max_events
                or batch.nbytes >= self.d.max_bytes
                or now - batch.opened >= self.d.max_age
            ):
                await self._flush(part)
                flushed = True
        telemetry.ARCHIVE_OPEN_EVENTS.labels(tracker=self.d.name).set(
            sum(len(b.records) for b in self._batches.values())
        )
        return flushed

    async def _flush(self, part: Partition) -> None:
        batch = self._batches.pop(part)
        self._open_bytes -= batch.nbytes
        key = self.d.key(part, batch.first_ms, batch.first, batch.last)
        # The intent is durable before the file exists, so a replay cannot cut
        # this batch differently and store an overlapping file.
        self.state.pending[key] = {
            "part": list(part),
            "first": batch.first,
            "last": batch.last,
            "first_ms": batch.first_ms,
        }
        self.state.through[_part_key(part)] = batch.last
        await self.state.save()
        # Two-stage pipeline: this file is compressed and stored while the loop goes on
        # batching the next one. One file in flight at most, so memory stays bounded and
        # a failing store stops reading from the journal.
        await self._wait_inflight()
        self._inflight = asyncio.create_task(self._store_and_finish(key, batch))

    async def _wait_inflight(self) -> None:
        if self._inflight is not None:
            task, self._inflight = self._inflight, None
            await task  # re-raises _GiveUp

    async def _store_and_finish(self, key: str, batch: _Batch) -> None:
        await self._store(key, batch)
        self.state.pending.pop(key, None)
        self._dirty = True
        self._flushed = True
        # One observation per ingest batch in the file (events of one request share a
        # receive time): per-event observations would cost more than the archiving.
        now = time.time()
        for r in set(batch.received):
            self._latency.observe(max(0.0, now - r / 1000))

    async def _store(self, key: str, batch: _Batch) -> None:
        if self._offload is not None:
            built = await self._offload(self.d.build, batch.records)
        else:
            built = await asyncio.to_thread(self.d.build, batch.records)
        delay = RETRY_INITIAL
        attempt_key = key
        while True:
            try:
                await self.d.store.put(attempt_key, built.data)
                break
            except ObjectConflict:
                # Same key, other bytes: only a changed tracker filter between a crash and
                # its replay can do this. Never overwrite stored evidence; keep both.
                attempt_key = conflict_key(key, built.sha256)
                telemetry.ARCHIVE_FAILURES.labels(tracker=self.d.name, reason="conflict").inc()
                log.error("archive.key_conflict", tracker=self.d.name, key=key, stored_as=attempt_key)
            except StoreError as exc:
                reason = "unavailable" if exc.retryable else "permanent"
                telemetry.ARCHIVE_FAILURES.labels(tracker=self.d.name, reason=reason).inc()
                self._report_failure(key, exc)
                if self._stopping.is_set() and self._past_deadline():
                    raise _GiveUp() from exc
                await self._sleep(delay)
                # The backoff may end at the deadline: no try after it.
                if self._stopping.is_set() and self._past_deadline():
                    raise _GiveUp() from exc
                delay = min(delay * 2, RETRY_MAX)
        if self._failing_since is not None:
            log.info(
                "archive.store_recovered",
                tracker=self.d.name,
                store=self.d.store.name,
                outage_seconds=round(time.monotonic() - self._failing_since, 1),
            )
        self._failing_since = None
        self.last_error = None
        telemetry.ARCHIVE_FILES.labels(tracker=self.d.name).inc()
        telemetry.ARCHIVE_EVENTS.labels(tracker=self.d.name).inc(len(batch.records))
        telemetry.ARCHIVE_BYTES.labels(tracker=self.d.name).inc(len(built.data))
        telemetry.ARCHIVE_LAST_SUCCESS.labels(tracker=self.d.name).set(time.time())
        stored = StoredFile(
            self.d.name,
            self.d.store.name,
            attempt_key,
            built.sha256,
            len(built.data),
            built.raw_bytes,
            batch.records,
            batch.ids,
            batch.first,
            batch.last,
            batch.first_ms,
            batch.oldest,
            batch.newest,
            built.leaves,
            built.leaves_root,
        )
        log.debug("archive.file_stored", tracker=self.d.name, key=attempt_key, events=len(batch.records))
        for listener in self.listeners:
            await listener(stored)

    def _report_failure(self, key: str, exc: StoreError) -> None:
        now = time.monotonic()
        self.last_error = str(exc)
        if self._failing_since is None:
            self._failing_since = now
        if now - self._last_report >= REPORT_INTERVAL:
            self._last_report = now
            log.error(
                "archive.store_failed",
                tracker=self.d.name,
                store=self.d.store.name,
                key=key,
                error=str(exc),
                retryable=exc.retryable,
                detail="events stay in the journal and are retried; intake pushes back at the journal budget",
            )

    async def _sleep(self, seconds: float) -> None:
        # Wake early on stop so shutdown does not wait out a long backoff; once stopping,
        # retry often but never sleep past the stop deadline, so giving up is on time.
        if not self._stopping.is_set():
            try:
                await asyncio.wait_for(self._stopping.wait(), timeout=seconds)
            except TimeoutError:
                return
        await asyncio.sleep(min(seconds, 0.5, self._until_deadline()))

    async def _commit(self, next_offset: int) -> None:
        self._last_commit = time.monotonic()
        holds = [b.first for b in self._batches.values()]
        holds += [int(p["first"]) for p in self.state.pending.values()]
        upto = min([next_offset, *holds])
        if upto > self.journal.cursor(self.d.cursor):
            # Finished intents must be forgotten on disk before the cursor passes them,
            # or a restart would look for entries the journal has already released.
            if self._dirty:
                await self.state.save()
                self._dirty = False
            await self.journal.commit(self.d.cursor, upto)
            before = len(self.state.through)
            self.state.prune(upto)
            if len(self.state.through) != before:
                self._dirty = True

    async def _redo_pending(self) -> None:
        """Carry out intents recorded before a crash: same entries, same key, same bytes."""
        if not self.state.pending:
            return
        for key, intent in sorted(self.state.pending.items(), key=lambda kv: int(kv[1]["first"])):
            part = Partition(*intent["part"])
            first, last = int(intent["first"]), int(intent["last"])
            batch = _Batch(part, first, int(intent["first_ms"]), time.monotonic())
            reader = self.journal.reader(self.d.cursor, start=first)
            try:
                while reader.next_offset <= last:
                    entries = await reader.read(2000, timeout=0)
                    if not entries:
                        raise RuntimeError(
                            f"archive intent {key}: journal ends at {reader.next_offset}, before {last}"
                        )
                    for offset, payload in entries:
                        if offset > last:
                            break
                        entry = decode_entry(offset, payload)
                        if (
                            entry.kind == self.d.kind
                            and self.d.select(entry)
                            and self.d.partition(entry) == part
                        ):
                            batch.add(entry)
            finally:
                reader.close()
            await self._store(key, batch)
            self.state.pending.pop(key, None)
            log.info("archive.intent_completed", tracker=self.d.name, key=key, events=len(batch.records))
        await self.state.save()


class _GiveUp(Exception):
    """Stop was requested and the store stayed down past the deadline."""
