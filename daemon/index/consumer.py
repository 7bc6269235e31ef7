"""The indexer: a journal consumer (cursor ``index``) that keeps the query index current.

At-least-once: a batch is written to the index, then the cursor is committed, so
a crash between the two re-delivers the batch and the index's dedupe by event id
absorbs it. A failing index backend is retried with backoff; events wait in the
journal meanwhile (the journal's budget then pushes back on intake, as for any
slow consumer).

It is also an archive listener: when a tracker stores a file, the key and each
record's position in it (its leaf index) are recorded against the event id.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from daemon import telemetry
from daemon.archive.archiver import StoredFile
from daemon.events import KIND_EVENT, canonicalise, decode_entry, loads_record
from daemon.index.base import Classifier, IndexBackend, IndexConfig, IndexRow, IndexUnavailable, Location
from daemon.journal import Journal
from daemon.telemetry import get_logger

log = get_logger("index")

CURSOR = "index"
RETRY_INITIAL = 0.5
RETRY_MAX = 30.0


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
                    return False
                delay = min(delay * 2, RETRY_MAX)
                continue
            if self.last_error is not None:
                log.info("index.recovered", backend=self.backend.name)
                self.last_error = None
            telemetry.INDEX_EVENTS.inc(new)
            return True

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
        """Archive listener: record each event's file key and leaf index. Never raises.

        A lost location is not a lost event (the event is in the archive, and the
        index says so once the next file lands); it is logged and counted.
        """
        try:
            ids = await asyncio.to_thread(_ids_of, stored.records)
            now = int(time.time() * 1000)
            locations = [
                Location(event_id, stored.delivery, stored.store, stored.key, leaf, now)
                for leaf, event_id in enumerate(ids)
                if event_id is not None
            ]
            await self.backend.add_locations(locations)
        except Exception as exc:
            telemetry.INDEX_FAILURES.labels(operation="locations").inc()
            log.error("index.locations_failed", key=stored.key, events=len(stored.records), error=str(exc))


def _ids_of(records: list[bytes]) -> list[str | None]:
    """Event ids of archived records, derived exactly as at ingest."""
    out: list[str | None] = []
    for record in records:
        try:
            obj: Any = loads_record(record)
        except ValueError:
            out.append(None)
            continue
        canonical = canonicalise(obj) if isinstance(obj, dict) else None
        out.append(canonical.get("id") if isinstance(canonical, dict) else None)
    return out
