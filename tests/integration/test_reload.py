"""SIGHUP under the running daemon: good rules are swapped in, bad ones leave the old in force."""

from __future__ import annotations

import asyncio
import re
import signal
from pathlib import Path
from typing import Any

import aiohttp
import pytest

pytestmark = pytest.mark.integration

GOOD = """
rules:
  - id: local.stop-logging
    category: high_risk
    severity: critical
    description: CloudTrail logging stopped (site rule).
    match: {operation: [StopLogging]}
"""
BETTER = (
    GOOD
    + """
  - id: local.delete-trail
    category: high_risk
    severity: high
    description: A trail was deleted (site rule).
    match: {operation: [DeleteTrail]}
"""
)
BAD = """
rules:
  - id: local.broken
    category: high_risk
    severity: catastrophic
    match: {operation: {prefix: Stop}}
"""


async def _loaded(url: str) -> int:
    async with aiohttp.ClientSession() as s, s.get(url) as resp:
        text = await resp.text()
    m = re.search(r"^trailkeeper_rules_loaded (\S+)$", text, re.M)
    assert m, "trailkeeper_rules_loaded missing from /metrics"
    return int(float(m.group(1)))


async def _wait_log(d: Any, event: str, count: int) -> list[dict[str, Any]]:
    async with asyncio.timeout(15):
        while True:
            found = [e for e in d.logs() if e.get("event") == event]
            if len(found) >= count:
                return found
            await asyncio.sleep(0.1)


async def test_sighup_reload_keeps_old_rules_when_new_are_bad(tmp_path: Path, daemon_process: Any) -> None:
    rules_file = tmp_path / "site-rules.yaml"
    rules_file.write_text(GOOD)
    d = daemon_process(metrics=True, rules=f"rules: {{builtin: true, files: [{rules_file}]}}\n")
    d.start()
    metrics = f"http://127.0.0.1:{d.metrics_port}/metrics"
    before = await _loaded(metrics)
    assert before > 100  # the built-in packs plus the site rule

    rules_file.write_text(BAD)
    assert d.proc is not None
    d.proc.send_signal(signal.SIGHUP)
    (failed,) = await _wait_log(d, "rules.reload_failed", 1)
    problems = " ".join(failed["problems"])
    assert "local.broken" in problems and "severity" in problems
    assert await _loaded(metrics) == before  # the old rules stay in force
    assert d.proc.poll() is None  # and the daemon keeps running

    rules_file.write_text(BETTER)
    d.proc.send_signal(signal.SIGHUP)
    (reloaded,) = await _wait_log(d, "rules.reloaded", 1)
    assert reloaded["added"] == ["local.delete-trail"]
    assert await _loaded(metrics) == before + 1
    assert d.terminate() == 0


async def test_daemon_refuses_to_start_with_bad_rules(tmp_path: Path, daemon_process: Any) -> None:
    rules_file = tmp_path / "site-rules.yaml"
    rules_file.write_text(BAD)
    d = daemon_process(rules=f"rules: {{files: [{rules_file}]}}\n")
    with pytest.raises(RuntimeError, match=r"local\.broken"):
        d.start()
    assert d.proc is not None and d.proc.wait(5) == 2


async def test_reload_swaps_topics_and_routes_and_refuses_bad_ones(tmp_path: Path) -> None:
    from daemon.app import App
    from daemon.config import load_config
    from tests.conftest import base_config_text
    from tests.notify_support import Receiver, key_events, notify_yaml, post_events

    first, second = await Receiver().start(), await Receiver().start()

    def config_text(recv: Receiver, topic: str, template: str = "") -> str:
        topics = (f"    {topic}:\n      subscriptions:\n"
                  f"      - {{name: hook, protocol: webhook, url: '{recv.url('/hook')}'{template}}}\n")
        return base_config_text(tmp_path) + notify_yaml(topics, f"    - {{topic: {topic}, categories: [high_risk]}}\n")

    path = tmp_path / "trailkeeper.yaml"
    path.write_text(config_text(first, "ops"))
    app = App(load_config(path), str(path))
    await app.start()
    try:
        async with aiohttp.ClientSession() as s:
            await post_events(s, app.http_port or 0, key_events(2))
            await first.wait_for(lambda r: len(r.ok()) >= 2, 20)
            path.write_text(config_text(second, "secops"))
            assert await app.reload()
            await post_events(s, app.http_port or 0, key_events(3))
            await second.wait_for(lambda r: len(r.ok()) >= 3, 20)
            assert len(first.ok()) == 2
            # A template that does not compile: the reload is refused, the notifier in force stays.
            path.write_text(config_text(second, "other", template=", template: {body: '{{ oops'}"))
            assert not await app.reload()
            await post_events(s, app.http_port or 0, key_events(1))
            await second.wait_for(lambda r: len(r.ok()) >= 4, 20)
    finally:
        await app.stop()
        await first.stop()
        await second.stop()
