"""HTTP ingest: ``POST /v1/events``.

Answers 202 only after every accepted event is fsynced in the journal and every
rejected item is fsynced in the quarantine queue. 413 for an oversize body,
415 for an unknown content type, 503 with Retry-After at the journal budget.
403 for a request holding any event of the reserved audit tenant (from any
token) or, from a producer of named tenants, of another tenant: refused whole.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import uuid
from typing import TYPE_CHECKING

from aiohttp import web

from daemon.config import HttpIngestConfig
from daemon.decodepool import DecodePool
from daemon.intake import Intake
from daemon.journal import JournalClosed, JournalError, JournalFull
from daemon.telemetry import HTTP_REQUESTS, get_logger

if TYPE_CHECKING:
    from daemon.api.auth import Principal
    from daemon.api.routes import ApiGuard

log = get_logger("ingest.http")

SOURCE = "http"

_NDJSON_TYPES = {
    "application/x-ndjson",
    "application/ndjson",
    "application/jsonl",
    "application/x-jsonlines",
    "application/jsonlines",
}
_JSON_TYPES = {
    "application/json",
    "application/cloudevents+json",
    "application/cloudevents-batch+json",
}


def _error(status: int, message: str, **extra: object) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


class HttpIngest:
    """The ``POST /v1/events`` handler and its checks."""

    def __init__(
        self, config: HttpIngestConfig, intake: Intake, pool: DecodePool, guard: ApiGuard | None = None
    ) -> None:
        self.config = config
        self.intake = intake
        self.pool = pool
        self.guard = guard
        self._token_hashes = {t.removeprefix("sha256:").lower() for t in config.tokens}

    def add_routes(self, app: web.Application) -> None:
        if self.guard is None:
            app.router.add_post("/v1/events", self.handle)
            return
        # The guard's refusal summaries live as long as this app: the last ones are written
        # at its cleanup, before the journal closes.
        self.guard.auditor.attach(app, self.guard.auth.config.failures)
        # Tokens, roles, tenants, rate limits and the audit of refusals come from the guard.
        app.router.add_post(
            "/v1/events",
            self.guard.protect(
                "ingest", "ingestEvents", "events", self._handle, audit_success=False, route="/v1/events"
            ),
        )

    def _authorised(self, request: web.Request) -> bool:
        if not self._token_hashes:
            return True
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer "):
            return False
        digest = hashlib.sha256(auth[7:].strip().encode()).hexdigest()
        return any(hmac.compare_digest(digest, h) for h in self._token_hashes)

    async def handle(self, request: web.Request) -> web.Response:
        response = await self._handle(request)
        HTTP_REQUESTS.labels(route="/v1/events", code=str(response.status)).inc()
        return response

    async def _handle(self, request: web.Request, principal: Principal | None = None) -> web.Response:
        if self.guard is None and not self._authorised(request):
            return _error(401, "a producer bearer token is required (Authorization: Bearer ...)")
        ctype = request.content_type.lower() if "Content-Type" in request.headers else ""
        if ctype in _NDJSON_TYPES:
            ndjson: bool | None = True
        elif ctype in _JSON_TYPES or ctype in ("", "application/octet-stream", "text/plain"):
            ndjson = None  # auto-detect
        else:
            return _error(
                415,
                f"unsupported content type {ctype!r}",
                accepted_types=sorted(_JSON_TYPES | _NDJSON_TYPES),
            )
        if request.content_length is not None and request.content_length > self.config.max_body_bytes:
            return self._too_large()
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return self._too_large()
        if not body.strip():
            return _error(400, "empty body: send a JSON event, an array, a CloudTrail envelope or NDJSON")
        ref = request.headers.get("X-Request-Id") or uuid.uuid4().hex
        decoded = await self.pool.decode(body, ndjson, self.config.max_event_bytes, SOURCE, ref)
        reserved = self.intake.reserved_tenant
        forged = [
            {"index": i, "tenant": tenant, "reason": "reserved"}
            for i, tenant in enumerate(decoded.tenants)
            if tenant == reserved
        ]
        if forged:
            # Whoever sends them, "*" and admin tokens included: only trailkeeper itself writes
            # into the audit tenant, so none of its records can be forged. Refused whole, like
            # the foreign-tenant refusal below; ``index`` as there.
            return _error(
                403,
                f"{self.intake.reserved_detail()}; {len(forged)} event(s) claim it "
                "and nothing from this request was written",
                items=forged[:100],
            )
        if principal is not None and principal.tenants is not None:
            foreign = [
                {"index": i, "tenant": tenant}
                for i, tenant in enumerate(decoded.tenants)
                if not principal.sees(tenant)
            ]
            if foreign:
                # Refused whole: a producer never gets part of a batch accepted behind its back.
                # ``index`` is the event's position among the request's accepted events.
                return _error(
                    403,
                    f"token {principal.name!r} may only send events of tenants "
                    f"{sorted(principal.tenants)}; {len(foreign)} event(s) belong to others "
                    "and nothing from this request was written",
                    items=foreign[:100],
                )
        try:
            await self.intake.submit_decoded(decoded, SOURCE)
        except JournalFull as exc:
            retry = max(1, math.ceil(self.config.retry_after))
            return web.json_response(
                {"error": str(exc), "retry_after": retry},
                status=503,
                headers={"Retry-After": str(retry)},
            )
        except (JournalClosed, JournalError) as exc:
            return web.json_response(
                {"error": f"journal unavailable: {exc}"}, status=503, headers={"Retry-After": "5"}
            )
        rejected = [
            {"index": index, "reason": f"{reason}: {detail}"} for index, reason, detail in decoded.rejected
        ]
        status = 400 if decoded.accepted == 0 and rejected else 202
        return web.json_response(
            {"accepted": decoded.accepted, "rejected": rejected, "request_id": ref}, status=status
        )

    def _too_large(self) -> web.Response:
        return _error(
            413,
            f"request body over {self.config.max_body_bytes} bytes (ingest.http.max_body_bytes); "
            "send smaller batches",
        )
