"""Event values are inert in every platform's markup: a hostile user name can neither mention a
channel, link, embed an image, reverse text nor smuggle NUL; the template's own markup works."""

from __future__ import annotations

from email import message_from_bytes, policy
from typing import Any

import orjson
import pytest

from daemon.notify.chat import ChatSender
from daemon.notify.config import EmailSubscription, SnsSubscription
from daemon.notify.email import build_email
from daemon.notify.escape import escape, sanitize
from daemon.notify.outbox import OutMessage
from daemon.notify.sns import publish_args
from daemon.notify.templates import Renderer, context
from daemon.notify.webhook import webhook_body

HOSTILE = (
    '<!channel> <https://x|click> [click](https://evil) ![i](https://evil/p.png) <at user_id="all"></at>'
    " \u202eevil\x00 a_b*c & \u2066x\u2069\x85\x1b[31m\nRule: fake"
)

# What the value becomes in each platform's markup, exactly.
EXPECTED = {
    "slack": "&lt;!channel&gt; &lt;https://x|click&gt; [click](https://evil) ![i](https://evil/p.png)"
    ' &lt;at user_id="all"&gt;&lt;/at&gt; evil a_b*c &amp; x[31m Rule: fake',
    "teams": "&lt;!channel&gt; &lt;https://x\\|click&gt; \\[click\\]\\(https://evil\\)"
    " !\\[i\\]\\(https://evil/p.png\\)"
    ' &lt;at user\\_id="all"&gt;&lt;/at&gt; evil a\\_b\\*c &amp; x\\[31m Rule: fake',
    "dingtalk": "&lt;!channel&gt; &lt;https://x\\|click&gt; \\[click\\]\\(https://evil\\)"
    " !\\[i\\]\\(https://evil/p.png\\)"
    ' &lt;at user_id="all"&gt;&lt;/at&gt; evil a_b\\*c &amp; x\\[31m Rule: fake',
    "feishu": "&lt;!channel&gt; &lt;https://x|click&gt; \\[click\\]\\(https://evil\\)"
    " !\\[i\\]\\(https://evil/p.png\\)"
    ' &lt;at user_id="all"&gt;&lt;/at&gt; evil a_b*c & x\\[31m Rule: fake',
    "text": '<!channel> <https://x|click> [click](https://evil) ![i](https://evil/p.png) <at user_id="all"></at>'
    " evil a_b*c & x[31m Rule: fake",
}
EXPECTED["wecom"] = EXPECTED["dingtalk"]

# Nothing of these may reach any protocol's rendered text.
FORBIDDEN = ["\x00", "\u202e", "\u2066", "\u2069", "\x85", "\x1b", "\nRule: fake"]


def hostile_doc() -> dict[str, Any]:
    event = {
        "id": "ev-1",
        "operation": "DeleteUser",
        "service": "iam.amazonaws.com",
        "user_name": HOSTILE,
        "source_ip": "198.51.100.7",
        "resource_type": "AWS::IAM::User",
        "resource_name": "[x](https://evil)",
        "time": "2024-05-01T10:00:00Z",
        "tenant": "123456789012",
    }
    matches = [{"rule": "iam-delete-user", "category": "high_risk", "severity": "high", "description": "d"}]
    return {"kind": "event", "topic": "sec", "event": event, "matches": matches, "severity": "high"}


def message(
    protocol: str, doc: dict[str, Any], title: str | None = None, body: str | None = None
) -> OutMessage:
    rendered = Renderer(protocol, title, body, "test").render(context(doc))
    return OutMessage(
        seq=1,
        id="msg_1",
        created=0.0,
        ingest_ms=0,
        attempts=0,
        body={"title": rendered.title, "text": rendered.text, "doc": doc},
    )


def chat_payload(protocol: str, doc: dict[str, Any], **extra: Any) -> dict[str, Any]:
    from pydantic import TypeAdapter

    from daemon.notify.config import Subscription

    cfg = TypeAdapter(Subscription).validate_python(
        {"name": "s", "protocol": protocol, "url": "http://127.0.0.1:9/hook", **extra}
    )
    sender = ChatSender("sec", cfg, 1.0)  # type: ignore[arg-type]
    _, payload = sender.build(message(protocol, doc), now=1_700_000_000.0)
    return payload


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def _assert_clean(payload: Any) -> None:
    """No control or bidi character anywhere, and the value's line break did not make a line."""
    for text in _strings(payload):
        for ch in "\x00\u202e\u2066\u2069\x85\x1b":
            assert ch not in text
        assert not any(line.lstrip("*").startswith("Rule: fake") for line in text.splitlines())


def test_slack_value_is_inert_in_mrkdwn() -> None:
    payload = chat_payload("slack", hostile_doc())
    section = payload["blocks"][1]["text"]["text"]
    assert f"*Who*: {EXPECTED['slack']}" in section.splitlines()
    # The template's own mrkdwn (bold labels) still works; the value's markup does not.
    assert section.startswith("*What*: DeleteUser (iam.amazonaws.com)")
    assert "<!channel>" not in orjson.dumps(payload).decode()
    assert "<https://x|click>" not in orjson.dumps(payload).decode()
    assert payload["text"] == f"[HIGH] DeleteUser on iam.amazonaws.com by {EXPECTED['slack']}"
    _assert_clean(payload)


