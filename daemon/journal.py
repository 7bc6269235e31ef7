"""The journal: a durable, segmented local log with one cursor per consumer.

Every source appends here and is acknowledged only once its entries are
fsynced. Consumers (archiver, notifier, indexer, quarantine) read from their
own cursor and commit it after their own work is durable, so delivery to each
consumer is at-least-once and a slow consumer never blocks another.

On disk::

    <dir>/segments/<base offset, 20 digits>.seg   frames: len u32 | offset u64 | crc32 u32 | payload
    <dir>/cursors/<name>                           the next offset the consumer needs (text)

The CRC covers the offset and the payload, so a torn tail after a crash (short
header, short payload, zeroed pages, garbage) is detected and cut off on open,
never mis-read.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
import threading
import time
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from daemon import telemetry
from daemon.durable import fsync_dir
from daemon.telemetry import get_logger

log = get_logger("journal")

_HEADER = struct.Struct(">IQI")
_MAX_ENTRY = 64 * 1024 * 1024
# Readers fetch frames in chunks of about this size: one system call and one copy for
# hundreds of entries instead of two per entry.
_READ_CHUNK = 1024 * 1024


class JournalError(Exception):
    """The journal cannot be used (corrupt segment, unwritable directory)."""


class JournalFull(JournalError):
    """The journal is at its disk budget: refuse or pause intake and retry later."""

    def __init__(self, used: int, budget: int) -> None:
        super().__init__(
            f"journal is full: {used} bytes used of a {budget} byte budget (journal.max_bytes); "
            "consumers are behind: check the archive store and notification endpoints"
        )
        self.used = used
        self.budget = budget


class JournalClosed(JournalError):
    """The journal was closed: no more appends."""


def _crc(offset: int, payload: bytes) -> int:
    return zlib.crc32(payload, zlib.crc32(offset.to_bytes(8, "big")))


def frame(offset: int, payload: bytes) -> bytes:
    return _HEADER.pack(len(payload), offset, _crc(offset, payload)) + payload


@dataclass(slots=True)
class _Segment:
    base: int
    path: Path
    size: int
    end: int  # offset after its last entry


@dataclass(slots=True)
class RecoveryReport:
    segments: int = 0
    entries: int = 0
    start_offset: int = 0
    end_offset: int = 0
    truncated_bytes: int = 0
    truncated_at: int | None = None
    cursors: dict[str, int] = field(default_factory=dict)


def _scan(path: Path, base: int, *, verify: bool) -> tuple[int, int, int]:
    """Walk a segment's frames: (end offset, valid bytes, file size).

    Stops at the first frame that is short, has the wrong offset, or (with
    ``verify``) fails its CRC: everything from there on is a torn write.
    """
    size = path.stat().st_size
    expected = base
    pos = 0
    with path.open("rb") as f:
        while pos + _HEADER.size <= size:
            f.seek(pos)
            head = f.read(_HEADER.size)
            length, offset, crc = _HEADER.unpack(head)
            if offset != expected or length > _MAX_ENTRY or pos + _HEADER.size + length > size:
                break
            if verify:
                payload = f.read(length)
                if _crc(offset, payload) != crc:
                    break
            pos += _HEADER.size + length
            expected += 1
    return expected, pos, size


class Journal:
    """Append-only durable log. Use one instance per directory (one process).

    ``append`` may raise JournalFull (back-pressure) or JournalClosed.
    """

    def __init__(
        self,
        directory: Path,
        *,
        max_bytes: int,
        segment_bytes: int = 64 * 1024 * 1024,
        fsync: bool = True,
    ) -> None:
        self.dir = directory
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self.fsync = fsync
        # Copy-on-write under _seg_lock: reader threads take a snapshot of the list
        # without locking, and the writer and the releaser never lose each other's change.
        self._segments: list[_Segment] = []
        self._seg_lock = threading.Lock()
        self._fd: int | None = None
        self._next = 0  # next offset to assign
        self._durable = 0  # offsets below this are fsynced
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._kick = asyncio.Event()
        self._advanced = asyncio.Condition()
        self._flusher: asyncio.Task[None] | None = None
        self._closed = False
        self._failed: BaseException | None = None
        self._cursors: dict[str, int] = {}
        self._registered: set[str] = set()
        self._commit_lock = asyncio.Lock()
        self._disk_bytes = 0
        self._full = False  # an append was refused; cleared once usage falls under 90% of the budget
        # The last offset appended with each first payload byte (the entry kind). Entries
        # recovered from disk are of unknown kind: below _kinds_known_from every kind may occur.
        self._last_of_kind: dict[int, int] = {}
        self._kinds_known_from = 0

    # --- lifecycle --------------------------------------------------------------------------

    async def open(self, consumers: Iterable[str] = ()) -> RecoveryReport:
        """Recover from disk, then start the group-commit writer.

        ``consumers`` names the cursors that hold segments back; a segment is
        deleted only when all of them have passed it.
        """
        report = await asyncio.to_thread(self._recover_sync)
        for name in consumers:
            self.register(name)
        report.cursors = {n: self._cursors.get(n, report.start_offset) for n in self._registered}
        self._flusher = asyncio.create_task(self._flush_loop(), name="journal-flusher")
        telemetry.JOURNAL_BUDGET_BYTES.set(self.max_bytes)
        self._update_gauges()
        return report

    def register(self, name: str) -> None:
        """Declare a consumer; before its first commit it starts at the oldest entry."""
        self._registered.add(name)
        self._cursors.setdefault(name, self.start_offset)

    def unregister(self, name: str) -> None:
        """Stop holding segments back for a consumer that no longer runs (its cursor file stays)."""
        self._registered.discard(name)

    def _recover_sync(self) -> RecoveryReport:
        seg_dir = self.dir / "segments"
        seg_dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "cursors").mkdir(parents=True, exist_ok=True)
        report = RecoveryReport()
        paths = sorted(seg_dir.glob("*.seg"))
        for i, path in enumerate(paths):
            base = int(path.stem)
            last = i == len(paths) - 1
            end, valid, size = _scan(path, base, verify=last)
            if valid < size:
                if not last:
                    raise JournalError(
                        f"journal segment {path} is damaged at byte {valid} but is not the newest: "
                        "move it aside to start, and report it (its entries after that byte are lost)"
                    )
                with path.open("r+b") as f:
                    f.truncate(valid)
                    os.fsync(f.fileno())
                report.truncated_bytes = size - valid
                report.truncated_at = end
            self._segments.append(_Segment(base, path, valid, end))
            report.entries += end - base
        if not self._segments:
            self._new_segment_sync(0)
        self._next = self._durable = self._kinds_known_from = self._segments[-1].end
        self._disk_bytes = sum(s.size for s in self._segments)
        active = self._segments[-1]
        self._fd = os.open(active.path, os.O_WRONLY | os.O_APPEND)
        for cpath in (self.dir / "cursors").iterdir():
            if cpath.name.startswith("."):
                continue
            try:
                self._cursors[cpath.name] = int(cpath.read_text().strip())
            except ValueError as exc:
                raise JournalError(f"cursor file {cpath} is unreadable: {exc}") from exc
        report.segments = len(self._segments)
        report.start_offset = self.start_offset
        report.end_offset = self._next
        return report

    def _new_segment_sync(self, base: int) -> None:
        path = self.dir / "segments" / f"{base:020d}.seg"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        if self.fsync:
            os.fsync(fd)
            fsync_dir(path.parent)
        if self._fd is not None:
            os.close(self._fd)
        self._fd = fd
        with self._seg_lock:
            self._segments = [*self._segments, _Segment(base, path, 0, base)]

    async def close(self) -> None:
        """Flush what was appended, stop the writer. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._kick.set()
        if self._flusher is not None:
            with contextlib.suppress(Exception):
                await self._flusher
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        async with self._advanced:
            self._advanced.notify_all()

    # --- state ------------------------------------------------------------------------------

    @property
    def start_offset(self) -> int:
        return self._segments[0].base if self._segments else 0

    @property
    def end_offset(self) -> int:
        """Offset after the last durable entry: readers never see beyond it."""
        return self._durable

    @property
    def bytes_used(self) -> int:
        return self._disk_bytes + self._pending_bytes

    @property
    def failed(self) -> BaseException | None:
        return self._failed

    def cursor(self, name: str) -> int:
        return self._cursors.get(name, self.start_offset)

    def lag(self, name: str) -> int:
        return self._durable - self.cursor(name)

    def writable(self) -> bool:
        return (
            not self._closed
            and self._failed is None
            and not (self._full and self.bytes_used > self.max_bytes * 0.9)
        )

    # --- append -----------------------------------------------------------------------------

    async def append(self, payloads: Sequence[bytes]) -> int:
        """Append entries; return the first offset once all are fsynced.

        Raises JournalFull when the disk budget would be exceeded (nothing is
        appended then), JournalClosed after close, JournalError if the disk fails.
        Offsets of one call are consecutive.
        """
        if self._closed:
            raise JournalClosed("journal is closed")
        if self._failed is not None:
            raise JournalError(f"journal write failed earlier: {self._failed}")
        if not payloads:
            return self._next
        # ``frame`` inlined: this runs once per event on the event loop.
        pack, crc32 = _HEADER.pack, zlib.crc32
        frames = [
            pack(len(p), o, crc32(p, crc32(o.to_bytes(8, "big")))) + p
            for o, p in enumerate(payloads, self._next)
        ]
        size = sum(len(f) for f in frames)
        # Hysteresis: once full, refuse until consumers free 10% of the budget, so
        # senders back off for real instead of squeezing in one small batch at a time.
        if self._full and self.bytes_used > self.max_bytes * 0.9:
            raise JournalFull(self.bytes_used, self.max_bytes)
        self._full = False
        if self.bytes_used + size > self.max_bytes:
            self._full = True
            raise JournalFull(self.bytes_used, self.max_bytes)
        first = self._next
        self._next += len(frames)
        # Conservative: every kind in this group is marked at the group's last offset.
        for kind in {p[0] for p in payloads if p}:
            self._last_of_kind[kind] = self._next - 1
        self._pending.extend(frames)
        self._pending_bytes += size
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((self._next, fut))
        self._kick.set()
        await fut
        return first

    async def _flush_loop(self) -> None:
        while True:
            await self._kick.wait()
            self._kick.clear()
            if not self._pending:
                if self._closed:
                    return
                continue
            frames, self._pending = self._pending, []
            nbytes, self._pending_bytes = self._pending_bytes, 0
            upto = self._next
            waiters, self._waiters = self._waiters, []
            started = time.perf_counter()
            try:
                await asyncio.to_thread(self._write_sync, frames, nbytes, upto)
            except BaseException as exc:  # the disk failed: fail every waiter, refuse new appends
                self._failed = exc
                log.error("journal.write_failed", error=str(exc), entries=len(frames))
                for _, fut in waiters:
                    if not fut.done():
                        fut.set_exception(JournalError(f"journal write failed: {exc}"))
                raise
            telemetry.JOURNAL_FSYNC_SECONDS.observe(time.perf_counter() - started)
            telemetry.JOURNAL_GROUP_ENTRIES.observe(len(frames))
            self._durable = upto
            for _, fut in waiters:
                if not fut.done():
                    fut.set_result(None)
            self._update_gauges()
            async with self._advanced:
                self._advanced.notify_all()
            if self._pending:
                self._kick.set()

    def _write_sync(self, frames: list[bytes], nbytes: int, upto: int) -> None:
        # A group larger than a segment is split across segments: one segment holding a
        # whole budget's worth could never be released (the active segment is kept), and
        # intake would stay refused forever once consumers had passed it.
        offset = upto - len(frames)
        chunk: list[bytes] = []
        chunk_bytes = 0
        for f in frames:
            active = self._segments[-1]
            if active.size + chunk_bytes > 0 and active.size + chunk_bytes + len(f) > self.segment_bytes:
                if chunk:
                    self._write_chunk_sync(chunk, chunk_bytes, offset + len(chunk))
                    offset += len(chunk)
                    chunk, chunk_bytes = [], 0
                self._new_segment_sync(offset)
            chunk.append(f)
            chunk_bytes += len(f)
        if chunk:
            self._write_chunk_sync(chunk, chunk_bytes, upto)

    def _write_chunk_sync(self, frames: list[bytes], nbytes: int, upto: int) -> None:
        active = self._segments[-1]
        assert self._fd is not None
        data = b"".join(frames)
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        if self.fsync:
            os.fdatasync(self._fd)
        with self._seg_lock:
            active.size += nbytes
            active.end = upto
            self._disk_bytes += nbytes

    # --- consumers --------------------------------------------------------------------------

    def reader(self, name: str, start: int | None = None) -> JournalReader:
        """A reader positioned at the consumer's committed cursor (or ``start``)."""
        if name not in self._registered:
            self.register(name)
        return JournalReader(self, self.cursor(name) if start is None else start)

    async def wait_for(self, offset: int, timeout: float | None) -> bool:
        """Wait until ``end_offset > offset``; False on timeout or close."""
        if self._durable > offset:
            return True
        try:
            async with asyncio.timeout(timeout), self._advanced:
                await self._advanced.wait_for(lambda: self._durable > offset or self._closed)
        except TimeoutError:
            return False
        return self._durable > offset

    async def commit(self, name: str, offset: int) -> None:
        """Persist that consumer ``name`` needs nothing below ``offset``; idempotent.

        Cursors never move back. Segments every registered cursor has passed are deleted.
        """
        if offset > self._durable:
            raise ValueError(f"cursor {name}: cannot commit {offset} beyond the journal end {self._durable}")
        if offset <= self._cursors.get(name, -1):
            return
        async with self._commit_lock:
            await asyncio.to_thread(self._write_cursor_sync, name, offset)
            self._cursors[name] = offset
            await asyncio.to_thread(self._release_sync)
        self._update_gauges()

    def may_hold_kind(self, kind: int, start: int) -> bool:
        """False only if no entry at or after ``start`` begins with byte ``kind``.

        Lets a consumer of a rare kind of entry (the quarantine) skip the rest unread.
        """
        return start < self._kinds_known_from or self._last_of_kind.get(kind, -1) >= start

    def _write_cursor_sync(self, name: str, offset: int) -> None:
        path = self.dir / "cursors" / name
        tmp = path.with_name(f".{name}.tmp")
        with tmp.open("w") as f:
            f.write(f"{offset}\n")
            f.flush()
            if self.fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
        if self.fsync:
            fsync_dir(path.parent)

    def _release_sync(self) -> None:
        if not self._registered:
            return
        low = min(self._cursors.get(n, self.start_offset) for n in self._registered)
        with self._seg_lock:
            segs = self._segments
            n = 0
            while n < len(segs) - 1 and segs[n].end <= low:
                n += 1
            gone, self._segments = segs[:n], segs[n:]
            self._disk_bytes -= sum(seg.size for seg in gone)
        for seg in gone:
            seg.path.unlink(missing_ok=True)
            log.debug("journal.segment_deleted", segment=seg.path.name, end=seg.end)

    def _update_gauges(self) -> None:
        telemetry.JOURNAL_BYTES.set(self.bytes_used)
        telemetry.JOURNAL_END_OFFSET.set(self._durable)
        for name in self._registered:
            telemetry.JOURNAL_LAG.labels(cursor=name).set(self.lag(name))

    def _locate(self, offset: int) -> tuple[_Segment, bool]:
        """The segment holding ``offset``, and whether it is the active (newest) one."""
        segs = self._segments
        for i in range(len(segs) - 1, -1, -1):
            if segs[i].base <= offset:
                return segs[i], i == len(segs) - 1
        raise JournalError(f"offset {offset} is older than the journal's oldest entry {self.start_offset}")


