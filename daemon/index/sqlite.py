"""The embedded index: one SQLite file in WAL mode.

One writer connection (the index consumer and archive listeners) and a small
pool of read-only connections (queries), each on its own thread via aiosqlite,
so no SQLite call ever runs on the event loop and readers never wait for writes.
Every filter column has an index on ``(column, time, id, tenant)``: a filtered page
is one backward index range scan that stops after ``limit + 1`` rows.

An event is identified by ``(id, tenant)``. Files written before that (schema 1,
keyed by id alone, ``PRAGMA user_version`` 0) are migrated in place on open, in one
transaction: a crash midway leaves the old schema, and the next open migrates again.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import aiosqlite

from daemon.events import CANONICAL_FIELDS
from daemon.index.base import (
    ALL_COLUMNS,
    ITEM_COLUMNS,
    NO_TENANT,
    TEXT_COLUMNS,
    IndexRefused,
    IndexRow,
    IndexUnavailable,
    Location,
    Page,
    StoredEvent,
    page_of,
    stored_event,
)
from daemon.index.query import EXACT_FILTERS, Query, build_select
from daemon.index.values import column_or_none, column_text, exact_json
from daemon.integrity.merkle import leaf_hash
from daemon.telemetry import get_logger

log = get_logger("index")

SCHEMA_VERSION = 2  # PRAGMA user_version; 0 is schema 1 (or a new, empty file)

_TEXT_COLUMNS = ", ".join(
    f"{f} TEXT{' NOT NULL' if f == 'tenant' else ''}" for f in CANONICAL_FIELDS if f not in ("id", "time")
)

_TABLES = [
    f"""CREATE TABLE IF NOT EXISTS events (
        id TEXT NOT NULL,
        time TEXT NOT NULL,
        {_TEXT_COLUMNS},
        category TEXT,
        severity TEXT,
        rules TEXT,
        received_ms INTEGER NOT NULL,
        journal_offset INTEGER NOT NULL,
        source TEXT,
        record BLOB NOT NULL,
        exact BLOB,
        UNIQUE (id, tenant)
    )""",
    """CREATE TABLE IF NOT EXISTS locations (
        event_id TEXT NOT NULL,
        record_hash BLOB NOT NULL,
        tracker TEXT NOT NULL,
        store TEXT NOT NULL,
        key TEXT NOT NULL,
        leaf INTEGER NOT NULL,
        stored_ms INTEGER NOT NULL,
        PRIMARY KEY (event_id, record_hash, tracker, key)
    )""",
]
_INDEXES = [
    "CREATE INDEX IF NOT EXISTS events_time ON events (time, id, tenant)",
    "CREATE INDEX IF NOT EXISTS events_received ON events (received_ms)",
    *(
        f"CREATE INDEX IF NOT EXISTS events_{col} ON events "
        f"({col}, time, id{'' if col == 'tenant' else ', tenant'})"
        for col in sorted(set(EXACT_FILTERS.values()))
    ),
    "CREATE INDEX IF NOT EXISTS locations_stored ON locations (stored_ms)",
]
SCHEMA = [*_TABLES, *_INDEXES]

_INSERT = (
    f"INSERT INTO events ({', '.join(ALL_COLUMNS)}) VALUES ({', '.join('?' for _ in ALL_COLUMNS)}) "
    "ON CONFLICT (id, tenant) DO NOTHING"
)
_GET_COLUMNS = ", ".join((*ITEM_COLUMNS, "journal_offset", "record"))
_PRUNE_CHUNK = 10_000

# Errors about the rows, not the database: the same rows fail again (bisect, park).
# Everything else from sqlite3 (I/O, disk full, locked, corrupt) is the database failing.
_REFUSALS: tuple[type[BaseException], ...] = (
    sqlite3.IntegrityError,
    sqlite3.DataError,
    sqlite3.InterfaceError,
    sqlite3.ProgrammingError,  # a value of a type SQLite cannot bind
    ValueError,  # UnicodeEncodeError: text that is not UTF-8
    TypeError,
    OverflowError,  # an integer over 64 bits
)

_ANY_FAILURE: tuple[type[BaseException], ...] = (sqlite3.Error, *_REFUSALS)


def _exact_of(*values: str | None) -> bytes | None:
    """SQL function for the migration: ``exact`` of a schema-1 row's TEXT_COLUMNS."""
    exact = {
        name: value
        for name, value in zip(TEXT_COLUMNS, values, strict=True)
        if value is not None and column_text(value) != value
    }
    return exact_json(exact) if exact else None


