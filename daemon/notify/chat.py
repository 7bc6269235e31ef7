"""Chat platform webhooks: Slack, Microsoft Teams, Feishu/Lark, DingTalk, WeCom.

Each builds the payload its platform documents for incoming webhooks, held to
the platform's size limits (daemon/notify/limits.py), and reads the platform's
answer: Feishu, DingTalk and WeCom answer HTTP 200 with an error
code in the body, so a 200 is not taken as success on its own.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from daemon.notify.base import (
    REASON_REJECTED,
    REASON_THROTTLED,
    DeliveryError,
    HttpPoster,
    json_headers,
    ssl_context,
    text_of,
)
from daemon.notify.config import (
    DingTalkSubscription,
    FeishuSubscription,
    SlackSubscription,
    TeamsSubscription,
    WeComSubscription,
)
from daemon.notify.limits import (
    CHAT_TITLE_CHARS,
    DINGTALK_PAYLOAD_BYTES,
    FEISHU_PAYLOAD_BYTES,
    SLACK_HEADER_UNITS,
    SLACK_SECTION_UNITS,
    TEAMS_PAYLOAD_BYTES,
    WECOM_CONTENT_BYTES,
    clip,
    fit,
    utf8_len,
    utf16_len,
)
from daemon.notify.outbox import OutMessage
from daemon.notify.signing import dingtalk_signed_url, feishu_sign

ChatSubscription = (
    SlackSubscription | TeamsSubscription | FeishuSubscription | DingTalkSubscription | WeComSubscription
)

# Platform error codes that mean "slow down / busy": retry. Any other non-zero code is a
# configuration problem (bad token, signature, keyword, IP allow-list): park it.
_FEISHU_RETRY = {9499, 11232, 11233}
_DINGTALK_RETRY = {-1, 130101, 130102}
_WECOM_RETRY = {-1, 45009, 45033}


def _json_len(payload: dict[str, Any]) -> int:
    return len(orjson.dumps(payload))


def slack_payload(title: str, text: str) -> dict[str, Any]:
    """Slack incoming webhook: ``text`` (fallback, notifications) and Block Kit ``blocks``.
    Title and text arrive escaped for mrkdwn; each field is held to its block's limit."""
    # The fallback ``text`` may hold SLACK_TEXT_UNITS; a notification preview needs far less.
    header = clip(title, SLACK_HEADER_UNITS, utf16_len)
    section = fit(text, utf16_len, SLACK_SECTION_UNITS)
    return {
        "text": clip(title, SLACK_SECTION_UNITS, utf16_len),
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": header, "emoji": False}},
            {"type": "section", "text": {"type": "mrkdwn", "text": section}},
        ],
    }


def _teams(title: str, text: str) -> dict[str, Any]:
    return {
        "type": "message",
        "attachments": [
            {
                "contentType": "application/vnd.microsoft.card.adaptive",
                "contentUrl": None,
                "content": {
                    "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                    "type": "AdaptiveCard",
                    "version": "1.4",
                    "body": [
                        {
                            "type": "TextBlock",
                            "text": title,
                            "weight": "Bolder",
                            "size": "Medium",
                            "wrap": True,
                        },
                        {"type": "TextBlock", "text": text.replace("\n", "\n\n"), "wrap": True},
                    ],
                },
            }
        ],
    }


def teams_payload(title: str, text: str) -> dict[str, Any]:
    """Teams (Workflows "post to a channel when a webhook request is received"): a message
    with one Adaptive Card attachment, at most TEAMS_PAYLOAD_BYTES in all."""
    title = clip(title, CHAT_TITLE_CHARS)
    text = fit(text, lambda t: _json_len(_teams(title, t)), TEAMS_PAYLOAD_BYTES)
    return _teams(title, text)


def _feishu(title: str, text: str, secret: str | None, now: float) -> dict[str, Any]:
    body: dict[str, Any] = {"msg_type": "text", "content": {"text": f"{title}\n{text}"}}
    if secret:
        ts = int(now)
        body = {"timestamp": str(ts), "sign": feishu_sign(secret, ts), **body}
    return body


def feishu_payload(title: str, text: str, secret: str | None, now: float) -> dict[str, Any]:
    """Feishu/Lark custom bot text message; ``timestamp`` and ``sign`` when signing is on.
    At most FEISHU_PAYLOAD_BYTES in all."""
    title = clip(title, CHAT_TITLE_CHARS)
    text = fit(text, lambda t: _json_len(_feishu(title, t, secret, now)), FEISHU_PAYLOAD_BYTES)
    return _feishu(title, text, secret, now)


