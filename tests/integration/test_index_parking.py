"""The indexer never wedges on one event: a refused event is parked, an outage is waited out.

Issue 15 finding 2: one event with ``"eventName": "Nul\\u0000Name"`` made PostgreSQL refuse
every batch it was in, the indexer retried that batch forever, nothing new became
queryable and the journal could not release what the index held.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest
import structlog

from daemon import telemetry
from daemon.events import KIND_QUARANTINE, Decoder, Event, decode_entry, encode_event
from daemon.index import CURSOR, IndexBackend, Indexer, IndexRow, IndexUnavailable, Query, build_index
from daemon.index.base import IndexConfig
from daemon.index.consumer import PARK_REASON
from daemon.journal import Journal, JournalFull, JournalReader

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


class Spy:
    """A real backend that counts writes and can fail the way the test needs."""

    def __init__(self, inner: IndexBackend) -> None:
        self.inner = inner
        self.name = inner.name
        self.writes = 0
        self.outages = 0  # the next writes that fail like a lost database
        self.poison: str | None = None  # an id whose batches fail with an unforeseen error

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.inner, attr)

    async def write(self, rows: Sequence[IndexRow]) -> int:
        self.writes += 1
        if self.outages > 0:
            self.outages -= 1
            raise IndexUnavailable("simulated outage")
        if self.poison is not None and any(r.id == self.poison for r in rows):
            raise RuntimeError("unforeseen failure")
        return await self.inner.write(rows)


@pytest.fixture(params=["sqlite", "postgres"])
async def backend(
    request: pytest.FixtureRequest, tmp_path: Path, pg_database: Callable[[], Any]
) -> AsyncIterator[IndexBackend]:
    async with contextlib.AsyncExitStack() as stack:
        if request.param == "sqlite":
            index = build_index(IndexConfig(path=tmp_path / "index.db"))
        else:
            dsn = await stack.enter_async_context(pg_database())
            index = build_index(IndexConfig(backend="postgres", dsn=dsn, pg_schema="tk_park"))
        await index.open()
        stack.push_async_callback(index.close)
        yield index


@pytest.fixture
async def journal(tmp_path: Path) -> AsyncIterator[Journal]:
    j = Journal(tmp_path / "journal", max_bytes=10**8, fsync=False)
    await j.open(consumers=[CURSOR])
    yield j
    await j.close()


def payloads(records: list[dict[str, Any]]) -> list[bytes]:
    body = b"\n".join(orjson.dumps(r) for r in records)
    events = [e for e in Decoder().decode(body, ndjson=True) if isinstance(e, Event)]
    assert len(events) == len(records)
    return [encode_event(e) for e in events]


def record(i: int, **over: Any) -> dict[str, Any]:
    return {
        "eventSource": "iam.amazonaws.com",
        "eventName": f"Op{i}",
        "eventID": f"e{i}",
        "recipientAccountId": "tenant-a",
        **over,
    }


def refused_by_the_database() -> bytes:
    """An entry whose row every database refuses (no time: NOT NULL), as a bug upstream could write."""
    event = Event(b'{"eventID":"no-time"}', {"id": "no-time", "time": None, "tenant": "tenant-a"}, 1, "http")
    return encode_event(event)


def parked(reason: str) -> float:
    value = telemetry.REGISTRY.get_sample_value("trailkeeper_index_events_parked_total", {"reason": reason})
    return value or 0.0


async def run_until(journal: Journal, indexer: Indexer, target: int, timeout: float = 10.0) -> None:
    task = asyncio.create_task(indexer.run())
    try:
        async with asyncio.timeout(timeout):
            while journal.cursor(CURSOR) < target:
                await asyncio.sleep(0.01)
    finally:
        indexer.stop()
        await task


async def quarantined(journal: Journal) -> list[dict[str, Any]]:
    reader = JournalReader(journal, journal.start_offset)
    try:
        entries = await reader.read(10_000, timeout=0)
    finally:
        reader.close()
    out = []
    for offset, payload in entries:
        entry = decode_entry(offset, payload)
        if entry.kind == KIND_QUARANTINE:
            out.append(orjson.loads(entry.record))
    return out


async def test_a_nul_event_is_indexed_and_a_refused_one_parked_alone(
    backend: IndexBackend, journal: Journal, logs: list[dict[str, Any]]
) -> None:
    spy = Spy(backend)
    good = [record(i) for i in range(40)]
    nul = record(100, eventName="Nul\x00Name", eventID="nul-1")
    batch = [*payloads([*good[:20], nul]), refused_by_the_database(), *payloads(good[20:])]
    first = await journal.append(batch)
    bad_offset = first + 21
    before = parked("refused")
    indexer = Indexer(journal, spy, IndexConfig(prune_interval=3600))  # type: ignore[arg-type]
    await run_until(journal, indexer, first + len(batch))

    assert indexer.healthy
    assert await backend.count() == 41
    page = await backend.search(Query.from_params({"operation": "Nul\x00Name"}))
    assert [(i["id"], i["operation"]) for i in page.items] == [("nul-1", "Nul\x00Name")]
    assert await backend.find("no-time", None) == []
    # Bisected: one write for the batch, then about two per halving, not one per event.
    assert spy.writes <= 2 * 6 + 1, spy.writes

    assert parked("refused") == before + 1
    line = next(e for e in logs if e["event"] == "index.event_parked")
    assert line["journal_offset"] == bad_offset and line["ref"] == f"index:{bad_offset}"
    assert line["reason"] == "refused" and line["quarantined"] is True
    (item,) = await quarantined(journal)
    assert item["reason"] == PARK_REASON and item["ref"] == f"index:{bad_offset}"
    assert item["source"] == "index" and str(bad_offset) in item["detail"]
    assert base64.b64decode(item["raw_b64"]) == b'{"eventID":"no-time"}'


async def test_an_outage_is_waited_out_and_never_parks(
    backend: IndexBackend, journal: Journal, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("daemon.index.consumer.RETRY_INITIAL", 0.01)
    spy = Spy(backend)
    spy.outages = 3
    first = await journal.append(payloads([record(i) for i in range(10)]))
    before = parked("refused") + parked("error")
    indexer = Indexer(journal, spy, IndexConfig(prune_interval=3600))  # type: ignore[arg-type]
    await run_until(journal, indexer, first + 10)
    assert await backend.count() == 10
    assert parked("refused") + parked("error") == before
    assert await quarantined(journal) == []


async def test_an_unforeseen_error_for_one_event_parks_only_that_event(
    backend: IndexBackend, journal: Journal
) -> None:
    spy = Spy(backend)
    spy.poison = "e3"
    first = await journal.append(payloads([record(i) for i in range(8)]))
    before = parked("error")
    indexer = Indexer(journal, spy, IndexConfig(prune_interval=3600))  # type: ignore[arg-type]
    await run_until(journal, indexer, first + 8)
    assert await backend.count() == 7
    assert await backend.find("e3", None) == []
    assert parked("error") == before + 1


async def test_a_full_journal_does_not_stop_parking(
    backend: IndexBackend, journal: Journal, monkeypatch: pytest.MonkeyPatch, logs: list[dict[str, Any]]
) -> None:
    """The quarantine copy goes through the journal; when it is full (maybe because the
    index holds it), the event is still parked and logged, and indexing goes on."""
    first = await journal.append([refused_by_the_database(), *payloads([record(1)])])

    async def full(_payloads: Sequence[bytes]) -> int:
        raise JournalFull(10, 10)

    monkeypatch.setattr(journal, "append", full)
    indexer = Indexer(journal, backend, IndexConfig(prune_interval=3600))
    await run_until(journal, indexer, first + 2)
    assert await backend.count() == 1
    line = next(e for e in logs if e["event"] == "index.event_parked")
    assert line["quarantined"] is False and line["ref"] == f"index:{first}"


async def test_a_postgres_server_refusing_connections_is_an_outage(
    pg_database: Callable[[], Any], journal: Journal, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real outage (sessions ended, new ones refused) is retried until it is over, never parked."""
    import asyncpg

    from tests.conftest import PG_ADMIN_DSN

    monkeypatch.setattr("daemon.index.consumer.RETRY_INITIAL", 0.05)
    async with pg_database() as dsn:
        name = dsn.rpartition("/")[2]
        index = build_index(IndexConfig(backend="postgres", dsn=dsn, pg_schema="tk_park"))
        await index.open()
        admin = await asyncpg.connect(PG_ADMIN_DSN)
        try:
            first = await journal.append(payloads([record(i) for i in range(5)]))
            await run_until(journal, Indexer(journal, index, IndexConfig(prune_interval=3600)), first + 5)
            await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name
            )
            before = parked("refused") + parked("error")
            more = await journal.append(payloads([record(i) for i in range(5, 10)]))
            indexer = Indexer(journal, index, IndexConfig(prune_interval=3600))
            task = asyncio.create_task(indexer.run())
            try:
                async with asyncio.timeout(10):
                    while indexer.healthy:
                        await asyncio.sleep(0.02)
                await asyncio.sleep(0.3)
                assert journal.cursor(CURSOR) == more
                await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
                async with asyncio.timeout(10):
                    while journal.cursor(CURSOR) < more + 5:
                        await asyncio.sleep(0.02)
            finally:
                indexer.stop()
                await task
            assert indexer.healthy
            assert await index.count() == 10
            assert parked("refused") + parked("error") == before
        finally:
            await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
            await admin.close()
            await index.close()
