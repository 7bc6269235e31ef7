"""Reloading: good rules replace the old ones, bad rules leave the old ones in force."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from daemon.events import Decoder, Event
from daemon.rules.config import RulesConfig
from daemon.rules.loader import RuleLoadError
from daemon.rules.ruleset import RuleSet
from daemon.telemetry import REGISTRY

V1 = """
rules:
  - {id: t.one, category: high_risk, severity: high, match: {operation: [StopLogging]}}
"""
V2 = """
rules:
  - {id: t.two, category: high_risk, severity: high, match: {operation: [DeleteTrail]}}
"""
BAD = """
rules:
  - {id: t.broken, category: high_risk, severity: high, match: {operation: [{prefx: X}]}}
"""


def ev(name: str) -> Event:
    [item] = Decoder().decode(orjson.dumps({"eventSource": "cloudtrail.amazonaws.com", "eventName": name}))
    assert isinstance(item, Event)
    return item


def ids(rs: RuleSet, name: str) -> list[str]:
    return [m.rule for m in rs.match(ev(name))]


def failed_reloads() -> float:
    return REGISTRY.get_sample_value("trailkeeper_rules_reloads_total", {"result": "failed"}) or 0.0


def test_bad_rules_at_start_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(BAD)
    with pytest.raises(RuleLoadError, match=r"t\.broken"):
        RuleSet(RulesConfig(builtin=False, files=[path]), metrics=False)


def test_reload_swaps_good_rules_and_keeps_old_ones_on_bad(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(V1)
    rs = RuleSet(RulesConfig(builtin=False, files=[path]), metrics=False)
    assert ids(rs, "StopLogging") == ["t.one"]

    path.write_text(V2)
    assert rs.reload() is True
    assert ids(rs, "StopLogging") == []
    assert ids(rs, "DeleteTrail") == ["t.two"]

    before = failed_reloads()
    path.write_text(BAD)
    assert rs.reload() is False
    assert ids(rs, "DeleteTrail") == ["t.two"]  # still the last good rules
    assert failed_reloads() == before + 1

    path.unlink()
    assert rs.reload() is False
    assert ids(rs, "DeleteTrail") == ["t.two"]


async def test_async_reload_keeps_old_rules_on_bad(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(V1)
    rs = RuleSet(RulesConfig(builtin=False, files=[path]), metrics=False)
    path.write_text(BAD)
    assert await rs.reload_async() is False
    assert ids(rs, "StopLogging") == ["t.one"]
    path.write_text(V2)
    assert await rs.reload_async() is True
    assert ids(rs, "DeleteTrail") == ["t.two"]


def test_counts_of_the_old_rules_are_kept_across_a_reload(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(V1.replace("t.one", "t.counted").replace("high_risk", "reload_test"))
    rs = RuleSet(RulesConfig(builtin=False, files=[path]))

    def count() -> float:
        labels = {"rule": "t.counted", "category": "reload_test"}
        return REGISTRY.get_sample_value("trailkeeper_rule_matches_total", labels) or 0.0

    before = count()
    for _ in range(5):
        rs.match(ev("StopLogging"))
    path.write_text(V2)
    assert rs.reload() is True
    assert count() == before + 5
