"""Builds real archives by driving the journal, the archiver and the integrity recorder."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import orjson

from daemon.archive.archiver import Archiver
from daemon.archive.tracker import tracker_delivery
from daemon.config import parse_config
from daemon.events import Decoder, Event, encode_event
from daemon.integrity.runtime import Integrity
from daemon.journal import Journal
from daemon.stores import build_store

DATA = Path("/work/shared/data/cloudtrail-stratus")


def stratus_records() -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for p in sorted(DATA.glob("*.json")):
        doc = json.loads(p.read_text())
        out += doc if isinstance(doc, list) else doc.get("Records", [])
    return out


def make_events(n: int) -> list[bytes]:
    base = stratus_records()
    lines = []
    for i in range(n):
        rec = dict(base[i % len(base)])
        rec["eventID"] = f"{i:08d}-{rec.get('eventID', 'x')}"
        lines.append(orjson.dumps(rec))
    return lines


def config_for(root: Path, max_events: int, integrity_extra: str = "", stores_extra: str = "") -> object:
    text = f"""
writer_id: w1
journal: {{dir: {root}/journal, fsync: false}}
stores: {{local: {{type: local, path: {root}/archive, fsync: false}}{stores_extra}}}
trackers: [{{name: default, store: local, prefix: trails, file: {{max_events: {max_events}, max_age: 3600}}}}]
integrity: {{keys_dir: {root}/keys, state_dir: {root}/state, digest_interval: 3600{integrity_extra}}}
metrics: {{listen: null}}
"""
    return parse_config(text)


async def build_archive(
    root: Path,
    events: int,
    max_events: int,
    digests: int,
    live: bool = False,
    integrity_extra: str = "",
    stores_extra: str = "",
) -> None:
    """Archive ``events`` events; write ``digests`` interval digests plus the chain end.

    ``live``: leave the chain open, as a writer that is still running (or was killed) does.
    ``integrity_extra``: more ``integrity:`` keys (``, witnesses: [...]``). Each published
    checkpoint is also copied to ``<root>/published/<sequence>/``, as an attacker could keep them.
    """
    config = config_for(root, max_events, integrity_extra, stores_extra)
    stores = {n: build_store(n, sc) for n, sc in config.stores.items()}  # type: ignore[attr-defined]
    journal = Journal(config.journal.dir, max_bytes=8 * 1024**3, fsync=False)  # type: ignore[attr-defined]
    integ = Integrity(config, stores, "w1")  # type: ignore[arg-type]
    tracker = config.trackers[0]  # type: ignore[attr-defined]
    delivery = tracker_delivery(tracker, stores["local"], "w1")
    await journal.open(consumers=[delivery.cursor])
    await integ.start()
    archiver = Archiver(journal, delivery, root / "astate", integ.listeners("default"))
    task = asyncio.create_task(archiver.run())
    decoder = Decoder()
    lines = make_events(events)
    step = max(1, len(lines) // digests)
    dw = integ.writers["default"]
    for start in range(0, len(lines), step):
        chunk = lines[start : start + step]
        decoded = decoder.decode(b"\n".join(chunk), ndjson=True)
        evs = [e for e in decoded if isinstance(e, Event)]
        assert len(evs) == len(chunk)
        for i in range(0, len(evs), 5000):
            await journal.append([encode_event(e) for e in evs[i : i + 5000]])
        # Let the archiver store the full files, then close the interval.
        # (open batches of other partitions hold the cursor back, so watch the tree grow instead).
        seen, still = -1, 0
        while still < 4 and not task.done():
            await asyncio.sleep(0.05)
            size = dw.tree.size
            still = still + 1 if size == seen else 0
            seen = size
        await dw.emit(end_chain=False)
        keep = root / "published" / str(dw.state.doc["sequence"])
        keep.mkdir(parents=True, exist_ok=True)
        for p in (root / "archive").rglob("_checkpoint/*"):
            (keep / p.name).write_bytes(p.read_bytes())
    archiver.stop()
    await task
    if live:
        for t in integ._tasks:
            t.cancel()
        await asyncio.gather(*integ._tasks, return_exceptions=True)
    else:
        await integ.stop()
    await journal.close()
