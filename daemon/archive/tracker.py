"""Trackers and the quarantine, expressed as archiver deliveries."""

from __future__ import annotations

import functools
import gzip
import hashlib
from collections.abc import Callable

from daemon.archive import fileformat, keys
from daemon.archive.archiver import Delivery
from daemon.archive.fileformat import BuiltFile
from daemon.config import QuarantineConfig, TrackerConfig
from daemon.events import KIND_EVENT, KIND_QUARANTINE, Entry, loads_record
from daemon.rules.pattern import Pattern
from daemon.stores.base import Store


def _match_all(_entry: Entry) -> bool:
    return True


def tracker_filter(config: TrackerConfig) -> Callable[[Entry], bool] | None:
    """The tracker's ``filter`` pattern as a selector; None selects every event."""
    if config.filter is None:
        return None
    pattern = Pattern(config.filter, path="filter")

    def select(entry: Entry) -> bool:
        record = loads_record(entry.record) if pattern.uses_record else None
        return pattern.matches(entry.canonical, record)

    return select


def _event_partition(entry: Entry) -> keys.Partition:
    return keys.partition_of(entry.tenant, entry.region, entry.received_ms)


def tracker_delivery(
    config: TrackerConfig,
    store: Store,
    writer: str,
    select: Callable[[Entry], bool] | None = None,
) -> Delivery:
    """A tracker: selected events, partitioned by tenant, region and day, as CloudTrail files."""
    f = config.file

    def key(part: keys.Partition, first_ms: int, first: int, last: int) -> str:
        if config.layout == "cloudtrail":
            return keys.cloudtrail_file_key(config.prefix, writer, part, first_ms, first, last)
        return keys.file_key(
            config.prefix,
            config.name,
            writer,
            part,
            first_ms,
            first,
            last,
            extension=fileformat.extension(f.compression),
        )

    return Delivery(
        name=config.name,
        kind=KIND_EVENT,
        store=store,
        max_events=f.max_events,
        max_bytes=f.max_bytes,
        max_age=f.max_age,
        select=select or _match_all,
        partition=_event_partition,
        header_only=select is None,
        key=key,
        build=functools.partial(
            fileformat.build, compression=f.compression, level=f.compression_level, leaves=config.verify
        ),
    )


def _quarantine_partition(entry: Entry) -> keys.Partition:
    part = keys.partition_of(None, None, entry.received_ms)
    return keys.Partition("", "", part.day)


def build_ndjson(lines: list[bytes]) -> BuiltFile:
    raw = b"\n".join(lines) + b"\n"
    data = gzip.compress(raw, mtime=0)
    return BuiltFile(data, hashlib.sha256(data).hexdigest(), len(raw))


QUARANTINE_DELIVERY = "quarantine"


def quarantine_delivery(config: QuarantineConfig, store: Store, writer: str) -> Delivery:
    """Rejected input as gzipped NDJSON: one object per item with raw bytes (base64) and reason."""

    def key(part: keys.Partition, first_ms: int, first: int, last: int) -> str:
        return keys.file_key(
            config.prefix,
            "quarantine",
            writer,
            part,
            first_ms,
            first,
            last,
            extension="jsonl.gz",
            tracker_dir=False,
        )

    return Delivery(
        name=QUARANTINE_DELIVERY,
        kind=KIND_QUARANTINE,
        store=store,
        max_events=10_000,
        max_bytes=16 * 1024 * 1024,
        max_age=config.max_age,
        select=_match_all,
        partition=_quarantine_partition,
        key=key,
        build=build_ndjson,
    )
