"""The rule index gives exactly what checking every rule one by one would give."""

from __future__ import annotations

import random
from typing import Any

import orjson

from daemon.events import Decoder, Event, decode_entry, encode_event
from daemon.rules.engine import FLUSH_EVERY, RuleEngine
from daemon.rules.model import Rule
from daemon.rules.pattern import Pattern
from daemon.telemetry import REGISTRY


def rule(rule_id: str, match: dict[str, Any], category: str = "high_risk") -> Rule:
    return Rule(rule_id, category, "high", "test rule", Pattern(match))


def event(record: dict[str, Any]) -> Event:
    [item] = Decoder().decode(orjson.dumps(record))
    assert isinstance(item, Event)
    # As the daemon sees it: from the journal, record not yet parsed.
    return decode_entry(0, encode_event(item)).event()


OPS = [
    "DeleteTrail",
    "StopLogging",
    "deleteUser",
    "DescribeInstances",
    "UpdateFunctionCode20150331v2",
    "ConsoleLogin",
    "GetParameters",
]
SERVICES = [
    "cloudtrail.amazonaws.com",
    "iam.amazonaws.com",
    "IAM",
    "lambda.amazonaws.com",
    "signin.amazonaws.com",
    "ssm.amazonaws.com",
]
CODES = [None, "AccessDenied", "Client.UnauthorizedOperation", "403"]


def random_pattern(rng: random.Random) -> dict[str, Any]:
    p: dict[str, Any] = {}
    shape = rng.randrange(8)
    if shape in (0, 1):
        p["operation"] = rng.sample(OPS, rng.randint(1, 3))
    elif shape == 2:
        p["operation"] = [{"prefix": rng.choice(OPS)[: rng.randint(1, 8)]}]
    elif shape == 3:
        p["operation"] = [{"equals-ignore-case": rng.choice(OPS).upper()}, rng.choice(OPS)]
    elif shape == 4:
        p["$or"] = [
            {"operation": [rng.choice(OPS)]},
            {"operation": [rng.choice(OPS)], "code": [{"exists": True}]},
        ]
    elif shape == 5:
        p["code"] = [{"prefix": "Access"}, {"wildcard": "*Unauthorized*"}]
    elif shape == 6:
        p["user_type"] = [rng.choice(["Root", "IAMUser"])]
    else:
        p["region"] = [{"anything-but": "us-east-1"}, {"exists": False}]
    if rng.random() < 0.5:
        p["service"] = rng.sample(SERVICES, rng.randint(1, 2))
    if rng.random() < 0.3:
        p["record"] = {"additionalEventData": {"MFAUsed": [{"anything-but": "Yes"}]}}
    if rng.random() < 0.2:
        p["code"] = [{"exists": rng.random() < 0.5}]
    return p


def random_record(rng: random.Random) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "eventSource": rng.choice(SERVICES),
        "eventName": rng.choice(OPS),
        "userIdentity": {"type": rng.choice(["Root", "IAMUser", "AssumedRole"])},
        "awsRegion": rng.choice(["us-east-1", "eu-west-1"]),
    }
    code = rng.choice(CODES)
    if code:
        rec["errorCode"] = code
    if rng.random() < 0.5:
        rec["additionalEventData"] = {"MFAUsed": rng.choice(["Yes", "No"])}
    return rec


def test_index_agrees_with_checking_every_rule() -> None:
    rng = random.Random(7)
    rules = [rule(f"r{i}", random_pattern(rng)) for i in range(300)]
    engine = RuleEngine(rules, metrics=False)
    stats = engine.index_stats()
    assert stats["exact_keys"] and stats["prefix_tables"] and stats["ignore_case_keys"]
    for _ in range(800):
        ev = event(random_record(rng))
        expected = [r.id for r in rules if r.pattern.matches(ev.canonical, ev.parsed)]
        assert [m.rule for m in engine.match(ev)] == expected
        # A second time, from the cache.
        assert [m.rule for m in engine.match(ev)] == expected


def test_rules_of_service_and_operation_only_need_no_further_check() -> None:
    engine = RuleEngine([rule("a", {"service": ["ECS"], "operation": ["rebootServer"]})], metrics=False)
    hit = event({"service_type": "ECS", "trace_name": "rebootServer"})
    miss = event({"service_type": "EVS", "trace_name": "rebootServer"})
    assert [m.rule for m in engine.match(hit)] == ["a"]
    assert engine.match(miss) == []


def test_record_is_parsed_only_when_a_candidate_reads_it() -> None:
    engine = RuleEngine(
        [
            rule(
                "mfa", {"operation": ["ConsoleLogin"], "record": {"additionalEventData": {"MFAUsed": ["No"]}}}
            ),
        ],
        metrics=False,
    )
    other = event({"eventSource": "ec2.amazonaws.com", "eventName": "DescribeInstances"})
    assert engine.match(other) == []
    assert other._parsed is None
    login = event(
        {
            "eventSource": "signin.amazonaws.com",
            "eventName": "ConsoleLogin",
            "additionalEventData": {"MFAUsed": "No"},
        }
    )
    assert [m.rule for m in engine.match(login)] == ["mfa"]


