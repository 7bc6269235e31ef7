"""The auditor is audited: trailkeeper records its own API use as CTS traces in the trail.

Every query, every admin action (dead-letter replay, reload), every refused
request (401, 403) becomes a trace with ``service_type: trailkeeper`` and goes
through ``Intake.submit`` like any other event, so it is journaled, classified by
the rules, notified and archived. Recording happens before the response is
sent: if the trail cannot take the record, the caller gets 503 and no data.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import orjson

from daemon import telemetry
from daemon.api.auth import Principal
from daemon.events import Decoder, Event
from daemon.intake import Intake
from daemon.telemetry import get_logger

log = get_logger("api.audit")

SERVICE = "trailkeeper"
SOURCE = "audit"


class Auditor:
    """Builds and submits the trace for one API request. ``record`` may raise JournalFull/JournalError."""

    def __init__(self, intake: Intake, tenant: str, writer_id: str = "") -> None:
        self.intake = intake
        self.tenant = tenant
        self.writer_id = writer_id
        self._decoder = Decoder(source=SOURCE)

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
    ) -> dict[str, Any]:
        """A CTS trace (the documented trace structure) describing one API request."""
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
            "time": now,
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
