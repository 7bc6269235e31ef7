"""An index created by schema 1 (events keyed by id alone) is migrated in place on open.

The schema-1 DDL below is the one trailkeeper wrote before events were identified by
(tenant, id), copied verbatim, so the test starts from a database as it exists in the
field, on both backends.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import structlog

from daemon.events import CANONICAL_FIELDS
from daemon.index import IndexBackend, IndexRow, Query, build_index
from daemon.index.base import IndexConfig
from daemon.integrity.merkle import leaf_hash

pytestmark = pytest.mark.integration


@pytest.fixture
def logs() -> Iterator[list[dict[str, Any]]]:
    """Every structlog event while the test runs, whatever level another test configured."""
    saved = structlog.get_config()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG))
    try:
        with structlog.testing.capture_logs() as captured:
            yield captured
    finally:
        structlog.configure(**saved)


_V1_TEXT = ", ".join(f"{f} TEXT" for f in CANONICAL_FIELDS if f not in ("id", "time"))
SQLITE_V1 = [
    f"""CREATE TABLE IF NOT EXISTS events (
        id TEXT NOT NULL UNIQUE,
        time TEXT NOT NULL,
        {_V1_TEXT},
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
    "CREATE INDEX IF NOT EXISTS events_operation ON events (operation, time, id)",
    "CREATE INDEX IF NOT EXISTS events_tenant ON events (tenant, time, id)",
    "CREATE INDEX IF NOT EXISTS events_resource_name ON events (resource_name, time, id)",
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
_V1_PG_TEXT = ",\n".join(f'{f} text COLLATE "C"' for f in CANONICAL_FIELDS if f not in ("id", "time"))
PG_V1 = [
    'CREATE SCHEMA IF NOT EXISTS "tk_mig"',
    f"""CREATE TABLE IF NOT EXISTS "tk_mig".events (id text COLLATE "C" NOT NULL,
time text COLLATE "C" NOT NULL,
{_V1_PG_TEXT},
category text COLLATE "C",
severity text COLLATE "C",
rules text COLLATE "C",
received_ms bigint NOT NULL,
journal_offset bigint NOT NULL,
source text COLLATE "C",
record bytea NOT NULL, PRIMARY KEY (id))""",
    'CREATE INDEX IF NOT EXISTS events_time ON "tk_mig".events (time, id)',
    'CREATE INDEX IF NOT EXISTS events_received ON "tk_mig".events (received_ms)',
    'CREATE INDEX IF NOT EXISTS events_operation ON "tk_mig".events (operation, time, id)',
    'CREATE INDEX IF NOT EXISTS events_tenant ON "tk_mig".events (tenant, time, id)',
    'CREATE INDEX IF NOT EXISTS events_resource_name ON "tk_mig".events (resource_name, time, id)',
    """CREATE TABLE IF NOT EXISTS "tk_mig".locations (
            event_id text COLLATE "C" NOT NULL,
            tracker text NOT NULL,
            store text NOT NULL,
            key text NOT NULL,
            leaf integer NOT NULL,
            stored_ms bigint NOT NULL,
            PRIMARY KEY (event_id, tracker, key)
        )""",
    'CREATE INDEX IF NOT EXISTS locations_stored ON "tk_mig".locations (stored_ms)',
]
V1_COLUMNS = (*CANONICAL_FIELDS, "category", "severity", "rules", "received_ms", "journal_offset", "source")
LONG = "r" * 1000  # over the column limit of schema 2: stored as prefix + digest after migrating


def v1_rows(with_nul: bool) -> list[dict[str, Any]]:
    def row(n: int, event_id: str, tenant: str | None, operation: str, **more: Any) -> dict[str, Any]:
        r: dict[str, Any] = dict.fromkeys(V1_COLUMNS)
        r.update(
            id=event_id,
            time=f"2024-07-30T21:31:{n:02d}.000Z",
            service="iam.amazonaws.com",
            operation=operation,
            tenant=tenant,
            received_ms=1_722_375_000_000 + n,
            journal_offset=n,
            source="http",
            record=orjson.dumps({"eventID": event_id, "n": n}),
        )
        r.update(more)
        return r

    rows = [
        row(1, "ev-1", "tenant-a", "CreateUser", category="persistence", rules='["iam-create-user"]'),
        row(2, "ev-2", None, "NoTenant"),
        row(3, "ev-3", "tenant-a", "Odd", resource_name="\ue000esc", user_name=LONG),
        row(4, "ev-4", "trailkeeper", "queryEvents", source="audit"),
    ]
    if with_nul:  # schema 1 on SQLite accepted NUL; PostgreSQL never did
        rows.append(row(5, "ev-5", "tenant-a", "Nul\x00Name"))
    return rows


V1_LOCATIONS = [
    ("ev-1", "default", "local", "trails/default/tenant-a/a.json.gz", 0, 10),
    ("ev-3", "default", "local", "trails/default/tenant-a/a.json.gz", 1, 10),
    # One id in two files of one tracker: the collision schema 1 could not tell apart.
    ("ev-2", "default", "local", "trails/default/_unknown/b.json.gz", 0, 11),
    ("ev-2", "default", "local", "trails/default/tenant-b/c.json.gz", 0, 12),
    ("ghost", "default", "local", "trails/default/x/d.json.gz", 0, 13),
]


def _make_sqlite_v1(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path)
    for statement in SQLITE_V1:
        conn.execute(statement)
    cols = (*V1_COLUMNS, "record")
    for r in v1_rows(with_nul=True):
        conn.execute(
            f"INSERT INTO events ({', '.join(cols)}) VALUES ({', '.join('?' for _ in cols)})",
            [r[c] for c in cols],
        )
    conn.executemany("INSERT INTO locations VALUES (?, ?, ?, ?, ?, ?)", V1_LOCATIONS)
    conn.commit()
    conn.close()


async def _make_pg_v1(dsn: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        for statement in PG_V1:
            await conn.execute(statement)
        cols = (*V1_COLUMNS, "record")
        for r in v1_rows(with_nul=False):
            await conn.execute(
                f'INSERT INTO "tk_mig".events ({", ".join(cols)}) '
                f"VALUES ({', '.join(f'${i}' for i in range(1, len(cols) + 1))})",
                *[r[c] for c in cols],
            )
        await conn.executemany('INSERT INTO "tk_mig".locations VALUES ($1, $2, $3, $4, $5, $6)', V1_LOCATIONS)
    finally:
        await conn.close()


async def _schema_version(kind: str, target: str) -> int:
    if kind == "sqlite":
        conn = sqlite3.connect(target)
        try:
            return int(conn.execute("PRAGMA user_version").fetchone()[0])
        finally:
            conn.close()
    import asyncpg

    pg = await asyncpg.connect(target)
    try:
        return int(await pg.fetchval("SELECT value FROM \"tk_mig\".index_meta WHERE name = 'schema_version'"))
    finally:
        await pg.close()


@pytest.fixture(params=["sqlite", "postgres"])
async def v1_index(
    request: pytest.FixtureRequest, tmp_path: Path, pg_database: Callable[[], Any]
) -> AsyncIterator[tuple[str, str, Callable[[], Awaitable[IndexBackend]]]]:
    """(backend, target, open_index): a schema-1 database and a way to open it with today's code."""
    async with contextlib.AsyncExitStack() as stack:
        if request.param == "sqlite":
            path = tmp_path / "index" / "events.db"
            _make_sqlite_v1(path)
            target = str(path)
            config = IndexConfig(path=path)
        else:
            target = await stack.enter_async_context(pg_database())
            await _make_pg_v1(target)
            config = IndexConfig(backend="postgres", dsn=target, pg_schema="tk_mig")

        async def open_index() -> IndexBackend:
            backend = build_index(config)
            await backend.open()
            stack.push_async_callback(backend.close)
            return backend

        yield request.param, target, open_index


async def test_schema_1_is_migrated_on_open_keeping_every_event(
    v1_index: tuple[str, str, Callable[[], Awaitable[IndexBackend]]], logs: list[dict[str, Any]]
) -> None:
    kind, target, open_index = v1_index
    index = await open_index()
    migrated = [e for e in logs if e["event"] == "index.migrated"]
    assert len(migrated) == 1 and migrated[0]["to_schema"] == 2, logs
    assert migrated[0]["locations_kept"] == 2 and migrated[0]["locations_dropped"] == 3
    assert await _schema_version(kind, target) == 2
    rows = v1_rows(with_nul=kind == "sqlite")
    assert await index.count() == len(rows)

    # Every event reads back as written, the one without a tenant included.
    for r in rows:
        (stored,) = await index.find(r["id"], None)
        assert stored.record == r["record"]
        assert {f: stored.fields[f] for f in ("tenant", "operation", "resource_name", "user_name")} == {
            f: r[f] for f in ("tenant", "operation", "resource_name", "user_name")
        }
    (one,) = await index.find("ev-1", frozenset({"tenant-a"}))
    assert one.fields["category"] == "persistence" and one.fields["rules"] == ["iam-create-user"]
    assert (await index.find("ev-2", frozenset({""})))[0].fields["tenant"] is None
    (own,) = await index.find("ev-4", None)
    assert own.fields["origin"] == "trailkeeper"

    # Locations are tied to their record; ambiguous and orphaned ones are gone.
    assert [(loc.key, loc.leaf, loc.record_hash) for loc in one.locations] == [
        ("trails/default/tenant-a/a.json.gz", 0, leaf_hash(rows[0]["record"]))
    ]
    assert (await index.find("ev-3", None))[0].locations[0].leaf == 1
    assert (await index.find("ev-2", None))[0].locations == []

    # Filters find migrated rows, values rewritten by the migration included.
    for params, want in (
        ({"operation": "CreateUser"}, ["ev-1"]),
        ({"resource_name": "\ue000esc"}, ["ev-3"]),
        ({"tenant": "tenant-a", "operation": "Odd"}, ["ev-3"]),
    ):
        page = await index.search(Query.from_params(params))
        assert [i["id"] for i in page.items] == want, params
    page = await index.search(Query(filters={"user_name": LONG}))
    assert [i["id"] for i in page.items] == ["ev-3"]
    if kind == "sqlite":
        page = await index.search(Query.from_params({"operation": "Nul\x00Name"}))
        assert [i["id"] for i in page.items] == ["ev-5"]

    # The new identity holds: the same id in another tenant is a new event.
    canonical = dict.fromkeys(CANONICAL_FIELDS)
    canonical.update(id="ev-1", time="2024-07-30T22:00:00.000Z", operation="OtherTenant", tenant="tenant-b")
    assert await index.write([IndexRow(canonical, 1, 99, "http", b"{}")]) == 1
    assert [s.fields["tenant"] for s in await index.find("ev-1", None)] == ["tenant-a", "tenant-b"]


async def test_a_migrated_index_opens_again_without_migrating(
    v1_index: tuple[str, str, Callable[[], Awaitable[IndexBackend]]], logs: list[dict[str, Any]]
) -> None:
    kind, target, open_index = v1_index
    first = await open_index()
    count = await first.count()
    await first.close()
    assert len([e for e in logs if e["event"] == "index.migrated"]) == 1
    again = await open_index()
    assert len([e for e in logs if e["event"] == "index.migrated"]) == 1
    assert await again.count() == count
    assert await _schema_version(kind, target) == 2
