"""The queue source contract: every source passes it against its real broker.

SQS runs against moto's server on a free loopback port; NATS JetStream,
RabbitMQ and Redis are the brokers of this machine, with unique
stream/queue/subject names per test. Here the broker going away is played by
a TCP proxy between the daemon and the broker that drops every connection and
refuses new ones for a while, so the shared brokers keep serving everyone else
(the shared Redis keeps nothing on disk). Real restarts of the broker process,
on private Redis, NATS and RabbitMQ instances the test starts itself, are in
test_broker_restarts.py.

Sizes: ``TK_SOURCES_EVENTS`` (default 10000) events for the kill -9 and
scale-out tests; ``TK_SOURCES_EVENTS=100000`` is the full "Must show" size.
``TK_SOURCES=nats,redis`` limits the brokers. Those tests pack 10 events per
message as NDJSON, and for SQS 100 per message as a CloudTrail file envelope
{"Records": [...]} (Broker.events_per_message): moto's SQS serves only tens of
messages/s once a queue holds thousands, so 100,000 events are 1,000 messages
there (a shape every source accepts, as it accepts one event or an array).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from daemon.app import App
from daemon.config import parse_config
from tests.conftest import STRATUS
from tests.contract.source_brokers import Broker, DaemonProcess, TcpProxy, read_archive, wait_until

pytestmark = pytest.mark.integration

DATA = STRATUS
EVENTS = int(os.environ.get("TK_SOURCES_EVENTS", "10000"))


def event(tag: str, i: int) -> bytes:
    """A CloudTrail record (the shape of the real ones) with a unique eventID."""
    return orjson.dumps(
        {
            "eventVersion": "1.08",
            "userIdentity": {
                "type": "IAMUser",
                "principalId": "AIDAEXAMPLE",
                "accountId": "123456789012",
                "userName": "alice",
            },
            "eventTime": "2024-05-01T12:00:00Z",
            "eventSource": "iam.amazonaws.com",
            "eventName": "CreateUser",
            "awsRegion": "us-east-1",
            "sourceIPAddress": "255.090.254.5",
            "requestParameters": {"userName": f"user-{i}"},
            "eventID": f"{tag}-{i:07d}",
            "recipientAccountId": "123456789012",
        }
    )


def real_envelopes() -> list[tuple[bytes, list[str]]]:
    """Each real Stratus file as one message: a CloudTrail envelope {"Records": [...]}."""
    out = []
    for path in sorted(DATA.glob("*.json")):
        records = json.loads(path.read_bytes())
        out.append((orjson.dumps({"Records": records}), [r["eventID"] for r in records]))
    return out


def app_yaml(tmp: Path, source: dict[str, Any], **journal: Any) -> str:
    doc = {
        "writer_id": journal.pop("writer_id", "w1"),
        "ingest": {"http": None, "sources": [source]},
        "journal": {"dir": str(tmp / "journal"), **journal},
        "stores": {"local": {"type": "local", "path": str(tmp / "archive")}},
        "quarantine": {"max_age": "300ms"},
        "trackers": [{"name": "default", "file": {"max_age": "300ms", "max_events": 5000}}],
        "metrics": {"listen": None},
        "log": {"level": "warning", "format": "json"},
    }
    return yaml.safe_dump(doc)


def archived_ids(root: Path) -> Counter[str]:
    records, _ = read_archive(root)
    return Counter(orjson.loads(r)["eventID"] for r in records)


def assert_exactly_once(found: Counter[str], expected: Counter[str]) -> None:
    missing = expected - found
    extra = found - expected
    assert not missing, f"{sum(missing.values())} events missing, e.g. {list(missing)[:5]}"
    assert not extra, (
        f"{sum(extra.values())} events archived more than once or unexpected, e.g. {list(extra)[:5]}"
    )


async def run_until_archived(app: App, root: Path, expected: Counter[str], timeout: float = 60) -> None:
    await app.start()
    try:
        await wait_until(
            lambda: sum(archived_ids(root).values()) >= sum(expected.values()),
            timeout,
            "every event archived",
            0.5,
        )
    finally:
        await app.stop()


# --- delivery and acks ------------------------------------------------------------------------------


async def test_delivers_every_shape_once_and_acks_every_message(broker: Broker, tmp_path: Path) -> None:
    bodies: list[bytes] = []
    expected: Counter[str] = Counter()
    for i in range(200):  # one event per message
        bodies.append(event("one", i))
        expected[f"one-{i:07d}"] += 1
    for b in range(20):  # a JSON array per message
        bodies.append(b"[" + b",".join(event(f"arr{b}", i) for i in range(10)) + b"]")
        expected.update(f"arr{b}-{i:07d}" for i in range(10))
    for b in range(10):  # NDJSON per message
        bodies.append(b"\n".join(event(f"nd{b}", i) for i in range(5)) + b"\n")
        expected.update(f"nd{b}-{i:07d}" for i in range(5))
    for body, ids in real_envelopes():  # CloudTrail file envelopes of real records
        if len(body) <= broker.max_body:
            bodies.append(body)
            expected.update(ids)
    await broker.publish(bodies)

    app = App(parse_config(app_yaml(tmp_path, broker.source_config())))
    await run_until_archived(app, tmp_path / "archive", expected)

    assert_exactly_once(archived_ids(tmp_path / "archive"), expected)
    records, quarantined = read_archive(tmp_path / "archive")
    assert quarantined == []
    # Real records are archived byte-for-byte as the compact JSON they arrived as.
    real = {orjson.loads(r)["eventID"]: r for r in records}
    for body, _ids in real_envelopes()[:3]:
        for rec in orjson.loads(body)["Records"]:
            assert real[rec["eventID"]] == orjson.dumps(rec)
    await wait_until(lambda: _zero(broker), 20, "the broker to report every message acked", 1)


async def _zero(broker: Broker) -> bool:
    return await broker.settled()


# --- poison messages ---------------------------------------------------------------------------------


async def test_poison_messages_are_quarantined_then_acked_and_the_rest_flows(
    broker: Broker, tmp_path: Path
) -> None:
    big = min(10 * 1000 * 1000, broker.max_body)
    oversize = b"[" + b" " * (big - 2) + b"]"
    limit = big // 2
    bodies = [event("p", 0), b'{"eventSource": "iam.amazonaws.com", "eventName": ', oversize]
    bodies += [event("p", i) for i in range(1, 50)]
    if broker.binary_bodies:
        bodies.append(b"\xff\xfe not utf-8")
    await broker.publish(bodies)
    expected = Counter(f"p-{i:07d}" for i in range(50))

    source = broker.source_config(max_message_bytes=limit)
    app = App(parse_config(app_yaml(tmp_path, source)))
    await app.start()
    try:
        await wait_until(
            lambda: (
                len(read_archive(tmp_path / "archive")[1]) >= (3 if broker.binary_bodies else 2)
                and sum(archived_ids(tmp_path / "archive").values()) >= 50
            ),
            60,
            "events archived and poison messages quarantined",
            0.5,
        )
    finally:
        await app.stop()

    assert_exactly_once(archived_ids(tmp_path / "archive"), expected)
    _, quarantined = read_archive(tmp_path / "archive")
    by_reason = {q["reason"]: q for q in quarantined}
    reasons = (
        ["invalid_json", "invalid_utf8", "too_large"]
        if broker.binary_bodies
        else ["invalid_json", "too_large"]
    )
    assert sorted(by_reason) == reasons, quarantined
    for q in quarantined:
        assert q["source"] == source["name"]
        assert q["ref"], "the broker's message id names the quarantined message"
    assert base64.b64decode(by_reason["invalid_json"]["raw_b64"]) == bodies[1]
    if broker.binary_bodies:
        assert base64.b64decode(by_reason["invalid_utf8"]["raw_b64"]) == bodies[-1]
    assert base64.b64decode(by_reason["too_large"]["raw_b64"]) == oversize
    assert str(len(oversize)) in by_reason["too_large"]["detail"]
    await wait_until(lambda: _zero(broker), 20, "the broker to report every message acked", 1)


# --- broker restart --------------------------------------------------------------------------------


async def test_reconnects_by_itself_after_the_broker_goes_away(broker: Broker, tmp_path: Path) -> None:
    proxy = TcpProxy(broker.host, broker.port)
    await proxy.start()
    first = [event("r", i) for i in range(300)]
    second = [event("r", i) for i in range(300, 600)]
    expected = Counter(f"r-{i:07d}" for i in range(600))
    await broker.publish(first)
    source_config = broker.source_config(port=proxy.port, **broker.quick_redelivery)
    app = App(parse_config(app_yaml(tmp_path, source_config)))
    await app.start()
    source = app.sources[0]
    try:
        await wait_until(
            lambda: sum(archived_ids(tmp_path / "archive").values()) >= 100, 30, "first events", 0.3
        )
        outage = asyncio.create_task(proxy.outage(3.0))
        await wait_until(lambda: not source.healthy, 15, "the source to report the lost broker", 0.05)
        assert source.last_error
        await broker.publish(second)  # published while the daemon cannot reach the broker
        await outage
        await wait_until(lambda: source.healthy, 30, "the source to reconnect by itself", 0.1)
        await wait_until(
            lambda: sum(archived_ids(tmp_path / "archive").values()) >= 600, 60, "every event archived", 0.5
        )
        await wait_until(lambda: _zero(broker), 30, "every message acked", 1)
    finally:
        await app.stop()
        await proxy.stop()
    assert_exactly_once(archived_ids(tmp_path / "archive"), expected)
    assert proxy.connections >= 2


# --- back-pressure -------------------------------------------------------------------------------


async def test_full_journal_stops_pulling_and_drops_nothing(broker: Broker, tmp_path: Path) -> None:
    blocked = tmp_path / "archive"
    blocked.write_text("a file where the store's directory should be: every store write fails\n")
    bodies = [event("bp", i) for i in range(400)]
    expected = Counter(f"bp-{i:07d}" for i in range(400))
    await broker.publish(bodies)
    budget = 64 * 1024
    config = app_yaml(
        tmp_path, broker.source_config(pushback_retry="200ms"), max_bytes=budget, segment_bytes=16 * 1024
    )
    app = App(parse_config(config))
    await app.start()
    source = app.sources[0]
    try:
        await wait_until(lambda: source.paused, 30, "the source to pause on the full journal", 0.1)
        await asyncio.sleep(1.5)
        assert source.paused
        assert app.journal.bytes_used <= budget
        await wait_until(
            lambda: _positive(broker),
            broker.stats_lag + 5,
            "the broker to still hold what is not durable",
            0.5,
        )
        assert app.journal.end_offset < 400
        blocked.unlink()  # the store comes back: the archiver drains the journal
        await wait_until(
            lambda: sum(archived_ids(tmp_path / "archive").values()) >= 400, 90, "every event archived", 0.5
        )
        await wait_until(lambda: not source.paused, 10, "the source to resume", 0.1)
    finally:
        await app.stop()
    assert_exactly_once(archived_ids(tmp_path / "archive"), expected)
    assert read_archive(tmp_path / "archive")[1] == []
    await wait_until(lambda: _zero(broker), 20, "every message acked", 1)


async def _positive(broker: Broker) -> bool:
    return await broker.outstanding() > 0


# --- kill -9 -----------------------------------------------------------------------------------------


def _batched(tag: str, total: int, per_message: int, envelopes: bool = False) -> list[bytes]:
    """``total`` events, ``per_message`` to a message: NDJSON, or CloudTrail file envelopes."""
    out = []
    for start in range(0, total, per_message):
        events = [event(tag, i) for i in range(start, min(total, start + per_message))]
        if envelopes:
            out.append(b'{"Records":[' + b",".join(events) + b"]}")
        else:
            out.append(b"\n".join(events))
    return out


def _heavy_bodies(broker: Broker, tag: str, total: int) -> list[bytes]:
    return _batched(tag, total, broker.events_per_message, broker.envelopes)


def _daemon_yaml(tmp: Path, name: str, source: dict[str, Any], api: bool = False) -> Path:
    """The config of a daemon run as a process: metrics on a free port, info logs; ``api``: also
    the HTTP API on a free port (for /readyz), parsing in the daemon's own process."""
    doc = yaml.safe_load(app_yaml(tmp / name, source, writer_id=name))
    doc["metrics"] = {"listen": "127.0.0.1:0"}
    doc["log"] = {"level": "info", "format": "json"}
    if api:
        doc["ingest"]["http"] = {"listen": "127.0.0.1:0", "decode_workers": 0}
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.mark.slow
async def test_kill9_midway_loses_nothing_and_archives_each_event_once(
    broker: Broker, tmp_path: Path
) -> None:
    total = EVENTS
    bodies = _heavy_bodies(broker, "k", total)
    expected = Counter(f"k-{i:07d}" for i in range(total))
    await broker.publish(bodies)
    source = broker.source_config(**broker.quick_redelivery)
    config = _daemon_yaml(tmp_path, "d1", source)
    daemon = DaemonProcess(config, tmp_path / "d1.log")
    await daemon.start()
    label = f'source="{source["name"]}"'
    await wait_until(
        lambda: _metric_at_least(daemon, "trailkeeper_source_messages_acked_total", label, len(bodies) // 3),
        120,
        "a third of the messages acked",
        0.05,
    )
    await daemon.kill9()
    restarted = DaemonProcess(config, tmp_path / "d1.log")
    await restarted.start()
    try:
        await wait_until(lambda: _zero(broker), 180, "every message acked after the restart", 1)
    finally:
        assert await restarted.terminate() == 0
    assert_exactly_once(archived_ids(tmp_path / "d1" / "archive"), expected)


async def _metric_at_least(daemon: DaemonProcess, name: str, labels: str, value: float) -> bool:
    return await daemon.metric(name, labels) >= value


# --- scale-out ---------------------------------------------------------------------------------------


@pytest.mark.slow
async def test_two_daemons_share_one_consumer_and_archive_each_event_once(
    broker: Broker, tmp_path: Path
) -> None:
    if broker.kind not in ("nats", "sqs"):
        pytest.skip("scale-out is shown on NATS (one durable consumer) and SQS (one queue)")
    total = EVENTS
    bodies = _heavy_bodies(broker, "s", total)
    expected = Counter(f"s-{i:07d}" for i in range(total))
    source = broker.source_config()
    label = f'source="{source["name"]}"'
    daemons = [DaemonProcess(_daemon_yaml(tmp_path, n, source), tmp_path / f"{n}.log") for n in ("d1", "d2")]
    await asyncio.gather(*(d.start() for d in daemons))
    try:
        # Both consume before the events arrive, as replicas of a running deployment do: a daemon
        # that connected first to a full queue could otherwise drain it alone before the other
        # one pulls at all.
        for d in daemons:
            await wait_until(
                lambda d=d: _metric_at_least(d, "trailkeeper_source_connected", label, 1),
                30,
                "both daemons connected",
                0.1,
            )
        await broker.publish(bodies)
        await wait_until(lambda: _zero(broker), 240, "every message acked", 1)
    finally:
        codes = await asyncio.gather(*(d.terminate() for d in daemons))
    assert codes == [0, 0]
    shares = [archived_ids(tmp_path / n / "archive") for n in ("d1", "d2")]
    assert all(sum(s.values()) > 0 for s in shares), "both daemons took part"
    assert_exactly_once(shares[0] + shares[1], expected)
    # Each daemon wrote its own files, named by its own writer id.
    for name in ("d1", "d2"):
        files = list((tmp_path / name / "archive").rglob("*.json.gz"))
        assert files and all(f.name.startswith(f"{name}_") for f in files)
