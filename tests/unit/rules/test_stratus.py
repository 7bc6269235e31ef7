"""Must show 1: on the Stratus Red Team detonation logs, every state-changing call is
matched in a key category, and no routine read-only call is."""

from __future__ import annotations

from collections import Counter

import pytest

from daemon.events import Decoder, Event
from daemon.rules.config import RulesConfig
from daemon.rules.engine import RuleEngine
from daemon.rules.loader import load_rules
from daemon.rules.model import KEY_CATEGORIES
from tests.unit.rules.conftest import stratus_dir

# Every successful read-only call in the data. Listed so that each one is checked by name
# and a change in the data shows up here.
ROUTINE_READS = {
    "AssumeRole",
    "DescribeInstanceInformation",
    "DescribeInstances",
    "DescribeParameters",
    "GetCallerIdentity",
    "GetCommandInvocation",
    "GetFoundationModelAvailability",
    "ListFoundationModelAgreementOffers",
    "ListSecrets",
}
# Reads of secrets, passwords and credentials: flagged, but never in a key category.
# (GetPasswordData is in the data too, but only refused: see the last test.)
SENSITIVE_READS = {"GetSecretValue", "BatchGetSecretValue", "GetParameters"}
# Pay-per-use invocation: reported in its own category, not a key one.
USAGE_READS = {"InvokeModel"}


Classified = list[tuple[Event, set[str], set[str]]]


@pytest.fixture(scope="module")
def classified() -> Classified:
    stratus = stratus_dir()
    engine = RuleEngine(load_rules(RulesConfig()), metrics=False)
    decoder = Decoder(max_event_bytes=16 * 1024 * 1024)
    out = []
    for path in sorted(stratus.glob("*.json")):
        for item in decoder.decode(path.read_bytes()):
            assert isinstance(item, Event), item
            matches = engine.match(item)
            out.append((item, {m.rule for m in matches}, {m.category for m in matches}))
    assert len(out) == 310
    return out


def test_every_state_changing_call_is_matched_in_a_key_category(classified: Classified) -> None:
    changing = [(e, rules, cats) for e, rules, cats in classified if e.parsed["readOnly"] is False]
    assert len(changing) >= 45
    missed = [e.parsed["eventName"] for e, _, cats in changing if not cats & set(KEY_CATEGORIES)]
    assert missed == []
    names = {e.parsed["eventName"] for e, _, _ in changing}
    for technique_call in (
        "StopLogging",
        "DeleteTrail",
        "PutEventSelectors",
        "CreateUser",
        "AttachUserPolicy",
        "CreateAccessKey",
        "CreateLoginProfile",
        "UpdateAssumeRolePolicy",
        "DeleteFlowLogs",
        "DeleteResolverQueryLogConfig",
        "LeaveOrganization",
        "ModifySnapshotAttribute",
        "ModifyImageAttribute",
        "ModifyInstanceAttribute",
        "ConsoleLogin",
        "GetFederationToken",
        "SendCommand",
        "StartSession",
        "SendSSHPublicKey",
        "CreateTrustAnchor",
        "UpdateFunctionCode20150331v2",
        "AddPermission20150331v2",
        "ModifyDBSnapshotAttribute",
        "AuthorizeSecurityGroupIngress",
    ):
        assert technique_call in names


def test_console_login_without_mfa_is_the_cis_rule(classified: Classified) -> None:
    [(_, rules, _)] = [c for c in classified if c[0].parsed["eventName"] == "ConsoleLogin"]
    assert "cis.4.2-console-login-without-mfa" in rules


def test_no_routine_read_only_call_is_matched_by_a_key_category_rule(classified: Classified) -> None:
    reads = [
        (e, rules, cats)
        for e, rules, cats in classified
        if e.parsed["readOnly"] is True and not e.parsed.get("errorCode")
    ]
    seen = Counter(e.parsed["eventName"] for e, _, _ in reads)
    assert set(seen) == ROUTINE_READS | SENSITIVE_READS | USAGE_READS
    for event, rules, cats in reads:
        name = event.parsed["eventName"]
        assert not cats & set(KEY_CATEGORIES), (name, rules)
        if name in ROUTINE_READS:
            assert rules == set(), (name, rules)
        elif name in SENSITIVE_READS:
            assert cats == {"sensitive_read"}, (name, rules)
        else:
            assert cats == {"cost_usage"}, (name, rules)


def test_refused_calls_match_only_the_cis_unauthorized_rule_among_key_rules(classified: Classified) -> None:
    denied_reads = [
        (e, rules, cats)
        for e, rules, cats in classified
        if e.parsed["readOnly"] is True and e.parsed.get("errorCode")
    ]
    assert denied_reads
    for event, rules, _ in denied_reads:
        key_rules = {r for r in rules if r != "aws.ec2.password-data-read"}
        assert key_rules == {"cis.4.1-unauthorized-api-calls"}, (event.parsed["eventName"], rules)
    assert "GetPasswordData" in {e.parsed["eventName"] for e, _, _ in denied_reads}
