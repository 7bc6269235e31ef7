"""The CloudTrail-compatible API: ``LookupEvents`` over the index, as the AWS CLI and SDKs call it.

``POST /`` with ``X-Amz-Target: com.amazonaws.cloudtrail.v20131101.CloudTrail_20131101.<Op>``
and a JSON body (the AWS JSON 1.1 protocol), signed with SigV4 by an access key of
``auth.access_keys``; roles and tenant scope are those of ``GET /v1/events``, and every call
is audited like a query. So ``aws cloudtrail lookup-events --endpoint-url https://host:8787``
works unchanged.

LookupEvents follows the CloudTrail API reference: one lookup attribute at most (EventId,
EventName, Username, ResourceType, ResourceName, EventSource, ReadOnly, AccessKeyId),
``StartTime``/``EndTime`` (epoch seconds), ``MaxResults`` 1 to 50 (default 50), ``NextToken``,
newest first, each event with its ``CloudTrailEvent``: the record exactly as stored.
ReadOnly and AccessKeyId are not index columns: they are read from the records of the time
range, ``SCAN_ROWS`` at most per call, and a page may then hold fewer events than asked with
a NextToken to go on, as CloudTrail's own pages may.
Errors are AWS JSON errors (``__type`` and ``message``), which the CLI prints as such.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from daemon.api.auth import Principal
from daemon.api.routes import ApiGuard, audit_info, refusal_message
from daemon.events import loads_record
from daemon.index.base import IndexBackend, IndexUnavailable
from daemon.index.query import MAX_CURSOR_CHARS, Query, QueryError
from daemon.telemetry import get_logger

log = get_logger("api.cloudtrail")

TARGET_PREFIX = "com.amazonaws.cloudtrail.v20131101.CloudTrail_20131101."
CONTENT_TYPE = "application/x-amz-json-1.1"
MAX_RESULTS = 50
SCAN_ROWS = 5000  # records read per call for a ReadOnly or AccessKeyId lookup

# Lookup attributes the index answers directly: attribute -> query parameter.
INDEXED = {
    "EventName": "operation",
    "Username": "user",
    "ResourceType": "resource_type",
    "ResourceName": "resource_name",
    "EventSource": "service",
}
SCANNED = ("ReadOnly", "AccessKeyId")
ATTRIBUTES = ("EventId", *INDEXED, *SCANNED)


class AwsError(Exception):
    """An error answered in AWS's JSON form."""

    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status, self.kind, self.message = status, kind, message


def aws_error(status: int, kind: str, message: str) -> web.Response:
    return web.Response(
        body=orjson.dumps({"__type": kind, "message": message}),
        status=status,
        content_type=CONTENT_TYPE,
        headers={"x-amzn-ErrorType": kind},
    )


# The guard's own refusals, in the names CloudTrail's clients know.
_GUARD_ERRORS = {
    400: "ValidationException",
    401: "UnrecognizedClientException",
    403: "AccessDeniedException",
    429: "ThrottlingException",
    503: "ServiceUnavailableException",
}


def _epoch(value: Any, name: str) -> dt.datetime:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise AwsError(400, "ValidationException", f"{name} must be a timestamp in epoch seconds")
    try:
        return dt.datetime.fromtimestamp(float(value), dt.UTC)
    except (OverflowError, OSError, ValueError) as exc:
        raise AwsError(400, "InvalidTimeRangeException", f"{name} is out of range") from exc


