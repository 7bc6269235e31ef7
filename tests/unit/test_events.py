from __future__ import annotations

import json

import orjson
import pytest

from daemon import events
from daemon.events import Decoder, Event, Rejected, decode_entry, encode_event
from tests.conftest import CTS_EXAMPLES, stratus_records


def _ok(items: list[Event | Rejected]) -> list[Event]:
    return [i for i in items if isinstance(i, Event)]


def _bad(items: list[Event | Rejected]) -> list[Rejected]:
    return [i for i in items if isinstance(i, Rejected)]


def test_every_stratus_record_is_accepted_with_canonical_fields() -> None:
    records = stratus_records()
    assert len(records) == 310
    items = Decoder().decode(orjson.dumps(records))
    assert not _bad(items)
    evs = _ok(items)
    assert len(evs) == 310
    for rec, ev in zip(records, evs, strict=True):
        assert orjson.loads(ev.record) == rec
        assert b"\n" not in ev.record
        c = ev.canonical
        assert c["id"] == rec["eventID"]
        assert c["operation"] == rec["eventName"]
        assert c["service"] == rec["eventSource"]
        assert c["region"] == rec["awsRegion"]
        assert c["source_ip"] == rec.get("sourceIPAddress")
        assert c["tenant"] == rec["recipientAccountId"]
        assert c["format"] == "cloudtrail"
        assert c["rating"] == ("warning" if rec.get("errorCode") else "normal")


def test_opaque_ip_and_region_kept_verbatim() -> None:
    rec = {
        "eventSource": "s3.amazonaws.com",
        "eventName": "PutObject",
        "sourceIPAddress": "255.090.254.5",
        "awsRegion": "ap-isob-east-1r",
        "eventID": "x",
    }
    (ev,) = _ok(Decoder().decode(orjson.dumps(rec)))
    assert ev.canonical["source_ip"] == "255.090.254.5"
    assert ev.canonical["region"] == "ap-isob-east-1r"


def test_cts_examples_accepted_with_times_normalised() -> None:
    traces = json.loads(CTS_EXAMPLES.read_text())
    evs = _ok(Decoder().decode(orjson.dumps(traces)))
    assert [e.canonical["operation"] for e in evs] == ["createSingleServer", "deleteVolume"]
    first = evs[0].canonical
    assert first["service"] == "ECS"
    assert first["time"] == "2016-12-08T03:07:28.000Z"  # GMT+08:00 converted to UTC
    assert first["source_ip"] is None  # empty for system actions
    assert first["tenant"] == "1f9b9ba51f6b4061bd5c1736b28469f8"
    assert first["trace_type"] == "SystemAction"
    assert evs[1].canonical["id"] == "c529254f-bcf5-11e6-a89a-7fc778a6c92c"


def test_cts_millisecond_time_and_failed_code_is_warning() -> None:
    trace = {"service_type": "IAM", "trace_name": "deleteUser", "time": 1700000000123, "code": "403"}
    (ev,) = _ok(Decoder().decode(orjson.dumps(trace)))
    assert ev.canonical["time"] == "2023-11-14T22:13:20.123Z"
    assert ev.canonical["rating"] == "warning"


def test_envelope_cloudevents_and_arrays() -> None:
    rec = {"eventSource": "iam.amazonaws.com", "eventName": "CreateUser", "eventID": "a"}
    envelope = {"Records": [rec, {**rec, "eventID": "b"}]}
    cloudevent = {"specversion": "1.0", "type": "t", "source": "s", "id": "1", "data": envelope}
    ce_string = {**cloudevent, "data": json.dumps(rec)}
    items = Decoder().decode(orjson.dumps([cloudevent, ce_string]))
    assert [e.id for e in _ok(items)] == ["a", "b", "a"]


def test_ndjson_mix_gives_a_reason_per_bad_line() -> None:
    good = orjson.dumps({"eventSource": "ec2.amazonaws.com", "eventName": "RunInstances", "eventID": "g1"})
    big = orjson.dumps({"eventSource": "x", "eventName": "y", "pad": "z" * 2000})
    body = b"\n".join(
        [good, b"{not json", b"42", big, b'{"eventName": "\xff\xfe"}', good.replace(b"g1", b"g2")]
    )
    items = Decoder(max_event_bytes=1000).decode(body, ndjson=True)
    assert [e.id for e in _ok(items)] == ["g1", "g2"]
    bad = {r.index: r for r in _bad(items)}
    assert bad[1].reason == events.REASON_INVALID_JSON and bad[1].raw == b"{not json"
    assert bad[2].reason == events.REASON_NOT_OBJECT and bad[2].raw == b"42"
    assert bad[3].reason == events.REASON_TOO_LARGE and bad[3].raw == big
    assert bad[4].reason == events.REASON_INVALID_UTF8 and bad[4].raw == b'{"eventName": "\xff\xfe"}'


