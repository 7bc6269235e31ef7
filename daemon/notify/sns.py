"""AWS SNS Publish through aiobotocore, to AWS or any SNS-compatible endpoint.

Message is the rendered text, Subject the title (SNS allows 100 characters on one
line). The notification id travels as a message attribute; on FIFO topics it is
also the deduplication id, so SNS itself drops a retried duplicate.
"""

from __future__ import annotations

import hashlib
from typing import Any

from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError

from daemon.notify.base import REASON_CONNECT, REASON_SNS, REASON_THROTTLED, DeliveryError, text_of
from daemon.notify.config import SnsSubscription
from daemon.notify.outbox import OutMessage

_RETRY_CODES = {
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "InternalError",
    "InternalFailure",
    "ServiceUnavailable",
    "KMSThrottling",
    "RequestTimeout",
}


def publish_args(msg: OutMessage, cfg: SnsSubscription, topic: str) -> dict[str, Any]:
    title, text, doc = text_of(msg)
    subject = "".join(c if 32 <= ord(c) < 127 else " " for c in title)[:100].strip() or "trailkeeper"
    attrs: dict[str, Any] = {
        "trailkeeper.id": {"DataType": "String", "StringValue": msg.id},
        "trailkeeper.topic": {"DataType": "String", "StringValue": topic},
    }
    event_id = (doc.get("event") or {}).get("id")
    if event_id:
        attrs["trailkeeper.event_id"] = {"DataType": "String", "StringValue": str(event_id)}
    args: dict[str, Any] = {
        "TopicArn": cfg.topic_arn,
        "Message": text,
        "Subject": subject,
        "MessageAttributes": attrs,
    }
    if cfg.topic_arn.endswith(".fifo"):
        args["MessageGroupId"] = topic
        args["MessageDeduplicationId"] = hashlib.sha256(msg.id.encode()).hexdigest()
    return args


class SnsSender:
    def __init__(self, topic: str, cfg: SnsSubscription, timeout: float) -> None:
        self.topic = topic
        self.cfg = cfg
        self.timeout = timeout
        self._client: Any = None
        self._ctx: Any = None

    async def _get(self) -> Any:
        if self._client is None:
            from botocore.config import Config as BotoConfig

            cfg = self.cfg
            session = get_session()
            self._ctx = session.create_client(
                "sns",
                region_name=cfg.region,
                endpoint_url=cfg.endpoint_url,
                aws_access_key_id=cfg.access_key_id,
                aws_secret_access_key=cfg.secret_access_key,
                aws_session_token=cfg.session_token,
                config=BotoConfig(
                    connect_timeout=self.timeout, read_timeout=self.timeout, retries={"max_attempts": 1}
                ),
            )
            self._client = await self._ctx.__aenter__()
        return self._client

    async def send(self, msg: OutMessage) -> None:
        try:
            client = await self._get()
            await client.publish(**publish_args(msg, self.cfg, self.topic))
        except ClientError as exc:
            err = exc.response.get("Error", {})
            code = str(err.get("Code", ""))
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
            retry = code in _RETRY_CODES or status >= 500 or status == 429
            raise DeliveryError(
                REASON_THROTTLED if "hrottl" in code else REASON_SNS,
                f"SNS publish to {self.cfg.topic_arn} failed: {code}: {err.get('Message', '')}",
                retryable=retry,
            ) from exc
        except (BotoCoreError, OSError) as exc:
            raise DeliveryError(
                REASON_CONNECT, f"SNS endpoint for {self.cfg.topic_arn} unreachable: {exc}", retryable=True
            ) from exc

    async def close(self) -> None:
        if self._ctx is not None:
            await self._ctx.__aexit__(None, None, None)
            self._ctx = self._client = None
