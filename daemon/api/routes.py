"""The query API and the access-control guard every protected route goes through.

``ApiGuard.protect`` wraps a handler with, in order: authentication (401),
the per-token rate limit (429 with Retry-After), the role check (403), the
handler (which checks tenants itself: 403), and the audit record. Other
components add their admin routes (dead-letter replay, reload) with
``guard.protect("admin", "replayDeadLetters", "dlq", handler)``: they are then
authorised, rate limited and audited like these.
"""

from __future__ import annotations

import contextvars
import functools
import math
import time
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

import orjson
import yaml
from aiohttp import web
from multidict import MultiMapping

from daemon import telemetry
from daemon.api import hwsign, sigv4
from daemon.api.audit import Auditor
from daemon.api.auth import Action, Authenticator, AuthFailure, Principal, RateLimiter
from daemon.api.errors import error_response
from daemon.api.params import ParameterError, Spec, index_time
from daemon.events import loads_record
from daemon.index.base import IndexBackend, IndexUnavailable, StoredEvent
from daemon.index.query import Query, QueryError
from daemon.journal import JournalError
from daemon.telemetry import get_logger

log = get_logger("api")

Handler = Callable[[web.Request, Principal | None], Awaitable[web.Response]]
# Integrity's hook: the inclusion proof of an archived event, or None when not yet provable.
ProofProvider = Callable[[StoredEvent], Awaitable[dict[str, Any] | None]]

# What a handler wants its audit record to say; set per request by the guard. A context
# variable rather than request storage: the handler runs in the guard's task.
_AUDIT_INFO: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar("tk_audit_info")


def audit_info() -> dict[str, Any]:
    """The audit details of the request being handled (request, response, resource_id)."""
    try:
        return _AUDIT_INFO.get()
    except LookupError:
        info: dict[str, Any] = {}
        _AUDIT_INFO.set(info)
        return info


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(body), status=status, content_type="application/json", headers=headers
    )


def error(status: int, message: str, headers: dict[str, str] | None = None, **extra: Any) -> web.Response:
    """The documented Error body; see daemon.api.errors."""
    return error_response(status, message, headers, **extra)


def refusal_message(response: web.StreamResponse) -> str | None:
    """The message of one of the guard's own refusals (``{"error": ...}``), else None.

    For APIs that answer in another service's error form (CloudTrail's, CTS's).
    """
    if response.status < 400 or not isinstance(response, web.Response) or response.body is None:
        return None
    try:
        doc = orjson.loads(bytes(response.body))  # type: ignore[arg-type]
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict) or "error" not in doc:
        return None
    return str(doc["error"])


def load_openapi() -> dict[str, Any]:
    """The OpenAPI document kept in the repository (daemon/api/openapi.yaml)."""
    text = resources.files("daemon.api").joinpath("openapi.yaml").read_text(encoding="utf-8")
    doc: dict[str, Any] = yaml.safe_load(text)
    return doc


@functools.cache
def api_spec() -> Spec:
    """The operations of the OpenAPI document, which parse query parameters and bodies."""
    return Spec(load_openapi())


# How much of each query parameter an audit record keeps: a request line may hold 128 KiB,
# which escaped in JSON could exceed what one trail event may be (max_event_bytes).
_AUDIT_PARAMS = 32
_AUDIT_CHARS = 512


def audit_params(query: MultiMapping[str]) -> dict[str, str]:
    """The query parameters for an audit record: the first value of each, cut to a bounded size."""
    out: dict[str, str] = {}
    for name in query:
        if len(out) >= _AUDIT_PARAMS:
            break
        out.setdefault(name[:_AUDIT_CHARS], query.getone(name)[:_AUDIT_CHARS])
    return out


