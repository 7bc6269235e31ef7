"""Real broker restarts: the broker process stops mid-stream and starts again; nothing is lost.

Each test starts a broker of its own on free loopback ports with its data on
disk in the test's directory (tests/contract/broker_servers.py): Redis with an
append-only file fsynced on every write, nats-server with JetStream file
storage, a RabbitMQ node of its own with a quorum queue. The daemon runs as a
real process. Partway through consumption the broker is shut down (SIGTERM,
its own orderly shutdown), stays away a few seconds, and is started again on
the same port with the same data. The daemon must notice (``/healthz/downstream``
names the source while ``/readyz`` stays ready: the journal still takes HTTP events),
reconnect by itself (``/healthz/downstream`` healthy again, the
reconnect counter up, a second ``source.connected``), and every event must be
archived exactly once with nothing left unacknowledged in the broker.

The shared brokers of the machine (4222, 5672, 6379) are never restarted: other
tests use them, and the shared Redis keeps nothing on disk.

SQS is not here. Its stand-in is moto's server, which keeps its queues in memory:
restarting it would wipe the queue, which is not a restart an SQS user ever sees
(SQS itself is a regional service with no process to restart). For SQS the broker
going away is shown by the TCP proxy test in test_sources.py
(``test_reconnects_by_itself_after_the_broker_goes_away``), as it is, in addition to this
file, for the other three.

A broker binary that is not installed skips its test, except under CI=true, where it fails.
Size: ``TK_RESTART_EVENTS`` events (default 3000, one per message); ``TK_SOURCES`` limits
the brokers as in test_sources.py.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.contract.broker_servers import SERVERS, BrokerServer
from tests.contract.source_brokers import CI, Broker, DaemonProcess, wait_until
from tests.contract.test_sources import _daemon_yaml, archived_ids, assert_exactly_once, event

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EVENTS = int(os.environ.get("TK_RESTART_EVENTS", "3000"))
# Small batches slow the daemon's consumption down (one group commit and one ack round trip per
# batch), so that the broker is stopped while most of the stream is still in it.
SMALL_BATCHES: dict[str, dict[str, Any]] = {
    "redis": {"batch": 20},
    "nats": {"batch": 20},
    "amqp": {"batch": 20, "prefetch": 20},
}
# How long the broker stays away once it is down (the daemon keeps retrying meanwhile).
DOWN_FOR = 3.0


@pytest.fixture(params=sorted(SERVERS))
async def broker_server(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[BrokerServer, Broker]]:
    kind = request.param
    selected = os.environ.get("TK_SOURCES")
    if selected and kind not in selected.split(","):
        pytest.skip(f"TK_SOURCES={selected} excludes {kind}")
    server = SERVERS[kind](tmp_path / f"{kind}-server")
    reason = server.missing()
    if reason is not None:
        if CI:
            pytest.fail(f"{reason} (CI=true: broker binaries are required)")
        pytest.skip(reason)
    try:
        await server.start()
        broker = server.adapter()
        await broker.create()
        try:
            yield server, broker
        finally:
            await broker.close()
    finally:
        server.kill()


def _log_events(path: Path, name: str, source: str) -> list[dict[str, Any]]:
    out = []
    for line in path.read_bytes().splitlines():
        try:
            doc = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(doc, dict) and doc.get("event") == name and doc.get("source") == source:
            out.append(doc)
    return out


async def test_broker_restart_mid_stream_reconnects_by_itself_and_loses_nothing(
    broker_server: tuple[BrokerServer, Broker], tmp_path: Path
) -> None:
    server, broker = broker_server
    expected = Counter(f"rs-{i:07d}" for i in range(EVENTS))
    await broker.publish([event("rs", i) for i in range(EVENTS)])
    source = broker.source_config(**SMALL_BATCHES[server.kind], **broker.quick_redelivery)
    name = source["name"]
    label = f'source="{name}"'
    daemon = DaemonProcess(_daemon_yaml(tmp_path, "d1", source, api=True), tmp_path / "d1.log")
    await daemon.start()

    async def acked() -> float:
        return await daemon.metric("trailkeeper_source_messages_acked_total", label)

    async def ready() -> bool:
        return (await daemon.downstream())[0]

    async def not_ready_for_the_source() -> bool:
        ok, problems = await daemon.downstream()
        return not ok and any(p.startswith(f"source {name} ") for p in problems)

    try:
        # The gauge, not the downstream report: that one is shared for a few seconds, long
        # enough for a fast source to finish the whole stream before the broker is stopped.
        await wait_until(
            lambda: _at_least(lambda: daemon.metric("trailkeeper_source_connected", label), 1),
            30,
            "the source connected",
            0.05,
        )
        await wait_until(lambda: _at_least(acked, EVENTS // 10), 60, "a tenth of the messages acked", 0.02)
        await server.stop()
        down_at = time.monotonic()
        at_stop = await acked()
        assert at_stop < EVENTS, f"the broker must stop mid-stream; {at_stop} of {EVENTS} acked already"
        await wait_until(not_ready_for_the_source, 30, "/healthz/downstream to name the lost source", 0.1)
        healthy_gauge = f'component="source",name="{name}"'
        assert await daemon.metric("trailkeeper_source_connected", label) == 0
        assert await daemon.metric("trailkeeper_downstream_healthy", healthy_gauge) == 0
        assert (await daemon.ready())[0], "a lost queue source must not take HTTP ingest out of service"
        await asyncio.sleep(DOWN_FOR)
        await server.start()
        await broker.reopen()
        await wait_until(ready, 60, "the source to reconnect by itself (downstream healthy again)", 0.2)
        outage = time.monotonic() - down_at
        await wait_until(
            lambda: sum(archived_ids(tmp_path / "d1" / "archive").values()) >= EVENTS,
            120,
            "every event archived",
            0.5,
        )
        await wait_until(broker.settled, 60, "the broker to report every message acked", 1)
        reconnects = await daemon.metric("trailkeeper_source_reconnects_total", label)
        # Retried with backoff (reconnect_max 2s): a few attempts over the outage, not a loop
        # spinning on the refused connection (thousands).
        assert 1 <= reconnects <= 5 + outage, f"{reconnects} reconnect attempts in a {outage:.1f}s outage"
        assert await daemon.metric("trailkeeper_source_connected", label) == 1
        assert await daemon.metric("trailkeeper_downstream_healthy", healthy_gauge) == 1
    finally:
        rc = await daemon.terminate()
    assert rc == 0
    assert server.starts == 2
    assert_exactly_once(archived_ids(tmp_path / "d1" / "archive"), expected)
    connected = _log_events(tmp_path / "d1.log", "source.connected", name)
    assert len(connected) >= 2, "connected once before the restart and again after it"
    # While the broker was away the source kept trying, each failed attempt reported.
    retried = _log_events(tmp_path / "d1.log", "source.reconnecting", name)
    assert retried, "no failed reconnection attempt was reported during the outage"


async def _at_least(metric: Any, value: float) -> bool:
    return bool(await metric() >= value)
