"""Trace events: input formats, canonical fields, and the journal entry encoding.

Accepted input is auto-detected: a CTS trace, a CloudTrail record, a CloudTrail
envelope ``{"Records": [...]}``, a JSON array of any of these, NDJSON (one of
these per line), and structured CloudEvents whose ``data`` is one of these.

The stored record is never rewritten after ingest: it is kept as the exact
bytes received when the input gave them on one line (NDJSON), and as compact
JSON with key order and values unchanged otherwise (a pretty-printed array
cannot keep one record per line any other way). Canonical fields are
extracted once, here, and travel beside the record.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

# Reasons are a closed set: they label metrics, so they must stay bounded.
REASON_INVALID_JSON: Final = "invalid_json"
REASON_INVALID_UTF8: Final = "invalid_utf8"
REASON_NOT_OBJECT: Final = "not_object"
REASON_TOO_LARGE: Final = "too_large"
REASON_MISSING_FIELDS: Final = "missing_fields"
REASON_UNKNOWN_FORMAT: Final = "unknown_format"
REJECT_REASONS: Final = (
    REASON_INVALID_JSON,
    REASON_INVALID_UTF8,
    REASON_NOT_OBJECT,
    REASON_TOO_LARGE,
    REASON_MISSING_FIELDS,
    REASON_UNKNOWN_FORMAT,
)

FORMAT_CLOUDTRAIL: Final = "cloudtrail"
FORMAT_CTS: Final = "cts"

CANONICAL_FIELDS: Final = (
    "id",
    "time",
    "service",
    "operation",
    "resource_type",
    "resource_id",
    "resource_name",
    "user_id",
    "user_name",
    "user_type",
    "account",
    "source_ip",
    "code",
    "error",
    "rating",
    "trace_type",
    "tenant",
    "region",
    "format",
)

# Carried with the canonical fields for rules to read without parsing the record, but not
# indexed or queried: values that are long or unbounded in variety. As ``_s`` renders
# them, so a string comparison that cannot match "" has the same outcome on them as on
# the record's value (a missing key in a journal entry written before they existed is
# filled on read, see Entry.canonical).
MATCH_FIELDS: Final = ("user_agent", "user_arn")

Canonical = dict[str, str | None]

KIND_EVENT: Final = 0x45  # "E"
KIND_QUARANTINE: Final = 0x51  # "Q"


@dataclass(slots=True)
class Event:
    """One accepted trace event: its stored bytes and its canonical fields."""

    record: bytes
    canonical: Canonical
    received_ms: int
    source: str = "http"
    _parsed: dict[str, Any] | None = field(default=None, repr=False)
    # Where the journal holds the event (set when read back from it): lets a consumer's
    # correlation state tell a re-delivered event from a new one.
    offset: int | None = field(default=None, repr=False, compare=False)

    @property
    def id(self) -> str:
        value = self.canonical["id"]
        assert value is not None
        return value

    @property
    def parsed(self) -> dict[str, Any]:
        """The record as a dict, parsed lazily (rules need it, the archive does not)."""
        if self._parsed is None:
            self._parsed = loads_record(self.record)
        return self._parsed


@dataclass(slots=True)
class Rejected:
    """One input item that could not be accepted; it goes to the quarantine."""

    index: int
    reason: str
    detail: str
    raw: bytes

    def message(self) -> str:
        return f"{self.reason}: {self.detail}"


@dataclass(slots=True)
class QuarantineItem:
    """A rejected input with everything needed to inspect or replay it later."""

    raw: bytes
    reason: str
    detail: str
    source: str
    received_ms: int
    index: int | None = None
    ref: str | None = None  # request id, message id: whatever the source can name

    def to_line(self) -> bytes:
        return orjson.dumps(
            {
                "time": _iso_ms(self.received_ms),
                "source": self.source,
                "ref": self.ref,
                "index": self.index,
                "reason": self.reason,
                "detail": self.detail,
                "raw_b64": base64.b64encode(self.raw).decode("ascii"),
            }
        )


class DecodeError(ValueError):
    """A whole body could not be read at all (as opposed to one bad item)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


# --- JSON helpers -------------------------------------------------------------------------