class ApiGuard:
    """Authentication, rate limits, roles and the audit record, for one route at a time."""

    def __init__(self, auth: Authenticator, auditor: Auditor, limiter: RateLimiter | None = None) -> None:
        self.auth = auth
        self.auditor = auditor
        self.limiter = limiter or RateLimiter()

    def protect(
        self,
        action: Action,
        operation: str,
        resource_type: str,
        handler: Handler,
        *,
        audit_success: bool = True,
        route: str | None = None,
    ) -> Callable[[web.Request], Awaitable[web.Response]]:
        """Wrap ``handler``. With ``audit_success`` every outcome is recorded, else only refusals.

        A handler may fill ``audit_info()`` with ``request``, ``response`` and
        ``resource_id`` to enrich its record.
        """

        async def wrapped(request: web.Request) -> web.Response:
            started = time.perf_counter()
            response = await self._guarded(request, action, operation, resource_type, handler, audit_success)
            label = route or (
                request.match_info.route.resource.canonical if request.match_info.route.resource else ""
            )
            telemetry.HTTP_REQUESTS.labels(route=label, code=str(response.status)).inc()
            if action == "read":
                telemetry.QUERY_SECONDS.labels(route=label).observe(time.perf_counter() - started)
            return response

        return wrapped

    async def _guarded(
        self,
        request: web.Request,
        action: Action,
        operation: str,
        resource_type: str,
        handler: Handler,
        audit_success: bool,
    ) -> web.Response:
        if action == "ingest" and self.auth.open_ingest:
            return await handler(request, None)
        address = self.auth.client_address(request.remote, request.headers.getall("X-Forwarded-For", []))
        header = request.headers.get("Authorization")
        if sigv4.is_sigv4(header) or hwsign.is_hwsign(header):
            assert header is not None
            # SigV4 signs the body: read it here (aiohttp keeps it for the handler).
            found = self.auth.authenticate_signed(
                header,
                request.method,
                request.rel_url.raw_path,
                request.rel_url.raw_query_string,
                list(request.headers.items()),
                await request.read(),
            )
        else:
            found = self.auth.authenticate(header)
        if isinstance(found, AuthFailure):
            # A valid token never gets here: the failure buckets only ever slow failures.
            wait = self.auth.throttle(found, address)
            if wait > 0:
                telemetry.AUTH_DENIED.labels(reason="throttled").inc()
                retry = max(1, math.ceil(wait))
                message = f"too many failed authentications; retry after {retry} s"
                await self._record_refusal(
                    request,
                    "authenticate",
                    found.principal,
                    429,
                    resource_type,
                    message,
                    attempted=operation,
                    kind="throttled",
                    address=address,
                    token_digest=found.digest,
                )
                return error(429, message, {"Retry-After": str(retry)}, retry_after=retry)
            telemetry.AUTH_DENIED.labels(reason=found.reason).inc()
            await self._record_refusal(
                request,
                "authenticate",
                found.principal,
                401,
                resource_type,
                found.detail or found.message,
                attempted=operation,
                kind=found.reason,
                address=address,
                token_digest=found.digest,
            )
            return error(401, found.message, {"WWW-Authenticate": 'Bearer realm="trailkeeper"'})
        principal = found
        wait = self.limiter.take(principal.name, principal.rate_limit)
        if wait > 0:
            telemetry.AUTH_DENIED.labels(reason="rate_limited").inc()
            retry = max(1, math.ceil(wait))
            message = f"token {principal.name!r} is over its rate limit; retry after {retry} s"
            await self._record_refusal(
                request,
                operation,
                principal,
                429,
                resource_type,
                message,
                kind="rate_limited",
                address=address,
            )
            return error(429, message, {"Retry-After": str(retry)}, retry_after=retry)
        if not principal.may(action):
            telemetry.AUTH_DENIED.labels(reason="role").inc()
            message = f"role {principal.role!r} of token {principal.name!r} may not {action} ({operation})"
            await self._record_refusal(
                request, operation, principal, 403, resource_type, message, address=address
            )
            return error(403, message)
        info: dict[str, Any] = {}
        _AUDIT_INFO.set(info)
        response = await handler(request, principal)
        if response.status == 403:
            telemetry.AUTH_DENIED.labels(reason="tenant").inc()
        if not (audit_success or response.status in (401, 403)):
            return response
        trace = self.auditor.trace(
            operation=operation,
            principal=principal,
            source_ip=address,
            code=response.status,
            resource_type=resource_type,
            resource_name=request.path,
            resource_id=info.get("resource_id"),
            request=info.get("request", {"method": request.method, "query": dict(request.query)}),
            response=info.get("response"),
        )
        try:
            await self.auditor.record(trace)
        except JournalError as exc:
            # No audit record, no answer: an unrecorded query must not disclose anything.
            return error(
                503,
                f"the request could not be recorded in the audit trail ({exc}); retry later",
                {"Retry-After": "5"},
            )
        return response

    async def _record_refusal(
        self,
        request: web.Request,
        operation: str,
        principal: Principal | None,
        code: int,
        resource_type: str,
        message: str,
        attempted: str | None = None,
        *,
        kind: str | None = None,
        address: str | None = None,
        token_digest: str | None = None,
    ) -> None:
        """Audit a refusal. With ``kind`` (401s and 429s: anyone can cause them in bulk) it is
        summarised per source and window by the Auditor; otherwise recorded on its own."""
        source_ip = address if address is not None else request.remote
        details = {"method": request.method, **({"operation": attempted} if attempted else {})}
        if kind is not None:
            await self.auditor.refused(
                kind=kind,
                operation=operation,
                principal=principal,
                source_ip=source_ip or "",
                resource_type=resource_type,
                resource_name=request.path,
                request=details,
                message=message,
                token_digest=token_digest,
            )
            return
        trace = self.auditor.trace(
            operation=operation,
            principal=principal,
            source_ip=source_ip,
            code=code,
            resource_type=resource_type,
            resource_name=request.path,
            request=details,
            message=message,
        )
        try:
            await self.auditor.record(trace)
        except JournalError as exc:
            # The refusal stands either way; losing its record is logged loudly.
            log.error("audit.refusal_not_recorded", operation=operation, code=code, error=str(exc))


