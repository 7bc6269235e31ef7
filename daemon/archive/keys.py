"""Deterministic, time-partitioned archive keys, like CloudTrail's.

``<prefix>/<tracker>/<tenant>/<region>/YYYY/MM/DD/<writer>_<tracker>_<YYYYMMDDTHHMMZ>_<first>-<last>.json.gz``

or, for a tracker with ``layout: cloudtrail``, CloudTrail's own layout, which Athena's
CloudTrail table, Trino, Spark and SIEM add-ons read as they read CloudTrail's:

``<prefix>/AWSLogs/<tenant>/CloudTrail/<region>/YYYY/MM/DD/<tenant>_CloudTrail_<region>_<YYYYMMDDTHHMMZ>_<writer>-<first>-<last>.json.gz``

The time is the journal receive time of the file's first event and the range is
its journal offsets, so re-delivering the same batch after a crash writes the
same key instead of a duplicate.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
from typing import NamedTuple

_UNSAFE = re.compile(r"[^A-Za-z0-9._=-]")
# The end of a file name: its journal offset range, then the extension (json.gz, json.zst, jsonl.gz).
_RANGE_AND_EXTENSION = re.compile(r"([_-]\d+-\d+)(\.[^/_]+)$")
UNKNOWN = "_unknown"


# The published checkpoint of a chain: <prefix>/<tracker>/_checkpoint/<writer>. The one archive
# object meant to change (daemon.integrity.witnessing writes it; backup copies it by hash).
CHECKPOINT_DIR = "_checkpoint"


def safe_segment(value: str | None) -> str:
    """Make an opaque value (tenant, region) safe as one key segment, keeping it readable."""
    if not value:
        return UNKNOWN
    cleaned = _UNSAFE.sub("_", value)[:128]
    if cleaned in (".", ".."):
        cleaned = cleaned.replace(".", "_")
    return cleaned


class Partition(NamedTuple):
    tenant: str
    region: str
    day: str  # YYYY/MM/DD


@functools.lru_cache(maxsize=64)
def _day(day_number: int) -> str:
    return (dt.date(1970, 1, 1) + dt.timedelta(days=day_number)).strftime("%Y/%m/%d")


@functools.lru_cache(maxsize=4096)
def _segments(tenant: str | None, region: str | None) -> tuple[str, str]:
    return safe_segment(tenant), safe_segment(region)


def partition_of(tenant: str | None, region: str | None, received_ms: int) -> Partition:
    """The partition of an event: cheap, it runs once per event per tracker."""
    t, r = _segments(tenant, region)
    return Partition(t, r, _day(received_ms // 86_400_000))


def file_key(
    prefix: str,
    tracker: str,
    writer: str,
    part: Partition,
    first_received_ms: int,
    first: int,
    last: int,
    extension: str = "json.gz",
    tracker_dir: bool = True,
) -> str:
    stamp = dt.datetime.fromtimestamp(first_received_ms / 1000, tz=dt.UTC).strftime("%Y%m%dT%H%MZ")
    name = f"{writer}_{tracker}_{stamp}_{first:020d}-{last:020d}.{extension}"
    parts = [
        p
        for p in (prefix.strip("/"), tracker if tracker_dir else "", part.tenant, part.region, part.day, name)
        if p
    ]
    return "/".join(parts)


CLOUDTRAIL_ROOT = "AWSLogs"


def cloudtrail_file_key(
    prefix: str, writer: str, part: Partition, first_received_ms: int, first: int, last: int
) -> str:
    """A file key in CloudTrail's layout. The unique part is the writer and the journal offset
    range, so a re-delivered batch writes the same key, as in the default layout."""
    stamp = dt.datetime.fromtimestamp(first_received_ms / 1000, tz=dt.UTC).strftime("%Y%m%dT%H%MZ")
    name = f"{part.tenant}_CloudTrail_{part.region}_{stamp}_{writer}-{first:020d}-{last:020d}.json.gz"
    parts = [prefix.strip("/"), CLOUDTRAIL_ROOT, part.tenant, "CloudTrail", part.region, part.day, name]
    return "/".join(p for p in parts if p)


def conflict_key(key: str, sha256: str) -> str:
    """Where a file goes when ``key`` already holds other bytes: ``<name>_<sha12>.<extension>``.

    The extension is the one ``key`` was named with (so it still tells the codec), and
    the copy sorts beside the original. Raises ValueError for a key not named by ``file_key``.
    """
    m = _RANGE_AND_EXTENSION.search(key)
    if m is None:
        raise ValueError(f"{key!r} is not an archive file key")
    return f"{key[: m.start(2)]}_{sha256[:12]}{m.group(2)}"
