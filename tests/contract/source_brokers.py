"""The real brokers behind the source contract suite, one adapter per source type.

Each adapter creates a uniquely named queue/stream, publishes raw message
bodies with the broker's own client, reports how many messages are still not
acknowledged, and builds the ``ingest.sources[]`` entry pointing the daemon at
it (optionally through a TCP proxy the tests can cut).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

CI = os.environ.get("CI", "").lower() == "true"


def port_open(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class TcpProxy:
    """A loopback TCP forwarder the tests can cut, to make a broker vanish for the daemon only.

    ``outage(seconds)`` closes every forwarded connection and refuses new ones for
    that long: to the daemon it is exactly a broker restart, while other users of the
    shared broker are untouched.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.connections = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))
        try:
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        finally:
            self._writers.discard(writer)
            self._writers.discard(up_writer)

    def sever(self) -> None:
        for w in list(self._writers):
            transport = w.transport
            transport.abort()
        self._writers.clear()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        self.sever()

    async def outage(self, seconds: float) -> None:
        await self.stop()
        await asyncio.sleep(seconds)
        await self.start()


class Broker(ABC):
    kind: str
    host = "127.0.0.1"
    port: int
    # The largest body the broker accepts with its default settings; the "oversize body"
    # poison test sends min(10 MB, this) against a smaller max_message_bytes.
    max_body: int = 10 * 1024 * 1024
    # SQS bodies are XML text: a body that is not UTF-8 cannot even be sent.
    binary_bodies = True
    # Seconds the broker's own figures may lag behind (0: exact).
    stats_lag = 0.0
    # How the heavy tests (kill -9, scale-out) pack events into messages: this many per message,
    # as NDJSON, or as a CloudTrail file envelope {"Records": [...]} when ``envelopes``.
    events_per_message = 10
    envelopes = False
    # Source settings that make the broker redeliver an unacknowledged message soon, for the
    # tests that cut the daemon off mid-batch.
    quick_redelivery: dict[str, Any] = {}  # noqa: RUF012 - read-only class default

    def __init__(self) -> None:
        self.unique = uuid.uuid4().hex[:10]

    def unreachable(self) -> str | None:
        if port_open(self.host, self.port):
            return None
        return f"{self.kind} broker not reachable on {self.host}:{self.port}"

    @abstractmethod
    async def create(self) -> None: ...

    @abstractmethod
    async def publish(self, bodies: list[bytes]) -> None: ...

    @abstractmethod
    async def outstanding(self) -> int:
        """Messages the consumer has not acknowledged (waiting or delivered-unacked)."""

    @abstractmethod
    def source_config(self, port: int | None = None, **overrides: Any) -> dict[str, Any]: ...

    async def settled(self) -> bool:
        """Every message acked, as far as the broker can tell (twice, when its figures lag)."""
        if await self.outstanding() != 0:
            return False
        if self.stats_lag:
            await asyncio.sleep(self.stats_lag)
            return await self.outstanding() == 0
        return True

    async def reopen(self) -> None:
        """Drop the adapter's client and connect again (after the broker process restarted)."""
        raise NotImplementedError(f"{self.kind}: the tests never restart this broker")

    async def delete(self) -> None:  # noqa: B027 - optional hook
        """Remove what ``create`` made (best effort)."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Close the adapter's own client."""


class NatsBroker(Broker):
    kind = "nats"
    port = 4222
    max_body = 1024 * 1024 - 4096  # the server's default max_payload is 1 MiB

    async def create(self) -> None:
        self.stream = f"TKT{self.unique}"
        self.subject = f"tkt.{self.unique}.events"
        self.consumer = f"tk{self.unique}"
        await self._connect()
        await self.js.add_stream(name=self.stream, subjects=[f"tkt.{self.unique}.>"])

    async def _connect(self) -> None:
        import nats

        # The test's own client must not reconnect by itself behind a broker restart: reopen does.
        self.nc = await nats.connect(f"nats://{self.host}:{self.port}", allow_reconnect=False)
        self.js = self.nc.jetstream()

    async def reopen(self) -> None:
        await self.close()
        await self._connect()

    async def publish(self, bodies: list[bytes]) -> None:
        for start in range(0, len(bodies), 500):
            acks = [
                self.js.publish(self.subject, b) for b in bodies[start : start + 500]
            ]  # JetStream acks each publish once it is stored
            await asyncio.gather(*acks)

    async def outstanding(self) -> int:
        import nats.js.errors

        try:
            info = await self.js.consumer_info(self.stream, self.consumer)
        except nats.js.errors.NotFoundError:
            s = await self.js.stream_info(self.stream)
            return int(s.state.messages)
        return int(info.num_pending or 0) + int(info.num_ack_pending or 0)

    def source_config(self, port: int | None = None, **overrides: Any) -> dict[str, Any]:
        cfg: dict[str, Any] = {
            "type": "nats",
            "name": f"nats-{self.unique}",
            "servers": [f"nats://127.0.0.1:{port or self.port}"],
            "stream": self.stream,
            "consumer": self.consumer,
            "filter_subject": self.subject,
            "ack_wait": "4s",
            "lag_interval": "1s",
            "reconnect_max": "2s",
        }
        cfg.update(overrides)
        return cfg

    async def delete(self) -> None:
        with contextlib.suppress(Exception):
            await self.js.delete_stream(self.stream)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.nc.close()


