"""The store contract: every store type passes this one suite.

The S3 runs talk to a real S3 API server (moto's server mode) on loopback.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from daemon.stores import build_store
from daemon.stores.base import ObjectConflict, ObjectMissing, Store, StorePermanentError
from daemon.stores.local import LocalStoreConfig
from daemon.stores.s3 import S3Store, S3StoreConfig
from tests.fixtures.s3 import new_bucket, s3_store_config

STORE_KINDS = ["local", "s3", "s3-prefixed", "s3-head-then-put", "s3-object-lock"]


@pytest.fixture(params=STORE_KINDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    kind: str = request.param
    if kind == "local":
        st: Store = build_store("contract", LocalStoreConfig(path=tmp_path / "archive"))
    else:
        endpoint: str = request.getfixturevalue("s3_server")
        lock = kind == "s3-object-lock"
        bucket = new_bucket(endpoint, object_lock=lock)
        extra: dict[str, object] = {}
        if kind == "s3-prefixed":
            extra["prefix"] = "tenant-a/archive"
        if kind == "s3-head-then-put":
            extra["if_none_match"] = False
            extra["checksum"] = ["md5"]
        if lock:
            extra["object_lock"] = {"mode": "GOVERNANCE", "retain_days": 1}
        st = build_store("contract", S3StoreConfig.model_validate(s3_store_config(endpoint, bucket, **extra)))
        assert isinstance(st, S3Store)
        st.list_page_size = 3  # exercise pagination with a handful of keys
    try:
        yield st
    finally:
        await st.close()


def _data(n: int) -> bytes:
    return hashlib.sha256(str(n).encode()).digest() * (n + 1)


async def test_put_get_head_roundtrip(store: Store) -> None:
    data = os.urandom(70_000)
    await store.put("a/b/file.json.gz", data)
    assert await store.get("a/b/file.json.gz") == data
    info = await store.head("a/b/file.json.gz")
    assert info is not None
    assert info.key == "a/b/file.json.gz"
    assert info.size == len(data)
    assert info.modified > 0


async def test_empty_object(store: Store) -> None:
    await store.put("empty", b"")
    assert await store.get("empty") == b""
    info = await store.head("empty")
    assert info is not None and info.size == 0


async def test_put_same_bytes_again_is_success(store: Store) -> None:
    await store.put("k/x", b"evidence")
    await store.put("k/x", b"evidence")
    assert await store.get("k/x") == b"evidence"


async def test_put_different_bytes_is_a_conflict_and_keeps_the_original(store: Store) -> None:
    await store.put("k/x", b"evidence")
    with pytest.raises(ObjectConflict) as err:
        await store.put("k/x", b"tampered")
    assert "k/x" in str(err.value)
    with pytest.raises(ObjectConflict):
        await store.put("k/x", b"evidencf")  # same size, different bytes
    assert await store.get("k/x") == b"evidence"


async def test_concurrent_identical_puts_all_succeed(store: Store) -> None:
    data = _data(50)
    await asyncio.gather(*(store.put("race/one", data) for _ in range(8)))
    assert await store.get("race/one") == data


async def test_replace_writes_and_overwrites_one_object(store: Store) -> None:
    await store.replace("t/_checkpoint/w1", b"first")
    await store.replace("t/_checkpoint/w1", b"second, longer")
    assert await store.get("t/_checkpoint/w1") == b"second, longer"
    assert [o.key async for o in store.list("t/")] == ["t/_checkpoint/w1"]


async def test_missing_objects(store: Store) -> None:
    assert await store.head("nope/none") is None
    with pytest.raises(ObjectMissing):
        await store.get("nope/none")


async def test_list_is_sorted_complete_and_scoped_by_prefix(store: Store) -> None:
    keys = [f"trails/t1/2024/01/{d:02d}/f{i}.json.gz" for d in (3, 1, 2) for i in range(3)]
    keys += ["trails/t2/2024/01/01/g.json.gz", "other/x"]
    for i, key in enumerate(keys):
        await store.put(key, _data(i))
    listed = [o async for o in store.list("trails/t1/")]
    assert [o.key for o in listed] == sorted(k for k in keys if k.startswith("trails/t1/"))
    sizes = {o.key: o.size for o in listed}
    for i, key in enumerate(keys):
        if key in sizes:
            assert sizes[key] == len(_data(i))
    everything = [o.key async for o in store.list()]
    assert everything == sorted(keys)
    assert [o.key async for o in store.list("trails/t3/")] == []
    # A prefix that is not a directory boundary still matches by string prefix.
    partial = [o.key async for o in store.list("trails/t")]
    assert partial == sorted(k for k in keys if k.startswith("trails/t"))


async def test_delete_is_idempotent(store: Store) -> None:
    await store.put("d/one", b"1")
    await store.put("d/two", b"2")
    await store.delete("d/one")
    await store.delete("d/one")
    await store.delete("d/never-existed")
    assert await store.head("d/one") is None
    assert [o.key async for o in store.list("d/")] == ["d/two"]


@pytest.mark.parametrize("key", ["", "/abs", "a//b", "../escape", "a/../b", "a/./b", "a/"])
async def test_unsafe_keys_are_refused(store: Store, key: str) -> None:
    with pytest.raises(StorePermanentError):
        await store.put(key, b"x")


async def test_check_passes_on_a_usable_store(store: Store) -> None:
    await store.check()
