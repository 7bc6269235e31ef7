"""Signatures: Standard Webhooks for webhooks, and the chat platforms' signed URLs/bodies."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import urllib.parse

WHSEC_PREFIX = "whsec_"


def decode_secret(secret: str) -> bytes:
    """The key bytes of a ``whsec_<base64>`` secret. Raises ValueError naming the problem."""
    if not secret.startswith(WHSEC_PREFIX):
        raise ValueError("a webhook secret must look like whsec_<base64>, as Standard Webhooks specifies")
    try:
        key = base64.b64decode(secret[len(WHSEC_PREFIX) :], validate=True)
    except binascii.Error as exc:
        raise ValueError(f"the part after whsec_ is not valid base64 ({exc})") from exc
    if len(key) < 16:
        raise ValueError("a webhook secret must hold at least 16 bytes (24 to 64 recommended)")
    return key


def standard_webhook_headers(msg_id: str, timestamp: int, body: bytes, secrets: list[str]) -> dict[str, str]:
    """``webhook-id``, ``webhook-timestamp`` and ``webhook-signature`` for one attempt.

    The id stays the same across retries (receivers dedupe on it); the timestamp
    is the attempt's, so a receiver's tolerance window applies to each attempt.
    Several secrets (rotation) give several space-separated ``v1,`` signatures.
    """
    signed = f"{msg_id}.{timestamp}.".encode() + body
    sigs = [
        "v1," + base64.b64encode(hmac.new(decode_secret(s), signed, hashlib.sha256).digest()).decode()
        for s in secrets
    ]
    headers = {"webhook-id": msg_id, "webhook-timestamp": str(timestamp)}
    if sigs:
        headers["webhook-signature"] = " ".join(sigs)
    return headers


def dingtalk_signed_url(url: str, secret: str, timestamp_ms: int) -> str:
    """DingTalk custom robot "加签": HMAC-SHA256 keyed by the secret over ``timestamp\\nsecret``,
    base64, then URL-encoded, appended as ``timestamp`` and ``sign`` query parameters."""
    to_sign = f"{timestamp_ms}\n{secret}".encode()
    digest = hmac.new(secret.encode(), to_sign, hashlib.sha256).digest()
    sign = urllib.parse.quote_plus(base64.b64encode(digest))
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}timestamp={timestamp_ms}&sign={sign}"


def feishu_sign(secret: str, timestamp_s: int) -> str:
    """Feishu/Lark custom bot signature: HMAC-SHA256 keyed by ``timestamp\\nsecret`` over an
    empty message, base64; sent in the body with ``timestamp`` (seconds, as a string)."""
    key = f"{timestamp_s}\n{secret}".encode()
    return base64.b64encode(hmac.new(key, b"", hashlib.sha256).digest()).decode()
