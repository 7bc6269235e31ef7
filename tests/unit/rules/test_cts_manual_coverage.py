"""The CTS pack against the services' own manual lists of the operations CTS records.

tests/data/cts_manual_operations/<service>.json holds each list as the Open Telekom Cloud
manual publishes it (operation, resource type, trace name, exact spelling and case), with the
repository, commit and path it was taken from. Traces are built from those rows in the shape
of the manual's example traces and decoded as the daemon decodes them; every key operation
must be matched by a rule in a key category.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import orjson
import pytest

from daemon.events import Decoder, Event
from daemon.rules.config import RulesConfig
from daemon.rules.engine import RuleEngine
from daemon.rules.loader import load_rules
from daemon.rules.model import KEY_CATEGORIES, Rule
from daemon.rules.pattern import compile_pattern

DATA = Path(__file__).resolve().parents[2] / "data" / "cts_manual_operations"
PACK_SOURCE = "builtin:cts-key-operations.yaml"

# Rows whose manual description reads as a query: CTS records them, but they change nothing.
READ_DESCRIPTIONS = ("Querying", "Obtaining", "Comparing")
# Successful sign-ins and sign-outs: recorded, but routine; failed sign-ins are key operations
# (cts.iam.login-failed), and so is `login` when it carries an error code (cts.iam.login-error).
ROUTINE_SIGN_INS = {
    ("IAM", "login"),
    ("IAM", "logout"),
    ("IAM", "scanQRCodeLogin"),
    ("IAM", "oidcLoginSuccess"),
    ("IAM", "iamUserSsoLoginSuccess"),
    ("IAM", "federationLoginNoPwdSuccess"),
    ("IAM", "tsiLogin"),
    ("IAM", "tenantLoginBySamlSuccess"),
}
# Key operations whose trace names start like reads: each hands out data or credentials.
READ_LIKE_KEY_OPERATIONS = {
    ("CCE", "getClusterCertByUID"),  # "Downloading a cluster certificate": kubectl credentials
    ("CTS", "getTrace"),  # "Exporting traces"
}
READ_PREFIXES = ("get", "list", "show", "query", "describe", "head", "search", "lookup")


def manuals() -> list[dict[str, Any]]:
    docs = [json.loads(p.read_text(encoding="utf-8")) for p in sorted(DATA.glob("*.json"))]
    assert docs, f"no manual lists under {DATA}"
    return docs


def is_key(service: str, row: dict[str, str]) -> bool:
    if row["operation"].startswith(READ_DESCRIPTIONS):
        return False
    return (service, row["trace_name"]) not in ROUTINE_SIGN_INS


def key_rows(doc: dict[str, Any]) -> list[dict[str, str]]:
    """The manual's key operations, one per trace name (a name may serve several rows)."""
    seen: dict[str, dict[str, str]] = {}
    for row in doc["operations"]:
        if is_key(doc["service"], row):
            seen.setdefault(row["trace_name"], row)
    return list(seen.values())


def manual_trace(service_type: str, row: dict[str, str], **fields: Any) -> Event:
    """A trace shaped like the CTS manual's example traces (formatted times, user and domain)."""
    name = row["trace_name"]
    trace = {
        "time": "2016/12/08 11:24:04 GMT+08:00",
        "user": {
            "name": "acme/alice",
            "id": "f2fe9fac63414a35a7d03108d5f1ea73",
            "domain": {"name": "acme", "id": "1f9b9ba51f6b4061bd5c1736b28469f8"},
        },
        "request": "",
        "response": "",
        "service_type": service_type,
        "resource_type": row["resource_type"],
        "resource_name": f"{row['resource_type']}-1",
        "resource_id": "229142c0-2c2e-4f01-a1b4-2dfdf1c678c7",
        "source_ip": "10.146.230.124",
        "trace_name": name,
        "trace_rating": "normal",
        "trace_type": "ConsoleAction",
        "api_version": "1.0",
        "record_time": "2016/12/08 11:24:04 GMT+08:00",
        "trace_id": f"{service_type}-{name}-{fields.get('code', '')}",
        **fields,
    }
    [item] = Decoder().decode(orjson.dumps({k: v for k, v in trace.items() if v is not None}))
    assert isinstance(item, Event), item
    return item


