"""Sigma rules compiled into trailkeeper rules: what compiles, what is refused and why,
how levels and tags map, CTS field names, the built-in pack's deduplication, and the
pattern operators Sigma rules brought to YAML rules."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from daemon.events import Decoder, Event
from daemon.rules.config import RulesConfig
from daemon.rules.engine import RuleEngine
from daemon.rules.loader import RuleLoadError, load_rules, parse_rule_text
from daemon.rules.model import Rule
from daemon.rules.pattern import Needle, Pattern
from daemon.rules.sigma import SigmaImport, SigmaOptions, compile_paths, compile_text, dedupe

UUID = "6f2d3c1e-0000-4000-8000-00000000000"


def _sigma(detection: dict[str, Any], n: int = 1, **extra: Any) -> str:
    doc = {
        "title": f"rule {n}",
        "id": f"{UUID}{n}",
        "author": "A. Author",
        "logsource": extra.pop("logsource", {"product": "aws", "service": "cloudtrail"}),
        "detection": detection,
        "level": extra.pop("level", "high"),
        **extra,
    }
    return yaml.safe_dump(doc)


def _compile(text: str, options: SigmaOptions | None = None) -> SigmaImport:
    result = SigmaImport()
    compile_text(text, "t.yml", options or SigmaOptions(), result)
    return result


def _matches(rule: Rule, record: dict[str, Any]) -> bool:
    (event,) = Decoder(max_event_bytes=1 << 20).decode(orjson.dumps(record))
    assert isinstance(event, Event)
    return bool(RuleEngine([rule], metrics=False).match(event))


CT = {"eventVersion": "1.08", "eventSource": "iam.amazonaws.com", "eventName": "CreateUser"}


@pytest.mark.parametrize(
    ("detection", "feature"),
    [
        ({"sel": {"userAgent|base64offset|contains": "x"}, "condition": "sel"}, "modifier |base64offset"),
        ({"sel": {"userAgent|windash|contains": "-x"}, "condition": "sel"}, "modifier |windash"),
        ({"sel": {"userAgent|expand": "%agents%"}, "condition": "sel"}, "modifier |expand"),
        ({"sel": {"userAgent|fieldref": "eventName"}, "condition": "sel"}, "modifier |fieldref"),
        ({"sel": {"errorCode|gt": 5}, "condition": "sel"}, "modifier |gt"),
        ({"keywords": ["evil"], "condition": "keywords"}, "keywords (a value without a field)"),
    ],
)
def test_features_that_cannot_compile_refuse_the_rule(detection: dict[str, Any], feature: str) -> None:
    result = _compile(_sigma(detection))
    assert result.rules == []
    (refusal,) = result.refused
    assert refusal.rule_id == f"{UUID}1"
    assert refusal.reason == feature
    assert f"rule {UUID}1 (rule 1): refused: {feature}" in refusal.message()


def test_other_log_sources_and_correlations_are_refused() -> None:
    azure = _compile(_sigma({"s": {"x": "y"}, "condition": "s"}, logsource={"product": "azure"}))
    assert "logsource {product: azure}" in azure.refused[0].reason
    correlation = yaml.safe_dump(
        {
            "title": "burst",
            "id": f"{UUID}9",
            "correlation": {
                "type": "event_count",
                "rules": [f"{UUID}1"],
                "group-by": ["sourceIPAddress"],
                "timespan": "1m",
                "condition": {"gte": 5},
            },
        }
    )
    result = _compile(_sigma({"s": {"eventName": "ConsoleLogin"}, "condition": "s"}) + "---\n" + correlation)
    assert len(result.rules) == 1
    assert result.refused[0].rule_id == f"{UUID}9"
    assert "correlation" in result.refused[0].reason


def test_a_compiled_rule_is_indexed_by_its_operations_and_keeps_attribution() -> None:
    (rule,) = _compile(
        _sigma(
            {
                "sel": {"eventSource": "iam.amazonaws.com", "eventName": ["CreateUser", "DeleteUser"]},
                "condition": "sel",
            },
            tags=["attack.persistence"],
        )
    ).rules
    assert rule.id == f"sigma.{UUID}1"
    assert rule.category == "high_risk" and rule.severity == "high"
    assert "rule 1" in rule.description and "A. Author" in rule.description
    assert "A. Author" in rule.source
    engine = RuleEngine([rule], metrics=False)
    assert engine.index_stats().get("fallback", 0) == 0
    assert (
        engine.checks_for({"service": "iam.amazonaws.com", "operation": "GetUser", "format": "cloudtrail"})
        == 0
    )
    # Sigma strings compare without regard to case; a CTS trace never matches an aws rule.
    assert _matches(rule, {**CT, "eventName": "createuser"})
    assert not _matches(rule, {"service_type": "iam.amazonaws.com", "trace_name": "CreateUser", "time": 1})


def test_levels_and_tags_map_to_severity_and_category_and_the_mapping_is_overridable() -> None:
    def one(level: str, tags: list[str], options: SigmaOptions | None = None) -> Rule:
        (rule,) = _compile(
            _sigma({"s": {"eventName": "X"}, "condition": "s"}, level=level, tags=tags), options
        ).rules
        return rule

    assert (one("informational", []).severity, one("informational", []).category) == ("info", "sigma_hunting")
    assert one("critical", ["attack.t1496"]).category == "cost_sensitive"
    assert one("medium", ["attack.discovery"]).category == "service_sensitive"
    custom = SigmaOptions(
        tag_categories={"attack.discovery": "recon"}, level_categories={}, default_category="other"
    )
    assert one("low", ["attack.discovery"], custom).category == "recon"
    assert one("low", ["attack.impact"], custom).category == "other"


def test_cts_rules_read_trace_fields_under_cloudtrail_or_native_names() -> None:
    text = _sigma(
        {
            "sel": {
                "eventName": "deleteUser",
                "user.name|startswith": "adm",
                "sourceIPAddress|cidr": "10.0.0.0/8",
            },
            "condition": "sel",
        },
        logsource={"product": "huaweicloud", "service": "cts"},
    )
    (rule,) = _compile(text).rules
    trace = {
        "service_type": "IAM",
        "trace_name": "deleteUser",
        "time": 1,
        "user": {"name": "Admin1"},
        "source_ip": "10.2.3.4",
    }
    assert _matches(rule, trace)
    assert not _matches(rule, {**trace, "source_ip": "192.0.2.1"})
    assert not _matches(rule, {**CT, "eventName": "deleteUser"})


def test_rules_sigma_loads_folders_and_refusals_are_left_out_or_fatal_when_strict(tmp_path: Path) -> None:
    folder = tmp_path / "sigma" / "sub"
    folder.mkdir(parents=True)
    (folder / "good.yml").write_text(_sigma({"s": {"eventName": "CreateUser"}, "condition": "s"}, n=1))
    (folder / "bad.yml").write_text(_sigma({"s": {"x|windash": "y"}, "condition": "s"}, n=2))
    rules = load_rules(RulesConfig(builtin=False, sigma=[tmp_path / "sigma"]))
    assert [r.id for r in rules] == [f"sigma.{UUID}1"]
    with pytest.raises(RuleLoadError) as info:
        load_rules(RulesConfig(builtin=False, sigma=[tmp_path / "sigma"], sigma_strict=True))
    assert f"rule {UUID}2" in info.value.render() and "|windash" in info.value.render()
    with pytest.raises(RuleLoadError, match=r"rules.sigma\[0\]"):
        load_rules(RulesConfig(builtin=False, sigma=[tmp_path / "missing"]))
    assert compile_paths([tmp_path / "sigma"], SigmaOptions()).refused[0].reason == "modifier |windash"


def test_dedupe_drops_operations_an_unconditional_pack_rule_already_flags() -> None:
    pack = parse_rule_text(
        """
