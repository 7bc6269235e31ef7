"""notify: config errors name their YAML path."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.config import ConfigError, parse_config
from tests.conftest import base_config_text


def _problems(tmp: Path, notify: str) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        parse_config(base_config_text(tmp) + notify)
    return exc.value.problems


def test_route_to_unknown_topic(tmp_path: Path) -> None:
    problems = _problems(tmp_path, "notify:\n  topics: {}\n  routes:\n    - {topic: nope}\n")
    assert any("routes[0].topic" in p and "nope" in p for p in problems)


def test_bad_secret_and_protocol_settings(tmp_path: Path) -> None:
    text = (
        "notify:\n  topics:\n    t:\n      subscriptions:\n"
        "      - {name: h, protocol: webhook, url: 'http://x', secrets: [plain]}\n"
        "      - {name: m, protocol: email, host: h, from: a@b, to: []}\n"
    )
    problems = _problems(tmp_path, text)
    assert any("notify.topics.t.subscriptions[0]" in p and "whsec_" in p for p in problems), problems
    assert any("notify.topics.t.subscriptions[1]" in p and "to" in p for p in problems), problems


def test_group_by_takes_canonical_fields(tmp_path: Path) -> None:
    text = "notify:\n  topics: {t: {}}\n  routes:\n    - {topic: t, group_by: [principal]}\n"
    assert any("group_by" in p and "principal" in p for p in _problems(tmp_path, text))


def test_valid_config(tmp_path: Path) -> None:
    text = (
        "notify:\n  topics:\n    t:\n      subscriptions:\n"
        "      - {name: d, protocol: dingtalk, url: 'https://oapi.dingtalk.com/robot/send?access_token=x',"
        " secret: SECx}\n"
        "  routes:\n    - {topic: t, min_severity: high, pattern: {service: [iam.amazonaws.com]},"
        " group_by: [user_name], group_wait: 30s}\n"
    )
    cfg = parse_config(base_config_text(tmp_path) + text)
    assert cfg.notify.routes[0].group_wait == 30.0
