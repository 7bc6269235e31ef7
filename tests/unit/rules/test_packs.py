"""The built-in packs: examples hold, sources are cited, routine reads stay quiet, CTS works."""

from __future__ import annotations

import re
from typing import Any

import orjson
import pytest

from daemon.events import Decoder, Event
from daemon.rules.config import RulesConfig
from daemon.rules.engine import RuleEngine
from daemon.rules.examples import run_examples
from daemon.rules.loader import builtin_pack_names, load_rules
from daemon.rules.model import KEY_CATEGORIES, SEVERITIES

READ_VERBS = (
    "Describe",
    "List",
    "Get",
    "Head",
    "Lookup",
    "Search",
    "describe",
    "list",
    "get",
    "show",
    "query",
)
# State-changing calls whose names start like reads: each is a documented key operation.
READ_LIKE_KEY_OPERATIONS = {
    "GetFederationToken",  # mints credentials (readOnly false); Stratus sts-federation-token
}


@pytest.fixture(scope="module")
def engine() -> RuleEngine:
    return RuleEngine(load_rules(RulesConfig()), metrics=False)


def test_packs_ship_with_the_package() -> None:
    assert builtin_pack_names() == [
        "aws-cis.yaml",
        "aws-key-operations.yaml",
        "correlations.yaml",
        "cts-key-operations.yaml",
        "trailkeeper-self.yaml",
    ]


def test_every_builtin_example_behaves_and_every_rule_has_both_kinds(engine: RuleEngine) -> None:
    report = run_examples(engine)
    assert report.failures == []
    assert report.untested == []
    assert report.examples >= 2 * len(engine.rules)


def test_every_rule_cites_its_source(engine: RuleEngine) -> None:
    for rule in engine.rules:
        assert "Source:" in rule.description, rule.id
        assert rule.tags, rule.id
        assert rule.severity in SEVERITIES


def test_cis_controls_are_all_present(engine: RuleEngine) -> None:
    tags = {t for r in engine.rules for t in r.tags}
    for n in range(1, 15):
        assert f"securityhub:CloudWatch.{n}" in tags
    for n in range(1, 16):
        assert f"cis:4.{n}" in tags


def _leaf_strings(pattern: dict[str, Any], key: str) -> list[str]:
    out: list[str] = []
    for value in pattern.get(key, []):
        if isinstance(value, str):
            out.append(value)
        elif isinstance(value, dict) and isinstance(value.get("prefix"), str):
            out.append(value["prefix"])
    for branch in pattern.get("$or", []):
        out += _leaf_strings(branch, key)
    return out


def test_no_key_category_rule_names_a_read_operation(engine: RuleEngine) -> None:
    for rule in engine.rules:
        if rule.category not in KEY_CATEGORIES:
            continue
        for op in _leaf_strings(rule.pattern.source, "operation"):
            if op in READ_LIKE_KEY_OPERATIONS:
                continue
            assert not op.startswith(READ_VERBS), f"{rule.id} names read operation {op}"


def cts(name: str, service: str, **fields: Any) -> Event:
    trace = {
        "trace_id": f"id-{service}-{name}-{fields.get('code', '')}-{fields.get('trace_rating', '')}",
        "time": 1700000000000,
        "user": {"id": "u1", "name": "alice", "domain": {"id": "d1", "name": "acme"}},
        "service_type": service,
        "resource_type": "x",
        "resource_name": "r",
        "resource_id": "rid",
        "source_ip": "10.0.0.1",
        "trace_name": name,
        "trace_type": "ConsoleAction",
        "api_version": "1.0",
        "record_time": 1700000000100,
        **fields,
    }
    [item] = Decoder().decode(orjson.dumps({k: v for k, v in trace.items() if v is not None}))
    assert isinstance(item, Event)
    return item


@pytest.mark.parametrize(
    ("service", "operation", "rule_id"),
    [
        ("ECS", "rebootServer", "cts.ecs.server-stopped-or-rebooted"),
        ("IAM", "deleteUser", "cts.iam.user-lifecycle"),
        ("VPC", "deleteSecurity-group-rule", "cts.vpc.security-groups-changed"),
        ("CTS", "deleteTracker", "cts.cts.tracker-changed"),
        ("OBS", "deleteBucket", "cts.obs.bucket-deleted"),
        ("RDS", "deleteInstance", "cts.rds.instance-deleted"),
        ("IAM", "addCredential", "cts.iam.credentials-changed"),
        ("ECS", "resizeServer", "cts.ecs.server-resized"),
    ],
)
def test_cts_key_operations_normal_and_failed(
    engine: RuleEngine, service: str, operation: str, rule_id: str
) -> None:
    normal = cts(operation, service, trace_rating="normal", code="200")
    failed = cts(operation, service, code=403)  # no trace_rating given: derived from the code
    failed_given = cts(operation, service, trace_rating="warning", code="500")
    for event in (normal, failed, failed_given):
        assert rule_id in [m.rule for m in engine.match(event)], event.canonical
    assert normal.canonical["rating"] == "normal"
    assert failed.canonical["rating"] == "warning"
    assert failed_given.canonical["rating"] == "warning"
    # The same operation on another service is not this key operation.
    assert rule_id not in [m.rule for m in engine.match(cts(operation, "XYZ", code="200"))]


def test_cts_reads_are_not_flagged(engine: RuleEngine) -> None:
    for service, operation in [
        ("ECS", "showServer"),
        ("IAM", "listUsers"),
        ("CTS", "listTraces"),
        ("VPC", "listSecurityGroups"),
        ("OBS", "listBuckets"),
    ]:
        assert engine.match(cts(operation, service, code="200")) == []


def test_cts_failed_login(engine: RuleEngine) -> None:
    assert [m.rule for m in engine.match(cts("login", "IAM", code="401"))] == ["cts.iam.login-error"]
    assert engine.match(cts("login", "IAM", code="200")) == []
    assert [m.rule for m in engine.match(cts("loginFailed", "IAM"))] == ["cts.iam.login-failed"]


def test_cloudtrail_failed_call_is_classified_and_rated_warning(engine: RuleEngine) -> None:
    [ok] = Decoder().decode(b'{"eventSource":"iam.amazonaws.com","eventName":"DeleteUser"}')
    [bad] = Decoder().decode(
        b'{"eventSource":"iam.amazonaws.com","eventName":"DeleteUser","errorCode":"NoSuchEntity"}'
    )
    assert isinstance(ok, Event) and isinstance(bad, Event)
    assert ok.canonical["rating"] == "normal" and bad.canonical["rating"] == "warning"
    assert "aws.iam.user-lifecycle" in [m.rule for m in engine.match(bad)]


def test_rule_ids_are_stable_identifiers(engine: RuleEngine) -> None:
    for rule in engine.rules:
        assert re.fullmatch(r"(cis|aws|cts|trailkeeper)\.[a-z0-9.-]+|sigma\.[0-9a-f-]{36}", rule.id), rule.id
