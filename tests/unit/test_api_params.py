"""Query parameters and bodies are checked exactly as the OpenAPI document describes them."""

from __future__ import annotations

import datetime as dt
from typing import Any

import orjson
import pytest
from multidict import MultiDict

from daemon.api.errors import MAX_REQUEST_LINE_BYTES
from daemon.api.params import ParameterError, SchemaError, Spec, check, index_time, parse_date_time
from daemon.api.routes import api_spec, load_openapi
from daemon.events import Decoder, Event
from daemon.index.query import MAX_CURSOR_CHARS


def _query(op: str = "queryEvents", **params: str) -> dict[str, Any]:
    return api_spec()[op].parse_query(MultiDict(params))


def test_every_schema_of_the_document_is_enforceable() -> None:
    spec = Spec(load_openapi())
    assert {"queryEvents", "listDeadLetters", "replayDeadLetters", "ingestEvents"} <= set(spec.operations)
    with pytest.raises(SchemaError, match="unsupported schema keyword"):
        Spec({"paths": {"/x": {"get": {"operationId": "x", "parameters": [
            {"name": "a", "in": "query", "schema": {"type": "string", "uniqueItems": True}}
        ]}}}})  # fmt: skip


@pytest.mark.parametrize(
    "raw",
    ["²", "\uff11\uff10", "١٢", "+5", "-5", " 5", "5 ", "0", "1001", "5.0", "1e2", "", "9" * 40, "0x10"],
)
def test_limit_is_ascii_digits_within_its_bounds(raw: str) -> None:
    with pytest.raises(ParameterError) as info:
        _query(limit=raw)
    assert info.value.where == "limit" and "from 1 to 1000 in ASCII digits" in str(info.value)


def test_limit_accepts_what_the_schema_allows() -> None:
    assert _query(limit="1") == {"limit": 1}
    assert _query(limit="1000") == {"limit": 1000}
    assert _query(limit="0010") == {"limit": 10}


def test_cursor_is_allowed_up_to_the_schemas_length() -> None:
    schema = load_openapi()["components"]["schemas"]["Cursor"]
    # The document allows every cursor the index can make.
    assert schema["maxLength"] >= MAX_CURSOR_CHARS
    assert _query(cursor="A" * 2048) == {"cursor": "A" * 2048}
    assert _query(cursor="A" * schema["maxLength"])["cursor"]
    with pytest.raises(ParameterError, match=f"cursor: longer than {schema['maxLength']}"):
        _query(cursor="A" * (schema["maxLength"] + 1))


def test_filters_take_any_character_and_refuse_empty_or_long_values() -> None:
    assert _query(user="a\x00b ² \ud7ff") == {"user": "a\x00b ² \ud7ff"}
    with pytest.raises(ParameterError, match="user: empty value"):
        _query(user="")
    with pytest.raises(ParameterError, match="user: longer than 512"):
        _query(user="x" * 513)
    assert _query(user="é" * 512)["user"] == "é" * 512  # characters, not bytes


def test_unknown_and_repeated_parameters_are_refused_by_name() -> None:
    with pytest.raises(ParameterError, match="bogus: unknown parameter"):
        _query(bogus="1")
    with pytest.raises(ParameterError, match="user: given 2 times"):
        api_spec()["queryEvents"].parse_query(MultiDict([("user", "a"), ("user", "b")]))


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2024-07-30T21:31:10Z", "2024-07-30T21:31:10.000Z"),
        ("2024-07-30t21:31:10.5z", "2024-07-30T21:31:10.500Z"),
        ("2024-07-31T01:31:10.123456789+04:00", "2024-07-30T21:31:10.123Z"),
        ("2016-12-31T23:59:60Z", "2016-12-31T23:59:59.999Z"),
        ("1000-01-01T00:00:00+23:59", "1000-01-01T00:00:00.000Z"),
        ("1495-08-11T06:16:50+05:00", "1495-08-11T01:16:50.000Z"),
        ("9999-12-31T23:59:59-23:59", "9999-12-31T23:59:59.999Z"),
        ("1722375070000", "2024-07-30T21:31:10.000Z"),
        ("0", "1970-01-01T00:00:00.000Z"),
        ("9" * 20, "9999-12-31T23:59:59.999Z"),
    ],
)
def test_time_bounds_are_epoch_ms_or_rfc3339(raw: str, expected: str) -> None:
    given = _query(start=raw)
    assert index_time(given["start"]) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "2024-07-30",
        "2024-07-30 21:31:10Z",
        "2024-07-30T21:31:10",
        "2024-02-30T00:00:00Z",
        "2024-07-30T24:00:00Z",
        "0000-01-01T00:00:00Z",
        # Before year 1000 the index's text order of times breaks (years of 1 to 3 digits).
        "0032-07-27T17:22:13+16:52",
        "2024-07-30T21:31:10+24:00",
        "\uff11\uff17\uff12\uff12\uff13\uff17\uff15\uff10\uff17\uff10\uff10\uff10\uff10",
        "-1",
        "9" * 21,
        "yesterday",
        "",
    ],
)
def test_other_time_bounds_are_refused_by_name(raw: str) -> None:
    with pytest.raises(ParameterError) as info:
        _query(end=raw)
    assert info.value.where == "end"


