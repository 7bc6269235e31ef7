"""Amazon SQS source (aiobotocore): long polling, batches of 10, DeleteMessageBatch after durability.

Several workers long-poll side by side. While a batch is being made durable
(and longer, when the journal is full) its visibility timeout is extended
every third of ``visibility_timeout`` so no other consumer receives it.
Deletion is per entry: an entry SQS fails to delete is retried when the
failure is SQS's, and otherwise logged and counted (the message will be
received again; its events are not appended twice by this daemon).

FIFO queues (URL ending in ``.fifo``) work unchanged: SQS hands out a message
group only to one consumer at a time, and a batch is appended in the order received.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import Any, Literal

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from pydantic import Field

from daemon import telemetry
from daemon.intake import Intake
from daemon.sources.base import Message, QueueSource, QueueSourceConfig
from daemon.units import Duration


class SqsSourceConfig(QueueSourceConfig):
    """``ingest.sources[]`` entry with ``type: sqs``."""

    type: Literal["sqs"]
    """An Amazon SQS queue (standard or FIFO)."""
    queue_url: str = Field(min_length=1)
    """The queue URL; a URL ending in .fifo is a FIFO queue."""
    region: str = "us-east-1"
    """AWS region of the queue."""
    endpoint_url: str | None = None
    """Another SQS endpoint (a VPC endpoint, a compatible server); null: AWS's."""
    access_key_id: str | None = None
    """Access key; null: the usual AWS credential chain (environment, profile, instance role)."""
    secret_access_key: str | None = None
    """Secret key for access_key_id."""
    wait_time: int = Field(default=20, ge=0, le=20)
    """Long-poll wait of each receive, in seconds (0 to 20)."""
    batch: int = Field(default=10, ge=1, le=10)
    """Messages per receive (1 to 10)."""
    visibility_timeout: int = Field(default=60, ge=3, le=43200)
    """Seconds a received message stays hidden from other consumers; extended every third of it while held."""
    workers: int = Field(default=4, ge=1, le=64)
    """Concurrent long polls."""
    delete_attempts: int = Field(default=3, ge=1)
    """Tries of a delete SQS failed on its side before the failure is logged (the message then comes back
    and is not appended twice).
    """
    request_timeout: Duration = 30.0
    """Time allowed for one API call beyond the long-poll wait."""


class SqsSource(QueueSource):
    type = "sqs"

    def __init__(self, config: SqsSourceConfig, intake: Intake, writer_id: str) -> None:
        super().__init__(config, intake, writer_id)
        self.cfg = config
        self.workers = config.workers
        self.keepalive_interval = config.visibility_timeout / 3
        self.fifo = config.queue_url.endswith(".fifo")
        self._client: Any = None
        self._client_cm: Any = None

    async def connect(self) -> None:
        c = self.cfg
        session = get_session()
        self._client_cm = session.create_client(
            "sqs",
            region_name=c.region,
            endpoint_url=c.endpoint_url,
            aws_access_key_id=c.access_key_id,
            aws_secret_access_key=c.secret_access_key,
            config=AioConfig(
                connect_timeout=10,
                read_timeout=c.wait_time + c.request_timeout,
                retries={"max_attempts": 2, "mode": "standard"},
                max_pool_connections=max(10, c.workers * 2 + 2),
            ),
        )
        self._client = await self._client_cm.__aenter__()
        # Fails early, with the queue named, if the queue is missing or access is denied.
        await self._client.get_queue_attributes(QueueUrl=c.queue_url, AttributeNames=["QueueArn"])

    async def disconnect(self) -> None:
        cm, self._client_cm, self._client = self._client_cm, None, None
        if cm is not None:
            with contextlib.suppress(Exception):
                await cm.__aexit__(None, None, None)

    async def fetch(self, worker: int) -> list[Message]:
        c = self.cfg
        params: dict[str, Any] = {
            "QueueUrl": c.queue_url,
            "MaxNumberOfMessages": c.batch,
            "WaitTimeSeconds": c.wait_time,
            "VisibilityTimeout": c.visibility_timeout,
            "AttributeNames": ["All"],
        }
        if self.fifo:
            params["ReceiveRequestAttemptId"] = uuid.uuid4().hex
        resp = await self._client.receive_message(**params)
        out: list[Message] = []
        for m in resp.get("Messages", []):
            count = int(m.get("Attributes", {}).get("ApproximateReceiveCount", "1"))
            out.append(
                Message(
                    body=m["Body"].encode("utf-8"),
                    ref=m["MessageId"],
                    redelivered=count > 1,
                    handle=m["ReceiptHandle"],
                    generation=self.generation,
                )
            )
        return out

    async def ack(self, messages: list[Message], whole_batch: bool) -> None:
        for start in range(0, len(messages), 10):
            await self._delete(messages[start : start + 10])

    async def _delete(self, messages: list[Message]) -> None:
        pending = {str(i): m for i, m in enumerate(messages)}
        for attempt in range(self.cfg.delete_attempts):
            resp = await self._client.delete_message_batch(
                QueueUrl=self.cfg.queue_url,
                Entries=[{"Id": i, "ReceiptHandle": m.handle} for i, m in pending.items()],
            )
            retry: dict[str, Message] = {}
            for failure in resp.get("Failed", []):
                m = pending[failure["Id"]]
                if failure.get("SenderFault") or attempt == self.cfg.delete_attempts - 1:
                    telemetry.SOURCE_ACK_FAILURES.labels(source=self.name).inc()
                    self.log.warning(
                        "sqs.delete_failed",
                        ref=m.ref,
                        code=failure.get("Code"),
                        error=failure.get("Message"),
                        hint="the message will be received again; its events are already durable",
                    )
                else:
                    retry[failure["Id"]] = m
            if not retry:
                return
            pending = retry
            await asyncio.sleep(0.2 * (attempt + 1))

    async def keepalive(self, messages: list[Message]) -> None:
        for start in range(0, len(messages), 10):
            chunk = messages[start : start + 10]
            await self._client.change_message_visibility_batch(
                QueueUrl=self.cfg.queue_url,
                Entries=[
                    {
                        "Id": str(i),
                        "ReceiptHandle": m.handle,
                        "VisibilityTimeout": self.cfg.visibility_timeout,
                    }
                    for i, m in enumerate(chunk)
                ],
            )

    async def consumer_lag(self) -> int | None:
        if self._client is None:
            return None
        resp = await self._client.get_queue_attributes(
            QueueUrl=self.cfg.queue_url, AttributeNames=["ApproximateNumberOfMessages"]
        )
        return int(resp["Attributes"]["ApproximateNumberOfMessages"])
