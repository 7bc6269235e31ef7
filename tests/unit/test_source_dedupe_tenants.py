"""Queue sources drop redelivered events by (tenant, event id): the same id in another
tenant is another event and is always journaled (issue 15, finding 1)."""

from __future__ import annotations

from pathlib import Path

import orjson

from daemon.events import KIND_EVENT, decode_entry
from daemon.intake import Intake
from daemon.journal import Journal
from daemon.sources.base import Message
from tests.unit.test_sources_base import FakeConfig, FakeSource, entries, until


def ev(event_id: str, tenant: str, name: str = "CreateUser") -> bytes:
    return orjson.dumps(
        {
            "eventSource": "iam.amazonaws.com",
            "eventName": name,
            "eventID": event_id,
            "recipientAccountId": tenant,
        }
    )


async def journaled(journal: Journal) -> list[tuple[str | None, str | None]]:
    items = [decode_entry(o, p) for o, p in await entries(journal)]
    return [(e.tenant, e.id) for e in items if e.kind == KIND_EVENT]


async def test_the_same_id_in_another_tenant_is_not_a_duplicate(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j", max_bytes=1024**2, fsync=False)
    await journal.open()
    source = FakeSource(FakeConfig(), Intake(journal))
    await source.start()
    source.queue.put_nowait(Message(ev("X", "tenant-a"), "m1", False))
    source.queue.put_nowait(Message(ev("X", "tenant-b", "RealEventOfB"), "m2", False))
    await until(lambda: len(source.acked) == 2)
    source.queue.put_nowait(Message(ev("X", "tenant-b", "RealEventOfB"), "m2", True))  # a real copy
    await until(lambda: len(source.acked) == 3)
    assert await journaled(journal) == [("tenant-a", "X"), ("tenant-b", "X")]
    await source.stop()

    # After a restart the memory comes back from the journal's tail with the same keys.
    again = FakeSource(FakeConfig(), Intake(journal))
    await again.start()
    again.queue.put_nowait(Message(ev("X", "tenant-a") + b"\n" + ev("X", "tenant-c"), "m3", True))
    await until(lambda: len(again.acked) == 1)
    assert await journaled(journal) == [("tenant-a", "X"), ("tenant-b", "X"), ("tenant-c", "X")]
    await again.stop()
    await journal.close()


def test_a_tenant_and_id_pair_never_reads_as_another() -> None:
    from daemon.sources.base import _event_key

    assert _event_key("a\x00b", "c") != _event_key("a", "b\x00c")
    assert _event_key("", "x") != _event_key("x", "")