def loads_record(data: bytes) -> Any:
    """Parse JSON; orjson first, the stdlib for what orjson refuses (ints over 64 bits)."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)


def _dumps_compact(value: Any) -> bytes:
    try:
        return orjson.dumps(value)
    except TypeError:
        try:
            return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()
        except UnicodeEncodeError:
            # A lone surrogate (sent as a \\ud800 escape) has no UTF-8 form: keep it escaped.
            return json.dumps(value, ensure_ascii=True, separators=(",", ":")).encode()


def _parse_item(raw: bytes) -> tuple[Any, Rejected | None]:
    try:
        return loads_record(raw), None
    except RecursionError:
        return None, Rejected(0, REASON_INVALID_JSON, "not valid JSON (nested too deeply to read)", raw)
    except ValueError as exc:
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as uexc:
            return None, Rejected(0, REASON_INVALID_UTF8, f"not valid UTF-8 at byte {uexc.start}", raw)
        return None, Rejected(0, REASON_INVALID_JSON, f"not valid JSON ({exc})", raw)


# --- time -------------------------------------------------------------------------------------


def _iso_ms(ms: int) -> str:
    t = dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


_CTS_TIME_FORMATS = ("%Y/%m/%d %H:%M:%S GMT%z", "%Y/%m/%d %H:%M:%S %z", "%Y/%m/%d %H:%M:%S")


def _normalise_time(value: Any) -> str | None:
    """Return an ISO-8601 UTC time, or None when the value is not a time we can read.

    CTS traces carry milliseconds (the API reference) or formatted strings such as
    ``2016/12/08 11:07:28 GMT+08:00`` (the user manual); CloudTrail carries ISO 8601.
    """
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        ms = int(value if value > 1e11 else value * 1000)
        try:
            return _iso_ms(ms)
        except (OverflowError, OSError, ValueError):
            return None
    if not isinstance(value, str) or not value:
        return None
    # CloudTrail's own shape, 2024-07-31T14:23:46Z, is by far the most common: skip datetime.
    if len(value) == 20 and value[10] == "T" and value[19] == "Z" and value[4] == "-" and value[13] == ":":
        return value[:19] + ".000Z"
    text = value.strip()
    if text.isdigit():
        return _normalise_time(int(text))
    parsed: dt.datetime | None
    try:
        parsed = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        parsed = None
        candidate = text.replace("GMT+", "+").replace("GMT-", "-").replace("UTC", "+00:00")
        for fmt in ("%Y/%m/%d %H:%M:%S %z", "%Y/%m/%d %H:%M:%S%z", *_CTS_TIME_FORMATS):
            try:
                parsed = dt.datetime.strptime(candidate, fmt)
                break
            except ValueError:
                continue
    if parsed is None:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    parsed = parsed.astimezone(dt.UTC)
    return parsed.strftime("%Y-%m-%dT%H:%M:%S.") + f"{parsed.microsecond // 1000:03d}Z"


# --- canonical fields ---------------------------------------------------------------------


def _s(value: Any) -> str | None:
    """Canonical fields are opaque strings: real data has values like ``255.090.254.5``."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return _dumps_compact(value).decode()


def _get(obj: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


# requestParameters keys that name the resource an API call acts on, in order of preference.
_RESOURCE_NAME_KEYS = (
    "userName",
    "roleName",
    "groupName",
    "policyArn",
    "policyName",
    "bucketName",
    "name",
    "trailName",
    "functionName",
    "layerName",
    "instanceId",
    "groupId",
    "snapshotId",
    "imageId",
    "dBInstanceIdentifier",
    "dBSnapshotIdentifier",
    "keyId",
    "secretId",
    "flowLogIds",
    "resolverQueryLogConfigId",
    "vpcId",
    "subnetId",
    "networkAclId",
    "routeTableId",
    "internetGatewayId",
    "detectorId",
    "configurationRecorderName",
    "accountId",
)


_RESOURCE_RANK = {k: i for i, k in enumerate(_RESOURCE_NAME_KEYS)}


def _cloudtrail_resource_name(rec: dict[str, Any]) -> str | None:
    params = rec.get("requestParameters")
    if not isinstance(params, dict):
        return None
    # Walk the call's own (few) parameters rather than every known key.
    best: tuple[int, Any] | None = None
    for key, value in params.items():
        rank = _RESOURCE_RANK.get(key)
        if rank is not None and value not in (None, "", [], {}) and (best is None or rank < best[0]):
            best = (rank, value)
    if best is not None:
        value = best[1]
        if isinstance(value, list):
            value = value[0]
        return _s(value)
    items = _get(params, "instancesSet", "items")
    if isinstance(items, list) and items and isinstance(items[0], dict):
        return _s(items[0].get("instanceId"))
    return None


def is_cloudtrail_record(obj: dict[str, Any]) -> bool:
    return "eventName" in obj or "eventSource" in obj or "eventVersion" in obj


def is_cts_trace(obj: dict[str, Any]) -> bool:
    return "trace_name" in obj or "service_type" in obj or "trace_id" in obj


def content_id(obj: Any) -> str:
    """An id derived from content alone, so a replayed event gets the same id."""
    digest = hashlib.sha256(orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)).hexdigest()
    return f"tk-{digest[:32]}"