class QueryApi:
    """``GET /v1/events``, ``GET /v1/events/{id}`` and ``GET /openapi.json``."""

    def __init__(self, index: IndexBackend, guard: ApiGuard, proof: ProofProvider | None = None) -> None:
        self.index = index
        self.guard = guard
        self.proof = proof
        self._openapi = orjson.dumps(load_openapi())

    def add_routes(self, app: web.Application) -> None:
        g = self.guard
        app.router.add_get(
            "/v1/events", g.protect("read", "queryEvents", "events", self.list_events, route="/v1/events")
        )
        app.router.add_get(
            "/v1/events/{event_id}",
            g.protect("read", "getEvent", "event", self.get_event, route="/v1/events/{event_id}"),
        )
        app.router.add_get("/openapi.json", self.openapi)

    async def openapi(self, _request: web.Request) -> web.Response:
        return web.Response(body=self._openapi, content_type="application/json")

    async def list_events(self, request: web.Request, principal: Principal | None) -> web.Response:
        """A page of events. Parameters are checked against the document (400 names the one
        at fault, and is audited like every outcome); so is start at or after end."""
        assert principal is not None
        info = audit_info()
        info["request"] = {"method": "GET", "filters": audit_params(request.query)}
        try:
            given = api_spec()["queryEvents"].parse_query(request.query)
            params = {name: str(value) for name, value in given.items()}
            for bound in ("start", "end"):
                if bound in params:
                    params[bound] = index_time(params[bound])
            query = Query.from_params(params, principal.tenants)
        except (ParameterError, QueryError) as exc:
            return error(400, str(exc))
        wanted = query.filters.get("tenant")
        if wanted is not None and not principal.sees(wanted):
            return error(403, f"token {principal.name!r} may not read tenant {wanted!r}")
        try:
            page = await self.index.search(query)
        except IndexUnavailable as exc:
            log.error("api.query_failed", error=str(exc))
            return error(503, f"the query index is unavailable: {exc}", {"Retry-After": "5"})
        info["response"] = {"count": len(page.items), "more": page.next_cursor is not None}
        return _json(200, {"events": page.items, "next_cursor": page.next_cursor})

    async def get_event(self, request: web.Request, principal: Principal | None) -> web.Response:
        """One event by id, looked up only among the caller's tenants.

        An id that is unknown and an id that exists only in other tenants get the same
        404 body through the same single lookup, so neither the answer nor its timing
        says whether another tenant has the id. The same id in several of the caller's
        tenants (an admin sees them all) is 409 listing those tenants; ``?tenant=`` picks
        one (empty: the event without a tenant). A ``tenant`` the caller may not read is
        403 before any lookup, like a foreign tenant filter on ``GET /v1/events``.
        """
        assert principal is not None
        event_id = request.match_info["event_id"]
        info = audit_info()
        asked = request.query.getall("tenant", [])
        info.update(
            resource_id=event_id[:512],
            request={
                "method": "GET",
                "event_id": event_id[:512],
                **({"tenant": asked[0][:512]} if len(asked) == 1 else {}),
            },
        )
        if len(asked) > 1:
            return error(400, f"tenant: given {len(asked)} times; give it once")
        scope = principal.tenants
        if asked:
            wanted = asked[0]
            if not principal.sees(wanted or None):
                return error(403, f"token {principal.name!r} may not read tenant {wanted!r}")
            scope = frozenset({wanted})
        try:
            found = await self.index.find(event_id, scope)
        except IndexUnavailable as exc:
            log.error("api.get_failed", error=str(exc))
            return error(503, f"the query index is unavailable: {exc}", {"Retry-After": "5"})
        if not found:
            return error(404, f"no event {event_id[:512]!r} in the index (it holds recent events only)")
        if len(found) > 1:
            tenants = [s.fields.get("tenant") for s in found]
            info["response"] = {"found": len(found), "tenants": tenants}
            return error(
                409,
                f"event id {event_id[:512]!r} exists in {len(found)} tenants; "
                "choose one with ?tenant=<tenant>",
                tenants=tenants,
            )
        stored = found[0]
        proof = await self.proof(stored) if self.proof is not None else None
        try:
            record: Any = loads_record(stored.record)
        except (ValueError, RecursionError):
            record = None
        fields = stored.fields
        body = {
            "event": {k: v for k, v in fields.items() if k not in ("category", "severity", "rules")},
            "classification": {
                "category": fields.get("category"),
                "severity": fields.get("severity"),
                "rules": fields.get("rules", []),
            },
            "record": record,
            "record_text": stored.record.decode("utf-8", errors="replace"),
            "journal_offset": stored.journal_offset,
            "source": stored.source,
            "archive": [loc.to_dict() for loc in stored.locations],
            "proof": proof,
        }
        info["response"] = {"found": True}
        try:
            data = orjson.dumps(body)
        except TypeError:
            # What orjson cannot write but a producer can send: a lone surrogate ("\ud800",
            # written back as that escape) or an integer over 64 bits. The stdlib writes
            # both as valid JSON; a value it cannot (a float that overflowed to infinity)
            # leaves only ``record_text``, the record exactly as stored.
            import json

            try:
                data = json.dumps(body, ensure_ascii=True, allow_nan=False).encode()
            except (ValueError, TypeError, RecursionError):
                body["record"] = None
                data = orjson.dumps(body)
        return web.Response(body=data, status=200, content_type="application/json")
