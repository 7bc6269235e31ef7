"""HTTP(S) webhooks, signed per Standard Webhooks (https://www.standardwebhooks.com/).

The body is a JSON document: ``type`` ("Notification", "GroupNotification" or
"SubscriptionConfirmation"), ``id`` (also the ``webhook-id`` header, the same
on every retry), ``topic``, ``subscription``, ``title``, ``text`` and the
notification itself (``event`` and ``matches``, or ``group``); with
``include_record``, also ``record``: the event as stored (the JSON received,
parsed). Structured fields are data for programs and are sent exactly as
received (JSON-escaped); ``title`` and ``text`` are sanitized like every
protocol's.
"""

from __future__ import annotations

import time

import orjson

from daemon.notify.base import HttpPoster, json_headers, ssl_context, text_of
from daemon.notify.config import WebhookSubscription
from daemon.notify.outbox import OutMessage
from daemon.notify.signing import standard_webhook_headers


def webhook_body(msg: OutMessage, topic: str, subscription: str, include_record: bool = False) -> bytes:
    """The exact bytes sent for a message: deterministic, so every retry carries the same body.

    ``record`` (the stored event, its JSON text spliced in unchanged) is sent only with
    ``include_record`` and only when the message holds it; otherwise the body has canonical
    fields only."""
    title, text, doc = text_of(msg)
    kind = doc.get("kind", "event")
    payload = {
        "type": "GroupNotification" if kind == "group" else "Notification",
        "id": msg.id,
        "topic": topic,
        "subscription": subscription,
        "title": title,
        "text": text,
        **{k: v for k, v in doc.items() if k not in ("kind", "topic", "record", "record_json")},
    }
    if include_record and kind != "group":
        stored = doc.get("record_json")
        if isinstance(stored, str):
            # Spliced in as received: what the auditor's program reads is the stored JSON itself.
            payload["record"] = orjson.Fragment(stored)
    return orjson.dumps(payload)


class WebhookSender:
    def __init__(self, topic: str, cfg: WebhookSubscription, timeout: float) -> None:
        self.topic = topic
        self.cfg = cfg
        ctx = ssl_context(cfg.verify_tls, cfg.ca_file, cfg.client_cert, cfg.client_key)
        self.http = HttpPoster(timeout, ctx if cfg.url.startswith("https://") else None)

    def _headers(self, msg_id: str, body: bytes) -> dict[str, str]:
        # Signature headers are set last: configured headers cannot forge or drop them.
        signed = standard_webhook_headers(msg_id, int(time.time()), body, self.cfg.secrets)
        return json_headers({**self.cfg.headers, **signed})

    async def send(self, msg: OutMessage) -> None:
        body = webhook_body(msg, self.topic, self.cfg.name, self.cfg.include_record)
        await self.http.post(self.cfg.url, body, self._headers(msg.id, body))

    async def send_confirmation(self, token: str, confirm_url: str) -> None:
        """Ask the endpoint to confirm (as SNS and SMN do). Raises DeliveryError."""
        msg_id = f"confirm_{token[:16]}"
        body = orjson.dumps(
            {
                "type": "SubscriptionConfirmation",
                "id": msg_id,
                "topic": self.topic,
                "subscription": self.cfg.name,
                "token": token,
                "confirm_url": confirm_url,
                "text": (
                    f"trailkeeper wants to deliver notifications of topic {self.topic!r} to this endpoint. "
                    f"To confirm, GET the confirm_url. Until then nothing else is sent."
                ),
            }
        )
        await self.http.post(self.cfg.url, body, self._headers(msg_id, body))

    async def close(self) -> None:
        await self.http.close()