def _migrated(column: str) -> str:
    """The expression that copies ``column`` of a schema-1 row into schema 2."""
    if column == "exact":
        return f"tk_exact({', '.join(TEXT_COLUMNS)})"
    if column == "tenant":
        return f"tk_column(COALESCE(tenant, '{NO_TENANT}'))"
    if column in TEXT_COLUMNS:
        return f"tk_column({column})"
    return column


def _leaf_hash_or_none(record: bytes | None) -> bytes | None:
    return None if record is None else leaf_hash(bytes(record))


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
            self._writer = writer
            await self._schema(writer)
            for _ in range(self.readers):
                reader = await aiosqlite.connect(self.path)
                await reader.execute("PRAGMA query_only=1")
                await reader.execute("PRAGMA busy_timeout=10000")
                await reader.execute("PRAGMA cache_size=-16384")
                self._all_readers.append(reader)
                self._pool.put_nowait(reader)
        except IndexUnavailable:
            await self.close()
            raise
        except (sqlite3.Error, OSError) as exc:
            await self.close()
            raise IndexUnavailable(f"cannot open the SQLite index {self.path}: {exc}") from exc

    async def _schema(self, w: aiosqlite.Connection) -> None:
        async with w.execute("PRAGMA user_version") as cur:
            row = await cur.fetchone()
        version = int(row[0]) if row else 0
        if version > SCHEMA_VERSION:
            raise IndexUnavailable(
                f"the SQLite index {self.path} has schema {version}, newer than this trailkeeper's "
                f"{SCHEMA_VERSION}; run the newer version or delete the file (it is rebuilt from the journal)"
            )
        async with w.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'events'") as cur:
            exists = await cur.fetchone() is not None
        if exists and version < SCHEMA_VERSION:
            await self._migrate_from_1(w)
            return
        for statement in SCHEMA:
            await w.execute(statement)
        await w.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        await w.commit()

    async def _migrate_from_1(self, w: aiosqlite.Connection) -> None:
        """Schema 1 (events unique by id, locations keyed by event id) to schema 2.

        Rows are copied into the new tables with their text in column form and an empty
        tenant for none. A location gets the leaf hash of its event's record; locations
        of an id that one tracker stored in several files (the collision this schema
        fixes: one of them may be another tenant's record) or with no indexed event are
        dropped, as they cannot be tied to one record. Events are never dropped.
        """
        started = time.monotonic()
        await w.create_function("tk_column", 1, column_or_none, deterministic=True)
        await w.create_function("tk_exact", len(TEXT_COLUMNS), _exact_of, deterministic=True)
        await w.create_function("tk_leaf_hash", 1, _leaf_hash_or_none, deterministic=True)
        await w.execute("BEGIN IMMEDIATE")
        try:
            async with w.execute(
                "SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL "
                "AND tbl_name IN ('events', 'locations')"
            ) as cur:
                old_indexes = [r[0] for r in await cur.fetchall()]
            for name in old_indexes:
                await w.execute(f'DROP INDEX "{name}"')
            async with w.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'locations'"
            ) as cur:
                had_locations = await cur.fetchone() is not None
            await w.execute("ALTER TABLE events RENAME TO events_v1")
            if had_locations:
                await w.execute("ALTER TABLE locations RENAME TO locations_v1")
            for statement in _TABLES:
                await w.execute(statement)
            select = ", ".join(_migrated(c) for c in ALL_COLUMNS)
            cur = await w.execute(
                f"INSERT INTO events ({', '.join(ALL_COLUMNS)}) SELECT {select} FROM events_v1"
            )
            events = cur.rowcount
            await cur.close()
            kept = dropped = 0
            if had_locations:
                cur = await w.execute(
                    "INSERT INTO locations (event_id, record_hash, tracker, store, key, leaf, stored_ms) "
                    "SELECT tk_column(l.event_id), tk_leaf_hash(e.record), l.tracker, l.store, l.key, "
                    "l.leaf, l.stored_ms FROM locations_v1 l JOIN events_v1 e ON e.id = l.event_id "
                    "WHERE NOT EXISTS (SELECT 1 FROM locations_v1 o WHERE o.event_id = l.event_id "
                    "AND o.tracker = l.tracker AND o.key <> l.key)"
                )
                kept = cur.rowcount
                await cur.close()
                async with w.execute("SELECT count(*) FROM locations_v1") as c2:
                    total = await c2.fetchone()
                dropped = (int(total[0]) if total else 0) - kept
                await w.execute("DROP TABLE locations_v1")
            await w.execute("DROP TABLE events_v1")
            for statement in _INDEXES:
                await w.execute(statement)
            await w.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            await w.commit()
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                await w.rollback()
            raise
        log.info(
            "index.migrated",
            backend=self.name,
            path=str(self.path),
            from_schema=1,
            to_schema=SCHEMA_VERSION,
            events=events,
            locations_kept=kept,
            locations_dropped=dropped,
            seconds=round(time.monotonic() - started, 3),
        )

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
        if not rows:
            return 0
        try:
            values = [r.values() for r in rows]
        except _REFUSALS as exc:
            raise IndexRefused(f"SQLite index {self.path}: a row cannot be stored: {exc}") from exc
        w = self._w()
        async with self._write_lock:
            try:
                before = w.total_changes
                await w.executemany(_INSERT, values)
                await w.commit()
                return w.total_changes - before
            except _REFUSALS as exc:
                with contextlib.suppress(sqlite3.Error):
                    await w.rollback()
                raise IndexRefused(f"SQLite index {self.path}: write refused: {exc}") from exc
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
                    "INSERT OR IGNORE INTO locations (event_id, record_hash, tracker, store, key, leaf, "
                    "stored_ms) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [
                        (
                            column_text(loc.event_id),
                            loc.record_hash,
                            loc.tracker,
                            loc.store,
                            loc.key,
                            loc.leaf,
                            loc.stored_ms,
                        )
                        for loc in locations
                    ],
                )
                await w.commit()
            except _ANY_FAILURE as exc:
                with contextlib.suppress(sqlite3.Error):
                    await w.rollback()
                raise IndexUnavailable(f"SQLite index {self.path}: location write failed: {exc}") from exc

    async def search(self, query: Query) -> Page:
        sql = build_select(query, ", ".join(ITEM_COLUMNS), lambda _i: "?")
        async with self._reader() as conn, conn.execute(sql.text, sql.args) as cur:
            rows = list(await cur.fetchall())
        return page_of(rows, query.limit)

    async def find(
        self, event_id: str, tenants: frozenset[str] | None, limit: int = 100
    ) -> list[StoredEvent]:
        if tenants is not None and not tenants:
            return []
        sql = f"SELECT {_GET_COLUMNS} FROM events WHERE id = ?"
        args: list[Any] = [column_text(event_id)]
        if tenants is not None:
            # The (id, tenant) unique index answers this with one probe per tenant, found or not.
            sql += f" AND tenant IN ({', '.join('?' for _ in tenants)})"
            args += [column_text(t) for t in sorted(tenants)]
        sql += " ORDER BY received_ms DESC, tenant LIMIT ?"
        args.append(limit)
        out: list[StoredEvent] = []
        async with self._reader() as conn:
            async with conn.execute(sql, args) as cur:
                rows = list(await cur.fetchall())
            for row in rows:
                stored = stored_event(row)
                digest = stored.record_hash
                async with conn.execute(
                    "SELECT tracker, store, key, leaf, stored_ms FROM locations "
                    "WHERE event_id = ? AND record_hash = ? ORDER BY stored_ms, tracker, key",
                    (args[0], digest),
                ) as cur:
                    stored.locations = [
                        Location(str(stored.fields["id"]), r[0], r[1], r[2], int(r[3]), int(r[4]), digest)
                        for r in await cur.fetchall()
                    ]
                out.append(stored)
        return out

    async def get(self, event_id: str, tenants: frozenset[str] | None = None) -> StoredEvent | None:
        found = await self.find(event_id, tenants, limit=1)
        return found[0] if found else None

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
