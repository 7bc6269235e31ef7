from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest

from daemon.archive.archiver import Archiver, StoredFile
from daemon.archive.fileformat import read_records
from daemon.archive.tracker import tracker_delivery
from daemon.config import TrackerConfig
from daemon.events import Decoder, Event, encode_event
from daemon.journal import Journal
from daemon.stores.base import ObjectInfo, StoreUnavailable
from daemon.stores.local import LocalStore, LocalStoreConfig


class FlakyStore(LocalStore):
    """A local store that can be switched to fail, as an unreachable store would."""

    def __init__(self, root: Path) -> None:
        super().__init__("flaky", LocalStoreConfig(path=root))
        self.failing = False
        self.puts = 0

    async def put(self, key: str, data: bytes) -> None:
        if self.failing:
            raise StoreUnavailable(self.name, "simulated outage")
        self.puts += 1
        await super().put(key, data)


def _events(n: int, tenants: int = 1, start: int = 0) -> list[bytes]:
    out = []
    for i in range(start, start + n):
        rec = {
            "eventSource": "s3.amazonaws.com",
            "eventName": "PutObject",
            "eventID": f"e{i}",
            "recipientAccountId": f"acct{i % tenants}",
            "awsRegion": "eu-west-1",
        }
        (ev,) = Decoder().decode(orjson.dumps(rec))
        assert isinstance(ev, Event)
        out.append(encode_event(ev))
    return out


async def _all_records(store: LocalStore) -> list[bytes]:
    out: list[bytes] = []
    async for info in store.list("trails/"):
        out.extend(read_records(await store.get(info.key)))
    return out


def _tracker(**file: object) -> TrackerConfig:
    return TrackerConfig.model_validate({"name": "t", "store": "flaky", "prefix": "trails", "file": file})


@pytest.fixture
async def journal(tmp_path: Path) -> AsyncIterator[Journal]:
    j = Journal(tmp_path / "j", max_bytes=1 << 30, segment_bytes=1 << 16)
    await j.open()
    yield j
    await j.close()


async def _drain(arch: Archiver, journal: Journal, cursor: str, timeout: float = 10) -> None:
    async with asyncio.timeout(timeout):
        while journal.cursor(cursor) < journal.end_offset:
            await asyncio.sleep(0.02)


async def test_files_cut_by_max_events_and_partition(tmp_path: Path, journal: Journal) -> None:
    store = FlakyStore(tmp_path / "a")
    files: list[StoredFile] = []

    async def listen(f: StoredFile) -> None:
        files.append(f)

    arch = Archiver(
        journal,
        tracker_delivery(_tracker(max_events=10, max_age="100ms"), store, "w"),
        tmp_path / "state",
        [listen],
    )
    task = asyncio.create_task(arch.run())
    await journal.append(_events(45, tenants=2))
    await _drain(arch, journal, "archive.t")
    arch.stop()
    await task
    recs = await _all_records(store)
    assert sorted(orjson.loads(r)["eventID"] for r in recs) == sorted(f"e{i}" for i in range(45))
    assert all(len(f.records) <= 10 for f in files)
    assert {f.key.split("/")[2] for f in files} == {"acct0", "acct1"}
    assert all(f.key.split("/")[2] == orjson.loads(f.records[0])["recipientAccountId"] for f in files)


async def test_outage_keeps_events_in_journal_and_delivers_after(tmp_path: Path, journal: Journal) -> None:
    store = FlakyStore(tmp_path / "a")
    store.failing = True
    arch = Archiver(
        journal, tracker_delivery(_tracker(max_events=5, max_age="50ms"), store, "w"), tmp_path / "state"
    )
    task = asyncio.create_task(arch.run())
    await journal.append(_events(20))
    await asyncio.sleep(0.5)
    assert journal.cursor("archive.t") == 0
    assert not arch.healthy
    store.failing = False
    await _drain(arch, journal, "archive.t")
    assert arch.healthy
    arch.stop()
    await task
    assert len(await _all_records(store)) == 20


async def test_crash_after_intent_rewrites_the_same_file(tmp_path: Path) -> None:
    """A crash between recording an intent and storing the file: the restart stores that exact file."""
    jdir = tmp_path / "j"
    journal = Journal(jdir, max_bytes=1 << 30)
    await journal.open()
    store = FlakyStore(tmp_path / "a")
    store.failing = True
    arch = Archiver(
        journal, tracker_delivery(_tracker(max_events=7, max_age="10s"), store, "w"), tmp_path / "state"
    )
    task = asyncio.create_task(arch.run())
    await journal.append(_events(7))
    await asyncio.sleep(0.3)  # the file is cut (7 events) and its intent saved, but the store fails
    task.cancel()  # the process dies here
    with pytest.raises(asyncio.CancelledError):
        await task
    await journal.close()

    journal = Journal(jdir, max_bytes=1 << 30)
    await journal.open()
    await journal.append(_events(3, start=7))
    store.failing = False
    # max_age differs now: without the recorded intent, the batch would be cut as 10 events.
    arch = Archiver(
        journal, tracker_delivery(_tracker(max_events=1000, max_age="50ms"), store, "w"), tmp_path / "state"
    )
    task = asyncio.create_task(arch.run())
    await _drain(arch, journal, "archive.t")
    arch.stop()
    await task
    await journal.close()
    keys = [i.key async for i in store.list("trails/")]
    assert len(keys) == 2
    assert keys[0].endswith("00000000000000000000-00000000000000000006.json.gz")
    ids = [orjson.loads(r)["eventID"] for r in await _all_records(store)]
    assert sorted(ids) == sorted(f"e{i}" for i in range(10))


