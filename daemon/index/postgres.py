"""The shared index: PostgreSQL through asyncpg, for several replicas behind one query API.

Tables live in their own schema (``index.schema``). Text columns use the "C"
collation so ordering and keyset comparisons are bytewise, like SQLite's.
Writes are one ``INSERT ... SELECT FROM unnest(...) ON CONFLICT DO NOTHING`` per
batch: idempotent, and one round trip however large the batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg

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

_TYPES: dict[str, str] = {
    **{f: "text" for f in CANONICAL_FIELDS},
    "category": "text",
    "severity": "text",
    "rules": "text",
    "received_ms": "bigint",
    "journal_offset": "bigint",
    "source": "text",
    "record": "bytea",
}
_PRUNE_CHUNK = 10_000
_NOT_NULL = frozenset({"id", "time", "received_ms", "journal_offset", "record"})


def _schema_sql(schema: str) -> list[str]:
    collate = ' COLLATE "C"'
    cols = ",\n".join(
        f"{c} {_TYPES[c]}{collate if _TYPES[c] == 'text' else ''}{' NOT NULL' if c in _NOT_NULL else ''}"
        for c in ALL_COLUMNS
    )
    s = f'"{schema}"'
    return [
        f"CREATE SCHEMA IF NOT EXISTS {s}",
        f"CREATE TABLE IF NOT EXISTS {s}.events ({cols}, PRIMARY KEY (id))",
        f"CREATE INDEX IF NOT EXISTS events_time ON {s}.events (time, id)",
        f"CREATE INDEX IF NOT EXISTS events_received ON {s}.events (received_ms)",
        *(
            f"CREATE INDEX IF NOT EXISTS events_{col} ON {s}.events ({col}, time, id)"
            for col in sorted(set(EXACT_FILTERS.values()))
        ),
        f"""CREATE TABLE IF NOT EXISTS {s}.locations (
            event_id text COLLATE "C" NOT NULL,
            tracker text NOT NULL,
            store text NOT NULL,
            key text NOT NULL,
            leaf integer NOT NULL,
            stored_ms bigint NOT NULL,
            PRIMARY KEY (event_id, tracker, key)
        )""",
        f"CREATE INDEX IF NOT EXISTS locations_stored ON {s}.locations (stored_ms)",
    ]


class PostgresIndex:
    """Index backend on PostgreSQL. Connection errors surface as IndexUnavailable."""

    name = "postgres"

    def __init__(self, dsn: str, schema: str = "trailkeeper", pool_size: int = 4) -> None:
        self.dsn = dsn
        self.schema = schema
        self.pool_size = pool_size
        self._pool: asyncpg.Pool | None = None
        cols = ", ".join(ALL_COLUMNS)
        arrays = ", ".join(f"${i}::{_TYPES[c]}[]" for i, c in enumerate(ALL_COLUMNS, 1))
        self._insert = (
            f"INSERT INTO events ({cols}) SELECT * FROM unnest({arrays}) ON CONFLICT (id) DO NOTHING"
        )

    def _where(self) -> str:
        # The DSN's password never reaches an error message.
        return f"PostgreSQL index (schema {self.schema})"

    async def open(self) -> None:
        if self._pool is not None:
            return
        try:
            conn = await asyncpg.connect(self.dsn)
            try:
                async with conn.transaction():
                    # Replicas starting together must not race on CREATE ... IF NOT EXISTS.
                    await conn.execute(
                        "SELECT pg_advisory_xact_lock(hashtext($1))", f"tk-index-{self.schema}"
                    )
                    for statement in _schema_sql(self.schema):
                        await conn.execute(statement)
            finally:
                await conn.close()
            self._pool = await asyncpg.create_pool(
                self.dsn,
                min_size=1,
                max_size=self.pool_size,
                server_settings={"search_path": self.schema},
            )
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise IndexUnavailable(f"cannot open the {self._where()}: {exc}") from exc

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    def _p(self) -> asyncpg.Pool:
        if self._pool is None:
            raise IndexUnavailable(f"the {self._where()} is not open")
        return self._pool

    async def _run(self, what: str, sql: str, *args: Any) -> str:
        try:
            status: str = await self._p().execute(sql, *args)
            return status
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise IndexUnavailable(f"{self._where()}: {what} failed: {exc}") from exc

    async def _fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        try:
            rows: list[asyncpg.Record] = await self._p().fetch(sql, *args)
            return rows
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise IndexUnavailable(f"{self._where()}: query failed: {exc}") from exc

    async def write(self, rows: Sequence[IndexRow]) -> int:
        if not rows:
            return 0
        columns: list[list[Any]] = [[] for _ in ALL_COLUMNS]
        seen: set[str] = set()
        for row in rows:
            # ON CONFLICT cannot resolve two rows with one id inside one statement.
            if row.id in seen:
                continue
            seen.add(row.id)
            for i, value in enumerate(row.values()):
                columns[i].append(value)
        status = await self._run("write", self._insert, *columns)
        return int(status.rsplit(" ", 1)[-1])

    async def add_locations(self, locations: Sequence[Location]) -> None:
        if not locations:
            return
        await self._run(
            "location write",
            "INSERT INTO locations (event_id, tracker, store, key, leaf, stored_ms) "
            "SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int[], $6::bigint[]) "
            "ON CONFLICT DO NOTHING",
            [x.event_id for x in locations],
            [x.tracker for x in locations],
            [x.store for x in locations],
            [x.key for x in locations],
            [x.leaf for x in locations],
            [x.stored_ms for x in locations],
        )

    async def search(self, query: Query) -> Page:
        sql = build_select(query, ", ".join(LIST_COLUMNS), lambda i: f"${i}", like="ILIKE")
        rows = await self._fetch(sql.text, *sql.args)
        items = [row_to_item(tuple(r)) for r in rows[: query.limit]]
        more = len(rows) > query.limit
        cursor = encode_cursor(items[-1]["time"], items[-1]["id"]) if more and items else None
        return Page(items, cursor)

    async def get(self, event_id: str) -> StoredEvent | None:
        rows = await self._fetch(f"SELECT {', '.join(ALL_COLUMNS)} FROM events WHERE id = $1", event_id)
        if not rows:
            return None
        row = tuple(rows[0])
        locs = await self._fetch(
            "SELECT event_id, tracker, store, key, leaf, stored_ms FROM locations "
            "WHERE event_id = $1 ORDER BY stored_ms, tracker, key",
            event_id,
        )
        n = len(LIST_COLUMNS)
        return StoredEvent(
            row_to_item(row[:n]),
            bytes(row[n + 2]),
            int(row[n]),
            str(row[n + 1]),
            [Location(*tuple(r)) for r in locs],
        )

    async def prune(self, before_ms: int) -> int:
        deleted = 0
        while True:
            status = await self._run(
                "prune",
                "DELETE FROM events WHERE ctid = ANY(ARRAY("
                "SELECT ctid FROM events WHERE received_ms < $1 LIMIT $2))",
                before_ms,
                _PRUNE_CHUNK,
            )
            n = int(status.rsplit(" ", 1)[-1])
            deleted += n
            if n < _PRUNE_CHUNK:
                break
        await self._run("prune", "DELETE FROM locations WHERE stored_ms < $1", before_ms)
        return deleted

    async def count(self) -> int:
        rows = await self._fetch("SELECT count(*) FROM events")
        return int(rows[0][0])

    async def check(self) -> None:
        await self._fetch("SELECT 1")
