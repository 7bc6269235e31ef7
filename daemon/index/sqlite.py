"""The embedded index: one SQLite file in WAL mode.

One writer connection (the index consumer and archive listeners) and a small
pool of read-only connections (queries), each on its own thread via aiosqlite,
so no SQLite call ever runs on the event loop and readers never wait for writes.
Every filter column has an index on ``(column, time, id)``: a filtered page is
one backward index range scan that stops after ``limit + 1`` rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import aiosqlite

from daemon.events import CANONICAL_FIELDS
from daemon.index.base import (
    ALL_COLUMNS,
    LIST_COLUMNS,
    IndexRow,
    IndexUnavailable,
    Location,
    Page,
    StoredEvent,
    row_to_item,
)
from daemon.index.query import EXACT_FILTERS, Query, build_select, encode_cursor

_TEXT_COLUMNS = ", ".join(f"{f} TEXT" for f in CANONICAL_FIELDS if f not in ("id", "time"))

SCHEMA = [
    f"""CREATE TABLE IF NOT EXISTS events (
        id TEXT NOT NULL UNIQUE,
        time TEXT NOT NULL,
        {_TEXT_COLUMNS},
        category TEXT,
        severity TEXT,
        rules TEXT,
        received_ms INTEGER NOT NULL,
        journal_offset INTEGER NOT NULL,
        source TEXT,
        record BLOB NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS events_time ON events (time, id)",
    "CREATE INDEX IF NOT EXISTS events_received ON events (received_ms)",
    *(
        f"CREATE INDEX IF NOT EXISTS events_{col} ON events ({col}, time, id)"
        for col in sorted(set(EXACT_FILTERS.values()))
    ),
    """CREATE TABLE IF NOT EXISTS locations (
        event_id TEXT NOT NULL,
        tracker TEXT NOT NULL,
        store TEXT NOT NULL,
        key TEXT NOT NULL,
        leaf INTEGER NOT NULL,
        stored_ms INTEGER NOT NULL,
        PRIMARY KEY (event_id, tracker, key)
    )""",
    "CREATE INDEX IF NOT EXISTS locations_stored ON locations (stored_ms)",
]

_INSERT = (
    f"INSERT OR IGNORE INTO events ({', '.join(ALL_COLUMNS)}) VALUES ({', '.join('?' for _ in ALL_COLUMNS)})"
)
_PRUNE_CHUNK = 10_000