async def test_replay_skips_what_was_stored(tmp_path: Path) -> None:
    """Cursor held back by another partition's open batch: replay must not store twice."""
    jdir = tmp_path / "j"
    journal = Journal(jdir, max_bytes=1 << 30)
    await journal.open()
    store = FlakyStore(tmp_path / "a")
    arch = Archiver(
        journal, tracker_delivery(_tracker(max_events=5, max_age="1h"), store, "w"), tmp_path / "state"
    )
    task = asyncio.create_task(arch.run())
    # tenant acct0 gets 1 event (stays open), acct1 gets 5 (one file stored)
    evs = _events(12, tenants=2)
    await journal.append([evs[0]] + [evs[i] for i in (1, 3, 5, 7, 9)])
    async with asyncio.timeout(5):
        while store.puts < 1:
            await asyncio.sleep(0.02)
    assert journal.cursor("archive.t") == 0  # held by acct0's open batch
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await journal.close()
    journal = Journal(jdir, max_bytes=1 << 30)
    await journal.open()
    arch = Archiver(
        journal, tracker_delivery(_tracker(max_events=5, max_age="50ms"), store, "w"), tmp_path / "state"
    )
    task = asyncio.create_task(arch.run())
    await _drain(arch, journal, "archive.t")
    arch.stop()
    await task
    await journal.close()
    ids = [orjson.loads(r)["eventID"] for r in await _all_records(store)]
    assert sorted(ids) == sorted(["e0", "e1", "e3", "e5", "e7", "e9"])


async def test_stop_stores_open_batches(tmp_path: Path, journal: Journal) -> None:
    store = FlakyStore(tmp_path / "a")
    arch = Archiver(
        journal, tracker_delivery(_tracker(max_events=1000, max_age="1h"), store, "w"), tmp_path / "state"
    )
    task = asyncio.create_task(arch.run())
    await journal.append(_events(33))
    await asyncio.sleep(0.2)
    assert store.puts == 0
    arch.stop()
    await task
    assert len(await _all_records(store)) == 33
    assert journal.cursor("archive.t") == 33


async def test_local_store_contract_basics(tmp_path: Path) -> None:
    store = LocalStore("l", LocalStoreConfig(path=tmp_path / "s"))
    await store.put("a/b/c.json.gz", b"1")
    await store.put("a/b/c.json.gz", b"1")  # idempotent
    from daemon.stores.base import ObjectConflict, ObjectMissing, StorePermanentError

    with pytest.raises(ObjectConflict):
        await store.put("a/b/c.json.gz", b"2")
    with pytest.raises(StorePermanentError):
        await store.put("../x", b"1")
    with pytest.raises(ObjectMissing):
        await store.get("nope")
    assert [i.key async for i in store.list("a/")] == ["a/b/c.json.gz"]
    info = await store.head("a/b/c.json.gz")
    assert isinstance(info, ObjectInfo) and info.size == 1
    assert (tmp_path / "s/a/b/c.json.gz").stat().st_mode & 0o777 == 0o444
    await store.delete("a/b/c.json.gz")
    assert await store.head("a/b/c.json.gz") is None


async def test_header_fast_path_batches_exactly_like_the_full_decode(tmp_path: Path, journal: Journal) -> None:
    # Trackers without a filter batch from the entry header alone; a filtered tracker
    # decodes every entry. Both must cut the same batches with the same contents.
    from daemon.events import decode_entry

    store = FlakyStore(tmp_path / "a")
    payloads: list[bytes] = []
    for i in range(60):
        rec = {
            "eventSource": "iam.amazonaws.com",
            "eventName": "CreateUser",
            "eventID": f"id{i}" if i % 7 else "",  # some without an id: a content id is derived
            "recipientAccountId": f"acct{i % 3}",
            "awsRegion": ["eu-west-1", "us-east-1", ""][i % 2],
            "eventTime": f"2024-05-0{1 + i % 4}T12:00:{i % 60:02d}Z",
        }
        (ev,) = Decoder().decode(orjson.dumps(rec))
        assert isinstance(ev, Event)
        ev.received_ms = 1_714_521_600_000 + (i % 2) * 86_400_000  # two receive days
        payloads.append(encode_event(ev))
    config = _tracker(max_events=8)
    fast = tracker_delivery(config, store, "w")
    slow = tracker_delivery(config, store, "w", select=lambda _entry: True)
    assert fast.header_only and not slow.header_only
    a = Archiver(journal, fast, tmp_path / "s1")
    b = Archiver(journal, slow, tmp_path / "s2")
    # A partition stored through offset 10 before a crash: its older entries are skipped.
    first_part = fast.partition(decode_entry(0, payloads[0]))
    a.state.through["|".join(first_part)] = 10
    b.state.through["|".join(first_part)] = 10
    full_a = [a._take_event(i, p) for i, p in enumerate(payloads)]
    full_b = [b._take(decode_entry(i, p)) for i, p in enumerate(payloads)]
    assert full_a == full_b
    assert any(full_a)
    assert a._open_bytes == b._open_bytes
    assert a._batches.keys() == b._batches.keys()
    for part, batch in a._batches.items():
        other = b._batches[part]
        for field in ("first", "first_ms", "last", "records", "ids", "received", "nbytes", "oldest", "newest"):
            assert getattr(batch, field) == getattr(other, field), field
