"""Events/s from each broker into the journal, beside a broker-native baseline. Prints ONE JSON line.

For each broker: publish N one-event messages, consume and ack them with a
minimal client of the broker's own library (the baseline), publish the same N
again, and consume them with the trailkeeper source into a real journal
(fsync on, group commit). ``ratio`` = source events/s / baseline events/s.

    python bench/sources.py [--events 100000] [--brokers nats,redis,amqp,sqs] [--sqs-events 1000]

SQS runs against moto's server on loopback (started here); moto is slow, so it
gets fewer messages (--sqs-events).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from daemon.decodepool import DecodePool, default_workers
from daemon.intake import Intake
from daemon.journal import Journal
from daemon.sources.amqp import AmqpSourceConfig
from daemon.sources.nats import NatsSourceConfig
from daemon.sources.redis import RedisSourceConfig
from daemon.sources.registry import build_source
from daemon.sources.sqs import SqsSourceConfig
from daemon.telemetry import configure_logging
from tests.contract.source_brokers import (
    AmqpBroker,
    Broker,
    MotoServer,
    NatsBroker,
    RedisBroker,
    SqsBroker,
)


def body(tag: str, i: int) -> bytes:
    return orjson.dumps(
        {
            "eventVersion": "1.08",
            "userIdentity": {"type": "IAMUser", "principalId": "AIDAEXAMPLE", "accountId": "123456789012"},
            "eventTime": "2024-05-01T12:00:00Z",
            "eventSource": "iam.amazonaws.com",
            "eventName": "CreateUser",
            "awsRegion": "us-east-1",
            "sourceIPAddress": "255.090.254.5",
            "requestParameters": {"userName": f"user-{i}"},
            "eventID": f"{tag}-{i:08d}",
        }
    )


# --- baselines: the same messages consumed and acked by the broker's own client -------------------


async def baseline_nats(b: NatsBroker, n: int) -> None:
    sub = await b.js.pull_subscribe(b.subject, durable=f"base{b.unique}", stream=b.stream)
    got = 0
    while got < n:
        msgs = await sub.fetch(500, timeout=2)
        for m in msgs:
            await m.ack()
        await b.nc.flush()
        got += len(msgs)


async def baseline_redis(b: RedisBroker, n: int) -> None:
    await b.r.xgroup_create(b.stream, f"base{b.unique}", id="0", mkstream=True)
    got = 0
    while got < n:
        resp = await b.r.xreadgroup(f"base{b.unique}", "c", {b.stream: ">"}, count=500, block=1000)
        ids = [eid for eid, _ in resp[0][1]] if resp else []
        if ids:
            await b.r.xack(b.stream, f"base{b.unique}", *ids)
        got += len(ids)


async def baseline_amqp(b: AmqpBroker, n: int) -> None:
    channel = await b.conn.channel()
    await channel.set_qos(prefetch_count=1000)
    queue = await channel.declare_queue(b.queue, passive=True)
    got = 0
    async with queue.iterator() as it:
        async for message in it:
            got += 1
            if got % 500 == 0 or got == n:
                await message.ack(multiple=True)
            if got >= n:
                break
    await channel.close()


async def baseline_sqs(b: SqsBroker, n: int) -> None:
    got = 0

    async def worker() -> None:
        nonlocal got
        while got < n:
            r = await b.client.receive_message(
                QueueUrl=b.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1
            )
            ms = r.get("Messages", [])
            if ms:
                await b.client.delete_message_batch(
                    QueueUrl=b.queue_url,
                    Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(ms)],
                )
            got += len(ms)

    await asyncio.gather(*(worker() for _ in range(4)))


BASELINES: dict[str, Any] = {
    "nats": baseline_nats,
    "redis": baseline_redis,
    "amqp": baseline_amqp,
    "sqs": baseline_sqs,
}


def source_model(b: Broker) -> Any:
    cfg = b.source_config(lag_interval="60s")
    kind = cfg["type"]
    if kind == "nats":
        cfg["consumer"] = f"src{b.unique}"
        return NatsSourceConfig.model_validate(cfg)
    if kind == "redis":
        cfg["group"] = f"src{b.unique}"
        return RedisSourceConfig.model_validate(cfg)
    if kind == "amqp":
        return AmqpSourceConfig.model_validate(cfg)
    return SqsSourceConfig.model_validate(cfg)


async def run_source(b: Broker, n: int, journal_dir: Path) -> float:
    journal = Journal(journal_dir, max_bytes=4 * 1024**3)
    await journal.open()
    source = build_source(source_model(b), Intake(journal), "bench")
    # As in the daemon: large batches of messages are decoded in worker processes.
    pool = DecodePool(default_workers())
    source.pool = pool
    await pool.start()  # as the daemon does before it consumes
    start = time.perf_counter()
    await source.start()
    await journal.wait_for(n - 1, timeout=None)
    elapsed = time.perf_counter() - start
    await source.stop()
    await journal.close()
    await pool.close()
    return elapsed


async def bench_one(kind: str, n: int) -> dict[str, Any]:
    b: Broker = {"nats": NatsBroker, "redis": RedisBroker, "amqp": AmqpBroker, "sqs": SqsBroker}[kind]()
    reason = b.unreachable()
    if reason:
        return {"skipped": reason}
    await b.create()
    try:
        await b.publish([body("base", i) for i in range(n)])
        start = time.perf_counter()
        await BASELINES[kind](b, n)
        base_s = time.perf_counter() - start
        await b.publish([body("src", i) for i in range(n)])
        with tempfile.TemporaryDirectory() as tmp:
            src_s = await run_source(b, n, Path(tmp))
    finally:
        await b.delete()
        await b.close()
    return {
        "events": n,
        "baseline_events_per_s": round(n / base_s),
        "source_events_per_s": round(n / src_s),
        "ratio": round(base_s / src_s, 3),
    }


async def main() -> None:
    parser = argparse.ArgumentParser()
    # Long enough that connecting and the first fetch do not weigh on the rate.
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--sqs-events", type=int, default=1000)
    parser.add_argument("--brokers", default="nats,redis,amqp,sqs")
    args = parser.parse_args()
    configure_logging("warning", "json")
    out: dict[str, Any] = {"bench": "sources", "journal_fsync": True}
    moto: MotoServer | None = None
    try:
        for kind in args.brokers.split(","):
            if kind == "sqs":
                moto = MotoServer()
                moto.start()
                SqsBroker.moto_port = moto.port
            out[kind] = await bench_one(kind, args.sqs_events if kind == "sqs" else args.events)
    finally:
        if moto is not None:
            moto.stop()
    print(orjson.dumps(out).decode())


if __name__ == "__main__":
    asyncio.run(main())
