from __future__ import annotations

import os
import signal

import orjson
import pytest

from daemon.decodepool import INLINE_BELOW, DecodePool, WorkerLost, decode_payloads
from daemon.events import decode_entry


def _body(n: int) -> bytes:
    recs = [
        orjson.dumps({"eventSource": "iam.amazonaws.com", "eventName": "CreateUser", "eventID": f"d{i}",
                      "recipientAccountId": "1", "eventTime": "2024-01-01T00:00:00Z", "pad": "p" * 200})
        for i in range(n)
    ]
    return b"\n".join([*recs, b"{broken"])


async def test_workers_give_the_same_payloads_as_inline() -> None:
    body = _body(400)
    assert len(body) > INLINE_BELOW  # goes to a worker process
    pool = DecodePool(1)
    try:
        remote = await pool.decode(body, True, 262144, "http", "r1")
    finally:
        await pool.close()
    local = decode_payloads(body, True, 262144, "http", "r1")
    assert remote.accepted == local.accepted == 400
    assert [(i, r) for i, r, _ in remote.rejected] == [(400, "invalid_json")]
    assert len(remote.payloads) == 401
    # Same entries apart from receive times.
    for a, b in zip(remote.payloads[:400], local.payloads[:400], strict=True):
        ea, eb = decode_entry(0, a), decode_entry(0, b)
        assert (ea.id, ea.record, ea.canonical) == (eb.id, eb.record, eb.canonical)


async def test_a_killed_worker_is_replaced_and_the_request_still_decoded() -> None:
    body = _body(400)
    pool = DecodePool(1)
    try:
        await pool.decode(body, True, 262144, "http", None)
        executor = pool._pool
        assert executor is not None
        for pid in list(executor._processes):  # the OS killing a worker
            os.kill(pid, signal.SIGKILL)
        decoded = await pool.decode(body, True, 262144, "http", None)
        assert decoded.accepted == 400
        again = await pool.decode(body, True, 262144, "http", None)
        assert again.accepted == 400
    finally:
        await pool.close()



async def test_a_call_whose_worker_dies_raises_worker_lost_and_the_pool_recovers() -> None:
    # ``call`` is for work with effects outside the worker (a queue read): when its worker
    # dies it must say so, not quietly run again in the daemon's process.
    pool = DecodePool(1)
    try:
        assert await pool.call(int, "7") == 7
        with pytest.raises(WorkerLost):
            await pool.call(os._exit, 3)  # the worker dies mid-call
        assert await pool.call(int, "8") == 8, "a new pool serves the next call"
        with pytest.raises(ValueError):
            await pool.call(int, "not a number")  # the call's own errors come through as they are
    finally:
        await pool.close()


async def test_start_brings_up_every_worker_off_the_event_loop() -> None:
    # The fork server's start blocks the thread that first submits work; start() does that
    # in a thread, so the event loop keeps turning meanwhile.
    import asyncio
    import time

    pool = DecodePool(2)
    gaps: list[float] = []
    stop = asyncio.Event()

    async def ticker() -> None:
        last = time.perf_counter()
        while not stop.is_set():
            await asyncio.sleep(0.002)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    try:
        task = asyncio.create_task(ticker())
        started = time.perf_counter()
        await pool.start()
        took = time.perf_counter() - started
        stop.set()
        await task
        executor = pool._pool
        assert executor is not None and len(executor._processes) == 2
        assert all(p.is_alive() for p in executor._processes.values())
        # The loop turned all along: several ticks, none as long as the start itself. A start
        # that blocked the loop leaves one tick whose gap spans the whole start; a fast start
        # (about 10 ms here) still leaves room for more than one 2 ms tick.
        assert len(gaps) >= 2 and max(gaps) < took, (len(gaps), max(gaps), took)
        await pool.start()  # idempotent
        assert pool._pool is executor and len(executor._processes) == 2
    finally:
        await pool.close()
    off = DecodePool(0)
    await off.start()
    assert off._pool is None, "no workers: nothing is started"


def test_parsing_a_large_array_runs_no_collection_and_leaves_the_collector_as_it_was() -> None:
    # A 2,000-record array is built whole before its first record is released; collection
    # passes over it cost more than the parse. None may run during the decode, and the
    # collector comes back in the state it was in, after a bad body too.
    import gc

    body = b"[" + b",".join(_body(2000).split(b"\n")[:-1]) + b"]"
    passes: list[int] = []

    def count(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            passes.append(info["generation"])

    gc.callbacks.append(count)
    try:
        decoded = decode_payloads(body, False, 262144, "http", None)
        assert decoded.accepted == 2000
        assert passes == [], f"{len(passes)} collection passes during the decode"
        assert gc.isenabled()
        with pytest.raises(TypeError):
            decode_payloads(None, False, 262144, "http", None)  # type: ignore[arg-type]
        assert gc.isenabled(), "restored after an error"
        gc.disable()
        try:
            decode_payloads(body, False, 262144, "http", None)
            assert not gc.isenabled(), "a collector paused by the caller stays paused"
        finally:
            gc.enable()
    finally:
        gc.callbacks.remove(count)