@cache
def engine() -> RuleEngine:
    return RuleEngine(load_rules(RulesConfig()), metrics=False)


def key_matches(event: Event) -> list[str]:
    return [m.rule for m in engine().match(event) if m.category in KEY_CATEGORIES]


def cts_rules() -> list[Rule]:
    return [r for r in engine().rules if r.source == PACK_SOURCE]


# --- the manual lists themselves ----------------------------------------------------------


def test_every_manual_list_names_its_source_and_licence() -> None:
    for doc in manuals():
        assert doc["licence"] == "Apache-2.0", doc["service"]
        assert doc["service_types"] and doc["service_types"][0] == doc["service"]
        assert doc["sources"], doc["service"]
        for source in doc["sources"]:
            assert source["repository"].startswith("opentelekomcloud-docs/")
            assert len(source["commit"]) == 40 and source["path"].endswith(".rst")
            assert source["url"] == (
                f"https://github.com/{source['repository']}/blob/{source['commit']}/{source['path']}"
            )
        for row in doc["operations"]:
            assert row["operation"] and row["resource_type"], row
            assert row["trace_name"] and " " not in row["trace_name"], row
        assert key_rows(doc), f"{doc['service']}: no key operation in the list"


def test_the_covered_services_are_the_ones_the_issue_names() -> None:
    services = {doc["service"] for doc in manuals()}
    expected = {"ECS", "EVS", "IMS", "IAM", "DNS", "OBS", "RDS", "DDS", "GaussDB", "DCS", "DMS"}
    expected |= {"KMS", "CCE", "SMN", "CTS", "CBR", "WAF"}
    assert expected <= services


# --- every key operation of every manual is matched, in the manual's spelling --------------


@pytest.mark.parametrize("doc", manuals(), ids=lambda d: d["service"])
def test_each_manual_key_operation_is_matched_in_a_key_category(doc: dict[str, Any]) -> None:
    missed: list[str] = []
    for service_type in doc["service_types"]:
        for row in key_rows(doc):
            normal = manual_trace(service_type, row, code="200")
            failed = manual_trace(service_type, row, code="403", trace_rating=None)
            assert normal.canonical["operation"] == row["trace_name"]  # spelling kept as recorded
            for event in (normal, failed):
                if not key_matches(event):
                    missed.append(f"{service_type} {row['trace_name']} ({event.canonical['rating']})")
    assert missed == [], f"{doc['service']}: key operations no rule matches: {missed}"


@pytest.mark.parametrize("doc", manuals(), ids=lambda d: d["service"])
def test_the_manual_queries_stay_quiet(doc: dict[str, Any]) -> None:
    key_names = {row["trace_name"].lower() for row in key_rows(doc)}
    flagged = []
    for row in doc["operations"]:
        if row["operation"].startswith(READ_DESCRIPTIONS) and row["trace_name"].lower() not in key_names:
            event = manual_trace(doc["service"], row, code="200")
            if key_matches(event):
                flagged.append((row["trace_name"], key_matches(event)))
    assert flagged == []


def test_a_manual_operation_on_another_service_is_not_matched() -> None:
    for doc in manuals():
        for row in key_rows(doc)[:3]:
            assert key_matches(manual_trace("XYZ", row, code="200")) == [], row