class RedisBroker(Broker):
    kind = "redis"
    port = 6379

    async def create(self) -> None:
        import redis.asyncio as aioredis

        self.stream = f"tkt:{self.unique}"
        self.group = f"tk{self.unique}"
        self.r = aioredis.Redis(host=self.host, port=self.port)
        await self.r.ping()

    async def reopen(self) -> None:
        import redis.asyncio as aioredis

        await self.close()
        self.r = aioredis.Redis(host=self.host, port=self.port)
        await self.r.ping()

    async def publish(self, bodies: list[bytes]) -> None:
        for start in range(0, len(bodies), 1000):
            pipe = self.r.pipeline(transaction=False)
            for b in bodies[start : start + 1000]:
                pipe.xadd(self.stream, {"body": b})
            await pipe.execute()

    async def publish_fields(self, fields: dict[str, str]) -> None:
        await self.r.xadd(self.stream, fields)

    async def outstanding(self) -> int:
        if not await self.r.exists(self.stream):
            return 0
        groups = await self.r.xinfo_groups(self.stream)
        for g in groups:
            if g["name"] in (self.group, self.group.encode()):
                return int(g.get("lag") or 0) + int(g["pending"])
        return int(await self.r.xlen(self.stream))

    def source_config(self, port: int | None = None, **overrides: Any) -> dict[str, Any]:
        cfg: dict[str, Any] = {
            "type": "redis",
            "name": f"redis-{self.unique}",
            "url": f"redis://127.0.0.1:{port or self.port}/0",
            "stream": self.stream,
            "group": self.group,
            "lag_interval": "1s",
            "reconnect_max": "2s",
            "claim_min_idle": "5s",
            "claim_interval": "1s",
        }
        cfg.update(overrides)
        return cfg

    async def delete(self) -> None:
        with contextlib.suppress(Exception):
            await self.r.delete(self.stream)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.r.aclose()


class AmqpBroker(Broker):
    kind = "amqp"
    port = 5672
    stats_lag = 6.0  # RabbitMQ's statistics interval is 5 s
    # How to run rabbitmqctl against this broker's node (a private node names itself, see RabbitNode).
    ctl: tuple[str, ...] = ("rabbitmqctl",)
    ctl_env: dict[str, str] | None = None

    async def create(self) -> None:
        self.queue = f"tkt.{self.unique}"
        await self._connect()

    async def _connect(self) -> None:
        import aio_pika

        self.conn = await aio_pika.connect(f"amqp://guest:guest@{self.host}:{self.port}/")
        self.channel = await self.conn.channel(publisher_confirms=True)
        await self.channel.declare_queue(
            self.queue, durable=True, arguments={"x-queue-type": "quorum", "x-delivery-limit": 20}
        )

    async def reopen(self) -> None:
        await self.close()
        await self._connect()

    async def publish(self, bodies: list[bytes]) -> None:
        import aio_pika

        for start in range(0, len(bodies), 500):
            await asyncio.gather(
                *(
                    self.channel.default_exchange.publish(
                        aio_pika.Message(b, message_id=uuid.uuid4().hex, delivery_mode=2),
                        routing_key=self.queue,
                    )
                    for b in bodies[start : start + 500]
                )
            )

    async def outstanding(self) -> int:
        # Ready messages come exact from a passive declare; unacknowledged ones only from the
        # broker's CLI, whose figures are refreshed every few seconds (see stats_lag).
        queue = await self.channel.declare_queue(self.queue, passive=True)
        ready = int(queue.declaration_result.message_count)
        proc = await asyncio.create_subprocess_exec(
            *self.ctl,
            "list_queues",
            "-q",
            "--no-table-headers",
            "name",
            "messages_unacknowledged",
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=self.ctl_env,
        )
        out, _ = await proc.communicate()
        for line in out.decode().splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0] == self.queue:
                return ready + int(parts[1])
        raise AssertionError(f"queue {self.queue} not listed by rabbitmqctl")

    def source_config(self, port: int | None = None, **overrides: Any) -> dict[str, Any]:
        cfg: dict[str, Any] = {
            "type": "amqp",
            "name": f"amqp-{self.unique}",
            "url": f"amqp://guest:guest@127.0.0.1:{port or self.port}/",
            "queue": self.queue,
            "lag_interval": "1s",
            "reconnect_max": "2s",
            "heartbeat": 5,
        }
        cfg.update(overrides)
        return cfg

    async def delete(self) -> None:
        with contextlib.suppress(Exception):
            await self.channel.queue_delete(self.queue)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.conn.close()