def _counter(rule_id: str) -> float:
    value = REGISTRY.get_sample_value(
        "trailkeeper_rule_matches_total", {"rule": rule_id, "category": "metrics_test"}
    )
    return value or 0.0


def test_match_counts_reach_the_metrics_by_flush_and_periodically() -> None:
    engine = RuleEngine([rule("metrics.r1", {"operation": ["StopLogging"]}, "metrics_test")])
    before = _counter("metrics.r1")
    ev = event({"eventSource": "cloudtrail.amazonaws.com", "eventName": "StopLogging"})
    for _ in range(10):
        engine.match(ev)
    engine.flush_metrics()
    assert _counter("metrics.r1") == before + 10
    for _ in range(FLUSH_EVERY):
        engine.match(ev)
    # Flushed on its own at the FLUSH_EVERY boundary, without an explicit call.
    assert _counter("metrics.r1") >= before + FLUSH_EVERY
    hist = REGISTRY.get_sample_value("trailkeeper_rule_match_seconds_count")
    assert hist and hist > 0


NEEDLE_VALUES = [
    "TruffleHog/3.1",
    "trufflehog",
    "TRUFFLEHOG",
    "aws-cli/2",
    "\u212aelvin truffle",  # the Kelvin sign lower-cases to an ASCII k
    'say "trufflehog"',  # escaped quotes inside the value
    "path\\to\\trufflehog",
    "assumed-role/aws:x",
    "ASSUMED-ROLE/AWS:x",
    "",
    7,
    None,
    ["a", "TruffleHog"],
    {"userAgent": "trufflehog"},
]


def needle_record(rng: random.Random) -> dict[str, Any]:
    rec: dict[str, Any] = {"eventSource": "sts.amazonaws.com", "eventName": "GetCallerIdentity"}
    for key in ("userAgent", "note"):
        if rng.random() < 0.7:
            rec[key] = rng.choice(NEEDLE_VALUES)
    if rng.random() < 0.5:
        rec["requestParameters"] = {rng.choice(["userAgent", "arn", "x"]): rng.choice(NEEDLE_VALUES)}
    if rng.random() < 0.3:
        rec["userIdentity"] = {"arn": rng.choice(NEEDLE_VALUES)}
    if rng.random() < 0.2:
        rec["tag"] = "userAgent"  # the key's text as a value
    return rec


NEEDLE_PATTERNS: list[dict[str, Any]] = [
    {"record": {"userAgent": [{"equals-ignore-case": "TruffleHog"}]}},
    {"record": {"userAgent": [{"contains": {"equals-ignore-case": "trufflehog"}}]}},
    {"record": {"userAgent": [{"text": [{"contains": {"equals-ignore-case": "trufflehog"}}]}]}},
    {"record": {"userAgent": ["TruffleHog/3.1"]}},
    {"record": {"requestParameters": {"userAgent": [{"regex": "(?i)truffle"}]}}},
    {"record": {"userIdentity": {"arn": [{"regex": "assumed-role/aws:"}]}}},
    {"record": {"userIdentity": {"arn": [{"text": [{"regex": "assumed-role/aws:"}]}]}}},
    {"user_agent": [{"equals-ignore-case": "trufflehog"}]},
    {"user_agent": [{"contains": {"equals-ignore-case": "TRUFFLE"}}]},
    {"user_arn": [{"regex": "assumed-role/aws:"}]},
]


def test_needle_pre_checks_never_change_an_outcome() -> None:
    # Raw-text and match-field pre-checks skip rules without parsing; whatever the value
    # (escapes, quotes, non-ASCII, non-strings, the key's name as a value), the outcome
    # is the one of checking the parsed record.
    rng = random.Random(11)
    rules = [rule(f"n{i}", p) for i, p in enumerate(NEEDLE_PATTERNS)]
    engine = RuleEngine(rules, metrics=False)
    hits = 0
    for _ in range(3000):
        ev = event(needle_record(rng))
        expected = [r.id for r in rules if r.pattern.matches(ev.canonical, ev.parsed)]
        hits += len(expected)
        fresh = decode_entry(0, encode_event(ev)).event()
        assert [m.rule for m in engine.match(fresh)] == expected, fresh.record
    assert hits > 1000


def test_a_needle_elsewhere_in_the_record_does_not_cost_a_parse() -> None:
    engine = RuleEngine(
        [rule("tool", {"record": {"userAgent": [{"equals-ignore-case": "TruffleHog"}]}})], metrics=False
    )
    elsewhere = event(
        {
            "eventSource": "s3.amazonaws.com",
            "eventName": "GetObject",
            "userAgent": "aws-cli/2",
            "requestParameters": {"key": "tools/TruffleHog.tar"},
        }
    )
    assert engine.match(elsewhere) == []
    assert elsewhere._parsed is None
    there = event({"eventSource": "s3.amazonaws.com", "eventName": "GetObject", "userAgent": "TRUFFLEHOG"})
    assert [m.rule for m in engine.match(there)] == ["tool"]
