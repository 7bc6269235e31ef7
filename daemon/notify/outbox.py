"""The durable outbox of one subscription: a SQLite database of its messages.

States: ``pending`` (to deliver), ``sent`` (kept for ``dedupe_window`` so a
replayed journal entry or a resent event is not delivered twice), ``dead``
(parked in the dead-letter store after its maximum age or a permanent refusal).

Inserts are committed with ``synchronous=NORMAL``: in WAL mode a committed
transaction survives the process being killed (it is in the operating system's
cache), but not yet power loss. ``sync`` makes everything committed so far
power-safe (fsync); the notifier calls it before it commits its journal cursor,
so until then the journal itself still holds every event behind those messages.
Keeping the fsync off the insert keeps it off the ingest-to-delivery path. A
``sent`` mark lost to power loss only delivers that message again, with the
same id (at-least-once); parking in the dead-letter store is fsynced at once.

Every call runs on the outbox's own thread, so a slow disk or a busy dead
subscription never waits in line with another subscription's outbox.
Other processes (the ``notify dlq`` commands) may open the same file: SQLite's
WAL mode and busy timeout make that safe.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    state TEXT NOT NULL,
    created REAL NOT NULL,
    ingest_ms INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    done_at REAL,
    body BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_state ON messages (state, seq);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

PENDING = "pending"
SENT = "sent"
DEAD = "dead"


@dataclass(slots=True)
class OutMessage:
    """One message to deliver. ``id`` is stable across retries and restarts."""

    seq: int
    id: str
    created: float
    ingest_ms: int
    attempts: int
    body: dict[str, Any]
    state: str = PENDING
    last_error: str | None = None
    done_at: float | None = None


def outbox_path(state_dir: Path, topic: str, subscription: str) -> Path:
    return state_dir / "notify" / f"{topic}.{subscription}.sqlite"


class Outbox:
    """Durable queue of one subscription. Safe to use from one event loop; methods may raise
    sqlite3.Error when the disk fails."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"outbox-{path.stem}")

    def _open_sync(self) -> sqlite3.Connection:
        if self._db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.executescript(_SCHEMA)
            self._db = db
        return self._db

    def _run(self, fn: Any, *args: Any) -> Any:
        with self._lock:
            return fn(self._open_sync(), *args)

    async def _call(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._run, fn, *args)

    async def open(self) -> None:
        await self._call(lambda db: None)

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
        self._pool.shutdown(wait=False)

    async def sync(self) -> None:
        """Make every committed change power-safe: checkpoint (SQLite syncs the WAL first and
        the database after) and fsync the WAL file, which covers a checkpoint a reader held back."""

        def run(db: sqlite3.Connection) -> None:
            db.execute("PRAGMA wal_checkpoint(PASSIVE)")
            wal = self.path.with_name(self.path.name + "-wal")
            try:
                fd = os.open(wal, os.O_RDONLY)
            except FileNotFoundError:
                return
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

        await self._call(run)

    # --- writes -----------------------------------------------------------------------------

    async def add(self, messages: list[tuple[str, int, dict[str, Any]]]) -> int:
        """Insert (id, ingest_ms, body) rows (crash-safe; power-safe after ``sync``); ids already
        present are skipped, which makes a replay after a crash harmless. Returns how many were new."""

        def run(db: sqlite3.Connection) -> int:
            now = time.time()
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("BEGIN IMMEDIATE")
            try:
                before = db.total_changes
                db.executemany(
                    "INSERT OR IGNORE INTO messages (id, state, created, ingest_ms, body) VALUES (?,?,?,?,?)",
                    [(mid, PENDING, now, ims, orjson.dumps(body)) for mid, ims, body in messages],
                )
                added = db.total_changes - before
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            return added

        return int(await self._call(run)) if messages else 0

    async def mark_sent(self, seq: int) -> None:
        def run(db: sqlite3.Connection) -> None:
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute(
                "UPDATE messages SET state=?, done_at=?, body=x'' WHERE seq=? AND state=?",
                (SENT, time.time(), seq, PENDING),
            )

        await self._call(run)

    async def mark_attempt(self, seq: int, attempts: int, error: str) -> None:
        def run(db: sqlite3.Connection) -> None:
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("UPDATE messages SET attempts=?, last_error=? WHERE seq=?", (attempts, error, seq))

        await self._call(run)

    async def park(self, seq: int, attempts: int, error: str) -> None:
        """Move a message to the dead-letter store (durably: it must not come back as pending
        and must not vanish)."""

        def run(db: sqlite3.Connection) -> None:
            db.execute("PRAGMA synchronous=FULL")
            db.execute(
                "UPDATE messages SET state=?, attempts=?, last_error=?, done_at=? WHERE seq=? AND state=?",
                (DEAD, attempts, error, time.time(), seq, PENDING),
            )

        await self._call(run)

    async def replay(self, ids: list[str] | None = None) -> int:
        """Move dead messages (all, or those ids) back to pending with a fresh age. Returns the count."""
        return int(await asyncio.to_thread(replay_sync, self.path, ids, self._run))

    async def prune(self, older_than: float) -> int:
        """Forget sent messages delivered before ``older_than`` (Unix time)."""

        def run(db: sqlite3.Connection) -> int:
            cur = db.execute("DELETE FROM messages WHERE state=? AND done_at < ?", (SENT, older_than))
            return cur.rowcount

        return int(await self._call(run))

    # --- reads ------------------------------------------------------------------------------

    async def pending(self, after_seq: int, limit: int) -> list[OutMessage]:
        def run(db: sqlite3.Connection) -> list[OutMessage]:
            rows = db.execute(
                "SELECT seq, id, created, ingest_ms, attempts, body FROM messages "
                "WHERE state=? AND seq>? ORDER BY seq LIMIT ?",
                (PENDING, after_seq, limit),
            ).fetchall()
            return [OutMessage(r[0], r[1], r[2], r[3], r[4], orjson.loads(r[5])) for r in rows]

        result: list[OutMessage] = await self._call(run)
        return result

    async def counts(self) -> dict[str, int]:
        def run(db: sqlite3.Connection) -> dict[str, int]:
            return {s: n for s, n in db.execute("SELECT state, COUNT(*) FROM messages GROUP BY state")}

        result: dict[str, int] = await self._call(run)
        return result

    async def backlog(self) -> tuple[int, int]:
        """(pending, dead): what waits for delivery and what sits in the dead-letter store.
        Two index-only counts, cheap enough to run every second."""

        def run(db: sqlite3.Connection) -> tuple[int, int]:
            return _count(db, PENDING), _count(db, DEAD)

        result: tuple[int, int] = await self._call(run)
        return result

    async def get_meta(self, key: str) -> str | None:
        def run(db: sqlite3.Connection) -> str | None:
            row = db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
            return None if row is None else str(row[0])

        result: str | None = await self._call(run)
        return result

    async def set_meta(self, key: str, value: str) -> None:
        def run(db: sqlite3.Connection) -> None:
            db.execute("PRAGMA synchronous=FULL")
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

        await self._call(run)


