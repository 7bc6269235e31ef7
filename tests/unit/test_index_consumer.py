"""The indexer as a journal consumer: at-least-once, retries, retention, classification."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import orjson

from daemon.events import Decoder, Event, encode_event
from daemon.index import CURSOR, Classification, IndexConfig, Indexer, IndexRow, IndexUnavailable, Query
from daemon.index.sqlite import SqliteIndex
from daemon.journal import Journal


class Flaky(SqliteIndex):
    """A real SQLite index whose first ``failures`` writes fail like a lost disk or server."""

    def __init__(self, path: Path, failures: int) -> None:
        super().__init__(path)
        self.failures = failures

    async def write(self, rows: Sequence[IndexRow]) -> int:
        if self.failures > 0:
            self.failures -= 1
            raise IndexUnavailable("simulated outage")
        return await super().write(rows)


def events(n: int, tenant: str = "t1") -> list[bytes]:
    items = Decoder().decode(
        b"\n".join(
            orjson.dumps(
                {
                    "eventSource": "s3",
                    "eventName": f"Op{i % 3}",
                    "eventID": f"e{i}",
                    "recipientAccountId": tenant,
                }
            )
            for i in range(n)
        )
    )
    return [encode_event(e) for e in items if isinstance(e, Event)]


async def wait_cursor(journal: Journal, target: int) -> None:
    for _ in range(400):
        if journal.cursor(CURSOR) >= target:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"cursor {journal.cursor(CURSOR)} never reached {target}")


async def test_outage_is_retried_and_nothing_is_committed_before_the_write(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j", max_bytes=10**8, fsync=False)
    await journal.open(consumers=[CURSOR])
    backend = Flaky(tmp_path / "i.db", failures=2)
    await backend.open()
    seen: list[str] = []

    def classify(event: Event) -> Classification | None:
        seen.append(event.id)
        if event.id == "e4":
            raise RuntimeError("rule bug")
        return Classification("c", "high", ("r1",)) if event.canonical["operation"] == "Op1" else None

    indexer = Indexer(journal, backend, IndexConfig(prune_interval=3600), classify)
    task = asyncio.create_task(indexer.run())
    await journal.append(events(10))
    await asyncio.sleep(0.3)
    assert journal.cursor(CURSOR) == 0 and not indexer.healthy
    await wait_cursor(journal, 10)
    assert indexer.healthy
    page = await backend.search(Query(limit=100))
    assert sorted(i["id"] for i in page.items) == sorted(f"e{i}" for i in range(10))
    assert {i["id"] for i in page.items if i["category"] == "c"} == {"e1", "e7"}
    # A classifier failure leaves the event indexed, unclassified.
    assert next(i for i in page.items if i["id"] == "e4")["category"] is None

    # A restarted indexer resumes at its committed cursor and indexes nothing twice.
    indexer.stop()
    await task
    replay = Indexer(journal, backend, IndexConfig(prune_interval=3600))
    reader_task = asyncio.create_task(replay.run())
    await asyncio.sleep(0.2)
    replay.stop()
    await reader_task
    assert await backend.count() == 10
    # Retention: everything received before "now + 8 days - 7 days" goes.
    import time

    assert await replay.prune(now_ms=int(time.time() * 1000) + 8 * 86_400_000) == 10
    assert await backend.count() == 0
    await backend.close()
    await journal.close()