def canonical_cloudtrail(rec: dict[str, Any]) -> Canonical | str:
    """Canonical fields of a CloudTrail record, or the reason it cannot identify itself."""
    if not rec.get("eventSource") or not rec.get("eventName"):
        missing = [k for k in ("eventSource", "eventName") if not rec.get(k)]
        return f"CloudTrail record lacks {', '.join(missing)}"
    ident = rec.get("userIdentity") if isinstance(rec.get("userIdentity"), dict) else {}
    assert isinstance(ident, dict)
    resources = rec.get("resources")
    first = resources[0] if isinstance(resources, list) and resources else {}
    if not isinstance(first, dict):
        first = {}
    user_name = ident.get("userName") or _get(ident, "sessionContext", "sessionIssuer", "userName")
    arn = ident.get("arn")
    if not user_name and isinstance(arn, str) and "/" in arn:
        user_name = arn.rsplit("/", 1)[-1]
    error = rec.get("errorCode")
    return {
        "id": _s(rec.get("eventID")) or content_id(rec),
        "time": _normalise_time(rec.get("eventTime")),
        "service": _s(rec.get("eventSource")),
        "operation": _s(rec.get("eventName")),
        "resource_type": _s(first.get("type")),
        "resource_id": _s(first.get("ARN") or first.get("arn")),
        "resource_name": _cloudtrail_resource_name(rec),
        "user_id": _s(ident.get("principalId") or arn),
        "user_name": _s(user_name),
        "user_type": _s(ident.get("type")),
        "account": _s(ident.get("accountId") or rec.get("recipientAccountId")),
        "source_ip": _s(rec.get("sourceIPAddress")),
        "code": _s(error),
        "error": _s(rec.get("errorMessage")),
        "rating": "warning" if error else "normal",
        "trace_type": _s(rec.get("eventType")),
        "tenant": _s(rec.get("recipientAccountId") or ident.get("accountId")),
        "region": _s(rec.get("awsRegion")),
        "format": FORMAT_CLOUDTRAIL,
        "user_agent": _s(rec.get("userAgent")),
        "user_arn": _s(arn),
    }


def _cts_rating(trace: dict[str, Any]) -> str:
    given = trace.get("trace_rating")
    if isinstance(given, str) and given:
        return given
    code = _s(trace.get("code"))
    if code and code.isdigit() and int(code) >= 400:
        return "warning"
    return "normal"


def canonical_cts(trace: dict[str, Any]) -> Canonical | str:
    """Canonical fields of a CTS trace, or the reason it cannot identify itself."""
    if not trace.get("service_type") or not trace.get("trace_name"):
        missing = [k for k in ("service_type", "trace_name") if not trace.get(k)]
        return f"CTS trace lacks {', '.join(missing)}"
    user = trace.get("user") if isinstance(trace.get("user"), dict) else {}
    assert isinstance(user, dict)
    domain = user.get("domain") if isinstance(user.get("domain"), dict) else {}
    assert isinstance(domain, dict)
    region = trace.get("region") or trace.get("location_info")
    return {
        "id": _s(trace.get("trace_id")) or content_id(trace),
        "time": _normalise_time(trace.get("time")) or _normalise_time(trace.get("record_time")),
        "service": _s(trace.get("service_type")),
        "operation": _s(trace.get("trace_name")),
        "resource_type": _s(trace.get("resource_type")),
        "resource_id": _s(trace.get("resource_id")),
        "resource_name": _s(trace.get("resource_name")),
        "user_id": _s(user.get("id")),
        "user_name": _s(user.get("name")),
        "user_type": _s(user.get("type")),
        "account": _s(domain.get("id") or domain.get("name")),
        "source_ip": _s(trace.get("source_ip")),
        "code": _s(trace.get("code")),
        "error": _s(trace.get("message")),
        "rating": _cts_rating(trace),
        "trace_type": _s(trace.get("trace_type")),
        "tenant": _s(trace.get("project_id") or trace.get("domain_id") or domain.get("id")),
        "region": _s(region),
        "format": FORMAT_CTS,
        "user_agent": _s(trace.get("user_agent")),
        "user_arn": None,
    }


