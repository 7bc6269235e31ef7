"""The CTS-compatible API: ``ListTraces`` and ``ListTrackers``, as the Huawei Cloud SDK calls them.

``GET /v3/{project_id}/traces`` and ``GET /v3/{project_id}/trackers``, signed with Huawei
Cloud's AK/SK signing (``daemon.api.hwsign``) by an access key of ``auth.access_keys``
(or a bearer token); roles and tenant scope are those of ``GET /v1/events``, the project id
is the tenant (a CTS trace's tenant is its ``project_id``), and every call is audited like
a query. So ``huaweicloudsdkcts``' ``CtsClient`` with an endpoint of
``https://host:8787`` works unchanged.

ListTraces follows the CTS API reference: ``trace_type`` (``system``; ``data`` traces are
not recorded apart, so that answers none), ``from``/``to`` (epoch milliseconds, both
inclusive), ``limit`` 1 to 200 (default 10), ``next`` (the ``marker`` of the previous
page), and the filters ``service_type``, ``trace_name``, ``resource_type``, ``resource_id``,
``resource_name``, ``user``, ``trace_rating``, ``trace_id`` and ``tracker_name`` (``system``
or a configured tracker: every tracker records every trace of the project). Newest first;
each trace is the stored CTS trace, or a CloudTrail record in CTS's fields. Filters the
index cannot answer (``access_key_id``, ``enterprise_project_id``) are refused with a
reason rather than ignored. Errors are CTS's ``{"error_code", "error_msg"}``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final

import orjson
from aiohttp import web

from daemon.api.auth import Principal
from daemon.api.cloudtrail import iso_ms
from daemon.api.routes import ApiGuard, audit_info, refusal_message
from daemon.config import TrackerConfig
from daemon.events import loads_record
from daemon.index.base import IndexBackend, IndexUnavailable
from daemon.index.query import MAX_CURSOR_CHARS, Query, QueryError
from daemon.telemetry import get_logger

log = get_logger("api.cts")

DEFAULT_LIMIT: Final = 10
MAX_LIMIT: Final = 200
# CTS query parameter -> index query parameter.
FILTERS: Final = {
    "service_type": "service",
    "trace_name": "operation",
    "resource_type": "resource_type",
    "resource_id": "resource_id",
    "resource_name": "resource_name",
    "user": "user",
    "trace_rating": "rating",
}
UNSUPPORTED: Final = ("access_key_id", "enterprise_project_id")
KNOWN: Final = frozenset(
    {*FILTERS, *UNSUPPORTED, "trace_type", "from", "to", "limit", "next", "trace_id", "tracker_name"}
)
RATINGS: Final = ("normal", "warning", "incident")
# The fields of the SDK's Traces model, with the types it reads them as.
_STRINGS: Final = (
    "resource_id",
    "trace_name",
    "trace_rating",
    "trace_type",
    "code",
    "api_version",
    "message",
    "trace_id",
    "service_type",
    "resource_type",
    "source_ip",
    "resource_name",
    "request_id",
    "location_info",
    "endpoint",
    "resource_url",
    "enterprise_project_id",
    "resource_account_id",
    "operation_id",
)

# The guard's own refusals, as CTS error codes.
_GUARD_ERRORS: Final = {
    400: "CTS.0001",
    401: "CTS.0003",
    403: "CTS.0004",
    429: "CTS.0429",
    503: "CTS.0500",
}


class CtsError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def cts_error(status: int, code: str, message: str) -> web.Response:
    return web.Response(
        body=orjson.dumps({"error_code": code, "error_msg": message}),
        status=status,
        content_type="application/json",
    )


class CtsApi:
    """``GET /v3/{project_id}/traces`` and ``GET /v3/{project_id}/trackers``."""

    def __init__(self, index: IndexBackend, guard: ApiGuard, trackers: Sequence[TrackerConfig]) -> None:
        self.index = index
        self.trackers = tuple(trackers)
        self._traces = guard.protect(
            "read", "ListTraces", "traces", self.list_traces, route="/v3/{project_id}/traces"
        )
        self._trackers = guard.protect(
            "read", "ListTrackers", "trackers", self.list_trackers, route="/v3/{project_id}/trackers"
        )

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/v3/{project_id}/traces", self._cts_form(self._traces))
        app.router.add_get("/v3/{project_id}/trackers", self._cts_form(self._trackers))

    @staticmethod
    def _cts_form(
        handler: Callable[[web.Request], Awaitable[web.Response]],
    ) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def wrapped(request: web.Request) -> web.Response:
            response = await handler(request)
            message = refusal_message(response)
            if message is not None:
                # A refusal of the guard (authentication, role, rate limit): in CTS's form.
                code = _GUARD_ERRORS.get(response.status, "CTS.0500")
                fixed = cts_error(response.status, code, message or code)
                if "Retry-After" in response.headers:
                    fixed.headers["Retry-After"] = response.headers["Retry-After"]
                return fixed
            return response

        return wrapped

    def _project(self, request: web.Request, principal: Principal) -> str:
        project = request.match_info["project_id"]
        if not principal.sees(project):
            raise CtsError(403, "CTS.0004", f"{principal.name!r} may not read project {project[:64]!r}")
        return project

    async def list_traces(self, request: web.Request, principal: Principal | None) -> web.Response:
        assert principal is not None
        try:
            project = self._project(request, principal)
            params = {k: request.query.getone(k) for k in request.query}
            audit_info()["request"] = {
                "operation": "ListTraces",
                "project_id": project,
                **dict(list(params.items())[:12]),
            }
            traces, marker = await self._list_traces(project, params, principal)
        except CtsError as exc:
            return cts_error(exc.status, exc.code, exc.message)
        except IndexUnavailable as exc:
            log.error("api.cts_failed", error=str(exc))
            return cts_error(503, "CTS.0500", f"the query index is unavailable: {exc}")
        audit_info()["response"] = {"count": len(traces), "more": marker is not None}
        meta: dict[str, Any] = {"count": len(traces)}
        if marker is not None:
            meta["marker"] = marker
        return web.json_response(
            {"traces": traces, "meta_data": meta}, dumps=lambda o: orjson.dumps(o).decode()
        )

    async def _list_traces(
        self, project: str, params: dict[str, str], principal: Principal
    ) -> tuple[list[dict[str, Any]], str | None]:
        unknown = sorted(set(params) - KNOWN)
        if unknown:
            raise CtsError(400, "CTS.0001", f"unknown parameter(s): {', '.join(unknown)}")
        for name in UNSUPPORTED:
            if name in params:
                raise CtsError(
                    400, "CTS.0001", f"{name} cannot be filtered on here (not indexed); leave it out"
                )
        trace_type = params.get("trace_type", "system")
        if trace_type not in ("system", "data"):
            raise CtsError(400, "CTS.0001", "trace_type must be system or data")
        tracker = params.get("tracker_name")
        if tracker is not None and tracker != "system" and tracker not in {t.name for t in self.trackers}:
            raise CtsError(404, "CTS.0002", f"no tracker named {tracker[:64]!r}")
        limit = _int(params.get("limit", str(DEFAULT_LIMIT)), "limit")
        if not 1 <= limit <= MAX_LIMIT:
            raise CtsError(400, "CTS.0001", f"limit must be 1 to {MAX_LIMIT}")
        query: dict[str, str] = {"tenant": project, "limit": str(limit)}
        start = _millis(params["from"], "from") if "from" in params else None
        end = _millis(params["to"], "to") if "to" in params else None
        if start is not None and end is not None and start > end:
            raise CtsError(400, "CTS.0001", "from must not be after to")
        if start is not None:
            query["start"] = iso_ms(start)
        if end is not None:
            query["end"] = iso_ms(end + dt.timedelta(milliseconds=1))  # "to" is inclusive
        if "trace_rating" in params and params["trace_rating"] not in RATINGS:
            raise CtsError(400, "CTS.0001", f"trace_rating must be one of {', '.join(RATINGS)}")
        for name, column in FILTERS.items():
            if name in params:
                query[column] = params[name]
        marker = params.get("next")
        if marker is not None:
            if not marker or len(marker) > MAX_CURSOR_CHARS:
                raise CtsError(400, "CTS.0001", "next is not a marker this API returned")
            query["cursor"] = marker
        if trace_type == "data":
            return [], None  # data traces are not recorded apart from the others
        tenants = frozenset({project})
        if "trace_id" in params:
            found = await self.index.find(params["trace_id"], tenants, limit=limit)
            out = []
            for stored in found:
                fields = stored.fields
                if all(
                    _matches(fields, column, query[column]) for column in FILTERS.values() if column in query
                ):
                    out.append(_trace(fields, stored.record, project))
            return out, None
        try:
            q = Query.from_params(query, principal.tenants)
        except QueryError as exc:
            raise CtsError(400, "CTS.0001", str(exc)) from exc
        page = await self.index.search(q)
        traces = []
        for item in page.items:
            hits = await self.index.find(str(item["id"]), frozenset({item.get("tenant") or ""}), limit=1)
            traces.append(_trace(item, hits[0].record if hits else b"", project))
        return traces, page.next_cursor

    async def list_trackers(self, request: web.Request, principal: Principal | None) -> web.Response:
        assert principal is not None
        try:
            project = self._project(request, principal)
            unknown = sorted(set(request.query) - {"tracker_name", "tracker_type"})
            if unknown:
                raise CtsError(400, "CTS.0001", f"unknown parameter(s): {', '.join(unknown)}")
            name = request.query.get("tracker_name")
            kind = request.query.get("tracker_type")
            if kind not in (None, "system", "data"):
                raise CtsError(400, "CTS.0001", "tracker_type must be system or data")
        except CtsError as exc:
            return cts_error(exc.status, exc.code, exc.message)
        audit_info()["request"] = {"operation": "ListTrackers", "project_id": project}
        trackers = [] if kind == "data" else [_tracker(t, project) for t in self.trackers]
        if name is not None:
            trackers = [t for t in trackers if t["tracker_name"] == name]
        audit_info()["response"] = {"count": len(trackers)}
        return web.json_response({"trackers": trackers}, dumps=lambda o: orjson.dumps(o).decode())


def _int(text: str, name: str) -> int:
    if not (text.isascii() and text.lstrip("-").isdigit()):
        raise CtsError(400, "CTS.0001", f"{name} must be an integer, got {text[:32]!r}")
    return int(text)


def _millis(text: str, name: str) -> dt.datetime:
    value = _int(text, name)
    try:
        return dt.datetime.fromtimestamp(value / 1000, dt.UTC)
    except (OverflowError, OSError, ValueError) as exc:
        raise CtsError(400, "CTS.0001", f"{name} is out of range") from exc


def _matches(fields: dict[str, Any], column: str, value: str) -> bool:
    name = "user_name" if column == "user" else column
    return fields.get(name) == value


def _epoch_ms(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return int(value)
    if isinstance(value, str) and value:
        try:
            return int(dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() * 1000)
        except ValueError:
            return None
    return None


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else orjson.dumps(value).decode()


def _trace(fields: dict[str, Any], raw: bytes, project: str) -> dict[str, Any]:
    """A trace in the fields and types of the SDK's Traces model."""
    try:
        record = loads_record(raw) if raw else None
    except (ValueError, RecursionError):
        record = None
    if not isinstance(record, dict):
        record = {}
    out: dict[str, Any]
    if "trace_name" in record and "service_type" in record:
        out = {k: _text(record.get(k)) for k in _STRINGS}
        out["request"] = _text(record.get("request"))
        out["response"] = _text(record.get("response"))
        user = record.get("user")
        out["user"] = user if isinstance(user, dict) else None
        out["time"] = _epoch_ms(record.get("time"))
        out["record_time"] = _epoch_ms(record.get("record_time"))
        if isinstance(record.get("read_only"), bool):
            out["read_only"] = record["read_only"]
    else:
        # A CloudTrail record in the tenant: its canonical fields under CTS's names.
        out = {
            "trace_id": fields.get("id"),
            "trace_name": fields.get("operation"),
            "service_type": fields.get("service"),
            "resource_type": fields.get("resource_type"),
            "resource_id": fields.get("resource_id"),
            "resource_name": fields.get("resource_name"),
            "source_ip": fields.get("source_ip"),
            "code": fields.get("code"),
            "message": fields.get("error"),
            "trace_rating": fields.get("rating"),
            "trace_type": _text(record.get("eventType")) or "ApiCall",
            "request": _text(record.get("requestParameters")),
            "response": _text(record.get("responseElements")),
            "request_id": _text(record.get("requestID")),
            "location_info": fields.get("region"),
            "user": {
                "id": fields.get("user_id"),
                "name": fields.get("user_name"),
                "domain": {"id": fields.get("account") or project, "name": fields.get("account") or project},
            },
            "time": _epoch_ms(fields.get("time")),
            "record_time": fields.get("received_ms"),
        }
        if isinstance(record.get("readOnly"), bool):
            out["read_only"] = record["readOnly"]
    if out.get("trace_id") is None:
        out["trace_id"] = fields.get("id")
    return {k: v for k, v in out.items() if v is not None}


def _tracker(tracker: TrackerConfig, project: str) -> dict[str, Any]:
    obs: dict[str, Any] = {
        "bucket_name": tracker.store,
        "file_prefix_name": tracker.prefix,
        "is_obs_created": False,
        "compress_type": "gzip",
    }
    if tracker.retention_days is not None:
        obs["bucket_lifecycle"] = tracker.retention_days
    return {
        "id": tracker.name,
        "tracker_name": tracker.name,
        "tracker_type": "system",
        "project_id": project,
        "status": "enabled",
        "is_support_validate": tracker.verify,
        "is_support_trace_files_encryption": False,
        "obs_info": obs,
    }
