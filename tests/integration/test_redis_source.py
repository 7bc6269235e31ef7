"""The Redis source's reads in a worker process, against this machine's Redis.

Reads ahead are done by a decode worker with its own connection; the event loop
only journals and acknowledges. These tests hold that path to the source's rule:
every entry journaled once (events, and quarantine entries for what cannot be
decoded), every entry acknowledged, and a worker lost mid-read loses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import orjson
import pytest

from daemon.decodepool import DecodePool, WorkerLost
from daemon.events import KIND_EVENT, KIND_QUARANTINE, REASON_TOO_LARGE, REASON_UNKNOWN_FORMAT, decode_entry
from daemon.intake import Intake
from daemon.journal import Journal, JournalReader
from daemon.sources.redis import RedisSource, RedisSourceConfig
from tests.contract.source_brokers import RedisBroker, live

pytestmark = pytest.mark.integration

T = TypeVar("T")


@pytest.fixture
async def broker() -> AsyncIterator[RedisBroker]:
    async with live(RedisBroker()) as b:
        yield b


def event(i: int) -> bytes:
    return orjson.dumps(
        {"eventSource": "iam.amazonaws.com", "eventName": "CreateUser", "eventID": f"r-{i:06d}"}
    )


async def journal_entries(journal: Journal) -> list[Any]:
    reader = JournalReader(journal, journal.start_offset)
    try:
        return [decode_entry(o, p) for o, p in await reader.read(1_000_000, timeout=0)]
    finally:
        reader.close()


async def wait_for(cond: Callable[[], Any], timeout: float, what: str) -> None:
    async with asyncio.timeout(timeout):
        while not await cond():
            await asyncio.sleep(0.05)


def source_for(broker: RedisBroker, journal: Journal, **overrides: Any) -> RedisSource:
    cfg = broker.source_config(**{"batch": 200, "max_message_bytes": 4096, **overrides})
    return RedisSource(RedisSourceConfig.model_validate(cfg), Intake(journal), "w1")


@contextlib.asynccontextmanager
async def running(
    broker: RedisBroker, tmp_path: Path, pool: DecodePool, **overrides: Any
) -> AsyncIterator[tuple[RedisSource, Journal]]:
    """A started source reading ahead through ``pool`` into a fresh journal; all three are
    closed on the way out."""
    journal = Journal(tmp_path / "j", max_bytes=256 * 1024**2, fsync=False)
    await journal.open()
    source = source_for(broker, journal, **overrides)
    source.pool = pool
    try:
        await source.start()
        yield source, journal
    finally:
        await source.stop()
        await pool.close()
        await journal.close()


async def drained(broker: RedisBroker, journal: Journal, n: int) -> bool:
    return journal.end_offset >= n and await broker.outstanding() == 0


async def test_reads_in_a_worker_journal_every_entry_once_and_quarantine_the_rest(
    broker: RedisBroker, tmp_path: Path
) -> None:
    total = 6000
    # Published while the source runs, so most reads are reads ahead.
    await broker.publish([event(i) for i in range(100)])
    async with running(broker, tmp_path, DecodePool(1)) as (source, journal):
        for start in range(100, total, 500):
            await broker.publish([event(i) for i in range(start, min(total, start + 500))])
            if start == 2100:
                await broker.publish_fields({"other": "no body here"})
                await broker.publish([b"[" + event(99_999) + b"," + b" " * 5000 + b"]"])  # over 4 KiB
            await asyncio.sleep(0.02)
        await wait_for(lambda: drained(broker, journal, total + 2), 30, "every entry journaled and acked")
        clients = await broker.r.client_list()
        reader_name = f"trailkeeper-{source.name}-w1-reader"
        assert any(c.get("name") == reader_name for c in clients), (
            "reads went through the worker's connection"
        )
        got = await journal_entries(journal)
    ids = Counter(e.id for e in got if e.kind == KIND_EVENT)
    assert ids == Counter(f"r-{i:06d}" for i in range(total))
    quarantined = sorted(orjson.loads(e.record)["reason"] for e in got if e.kind == KIND_QUARANTINE)
    assert quarantined == sorted([REASON_UNKNOWN_FORMAT, REASON_TOO_LARGE])


class LosesTheFirstWorker(DecodePool):
    """A pool whose first call does its work (in this process) and then loses its worker, as
    a worker killed by the OS after Redis delivered the entries but before they came back."""

    def __init__(self) -> None:
        super().__init__(1)
        self.lost = 0
        self.calls = 0

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        self.calls += 1
        result = await asyncio.to_thread(fn, *args)
        if self.lost == 0:
            self.lost += 1
            raise WorkerLost("worker killed")
        return result


async def test_a_worker_lost_mid_read_loses_nothing(broker: RedisBroker, tmp_path: Path) -> None:
    # The lost read's entries are pending at this consumer. They must come back through the
    # reconnect's recovery of pending entries, not only after claim_min_idle (set far beyond
    # the test's timeout here).
    total = 3000
    await broker.publish([event(i) for i in range(total)])
    pool = LosesTheFirstWorker()
    quick = {"claim_min_idle": "10m", "claim_interval": "10m", "reconnect_initial": "50ms"}
    async with running(broker, tmp_path, pool, **quick) as (source, journal):
        await wait_for(lambda: drained(broker, journal, total), 30, "every entry journaled and acked")
        got = await journal_entries(journal)
    assert pool.lost == 1 and pool.calls > 1
    ids = Counter(e.id for e in got if e.kind == KIND_EVENT)
    assert ids == Counter(f"r-{i:06d}" for i in range(total)), "each event journaled exactly once"
    assert source.generation >= 2, "the lost worker ended the session"


async def test_a_lost_connection_costs_one_session_not_one_per_worker_connection(
    broker: RedisBroker, tmp_path: Path
) -> None:
    # Every connection of the source is cut while it idles (as a broker restart does): the
    # event loop's blocking read fails, and the source reconnects once. The worker's own
    # connection, idle and just as dead, must not end the new session at its first read
    # (redis-py finds a socket the server closed when it takes it from its pool, and opens
    # a new one before sending anything).
    quick = {"claim_min_idle": "10m", "claim_interval": "10m", "reconnect_initial": "50ms"}
    async with running(broker, tmp_path, DecodePool(1), **quick) as (source, journal):
        for start in range(0, 3000, 500):
            await broker.publish([event(i) for i in range(start, start + 500)])
            await asyncio.sleep(0.02)
        await wait_for(lambda: drained(broker, journal, 3000), 30, "the first 3000 journaled")
        clients = await broker.r.client_list()
        reader = f"trailkeeper-{source.name}-w1-reader"
        assert any(c.get("name") == reader for c in clients), "the worker read some of them"
        await asyncio.sleep(0.3)  # idle: the event loop blocks in XREADGROUP, the worker waits
        assert source.generation == 1
        for c in clients:
            if str(c.get("name", "")).startswith(f"trailkeeper-{source.name}-"):
                await broker.r.client_kill_filter(_id=c["id"])
        await wait_for(lambda: _generation(source, 2), 10, "the source reconnected")
        for start in range(3000, 6000, 500):
            await broker.publish([event(i) for i in range(start, start + 500)])
            await asyncio.sleep(0.02)
        await wait_for(lambda: drained(broker, journal, 6000), 30, "the next 3000 journaled")
        assert source.generation == 2, "the worker's dead connection ended the new session too"
        got = await journal_entries(journal)
    ids = Counter(e.id for e in got if e.kind == KIND_EVENT)
    assert ids == Counter(f"r-{i:06d}" for i in range(6000))


async def _generation(source: RedisSource, n: int) -> bool:
    return source.generation >= n and source.healthy