def canonicalise(obj: dict[str, Any]) -> Canonical | str:
    """Canonical fields for one record (CloudTrail or CTS), or a reason for refusing it."""
    if is_cloudtrail_record(obj):
        return canonical_cloudtrail(obj)
    if is_cts_trace(obj):
        return canonical_cts(obj)
    return "neither a CloudTrail record (eventSource, eventName) nor a CTS trace (service_type, trace_name)"


# --- decoding -----------------------------------------------------------------------------


@dataclass(slots=True)
class Decoder:
    """Turns request bodies and queue messages into events and rejected items.

    Never raises for bad content: every item comes back as an Event or a Rejected,
    so the caller can quarantine the rejected ones with their raw bytes.
    """

    max_event_bytes: int = 262_144
    source: str = "http"

    def decode(self, body: bytes, *, ndjson: bool | None = None) -> list[Event | Rejected]:
        """Decode a body; ``ndjson=None`` auto-detects one JSON document versus NDJSON."""
        return list(self.iter_decode(body, ndjson=ndjson))

    def iter_decode(self, body: bytes, *, ndjson: bool | None = None) -> Iterator[Event | Rejected]:
        """``decode`` one item at a time, in the same order, so a caller that turns each
        item into bytes at once never holds a whole body's parsed events."""
        received = now_ms()
        if ndjson is None:
            ndjson = _looks_like_ndjson(body)
        if ndjson:
            return self._decode_lines(body, received)
        value, bad = _parse_item(body)
        if bad is not None:
            # A body that fails as one document may still be NDJSON without the content type.
            if b"\n" in body.strip():
                return self._decode_lines(body, received)
            if len(body) > self.max_event_bytes:
                bad.reason, bad.detail = REASON_TOO_LARGE, self._too_large(len(body))
            return iter([bad])
        if isinstance(value, dict) and not self._nests_records(value):
            # One event in the body: a one-line body is kept byte for byte, as an NDJSON
            # line would be (a multi-line one is re-serialised compact, one record per line).
            stripped = body.strip()
            raw = stripped if b"\n" not in stripped else None
            return iter([self._check(value, 0, received, raw, exact=body)])
        return self._expand(value, 0, received, raw=None, exact=body)

    @staticmethod
    def _nests_records(value: dict[str, Any]) -> bool:
        """Whether ``_expand`` would look inside this object (an envelope or a CloudEvent)."""
        return (isinstance(value.get("Records"), list) and not is_cloudtrail_record(value)) or (
            "specversion" in value and "data" in value
        )

    def _too_large(self, size: int) -> str:
        return f"event is {size} bytes, over the limit of {self.max_event_bytes} (max_event_bytes)"

    def _decode_lines(self, body: bytes, received: int) -> Iterator[Event | Rejected]:
        # Lines split on \n alone, so a rejected line is quarantined exactly as received
        # (padding, tabs, the \r of CRLF); events are parsed and stored from the trimmed form.
        # A line of whitespace only holds no item and is skipped; it keeps its index.
        for index, line in enumerate(body.split(b"\n")):
            stripped = line.strip()
            if not stripped:
                continue
            if len(stripped) > self.max_event_bytes and not stripped.startswith(b'{"Records"'):
                yield Rejected(index, REASON_TOO_LARGE, self._too_large(len(stripped)), line)
                continue
            value, bad = _parse_item(stripped)
            if bad is not None:
                bad.index = index
                bad.raw = line
                yield bad
                continue
            yield from self._expand(value, index, received, raw=stripped, exact=line)

    def _expand(
        self, value: Any, index: int, received: int, raw: bytes | None, exact: bytes | None = None
    ) -> Iterator[Event | Rejected]:
        """Flatten arrays, envelopes and CloudEvents into records, then check each.

        ``raw``: the trimmed bytes of ``value`` when it is a whole line (kept as the record);
        ``exact``: the bytes received for it when it is a whole item (an NDJSON line, a body),
        which a rejection of that item quarantines. Items inside it have neither.
        """
        if isinstance(value, list):
            for i, item in enumerate(value):
                # Index items of a top-level array by position; inside NDJSON keep the line.
                yield from self._expand(item, i if raw is None else index, received, None)
            return
        if not isinstance(value, dict):
            rawb = exact if exact is not None else raw if raw is not None else _dumps_compact(value)
            yield Rejected(index, REASON_NOT_OBJECT, "a JSON value that is not an object", rawb)
            return
        records = value.get("Records")
        if isinstance(records, list) and not is_cloudtrail_record(value):
            for i, item in enumerate(records):
                yield from self._expand(item, i if raw is None else index, received, None)
            return
        if "specversion" in value and "data" in value:
            data = value["data"]
            if isinstance(data, str):
                data_value, bad = _parse_item(data.encode())
                if bad is not None:
                    bad.index = index
                    bad.raw = (
                        exact if exact is not None else raw if raw is not None else _dumps_compact(value)
                    )
                    yield bad
                    return
                data = data_value
            yield from self._expand(data, index, received, None)
            return
        yield self._check(value, index, received, raw, exact)

    def _check(
        self, obj: dict[str, Any], index: int, received: int, raw: bytes | None, exact: bytes | None = None
    ) -> Event | Rejected:
        """An Event of ``obj``, stored as ``raw`` (or compact JSON), or a Rejected holding
        ``exact`` (the bytes received) when given, else what would have been stored."""
        record = raw if raw is not None and b"\r" not in raw else _dumps_compact(obj)
        kept = exact if exact is not None else record
        if len(record) > self.max_event_bytes:
            return Rejected(index, REASON_TOO_LARGE, self._too_large(len(record)), kept)
        canonical = canonicalise(obj)
        if isinstance(canonical, str):
            reason = (
                REASON_MISSING_FIELDS
                if is_cloudtrail_record(obj) or is_cts_trace(obj)
                else REASON_UNKNOWN_FORMAT
            )
            return Rejected(index, reason, canonical, kept)
        bad_field = next((k for k, v in canonical.items() if v is not None and not _utf8_safe(v)), None)
        if bad_field is not None:
            # Canonical fields go into the journal header, the index and every rule: a lone
            # surrogate there has no UTF-8 form, so the event is kept in quarantine instead.
            return Rejected(
                index,
                REASON_INVALID_UTF8,
                f"canonical field {bad_field} holds a lone surrogate escape (e.g. \\ud800), which has "
                "no UTF-8 form",
                kept,
            )
        if canonical["time"] is None:
            canonical["time"] = _iso_ms(received)
        # The parsed dict is dropped on purpose: keeping thousands alive per request costs
        # more in allocation than re-parsing the few records that a rule needs later.
        return Event(record, canonical, received, self.source)


