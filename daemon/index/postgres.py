"""The shared index: PostgreSQL through asyncpg, for several replicas behind one query API.

Tables live in their own schema (``index.schema``). Text columns use the "C"
collation so ordering and keyset comparisons are bytewise, like SQLite's.
Writes are one ``INSERT ... SELECT FROM unnest(...) ON CONFLICT DO NOTHING`` per
batch: idempotent, and one round trip however large the batch.

An event is identified by ``(id, tenant)``. A schema created before that (schema 1:
events keyed by id alone, no ``index_meta`` table) is migrated in place on open, in
one transaction under the same advisory lock that serialises schema creation, so
replicas starting together migrate once. Replicas still running the previous
version cannot write to a migrated schema (their ``ON CONFLICT (id)`` has no
matching key): upgrade every replica together.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import asyncpg

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
from daemon.index.values import ESC, MAX_COLUMN_BYTES, column_text, exact_json
from daemon.telemetry import get_logger

log = get_logger("index")

SCHEMA_VERSION = 2

_TYPES: dict[str, str] = {
    **{f: "text" for f in CANONICAL_FIELDS},
    "category": "text",
    "severity": "text",
    "rules": "text",
    "received_ms": "bigint",
    "journal_offset": "bigint",
    "source": "text",
    "record": "bytea",
    "exact": "bytea",
}
_PRUNE_CHUNK = 10_000
_NOT_NULL = frozenset({"id", "time", "tenant", "received_ms", "journal_offset", "record"})
# SQLSTATE classes about the data sent, not the server: 22 data exception (NUL in text,
# a value out of range, client-side encoding), 23 integrity constraint, 54 program limit
# (an index row too large). Anything else (connection, 53 resources, 57 operator
# intervention, 40 rollback) is the database failing, and is retried.
_REFUSED_CLASSES = frozenset({"22", "23", "54"})
_GET_COLUMNS = ", ".join((*ITEM_COLUMNS, "journal_offset", "record"))


def _indexes_sql(s: str) -> list[str]:
    return [
        f"CREATE INDEX IF NOT EXISTS events_time ON {s}.events (time, id, tenant)",
        f"CREATE INDEX IF NOT EXISTS events_received ON {s}.events (received_ms)",
        *(
            f"CREATE INDEX IF NOT EXISTS events_{col} ON {s}.events "
            f"({col}, time, id{'' if col == 'tenant' else ', tenant'})"
            for col in sorted(set(EXACT_FILTERS.values()))
        ),
        f"CREATE INDEX IF NOT EXISTS locations_stored ON {s}.locations (stored_ms)",
    ]


def _schema_sql(schema: str) -> list[str]:
    collate = ' COLLATE "C"'
    cols = ",\n".join(
        f"{c} {_TYPES[c]}{collate if _TYPES[c] == 'text' else ''}{' NOT NULL' if c in _NOT_NULL else ''}"
        for c in ALL_COLUMNS
    )
    s = f'"{schema}"'
    return [
        f"CREATE TABLE IF NOT EXISTS {s}.events ({cols}, PRIMARY KEY (id, tenant))",
        f"""CREATE TABLE IF NOT EXISTS {s}.locations (
            event_id text COLLATE "C" NOT NULL,
            record_hash bytea NOT NULL,
            tracker text NOT NULL,
            store text NOT NULL,
            key text NOT NULL,
            leaf integer NOT NULL,
            stored_ms bigint NOT NULL,
            PRIMARY KEY (event_id, record_hash, tracker, key)
        )""",
        *_indexes_sql(s),
    ]


def _refused(exc: BaseException) -> bool:
    if isinstance(exc, asyncpg.PostgresError):
        state = getattr(exc, "sqlstate", None) or ""
        return state[:2] in _REFUSED_CLASSES
    return isinstance(exc, ValueError | TypeError | OverflowError)


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
            f"INSERT INTO events ({cols}) SELECT * FROM unnest({arrays}) ON CONFLICT (id, tenant) DO NOTHING"
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
                    await self._schema(conn)
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

    async def _schema(self, conn: asyncpg.Connection) -> None:
        s = f'"{self.schema}"'
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {s}")
        events_exist = await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", f"{s}.events")
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {s}.index_meta (name text PRIMARY KEY, value text NOT NULL)"
        )
        raw = await conn.fetchval(f"SELECT value FROM {s}.index_meta WHERE name = 'schema_version'")
        version = int(raw) if raw is not None else (1 if events_exist else 0)
        if version > SCHEMA_VERSION:
            raise IndexUnavailable(
                f"the {self._where()} has schema {version}, newer than this trailkeeper's {SCHEMA_VERSION}"
            )
        if version == 1:
            await self._migrate_from_1(conn)
        else:
            for statement in _schema_sql(self.schema):
                await conn.execute(statement)
        await conn.execute(
            f"INSERT INTO {s}.index_meta (name, value) VALUES ('schema_version', $1) "
            "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            str(SCHEMA_VERSION),
        )

    async def _migrate_from_1(self, conn: asyncpg.Connection) -> None:
        """Schema 1 (events keyed by id, nullable tenant, locations keyed by event id) to 2.

        Runs in the caller's transaction. Events keep every row: a NULL tenant becomes
        the empty tenant, and the few values whose column form differs (containing
        U+E000 or longer than MAX_COLUMN_BYTES; NUL never reached schema 1) are rewritten
        with their originals kept in ``exact``. Each location gets the leaf hash of its
        event's record (PostgreSQL's sha256); a location of an id that one tracker stored
        in several files (possibly another tenant's record) or with no indexed event is
        dropped, as it cannot be tied to one record.
        """
        started = time.monotonic()
        s = f'"{self.schema}"'
        for statement in (
            f"ALTER TABLE {s}.events ADD COLUMN IF NOT EXISTS exact bytea",
            f"UPDATE {s}.events SET tenant = '{NO_TENANT}' WHERE tenant IS NULL",
            f"ALTER TABLE {s}.events ALTER COLUMN tenant SET NOT NULL",
            f"ALTER TABLE {s}.locations ADD COLUMN IF NOT EXISTS record_hash bytea",
        ):
            await conn.execute(statement)
        total_locations = int(await conn.fetchval(f"SELECT count(*) FROM {s}.locations"))
        await conn.execute(
            f"DELETE FROM {s}.locations l WHERE EXISTS (SELECT 1 FROM {s}.locations o "
            "WHERE o.event_id = l.event_id AND o.tracker = l.tracker AND o.key <> l.key)"
        )
        await conn.execute(
            f"UPDATE {s}.locations l SET record_hash = sha256('\\x00'::bytea || e.record) "
            f"FROM {s}.events e WHERE e.id = l.event_id"
        )
        await conn.execute(f"DELETE FROM {s}.locations WHERE record_hash IS NULL")
        # Values the column form changes; ids are still unique here, so the id names the row.
        odd = " OR ".join(
            f"(strpos({c}, $1) > 0 OR octet_length({c}) > {MAX_COLUMN_BYTES})" for c in TEXT_COLUMNS
        )
        rewritten = 0
        rows = await conn.fetch(f"SELECT id, {', '.join(TEXT_COLUMNS)} FROM {s}.events WHERE {odd}", ESC)
        for row in rows:
            values = dict(zip(TEXT_COLUMNS, tuple(row)[1:], strict=True))
            if values["tenant"] == NO_TENANT:
                values["tenant"] = None
            exact = {k: v for k, v in values.items() if v is not None and column_text(v) != v}
            forms = {k: (column_text(v) if v is not None else None) for k, v in values.items()}
            forms["tenant"] = forms["tenant"] or NO_TENANT
            assignments = ", ".join(f"{c} = ${i}" for i, c in enumerate(TEXT_COLUMNS, 2))
            n = len(TEXT_COLUMNS) + 2
            await conn.execute(
                f"UPDATE {s}.events SET {assignments}, exact = ${n} WHERE id = $1",
                row["id"],
                *(forms[c] for c in TEXT_COLUMNS),
                exact_json(exact) if exact else None,
            )
            if forms["id"] != row["id"]:
                await conn.execute(
                    f"UPDATE {s}.locations SET event_id = $2 WHERE event_id = $1", row["id"], forms["id"]
                )
            rewritten += 1
        for statement in (
            f"ALTER TABLE {s}.locations ALTER COLUMN record_hash SET NOT NULL",
            f"ALTER TABLE {s}.events DROP CONSTRAINT IF EXISTS events_pkey",
            f"ALTER TABLE {s}.events ADD PRIMARY KEY (id, tenant)",
            f"ALTER TABLE {s}.locations DROP CONSTRAINT IF EXISTS locations_pkey",
            f"ALTER TABLE {s}.locations ADD PRIMARY KEY (event_id, record_hash, tracker, key)",
        ):
            await conn.execute(statement)
        old_indexes = await conn.fetch(
            "SELECT indexname FROM pg_indexes WHERE schemaname = $1 AND tablename IN ('events', 'locations') "
            "AND indexname NOT IN ('events_pkey', 'locations_pkey')",
            self.schema,
        )
        for r in old_indexes:
            await conn.execute(f'DROP INDEX {s}."{r["indexname"]}"')
        for statement in _indexes_sql(s):
            await conn.execute(statement)
        kept = int(await conn.fetchval(f"SELECT count(*) FROM {s}.locations"))
        events = int(await conn.fetchval(f"SELECT count(*) FROM {s}.events"))
        log.info(
            "index.migrated",
            backend=self.name,
            schema=self.schema,
            from_schema=1,
            to_schema=SCHEMA_VERSION,
            events=events,
            values_rewritten=rewritten,
            locations_kept=kept,
            locations_dropped=total_locations - kept,
            seconds=round(time.monotonic() - started, 3),
        )

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
        seen: set[tuple[str, str]] = set()
        try:
            for row in rows:
                # ON CONFLICT cannot resolve two rows with one key inside one statement; the
                # key is (tenant, id), so the same id in two tenants is two rows.
                key = (row.tenant_key, row.id_key)
                if key in seen:
                    continue
                seen.add(key)
                for i, value in enumerate(row.values()):
                    columns[i].append(value)
        except (ValueError, TypeError, OverflowError) as exc:
            raise IndexRefused(f"{self._where()}: a row cannot be stored: {exc}") from exc
        try:
            status: str = await self._p().execute(self._insert, *columns)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, ValueError, TypeError) as exc:
            if _refused(exc):
                raise IndexRefused(f"{self._where()}: write refused: {exc}") from exc
            raise IndexUnavailable(f"{self._where()}: write failed: {exc}") from exc
        return int(status.rsplit(" ", 1)[-1])

    async def add_locations(self, locations: Sequence[Location]) -> None:
        if not locations:
            return
        await self._run(
            "location write",
            "INSERT INTO locations (event_id, record_hash, tracker, store, key, leaf, stored_ms) "
            "SELECT * FROM unnest($1::text[], $2::bytea[], $3::text[], $4::text[], $5::text[], $6::int[], "
            "$7::bigint[]) ON CONFLICT DO NOTHING",
            [column_text(x.event_id) for x in locations],
            [x.record_hash for x in locations],
            [x.tracker for x in locations],
            [x.store for x in locations],
            [x.key for x in locations],
            [x.leaf for x in locations],
            [x.stored_ms for x in locations],
        )

    async def search(self, query: Query) -> Page:
        sql = build_select(query, ", ".join(ITEM_COLUMNS), lambda i: f"${i}", like="ILIKE")
        rows = await self._fetch(sql.text, *sql.args)
        return page_of([tuple(r) for r in rows], query.limit)

    async def find(
        self, event_id: str, tenants: frozenset[str] | None, limit: int = 100
    ) -> list[StoredEvent]:
        if tenants is not None and not tenants:
            return []
        key = column_text(event_id)
        if tenants is None:
            rows = await self._fetch(
                f"SELECT {_GET_COLUMNS} FROM events WHERE id = $1 ORDER BY received_ms DESC, tenant LIMIT $2",
                key,
                limit,
            )
        else:
            # One primary-key probe per tenant of the scope, whether the id is there or not.
            rows = await self._fetch(
                f"SELECT {_GET_COLUMNS} FROM events WHERE id = $1 AND tenant = ANY($2::text[]) "
                "ORDER BY received_ms DESC, tenant LIMIT $3",
                key,
                [column_text(t) for t in sorted(tenants)],
                limit,
            )
        out: list[StoredEvent] = []
        for record in rows:
            stored = stored_event(tuple(record))
            digest = stored.record_hash
            locs = await self._fetch(
                "SELECT tracker, store, key, leaf, stored_ms FROM locations "
                "WHERE event_id = $1 AND record_hash = $2 ORDER BY stored_ms, tracker, key",
                key,
                digest,
            )
            stored.locations = [
                Location(str(stored.fields["id"]), r[0], r[1], r[2], int(r[3]), int(r[4]), digest)
                for r in locs
            ]
            out.append(stored)
        return out

    async def get(self, event_id: str, tenants: frozenset[str] | None = None) -> StoredEvent | None:
        found = await self.find(event_id, tenants, limit=1)
        return found[0] if found else None

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