def _count(db: sqlite3.Connection, state: str) -> int:
    return int(db.execute("SELECT COUNT(*) FROM messages WHERE state=?", (state,)).fetchone()[0])


# --- offline access (the CLI), usable while the daemon runs ---------------------------------


def _connect_existing(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, timeout=30, isolation_level=None)
    db.execute("PRAGMA synchronous=FULL")
    db.executescript(_SCHEMA)
    return db


def list_dead_sync(path: Path) -> list[OutMessage]:
    db = _connect_existing(path)
    try:
        rows = db.execute(
            "SELECT seq, id, created, ingest_ms, attempts, body, last_error, done_at FROM messages "
            "WHERE state=? ORDER BY seq",
            (DEAD,),
        ).fetchall()
    finally:
        db.close()
    return [OutMessage(r[0], r[1], r[2], r[3], r[4], orjson.loads(r[5]), DEAD, r[6], r[7]) for r in rows]


def replay_sync(path: Path, ids: list[str] | None, runner: Any = None) -> int:
    """Dead -> pending with a fresh age and attempt count. ``ids`` None replays all."""

    def run(db: sqlite3.Connection) -> int:
        now = time.time()
        if ids is None:
            cur = db.execute(
                "UPDATE messages SET state=?, created=?, attempts=0, done_at=NULL WHERE state=?",
                (PENDING, now, DEAD),
            )
            return cur.rowcount
        total = 0
        for mid in ids:
            cur = db.execute(
                "UPDATE messages SET state=?, created=?, attempts=0, done_at=NULL WHERE state=? AND id=?",
                (PENDING, now, DEAD, mid),
            )
            total += cur.rowcount
        return total

    if runner is not None:
        return int(runner(run))
    db = _connect_existing(path)
    try:
        return run(db)
    finally:
        db.close()


def purge_sync(path: Path) -> int:
    """Delete every message of the dead-letter store of one outbox (durably). Returns the count.
    Pending and sent messages are untouched."""
    db = _connect_existing(path)
    try:
        return int(db.execute("DELETE FROM messages WHERE state=?", (DEAD,)).rowcount)
    finally:
        db.close()
