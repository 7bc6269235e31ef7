"""Intake: the one path from any source into the journal.

Accepted events and rejected items (bound for the quarantine) are appended in
one group commit, so a source acknowledges a batch only when every item in it
is either durable as an event or durable in the quarantine queue.

Reserved names: trailkeeper's own audit records are written by the Auditor
(daemon.api.audit) with source ``AUDIT_SOURCE`` into the audit tenant
(``auth.audit_tenant``). No producer may write events that look like them: the
HTTP ingest refuses events of the reserved tenant, queue sources quarantine
them, and no queue source may be named after a reserved source.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from daemon import telemetry
from daemon.decodepool import Decoded
from daemon.events import Event, QuarantineItem, Rejected, encode_event, encode_quarantine, now_ms
from daemon.journal import Journal, JournalFull

# The source of the daemon's own audit records, which no producer can set.
AUDIT_SOURCE = "trailkeeper"
# What the daemon's own audit records were written with before; never a queue source's name
# either, so an old self-audit record cannot be confused with a producer's event.
RESERVED_SOURCES = frozenset({AUDIT_SOURCE, "audit"})
# auth.audit_tenant's default: reserved until an Auditor claims the configured tenant.
DEFAULT_AUDIT_TENANT = "trailkeeper"
REASON_RESERVED_TENANT = "reserved_tenant"


@dataclass(slots=True)
class Outcome:
    accepted: int
    rejected: list[Rejected] = field(default_factory=list)
    first_offset: int = 0


class Intake:
    """Appends decoded items to the journal. Shared by every source."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        # The tenant of trailkeeper's own records; the Auditor sets the configured one.
        self.reserved_tenant = DEFAULT_AUDIT_TENANT

    def reserve_tenant(self, tenant: str) -> None:
        """Make ``tenant`` the one no source may write into (the audit tenant)."""
        self.reserved_tenant = tenant

    def reserved_detail(self) -> str:
        """Why an event of the reserved tenant is refused, for the producer and the quarantine."""
        return (
            f"tenant {self.reserved_tenant!r} is reserved for trailkeeper's own audit records "
            "(auth.audit_tenant); no producer may write into it"
        )

    async def submit(self, items: Sequence[Event | Rejected], source: str, ref: str | None = None) -> Outcome:
        """Make every item durable (events, or quarantine entries for rejected items).

        Returns only after fsync. Raises JournalFull (nothing was written: ask the
        sender to retry later) or JournalError.
        """
        payloads: list[bytes] = []
        rejected: list[Rejected] = []
        accepted = 0
        received = now_ms()
        for item in items:
            if isinstance(item, Event):
                payloads.append(encode_event(item))
                accepted += 1
            else:
                rejected.append(item)
                payloads.append(
                    encode_quarantine(
                        QuarantineItem(
                            raw=item.raw,
                            reason=item.reason,
                            detail=item.detail,
                            source=source,
                            received_ms=received,
                            index=item.index,
                            ref=ref,
                        )
                    )
                )
        telemetry.EVENTS_RECEIVED.labels(source=source).inc(len(items))
        try:
            first = await self.journal.append(payloads)
        except JournalFull:
            telemetry.INGEST_PUSHBACK.labels(source=source).inc()
            raise
        if accepted:
            telemetry.EVENTS_ACCEPTED.labels(source=source).inc(accepted)
        for reason, count in Counter(r.reason for r in rejected).items():
            telemetry.EVENTS_REJECTED.labels(source=source, reason=reason).inc(count)
        return Outcome(accepted, rejected, first)

    async def submit_decoded(self, decoded: Decoded, source: str) -> int:
        """Append payloads prepared by decode_payloads; same contract as ``submit``.

        Returns the first offset. Raises JournalFull or JournalError.
        """
        telemetry.EVENTS_RECEIVED.labels(source=source).inc(decoded.accepted + len(decoded.rejected))
        try:
            first = await self.journal.append(decoded.payloads)
        except JournalFull:
            telemetry.INGEST_PUSHBACK.labels(source=source).inc()
            raise
        if decoded.accepted:
            telemetry.EVENTS_ACCEPTED.labels(source=source).inc(decoded.accepted)
        for reason, count in Counter(r[1] for r in decoded.rejected).items():
            telemetry.EVENTS_REJECTED.labels(source=source, reason=reason).inc(count)
        return first

    async def quarantine(self, item: QuarantineItem) -> None:
        """Quarantine one undecodable input (for example a whole queue message)."""
        telemetry.EVENTS_RECEIVED.labels(source=item.source).inc()
        await self.journal.append([encode_quarantine(item)])
        telemetry.EVENTS_REJECTED.labels(source=item.source, reason=item.reason).inc()