def iso_ms(when: dt.datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def _event_time(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _resources(record: dict[str, Any] | None, item: dict[str, Any]) -> list[dict[str, str]]:
    found = record.get("resources") if record else None
    out: list[dict[str, str]] = []
    if isinstance(found, list):
        for r in found:
            if isinstance(r, dict):
                entry = {"ResourceType": r.get("type"), "ResourceName": r.get("ARN") or r.get("name")}
                out.append({k: str(v) for k, v in entry.items() if v is not None})
    if not out and (item.get("resource_type") or item.get("resource_name")):
        entry = {"ResourceType": item.get("resource_type"), "ResourceName": item.get("resource_name")}
        out.append({k: str(v) for k, v in entry.items() if v is not None})
    return out


def _scanned_value(attribute: str, record: dict[str, Any] | None) -> str | None:
    if not record:
        return None
    if attribute == "ReadOnly":
        value = record.get("readOnly")
        return None if value is None else str(value).lower()
    identity = record.get("userIdentity")
    key = identity.get("accessKeyId") if isinstance(identity, dict) else None
    return key if isinstance(key, str) else None


class CloudTrailApi:
    """``POST /``: the CloudTrail operations trailkeeper answers (LookupEvents)."""

    def __init__(self, index: IndexBackend, guard: ApiGuard) -> None:
        self.index = index
        self.guard = guard
        self._lookup = guard.protect(
            "read", "LookupEvents", "events", self.lookup_events, route="/ (CloudTrail)"
        )

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/", self.dispatch)

    async def dispatch(self, request: web.Request) -> web.Response:
        target = request.headers.get("X-Amz-Target", "")
        if not target.startswith(TARGET_PREFIX):
            return aws_error(400, "UnknownOperationException", "X-Amz-Target names no CloudTrail operation")
        operation = target.removeprefix(TARGET_PREFIX)
        handlers: dict[str, Callable[[web.Request], Awaitable[web.Response]]] = {"LookupEvents": self._lookup}
        handler = handlers.get(operation)
        if handler is None:
            return aws_error(
                400,
                "UnknownOperationException",
                f"{operation[:64]} is not supported; trailkeeper answers LookupEvents",
            )
        response = await handler(request)
        message = refusal_message(response)
        if message is not None:
            # A refusal of the guard (authentication, role, rate limit): in AWS's form.
            kind = _GUARD_ERRORS.get(response.status, "InternalFailure")
            fixed = aws_error(response.status, kind, message or kind)
            if "Retry-After" in response.headers:
                fixed.headers["Retry-After"] = response.headers["Retry-After"]
            return fixed
        return response

    async def lookup_events(self, request: web.Request, principal: Principal | None) -> web.Response:
        assert principal is not None
        try:
            body = await request.read()
            try:
                doc = orjson.loads(body) if body.strip() else {}
            except orjson.JSONDecodeError as exc:
                raise AwsError(400, "SerializationException", f"the body is not JSON: {exc}") from exc
            if not isinstance(doc, dict):
                raise AwsError(400, "SerializationException", "the body must be a JSON object")
            audit_info()["request"] = {"operation": "LookupEvents", **{k: doc[k] for k in list(doc)[:8]}}
            events, token = await self._lookup_events(doc, principal)
        except AwsError as exc:
            return aws_error(exc.status, exc.kind, exc.message)
        except IndexUnavailable as exc:
            log.error("api.cloudtrail_failed", error=str(exc))
            return aws_error(503, "ServiceUnavailableException", f"the query index is unavailable: {exc}")
        audit_info()["response"] = {"count": len(events), "more": token is not None}
        out: dict[str, Any] = {"Events": events}
        if token is not None:
            out["NextToken"] = token
        return web.Response(body=orjson.dumps(out), content_type=CONTENT_TYPE)

    async def _lookup_events(
        self, doc: dict[str, Any], principal: Principal
    ) -> tuple[list[dict[str, Any]], str | None]:
        known = {"LookupAttributes", "StartTime", "EndTime", "EventCategory", "MaxResults", "NextToken"}
        unknown = sorted(set(doc) - known)
        if unknown:
            raise AwsError(400, "ValidationException", f"unknown parameter(s): {', '.join(unknown)}")
        if doc.get("EventCategory") not in (None, "insight"):
            raise AwsError(400, "InvalidEventCategoryException", "EventCategory must be insight")
        if doc.get("EventCategory") == "insight":
            return [], None  # no Insights events are recorded
        limit = doc.get("MaxResults", MAX_RESULTS)
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_RESULTS:
            raise AwsError(400, "InvalidMaxResultsException", f"MaxResults must be 1 to {MAX_RESULTS}")
        params: dict[str, str] = {}
        start = _epoch(doc["StartTime"], "StartTime") if doc.get("StartTime") is not None else None
        end = _epoch(doc["EndTime"], "EndTime") if doc.get("EndTime") is not None else None
        if start is not None and end is not None and start > end:
            raise AwsError(400, "InvalidTimeRangeException", "StartTime must not be after EndTime")
        if start is not None:
            params["start"] = iso_ms(start)
        if end is not None:
            # CloudTrail's EndTime is inclusive, the index's end exclusive.
            params["end"] = iso_ms(end + dt.timedelta(milliseconds=1))
        token = doc.get("NextToken")
        if token is not None:
            if not isinstance(token, str) or not token or len(token) > MAX_CURSOR_CHARS:
                raise AwsError(400, "InvalidNextTokenException", "NextToken is not one this API returned")
            params["cursor"] = token
        attributes = doc.get("LookupAttributes") or []
        if not isinstance(attributes, list) or len(attributes) > 1:
            raise AwsError(400, "InvalidLookupAttributesException", "give at most one lookup attribute")
        key = value = None
        if attributes:
            attr = attributes[0]
            if not isinstance(attr, dict) or set(attr) != {"AttributeKey", "AttributeValue"}:
                raise AwsError(
                    400,
                    "InvalidLookupAttributesException",
                    "a lookup attribute has AttributeKey and AttributeValue",
                )
            key, value = attr["AttributeKey"], attr["AttributeValue"]
            if key not in ATTRIBUTES:
                raise AwsError(
                    400,
                    "InvalidLookupAttributesException",
                    f"AttributeKey must be one of {', '.join(ATTRIBUTES)}",
                )
            if not isinstance(value, str) or not value:
                raise AwsError(
                    400, "InvalidLookupAttributesException", "AttributeValue must be a non-empty string"
                )
        if key == "EventId":
            assert value is not None
            return await self._by_id(value, principal, start, end), None
        if key in INDEXED:
            assert value is not None
            params[INDEXED[key]] = value
        scanned = key if key in SCANNED else None
        if scanned == "ReadOnly":
            assert value is not None
            value = value.lower()
        events: list[dict[str, Any]] = []
        scanned_rows = 0
        while True:
            # A page never holds more rows than events still wanted, so a call ends at a page's
            # end and its NextToken is the index's own cursor (no event is skipped or repeated).
            params["limit"] = str(min(limit - len(events), SCAN_ROWS - scanned_rows))
            try:
                query = Query.from_params(params, principal.tenants)
            except QueryError as exc:
                kind = "InvalidNextTokenException" if "cursor" in str(exc) else "ValidationException"
                raise AwsError(400, kind, str(exc)) from exc
            page = await self.index.search(query)
            scanned_rows += len(page.items)
            next_token = page.next_cursor
            for item in page.items:
                record, text = await self._record(item)
                if scanned is not None and _scanned_value(scanned, record) != value:
                    continue
                events.append(_event(item, record, text))
            if next_token is None:
                return events, None
            params["cursor"] = next_token
            if len(events) >= limit or scanned_rows >= SCAN_ROWS:
                return events, next_token

    async def _record(self, item: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
        found = await self.index.find(str(item["id"]), frozenset({item.get("tenant") or ""}), limit=1)
        if not found:
            return None, ""
        raw = found[0].record
        try:
            record = loads_record(raw)
        except (ValueError, RecursionError):
            record = None
        return (record if isinstance(record, dict) else None), raw.decode("utf-8", errors="replace")

    async def _by_id(
        self, event_id: str, principal: Principal, start: dt.datetime | None, end: dt.datetime | None
    ) -> list[dict[str, Any]]:
        out = []
        for stored in await self.index.find(event_id, principal.tenants, limit=MAX_RESULTS):
            when = _event_time(stored.fields.get("time"))
            if when is not None and (
                (start is not None and when < start.timestamp())
                or (end is not None and when > end.timestamp())
            ):
                continue
            try:
                record = loads_record(stored.record)
            except (ValueError, RecursionError):
                record = None
            out.append(
                _event(
                    stored.fields,
                    record if isinstance(record, dict) else None,
                    stored.record.decode("utf-8", errors="replace"),
                )
            )
        return out


def _event(item: dict[str, Any], record: dict[str, Any] | None, text: str) -> dict[str, Any]:
    out: dict[str, Any] = {
        "EventId": item.get("id"),
        "EventName": item.get("operation"),
        "EventTime": _event_time(item.get("time")),
        "EventSource": item.get("service"),
        "Username": item.get("user_name"),
        "Resources": _resources(record, item),
        "CloudTrailEvent": text,
    }
    read_only = _scanned_value("ReadOnly", record)
    if read_only is not None:
        out["ReadOnly"] = read_only
    key = _scanned_value("AccessKeyId", record)
    if key is not None:
        out["AccessKeyId"] = key
    return {k: v for k, v in out.items() if v is not None}
