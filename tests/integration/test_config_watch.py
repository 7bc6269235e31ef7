"""``config_watch`` under the running daemon: a ConfigMap update is reloaded without SIGHUP.

The daemon runs as ``python -m daemon run --config <volume>/trailkeeper.yaml`` where the
volume is laid out as the kubelet lays out a ConfigMap mounted as a directory, and updates
swap its ``..data`` symlink (tests.deploytools.kubelet_volume).
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.deploytools import kubelet_volume

pytestmark = pytest.mark.integration

DISABLED = "cis.4.3-root-usage"


async def _loaded(url: str) -> int:
    async with aiohttp.ClientSession() as s, s.get(url) as resp:
        text = await resp.text()
    m = re.search(r"^trailkeeper_rules_loaded (\S+)$", text, re.M)
    assert m, "trailkeeper_rules_loaded missing from /metrics"
    return int(float(m.group(1)))


async def _until(what: str, check: Any, timeout: float = 15) -> None:
    try:
        async with asyncio.timeout(timeout):
            while not await check():
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


async def test_a_configmap_update_is_reloaded_and_a_broken_one_logged_once(
    tmp_path: Path, daemon_process: Any
) -> None:
    base_rules = "rules: {builtin: true}\n"
    d = daemon_process(metrics=True, rules=base_rules, config_watch="config_watch: 200ms\n")
    volume = tmp_path / "configmap"
    original = d.config_path.read_text()

    def text(rules: str) -> str:
        assert base_rules in original
        return original.replace(base_rules, rules)

    kubelet_volume(volume, {"trailkeeper.yaml": original})
    d.config_path = volume / "trailkeeper.yaml"
    d.start()
    metrics = f"http://127.0.0.1:{d.metrics_port}/metrics"
    before = await _loaded(metrics)

    kubelet_volume(volume, {"trailkeeper.yaml": text(f"rules: {{builtin: true, disable: [{DISABLED}]}}\n")})

    async def one_less() -> bool:
        return await _loaded(metrics) == before - 1

    await _until("the rule to be disabled without SIGHUP", one_less)

    kubelet_volume(volume, {"trailkeeper.yaml": text("rules: {builtin: maybe}\n")})

    async def refused() -> bool:
        return any(e.get("event") == "app.reload_failed" for e in d.logs())

    await _until("the broken config to be refused", refused)
    await asyncio.sleep(1.5)  # several more polls of the same broken content
    failures = [e for e in d.logs() if e.get("event") == "app.reload_failed"]
    assert len(failures) == 1, failures
    assert any("rules.builtin" in p for p in failures[0]["problems"]), failures[0]
    assert await _loaded(metrics) == before - 1  # the config in force stays
    assert d.proc is not None and d.proc.poll() is None

    kubelet_volume(volume, {"trailkeeper.yaml": original})

    async def restored() -> bool:
        return await _loaded(metrics) == before

    await _until("the fixed config to be reloaded", restored)
    assert len([e for e in d.logs() if e.get("event") == "app.reload_failed"]) == 1
    assert d.terminate() == 0


async def test_without_config_watch_a_change_waits_for_sighup(tmp_path: Path, daemon_process: Any) -> None:
    d = daemon_process(metrics=True, rules="rules: {builtin: true}\n")
    d.start()
    metrics = f"http://127.0.0.1:{d.metrics_port}/metrics"
    before = await _loaded(metrics)
    d.config_path.write_text(
        d.config_path.read_text().replace("rules: {builtin: true}", f"rules: {{disable: [{DISABLED}]}}")
    )
    await asyncio.sleep(1.5)
    assert await _loaded(metrics) == before
    assert not any(e.get("event") == "config.changed" for e in d.logs())
    assert d.terminate() == 0
