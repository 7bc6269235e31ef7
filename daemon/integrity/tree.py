"""The persistent Merkle tree of one (tracker, writer), and the archiver's hook into it.

On disk, under ``<state_dir>/<tracker>/<writer>/``:

- ``leaves.bin``: every leaf hash, 32 bytes each, append-only, so an inclusion or
  consistency proof for any old event needs no archive reads;
- ``files.jsonl``: one line per stored file (key, SHA-256 of the stored bytes,
  record count, first leaf, the file's own Merkle root, event time range) and
  the tree's frontier after it, so the root is known without rehashing.

Leaves are written and fsynced before the file line; on load a file line is
the commit point and extra leaves from a crash in between are cut off.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

from daemon.archive.archiver import StoredFile
from daemon.durable import fsync_dir
from daemon.integrity import merkle
from daemon.telemetry import get_logger

log = get_logger("integrity")


class TreeStateError(Exception):
    """The tree state on disk is inconsistent; the message names the file and the fix."""


@dataclass(frozen=True, slots=True)
class FileEntry:
    key: str
    sha256: str
    size: int
    records: int
    first_leaf: int
    merkle_root: str  # hex root of this file's records alone
    oldest_event: str | None
    newest_event: str | None

    @property
    def last_leaf(self) -> int:
        return self.first_leaf + self.records - 1

    def to_digest(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["last_leaf"] = self.last_leaf
        return doc


class TreeLog:
    """One append-only log. Blocking methods end in ``_sync``; the recorder runs them in a thread."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.leaves_path = directory / "leaves.bin"
        self.files_path = directory / "files.jsonl"
        self.files: list[FileEntry] = []
        self.by_key: dict[str, FileEntry] = {}
        self.frontier = merkle.CompactRange()
        self.lock = asyncio.Lock()

    @property
    def size(self) -> int:
        return self.frontier.size

    def load_sync(self) -> TreeLog:
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.files_path.exists():
            data = self.files_path.read_bytes()
            good = 0
            for line in data.split(b"\n"):
                if not line:
                    break
                try:
                    doc = orjson.loads(line)
                except orjson.JSONDecodeError:
                    break  # a line cut short by a crash: it was never committed
                frontier = doc.pop("frontier")
                entry = FileEntry(**doc)
                self.files.append(entry)
                self.by_key[entry.key] = entry
                self.frontier = merkle.CompactRange.from_json(frontier)
                good += len(line) + 1
            if good != len(data):
                with self.files_path.open("r+b") as f:
                    f.truncate(good)
                    os.fsync(f.fileno())
        expected = self.size * merkle.HASH_SIZE
        have = self.leaves_path.stat().st_size if self.leaves_path.exists() else 0
        if have < expected:
            raise TreeStateError(
                f"{self.leaves_path} holds {have // 32} leaf hashes but {self.files_path} lists "
                f"{self.size}; the state is damaged: restore it from backup or move the directory "
                "away to start a new tree (validation will show the break)"
            )
        if have > expected:
            with self.leaves_path.open("r+b") as f:
                f.truncate(expected)
                os.fsync(f.fileno())
        return self

    def append_sync(
        self,
        key: str,
        sha256: str,
        size: int,
        leaves: Sequence[bytes],
        oldest: str | None,
        newest: str | None,
        leaves_root: bytes | None = None,
    ) -> FileEntry:
        """Add a stored file's leaves. Idempotent per key; raises TreeStateError if the
        same key comes back with different bytes."""
        known = self.by_key.get(key)
        if known is not None:
            if known.sha256 != sha256 or known.records != len(leaves):
                raise TreeStateError(
                    f"file {key} was recorded with sha256 {known.sha256} and now arrives with "
                    f"{sha256}; stored evidence must not change"
                )
            return known
        entry = FileEntry(
            key,
            sha256,
            size,
            len(leaves),
            self.size,
            (leaves_root if leaves_root is not None else merkle.root_of(leaves)).hex(),
            oldest,
            newest,
        )
        frontier = self.frontier.copy()
        frontier.extend(leaves)
        new_file = not self.leaves_path.exists()
        with self.leaves_path.open("ab") as f:
            if f.tell() != self.size * merkle.HASH_SIZE:
                f.truncate(self.size * merkle.HASH_SIZE)
            f.write(b"".join(leaves))
            f.flush()
            os.fsync(f.fileno())
        line = orjson.dumps({**asdict(entry), "frontier": frontier.to_json()}) + b"\n"
        with self.files_path.open("ab") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        if new_file:
            fsync_dir(self.dir)
        self.files.append(entry)
        self.by_key[key] = entry
        self.frontier = frontier
        return entry

    def leaves_sync(self, start: int, end: int) -> list[bytes]:
        with self.leaves_path.open("rb") as f:
            f.seek(start * merkle.HASH_SIZE)
            data = f.read((end - start) * merkle.HASH_SIZE)
        return [data[i : i + 32] for i in range(0, len(data), 32)]

    def root_at_sync(self, size: int) -> bytes:
        return merkle.root_of(self.leaves_sync(0, size))

    def find_leaf_sync(self, leaf: bytes) -> int | None:
        """Index of the first leaf equal to ``leaf``, scanning the leaf file."""
        if not self.leaves_path.exists():
            return None
        data = self.leaves_path.read_bytes()[: self.size * 32]
        pos = data.find(leaf)
        while pos >= 0 and pos % 32:
            pos = data.find(leaf, pos + 1)
        return pos // 32 if pos >= 0 else None

    def file_of_leaf(self, index: int) -> FileEntry | None:
        lo, hi = 0, len(self.files)
        while lo < hi:
            mid = (lo + hi) // 2
            if self.files[mid].last_leaf < index:
                lo = mid + 1
            else:
                hi = mid
        if lo < len(self.files) and self.files[lo].first_leaf <= index:
            return self.files[lo]
        return None


