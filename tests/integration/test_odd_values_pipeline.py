"""Events with values that break naive code (NUL, a lone surrogate, a megabyte string, deep
nesting, odd numbers) flow through the archiver and the notifier without stalling either:
every record is archived byte for byte and every key event is notified (issue 15, finding 2).

The values are chosen to be what the HTTP intake accepts today; the last test shows two it
answers with a 500 instead of quarantining them (a decoder problem, not a consumer's).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from daemon.app import App
from daemon.config import parse_config
from daemon.index import CURSOR as INDEX_CURSOR
from daemon.notify import notifier as notify_mod
from tests.conftest import base_config_text, read_archive
from tests.notify_support import Receiver, notify_yaml

pytestmark = pytest.mark.integration


def key_event(event_id: str, user: str, **parameters: Any) -> dict[str, Any]:
    """A StopLogging record: a high-risk key operation for the built-in rules, so it is notified."""
    return {
        "eventVersion": "1.08",
        "eventTime": "2024-07-30T21:31:10Z",
        "eventSource": "cloudtrail.amazonaws.com",
        "eventName": "StopLogging",
        "eventID": event_id,
        "recipientAccountId": "111122223333",
        "awsRegion": "us-east-1",
        "userIdentity": {"type": "IAMUser", "userName": user, "accountId": "111122223333"},
        "requestParameters": {"name": "trail", **parameters},
    }


def line(record: dict[str, Any], **raw: str) -> bytes:
    """``record`` as one JSON line, with each ``"@name"`` string replaced by ``raw[name]``:
    JSON text no Python encoder writes as is (1000 levels deep, a lone surrogate escape)."""
    text = json.dumps(record, separators=(",", ":"))
    for name, value in raw.items():
        text = text.replace(json.dumps(f"@{name}"), value)
    return text.encode()


ODD_LINES = [
    line(key_event("odd-nul", "Nul\x00Name", note="a\x00b")),
    line(key_event("odd-huge", "huge", note="H" * (1024 * 1024))),
    line(key_event("odd-deep", "deep", deep="@deep"), deep="[" * 1000 + '"bottom"' + "]" * 1000),
    line(
        key_event("odd-numbers", "numbers", big="@big", inf="@inf", neg="@neg"),
        big="123456789012345678901234567890",
        inf="1e400",
        neg="-0.0",
    ),
    # A lone surrogate where no canonical field reads it (the intake refuses it in one, below).
    line(key_event("odd-surrogate", "surrogate", note="@note"), note='"trail\\ud800"'),
]


async def test_archiver_and_notifier_take_every_odd_event(tmp_path: Path) -> None:
    hooks = await Receiver().start()
    topics = (
        "    security:\n      subscriptions:\n"
        f"      - {{name: hook, protocol: webhook, url: '{hooks.url('/hook')}'}}\n"
        f"      - {{name: slack, protocol: slack, url: '{hooks.url('/slack')}'}}\n"
    )
    routes = "    - {topic: security, categories: [high_risk]}\n"
    text = base_config_text(
        tmp_path,
        ingest='ingest:\n  http: {listen: "127.0.0.1:0", max_event_bytes: 4MiB}\n',
    ) + notify_yaml(topics, routes)
    app = App(parse_config(text))
    await app.start()
    try:
        async with (
            aiohttp.ClientSession() as s,
            s.post(
                f"http://127.0.0.1:{app.http_port}/v1/events",
                data=b"\n".join(ODD_LINES) + b"\n",
                headers={"Content-Type": "application/x-ndjson"},
            ) as resp,
        ):
            doc = await resp.json()
            assert resp.status == 202 and doc["accepted"] == len(ODD_LINES), doc
        end = app.journal.end_offset
        ids = {"odd-nul", "odd-huge", "odd-deep", "odd-numbers", "odd-surrogate"}

        # Notified: one message per event to each subscription, nothing stuck behind another.
        await hooks.wait_for(
            lambda r: (
                {q.json()["event"]["id"] for q in r.ok("/hook")} >= ids and len(r.ok("/slack")) >= len(ids)
            ),
            20,
        )
        hook_events = {q.json()["event"]["id"]: q.json()["event"] for q in hooks.ok("/hook")}
        assert hook_events["odd-nul"]["user_name"] == "Nul\x00Name"

        # Archived byte for byte, and every consumer is past the odd events.
        async with asyncio.timeout(20):
            while True:
                archived = read_archive(tmp_path / "archive")
                cursors = [app.journal.cursor(a.d.cursor) for a in app.archivers]
                done = all(c >= end for c in cursors) and app.journal.cursor(notify_mod.CURSOR) >= end
                if sorted(archived) == sorted(ODD_LINES) and done:
                    break
                await asyncio.sleep(0.05)
        assert app.journal.cursor(INDEX_CURSOR) >= end
        assert all(a.healthy for a in app.archivers)
    finally:
        await app.stop()
        await hooks.stop()


@pytest.mark.parametrize(
    "body",
    [
        b'{"eventSource":"s3.amazonaws.com","eventName":"a\\ud800b","eventID":"sur-canonical"}',
        b'{"eventSource":"s3.amazonaws.com","eventName":"D","eventID":"deep-2000","x":'
        + b"[" * 2000
        + b"]" * 2000
        + b"}",
    ],
    ids=["surrogate-in-canonical-field", "nesting-2000"],
)
def test_input_the_decoder_cannot_take_is_quarantined_not_a_500(body: bytes) -> None:
    """Every item is an event the journal can take, or a Rejected for the quarantine."""
    from daemon.events import REASON_INVALID_JSON, REASON_INVALID_UTF8, Decoder, Event, Rejected, encode_event

    (item,) = Decoder().decode(body)
    assert isinstance(item, Rejected), "neither case can be journalled as an event"
    assert item.reason in (REASON_INVALID_UTF8, REASON_INVALID_JSON) and item.raw == body
    # A lone surrogate outside the canonical fields is stored, escaped, inside an envelope too.
    envelope = b'{"Records":[{"eventSource":"s3","eventName":"E","eventID":"env-sur","x":"a\\ud800b"}]}'
    (ev,) = Decoder().decode(envelope)
    assert isinstance(ev, Event) and b"\\ud800" in ev.record
    encode_event(ev)
