"""Decoding in worker processes, so parsing never competes with the event loop for the GIL.

A request body is parsed, checked and turned into journal payloads in a worker;
the event loop only frames and appends them. Small bodies are decoded inline:
the round trip to a worker would cost more than the work.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import multiprocessing
import os
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeVar

from daemon import procguard
from daemon.cpus import CpuCount, usable_cpus
from daemon.events import (
    Decoder,
    Event,
    QuarantineItem,
    encode_event,
    encode_quarantine,
    now_ms,
)
from daemon.telemetry import get_logger

log = get_logger("decode")

INLINE_BELOW = 64 * 1024
MESSAGES_INLINE_BELOW = 1024 * 1024

T = TypeVar("T")


@dataclass(slots=True)
class Decoded:
    """Journal payloads for one input, in input order, and what was rejected."""

    payloads: list[bytes]
    accepted: int
    rejected: list[tuple[int, str, str]] = field(default_factory=list)  # index, reason, detail
    tenants: list[str | None] = field(default_factory=list)  # of each accepted event, in order


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while a body is parsed.

    Parsing a JSON array builds every record's containers before the first is released,
    and each collection pass walks all of them again: that made parsing a 1,000-record
    body 2.5 times slower. Parsed JSON holds no reference cycles; refcounting frees it, and
    anything cyclic made meanwhile waits for the next pass after the call.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def decode_payloads(
    body: bytes, ndjson: bool | None, max_event_bytes: int, source: str, ref: str | None
) -> Decoded:
    """Decode a body into journal payloads; rejected items become quarantine payloads.

    Pure and picklable in both directions: it runs in a worker process.
    """
    with _collector_paused():
        return _decode_payloads(body, ndjson, max_event_bytes, source, ref)


def _decode_payloads(
    body: bytes, ndjson: bool | None, max_event_bytes: int, source: str, ref: str | None
) -> Decoded:
    received = now_ms()
    # One item at a time: each event becomes its payload and is dropped before the next is
    # parsed, which costs far less in allocation than holding a body's worth of events.
    items = Decoder(max_event_bytes=max_event_bytes, source=source).iter_decode(body, ndjson=ndjson)
    payloads: list[bytes] = []
    rejected: list[tuple[int, str, str]] = []
    tenants: list[str | None] = []
    accepted = 0
    for item in items:
        if isinstance(item, Event):
            payloads.append(encode_event(item))
            tenants.append(item.canonical.get("tenant"))
            accepted += 1
        else:
            rejected.append((item.index, item.reason, item.detail))
            payloads.append(
                encode_quarantine(
                    QuarantineItem(item.raw, item.reason, item.detail, source, received, item.index, ref)
                )
            )
    return Decoded(payloads, accepted, rejected, tenants)


class DecodedMessages(NamedTuple):
    """Journal payloads of a batch of queue messages, in order, in flat lists (cheap to
    send back from a worker): per payload, the index of its message, the event id (None
    for a rejected item), the item's index in its message and the reason it was rejected
    (None for an event)."""

    payloads: list[bytes]
    owners: list[int]
    ids: list[str | None]
    indexes: list[int]
    reasons: list[str | None]


def decode_messages(messages: list[tuple[bytes, str]], max_event_bytes: int, source: str) -> DecodedMessages:
    """Decode queue message bodies (with their refs) into journal payloads.

    Pure and picklable: it runs in a worker process for large batches. Rejected
    items become quarantine payloads that carry their message's ref.
    """
    with _collector_paused():
        return _decode_messages(messages, max_event_bytes, source)


def _decode_messages(messages: list[tuple[bytes, str]], max_event_bytes: int, source: str) -> DecodedMessages:
    received = now_ms()
    decoder = Decoder(max_event_bytes=max_event_bytes, source=source)
    out = DecodedMessages([], [], [], [], [])
    payloads, owners, ids, indexes, reasons = out
    for owner, (body, ref) in enumerate(messages):
        for item in decoder.iter_decode(body):
            owners.append(owner)
            if isinstance(item, Event):
                payloads.append(encode_event(item))
                ids.append(item.id)
                indexes.append(0)
                reasons.append(None)
            else:
                payloads.append(
                    encode_quarantine(
                        QuarantineItem(item.raw, item.reason, item.detail, source, received, item.index, ref)
                    )
                )
                ids.append(None)
                indexes.append(item.index)
                reasons.append(item.reason)
    return out


def default_workers() -> CpuCount:
    """One worker per CPU this process may use (affinity mask and cgroup quota, see
    daemon.cpus), and why that many."""
    return usable_cpus()


class WorkerLost(Exception):
    """A worker process died while it ran a call; whether the call took effect is unknown."""


class DecodePool:
    """A process pool for decode_payloads, with an inline path for small bodies.

    ``workers=0`` decodes everything inline. A broken pool (a worker killed by
    the OS) is replaced, and the request that hit it is decoded inline.
    """

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = None

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            # forkserver: never fork a process that runs threads and an event loop.
            ctx = multiprocessing.get_context("forkserver")
            # The forkserver and the workers die with the daemon, kill -9 included.
            os.environ["TRAILKEEPER_FORKSERVER"] = "1"
            ctx.set_forkserver_preload(["daemon.procguard"])
            self._pool = ProcessPoolExecutor(
                max_workers=self.workers, mp_context=ctx, initializer=procguard.die_with_parent
            )
        return self._pool

    async def start(self) -> None:
        """Start the worker processes now, in a thread. Idempotent.

        The first submit starts the fork server and blocks the submitting thread until it
        has forked (50 ms idle here, more on a busy machine): done lazily, that thread is
        the event loop, at the first request or archive build. A pool that breaks while
        starting is left to start again on first use.
        """
        if self.workers <= 0:
            return

        def spawn() -> None:
            executor = self._executor()
            for future in [executor.submit(int, "0") for _ in range(self.workers)]:
                future.result()

        try:
            await asyncio.to_thread(spawn)
        except BrokenProcessPool:
            log.warning("decode.pool_broken", detail="a worker died while starting; starting on first use")
            self._pool = None

    async def _in_worker(self, fallback: Callable[[], Awaitable[T]], fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in a worker; if the pool broke (a worker killed by the OS), it is
        replaced and ``fallback`` runs instead."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor(), fn, *args)
        except BrokenProcessPool:
            log.warning("decode.pool_broken", detail="a worker died; starting a new pool")
            self._pool = None
            return await fallback()

    async def decode(
        self, body: bytes, ndjson: bool | None, max_event_bytes: int, source: str, ref: str | None
    ) -> Decoded:
        async def inline() -> Decoded:
            return decode_payloads(body, ndjson, max_event_bytes, source, ref)

        if self.workers <= 0 or len(body) < INLINE_BELOW:
            return await inline()
        return await self._in_worker(inline, decode_payloads, body, ndjson, max_event_bytes, source, ref)

    async def decode_messages(
        self,
        messages: list[tuple[bytes, str]],
        max_event_bytes: int,
        source: str,
        inline_below: int = MESSAGES_INLINE_BELOW,
    ) -> DecodedMessages:
        """``decode_messages`` in a worker, or inline when the batch is small.

        Queue batches go to a worker only from 1 MiB: below that, the round trip costs a
        small-message source more than it saves, and the event loop is held only briefly.
        """

        async def inline() -> DecodedMessages:
            return decode_messages(messages, max_event_bytes, source)

        if self.workers <= 0 or sum(len(b) for b, _ in messages) < inline_below:
            return await inline()
        return await self._in_worker(inline, decode_messages, messages, max_event_bytes, source)

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in a worker, for work that must not fall back to the daemon's process
        (a queue read that delivers messages as it runs).

        Requires ``workers > 0``. Raises what ``fn`` raises; if the pool broke, it is replaced
        and ``WorkerLost`` is raised: what the call did before the worker died is unknown.
        """

        async def lost() -> T:
            raise WorkerLost(f"a decode worker died during {getattr(fn, '__name__', fn)}")

        return await self._in_worker(lost, fn, *args)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a pure, picklable CPU-heavy call in a worker (in a thread when ``workers=0``).

        Used for archive file builds: compression and hashing then never hold the
        daemon's GIL. A broken pool is replaced and the call runs in a thread.
        """

        def thread() -> Awaitable[T]:
            return asyncio.to_thread(fn, *args)

        if self.workers <= 0:
            return await thread()
        return await self._in_worker(thread, fn, *args)

    async def close(self) -> None:
        """Stop the workers and wait for them (in a thread), so nothing is left for exit time."""
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await asyncio.to_thread(pool.shutdown, True, cancel_futures=True)