def _dingtalk(title: str, text: str, at_mobiles: list[str]) -> dict[str, Any]:
    md = f"#### {clip(title, CHAT_TITLE_CHARS)}\n\n" + text.replace("\n", "\n\n")
    if at_mobiles:
        md += "\n\n" + " ".join(f"@{m}" for m in at_mobiles)
    return {
        "msgtype": "markdown",
        # The title is what the conversation list and the push notification show.
        "markdown": {"title": clip(title, 64), "text": md},
        "at": {"atMobiles": at_mobiles, "isAtAll": False},
    }


def dingtalk_payload(title: str, text: str, at_mobiles: list[str]) -> dict[str, Any]:
    """DingTalk custom robot markdown message, at most DINGTALK_PAYLOAD_BYTES in all."""
    text = fit(text, lambda t: _json_len(_dingtalk(title, t, at_mobiles)), DINGTALK_PAYLOAD_BYTES)
    return _dingtalk(title, text, at_mobiles)


def _wecom_content(title: str, text: str) -> str:
    return f"**{clip(title, CHAT_TITLE_CHARS)}**\n{text}"


def wecom_payload(title: str, text: str) -> dict[str, Any]:
    """WeCom group robot markdown message (content at most WECOM_CONTENT_BYTES)."""
    text = fit(text, lambda t: utf8_len(_wecom_content(title, t)), WECOM_CONTENT_BYTES)
    return {"msgtype": "markdown", "markdown": {"content": _wecom_content(title, text)}}


def _check_code(protocol: str, data: bytes) -> None:
    try:
        doc = orjson.loads(data) if data.strip() else {}
    except orjson.JSONDecodeError:
        return  # not JSON: the HTTP status already said success
    if not isinstance(doc, dict):
        return
    if protocol == "feishu":
        code = doc.get("code", doc.get("StatusCode", 0))
        msg = doc.get("msg", doc.get("StatusMessage", ""))
        retry = _FEISHU_RETRY
    else:
        code = doc.get("errcode", 0)
        msg = doc.get("errmsg", "")
        retry = _DINGTALK_RETRY if protocol == "dingtalk" else _WECOM_RETRY
    if code in (0, None):
        return
    retryable = code in retry
    raise DeliveryError(
        REASON_THROTTLED if retryable else REASON_REJECTED,
        f"{protocol} refused the message: code {code}: {msg}",
        retryable=retryable,
    )


class ChatSender:
    def __init__(self, topic: str, cfg: ChatSubscription, timeout: float) -> None:
        self.topic = topic
        self.cfg = cfg
        ctx = ssl_context(cfg.verify_tls, cfg.ca_file, cfg.client_cert, cfg.client_key)
        self.http = HttpPoster(timeout, ctx if cfg.url.startswith("https://") else None)

    def build(self, msg: OutMessage, now: float | None = None) -> tuple[str, dict[str, Any]]:
        """(URL, JSON payload) for one attempt. DingTalk and Feishu signatures use the attempt's time."""
        now = time.time() if now is None else now
        title, text, _ = text_of(msg)
        cfg = self.cfg
        url = cfg.url
        if isinstance(cfg, SlackSubscription):
            return url, slack_payload(title, text)
        if isinstance(cfg, TeamsSubscription):
            return url, teams_payload(title, text)
        if isinstance(cfg, FeishuSubscription):
            return url, feishu_payload(title, text, cfg.secret, now)
        if isinstance(cfg, DingTalkSubscription):
            if cfg.secret:
                url = dingtalk_signed_url(url, cfg.secret, int(now * 1000))
            return url, dingtalk_payload(title, text, cfg.at_mobiles)
        return url, wecom_payload(title, text)

    async def send(self, msg: OutMessage) -> None:
        url, payload = self.build(msg)
        _, data = await self.http.post(url, orjson.dumps(payload), json_headers(self.cfg.headers))
        if self.cfg.protocol in ("feishu", "dingtalk", "wecom"):
            _check_code(self.cfg.protocol, data)
        elif self.cfg.protocol == "slack" and data.strip() not in (b"", b"ok"):
            raise DeliveryError(REASON_REJECTED, f"slack answered {data[:200]!r}", retryable=False)

    async def close(self) -> None:
        await self.http.close()