# --- case and aliases ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("service", "trace_name", "rule_id"),
    [
        # Open Telekom Cloud IAM manual spellings of operations the pack first knew by their
        # Huawei Cloud names (loginFailed, addCredential, unbindMfaDevice, createUserGroup).
        ("IAM", "loginfailed", "cts.iam.login-failed"),
        ("IAM", "loginFailed", "cts.iam.login-failed"),
        ("IAM", "createCredential", "cts.iam.credentials-changed"),
        ("IAM", "addCredential", "cts.iam.credentials-changed"),
        ("IAM", "UnBindMFA", "cts.iam.mfa-changed"),
        ("IAM", "unbindMfaDevice", "cts.iam.mfa-changed"),
        ("IAM", "BindMFA", "cts.iam.mfa-changed"),
        ("IAM", "createGroup", "cts.iam.groups-changed"),
        ("IAM", "createUserGroup", "cts.iam.groups-changed"),
        # Security groups and floating IPs changed through the ECS API are recorded under ECS.
        ("ECS", "createSecurityGroup", "cts.ecs.security-group-and-floating-ip"),
        ("ECS", "createSgRule", "cts.ecs.security-group-and-floating-ip"),
        ("ECS", "deleteFloatingIp", "cts.ecs.security-group-and-floating-ip"),
        # The IMS manual spells the same operation both ways.
        ("IMS", "deleteMemeber", "cts.ims.image-shared-or-exported"),
        ("IMS", "deleteMember", "cts.ims.image-shared-or-exported"),
        # KMS is DEW on Huawei Cloud.
        ("DEW", "scheduleKeyDeletion", "cts.kms.key-disabled-or-scheduled-for-deletion"),
        ("KMS", "scheduleKeyDeletion", "cts.kms.key-disabled-or-scheduled-for-deletion"),
    ],
)
def test_aliases_between_huawei_cloud_and_open_telekom_cloud(
    service: str, trace_name: str, rule_id: str
) -> None:
    row = {"trace_name": trace_name, "resource_type": "x", "operation": "x"}
    assert rule_id in key_matches(manual_trace(service, row, code="200"))


def test_every_cts_rule_matches_its_operations_in_any_case() -> None:
    rules = cts_rules()
    assert len(rules) > 100
    for rule in rules:
        for example in rule.examples_match:
            name = example["trace_name"]
            for variant in (name.upper(), name.lower(), name.swapcase()):
                # Rules that also read the code (login-error) keep their example's code.
                event = manual_trace(
                    example["service_type"],
                    {"trace_name": variant, "resource_type": example.get("resource_type", "x")},
                    code=example.get("code", "200"),
                )
                assert rule.id in [m.rule for m in engine().match(event)], (rule.id, variant)


def test_case_folding_costs_no_per_event_check() -> None:
    """CTS rules are decided by the index and its per-key cache: nothing is left per event."""
    # The pack alone: other packs' rules (Sigma's, which read the record) are not its cost.
    pack = RuleEngine(cts_rules(), metrics=False)
    assert pack.index_stats()["ignore_case_keys"] > 500
    assert pack.index_stats()["fallback"] == 0
    for doc in manuals():
        for row in key_rows(doc):
            for name in (row["trace_name"], row["trace_name"].upper()):
                event = manual_trace(doc["service"], {**row, "trace_name": name}, code="200")
                assert pack.checks_for(event.canonical) == 0, (doc["service"], name)
                assert pack.match_fields(event.canonical), (doc["service"], name)


def test_equals_ignore_case_takes_a_list() -> None:
    pattern = compile_pattern({"operation": [{"equals-ignore-case": ["UnBindMFA", "loginFailed"]}]})
    assert pattern.leaves["operation"].ignore_case == {"unbindmfa", "loginfailed"}
    assert pattern.matches({"operation": "unbindmfa"})
    assert pattern.matches({"operation": "LOGINFAILED"})
    assert not pattern.matches({"operation": "login"})
    assert not pattern.matches({})
    with pytest.raises(ValueError, match="equals-ignore-case"):
        compile_pattern({"operation": [{"equals-ignore-case": []}]})
    with pytest.raises(ValueError, match="equals-ignore-case"):
        compile_pattern({"operation": [{"equals-ignore-case": [1]}]})


def test_cts_rules_name_operations_without_regard_to_case() -> None:
    for rule in cts_rules():
        info = rule.pattern.leaves["operation"]
        assert info.ignore_case and not info.exact and not info.other, rule.id


def test_no_key_category_cts_rule_names_a_read_operation() -> None:
    for rule in cts_rules():
        if rule.category not in KEY_CATEGORIES:
            continue
        services = set(rule.pattern.source["service"])
        [leaf] = rule.pattern.source["operation"]
        for name in leaf["equals-ignore-case"]:
            if any((s, name) in READ_LIKE_KEY_OPERATIONS for s in services):
                continue
            assert not name.lower().startswith(READ_PREFIXES), f"{rule.id} names read operation {name}"