def test_teams_value_is_inert_in_card_markdown() -> None:
    payload = chat_payload("teams", hostile_doc())
    body = payload["attachments"][0]["content"]["body"]
    assert body[0]["text"] == f"[HIGH] DeleteUser on iam.amazonaws.com by {EXPECTED['teams']}"
    lines = body[1]["text"].split("\n\n")
    assert f"**Who**: {EXPECTED['teams']}" in lines
    assert "**Resource**: AWS::IAM::User \\[x\\]\\(https://evil\\)" in lines
    assert "](" not in body[1]["text"]
    _assert_clean(payload)


def test_dingtalk_value_is_inert_in_markdown() -> None:
    payload = chat_payload("dingtalk", hostile_doc(), at_mobiles=["13800000000"])
    md = payload["markdown"]["text"]
    assert f"**Who**: {EXPECTED['dingtalk']}" in md.split("\n\n")
    # The template's own brackets stay; the value's are escaped.
    assert md.startswith(f"#### [HIGH] DeleteUser on iam.amazonaws.com by {EXPECTED['dingtalk']}\n\n")
    assert "](" not in md and "<" not in md
    # The configured mention still works; the event cannot mention anyone else.
    assert md.endswith("@13800000000") and payload["at"] == {"atMobiles": ["13800000000"], "isAtAll": False}
    _assert_clean(payload)


def test_wecom_value_is_inert_in_markdown() -> None:
    payload = chat_payload("wecom", hostile_doc())
    content = payload["markdown"]["content"]
    assert f"**Who**: {EXPECTED['wecom']}" in content.split("\n")
    # No <@userid> mention, <font> tag or link can come from the event.
    assert "<" not in content and "](" not in content
    _assert_clean(payload)


def test_feishu_value_is_inert_in_text_message() -> None:
    payload = chat_payload("feishu", hostile_doc(), secret="fs")
    text = payload["content"]["text"]
    assert f"Who: {EXPECTED['feishu']}" in text.split("\n")
    assert "<at" not in text and "](" not in text
    _assert_clean(payload)


def test_webhook_text_is_sanitized_and_event_data_is_exact() -> None:
    body = orjson.loads(webhook_body(message("webhook", hostile_doc()), "sec", "hook"))
    assert f"Who: {EXPECTED['text']}" in body["text"].split("\n")
    assert body["title"] == f"[HIGH] DeleteUser on iam.amazonaws.com by {EXPECTED['text']}"
    # The structured event is data for programs: exactly what was received.
    assert body["event"]["user_name"] == HOSTILE
    for bad in FORBIDDEN:
        assert bad not in body["text"] and bad not in body["title"]


def test_email_subject_and_headers_are_one_clean_line() -> None:
    doc = hostile_doc()
    doc["event"]["id"] = "ev-1\r\nBcc: victim@example.org"
    cfg = EmailSubscription.model_validate(
        {"name": "m", "protocol": "email", "host": "127.0.0.1", "from": "tk@example.org", "to": ["a@b.c"]}
    )
    mail = build_email(message("email", doc), cfg, "sec")
    parsed = message_from_bytes(mail.as_bytes(), policy=policy.default)
    assert parsed["Bcc"] is None
    assert parsed["X-Trailkeeper-Event-Id"] == "ev-1 Bcc: victim@example.org"
    subject = str(parsed["Subject"])
    assert subject == f"[HIGH] DeleteUser on iam.amazonaws.com by {EXPECTED['text']}"
    payload = parsed.get_content()
    assert f"Who: {EXPECTED['text']}" in payload.splitlines()
    for bad in FORBIDDEN:
        assert bad not in payload


def test_sns_subject_and_message_are_clean() -> None:
    cfg = SnsSubscription.model_validate(
        {"name": "n", "protocol": "sns", "topic_arn": "arn:aws:sns:us-east-1:123456789012:t"}
    )
    args = publish_args(message("sns", hostile_doc()), cfg, "sec")
    assert f"Who: {EXPECTED['text']}" in args["Message"].split("\n")
    assert all(32 <= ord(c) < 127 for c in args["Subject"]) and len(args["Subject"]) < 100
    for bad in FORBIDDEN:
        assert bad not in args["Message"]


def test_operator_markup_is_kept_only_values_are_escaped() -> None:
    doc = hostile_doc()
    doc["event"]["user_name"] = "<b>&"
    tpl = "<!here> *Alert* by {{ event.user_name }} {{ event.user_name|b }} {{ '<#C123>'|safe }}"
    rendered = Renderer("slack", "{{ event.user_name }} <!here>", tpl, "t").render(context(doc))
    assert rendered.text == "<!here> *Alert* by &lt;b&gt;&amp; *&lt;b&gt;&amp;* <#C123>"
    assert rendered.title == "&lt;b&gt;&amp; <!here>"
    md = Renderer("teams", None, "[runbook](https://wiki/r) {{ event.user_name|b }}", "t").render(
        context(doc)
    )
    assert md.text == "[runbook](https://wiki/r) **&lt;b&gt;&amp;**"


def test_title_is_one_line_whatever_the_template() -> None:
    rendered = Renderer("webhook", "a\n{{ event.operation }}\r\nb", None, "t").render(context(hostile_doc()))
    assert rendered.title == "a DeleteUser b"


@pytest.mark.parametrize("style", ["text", "slack", "teams", "dingtalk", "wecom", "feishu"])
def test_every_style_strips_controls_and_bidi(style: Any) -> None:
    out = escape(style, "a\x00b\u202ec\u200fd\u061ce\x9bf\ud800g\u2028h")
    assert out == "abcdef" + "g h"
    assert sanitize("x\r\ny\tz") == "x y z"
