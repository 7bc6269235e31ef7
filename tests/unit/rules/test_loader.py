"""Rule files: every problem named by file, rule id and key; add, override, disable."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from daemon.config import parse_config
from daemon.rules.config import RulesConfig
from daemon.rules.loader import RuleLoadError, load_rules, parse_rule_text

GOOD = """
rules:
  - id: my.stop-logging
    category: high_risk
    severity: critical
    description: mine
    match: {operation: [StopLogging]}
"""


def test_malformed_rule_is_refused_with_rule_id_and_key() -> None:
    text = """
rules:
  - id: team.bad-prefix
    category: high_risk
    severity: high
    match:
      operation: [{prefx: Delete}]
  - id: team.bad-severity
    category: high_risk
    severity: urgent
    match: {operation: [X]}
  - id: team.bad-key
    category: high_risk
    severity: low
    mtach: {operation: [X]}
"""
    with pytest.raises(RuleLoadError) as info:
        parse_rule_text(text, "team.yaml")
    problems = info.value.problems
    assert any(
        p.startswith("team.yaml: rule 'team.bad-prefix': match.operation[0].prefx:") for p in problems
    ), problems
    assert any(p.startswith("team.yaml: rule 'team.bad-severity': severity:") for p in problems)
    assert any(p.startswith("team.yaml: rule 'team.bad-key': mtach: unknown key") for p in problems)
    assert any(p.startswith("team.yaml: rule 'team.bad-key': match: required") for p in problems)
    assert "team.yaml" in info.value.render()


def test_rule_without_id_is_named_by_position() -> None:
    with pytest.raises(RuleLoadError) as info:
        parse_rule_text("rules:\n  - {category: x, severity: low, match: {operation: [A]}}\n", "f.yaml")
    assert info.value.problems[0].startswith("f.yaml: rules[0]: id:")


def test_not_yaml_and_duplicate_ids() -> None:
    with pytest.raises(RuleLoadError, match="not valid YAML"):
        parse_rule_text("rules: [", "f.yaml")
    with pytest.raises(RuleLoadError, match="defined twice"):
        parse_rule_text(GOOD + GOOD.split("rules:\n", 1)[1], "f.yaml")


def test_user_rules_add_override_and_disable(tmp_path: Path) -> None:
    builtin = {r.id: r for r in load_rules(RulesConfig())}
    assert "cis.4.5-cloudtrail-changes" in builtin
    override = tmp_path / "override.yaml"
    override.write_text("""
rules:
  - id: cis.4.5-cloudtrail-changes
    category: audit_tampering
    severity: low
    description: ours now
    match: {operation: [StopLogging]}
disable: [cis.4.1-unauthorized-api-calls]
""")
    extra = tmp_path / "dir"
    extra.mkdir()
    (extra / "a.yaml").write_text(GOOD)
    rules = load_rules(RulesConfig(files=[override, extra], disable=["cis.4.3-root-usage"]))
    by_id = {r.id: r for r in rules}
    assert by_id["cis.4.5-cloudtrail-changes"].category == "audit_tampering"
    assert by_id["cis.4.5-cloudtrail-changes"].source == str(override)
    # The override keeps the built-in rule's position.
    order = [r.id for r in rules]
    assert order.index("cis.4.4-iam-policy-changes") < order.index("cis.4.5-cloudtrail-changes")
    assert order.index("cis.4.5-cloudtrail-changes") < order.index("cis.4.6-console-authentication-failures")
    assert "cis.4.1-unauthorized-api-calls" not in by_id
    assert "cis.4.3-root-usage" not in by_id
    assert "my.stop-logging" in by_id
    assert len(rules) == len(builtin) - 2 + 1


def test_unknown_disable_and_unreadable_file_are_errors(tmp_path: Path) -> None:
    with pytest.raises(RuleLoadError, match=re.escape("rules.disable: disable: no rule with id 'nope'")):
        load_rules(RulesConfig(disable=["nope"]))
    with pytest.raises(RuleLoadError, match="cannot read the rule file"):
        load_rules(RulesConfig(files=[tmp_path / "missing.yaml"]))


def test_builtin_off_loads_only_user_rules(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(GOOD)
    assert [r.id for r in load_rules(RulesConfig(builtin=False, files=[path]))] == ["my.stop-logging"]


def test_rules_section_of_the_config() -> None:
    config = parse_config("rules: {builtin: false, files: [a.yaml], disable: [x]}\n")
    assert config.rules.builtin is False
    assert [str(p) for p in config.rules.files] == ["a.yaml"]
    with pytest.raises(Exception, match=r"rules\.fils: unknown key"):
        parse_config("rules: {fils: [a.yaml]}\n")
