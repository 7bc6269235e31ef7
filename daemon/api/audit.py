"""The auditor is audited: trailkeeper records its own API use as CTS traces in the trail.

Every query, every admin action (dead-letter replay, reload), every refused
request (401, 403, 429) becomes a trace with ``service_type: trailkeeper`` and
goes through ``Intake.submit`` like any other event, so it is journaled,
classified by the rules, notified and archived. These records carry the source
``trailkeeper`` (``SOURCE``) and the audit tenant, which no producer can write.
Recording happens before the response is sent: if the trail cannot take the
record of a query, the caller gets 503 and no data.

Refusals that anyone can cause in bulk (401: no, unknown or expired token; 429:
throttled failures and tokens over their rate limit) are summarised so that a
flood costs bounded journal space: refusals are grouped per (source address,
kind, token name) in windows of ``auth.failures.audit_window``. The first
``audit_first`` of a window are recorded one by one, at once (operation
``authenticate`` for 401 and throttled 429, the attempted operation for a
token over its limit); when the window closes, one ``authFailureSummary``
event carries the window's ``count`` (every refusal of it, the ones recorded
one by one included), ``recorded_individually``, ``first`` and ``last``. At most
``audit_max_sources`` windows are open at once; refusals from further addresses
are only counted, in one window per kind for every other address. Open windows
are summarised at shutdown, so no count is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from daemon import telemetry
from daemon.api.auth import FailureConfig, Principal
from daemon.api.throttle import source_key
from daemon.events import Decoder, Event
from daemon.intake import AUDIT_SOURCE, Intake
from daemon.journal import JournalError
from daemon.telemetry import get_logger

log = get_logger("api.audit")

SERVICE = "trailkeeper"
SOURCE = AUDIT_SOURCE
SUMMARY_OPERATION = "authFailureSummary"
# The kinds of refusal that are summarised, and the status each is answered with.
SUMMARISED: dict[str, int] = {
    "no_token": 401,
    "bad_token": 401,
    "expired_token": 401,
    "throttled": 429,
    "rate_limited": 429,
}
OTHER_SOURCES = "*"
# Distinct addresses and unknown tokens a window counts at most (each costs memory).
_DISTINCT_CAP = 100
_OPERATIONS_CAP = 32


def _iso_ms(ms: int) -> str:
    return (
        dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )


@dataclass(slots=True)
class _Window:
    """The refusals of one (source, kind, token name) since ``opened``."""

    kind: str
    code: int
    source: str  # the source key (an address, an IPv6 /64, or OTHER_SOURCES)
    source_ip: str  # the first address seen
    principal: Principal | None
    opened: float
    first_ms: int
    first_individual: int  # how many may be recorded one by one
    last_ms: int = 0
    count: int = 0
    individually: int = 0
    operations: dict[str, int] = field(default_factory=dict)
    addresses: set[str] = field(default_factory=set)
    tokens: set[str] = field(default_factory=set)
    tokens_capped: bool = False
    addresses_capped: bool = False

    def add(self, now_ms: int, address: str, operation: str, digest: str | None) -> None:
        self.count += 1
        self.last_ms = now_ms
        if operation in self.operations or len(self.operations) < _OPERATIONS_CAP:
            self.operations[operation] = self.operations.get(operation, 0) + 1
        if address not in self.addresses:
            if len(self.addresses) < _DISTINCT_CAP:
                self.addresses.add(address)
            else:
                self.addresses_capped = True
        # A digest prefix tells tokens apart well enough, in a quarter of the memory.
        tag = digest[:16] if digest is not None else None
        if tag is not None and tag not in self.tokens:
            if len(self.tokens) < _DISTINCT_CAP:
                self.tokens.add(tag)
            else:
                self.tokens_capped = True


class Auditor:
    """Builds and submits the trace for one API request. ``record`` may raise JournalFull/JournalError.

    Also claims its tenant on the intake: from then on no source may write into it.
    """

    def __init__(
        self,
        intake: Intake,
        tenant: str,
        writer_id: str = "",
        *,
        failures: FailureConfig | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.intake = intake
        self.tenant = tenant
        self.writer_id = writer_id
        self._decoder = Decoder(source=SOURCE)
        intake.reserve_tenant(tenant)
        self.failures = failures or FailureConfig()
        self._clock = clock
        # Insertion order is opening order: the oldest window is always first.
        self._windows: dict[tuple[str, str, str], _Window] = {}
        self._unwritten: list[dict[str, Any]] = []
        self._task: asyncio.Task[None] | None = None
        self._attached = False

    def trace(
        self,
        *,
        operation: str,
        principal: Principal | None,
        source_ip: str | None,
        code: int,
        resource_type: str,
        resource_name: str,
        resource_id: str | None = None,
        request: dict[str, Any] | None = None,
        response: dict[str, Any] | None = None,
        message: str | None = None,
        time_ms: int | None = None,
    ) -> dict[str, Any]:
        """A CTS trace (the documented trace structure) describing one API request.

        ``time_ms``: when it happened, if not now (a summary's window start).
        """
        now = int(time.time() * 1000)
        user: dict[str, Any] = (
            {"type": "token", "name": principal.name, "id": f"token:{principal.name}", "role": principal.role}
            if principal is not None
            else {"type": "anonymous", "name": "anonymous"}
        )
        user["domain"] = {"id": self.tenant, "name": self.tenant}
        trace: dict[str, Any] = {
            "trace_id": str(uuid.uuid4()),
            "trace_name": operation,
            "trace_rating": "normal" if code < 400 else "warning",
            "trace_type": "ApiCall",
            "service_type": SERVICE,
            "resource_type": resource_type,
            "resource_name": resource_name,
            "resource_id": resource_id,
            "source_ip": source_ip or "",
            "time": time_ms if time_ms is not None else now,
            "record_time": now,
            "code": str(code),
            "user": user,
            "project_id": self.tenant,
            "request": request or {},
            "response": response or {},
        }
        if self.writer_id:
            trace["location_info"] = self.writer_id
        if message:
            trace["message"] = message
        return trace

    async def record(self, trace: dict[str, Any]) -> Event:
        """Make the trace durable in the journal; returns the event. May raise JournalFull."""
        items = self._decoder.decode(orjson.dumps(trace))
        event = items[0] if len(items) == 1 else None
        if not isinstance(event, Event):
            # Built here from fixed fields: a refusal is a bug in this module, not bad input.
            raise RuntimeError(f"audit trace was not accepted by the decoder: {items!r}")
        try:
            await self.intake.submit([event], SOURCE, trace["trace_id"])
        except Exception:
            telemetry.AUDIT_EVENTS.labels(outcome="failed").inc()
            log.error("audit.record_failed", operation=trace["trace_name"], code=trace["code"])
            raise
        telemetry.AUDIT_EVENTS.labels(outcome="recorded").inc()
        return event

    # --- refusals, summarised -------------------------------------------------------------------

    async def refused(
        self,
        *,
        kind: str,
        operation: str,
        principal: Principal | None,
        source_ip: str,
        resource_type: str,
        resource_name: str,
        request: dict[str, Any],
        message: str,
        token_digest: str | None = None,
    ) -> None:
        """Audit one refused request of a ``SUMMARISED`` kind: at once, or in its window's summary.

        Never raises: the refusal stands either way; a record the journal cannot take is
        logged, and then counted in the summary instead.
        """
        code = SUMMARISED[kind]
        await self.close_expired()
        now = self._clock()
        now_ms = int(time.time() * 1000)
        attempted = str(request.get("operation") or operation)
        window = self._window(kind, code, source_ip, principal, now, now_ms)
        window.add(now_ms, source_ip, attempted, token_digest)
        if window.individually >= window.first_individual:
            telemetry.AUDIT_REFUSALS_SUMMARISED.labels(kind=kind).inc()
            return
        window.individually += 1
        trace = self.trace(
            operation=operation,
            principal=principal,
            source_ip=source_ip,
            code=code,
            resource_type=resource_type,
            resource_name=resource_name,
            request={**request, "kind": kind},
            message=message,
        )
        try:
            await self.record(trace)
        except JournalError as exc:
            # Not recorded on its own: the window's summary counts it instead.
            window.individually -= 1
            log.error("audit.refusal_not_recorded", operation=operation, code=code, error=str(exc))

    def _window(
        self, kind: str, code: int, source_ip: str, principal: Principal | None, now: float, now_ms: int
    ) -> _Window:
        name = principal.name if principal is not None else ""
        key = (source_key(source_ip), kind, name)
        window = self._windows.get(key)
        if window is not None:
            return window
        first = self.failures.audit_first
        if len(self._windows) >= self.failures.audit_max_sources:
            # Too many sources at once (an attacker rotating addresses): the rest share one
            # window per kind, with no record of their own, so the journal cost stays bounded.
            key = (OTHER_SOURCES, kind, "")
            window = self._windows.get(key)
            if window is not None:
                return window
            first, source_ip, principal = 0, "", None
        window = _Window(kind, code, key[0], source_ip, principal, now, now_ms, first)
        self._windows[key] = window
        telemetry.AUDIT_REFUSAL_WINDOWS.set(len(self._windows))
        return window

    def _summary(self, w: _Window) -> dict[str, Any]:
        request: dict[str, Any] = {
            "kind": w.kind,
            "count": w.count,
            "recorded_individually": w.individually,
            "first": _iso_ms(w.first_ms),
            "last": _iso_ms(w.last_ms),
            "window_seconds": self.failures.audit_window,
            "source": w.source,
            "operations": w.operations,
            "distinct_addresses": len(w.addresses),
        }
        if w.addresses_capped:
            request["distinct_addresses_capped"] = True
        if w.tokens:
            request["distinct_tokens"] = len(w.tokens)
            if w.tokens_capped:
                request["distinct_tokens_capped"] = True
        who = w.source if w.source != OTHER_SOURCES else "other addresses"
        token = f" with token {w.principal.name!r}" if w.principal is not None else ""
        message = (
            f"{w.count} request(s) from {who}{token} refused ({w.kind}, {w.code}) "
            f"between {request['first']} and {request['last']}"
        )
        return self.trace(
            operation=SUMMARY_OPERATION,
            principal=w.principal,
            source_ip=w.source_ip,
            code=w.code,
            resource_type="api",
            resource_name="authentication",
            request=request,
            message=message,
            time_ms=w.first_ms,
        )

    async def close_expired(self, *, all_windows: bool = False) -> None:
        """Summarise every window older than ``audit_window`` (every window with ``all_windows``)."""
        if not self._windows and not self._unwritten:
            return
        deadline = self._clock() - self.failures.audit_window
        closing: list[_Window] = []
        # Popped before any await: two callers never summarise the same window.
        while self._windows:
            key, window = next(iter(self._windows.items()))
            if not all_windows and window.opened > deadline:
                break
            del self._windows[key]
            closing.append(window)
        telemetry.AUDIT_REFUSAL_WINDOWS.set(len(self._windows))
        pending, self._unwritten = self._unwritten, []
        pending += [self._summary(w) for w in closing if w.count > w.individually]
        for i, trace in enumerate(pending):
            try:
                await self.record(trace)
            except JournalError as exc:
                # Kept (bounded: one per window) and retried at the next tick.
                rest = pending[i:]
                self._unwritten = rest[-(self.failures.audit_max_sources + len(SUMMARISED)) :]
                log.error("audit.summary_deferred", summaries=len(rest), error=str(exc))
                return

    async def close(self) -> None:
        """Summarise every open window now (shutdown); what the journal cannot take is logged."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.close_expired(all_windows=True)
        for trace in self._unwritten:
            # The last resort: the counts reach the operator's log rather than nowhere.
            log.error("audit.summary_lost", trace=trace)
        self._unwritten = []

    async def _summarise(self) -> None:
        tick = max(0.05, min(1.0, self.failures.audit_window / 10))
        while True:
            await asyncio.sleep(tick)
            try:
                await self.close_expired()
            except Exception as exc:  # the loop must outlive any one bad write
                log.error("audit.summary_failed", error=str(exc))

    def attach(self, app: web.Application, failures: FailureConfig | None = None) -> None:
        """Summarise refusals for as long as ``app`` runs (idempotent).

        A background task closes windows as they expire, and the app's cleanup, which
        runs before the journal closes, summarises the windows still open. Without it,
        expired windows are closed at the next refusal and ``close`` must be called.
        """
        if failures is not None:
            self.failures = failures
        if self._attached:
            return
        self._attached = True

        async def lifetime(_app: web.Application) -> AsyncIterator[None]:
            self._task = asyncio.create_task(self._summarise(), name="audit-summaries")
            yield
            await self.close()

        app.cleanup_ctx.append(lifetime)
