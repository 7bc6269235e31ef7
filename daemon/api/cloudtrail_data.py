"""CloudTrail Lake's ``PutAuditEvents`` as an ingest path, as ``aws cloudtrail-data`` and the
SDKs call it: applications integrated with CloudTrail Lake can send their events here.

``POST /PutAuditEvents?channelArn=...[&externalId=...]`` (AWS REST-JSON), SigV4-signed by an
access key with the producer (or admin) role. The body holds up to 100 ``auditEvents``, each
``{"id", "eventData", "eventDataChecksum"?}`` where ``eventData`` is a JSON string in Lake's
integration schema (``version``, ``UID``, ``eventSource``, ``eventName``, ``eventTime``,
``userIdentity``, ``recipientAccountId``, ...).

Each event is stored as a CloudTrail record: every field of ``eventData`` as sent, plus
``eventID`` (derived from the channel and ``UID``, so a retried call stores nothing twice),
``eventVersion``, ``eventCategory``/``eventType`` ``ActivityAuditEvent`` and the
``channelArn``. As on ``POST /v1/events``, the answer comes after fsync; an event of a tenant
the key may not send (or of the audit tenant) refuses the whole call (403) and nothing is
written; an event that is not a JSON object, misses fields or fails its checksum is listed
under ``failed`` with its ``id`` and, except for a checksum mismatch (the bytes are not what
the caller meant), quarantined with its reason.
"""

from __future__ import annotations

import hashlib
import math
import uuid
from typing import Any

import orjson
from aiohttp import web

from daemon.api.auth import Principal
from daemon.api.cloudtrail import aws_error
from daemon.api.routes import ApiGuard, audit_info
from daemon.decodepool import Decoded, DecodePool
from daemon.events import QuarantineItem, now_ms
from daemon.intake import Intake
from daemon.journal import JournalClosed, JournalError, JournalFull
from daemon.telemetry import get_logger

log = get_logger("api.cloudtrail_data")

SOURCE = "cloudtrail-data"
ROUTE = "/PutAuditEvents"
MAX_EVENTS = 100  # the API's own limit per call
# Stable: an eventID derived from (channel, UID) must not change between versions.
_ID_NAMESPACE = uuid.UUID("8c1f1f8e-9d55-4c8e-8f5d-3c2b7f0b7a11")
_REQUIRED = ("version", "UID", "eventSource", "eventName", "eventTime", "userIdentity", "recipientAccountId")


def _json(status: int, body: dict[str, Any]) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def record_of(event_data: dict[str, Any], channel_arn: str) -> dict[str, Any]:
    """The CloudTrail record stored for one Lake event: its fields as sent, plus identity."""
    uid = str(event_data.get("UID", ""))
    return {
        **event_data,
        "eventVersion": str(event_data.get("version", "1.0")),
        "eventID": str(uuid.uuid5(_ID_NAMESPACE, f"{channel_arn}\n{uid}")),
        "eventCategory": "ActivityAuditEvent",
        "eventType": "ActivityAuditEvent",
        "channelArn": channel_arn,
    }