rules:
  - id: p.trail
    category: high_risk
    severity: high
    match: {service: [cloudtrail.amazonaws.com], operation: [StopLogging, DeleteTrail]}
  - id: p.conditional
    category: high_risk
    severity: high
    match: {operation: [CreateUser], user_type: [Root]}
""",
        "pack",
    ).rules
    text = "".join(
        "---\n" + _sigma(d, n=i)
        for i, d in enumerate(
            [
                {
                    "s": {
                        "eventSource": "cloudtrail.amazonaws.com",
                        "eventName": ["StopLogging", "DeleteTrail"],
                    },
                    "condition": "s",
                },
                {
                    "s": {
                        "eventSource": "cloudtrail.amazonaws.com",
                        "eventName": ["StopLogging", "UpdateTrail"],
                    },
                    "condition": "s",
                },
                {"s": {"eventName": "CreateUser"}, "condition": "s"},
            ],
            start=1,
        )
    )
    sigma = _compile(text).rules
    kept, report = dedupe(sigma, pack)
    assert report == {f"sigma.{UUID}1": ["p.trail"], f"sigma.{UUID}2": ["p.trail"]}
    assert [r.id for r in kept] == [f"sigma.{UUID}2", f"sigma.{UUID}3"]
    narrowed = kept[0]
    trail = {**CT, "eventSource": "cloudtrail.amazonaws.com"}
    assert _matches(narrowed, {**trail, "eventName": "UpdateTrail"})
    assert not _matches(narrowed, {**trail, "eventName": "StopLogging"})
    # Its examples were re-labelled for the narrower rule.
    assert all(_matches(narrowed, e) for e in narrowed.examples_match) and narrowed.examples_match


def test_the_builtin_pack_gives_no_second_match_for_a_pack_rule_operation() -> None:
    engine = RuleEngine(load_rules(RulesConfig()), metrics=False)
    (event,) = Decoder(max_event_bytes=1 << 20).decode(
        orjson.dumps({**CT, "eventSource": "cloudtrail.amazonaws.com", "eventName": "StopLogging"})
    )
    assert isinstance(event, Event)
    ids = [m.rule for m in engine.match(event)]
    assert not [i for i in ids if i.startswith("sigma.")], ids
    with_sigma = {r.id for r in load_rules(RulesConfig())}
    assert "sigma.4db60cc0-36fb-42b7-9b58-a5b53019fb74" not in with_sigma  # covered by cis.4.5
    assert "sigma.a840e606-7c8c-4684-9bc1-eb6b6155127f" in with_sigma  # TruffleHog: nothing covers it
    assert not any(
        r.startswith("sigma.") for r in {r.id for r in load_rules(RulesConfig(builtin_sigma=False))}
    )


def test_yaml_rules_gain_and_not_regex_contains_and_text() -> None:
    pattern = Pattern(
        {
            "operation": [{"prefix": "Put"}],
            "$and": [
                {
                    "record": {
                        "requestParameters": [{"text": [{"contains": {"equals-ignore-case": "allow"}}]}]
                    }
                },
                {"record": {"requestParameters": [{"text": [{"contains": "Principal"}]}]}},
            ],
            "$not": {"record": {"userAgent": [{"regex": "^console\\.amazonaws"}]}},
        }
    )
    base = {"operation": "PutBucketPolicy"}
    good = {"requestParameters": {"policy": {"Effect": "ALLOW", "Principal": "*"}}, "userAgent": "aws-cli"}
    assert pattern.matches(base, good)
    assert not pattern.matches(base, {**good, "userAgent": "console.amazonaws.com"})
    assert not pattern.matches(base, {**good, "requestParameters": {"Effect": "Allow"}})
    flag = Pattern({"record": {"enable": [{"text": ["false"]}], "gone": [{"text": [{"exists": False}]}]}})
    assert flag.matches({}, {"enable": False, "gone": None}) and not flag.matches({}, {"enable": "no"})


def test_escaped_records_are_still_matched_when_the_raw_text_lacks_the_needle() -> None:
    text = _sigma({"s": {"requestParameters.userName|contains": "TruffleHog"}, "condition": "s"})
    (rule,) = _compile(text).rules
    assert rule.pattern.needles == (Needle(b"trufflehog", True, b'"userName"'),)
    raw = orjson.dumps({**CT, "requestParameters": {"userName": "x"}}).replace(
        b'"x"', b'"\\u0054ruffleHog/3"'
    )
    (event,) = Decoder(max_event_bytes=1 << 20).decode(raw)
    assert isinstance(event, Event)
    assert RuleEngine([rule], metrics=False).match(event)
    assert not _matches(rule, {**CT, "requestParameters": {"userName": "aws-cli"}})


def test_user_agent_and_arn_comparisons_read_the_match_fields() -> None:
    text = _sigma(
        {
            "tool": {"userAgent": "TruffleHog"},
            "imds": {"userIdentity.arn|re": ".+:assumed-role/aws:.+"},
            "condition": "tool or imds",
        }
    )
    (rule,) = _compile(text).rules
    # No record parse: the decoder extracted both values where it parsed the record.
    assert not rule.pattern.uses_record
    assert _matches(rule, {**CT, "userAgent": "trufflehog"})  # Sigma equals ignore case
    arn = "arn:aws:sts::111122223333:assumed-role/aws:ec2-instance/i-0abc"
    assert _matches(rule, {**CT, "userIdentity": {"arn": arn}})
    # |re is case-sensitive; the pre-check on the field must be too.
    assert not _matches(rule, {**CT, "userIdentity": {"arn": arn.upper()}})
    assert not _matches(
        rule, {**CT, "userAgent": "aws-cli/2", "userIdentity": {"arn": "arn:aws:iam::1:user/x"}}
    )
    # As text, like the record comparison: a number or an object is matched rendered.
    assert not _matches(rule, {**CT, "userAgent": 7})


def test_a_regex_that_matches_the_empty_string_keeps_reading_the_record() -> None:
    # The match field holds None for "" and for a missing key; the record tells them apart.
    (rule,) = _compile(_sigma({"s": {"userAgent|re": "^$"}, "condition": "s"})).rules
    assert rule.pattern.uses_record
    assert _matches(rule, {**CT, "userAgent": ""})


def test_string_comparisons_of_fields_with_a_canonical_twin_read_the_canonical_field() -> None:
    text = _sigma(
        {
            "root": {"userIdentity.type": "Root"},
            "service_event": {"eventType": "AwsServiceEvent"},
            "condition": "root and not service_event",
        }
    )
    (rule,) = _compile(text).rules
    # No record parse, and decided once per cache key: nothing left to check per event.
    assert not rule.pattern.uses_record
    engine = RuleEngine([rule], metrics=False)
    root = {**CT, "userIdentity": {"type": "Root"}, "eventType": "AwsApiCall"}
    (event,) = Decoder(max_event_bytes=1 << 20).decode(orjson.dumps(root))
    assert isinstance(event, Event)
    assert engine.match(event) and engine.checks_for(event.canonical) == 0
    assert _matches(rule, {**root, "userIdentity": {"type": "root"}})  # Sigma is case-insensitive
    assert not _matches(rule, {**root, "eventType": "AwsServiceEvent"})
    assert not _matches(rule, {**root, "userIdentity": {"type": "IAMUser"}})


def test_comparisons_that_tell_empty_from_missing_keep_reading_the_record() -> None:
    # Canonical fields hold None for "" and for a missing field; null and |exists do not.
    (rule,) = _compile(_sigma({"s": {"errorCode": None}, "condition": "s"})).rules
    assert rule.pattern.uses_record
    assert _matches(rule, CT)
    assert not _matches(rule, {**CT, "errorCode": ""})
    (rule,) = _compile(_sigma({"s": {"errorCode|exists": True}, "condition": "s"})).rules
    assert rule.pattern.uses_record and _matches(rule, {**CT, "errorCode": ""})