def test_parse_date_time_is_utc() -> None:
    assert parse_date_time("2024-07-30T23:31:10+02:00") == dt.datetime(2024, 7, 30, 21, 31, 10, tzinfo=dt.UTC)
    assert parse_date_time("not a time") is None


def test_dead_letter_parameters_and_replay_body() -> None:
    assert _query("listDeadLetters", topic="ops", subscription="hook.v2", limit="5") == {
        "topic": "ops",
        "subscription": "hook.v2",
        "limit": 5,
    }
    with pytest.raises(ParameterError, match="topic"):
        _query("listDeadLetters", topic="../etc")
    body = api_spec()["replayDeadLetters"]
    assert body.parse_body({"ids": ["a"]}) == {"ids": ["a"]}
    assert body.parse_body({"all": True, "topic": "ops"}) == {"all": True, "topic": "ops"}
    for bad in ({}, {"ids": []}, {"ids": ["a"], "all": True}, {"all": False}, {"ids": [1]}, {"x": 1}, []):
        with pytest.raises(ParameterError):
            body.parse_body(bad)


def test_the_worst_case_query_fits_the_request_line() -> None:
    """Every query the document allows can be sent: percent-encoded UTF-8 is at most 12
    bytes per character (a 4-byte character, each byte as %XX)."""
    doc = load_openapi()
    schemas = doc["components"]["schemas"]

    def longest(schema: dict[str, Any]) -> int:
        schema = schemas[schema["$ref"].rsplit("/", 1)[1]] if "$ref" in schema else schema
        if "anyOf" in schema:
            return max(longest(s) for s in schema["anyOf"])
        if schema.get("type") == "integer":
            return 20
        if "pattern" in schema:
            # The document's patterns are ASCII: at most 3 bytes a character encoded.
            return 3 * schema.get("maxLength", 20)
        return 12 * schema["maxLength"]

    for path, item in doc["paths"].items():
        for op in item.values():
            params = [p for p in op.get("parameters", []) if p["in"] == "query"]
            total = len("DELETE ") + len(path) + 12 * 512 + len(" HTTP/1.1")
            total += sum(len(p["name"]) + 2 + longest(p["schema"]) for p in params)
            assert total <= MAX_REQUEST_LINE_BYTES, (path, total)


# --- the ingest body: what the document allows is exactly what the decoder accepts ---------

CLOUDTRAIL = {"eventSource": "s3.amazonaws.com", "eventName": "GetObject", "recipientAccountId": "1"}
CTS = {"service_type": "ECS", "trace_name": "createServer", "project_id": "p"}
ACCEPTED: list[Any] = [
    CLOUDTRAIL,
    CTS,
    {"eventSource": 1, "eventName": True},
    {**CLOUDTRAIL, "Records": [1, 2]},
    {"Records": [CLOUDTRAIL, CTS]},
    {"Records": []},
    {**CTS, "Records": []},  # a Records array makes it an envelope, here an empty one
    {"specversion": "1.0", "data": CLOUDTRAIL},
    {"specversion": "1.0", "data": [CTS]},
    {"specversion": "1.0", "data": {"Records": [CTS]}},
    [CLOUDTRAIL, {"Records": [CTS]}, {"specversion": "1.0", "data": CTS}],
    [],
]
REFUSED: list[Any] = [
    {},
    {"x": 1},
    {"eventName": "GetObject"},
    {"eventSource": "", "eventName": "x"},
    {"eventSource": 0, "eventName": "x"},
    {"eventSource": [], "eventName": "x"},
    {**CTS, "eventVersion": "1.08"},
    {**CTS, "Records": [{}]},
    {"service_type": "ECS"},
    {"Records": [{}]},
    {"specversion": "1.0", "data": {}},
    [{}],
    [[CLOUDTRAIL]],
    "text",
    5,
    None,
]


def _decoder_accepts(body: Any) -> bool:
    """What HTTP ingest answers 202 for: something accepted, or nothing to reject."""
    items = Decoder().decode(orjson.dumps(body))
    return any(isinstance(i, Event) for i in items) or not items


@pytest.mark.parametrize("body", ACCEPTED)
def test_ingest_bodies_the_document_allows_are_accepted(body: Any) -> None:
    check(api_spec()["ingestEvents"].body or {}, body, "body")
    assert _decoder_accepts(body)


@pytest.mark.parametrize("body", REFUSED)
def test_ingest_bodies_the_document_refuses_are_refused(body: Any) -> None:
    # `{}` used to be allowed by the document (schema `{}`) and answered 400.
    with pytest.raises(ParameterError):
        check(api_spec()["ingestEvents"].body or {}, body, "body")
    if body != [[CLOUDTRAIL]]:  # nested arrays: the decoder is more lenient than documented
        assert not _decoder_accepts(body)
