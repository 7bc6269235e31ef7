"""Fixtures for the queue source contract suite: one real broker per parameter."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from source_brokers import BROKERS, CI, Broker, MotoServer, SqsBroker


@pytest.fixture(scope="session")
def moto_port() -> Iterator[int]:
    server = MotoServer()
    server.start()
    try:
        yield server.port
    finally:
        server.stop()


@pytest.fixture(params=sorted(BROKERS))
async def broker(request: pytest.FixtureRequest) -> AsyncIterator[Broker]:
    kind = request.param
    selected = os.environ.get("TK_SOURCES")
    if selected and kind not in selected.split(","):
        pytest.skip(f"TK_SOURCES={selected} excludes {kind}")
    if kind == "sqs":
        SqsBroker.moto_port = request.getfixturevalue("moto_port")
    b = BROKERS[kind]()
    reason = b.unreachable()
    if reason is not None:
        if CI:
            pytest.fail(f"{reason} (CI=true: brokers are required)")
        pytest.skip(reason)
    await b.create()
    try:
        yield b
    finally:
        await b.delete()
        await b.close()


async def wait_until(
    check: Callable[[], Awaitable[bool]] | Callable[[], bool], timeout: float, what: str, every: float = 0.2
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        result: Any = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(every)
