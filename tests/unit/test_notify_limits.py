"""Every payload fits its platform's documented limit, as the platform counts it, and still says
what happened: a storm summary of 3,000 principals is the case that broke DingTalk and Teams."""

from __future__ import annotations

from email import message_from_bytes, policy
from typing import Any

import orjson
import pytest
from pydantic import TypeAdapter

from daemon.notify.chat import ChatSender
from daemon.notify.config import EmailSubscription, SnsSubscription, Subscription
from daemon.notify.email import build_email
from daemon.notify.limits import MARKER, clip, fit, utf8_len, utf16_len
from daemon.notify.outbox import OutMessage
from daemon.notify.sns import publish_args
from daemon.notify.templates import Renderer, context


def storm_doc(n: int = 3000) -> dict[str, Any]:
    # Mixed scripts: CJK is 3 bytes in UTF-8, an emoji 4 (2 UTF-16 units): byte limits differ
    # from character limits.
    principals = {f"用户-{i:04d}-svc_deploy-😀@example.org": 1 for i in range(n)}
    group = {
        "key": {"operation": "DeleteUser"},
        "count": n,
        "operations": {"DeleteUser": n},
        "principals": principals,
        "first_time": "2024-05-01T10:00:00Z",
        "last_time": "2024-05-01T10:05:00Z",
        "event_ids": [f"ev-{i}" for i in range(10)],
        "rules": ["iam-delete-user"],
        "first_offset": 1,
        "last_offset": n,
        "group_by": ["operation"],
    }
    matches = [
        {
            "rule": "iam-delete-user",
            "category": "high_risk",
            "severity": "critical",
            "description": "IAM users deleted",
        }
    ]
    return {"kind": "group", "topic": "sec", "group": group, "matches": matches, "severity": "critical"}


def message(protocol: str, doc: dict[str, Any]) -> OutMessage:
    rendered = Renderer(protocol, None, None, "test").render(context(doc))
    body = {"title": rendered.title, "text": rendered.text, "doc": doc}
    return OutMessage(seq=1, id="msg_storm", created=0.0, ingest_ms=0, attempts=0, body=body)


def chat_payload(protocol: str, **extra: Any) -> tuple[bytes, dict[str, Any]]:
    cfg = TypeAdapter(Subscription).validate_python(
        {"name": "s", "protocol": protocol, "url": "http://127.0.0.1:9/hook", **extra}
    )
    _, payload = ChatSender("sec", cfg, 1.0).build(message(protocol, storm_doc()), now=1.7e9)  # type: ignore[arg-type]
    raw = orjson.dumps(payload)
    assert orjson.loads(raw) == payload  # valid JSON, as sent
    return raw, payload


def _says_what_happened(text: str) -> None:
    assert "3000 events matching iam-delete-user" in text
    assert "DeleteUser x3000" in text
    # The lines after the huge principals list survive: when, why, which events.
    assert "2024-05-01T10:00:00Z to 2024-05-01T10:05:00Z" in text
    assert "IAM users deleted" in text
    assert "ev-0, ev-1" in text
    assert MARKER in text


def test_the_storm_is_far_over_every_limit_unclipped() -> None:
    rendered = Renderer("dingtalk", None, None, "t").render(context(storm_doc()))
    assert utf8_len(rendered.title) > 100_000 and utf8_len(rendered.text) > 100_000


def test_dingtalk_payload_within_20000_bytes() -> None:
    raw, payload = chat_payload("dingtalk", at_mobiles=["13800000000"])
    assert len(raw) <= 20_000
    assert len(raw) > 15_000  # clipped to the limit, not far below it
    assert payload["markdown"]["title"].startswith("[CRITICAL] 3000 key events: DeleteUser by")
    assert payload["markdown"]["text"].endswith("@13800000000")
    _says_what_happened(payload["markdown"]["text"])


def test_teams_payload_within_28_kb() -> None:
    raw, payload = chat_payload("teams")
    assert len(raw) <= 27_000
    body = payload["attachments"][0]["content"]["body"]
    assert body[0]["text"].startswith("[CRITICAL] 3000 key events: DeleteUser by")
    _says_what_happened(body[1]["text"])


