"""A key that already holds other bytes: the archiver keeps both, and the copy is named for its codec."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest

from daemon.archive.archiver import Archiver
from daemon.archive.fileformat import ZSTD_MAGIC, extension, read_records
from daemon.archive.tracker import tracker_delivery
from daemon.config import TrackerConfig
from daemon.events import Decoder, Event, decode_entry, encode_event
from daemon.journal import Journal
from daemon.stores.base import Store
from daemon.stores.local import LocalStore, LocalStoreConfig
from daemon.stores.s3 import S3Store, S3StoreConfig
from tests.fixtures.s3 import new_bucket, s3_store_config

MAGIC = {"gzip": b"\x1f\x8b", "zstd": ZSTD_MAGIC}


def _events(n: int) -> list[bytes]:
    out = []
    for i in range(n):
        rec = {"eventSource": "s3.amazonaws.com", "eventName": "PutObject", "eventID": f"e{i}"}
        (ev,) = Decoder().decode(orjson.dumps(rec))
        assert isinstance(ev, Event)
        out.append(encode_event(ev))
    return out


def _store(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> Store:
    if kind == "local":
        return LocalStore("archive", LocalStoreConfig(path=tmp_path / "archive"))
    endpoint = request.getfixturevalue("s3_server")
    cfg = S3StoreConfig.model_validate(s3_store_config(endpoint, new_bucket(endpoint)))
    return S3Store("archive", cfg)


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
@pytest.mark.parametrize("kind", ["local", "s3"])
async def test_conflict_copy_is_named_for_its_codec(
    tmp_path: Path, request: pytest.FixtureRequest, kind: str, compression: str
) -> None:
    store = _store(kind, tmp_path, request)
    journal = Journal(tmp_path / "j", max_bytes=1 << 30)
    await journal.open()
    tracker = TrackerConfig.model_validate(
        {
            "name": "t",
            "store": "archive",
            "prefix": "trails",
            "file": {"max_events": 5, "max_age": "10s", "compression": compression},
        }
    )
    delivery = tracker_delivery(tracker, store, "w")
    payloads = _events(5)
    first = decode_entry(0, payloads[0])
    key = delivery.key(delivery.partition(first), first.received_ms, 0, 4)
    # Other bytes already at the key the batch will be stored under.
    squatter = b"not the archive file"
    await store.put(key, squatter)
    arch = Archiver(journal, delivery, tmp_path / "state")
    task = asyncio.create_task(arch.run())
    try:
        await journal.append(payloads)
        async with asyncio.timeout(15):
            while journal.cursor(delivery.cursor) < journal.end_offset:
                await asyncio.sleep(0.02)
        arch.stop()
        await task
        keys = sorted([info.key async for info in store.list("trails/")])
        assert key in keys and await store.get(key) == squatter
        (copy,) = [k for k in keys if k != key]
        data = await store.get(copy)
        assert data.startswith(MAGIC[compression])
        stem = key.removesuffix("." + extension(compression))
        assert copy.startswith(stem + "_") and copy.endswith("." + extension(compression)), copy
        assert [orjson.loads(r)["eventID"] for r in read_records(data)] == [f"e{i}" for i in range(5)]
    finally:
        if not task.done():
            task.cancel()
        await journal.close()
        await store.close()
