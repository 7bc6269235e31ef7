"""Standard Webhooks signatures checked by the reference library; chat signatures by their docs."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
import urllib.parse

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from daemon.notify.signing import (
    decode_secret,
    dingtalk_signed_url,
    feishu_sign,
    standard_webhook_headers,
)

S1 = "whsec_" + base64.b64encode(b"k" * 32).decode()
S2 = "whsec_" + base64.b64encode(b"second-secret-for-rotation!!").decode()
BODY = b'{"type":"Notification","event":{"id":"e1","operation":"StopLogging"}}'


def test_every_secret_verifies_with_the_reference_library() -> None:
    headers = standard_webhook_headers("msg_1", int(time.time()), BODY, [S1, S2])
    assert headers["webhook-id"] == "msg_1"
    assert len(headers["webhook-signature"].split(" ")) == 2
    for secret in (S1, S2):
        assert Webhook(secret).verify(BODY, headers) is not None


def test_tampered_body_fails() -> None:
    headers = standard_webhook_headers("msg_1", int(time.time()), BODY, [S1])
    with pytest.raises(WebhookVerificationError):
        Webhook(S1).verify(BODY.replace(b"StopLogging", b"StartLogging"), headers)


def test_expired_timestamp_fails() -> None:
    headers = standard_webhook_headers("msg_1", int(time.time()) - 3600, BODY, [S1])
    with pytest.raises(WebhookVerificationError):
        Webhook(S1).verify(BODY, headers)


def test_wrong_secret_fails() -> None:
    headers = standard_webhook_headers("msg_1", int(time.time()), BODY, [S1])
    with pytest.raises(WebhookVerificationError):
        Webhook(S2).verify(BODY, headers)


@pytest.mark.parametrize(
    "bad", ["k" * 40, "whsec_not base64!", "whsec_" + base64.b64encode(b"short").decode()]
)
def test_bad_secrets_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        decode_secret(bad)


def test_dingtalk_signed_url_matches_the_documented_algorithm() -> None:
    url = dingtalk_signed_url("https://oapi.dingtalk.com/robot/send?access_token=T", "SECabc", 1700000000000)
    q = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
    assert q["access_token"] == ["T"] and q["timestamp"] == ["1700000000000"]
    want = base64.b64encode(hmac.new(b"SECabc", b"1700000000000\nSECabc", hashlib.sha256).digest()).decode()
    assert q["sign"] == [want]


def test_feishu_sign_matches_the_documented_algorithm() -> None:
    want = base64.b64encode(hmac.new(b"1700000000\nfs", b"", hashlib.sha256).digest()).decode()
    assert feishu_sign("fs", 1700000000) == want