class CloudTrailDataApi:
    """``POST /PutAuditEvents``."""

    def __init__(
        self, intake: Intake, pool: DecodePool, guard: ApiGuard, max_event_bytes: int, retry_after: float
    ) -> None:
        self.intake = intake
        self.pool = pool
        self.max_event_bytes = max_event_bytes
        self.retry_after = retry_after
        self._put = guard.protect("ingest", "PutAuditEvents", "events", self.put_audit_events, route=ROUTE)

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post(ROUTE, self.handle)

    async def handle(self, request: web.Request) -> web.Response:
        response = await self._put(request)
        if (
            response.status >= 400
            and response.content_type == "application/json"
            and response.body is not None
        ):
            # The guard's refusals (authentication, role, rate limit), in AWS's error form.
            try:
                message = str(orjson.loads(bytes(response.body)).get("error", ""))  # type: ignore[arg-type]
            except (orjson.JSONDecodeError, AttributeError):
                message = ""
            kind = {
                401: "UnrecognizedClientException",
                403: "AccessDeniedException",
                429: "ThrottlingException",
            }
            fixed = aws_error(response.status, kind.get(response.status, "InternalFailure"), message)
            if "Retry-After" in response.headers:
                fixed.headers["Retry-After"] = response.headers["Retry-After"]
            return fixed
        return response

    async def put_audit_events(self, request: web.Request, principal: Principal | None) -> web.Response:
        channel = request.query.get("channelArn", "")
        if not channel:
            return aws_error(400, "ChannelARNInvalidException", "channelArn is required")
        body = await request.read()
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            return aws_error(400, "SerializationException", f"the body is not JSON: {exc}")
        events = doc.get("auditEvents") if isinstance(doc, dict) else None
        if not isinstance(events, list) or not 1 <= len(events) <= MAX_EVENTS:
            return aws_error(400, "ValidationException", f"auditEvents must list 1 to {MAX_EVENTS} events")
        audit_info()["request"] = {"channelArn": channel[:512], "events": len(events)}
        failed: list[dict[str, str]] = []
        lines: list[bytes] = []
        ids: list[str] = []  # the caller's id of each line sent to the decoder
        bad: list[tuple[bytes, str, int]] = []  # (eventData, why, position) to quarantine
        for n, item in enumerate(events):
            if not isinstance(item, dict) or not isinstance(item.get("id"), str) or not item["id"]:
                return aws_error(400, "ValidationException", f"auditEvents[{n}] needs an id")
            data = item.get("eventData")
            if not isinstance(data, str):
                return aws_error(
                    400, "ValidationException", f"auditEvents[{n}].eventData must be a JSON string"
                )
            checksum = item.get("eventDataChecksum")
            if checksum is not None and checksum != hashlib.sha256(data.encode()).hexdigest():
                failed.append(
                    {
                        "id": item["id"],
                        "errorCode": "InvalidChecksum",
                        "errorMessage": "eventDataChecksum does not match",
                    }
                )
                continue
            try:
                parsed = orjson.loads(data)
            except orjson.JSONDecodeError:
                parsed = None
            missing = [k for k in _REQUIRED if k not in parsed] if isinstance(parsed, dict) else []
            if not isinstance(parsed, dict) or missing:
                why = f"eventData lacks {', '.join(missing)}" if missing else "eventData is not a JSON object"
                failed.append({"id": item["id"], "errorCode": "InvalidEventData", "errorMessage": why})
                # Kept with its reason: the caller sent it, and it may matter.
                bad.append((data.encode(), why, n))
                continue
            lines.append(orjson.dumps(record_of(parsed, channel)))
            ids.append(item["id"])
        decoded = (
            await self.pool.decode(b"\n".join(lines), True, self.max_event_bytes, SOURCE, channel[:200])
            if lines
            else Decoded([], 0)
        )
        reserved = self.intake.reserved_tenant
        if any(t == reserved for t in decoded.tenants):
            return aws_error(403, "AccessDeniedException", self.intake.reserved_detail())
        if principal is not None and principal.tenants is not None:
            foreign = sorted({str(t) for t in decoded.tenants if not principal.sees(t)})
            if foreign:
                return aws_error(
                    403,
                    "AccessDeniedException",
                    f"access key {principal.name!r} may only send events of tenants "
                    f"{sorted(principal.tenants)}; "
                    f"recipientAccountId {', '.join(foreign[:5])} is not one, and nothing was written",
                )
        try:
            if lines:
                await self.intake.submit_decoded(decoded, SOURCE)
            for raw, why, position in bad:
                await self.intake.quarantine(
                    QuarantineItem(raw, "invalid_event_data", why, SOURCE, now_ms(), position, channel[:200])
                )
        except JournalFull as exc:
            return aws_error(
                503, "ServiceUnavailableException", f"{exc}; retry in {math.ceil(self.retry_after)} s"
            )
        except (JournalClosed, JournalError) as exc:
            return aws_error(503, "ServiceUnavailableException", f"journal unavailable: {exc}")
        rejected = {index: f"{reason}: {detail}" for index, reason, detail in decoded.rejected}
        successful = []
        event_ids = iter(_accepted_ids(lines, rejected))
        for index, caller_id in enumerate(ids):
            if index in rejected:
                failed.append(
                    {"id": caller_id, "errorCode": "InvalidEventData", "errorMessage": rejected[index]}
                )
                continue
            successful.append({"id": caller_id, "eventID": next(event_ids)})
        audit_info()["response"] = {"successful": len(successful), "failed": len(failed)}
        return _json(200, {"successful": successful, "failed": failed})


def _accepted_ids(lines: list[bytes], rejected: dict[int, str]) -> list[str]:
    out = []
    for index, line in enumerate(lines):
        if index in rejected:
            continue
        try:
            out.append(str(orjson.loads(line).get("eventID", "")))
        except (orjson.JSONDecodeError, AttributeError):
            out.append("")
    return out
