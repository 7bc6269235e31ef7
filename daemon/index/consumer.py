"""The indexer: a journal consumer (cursor ``index``) that keeps the query index current.

At-least-once: a batch is written to the index, then the cursor is committed, so
a crash between the two re-delivers the batch and the index's dedupe by
(tenant, event id) absorbs it. A failing index backend is retried with backoff;
events wait in the journal meanwhile (the journal's budget then pushes back on
intake, as for any slow consumer).

A batch the backend refuses for its content (not an outage) is bisected until the
refused events are alone; each of those is parked: counted, logged, and copied to
the quarantine with the reason, and the index moves on. A parked event is still in
the journal and the archive; it is only missing from query results.

It is also an archive listener: when a tracker stores a file, the key and each
record's position in it (its leaf index) are recorded against the event id and
the record's leaf hash, so a location belongs to one record, never to every
event that shares its id.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from daemon import telemetry
from daemon.archive.archiver import StoredFile
from daemon.events import KIND_EVENT, QuarantineItem, decode_entry, encode_quarantine
from daemon.index.base import (
    Classifier,
    IndexBackend,
    IndexConfig,
    IndexRefused,
    IndexRow,
    IndexUnavailable,
    Location,
)
from daemon.index.values import display_text
from daemon.integrity.merkle import leaf_hashes
from daemon.journal import Journal, JournalError
from daemon.telemetry import get_logger

log = get_logger("index")

CURSOR = "index"
RETRY_INITIAL = 0.5
RETRY_MAX = 30.0
LOCATION_QUEUE = 64  # stored files whose locations wait for the index
# The quarantine item of a parked event: its source and reason (reasons of refused input
# come from daemon.events; this one says the input was accepted, only not indexed).
PARK_SOURCE = "index"
PARK_REASON = "index_refused"
_LOG_CHARS = 200  # of an id or an error in a log line: values can be megabytes


@dataclass(frozen=True, slots=True)
class _Placed:
    delivery: str
    store: str
    key: str
    ids: list[str | None]
    hashes: list[bytes]


def _short(text: str) -> str:
    return display_text(text[:_LOG_CHARS])


# Sentinel ending the location writer.
_DONE: Any = object()


class Indexer:
    """Consumes the journal into an index backend. ``run`` until ``stop``."""

    def __init__(
        self,
        journal: Journal,
        backend: IndexBackend,
        config: IndexConfig,
        classify: Classifier | None = None,
    ) -> None:
        self.journal = journal
        self.backend = backend
        self.config = config
        self.classify = classify
        self._stopping = asyncio.Event()
        # Archive locations queue here: the archiver hands a file over and moves on, so a
        # slow index never holds up the archive.
        self._locations: asyncio.Queue[_Placed] = asyncio.Queue(maxsize=LOCATION_QUEUE)
        self._last_prune = 0.0
        self.last_error: str | None = None
        journal.register(CURSOR)

    @property
    def healthy(self) -> bool:
        return self.last_error is None

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        """Open the backend (retrying while it is down), then index until ``stop``."""
        if not await self._open():
            return
        reader = self.journal.reader(CURSOR)
        locations = asyncio.create_task(self._write_locations(), name="index-locations")
        try:
            while not self._stopping.is_set():
                entries = await reader.read(self.config.batch, timeout=0.5)
                if entries:
                    rows = await asyncio.to_thread(self._rows, entries)
                    if not await self._write(rows):
                        return  # stopped while the backend was down; the journal keeps the rest
                    await self.journal.commit(CURSOR, reader.next_offset)
                await self._maybe_prune()
        finally:
            reader.close()
            await self._locations.put(_DONE)
            await locations

    async def _open(self) -> bool:
        delay = RETRY_INITIAL
        while True:
            try:
                await self.backend.open()
            except IndexUnavailable as exc:
                if self.last_error is None:
                    log.error("index.open_failed", backend=self.backend.name, error=str(exc))
                self.last_error = str(exc)
                if await self._wait_stop(delay):
                    return False
                delay = min(delay * 2, RETRY_MAX)
                continue
            self.last_error = None
            return True

    async def _wait_stop(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; True if ``stop`` was called meanwhile."""
        try:
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)
        except TimeoutError:
            return False
        return True

    def _rows(self, entries: list[tuple[int, bytes]]) -> list[IndexRow]:
        rows = []
        for offset, payload in entries:
            entry = decode_entry(offset, payload)
            if entry.kind != KIND_EVENT:
                continue
            classification = None
            if self.classify is not None:
                try:
                    classification = self.classify(entry.event())
                except Exception as exc:
                    # A rule bug must not stop indexing: the event is indexed unclassified.
                    log.error(
                        "index.classify_failed", offset=offset, id=entry.canonical.get("id"), error=str(exc)
                    )
            rows.append(IndexRow.from_entry(entry, classification))
        return rows

    async def _write(self, rows: list[IndexRow]) -> bool:
        """Index ``rows``, each either written or parked. False if stopped meanwhile.

        A refused batch is split in halves until each refused row is alone, so one bad
        event costs about 2 log2(batch) writes and never holds back the others.
        """
        new = 0
        pending = [rows]
        while pending:
            chunk = pending.pop()
            outcome = await self._write_chunk(chunk)
            if outcome is None:
                return False
            if isinstance(outcome, int):
                new += outcome
                continue
            if len(chunk) == 1:
                await self._park(chunk[0], outcome)
                continue
            half = len(chunk) // 2
            # First half on top: rows keep their journal order.
            pending.append(chunk[half:])
            pending.append(chunk[:half])
        telemetry.INDEX_EVENTS.inc(new)
        return True

    async def _write_chunk(self, rows: list[IndexRow]) -> int | Exception | None:
        """Rows newly written; the refusal when the backend refuses them; None if stopped.

        An outage (IndexUnavailable) is retried with backoff for as long as it lasts: a
        database that is down never causes an event to be parked. Any other exception
        from the backend is treated as a refusal of these rows, so a row that trips an
        unforeseen error cannot stop indexing (or the daemon) for good.
        """
        delay = RETRY_INITIAL
        while True:
            try:
                new = await self.backend.write(rows)
            except IndexUnavailable as exc:
                telemetry.INDEX_FAILURES.labels(operation="write").inc()
                if self.last_error is None:
                    log.error(
                        "index.write_failed",
                        backend=self.backend.name,
                        error=str(exc),
                        detail="events stay in the journal and are indexed when the index is back",
                    )
                self.last_error = str(exc)
                if await self._wait_stop(delay):
                    return None
                delay = min(delay * 2, RETRY_MAX)
                continue
            except IndexRefused as exc:
                return exc
            except Exception as exc:
                return exc
            if self.last_error is not None:
                log.info("index.recovered", backend=self.backend.name)
                self.last_error = None
            return new

    async def _park(self, row: IndexRow, exc: Exception) -> None:
        """Give up indexing one event: metric, log line, and a quarantine item with the reason.

        The quarantine copy is best effort: when the journal cannot take it (full, or
        failing), the log line still names the event and its journal offset, and the
        index moves on, since waiting would keep the journal full.
        """
        reason = "refused" if isinstance(exc, IndexRefused) else "error"
        telemetry.INDEX_PARKED.labels(reason=reason).inc()
        ref = f"index:{row.journal_offset}"
        error = f"{type(exc).__name__}: {exc}"[:1000]
        item = QuarantineItem(
            raw=row.record,
            reason=PARK_REASON,
            detail=(
                f"the {self.backend.name} index could not store this event (journal offset "
                f"{row.journal_offset}); it is journaled and archived as usual, only not "
                f"queryable: {error}"
            ),
            source=PARK_SOURCE,
            received_ms=int(time.time() * 1000),
            ref=ref,
        )
        quarantined = True
        try:
            await self.journal.append([encode_quarantine(item)])
        except JournalError as jexc:
            quarantined = False
            log.error("index.park_not_quarantined", ref=ref, error=str(jexc))
        log.error(
            "index.event_parked",
            backend=self.backend.name,
            id=_short(row.id),
            tenant=_short(row.canonical.get("tenant") or ""),
            journal_offset=row.journal_offset,
            ref=ref,
            reason=reason,
            quarantined=quarantined,
            error=_short(error),
        )

    async def _maybe_prune(self) -> None:
        now = time.monotonic()
        if now - self._last_prune < self.config.prune_interval:
            return
        self._last_prune = now
        await self.prune()

    async def prune(self, now_ms: int | None = None) -> int:
        """Delete what is older than the retention (by receive time). Never raises."""
        cutoff = (now_ms if now_ms is not None else int(time.time() * 1000)) - int(
            self.config.retention * 1000
        )
        try:
            deleted = await self.backend.prune(cutoff)
        except IndexUnavailable as exc:
            telemetry.INDEX_FAILURES.labels(operation="prune").inc()
            log.error("index.prune_failed", backend=self.backend.name, error=str(exc))
            return 0
        if deleted:
            telemetry.INDEX_PRUNED.inc(deleted)
            log.info("index.pruned", events=deleted, before_ms=cutoff)
        return deleted

    async def on_stored(self, stored: StoredFile) -> None:
        """Archive listener: queue the file's event locations for the index. Never waits
        for the index (at most for hashing the records, when the build did not).

        A lost location is not a lost event (the event is in the archive and in the
        index; only its file key is missing until re-archived): when the queue is full
        the file is counted and logged instead of holding up the archiver.
        """
        if self._locations.full():
            self._dropped(stored)
            return
        # A location is keyed by its record's leaf hash; the build has usually computed them.
        hashes = stored.leaves
        if hashes is None or len(hashes) != len(stored.ids):
            hashes = await asyncio.to_thread(leaf_hashes, stored.records)
        try:
            # Only names, ids and hashes: the file's records must not stay alive in the queue.
            self._locations.put_nowait(_Placed(stored.delivery, stored.store, stored.key, stored.ids, hashes))
        except asyncio.QueueFull:
            self._dropped(stored)

    @staticmethod
    def _dropped(stored: StoredFile) -> None:
        telemetry.INDEX_FAILURES.labels(operation="locations").inc()
        log.warning("index.locations_dropped", key=stored.key, events=len(stored.ids), reason="queue full")

    async def _write_locations(self) -> None:
        while True:
            stored = await self._locations.get()
            if stored is _DONE:
                return
            now = int(time.time() * 1000)
            locations = [
                Location(event_id, stored.delivery, stored.store, stored.key, leaf, now, digest)
                for leaf, (event_id, digest) in enumerate(zip(stored.ids, stored.hashes, strict=True))
                if event_id is not None
            ]
            try:
                await self.backend.add_locations(locations)
            except Exception as exc:
                telemetry.INDEX_FAILURES.labels(operation="locations").inc()
                log.error("index.locations_failed", key=stored.key, events=len(locations), error=str(exc))
