"""``trailkeeper notify test`` sends one message through a subscription's real sender and says
in one line whether it arrived; ``notify dlq purge`` deletes parked messages, only with --yes."""

from __future__ import annotations

import asyncio
import base64
import subprocess
import sys
from pathlib import Path

import pytest
from standardwebhooks.webhooks import Webhook

from daemon.notify.outbox import Outbox, list_dead_sync, outbox_path
from tests.conftest import ROOT, base_config_text
from tests.notify_support import Receiver

pytestmark = pytest.mark.integration

SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()


async def _daemon(*args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "daemon", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


def _config(tmp: Path, recv: Receiver) -> Path:
    path = tmp / "trailkeeper.yaml"
    path.write_text(
        base_config_text(tmp)
        + "notify:\n  topics:\n"
        + "    sec:\n      subscriptions:\n"
        + f"      - {{name: hook, protocol: webhook, url: '{recv.url('/sec')}', secrets: ['{SECRET}'],"
        + " template: {title: 'TEST {{ event.operation }}'}}\n"
        + f"      - {{name: chat, protocol: slack, url: '{recv.url('/slack')}'}}\n"
        + "    ops:\n      subscriptions:\n"
        + f"      - {{name: chat, protocol: slack, url: '{recv.url('/ops-slack')}'}}\n"
        + "  routes:\n    - {topic: sec}\n"
        + "  delivery: {timeout: 2s}\n"
    )
    return path


async def test_notify_test_delivers_one_signed_message_through_the_subscription(tmp_path: Path) -> None:
    recv = await Receiver().start()
    try:
        cfg = _config(tmp_path, recv)
        proc = await _daemon("notify", "test", "--subscription", "hook", "--config", str(cfg))
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip().splitlines() == ["sec/hook (webhook): test message delivered"]
        (got,) = recv.requests
        assert got.path == "/sec"
        # The subscription's real sender: signed with its secret, titled by its template.
        Webhook(SECRET).verify(got.body, got.headers)
        body = got.json()
        assert body["type"] == "Notification" and body["topic"] == "sec" and body["subscription"] == "hook"
        assert body["title"] == "TEST NotificationTest"
        assert body["event"]["operation"] == "NotificationTest"

        # A name in two topics needs --topic (or TOPIC/NAME).
        ambiguous = await _daemon("notify", "test", "--subscription", "chat", "--config", str(cfg))
        assert ambiguous.returncode == 2 and "add --topic" in ambiguous.stderr
        chat = await _daemon("notify", "test", "-s", "chat", "--topic", "ops", "--config", str(cfg))
        assert chat.returncode == 0, chat.stderr
        assert recv.requests[-1].path == "/ops-slack"
        unknown = await _daemon("notify", "test", "-s", "sec/nope", "--config", str(cfg))
        assert unknown.returncode == 2 and "no subscription 'nope'" in unknown.stderr
    finally:
        await recv.stop()


@pytest.mark.parametrize("failure", ["http_500", "connection_refused"])
async def test_notify_test_reports_a_failed_delivery_in_one_line(tmp_path: Path, failure: str) -> None:
    recv = await Receiver(status=500, reply=b"broken").start()
    try:
        cfg = _config(tmp_path, recv)
        if failure == "connection_refused":
            await recv.down()
        proc = await _daemon("notify", "test", "--subscription", "sec/hook", "--config", str(cfg))
    finally:
        await recv.stop()
    assert proc.returncode == 1
    assert proc.stdout == ""
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("error: sec/hook (webhook): the test message was not delivered: ")
    assert ("http_5xx" in line and "HTTP 500" in line) if failure == "http_500" else "connect:" in line
    # Tried once: a test does not retry.
    assert len(recv.requests) == (1 if failure == "http_500" else 0)


async def test_dlq_purge_refuses_without_yes_and_deletes_only_parked_messages(tmp_path: Path) -> None:
    state = tmp_path / "state"
    dead_box, other = outbox_path(state, "sec", "hook"), outbox_path(state, "ops", "chat")
    for path, n in ((dead_box, 3), (other, 2)):
        box = Outbox(path)
        await box.open()
        await box.add([(f"m{i}", 0, {"title": f"t{i}"}) for i in range(n + 1)])
        for msg in (await box.pending(0, 100))[:n]:
            await box.park(msg.seq, 1, "http_4xx: refused")
        box.close()

    refused = await _daemon("notify", "dlq", "purge", "--state-dir", str(state), "--subscription", "sec/hook")
    assert refused.returncode == 2
    assert "3 message(s)" in refused.stderr and "--yes" in refused.stderr
    assert len(list_dead_sync(dead_box)) == 3

    one = await _daemon(
        "notify", "dlq", "purge", "--yes", "--state-dir", str(state), "--subscription", "sec/hook"
    )
    assert one.returncode == 0 and one.stdout.strip() == '{"purged":3}', one
    assert list_dead_sync(dead_box) == [] and len(list_dead_sync(other)) == 2
    box = Outbox(dead_box)
    assert await box.counts() == {"pending": 1}, "a pending message is not purged"
    box.close()

    rest = await _daemon("notify", "dlq", "purge", "--yes", "--state-dir", str(state))
    assert rest.returncode == 0 and rest.stdout.strip() == '{"purged":2}'
    assert list_dead_sync(other) == []
