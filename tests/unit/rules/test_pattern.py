"""The pattern language: EventBridge semantics over canonical fields and the raw record."""

from __future__ import annotations

from typing import Any

import pytest

from daemon.rules.pattern import Pattern, PatternError


def m(
    pattern: dict[str, Any], canonical: dict[str, Any] | None = None, record: dict[str, Any] | None = None
) -> bool:
    return Pattern(pattern).matches(canonical or {}, record or {})


def test_exact_values_are_alternatives() -> None:
    p = {"operation": ["StopLogging", "DeleteTrail"]}
    assert m(p, {"operation": "DeleteTrail"})
    assert not m(p, {"operation": "StartLogging"})
    assert not m(p, {})


def test_keys_are_anded() -> None:
    p = {"service": ["kms.amazonaws.com"], "operation": ["DisableKey"]}
    assert m(p, {"service": "kms.amazonaws.com", "operation": "DisableKey"})
    assert not m(p, {"service": "ec2.amazonaws.com", "operation": "DisableKey"})


def test_prefix_suffix_and_their_ignore_case_forms() -> None:
    assert m({"operation": [{"prefix": "Delete"}]}, {"operation": "DeleteTrail"})
    assert not m({"operation": [{"prefix": "Delete"}]}, {"operation": "deleteTrail"})
    assert m({"operation": [{"prefix": {"equals-ignore-case": "delete"}}]}, {"operation": "DELETEx"})
    assert m({"resource_name": [{"suffix": ".png"}]}, {"resource_name": "a.png"})
    assert not m({"resource_name": [{"suffix": ".png"}]}, {"resource_name": "a.PNG"})
    assert m({"resource_name": [{"suffix": {"equals-ignore-case": ".png"}}]}, {"resource_name": "a.PNG"})


def test_equals_ignore_case() -> None:
    p = {"operation": [{"equals-ignore-case": "rebootserver"}]}
    assert m(p, {"operation": "rebootServer"})
    assert not m(p, {"operation": "rebootServers"})


def test_anything_but_forms() -> None:
    assert m({"region": [{"anything-but": "us-east-1"}]}, {"region": "eu-west-1"})
    assert not m({"region": [{"anything-but": "us-east-1"}]}, {"region": "us-east-1"})
    assert not m({"region": [{"anything-but": ["a", "b"]}]}, {"region": "b"})
    assert m({"region": [{"anything-but": {"prefix": "us-"}}]}, {"region": "eu-west-1"})
    assert not m({"region": [{"anything-but": {"prefix": "us-"}}]}, {"region": "us-west-2"})
    assert not m({"resource_name": [{"anything-but": {"suffix": ".png"}}]}, {"resource_name": "x.png"})
    assert not m(
        {"region": [{"anything-but": {"equals-ignore-case": ["US-EAST-1"]}}]}, {"region": "us-east-1"}
    )
    assert not m(
        {"resource_name": [{"anything-but": {"wildcard": "*/lib/*"}}]}, {"resource_name": "/usr/lib/x"}
    )
    assert m({"resource_name": [{"anything-but": {"wildcard": "*/lib/*"}}]}, {"resource_name": "/usr/x"})


def test_anything_but_needs_the_field_and_exists_false_matches_it_missing() -> None:
    assert not m({"record": {"a": [{"anything-but": "x"}]}}, record={})
    assert m({"record": {"a": [{"exists": False}]}}, record={})
    assert not m({"record": {"a": [{"exists": False}]}}, record={"a": "v"})
    assert m({"record": {"a": [{"exists": True}]}}, record={"a": "v"})
    assert not m({"record": {"a": [{"exists": True}]}}, record={})
    # A missing parent object counts as missing leaves.
    assert m({"record": {"a": {"b": [{"exists": False}]}}}, record={})
    # A canonical None is absent.
    assert m({"code": [{"exists": False}]}, {"code": None})
    assert not m({"code": [{"exists": True}]}, {"code": None})


def test_numeric_on_record_numbers_and_canonical_numeric_strings() -> None:
    p = {"record": {"n": [{"numeric": [">", 0, "<=", 5]}]}}
    assert m(p, record={"n": 5})
    assert not m(p, record={"n": 0})
    assert not m(p, record={"n": "3"})  # on the raw record only JSON numbers compare
    assert not m(p, record={"n": True})
    assert m({"code": [{"numeric": [">=", 400]}]}, {"code": "403"})
    assert not m({"code": [{"numeric": [">=", 400]}]}, {"code": "200"})
    assert not m({"code": [{"numeric": [">=", 400]}]}, {"code": "AccessDenied"})
    assert m({"record": {"n": [{"numeric": ["=", 3]}]}}, record={"n": 3.0})
    assert m({"record": {"n": [300]}}, record={"n": 300.0})


