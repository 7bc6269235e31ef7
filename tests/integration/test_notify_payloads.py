"""Payloads as real receivers get them: a hostile event sent to the running daemon reaches Slack
and DingTalk receivers inert; SNS message attributes let a subscription filter policy select by
severity (moto server on loopback, SNS -> SQS); a webhook can carry the record as stored."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from daemon.app import App
from daemon.config import parse_config
from daemon.notify.config import SnsSubscription, WebhookSubscription
from daemon.notify.outbox import OutMessage
from daemon.notify.sns import SnsSender
from daemon.notify.templates import Renderer, context
from daemon.notify.webhook import WebhookSender
from tests.conftest import base_config_text
from tests.notify_support import Receiver, moto_sns_to_sqs, notify_yaml, post_events, stop_logging_record

pytestmark = pytest.mark.integration

HOSTILE = "<!channel> <https://x|click> [click](https://evil) ![p](https://evil/p.png) \u202elive\x00 <@all>"


async def test_hostile_user_name_reaches_slack_and_dingtalk_inert(tmp_path: Path) -> None:
    slack = await Receiver(reply=b"ok").start()
    ding = await Receiver(reply=b'{"errcode":0,"errmsg":"ok"}').start()
    topics = (
        "    security:\n      subscriptions:\n"
        f"      - {{name: slack, protocol: slack, url: '{slack.url('/slack')}'}}\n"
        f"      - {{name: ding, protocol: dingtalk, url: '{ding.url('/robot/send?access_token=T')}'}}\n"
    )
    routes = "    - {topic: security, categories: [high_risk], min_severity: high}\n"
    app = App(parse_config(base_config_text(tmp_path) + notify_yaml(topics, routes)))
    await app.start()
    try:
        record = stop_logging_record()
        record["userIdentity"] = {**record.get("userIdentity", {}), "userName": HOSTILE, "type": "IAMUser"}
        async with aiohttp.ClientSession() as s:
            await post_events(s, app.http_port or 0, [record])
        await slack.wait_for(lambda r: len(r.ok()) >= 1, 20)
        await ding.wait_for(lambda r: len(r.ok()) >= 1, 20)
    finally:
        await app.stop()
        await slack.stop()
        await ding.stop()

    [got] = slack.ok()
    raw = got.body.decode()
    sdoc = got.json()
    section = sdoc["blocks"][1]["text"]["text"]
    who = next(line for line in section.splitlines() if line.startswith("*Who*"))
    assert who.startswith(
        "*Who*: &lt;!channel&gt; &lt;https://x|click&gt; [click](https://evil) ![p](https://evil/p.png)"
        " live &lt;@all&gt;"
    )
    # Slack parses mentions and links only inside <...>: none is left from the event.
    assert "<!channel>" not in raw and "<https://x|click>" not in raw and "<@all>" not in raw
    assert "StopLogging" in sdoc["text"] and "*What*" in section  # the template's own mrkdwn

    [got] = ding.ok()
    md = got.json()["markdown"]["text"]
    who = next(line for line in md.split("\n\n") if line.startswith("**Who**"))
    assert who.startswith(
        "**Who**: &lt;!channel&gt; &lt;https://x\\|click&gt; \\[click\\]\\(https://evil\\)"
        " !\\[p\\]\\(https://evil/p.png\\) live &lt;@all&gt;"
    )
    assert "](" not in md and "<" not in md  # no link, image, tag or mention from the event
    for text in (slack.ok()[0].body.decode("utf-8"), got.body.decode("utf-8")):
        decoded = json.dumps(json.loads(text))  # escapes every control as \\uXXXX
        assert "\\u0000" not in decoded and "\\u202e" not in decoded


@pytest.fixture
def moto_sns_filtered() -> Iterator[dict[str, Any]]:
    """SNS topic -> SQS queue subscribed with a filter policy on severity (raw delivery off)."""
    with moto_sns_to_sqs(
        FilterPolicy=json.dumps({"severity": ["high"]}), RawMessageDelivery="false"
    ) as sns:
        yield sns


def _event_message(protocol: str, severity: str, operation: str, msg_id: str) -> OutMessage:
    event = {
        "id": f"ev-{msg_id}",
        "operation": operation,
        "service": "iam.amazonaws.com",
        "user_name": "alice",
        "tenant": "123456789012",
    }
    matches = [
        {"rule": f"rule-{severity}", "category": "high_risk", "severity": severity, "description": "d"}
    ]
    doc = {"kind": "event", "topic": "sec", "event": event, "matches": matches, "severity": severity}
    rendered = Renderer(protocol, None, None, "t").render(context(doc))
    body = {"title": rendered.title, "text": rendered.text, "doc": doc}
    return OutMessage(seq=1, id=msg_id, created=0.0, ingest_ms=0, attempts=0, body=body)


async def test_sns_filter_policy_selects_on_severity(moto_sns_filtered: dict[str, Any]) -> None:
    cfg = SnsSubscription.model_validate(
        {
            "name": "sns",
            "protocol": "sns",
            "topic_arn": moto_sns_filtered["topic_arn"],
            "endpoint_url": moto_sns_filtered["endpoint"],
            "access_key_id": "testing",
            "secret_access_key": "testing",
        }
    )
    sender = SnsSender("sec", cfg, 5.0)
    try:
        await sender.send(_event_message("sns", "high", "DeleteUser", "msg_high"))
        await sender.send(_event_message("sns", "low", "ListUsers", "msg_low"))
    finally:
        await sender.close()
    sqs = moto_sns_filtered["sqs"]
    got: list[dict[str, Any]] = []
    for _ in range(3):
        resp = await asyncio.to_thread(
            sqs.receive_message,
            QueueUrl=moto_sns_filtered["queue_url"],
            WaitTimeSeconds=1,
            MaxNumberOfMessages=10,
        )
        got += resp.get("Messages", [])
    assert len(got) == 1
    envelope = json.loads(got[0]["Body"])
    attrs = {k: v["Value"] for k, v in envelope["MessageAttributes"].items()}
    assert attrs["trailkeeper.id"] == "msg_high"
    assert {k: attrs[k] for k in ("severity", "category", "rule", "tenant", "operation")} == {
        "severity": "high",
        "category": "high_risk",
        "rule": "rule-high",
        "tenant": "123456789012",
        "operation": "DeleteUser",
    }
    assert all(v["Type"] == "String" for v in envelope["MessageAttributes"].values())


async def test_webhook_carries_the_stored_record_only_when_asked() -> None:
    hooks = await Receiver().start()
    # As stored: a nested structure, a number beyond 64 bits, non-ASCII text.
    record = {"eventID": "ev-rec", "eventName": "DeleteUser", "n": 2**70, "userIdentity": {"userName": "Zoë"}}
    stored = json.dumps(record, ensure_ascii=False)
    try:
        for name, include in (("with", True), ("without", False)):
            cfg = WebhookSubscription.model_validate(
                {"name": name, "protocol": "webhook", "url": hooks.url(f"/{name}"), "include_record": include}
            )
            msg = _event_message("webhook", "high", "DeleteUser", f"msg_{name}")
            msg.body["doc"]["record_json"] = stored
            sender = WebhookSender("sec", cfg, 5.0)
            try:
                await sender.send(msg)
            finally:
                await sender.close()
    finally:
        await hooks.stop()
    [with_record] = hooks.ok("/with")
    [without] = hooks.ok("/without")
    body = json.loads(with_record.body)
    assert body["record"] == record
    assert body["event"]["id"] == "ev-msg_with"
    assert body["type"] == "Notification" and body["matches"][0]["severity"] == "high"
    assert "record" not in orjson.loads(without.body)


async def test_the_running_daemon_sends_the_stored_record_to_a_subscription_that_asks(tmp_path: Path) -> None:
    # Through the journal, the notifier and the outbox: the record arrives as stored, a number
    # beyond 64 bits included, on the subscription that opted in only.
    hooks = await Receiver().start()
    topics = (
        "    security:\n      subscriptions:\n"
        f"      - {{name: full, protocol: webhook, url: '{hooks.url('/full')}', include_record: true}}\n"
        f"      - {{name: lean, protocol: webhook, url: '{hooks.url('/lean')}'}}\n"
    )
    routes = "    - {topic: security, categories: [high_risk], min_severity: high}\n"
    app = App(parse_config(base_config_text(tmp_path) + notify_yaml(topics, routes)))
    await app.start()
    record = stop_logging_record()
    record["requestParameters"] = {"big": "BIG"}
    try:
        body = orjson.dumps(record).replace(b'"BIG"', b"123456789012345678901234567890")
        async with aiohttp.ClientSession() as s, s.post(
            f"http://127.0.0.1:{app.http_port}/v1/events",
            data=body,
            headers={"Content-Type": "application/x-ndjson"},
        ) as r:
            assert r.status == 202, await r.text()
        await hooks.wait_for(lambda r: len(r.ok("/full")) >= 1 and len(r.ok("/lean")) >= 1, 20)
    finally:
        await app.stop()
        await hooks.stop()
    [full] = hooks.ok("/full")
    [lean] = hooks.ok("/lean")
    got = json.loads(full.body)
    assert got["record"]["requestParameters"]["big"] == 123456789012345678901234567890
    assert got["record"]["eventName"] == record["eventName"] and got["record"]["eventID"] == record["eventID"]
    assert "record" not in json.loads(lean.body) and "record_json" not in json.loads(lean.body)
