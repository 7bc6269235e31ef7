"""Correlations: bursts, spreads and sequences on event time, bounded, surviving a restart."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import orjson
import pytest

from daemon.events import Decoder, Event
from daemon.rules.config import RulesConfig
from daemon.rules.correlation import Correlation, Correlator, Track
from daemon.rules.loader import RuleLoadError, load_all, parse_rule_text
from daemon.rules.ruleset import RuleSet
from daemon.telemetry import REGISTRY

T0 = dt.datetime(2024, 7, 30, 21, 0, 0, tzinfo=dt.UTC)
BURST = "aws.signin.console-login-failure-burst"
SEQUENCE = "aws.iam.user-backdoor-sequence"


def record(
    name: str,
    at: float,
    *,
    ip: str = "203.0.113.7",
    arn: str = "arn:aws:iam::1:user/eve",
    failed: bool = False,
    n: int = 0,
    **extra: Any,
) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "eventVersion": "1.08",
        "eventID": f"{name}-{ip}-{arn}-{at}-{n}",
        "eventTime": (T0 + dt.timedelta(seconds=at)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "eventSource": "signin.amazonaws.com" if name == "ConsoleLogin" else "iam.amazonaws.com",
        "eventName": name,
        "sourceIPAddress": ip,
        "userIdentity": {"type": "IAMUser", "arn": arn, "principalId": arn, "accountId": "1"},
        "recipientAccountId": "1",
    }
    if failed:
        rec["errorMessage"] = "Failed authentication"
        rec["responseElements"] = {"ConsoleLogin": "Failure"}
    rec.update(extra)
    return rec


def event(rec: dict[str, Any], offset: int) -> Event:
    [item] = Decoder().decode(orjson.dumps(rec))
    assert isinstance(item, Event)
    item.offset = offset
    return item


def fired(rs: RuleSet, consumer: str, recs: list[dict[str, Any]], start: int = 0) -> list[tuple[int, str]]:
    rules = rs.consumer(consumer)
    ids = {c.id for c in rs.correlations}
    return [
        (i, m.rule) for i, rec in enumerate(recs, start) for m in rules.match(event(rec, i)) if m.rule in ids
    ]


@pytest.fixture(scope="module")
def ruleset() -> RuleSet:
    return RuleSet(RulesConfig(builtin_sigma=False), metrics=False)


def failures(
    count: int, every: float, *, start: float = 0.0, ip: str = "203.0.113.7"
) -> list[dict[str, Any]]:
    return [record("ConsoleLogin", start + i * every, ip=ip, failed=True, n=i) for i in range(count)]


def test_twenty_failed_logins_in_a_minute_are_one_key_event(ruleset: RuleSet) -> None:
    got = fired(ruleset, "a", failures(20, 2.0))
    assert got == [(19, BURST)]
    # Each failure on its own stays what it was (CIS 4.6); only the 20th carries the burst.
    single = [m.rule for m in ruleset.consumer("a2").match(event(failures(1, 1)[0], 0))]
    assert "cis.4.6-console-authentication-failures" in single and BURST not in single


def test_the_match_names_the_group_and_the_count(ruleset: RuleSet) -> None:
    rules = ruleset.consumer("desc")
    last = [m for i, r in enumerate(failures(20, 1.0)) for m in rules.match(event(r, i)) if m.rule == BURST]
    [m] = last
    assert m.category == "high_risk" and m.severity == "high"
    assert "20 events within 1m" in m.description and "source_ip=203.0.113.7" in m.description


def test_a_continuing_burst_fires_once_per_window_not_once_per_event(ruleset: RuleSet) -> None:
    # 60 failures in 30 s: one key event, not 41.
    assert fired(ruleset, "b", failures(60, 0.5)) == [(19, BURST)]
    # Still failing two minutes later: the window reset, so a second key event.
    again = fired(ruleset, "b", failures(20, 1.0, start=200.0), start=60)
    assert again == [(79, BURST)]


def test_nineteen_in_an_hour_or_twenty_spread_over_an_hour_are_none(ruleset: RuleSet) -> None:
    assert fired(ruleset, "c", failures(19, 1.0)) == []
    assert fired(ruleset, "d", failures(40, 90.0)) == []  # one failure every 90 s for an hour


def test_groups_are_separate(ruleset: RuleSet) -> None:
    mixed = [
        r
        for i in range(10)
        for r in (failures(1, 0, start=i, ip="198.51.100.1") + failures(1, 0, start=i, ip="198.51.100.2"))
    ]
    assert fired(ruleset, "e", mixed) == []


def test_another_tenant_neither_completes_nor_silences_a_burst(ruleset: RuleSet) -> None:
    def of(tenant: str, recs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{**r, "eventID": f"{tenant}-{r['eventID']}", "recipientAccountId": tenant} for r in recs]

    # Tenant 2's 19 failures from the same address do not make tenant 1's one a burst ...
    assert fired(ruleset, "t1", of("2", failures(19, 1.0)) + of("1", failures(1, 0, start=19))) == []
    # ... and tenant 2's own burst, sent first, does not start a quiet time over tenant 1's.
    forged = of("2", failures(20, 0.5))
    real = of("1", failures(20, 1.0, start=10))
    assert fired(ruleset, "t2", forged + real) == [(19, BURST), (39, BURST)]


def test_success_logins_do_not_count(ruleset: RuleSet) -> None:
    ok = [record("ConsoleLogin", i, n=i, responseElements={"ConsoleLogin": "Success"}) for i in range(30)]
    assert fired(ruleset, "f", ok) == []


def test_ordered_sequence_fires_in_order_within_the_timespan_only(ruleset: RuleSet) -> None:
    steps = ["CreateUser", "AttachUserPolicy", "CreateAccessKey"]
    in_order = [record(n, i * 60) for i, n in enumerate(steps)]
    assert fired(ruleset, "g", in_order) == [(2, SEQUENCE)]
    reversed_ = [record(n, i * 60, arn="arn:aws:iam::1:user/bob") for i, n in enumerate(reversed(steps))]
    assert fired(ruleset, "h", reversed_) == []
    slow = [record(n, i * 400, arn="arn:aws:iam::1:user/carl") for i, n in enumerate(steps)]
    assert fired(ruleset, "i", slow) == []  # 800 s from first to last: beyond 10 minutes
    two_people = [record(n, i * 60, arn=f"arn:aws:iam::1:user/p{i}") for i, n in enumerate(steps)]
    assert fired(ruleset, "j", two_people) == []
    failed = [record(n, i * 60, errorCode="AccessDenied") for i, n in enumerate(steps)]
    assert fired(ruleset, "k", failed) == []


def _parse(text: str) -> list[Correlation]:
    return parse_rule_text(text, "t.yaml").correlations


COUNTS = """
rules:
  - {id: t.login, category: high_risk, severity: low, match: {operation: [ConsoleLogin]}}
