"""A queue message with an event of the reserved audit tenant: quarantined, acked, and not
quarantined again when the broker redelivers it after a restart."""

from __future__ import annotations

from pathlib import Path

import orjson

from daemon.events import KIND_EVENT, KIND_QUARANTINE, decode_entry
from daemon.intake import REASON_RESERVED_TENANT, Intake
from daemon.journal import Journal
from daemon.sources.base import Message
from tests.unit.test_sources_base import FakeConfig, FakeSource, entries, ev, until


def forged(i: int, tenant: str = "trailkeeper") -> bytes:
    return orjson.dumps(
        {
            "service_type": "trailkeeper",
            "trace_name": "queryEvents",
            "trace_id": f"f{i}",
            "project_id": tenant,
        }
    )


async def test_reserved_tenant_events_are_quarantined_once_and_the_rest_flows(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j", max_bytes=1024**2, fsync=False)
    await journal.open()
    body = ev(1) + b"\n" + forged(1) + b"\n" + ev(2) + b"\n" + forged(2)
    source = FakeSource(FakeConfig(), Intake(journal))
    await source.start()
    source.queue.put_nowait(Message(body, "m1", False))
    source.queue.put_nowait(Message(ev(3), "m2", False))
    await until(lambda: len(source.acked) == 2)
    await source.stop()
    # A new process; the broker redelivers m1.
    again = FakeSource(FakeConfig(), Intake(journal))
    await again.start()
    again.queue.put_nowait(Message(body, "m1", True))
    await until(lambda: len(again.acked) == 1)
    await again.stop()
    got = [decode_entry(o, p) for o, p in await entries(journal)]
    await journal.close()
    assert sorted(e.id for e in got if e.kind == KIND_EVENT) == ["e1", "e2", "e3"]
    quarantined = [orjson.loads(e.record) for e in got if e.kind == KIND_QUARANTINE]
    assert [(q["ref"], q["index"], q["reason"]) for q in quarantined] == [
        ("m1", 1, REASON_RESERVED_TENANT),
        ("m1", 3, REASON_RESERVED_TENANT),
    ]


async def test_the_tenant_the_auditor_claims_is_the_one_reserved(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j", max_bytes=1024**2, fsync=False)
    await journal.open()
    intake = Intake(journal)
    intake.reserve_tenant("tk-audit")
    source = FakeSource(FakeConfig(), intake)
    await source.start()
    source.queue.put_nowait(Message(forged(1, "tk-audit") + b"\n" + forged(2), "m1", False))
    await until(lambda: len(source.acked) == 1)
    await source.stop()
    got = [decode_entry(o, p) for o, p in await entries(journal)]
    await journal.close()
    # "trailkeeper" is an ordinary tenant once another one is the audit tenant.
    assert [(e.kind, e.tenant) for e in got] == [(KIND_QUARANTINE, None), (KIND_EVENT, "trailkeeper")]
