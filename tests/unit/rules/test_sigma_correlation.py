"""Sigma correlation documents become correlations over the compiled Sigma rules."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.rules.config import RulesConfig
from daemon.rules.loader import RuleLoadError, load_all
from daemon.rules.ruleset import RuleSet
from tests.unit.rules.test_correlation import event, fired, record

BASE = """
title: Failed console login
id: 6f1d1e0a-0000-4000-8000-000000000001
name: failed_console_login
status: test
logsource: {product: aws, service: cloudtrail}
detection:
  selection:
    eventName: ConsoleLogin
    errorMessage: Failed authentication
  condition: selection
level: low
"""
BURST = """
title: Console login failure burst
id: 6f1d1e0a-0000-4000-8000-0000000000c1
author: SOC
status: test
correlation:
  type: event_count
  rules: [failed_console_login]
  group-by: [sourceIPAddress]
  timespan: 1m
  condition: {gte: 5}
level: high
tags: [attack.credential-access]
"""
SEQUENCE_RULES = """
title: IAM user created
id: 6f1d1e0a-0000-4000-8000-000000000002
name: user_created
logsource: {product: aws, service: cloudtrail}
detection:
  selection: {eventSource: iam.amazonaws.com, eventName: CreateUser}
  condition: selection
level: medium
---
title: Access key created
id: 6f1d1e0a-0000-4000-8000-000000000003
name: key_created
logsource: {product: aws, service: cloudtrail}
detection:
  selection: {eventSource: iam.amazonaws.com, eventName: CreateAccessKey}
  condition: selection
level: medium
---
title: User then key by one principal
id: 6f1d1e0a-0000-4000-8000-0000000000c2
correlation:
  type: temporal_ordered
  rules: [user_created, key_created]
  group-by: [actor]
  aliases:
    actor: {user_created: userIdentity.arn, key_created: userIdentity.arn}
  timespan: 5m
  generate: true
level: critical
tags: [attack.persistence]
"""


def sigma_dir(tmp_path: Path, **files: str) -> Path:
    root = tmp_path / "sigma"
    root.mkdir()
    for name, text in files.items():
        (root / f"{name}.yml").write_text(text)
    return root


def test_event_count_across_files_with_generate_false_hides_the_base_rule(tmp_path: Path) -> None:
    root = sigma_dir(tmp_path, base=BASE, burst=BURST)
    config = RulesConfig(builtin=False, sigma=[root], sigma_strict=True, sigma_level_categories={})
    loaded = load_all(config)
    [c] = loaded.correlations
    assert c.id == "sigma.6f1d1e0a-0000-4000-8000-0000000000c1"
    assert (c.type, c.needed, c.timespan_ms, c.severity, c.category) == (
        "event_count",
        5,
        60_000,
        "high",
        "high_risk",
    )
    assert c.hides == ("sigma.6f1d1e0a-0000-4000-8000-000000000001",)
    rs = RuleSet(config, metrics=False)
    recs = [record("ConsoleLogin", i, failed=True, n=i) for i in range(6)]
    # Sigma's generate: false: the base rule feeds the correlation and is not itself reported.
    assert all(m.rule != c.hides[0] for m in rs.match(event(recs[0], 0)))
    assert fired(rs, "a", recs) == [(4, c.id)]
    other_ip = [record("ConsoleLogin", i, failed=True, n=i, ip=f"192.0.2.{i}") for i in range(6)]
    assert fired(rs, "b", other_ip) == []


def test_temporal_ordered_with_aliases(tmp_path: Path) -> None:
    root = sigma_dir(tmp_path, seq=SEQUENCE_RULES)
    rs = RuleSet(RulesConfig(builtin=False, sigma=[root], sigma_strict=True), metrics=False)
    [c] = rs.correlations
    assert c.type == "temporal_ordered" and c.needed == 2 and c.hides == ()
    assert [s.group[0].path for s in c.steps] == [("userIdentity", "arn"), ("userIdentity", "arn")]
    assert fired(rs, "a", [record("CreateUser", 0), record("CreateAccessKey", 60)]) == [(1, c.id)]
    assert fired(rs, "b", [record("CreateAccessKey", 0), record("CreateUser", 60)]) == []
    late = [record("CreateUser", 0), record("CreateAccessKey", 301)]
    assert fired(rs, "c", late) == []


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ("condition: {gte: 5}", "condition: {lt: 5}"),
        ("type: event_count", "type: value_sum"),
        ("rules: [failed_console_login]", "rules: [no_such_rule]"),
    ],
)
def test_untranslatable_correlations_are_refused_or_strictly_fail(
    tmp_path: Path, change: str, reason: str
) -> None:
    text = BURST.replace(change, reason)
    if "value_sum" in reason:
        text = text.replace("condition: {gte: 5}", "condition: {gte: 5, field: x}")
    root = sigma_dir(tmp_path, base=BASE, burst=text)
    loaded = load_all(RulesConfig(builtin=False, sigma=[root]))
    assert loaded.correlations == [] and [r.id for r in loaded.rules] == [
        "sigma.6f1d1e0a-0000-4000-8000-000000000001"
    ]
    with pytest.raises(RuleLoadError, match="6f1d1e0a-0000-4000-8000-0000000000c1"):
        load_all(RulesConfig(builtin=False, sigma=[root], sigma_strict=True))