correlations:
  - id: t.spray
    category: high_risk
    severity: high
    type: value_count
    rules: [t.login]
    group_by: [source_ip]
    field: user_name
    timespan: 5m
    condition: {gte: 3}
  - id: t.any-order
    category: high_risk
    severity: medium
    type: temporal
    rules: [{match: {operation: [CreateUser]}}, {match: {operation: [CreateAccessKey]}}]
    group_by: [record.userIdentity.arn]
    timespan: 1m
"""


def test_value_count_counts_distinct_values_and_temporal_ignores_order(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(COUNTS)
    rs = RuleSet(RulesConfig(builtin=False, files=[path]), metrics=False)
    same_user = [record("ConsoleLogin", i, arn="arn:aws:iam::1:user/u", n=i) for i in range(5)]
    assert fired(rs, "a", same_user) == []
    spray = [record("ConsoleLogin", i, arn=f"arn:aws:iam::1:user/u{i}") for i in range(3)]
    assert fired(rs, "b", spray) == [(2, "t.spray")]
    backwards = [record("CreateAccessKey", 0), record("CreateUser", 30)]
    assert fired(rs, "c", backwards) == [(1, "t.any-order")]


def test_groups_are_bounded_and_evictions_counted() -> None:
    [corr] = _parse("""
correlations:
  - {id: t.burst, category: high_risk, severity: high, type: event_count, match: {operation: [ConsoleLogin]},
     group_by: [source_ip], timespan: 1m, condition: {gte: 3}}