def _utf8_safe(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _looks_like_ndjson(body: bytes) -> bool:
    head = body.lstrip()[:1]
    if head == b"[":
        return False
    # One object per line: the first line closes its own object.
    first, sep, rest = body.strip().partition(b"\n")
    if not sep or not rest.strip():
        return False
    return first.rstrip().endswith(b"}") and first.lstrip().startswith(b"{")


# --- journal entries ----------------------------------------------------------------------


# Event entries: kind byte, a fixed header with the fields every archiver needs per
# event (so it never parses JSON on its hot path), the canonical fields as JSON
# (parsed lazily, by the consumers that need them), then the record bytes.
_EVENT_HEADER = struct.Struct(">qHHHHI")  # received ms, len id, len tenant, len region, len time, len meta


def encode_event(event: Event) -> bytes:
    """Journal payload for an event."""
    c = event.canonical
    eid = (c.get("id") or "").encode()
    tenant = (c.get("tenant") or "").encode()
    region = (c.get("region") or "").encode()
    etime = (c.get("time") or "").encode()
    meta = orjson.dumps({"c": c, "s": event.source})
    header = _EVENT_HEADER.pack(event.received_ms, len(eid), len(tenant), len(region), len(etime), len(meta))
    return b"".join((_KIND_EVENT_BYTE, header, eid, tenant, region, etime, meta, event.record))


def encode_quarantine(item: QuarantineItem) -> bytes:
    return bytes((KIND_QUARANTINE,)) + item.to_line()


_KIND_EVENT_BYTE = bytes((KIND_EVENT,))


class Entry:
    """A decoded journal entry: an event or a quarantine line.

    ``tenant``, ``region`` and ``time`` are read from the entry's fixed header;
    ``canonical`` (every canonical field) is parsed on first use.
    """

    __slots__ = (
        "_canonical",
        "_meta",
        "id",
        "kind",
        "offset",
        "received_ms",
        "record",
        "region",
        "tenant",
        "time",
    )

    def __init__(
        self,
        offset: int,
        kind: int,
        received_ms: int,
        record: bytes,
        *,
        id: str | None = None,
        tenant: str | None = None,
        region: str | None = None,
        time: str | None = None,
        meta: bytes = b"",
        canonical: Canonical | None = None,
    ) -> None:
        self.offset = offset
        self.kind = kind
        self.received_ms = received_ms
        self.record = record
        self.id = id
        self.tenant = tenant
        self.region = region
        self.time = time
        self._meta = meta
        self._canonical = canonical

    def _load_meta(self) -> dict[str, Any]:
        return orjson.loads(self._meta) if self._meta else {"c": {}, "s": ""}

    @property
    def canonical(self) -> Canonical:
        if self._canonical is None:
            canonical: Canonical = self._load_meta()["c"]
            if canonical and MATCH_FIELDS[0] not in canonical:
                _add_match_fields(canonical, self.record)
            self._canonical = canonical
        return self._canonical

    @property
    def source(self) -> str:
        value: str = self._load_meta().get("s", "")
        return value

    def event(self) -> Event:
        return Event(self.record, self.canonical, self.received_ms, self.source, offset=self.offset)


def _add_match_fields(canonical: Canonical, record: bytes) -> None:
    """Fill MATCH_FIELDS into the canonical fields of an entry written before they existed."""
    try:
        obj = loads_record(record)
    except ValueError:
        obj = None
    fresh = canonicalise(obj) if isinstance(obj, dict) else None
    for name in MATCH_FIELDS:
        canonical[name] = fresh.get(name) if isinstance(fresh, dict) else None


def event_header(payload: bytes) -> tuple[int, bytes, bytes, bytes, bytes, int]:
    """An event entry's fixed fields: (received ms, id, tenant, region, time, record start).

    The archiver's per-event fast path, without building an Entry; the fields are
    raw UTF-8 (empty when absent). Only for payloads of kind KIND_EVENT.
    """
    received, li, lt, lr, lti, lm = _EVENT_HEADER.unpack_from(payload, 1)
    a = 1 + _EVENT_HEADER.size
    b = a + li
    c = b + lt
    d = c + lr
    e = d + lti
    return received, payload[a:b], payload[b:c], payload[c:d], payload[d:e], e + lm


def decode_entry(offset: int, payload: bytes) -> Entry:
    """Decode a journal payload written by encode_event or encode_quarantine."""
    kind = payload[0]
    if kind == KIND_EVENT:
        received, li, lt, lr, lti, lm = _EVENT_HEADER.unpack_from(payload, 1)
        pos = 1 + _EVENT_HEADER.size
        eid = payload[pos : pos + li].decode() or None
        pos += li
        tenant = payload[pos : pos + lt].decode() or None
        pos += lt
        region = payload[pos : pos + lr].decode() or None
        pos += lr
        etime = payload[pos : pos + lti].decode() or None
        pos += lti
        meta = payload[pos : pos + lm]
        return Entry(
            offset,
            kind,
            received,
            payload[pos + lm :],
            id=eid,
            tenant=tenant,
            region=region,
            time=etime,
            meta=meta,
        )
    if kind == KIND_QUARANTINE:
        line = payload[1:]
        doc = orjson.loads(line)
        received = int(dt.datetime.fromisoformat(doc["time"].replace("Z", "+00:00")).timestamp() * 1000)
        return Entry(
            offset,
            kind,
            received,
            line,
            canonical={},
            meta=orjson.dumps({"c": {}, "s": doc.get("source", "")}),
        )
    raise ValueError(f"journal entry at offset {offset} has unknown kind {kind:#x}")