leaf_hashes = merkle.leaf_hashes


class IntegrityRecorder:
    """Feeds stored archive files into per-tracker trees.

    ``file_stored`` is the archiver's listener: call it after a file is durable in
    its store. At-least-once calls are fine (idempotent per key).
    """

    def __init__(self, state_dir: Path, writer: str) -> None:
        self.state_dir = state_dir
        self.writer = writer
        self._trees: dict[str, TreeLog] = {}
        self._open_lock = asyncio.Lock()

    async def tree(self, tracker: str) -> TreeLog:
        async with self._open_lock:
            t = self._trees.get(tracker)
            if t is None:
                t = TreeLog(self.state_dir / tracker / self.writer)
                await asyncio.to_thread(t.load_sync)
                self._trees[tracker] = t
            return t

    async def on_stored(self, stored: StoredFile) -> None:
        """The archiver listener form of ``file_stored``."""
        await self.file_stored(
            stored.delivery,
            stored.key,
            stored.sha256,
            stored.size,
            stored.records,
            stored.oldest_time,
            stored.newest_time,
            stored.leaves,
            stored.leaves_root,
        )

    async def file_stored(
        self,
        tracker: str,
        key: str,
        sha256: str,
        size: int,
        records: Sequence[bytes],
        oldest: str | None,
        newest: str | None,
        leaves: list[bytes] | None = None,
        leaves_root: bytes | None = None,
    ) -> FileEntry:
        """Record a durably stored file. May raise TreeStateError or OSError (disk).

        ``leaves`` and ``leaves_root``, when the archiver's build computed them, must be
        the leaf hashes of ``records`` and their root; otherwise they are computed here.
        """
        tree = await self.tree(tracker)
        async with tree.lock:
            if leaves is None or len(leaves) != len(records):
                leaves = await asyncio.to_thread(leaf_hashes, records)
                leaves_root = None
            return await asyncio.to_thread(
                tree.append_sync, key, sha256, size, leaves, oldest, newest, leaves_root
            )