def test_literals_are_type_strict() -> None:
    assert m({"record": {"b": [True]}}, record={"b": True})
    assert not m({"record": {"b": [True]}}, record={"b": 1})
    assert not m({"record": {"b": [1]}}, record={"b": True})
    assert m({"record": {"z": [None]}}, record={"z": None})
    assert not m({"record": {"s": ["1"]}}, record={"s": 1})


def test_cidr() -> None:
    p = {"source_ip": [{"cidr": "10.0.0.0/8"}]}
    assert m(p, {"source_ip": "10.1.2.3"})
    assert not m(p, {"source_ip": "11.1.2.3"})
    assert not m(p, {"source_ip": "255.090.254.5"})  # anonymised data: not an address
    assert not m(p, {"source_ip": "ec2.amazonaws.com"})
    assert m({"source_ip": [{"cidr": "2001:db8::/32"}]}, {"source_ip": "2001:db8::1"})


def test_wildcard() -> None:
    p = {"code": [{"wildcard": "*UnauthorizedOperation"}]}
    assert m(p, {"code": "Client.UnauthorizedOperation"})
    assert m(p, {"code": "UnauthorizedOperation"})
    assert not m(p, {"code": "UnauthorizedOperationX"})
    assert m({"resource_name": [{"wildcard": "a\\*b*"}]}, {"resource_name": "a*bcd"})
    assert not m({"resource_name": [{"wildcard": "a\\*b*"}]}, {"resource_name": "axbcd"})


def test_event_arrays_match_if_any_element_does() -> None:
    assert m({"record": {"names": ["/x"]}}, record={"names": ["/a", "/x"]})
    assert not m({"record": {"names": ["/x"]}}, record={"names": ["/a"]})
    # Nested pattern on an array of objects: one element must match all of it.
    p = {"record": {"items": {"port": [22], "cidr": ["0.0.0.0/0"]}}}
    assert m(p, record={"items": [{"port": 80, "cidr": "10/8"}, {"port": 22, "cidr": "0.0.0.0/0"}]})
    assert not m(p, record={"items": [{"port": 22, "cidr": "10/8"}, {"port": 80, "cidr": "0.0.0.0/0"}]})


def test_or_at_top_and_nested() -> None:
    p = {
        "operation": ["ConsoleLogin"],
        "$or": [
            {"error": ["Failed authentication"]},
            {"record": {"responseElements": {"ConsoleLogin": ["Failure"]}}},
        ],
    }
    assert m(p, {"operation": "ConsoleLogin", "error": "Failed authentication"})
    assert m(p, {"operation": "ConsoleLogin"}, {"responseElements": {"ConsoleLogin": "Failure"}})
    assert not m(p, {"operation": "ConsoleLogin"}, {"responseElements": {"ConsoleLogin": "Success"}})
    nested = {"record": {"a": {"$or": [{"x": [1]}, {"y": [2]}]}}}
    assert m(nested, record={"a": {"y": 2}})
    assert not m(nested, record={"a": {"y": 3}})


def test_uses_record_and_fields() -> None:
    assert not Pattern({"operation": ["A"]}).uses_record
    assert Pattern({"$or": [{"operation": ["A"]}, {"record": {"x": ["1"]}}]}).uses_record
    assert Pattern({"operation": ["A"], "$or": [{"code": ["x"]}, {"user_type": ["y"]}]}).fields == {
        "operation",
        "code",
        "user_type",
    }


@pytest.mark.parametrize(
    ("pattern", "path", "words"),
    [
        ({"operation": "DeleteTrail"}, "match.operation", "list of alternatives"),
        ({"operation": []}, "match.operation", "empty list"),
        ({"eventName": ["X"]}, "match.eventName", "unknown field"),
        ({"operation": [{"prefx": "A"}]}, "match.operation[0].prefx", "unknown operator"),
        ({"record": {"n": [{"numeric": [">", "x"]}]}}, "match.record.n[0].numeric[1]", "number"),
        ({"record": {"n": [{"numeric": ["~", 1]}]}}, "match.record.n[0].numeric[0]", "operator"),
        ({"source_ip": [{"cidr": "10.0.0.0/33"}]}, "match.source_ip[0].cidr", "CIDR"),
        ({"code": [{"wildcard": "a**b"}]}, "match.code[0].wildcard", "consecutive"),
        ({"code": [{"exists": "yes"}]}, "match.code[0].exists", "true or false"),
        (
            {"code": [{"anything-but": {"contains": "x"}}]},
            "match.code[0].anything-but.contains",
            "anything-but",
        ),
        ({"$or": {}}, "match.$or", "non-empty list"),
        ({"record": {"a": {}}}, "match.record.a", "empty mapping"),
        ({}, "match", "every event"),
        ({"service": {"x": ["y"]}}, "match.service", "canonical fields are strings"),
    ],
)
def test_invalid_patterns_name_the_key(pattern: dict[str, Any], path: str, words: str) -> None:
    with pytest.raises(PatternError) as info:
        Pattern(pattern)
    assert info.value.path == path
    assert words in info.value.message