""")
    before = (
        REGISTRY.get_sample_value("trailkeeper_correlation_groups_evicted_total", {"rule": "t.burst"}) or 0
    )
    c = Correlator([corr], max_groups=100)
    for i in range(1000):
        c.feed(event(record("ConsoleLogin", i * 0.01, ip=f"10.0.{i // 256}.{i % 256}"), i), frozenset())
    assert c.groups("t.burst") == 100
    after = REGISTRY.get_sample_value("trailkeeper_correlation_groups_evicted_total", {"rule": "t.burst"})
    assert after == before + 900
    # A group keeps no more events than its threshold needs, however many arrive.
    for i in range(2):
        assert not c.feed(event(record("ConsoleLogin", 100 + i, ip="192.0.2.1", n=i), 2000 + i), frozenset())
    assert c.feed(event(record("ConsoleLogin", 102, ip="192.0.2.1", n=2), 2002), frozenset())


def test_restart_keeps_the_count_and_never_repeats_the_key_event(tmp_path: Path, ruleset: RuleSet) -> None:
    recs = failures(20, 2.0)
    path = tmp_path / "index.json"
    corrs = ruleset.correlations
    first = Track("index", corrs, path)
    for i, r in enumerate(recs[:15]):
        first.classify(event(r, i), ruleset.match(event(r, i)))
    first.save(committed=10)  # the consumer had committed only 10 of the 15 it read
    second = Track("index", corrs, path)
    assert second.load() and second.fed == 15
    out = []
    # The consumer re-reads 10..14 (uncommitted), then goes on: no double count, one key event.
    for i in range(10, 20):
        ev = event(recs[i], i)
        out += [(i, m.rule) for m in second.classify(ev, ruleset.match(ev)) if m.rule == BURST]
    assert out == [(19, BURST)]
    second.save(committed=12)  # crashed again before committing the event that completed it
    third = Track("index", corrs, path)
    assert third.load()
    again = [m.rule for i in range(12, 20) for m in third.classify(event(recs[i], i), []) if m.rule == BURST]
    assert again == [BURST]  # the re-delivered completing event still carries its match


def test_a_changed_correlation_starts_afresh_an_unchanged_one_keeps_state(tmp_path: Path) -> None:
    text = """
correlations:
  - {id: t.b, category: high_risk, severity: high, type: event_count, match: {operation: [ConsoleLogin]},
     group_by: [source_ip], timespan: 1m, condition: {gte: 3}}
"""
    [c1] = _parse(text)
    track = Track("x", [c1])
    for i in range(2):
        track.classify(event(record("ConsoleLogin", i, n=i), i), [])
    [same] = _parse(text.replace("severity: high", "severity: critical"))
    track.reconfigure([same])
    [m] = track.classify(event(record("ConsoleLogin", 3, n=3), 3), [])
    assert m.severity == "critical"
    [changed] = _parse(text.replace("gte: 3", "gte: 2"))
    track.reconfigure([changed])
    assert track.classify(event(record("ConsoleLogin", 200, n=4), 4), []) == []


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ("type: event_count, match: {operation: [A]}, timespan: 1m", "condition: required"),
        ("type: event_count, match: {operation: [A]}, timespan: 1m, condition: {lt: 3}", "only gte and gt"),
        ("type: burst, match: {operation: [A]}, timespan: 1m, condition: {gte: 3}", "type: expected"),
        ("type: event_count, match: {operation: [A]}, condition: {gte: 3}", "timespan: required"),
        ("type: value_count, match: {operation: [A]}, timespan: 1m, condition: {gte: 3}", "field: required"),
        (
            "type: event_count, match: {operation: [A]}, timespan: 1m, condition: {gte: 3}, group_by: [ip]",
            "group_by[0]",
        ),
        ("type: temporal_ordered, rules: [{match: {operation: [A]}}], timespan: 1m", "at least two steps"),
        (
            "type: event_count, match: {operation: [A]}, timespan: 1m, condition: {gte: 3}, colour: red",
            "colour: unknown key",
        ),
    ],
)
def test_bad_correlations_are_refused_naming_the_key(body: str, problem: str) -> None:
    text = f"correlations:\n  - {{id: t.x, category: high_risk, severity: high, {body}}}\n"
    with pytest.raises(RuleLoadError) as info:
        parse_rule_text(text, "t.yaml")
    assert any(problem in p and "t.yaml: correlation 't.x'" in p for p in info.value.problems), (
        info.value.problems
    )


def test_a_correlation_must_name_rules_in_force(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("""
correlations:
  - {id: t.x, category: high_risk, severity: high, type: event_count, rules: [no.such-rule],
     timespan: 1m, condition: {gte: 3}}
""")
    with pytest.raises(RuleLoadError, match=r"no rule with id 'no\.such-rule'"):
        load_all(RulesConfig(builtin=False, files=[path]))
    loaded = load_all(RulesConfig(builtin=False, files=[path], disable=["t.x"]))
    assert loaded.correlations == []