def test_wecom_content_within_4096_bytes() -> None:
    _, payload = chat_payload("wecom")
    content = payload["markdown"]["content"]
    assert utf8_len(content) <= 4096
    assert content.startswith("**[CRITICAL] 3000 key events: DeleteUser by")
    _says_what_happened(content)


def test_feishu_payload_within_20_kb_signed() -> None:
    raw, payload = chat_payload("feishu", secret="fs")
    assert len(raw) <= 20_000 and payload["sign"]
    _says_what_happened(payload["content"]["text"])


def test_slack_fields_within_block_limits() -> None:
    _, payload = chat_payload("slack")
    header = payload["blocks"][0]["text"]["text"]
    section = payload["blocks"][1]["text"]["text"]
    assert utf16_len(header) <= 150 and utf16_len(section) <= 3000
    assert utf16_len(payload["text"]) <= 3000 <= 40_000
    assert header.startswith("[CRITICAL] 3000 key events")
    _says_what_happened(section)


def test_sns_publish_within_256_kb_and_subject_rules() -> None:
    cfg = SnsSubscription.model_validate(
        {"name": "n", "protocol": "sns", "topic_arn": "arn:aws:sns:us-east-1:123456789012:t"}
    )
    args = publish_args(message("sns", storm_doc(20_000)), cfg, "sec")
    subject = args["Subject"]
    assert len(subject) < 100 and all(32 <= ord(c) < 127 for c in subject) and subject[0] != " "
    assert subject.startswith("[CRITICAL] 3000 key events".replace("3000", "20000"))
    attrs = args["MessageAttributes"]
    assert len(attrs) <= 10
    total = utf8_len(args["Message"]) + len(subject)
    total += sum(len(k) + len(v["DataType"]) + utf8_len(v["StringValue"]) for k, v in attrs.items())
    assert total <= 262_144
    assert utf8_len(args["Message"]) > 200_000
    assert args["Message"].endswith(MARKER)
    assert {k: v["StringValue"] for k, v in attrs.items() if "." not in k} == {
        "severity": "critical",
        "category": "high_risk",
        "rule": "iam-delete-user",
        "operation": "DeleteUser",
    }


def test_email_subject_bounded() -> None:
    cfg = EmailSubscription.model_validate(
        {"name": "m", "protocol": "email", "host": "127.0.0.1", "from": "tk@example.org", "to": ["a@b.c"]}
    )
    raw = build_email(message("email", storm_doc()), cfg, "sec").as_bytes()
    assert all(len(line) <= 998 for line in raw.splitlines())  # RFC 5322 2.1.1, body too
    parsed = message_from_bytes(raw, policy=policy.default)
    subject = str(parsed["Subject"])
    assert len(subject) <= 250 and subject.endswith(MARKER)
    assert subject.startswith("[CRITICAL] 3000 key events: DeleteUser by")


@pytest.mark.parametrize("limit", [1, 5, 13, 20, 21, 100])
def test_clip_counts_bytes_on_character_boundaries(limit: int) -> None:
    text = "日本語のテキスト" * 10
    out = clip(text, limit, utf8_len)
    assert utf8_len(out) <= limit
    out.encode("utf-8")  # whole characters only
    if out:
        assert out.endswith(MARKER) and text.startswith(out[: -len(MARKER)])


def test_clip_leaves_no_half_escape() -> None:
    # A cut inside "&amp;" or right after an escaping backslash drops the half escape.
    assert clip("ab &amp; cd" * 3, 5 + len(MARKER)) == "ab" + MARKER
    assert clip("x\\[y]" * 9, 2 + len(MARKER)) == "x" + MARKER
    assert clip("short", 10) == "short"


def test_fit_clips_long_lines_before_dropping_later_ones() -> None:
    text = "head\n" + "p" * 10_000 + "\ntail line"
    out = fit(text, utf8_len, 500)
    lines = out.split("\n")
    assert lines[0] == "head" and lines[2] == "tail line" and lines[1].endswith(MARKER)
    assert utf8_len(out) <= 500
    # When capped lines are still too many, the end goes.
    many = "\n".join("x" * 300 for _ in range(100))
    out = fit(many, utf8_len, 1000)
    assert utf8_len(out) <= 1000 and out.endswith(MARKER)