def test_ndjson_autodetected_and_exact_line_bytes_kept() -> None:
    line = b'{"eventSource":"s3.amazonaws.com",  "eventName":"DeleteBucket","eventID":"k"}'
    (ev, _ev2) = _ok(Decoder().decode(line + b"\n" + line.replace(b'"k"', b'"k2"') + b"\n"))
    assert ev.record == line  # exact bytes, whitespace included


def test_a_single_event_body_is_kept_like_an_ndjson_line() -> None:
    # One line: byte for byte, as the same line in an NDJSON body would be.
    line = b'  {"eventSource":"s3.amazonaws.com",  "eventName":"DeleteBucket","eventID":"k"}\n'
    (ev,) = _ok(Decoder().decode(line))
    assert ev.record == line.strip()
    # Pretty-printed over several lines: stored compact, so a record stays one line.
    pretty = json.dumps(
        {"eventSource": "s3.amazonaws.com", "eventName": "DeleteBucket", "eventID": "p"}, indent=2
    )
    (ev,) = _ok(Decoder().decode(pretty.encode()))
    assert ev.record == b'{"eventSource":"s3.amazonaws.com","eventName":"DeleteBucket","eventID":"p"}'
    # A CR inside the line would break one-record-per-line readers: re-serialised.
    (ev,) = _ok(Decoder().decode(b'{"eventSource":"s3","eventName":"X",\r"eventID":"c"}'))
    assert b"\r" not in ev.record
    # An envelope on one line still yields its records, each indexed by position.
    rec = {"eventSource": "iam.amazonaws.com", "eventName": "CreateUser"}
    items = Decoder().decode(orjson.dumps({"Records": [rec, {"x": 1}]}))
    assert len(_ok(items)) == 1 and [r.index for r in _bad(items)] == [1]


def test_missing_identity_fields_and_unknown_shape() -> None:
    items = Decoder().decode(orjson.dumps([{"eventSource": "x"}, {"hello": 1}]))
    reasons = [r.reason for r in _bad(items)]
    assert reasons == [events.REASON_MISSING_FIELDS, events.REASON_UNKNOWN_FORMAT]


def test_event_without_id_gets_a_content_derived_id() -> None:
    rec = {
        "eventSource": "s3.amazonaws.com",
        "eventName": "PutBucketPolicy",
        "eventTime": "2024-01-01T00:00:00Z",
    }
    (a,) = _ok(Decoder().decode(orjson.dumps(rec)))
    (b,) = _ok(Decoder().decode(json.dumps(rec, indent=2).encode()))
    assert a.id == b.id and a.id.startswith("tk-")
    (c,) = _ok(Decoder().decode(orjson.dumps({**rec, "eventName": "DeleteBucketPolicy"})))
    assert c.id != a.id


def test_big_integers_beyond_64_bits_survive() -> None:
    line = b'{"eventSource":"a","eventName":"b","eventID":"i","n":123456789012345678901234567890}'
    evs = _ok(Decoder().decode(line + b"\n" + line + b"\n"))
    assert [e.record for e in evs] == [line, line]


def test_journal_entry_roundtrip() -> None:
    (ev,) = _ok(Decoder().decode(b'{"eventSource":"a","eventName":"b","eventID":"e1"}'))
    entry = decode_entry(7, encode_event(ev))
    assert entry.offset == 7 and entry.record == ev.record and entry.canonical == ev.canonical
    with pytest.raises(ValueError):
        decode_entry(0, b"Zjunk")


def test_entries_written_before_the_match_fields_gain_them_on_read() -> None:
    rec = {
        "eventSource": "sts.amazonaws.com",
        "eventName": "GetCallerIdentity",
        "userAgent": "TruffleHog",
        "userIdentity": {"arn": "arn:aws:sts::1:assumed-role/aws:ec2-instance/i-1"},
    }
    (ev,) = Decoder().decode(orjson.dumps(rec))
    assert isinstance(ev, Event)
    assert ev.canonical["user_agent"] == "TruffleHog"
    assert ev.canonical["user_arn"] == rec["userIdentity"]["arn"]  # type: ignore[index]
    # The previous version's entry: the same canonical fields without the match fields.
    old = {k: v for k, v in ev.canonical.items() if k not in events.MATCH_FIELDS}
    entry = decode_entry(0, encode_event(Event(ev.record, old, ev.received_ms)))
    assert entry.canonical["user_agent"] == "TruffleHog"
    assert entry.canonical["user_arn"] == rec["userIdentity"]["arn"]  # type: ignore[index]
    # A new entry carries them and is not parsed for them.
    new = decode_entry(0, encode_event(ev))
    assert new.canonical == ev.canonical
