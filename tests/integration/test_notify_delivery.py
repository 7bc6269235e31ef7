"""Must show 1 and 2: a StopLogging event sent to the running daemon reaches a real webhook
receiver (signatures verified by the standardwebhooks reference library), an aiosmtpd
server, an SQS queue subscribed to an SNS topic on a loopback moto server, and each chat
platform's webhook in its documented shape."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
import urllib.parse
from collections.abc import Iterator
from email import message_from_bytes
from pathlib import Path
from typing import Any

import aiohttp
import boto3
import pytest
from aiosmtpd.controller import Controller
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from daemon.app import App
from daemon.config import parse_config
from tests.conftest import base_config_text, free_port
from tests.notify_support import Receiver, moto_sns_to_sqs, notify_yaml, post_events, stop_logging_record

pytestmark = pytest.mark.integration

SECRET_A = "whsec_" + base64.b64encode(b"a" * 32).decode()
SECRET_B = "whsec_" + base64.b64encode(b"rotated-secret-bytes-0123456789").decode()


class _Mailbox:
    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], bytes]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        return "250 OK"


@pytest.fixture
def smtp_server() -> Iterator[tuple[Controller, _Mailbox]]:
    box = _Mailbox()
    controller = Controller(box, hostname="127.0.0.1", port=free_port())
    controller.start()
    yield controller, box
    controller.stop()


@pytest.fixture
def moto_sns() -> Iterator[dict[str, Any]]:
    with moto_sns_to_sqs() as sns:
        yield sns


def _chat_subs(r: Receiver) -> str:
    return (
        f"      - {{name: slack, protocol: slack, url: '{r.url('/slack')}'}}\n"
        f"      - {{name: teams, protocol: teams, url: '{r.url('/teams')}'}}\n"
        f"      - {{name: feishu, protocol: feishu, url: '{r.url('/feishu')}', secret: fs-secret}}\n"
        f"      - {{name: dingtalk, protocol: dingtalk, url: '{r.url('/dingtalk?access_token=T')}',"
        " secret: SECdingsecret}\n"
        f"      - {{name: wecom, protocol: wecom, url: '{r.url('/wecom?key=K')}'}}\n"
    )


async def test_stop_logging_reaches_every_protocol(
    tmp_path: Path, smtp_server: tuple[Controller, _Mailbox], moto_sns: dict[str, str]
) -> None:
    hooks = await Receiver(reply=b'{"code":0,"errcode":0,"msg":"ok"}').start()
    slack_ok = await Receiver(reply=b"ok").start()
    controller, box = smtp_server
    topics = (
        "    security:\n      subscriptions:\n"
        f"      - {{name: hook, protocol: webhook, url: '{hooks.url('/hook')}',"
        f" headers: {{X-Team: secops}}, secrets: ['{SECRET_A}', '{SECRET_B}']}}\n"
        f"      - {{name: mail, protocol: email, host: 127.0.0.1, port: {controller.port},"
        " security: none, from: trailkeeper@example.org, to: [soc@example.org]}\n"
        f"      - {{name: sns, protocol: sns, topic_arn: '{moto_sns['topic_arn']}',"
        f" endpoint_url: '{moto_sns['endpoint']}', access_key_id: testing, secret_access_key: testing}}\n"
        + _chat_subs(hooks).replace(hooks.url("/slack"), slack_ok.url("/slack"))
    )
    routes = "    - {topic: security, categories: [high_risk], min_severity: high}\n"
    text = base_config_text(tmp_path) + notify_yaml(topics, routes)
    app = App(parse_config(text))
    await app.start()
    try:
        record = stop_logging_record()
        async with aiohttp.ClientSession() as s:
            await post_events(s, app.http_port or 0, [record])
        paths = {"/hook", "/teams", "/feishu", "/dingtalk", "/wecom"}
        await hooks.wait_for(lambda r: {q.path for q in r.ok()} >= paths, 20)
        await slack_ok.wait_for(lambda r: len(r.ok()) >= 1, 20)
        for _ in range(200):
            if box.messages:
                break
            await asyncio.sleep(0.05)
        sqs = boto3.client(
            "sqs",
            endpoint_url=moto_sns["endpoint"],
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        sqs_msgs: list[dict[str, Any]] = []
        for _ in range(40):
            got = await asyncio.to_thread(
                sqs.receive_message, QueueUrl=moto_sns["queue_url"], WaitTimeSeconds=1
            )
            sqs_msgs += got.get("Messages", [])
            if sqs_msgs:
                break
    finally:
        await app.stop()
        await hooks.stop()
        await slack_ok.stop()

    event_id = record["eventID"]
    # Webhook: our document, custom header, and signatures the reference library accepts.
    [hook] = [r for r in hooks.ok() if r.path == "/hook"]
    doc = hook.json()
    assert doc["type"] == "Notification"
    assert doc["event"]["id"] == event_id and doc["event"]["operation"] == "StopLogging"
    assert doc["matches"][0]["rule"] == "cis.4.5-cloudtrail-changes"
    assert "StopLogging" in doc["text"] and event_id in doc["text"]
    assert hook.headers["X-Team"] == "secops"
    assert len(hook.headers["webhook-signature"].split(" ")) == 2
    for secret in (SECRET_A, SECRET_B):
        Webhook(secret).verify(hook.body, hook.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET_A).verify(hook.body.replace(b"StopLogging", b"StartLogging"), hook.headers)

    # Email through a real SMTP server.
    assert len(box.messages) == 1
    sender, rcpts, raw = box.messages[0]
    mail = message_from_bytes(raw)
    assert sender == "trailkeeper@example.org" and rcpts == ["soc@example.org"]
    assert "StopLogging" in str(mail["Subject"])
    assert mail["X-Trailkeeper-Event-Id"] == event_id
    assert event_id in mail.get_payload()

    # SNS -> SQS: the SNS envelope carries our subject, text and attributes.
    assert len(sqs_msgs) == 1
    envelope = json.loads(sqs_msgs[0]["Body"])
    assert envelope["Type"] == "Notification" and envelope["TopicArn"] == moto_sns["topic_arn"]
    assert "StopLogging" in envelope["Subject"] and event_id in envelope["Message"]
    assert envelope["MessageAttributes"]["trailkeeper.event_id"]["Value"] == event_id

    # Chat platforms, each in its documented shape.
    [slack] = slack_ok.ok()
    sdoc = slack.json()
    assert "StopLogging" in sdoc["text"]
    assert sdoc["blocks"][1]["type"] == "section" and sdoc["blocks"][1]["text"]["type"] == "mrkdwn"
    assert "*Event id*" in sdoc["blocks"][1]["text"]["text"]

    [teams] = [r for r in hooks.ok() if r.path == "/teams"]
    tdoc = teams.json()
    assert tdoc["type"] == "message"
    att = tdoc["attachments"][0]
    assert att["contentType"] == "application/vnd.microsoft.card.adaptive"
    assert att["content"]["type"] == "AdaptiveCard" and att["content"]["body"][0]["type"] == "TextBlock"

    [feishu] = [r for r in hooks.ok() if r.path == "/feishu"]
    fdoc = feishu.json()
    assert fdoc["msg_type"] == "text" and event_id in fdoc["content"]["text"]
    expected = base64.b64encode(
        hmac.new(f"{fdoc['timestamp']}\nfs-secret".encode(), b"", hashlib.sha256).digest()
    ).decode()
    assert fdoc["sign"] == expected
    assert abs(int(fdoc["timestamp"]) - time.time()) < 120

    [ding] = [r for r in hooks.ok() if r.path == "/dingtalk"]
    ddoc = ding.json()
    assert ddoc["msgtype"] == "markdown" and "StopLogging" in ddoc["markdown"]["title"]
    assert ding.query["access_token"] == "T"
    ts = ding.query["timestamp"]
    want = base64.b64encode(
        hmac.new(b"SECdingsecret", f"{ts}\nSECdingsecret".encode(), hashlib.sha256).digest()
    ).decode()
    assert ding.query["sign"] == want  # aiohttp already URL-decoded the query
    assert abs(int(ts) / 1000 - time.time()) < 120

    [wecom] = [r for r in hooks.ok() if r.path == "/wecom"]
    wdoc = wecom.json()
    assert wdoc["msgtype"] == "markdown" and event_id in wdoc["markdown"]["content"]
    assert len(wdoc["markdown"]["content"].encode()) <= 4096
    assert urllib.parse.unquote(wecom.query["key"]) == "K"