class SqliteIndex:
    """The default index backend. ``open`` creates the file, its directory and schema."""

    name = "sqlite"

    def __init__(self, path: Path, readers: int = 4) -> None:
        self.path = path
        self.readers = readers
        self._writer: aiosqlite.Connection | None = None
        self._pool: asyncio.Queue[aiosqlite.Connection] = asyncio.Queue()
        self._all_readers: list[aiosqlite.Connection] = []
        self._write_lock = asyncio.Lock()

    async def open(self) -> None:
        if self._writer is not None:
            return
        try:
            await asyncio.to_thread(self.path.parent.mkdir, parents=True, exist_ok=True)
            writer = await aiosqlite.connect(self.path)
            # Full sync: the consumer commits its journal cursor after a write, so a
            # write lost in a power cut would be a silent hole in query results.
            # A large page cache keeps the filter indexes' upper levels in memory: without it
            # each batch rewrites the same index pages through the WAL again and again.
            for pragma in (
                "journal_mode=WAL",
                "synchronous=FULL",
                "busy_timeout=10000",
                "cache_size=-65536",
                "temp_store=MEMORY",
            ):
                await writer.execute(f"PRAGMA {pragma}")
            for statement in SCHEMA:
                await writer.execute(statement)
            await writer.commit()
            self._writer = writer
            for _ in range(self.readers):
                reader = await aiosqlite.connect(self.path)
                await reader.execute("PRAGMA query_only=1")
                await reader.execute("PRAGMA busy_timeout=10000")
                await reader.execute("PRAGMA cache_size=-16384")
                self._all_readers.append(reader)
                self._pool.put_nowait(reader)
        except (sqlite3.Error, OSError) as exc:
            await self.close()
            raise IndexUnavailable(f"cannot open the SQLite index {self.path}: {exc}") from exc

    async def close(self) -> None:
        for conn in self._all_readers:
            with contextlib.suppress(Exception):
                await conn.close()
        self._all_readers.clear()
        self._pool = asyncio.Queue()
        if self._writer is not None:
            with contextlib.suppress(Exception):
                await self._writer.close()
            self._writer = None

    def _w(self) -> aiosqlite.Connection:
        if self._writer is None:
            raise IndexUnavailable(f"the SQLite index {self.path} is not open")
        return self._writer

    @contextlib.asynccontextmanager
    async def _reader(self) -> AsyncIterator[aiosqlite.Connection]:
        if not self._all_readers:
            raise IndexUnavailable(f"the SQLite index {self.path} is not open")
        conn = await self._pool.get()
        try:
            yield conn
        except sqlite3.Error as exc:
            raise IndexUnavailable(f"SQLite index {self.path}: {exc}") from exc
        finally:
            self._pool.put_nowait(conn)

    async def write(self, rows: Sequence[IndexRow]) -> int:
        values = [r.values() for r in rows]
        if not values:
            return 0
        w = self._w()
        async with self._write_lock:
            try:
                before = w.total_changes
                await w.executemany(_INSERT, values)
                await w.commit()
                return w.total_changes - before
            except sqlite3.Error as exc:
                with contextlib.suppress(sqlite3.Error):
                    await w.rollback()
                raise IndexUnavailable(f"SQLite index {self.path}: write failed: {exc}") from exc

    async def add_locations(self, locations: Sequence[Location]) -> None:
        if not locations:
            return
        w = self._w()
        async with self._write_lock:
            try:
                await w.executemany(
                    "INSERT OR IGNORE INTO locations (event_id, tracker, store, key, leaf, stored_ms) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    [
                        (loc.event_id, loc.tracker, loc.store, loc.key, loc.leaf, loc.stored_ms)
                        for loc in locations
                    ],
                )
                await w.commit()
            except sqlite3.Error as exc:
                with contextlib.suppress(sqlite3.Error):
                    await w.rollback()
                raise IndexUnavailable(f"SQLite index {self.path}: location write failed: {exc}") from exc

    async def search(self, query: Query) -> Page:
        sql = build_select(query, ", ".join(LIST_COLUMNS), lambda _i: "?")
        async with self._reader() as conn, conn.execute(sql.text, sql.args) as cur:
            rows = list(await cur.fetchall())
        items = [row_to_item(r) for r in rows[: query.limit]]
        more = len(rows) > query.limit
        cursor = encode_cursor(items[-1]["time"], items[-1]["id"]) if more and items else None
        return Page(items, cursor)

    async def get(self, event_id: str) -> StoredEvent | None:
        async with self._reader() as conn:
            async with conn.execute(
                f"SELECT {', '.join(ALL_COLUMNS)} FROM events WHERE id = ?", (event_id,)
            ) as cur:
                row = await cur.fetchone()
            if row is None:
                return None
            async with conn.execute(
                "SELECT event_id, tracker, store, key, leaf, stored_ms FROM locations "
                "WHERE event_id = ? ORDER BY stored_ms, tracker, key",
                (event_id,),
            ) as cur:
                locs = [Location(*r) for r in await cur.fetchall()]
        n = len(LIST_COLUMNS)
        return StoredEvent(row_to_item(row[:n]), bytes(row[n + 2]), int(row[n]), str(row[n + 1]), locs)

    async def prune(self, before_ms: int) -> int:
        w = self._w()
        deleted = 0
        try:
            while True:
                # Chunks keep each write transaction short, so ingest into the index never stalls.
                async with self._write_lock:
                    cur = await w.execute(
                        "DELETE FROM events WHERE rowid IN "
                        "(SELECT rowid FROM events WHERE received_ms < ? LIMIT ?)",
                        (before_ms, _PRUNE_CHUNK),
                    )
                    n = cur.rowcount
                    await w.commit()
                deleted += n
                if n < _PRUNE_CHUNK:
                    break
            async with self._write_lock:
                await w.execute("DELETE FROM locations WHERE stored_ms < ?", (before_ms,))
                await w.commit()
        except sqlite3.Error as exc:
            raise IndexUnavailable(f"SQLite index {self.path}: prune failed: {exc}") from exc
        return deleted

    async def count(self) -> int:
        async with self._reader() as conn, conn.execute("SELECT count(*) FROM events") as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def check(self) -> None:
        async with self._reader() as conn, conn.execute("SELECT 1") as cur:
            await cur.fetchone()
