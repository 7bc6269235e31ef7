"""Fixtures for the queue source contract suite: one real broker per parameter."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator

import pytest

from tests.contract.source_brokers import BROKERS, Broker, MotoServer, SqsBroker, live


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
    async with live(BROKERS[kind]()) as b:
        yield b