class MotoServer:
    """moto's S3/SQS API server in its own process on a free loopback port (moto_server.py)."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[str] | None = None
        self.port = 0

    def start(self) -> None:
        script = Path(__file__).with_name("moto_server.py")
        self.proc = subprocess.Popen(
            [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline())

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)


class SqsBroker(Broker):
    kind = "sqs"
    max_body = 256 * 1024 - 1024  # SQS's own limit
    binary_bodies = False
    # moto's SQS serves tens of messages/s once a queue holds thousands, so the heavy tests send
    # CloudTrail file envelopes: 100 records (about 45 KB) per message keep 100,000 events at
    # 1,000 messages, well under SQS's 256 KiB.
    events_per_message = 100
    envelopes = True
    quick_redelivery: dict[str, Any] = {"visibility_timeout": 8}  # noqa: RUF012
    moto_port = 0

    def __init__(self) -> None:
        super().__init__()
        self.port = self.moto_port

    async def create(self) -> None:
        from aiobotocore.session import get_session

        self._cm = get_session().create_client(
            "sqs",
            region_name="us-east-1",
            endpoint_url=f"http://127.0.0.1:{self.port}",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        self.client = await self._cm.__aenter__()
        resp = await self.client.create_queue(QueueName=f"tkt-{self.unique}")
        self.queue_url = resp["QueueUrl"]

    async def publish(self, bodies: list[bytes]) -> None:
        # A batch holds at most 10 messages and 256 KiB in all.
        chunks: list[list[bytes]] = [[]]
        for b in bodies:
            if len(chunks[-1]) == 10 or sum(map(len, chunks[-1])) + len(b) > 250_000:
                chunks.append([])
            chunks[-1].append(b)
        sem = asyncio.Semaphore(8)

        async def send(chunk: list[bytes]) -> None:
            async with sem:
                resp = await self.client.send_message_batch(
                    QueueUrl=self.queue_url,
                    Entries=[{"Id": str(i), "MessageBody": b.decode()} for i, b in enumerate(chunk)],
                )
                assert not resp.get("Failed"), resp["Failed"]

        await asyncio.gather(*(send(c) for c in chunks))

    async def outstanding(self) -> int:
        resp = await self.client.get_queue_attributes(
            QueueUrl=self.queue_url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )
        a = resp["Attributes"]
        return int(a["ApproximateNumberOfMessages"]) + int(a["ApproximateNumberOfMessagesNotVisible"])

    def source_config(self, port: int | None = None, **overrides: Any) -> dict[str, Any]:
        cfg: dict[str, Any] = {
            "type": "sqs",
            "name": f"sqs-{self.unique}",
            "queue_url": self.queue_url.replace(f":{self.port}", f":{port or self.port}"),
            "endpoint_url": f"http://127.0.0.1:{port or self.port}",
            "access_key_id": "testing",
            "secret_access_key": "testing",
            "wait_time": 1,
            "visibility_timeout": 30,
            "lag_interval": "1s",
            "reconnect_max": "2s",
        }
        cfg.update(overrides)
        return cfg

    async def delete(self) -> None:
        with contextlib.suppress(Exception):
            await self.client.delete_queue(QueueUrl=self.queue_url)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self._cm.__aexit__(None, None, None)


BROKERS: dict[str, type[Broker]] = {
    "sqs": SqsBroker,
    "nats": NatsBroker,
    "amqp": AmqpBroker,
    "redis": RedisBroker,
}


def read_archive(root: Path) -> tuple[list[bytes], list[dict[str, Any]]]:
    """Every event record in the archive's trail files, and every quarantine line."""
    import gzip

    import orjson

    from daemon.archive.fileformat import read_records

    records: list[bytes] = []
    quarantined: list[dict[str, Any]] = []
    if not root.exists():
        return records, quarantined
    for path in sorted(root.rglob("*.gz")):
        if path.name.startswith("."):
            continue
        data = path.read_bytes()
        if path.name.endswith(".jsonl.gz"):
            for line in gzip.decompress(data).splitlines():
                if line.strip():
                    quarantined.append(orjson.loads(line))
        else:
            records.extend(read_records(data))
    return records, quarantined


