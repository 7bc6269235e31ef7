"""Real receivers for notification tests: an aiohttp HTTP server, helpers to send events."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import ROOT, free_port


def _stratus() -> Path:
    # The shared data sits beside the checkout (CI) or beside the worktrees' parent.
    for parent in ROOT.parents:
        candidate = parent / "shared" / "data" / "cloudtrail-stratus"
        if candidate.exists():
            return candidate
    pytest.skip("shared data (shared/data/cloudtrail-stratus) not found beside the checkout")


@dataclass
class Received:
    at: float
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    status: int

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    """An HTTP endpoint on 127.0.0.1 that records every request (even those it refuses).

    ``status`` is what it answers; ``delay`` is how long it takes. ``down()`` closes the
    listening socket (connection refused), ``up()`` reopens it on the same port.
    """

    status: int = 200
    delay: float = 0.0
    reply: bytes = b"ok"
    headers: dict[str, str] = field(default_factory=dict)
    requests: list[Received] = field(default_factory=list)
    port: int = 0
    _runner: web.AppRunner | None = None
    _site: web.TCPSite | None = None
    _cond: asyncio.Condition | None = None

    async def start(self) -> Receiver:
        self._cond = asyncio.Condition()
        app = web.Application(client_max_size=64 * 1024**2)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.5)
        await self._runner.setup()
        await self.up()
        return self

    async def up(self) -> None:
        assert self._runner is not None
        self._site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
        await self._site.start()
        if not self.port:
            self.port = self._site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def down(self) -> None:
        if self._site is not None:
            await self._site.stop()
            self._site = None

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if self.delay:
            await asyncio.sleep(self.delay)
        status = self.status
        rec = Received(time.time(), request.path, dict(request.query), dict(request.headers), body, status)
        self.requests.append(rec)
        assert self._cond is not None
        async with self._cond:
            self._cond.notify_all()
        return web.Response(status=status, body=self.reply, headers=self.headers)

    def ok(self, path: str | None = None) -> list[Received]:
        return [r for r in self.requests if 200 <= r.status < 300 and (path is None or r.path == path)]

    async def wait_for(self, pred: Any, timeout: float) -> None:
        assert self._cond is not None
        async with asyncio.timeout(timeout), self._cond:
            await self._cond.wait_for(lambda: pred(self))


def stop_logging_record() -> dict[str, Any]:
    records = json.loads((_stratus() / "aws.defense-evasion.cloudtrail-stop.json").read_text())
    return dict(records[0])


def key_events(n: int, operation: str = "StopLogging", user: str = "mallory") -> list[dict[str, Any]]:
    """``n`` distinct CloudTrail records of a key operation, from the real StopLogging record."""
    base = stop_logging_record()
    out = []
    for _ in range(n):
        rec = copy.deepcopy(base)
        rec["eventID"] = str(uuid.uuid4())
        rec["eventName"] = operation
        if operation == "DeleteBucket":
            rec["eventSource"] = "s3.amazonaws.com"
            rec["requestParameters"] = {"bucketName": f"b-{rec['eventID'][:8]}"}
        rec["userIdentity"] = {**rec.get("userIdentity", {}), "userName": user, "type": "IAMUser"}
        rec["eventTime"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        out.append(rec)
    return out


def background_events(n: int) -> list[dict[str, Any]]:
    """Events no rule selects (read-only calls)."""
    base = stop_logging_record()
    out = []
    for _ in range(n):
        rec = copy.deepcopy(base)
        rec["eventID"] = str(uuid.uuid4())
        rec["eventSource"] = "s3.amazonaws.com"
        rec["eventName"] = "GetObject"
        out.append(rec)
    return out


async def post_events(session: aiohttp.ClientSession, port: int, records: list[dict[str, Any]]) -> None:
    body = "\n".join(json.dumps(r) for r in records).encode()
    async with session.post(
        f"http://127.0.0.1:{port}/v1/events", data=body, headers={"Content-Type": "application/x-ndjson"}
    ) as resp:
        assert resp.status == 202, await resp.text()


def event_ids_of(requests: list[Received]) -> list[str]:
    return [r.json()["event"]["id"] for r in requests]


def notify_yaml(topics: str, routes: str, delivery: str = "") -> str:
    """A ``notify:`` section; ``topics`` and ``routes`` are YAML indented by four spaces."""
    text = "notify:\n  topics:\n" + topics + "  routes:\n" + routes
    if delivery:
        text += "  delivery: " + delivery + "\n"
    return text


@contextlib.contextmanager
def moto_sns_to_sqs(**subscription_attributes: str) -> Iterator[dict[str, Any]]:
    """An SNS topic whose messages land in an SQS queue, on a moto server (server mode,
    loopback, a free port). ``subscription_attributes`` go to the SQS subscription
    (a ``FilterPolicy``, say). Yields endpoint, topic_arn, queue_url and the ``sqs`` client."""
    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{port}"
        kw: dict[str, Any] = {
            "endpoint_url": endpoint,
            "region_name": "us-east-1",
            "aws_access_key_id": "testing",
            "aws_secret_access_key": "testing",
        }
        sns, sqs = boto3.client("sns", **kw), boto3.client("sqs", **kw)
        name = f"tk-{time.time_ns()}"
        topic_arn = sns.create_topic(Name=name)["TopicArn"]
        queue_url = sqs.create_queue(QueueName=name)["QueueUrl"]
        attrs = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]
        sns.subscribe(
            TopicArn=topic_arn, Protocol="sqs", Endpoint=attrs["QueueArn"], Attributes=subscription_attributes
        )
        yield {"endpoint": endpoint, "topic_arn": topic_arn, "queue_url": queue_url, "sqs": sqs}
    finally:
        server.stop()
