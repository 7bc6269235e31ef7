"""The queue source rule, with an in-memory broker: ack only what is durable, quarantine poison."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import orjson
import pytest

from daemon.config import ConfigError, parse_config
from daemon.events import KIND_QUARANTINE, decode_entry
from daemon.intake import Intake
from daemon.journal import Journal
from daemon.sources.base import Message, QueueSource, QueueSourceConfig


class FakeConfig(QueueSourceConfig):
    type: Literal["fake"] = "fake"


class FakeSource(QueueSource):
    """A broker in memory: ``queue`` to deliver, ``acked`` records what the source acked."""

    type = "fake"

    def __init__(self, config: FakeConfig, intake: Intake) -> None:
        super().__init__(config, intake, "w1")
        self.queue: asyncio.Queue[Message] = asyncio.Queue()
        self.acked: list[str] = []
        self.fail_connects = 0
        self.connects = 0
        self.lose_session = False

    async def connect(self) -> None:
        self.connects += 1
        await asyncio.sleep(0)  # a real connect yields; a source that spins must not hang the test
        if self.fail_connects:
            self.fail_connects -= 1
            raise ConnectionError("broker down")

    async def disconnect(self) -> None:
        return None

    async def fetch(self, worker: int) -> list[Message]:
        if self.lose_session:
            # The broker goes away for good: this session ends and every reconnect fails.
            self.lose_session = False
            self.fail_connects = 10**9
            raise ConnectionError("connection reset by broker")
        try:
            first = await asyncio.wait_for(self.queue.get(), 0.05)
        except TimeoutError:
            return []
        out = [first]
        while not self.queue.empty():
            out.append(self.queue.get_nowait())
        return out

    async def ack(self, messages: list[Message], whole_batch: bool) -> None:
        self.acked += [m.ref for m in messages]


def ev(i: int) -> bytes:
    return orjson.dumps({"eventSource": "iam.amazonaws.com", "eventName": "CreateUser", "eventID": f"e{i}"})


async def entries(journal: Journal) -> list[tuple[int, bytes]]:
    from daemon.journal import JournalReader

    reader = JournalReader(journal, journal.start_offset)
    out = await reader.read(100_000, timeout=0)
    reader.close()
    return out


async def until(cond: Callable[[], bool], timeout: float = 5) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.01)


@pytest.fixture
async def journal(tmp_path: Path) -> Journal:
    j = Journal(tmp_path / "j", max_bytes=1024**2, fsync=False)
    await j.open()
    return j


async def test_acks_only_after_the_events_are_in_the_journal(journal: Journal) -> None:
    source = FakeSource(FakeConfig(), Intake(journal))
    await source.start()
    for i in range(5):
        source.queue.put_nowait(Message(ev(i), f"m{i}", False))
    await until(lambda: len(source.acked) == 5)
    assert journal.end_offset == 5
    await source.stop()
    await journal.close()


async def test_poison_is_quarantined_with_ref_then_acked_and_oversize_is_bounded(journal: Journal) -> None:
    config = FakeConfig(max_message_bytes=100, quarantine_keep_bytes=150)
    source = FakeSource(config, Intake(journal))
    await source.start()
    big = b"x" * 400
    source.queue.put_nowait(Message(b"{broken", "bad", False))
    source.queue.put_nowait(Message(big, "big", False))
    source.queue.put_nowait(Message(ev(1), "good", False))
    await until(lambda: len(source.acked) == 3)
    items = [decode_entry(o, p) for o, p in await entries(journal)]
    quarantined = [orjson.loads(e.record) for e in items if e.kind == KIND_QUARANTINE]
    assert [(q["ref"], q["reason"]) for q in quarantined] == [("bad", "invalid_json"), ("big", "too_large")]
    detail = quarantined[1]["detail"]
    assert "400 bytes" in detail and hashlib.sha256(big).hexdigest() in detail
    assert len(quarantined[1]["raw_b64"]) == 200  # 150 bytes kept, base64
    await source.stop()
    await journal.close()


async def test_full_journal_holds_messages_unacked_then_resumes(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j", max_bytes=600, fsync=False)
    await journal.open()
    source = FakeSource(FakeConfig(pushback_retry=0.05), Intake(journal))
    await source.start()
    for i in range(10):
        source.queue.put_nowait(Message(ev(i), f"m{i}", False))
    await until(lambda: source.paused)
    held = 10 - len(source.acked)
    assert held > 0
    assert journal.end_offset == len(source.acked)  # acked exactly what is durable
    journal.max_bytes = 1024**2  # the consumers caught up
    await until(lambda: len(source.acked) == 10)
    assert not source.paused
    assert journal.end_offset == 10
    await source.stop()
    await journal.close()


async def test_redelivered_copies_are_not_appended_twice_even_after_a_restart(journal: Journal) -> None:
    source = FakeSource(FakeConfig(), Intake(journal))
    await source.start()
    source.queue.put_nowait(Message(ev(1) + b"\n" + ev(2), "m1", False))
    await until(lambda: len(source.acked) == 1)
    await source.stop()
    # A new process: the memory of what is durable comes back from the journal's tail.
    again = FakeSource(FakeConfig(), Intake(journal))
    await again.start()
    again.queue.put_nowait(Message(ev(1) + b"\n" + ev(2) + b"\n" + ev(3), "m1", True))
    await until(lambda: len(again.acked) == 1)
    assert journal.end_offset == 3
    await again.stop()
    await journal.close()


async def test_reconnects_with_backoff_and_reports_health(journal: Journal) -> None:
    source = FakeSource(FakeConfig(reconnect_initial=0.01, reconnect_max=0.05), Intake(journal))
    source.fail_connects = 3
    await source.start()
    await until(lambda: source.healthy)
    assert source.last_error is None
    await source.stop()
    assert not source.healthy
    await journal.close()


async def test_a_lost_session_is_retried_with_backoff_not_in_a_tight_loop(journal: Journal) -> None:
    # After a session that made progress is lost, failed connects must wait out the
    # backoff; a source that treated each as a fresh loss would retry thousands of times.
    source = FakeSource(FakeConfig(reconnect_initial=0.1, reconnect_max=0.2), Intake(journal))
    await source.start()
    source.queue.put_nowait(Message(ev(1), "m1", False))
    await until(lambda: source.acked == ["m1"])
    before = source.connects
    source.lose_session = True
    await until(lambda: not source.healthy)
    await asyncio.sleep(1.0)
    attempts = source.connects - before
    assert 1 <= attempts <= 12, f"{attempts} connect attempts in 1 s with a 0.1-0.2 s backoff"
    await source.stop()
    await journal.close()


def test_sources_config_is_discriminated_and_names_are_unique() -> None:
    config = parse_config(
        "ingest:\n  sources:\n"
        "    - {type: nats, stream: AUDIT}\n"
        "    - {type: redis, stream: audit, name: redis-a}\n"
        "    - {type: sqs, queue_url: 'https://sqs.us-east-1.amazonaws.com/1/q.fifo'}\n"
        "    - {type: amqp, queue: audit}\n"
    )
    assert [s.source_name for s in config.ingest.sources] == ["nats", "redis-a", "sqs", "amqp"]
    with pytest.raises(ConfigError) as err:
        parse_config("ingest:\n  sources:\n    - {type: nats, stream: A}\n    - {type: nats, stream: B}\n")
    assert "sources[1].name" in str(err.value)
    with pytest.raises(ConfigError) as err:
        parse_config("ingest:\n  sources:\n    - {type: nats, stream: A, batch: 10, max_ack_pending: 5}\n")
    assert "ingest.sources[0]" in str(err.value)
    with pytest.raises(ConfigError) as err:
        parse_config("ingest:\n  sources:\n    - {type: kafka}\n")
    assert "ingest.sources[0]" in str(err.value)


async def test_large_batches_decode_in_the_pool_with_the_same_outcome(tmp_path: Path) -> None:
    # Over 1 MiB in one fetch goes to a worker process; the journal must hold exactly what
    # the inline path writes: the events, and the poison message quarantined with its ref.
    from daemon.decodepool import DecodePool

    lines = [b"\n".join(ev(i * 100 + k) for k in range(100)) for i in range(80)]
    big = [Message(body + b"\n" + b" " * 12_000, f"m{i}", False) for i, body in enumerate(lines)]
    poison = Message(b"{not json", "poison", False)
    outcomes: list[list[tuple[int, str | None, bytes]]] = []
    for workers in (0, 1):
        journal = Journal(tmp_path / f"j{workers}", max_bytes=64 * 1024**2, fsync=False)
        await journal.open()
        source = FakeSource(FakeConfig(), Intake(journal))
        pool = DecodePool(workers)
        source.pool = pool
        await source.start()
        for m in [*big[:40], poison, *big[40:]]:
            source.queue.put_nowait(m)
        await until(lambda s=source: len(s.acked) == 81, timeout=30)
        assert (pool._pool is not None) == (workers == 1), "the large batch went to the worker"
        got = [decode_entry(o, p) for o, p in await entries(journal)]
        outcomes.append(
            [
                (e.kind, orjson.loads(e.record)["ref"], b"")
                if e.kind == KIND_QUARANTINE
                else (e.kind, e.id, e.record)
                for e in got
            ]
        )
        await source.stop()
        await pool.close()
        await journal.close()
    inline, pooled = outcomes
    assert len(inline) == 8001
    assert pooled == inline
    assert (KIND_QUARANTINE, "poison", b"") in pooled


def test_seen_ids_forget_the_oldest_beyond_capacity() -> None:
    from daemon.sources.base import _SeenIds

    seen = _SeenIds(3)
    seen.update(["a", "b"])
    seen.add("c")
    seen.update(["d", "b", "e"])  # "b" is not refreshed by being seen again
    assert [k for k in "abcde" if k in seen] == ["c", "d", "e"]
    off = _SeenIds(0)
    off.update(["x"])
    assert "x" not in off and len(off) == 0


async def test_batches_decoded_ahead_are_deduped_when_their_turn_comes(tmp_path: Path) -> None:
    # Two batches fetched and decoded (in a worker) ahead of the one being made durable:
    # dedupe must still see what the earlier batches journaled, so a copy delivered
    # again in a later batch is not appended twice.
    from daemon.decodepool import DecodePool

    journal = Journal(tmp_path / "j", max_bytes=64 * 1024**2, fsync=False)
    await journal.open()
    source = FakeSource(FakeConfig(), Intake(journal))
    source.fetch_ahead = True
    source.fetch_depth = 2
    pool = DecodePool(1)
    source.pool = pool
    bodies = [b"\n".join(ev(i * 100 + k) for k in range(100)) + b"\n" + b" " * 70_000 for i in range(12)]
    await source.start()
    for i, body in enumerate(bodies):
        source.queue.put_nowait(Message(body, f"m{i}", False))
        if i == 6:
            source.queue.put_nowait(Message(bodies[2], "m2-copy", True))  # redelivered copy
        await asyncio.sleep(0.01)
    await until(lambda: len(source.acked) == 13, timeout=30)
    got = [decode_entry(o, p) for o, p in await entries(journal)]
    ids = [e.id for e in got]
    assert sorted(ids) == sorted(f"e{i}" for i in range(1200)), "each event journaled exactly once"
    assert pool._pool is not None, "batches were decoded in the worker"
    await source.stop()
    await pool.close()
    await journal.close()