class JournalReader:
    """Sequential reader over durable entries; each consumer owns one.

    Reads run in a thread. The reader keeps its segment open and its byte
    position, so sequential reads never rescan a segment, and it fetches
    frames in large chunks.
    """

    def __init__(self, journal: Journal, start: int) -> None:
        self.journal = journal
        self.next_offset = start
        self._fd: int | None = None
        self._file_base = -1
        self._file_end = -1
        self._pos = 0  # byte position of the frame of _pos_offset in the open segment
        self._pos_offset = -1
        self._avg_frame = 2048

    async def read(
        self,
        max_entries: int = 1000,
        timeout: float | None = None,
        max_bytes: int = 8 * 1024 * 1024,
        kind: int | None = None,
    ) -> list[tuple[int, bytes]]:
        """Up to ``max_entries`` durable entries from ``next_offset``; [] on timeout.

        With ``kind``, a range that holds no entry of that kind is skipped without
        reading it: the call returns [] and ``next_offset`` moves past it. Entries of
        other kinds may still be returned when the range holds one of ``kind``.
        """
        if not await self.journal.wait_for(self.next_offset, timeout):
            return []
        upto = self.journal.end_offset
        if kind is not None and not self.journal.may_hold_kind(kind, self.next_offset):
            self.next_offset = max(self.next_offset, upto)
            return []
        entries = await asyncio.to_thread(self._read_sync, upto, max_entries, max_bytes)
        if entries:
            self.next_offset = entries[-1][0] + 1
        return entries

    def _open_at(self, offset: int) -> None:
        seg, active = self.journal._locate(offset)
        self.close()
        fd = os.open(seg.path, os.O_RDONLY)
        pos = 0
        current = seg.base
        while current < offset:
            head = os.pread(fd, _HEADER.size, pos)
            if len(head) < _HEADER.size:
                os.close(fd)
                raise JournalError(f"journal entry {current} missing from {seg.path}")
            length, _, _ = _HEADER.unpack(head)
            pos += _HEADER.size + length
            current += 1
        self._fd = fd
        self._file_base = seg.base
        self._file_end = -1 if active else seg.end
        self._pos = pos
        self._pos_offset = offset

    def _damaged(self, offset: int, got: int) -> JournalError:
        return JournalError(
            f"journal entry {offset} is damaged (read offset {got}); "
            "the segment was modified outside trailkeeper"
        )

    def _read_sync(self, upto: int, max_entries: int, max_bytes: int) -> list[tuple[int, bytes]]:
        out: list[tuple[int, bytes]] = []
        total = 0
        offset = self.next_offset
        hsize = _HEADER.size
        unpack_from = _HEADER.unpack_from
        while offset < upto and len(out) < max_entries and total < max_bytes:
            stale = self._pos_offset != offset or (self._file_end != -1 and offset >= self._file_end)
            if self._fd is None or stale:
                self._open_at(offset)
            assert self._fd is not None
            want = min(_READ_CHUNK, max(64 * 1024, (max_entries - len(out)) * self._avg_frame))
            buf = os.pread(self._fd, want, self._pos)
            if len(buf) < hsize:
                # The active segment was rolled over under us: go on in the next segment.
                seg, _ = self.journal._locate(offset)
                if seg.base == self._file_base:
                    raise JournalError(f"journal entry {offset} missing from {seg.path}")
                self.close()
                continue
            i, n = 0, len(buf)
            # Only entries below ``upto`` are durable; bytes after them may be a write in progress.
            while i + hsize <= n and offset < upto and len(out) < max_entries and total < max_bytes:
                length, got, crc = unpack_from(buf, i)
                end = i + hsize + length
                if end > n:
                    break
                payload = buf[i + hsize : end]
                if got != offset or _crc(got, payload) != crc:
                    raise self._damaged(offset, got)
                out.append((offset, payload))
                total += length
                offset += 1
                i = end
            if i == 0:
                # One durable frame larger than the chunk: read it whole.
                length, got, crc = unpack_from(buf, 0)
                if length > _MAX_ENTRY:
                    raise self._damaged(offset, got)
                whole = os.pread(self._fd, hsize + length, self._pos)
                payload = whole[hsize:]
                if got != offset or len(payload) != length or _crc(got, payload) != crc:
                    raise self._damaged(offset, got)
                out.append((offset, payload))
                total += length
                offset += 1
                i = hsize + length
            self._pos += i
            self._pos_offset = offset
        if out:
            self._avg_frame = max(64, (total + hsize * len(out)) // len(out))
        return out

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
