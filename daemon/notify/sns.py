"""AWS SNS Publish through aiobotocore, to AWS or any SNS-compatible endpoint.

Message is the rendered text, Subject the title (SNS allows under 100 ASCII
characters on one line), both within SNS's limits (daemon/notify/limits.py).
The notification id travels as a message attribute; on FIFO topics it is also
the deduplication id, so SNS itself drops a retried duplicate. The attributes
``severity``, ``category``, ``rule``, ``tenant`` and ``operation`` (String) let
an SNS subscription filter policy select messages, e.g.
``{"severity": ["critical"]}``.
"""

from __future__ import annotations

import hashlib
from typing import Any

from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError

from daemon.notify.base import REASON_CONNECT, REASON_SNS, REASON_THROTTLED, DeliveryError, text_of
from daemon.notify.config import SnsSubscription, severity_rank
from daemon.notify.escape import sanitize
from daemon.notify.limits import (
    SNS_ATTRIBUTE_VALUE_BYTES,
    SNS_MAX_ATTRIBUTES,
    SNS_SUBJECT_CHARS,
    SNS_TOTAL_BYTES,
    clip,
    utf8_len,
)
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


def _subject(title: str) -> str:
    # SNS: printable ASCII, one line, under 100 characters, starting with a letter, digit or
    # punctuation (so no leading space).
    ascii_only = "".join(c if 32 <= ord(c) < 127 else " " for c in title)
    subject = " ".join(ascii_only.split())
    return clip(subject, SNS_SUBJECT_CHARS - 1, marker="...") or "trailkeeper"


def _most_severe(matches: list[Any]) -> dict[str, Any]:
    dicts = [m for m in matches if isinstance(m, dict)]
    if not dicts:
        return {}
    # max() keeps the first of equals: the classifier's order breaks ties.
    return max(dicts, key=lambda m: severity_rank(str(m.get("severity") or "")))


def filter_attributes(doc: dict[str, Any]) -> dict[str, str]:
    """What SNS subscription filter policies select on: severity, category and rule (of the most
    severe match), tenant and operation (a group's most frequent one). Empty values are left out
    (SNS refuses them)."""
    matches = doc.get("matches") or []
    top = _most_severe(matches if isinstance(matches, list) else [])
    event = doc.get("event") or {}
    group = doc.get("group") or {}
    key = group.get("key")
    key = key if isinstance(key, dict) else {}
    operations = group.get("operations")
    operations = operations if isinstance(operations, dict) else {}
    values = {
        "severity": doc.get("severity") or top.get("severity"),
        "category": top.get("category"),
        "rule": top.get("rule"),
        "tenant": event.get("tenant") or key.get("tenant"),
        "operation": event.get("operation") or next(iter(operations), None),
    }
    out = {}
    for name, value in values.items():
        if value is None:
            continue
        clean = clip(sanitize(str(value)), SNS_ATTRIBUTE_VALUE_BYTES, utf8_len, marker="...")
        if clean:
            out[name] = clean
    return out


def publish_args(msg: OutMessage, cfg: SnsSubscription, topic: str) -> dict[str, Any]:
    """Publish arguments: the whole request within SNS's 256 KB, at most 10 attributes."""
    title, text, doc = text_of(msg)
    subject = _subject(title)
    values = {"trailkeeper.id": msg.id, "trailkeeper.topic": topic}
    event_id = (doc.get("event") or {}).get("id")
    if event_id:
        values["trailkeeper.event_id"] = clip(
            sanitize(str(event_id)), SNS_ATTRIBUTE_VALUE_BYTES, utf8_len, marker="..."
        )
    values.update(filter_attributes(doc))
    assert len(values) <= SNS_MAX_ATTRIBUTES
    attrs = {name: {"DataType": "String", "StringValue": v} for name, v in values.items()}
    # Attributes count toward the 256 KB (name, type and value); keep a margin for the rest.
    used = len(subject) + sum(len(n) + len("String") + utf8_len(v) for n, v in values.items())
    message = clip(text or title or subject, SNS_TOTAL_BYTES - used - 1024, utf8_len)
    args: dict[str, Any] = {
        "TopicArn": cfg.topic_arn,
        "Message": message,
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