class DaemonProcess:
    """``python -m daemon run --config FILE`` as a child process, with its metrics (and API) port."""

    def __init__(self, config_path: Path, log_path: Path) -> None:
        self.config_path = config_path
        self.log_path = log_path
        self.proc: asyncio.subprocess.Process | None = None
        self.metrics_port = 0
        self.http_port = 0  # set when the config enables the HTTP API (the health endpoints live there)

    async def start(self, timeout: float = 30) -> None:
        import orjson

        log = self.log_path.open("ab")
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "daemon",
            "run",
            "--config",
            str(self.config_path),
            stdout=log,
            stderr=subprocess.PIPE,
        )
        assert self.proc.stderr is not None
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            remaining = deadline - asyncio.get_running_loop().time()
            line = await asyncio.wait_for(self.proc.stderr.readline(), timeout=max(remaining, 0.1))
            if not line:
                raise AssertionError(f"daemon exited during startup; log in {self.log_path}")
            log.write(line)
            with contextlib.suppress(ValueError):
                doc = orjson.loads(line)
                if doc.get("event") == "app.started":
                    self.metrics_port = int(doc["metrics_port"])
                    if doc.get("http"):
                        self.http_port = int(str(doc["http"]).rsplit(":", 1)[1])
                    break
        self._drain = asyncio.create_task(self._copy(log))

    async def _copy(self, log: Any) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        while line := await self.proc.stderr.readline():
            log.write(line)
            log.flush()
        log.close()

    async def metric(self, name: str, labels: str) -> float:
        import aiohttp

        async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{self.metrics_port}/metrics") as r:
            text = await r.text()
        for line in text.splitlines():
            if line.startswith(f"{name}{{") and labels in line:
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    async def ready(self) -> tuple[bool, list[str]]:
        """/readyz: whether the daemon can accept events, and the problems it names when not."""
        return await self._health("/readyz", "ready")

    async def downstream(self) -> tuple[bool, list[str]]:
        """/healthz/downstream: whether stores, archivers and sources work, and which do not."""
        return await self._health("/healthz/downstream", "healthy")

    async def _health(self, path: str, flag: str) -> tuple[bool, list[str]]:
        import aiohttp

        assert self.http_port, "the daemon's config has no HTTP API"
        async with (
            aiohttp.ClientSession() as s,
            s.get(f"http://127.0.0.1:{self.http_port}{path}") as r,
        ):
            doc = await r.json()
        return r.status == 200 and bool(doc[flag]), list(doc["problems"])

    async def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        await self.proc.wait()
        await self._drain

    async def terminate(self, timeout: float = 60) -> int:
        assert self.proc is not None
        self.proc.terminate()
        rc = await asyncio.wait_for(self.proc.wait(), timeout)
        await self._drain
        return rc


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


B = TypeVar("B", bound=Broker)


@contextlib.asynccontextmanager
async def live(broker: B) -> AsyncIterator[B]:
    """The broker with its queue/stream created, deleted afterwards. Skips the test when the
    broker is unreachable, except under CI=true, where that fails it."""
    import pytest

    reason = broker.unreachable()
    if reason is not None:
        if CI:
            pytest.fail(f"{reason} (CI=true: brokers are required)")
        pytest.skip(reason)
    await broker.create()
    try:
        yield broker
    finally:
        await broker.delete()
        await broker.close()
