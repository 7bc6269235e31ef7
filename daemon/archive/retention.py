"""Retention: archive files older than a tracker's ``retention_days`` go away, and nothing younger.

A sweeper lists each tracker's files and deletes those whose whole day is older
than ``retention_days``. The day is the UTC date in the key (``.../YYYY/MM/DD/<file>``:
the receive date of the file's first event); a key without a date falls back to the
file's mtime. Only files named like the tracker's archive files are touched:
digests (``<prefix>/<tracker>/_digest/...``) must outlive the files they list, so
they are never swept. That is also why no S3 lifecycle rule is used: a rule
matches a key prefix, and the tracker's prefix holds its digests too.

On S3 stores every candidate is checked first: a file whose Object Lock
retain-until date has not passed, or that is under a legal hold, is kept and
counted as locked; trailkeeper never asks the server to delete it (the server
would refuse a locked version anyway). On a versioned bucket a delete leaves a
delete marker; the bucket's own noncurrent-version rules decide when the data goes.

Idempotent: a round can be repeated or interrupted at any point.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from pydantic import BaseModel, ConfigDict

from daemon import telemetry
from daemon.archive.keys import CLOUDTRAIL_ROOT
from daemon.stores.base import Store, StoreError
from daemon.stores.s3 import S3Store
from daemon.telemetry import get_logger
from daemon.units import Duration

log = get_logger("retention")

_DAY = 86400.0
_DATE_IN_KEY = re.compile(r"(?:^|/)(\d{4})/(\d{2})/(\d{2})/[^/]+$")


class RetentionConfig(BaseModel):
    """How often retention runs. The period itself is per tracker (``retention_days``)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)
    interval: Duration = 3600.0
    """Time between sweeps of expired archive files."""


class TrackerSettings(Protocol):
    """The tracker fields retention reads (daemon.config.TrackerConfig has them)."""

    @property
    def name(self) -> str: ...
    @property
    def store(self) -> str: ...
    @property
    def prefix(self) -> str: ...
    @property
    def retention_days(self) -> int | None: ...
    @property
    def layout(self) -> str: ...


@dataclass(frozen=True, slots=True)
class TrackerRetention:
    """What retention needs to know about one tracker."""

    tracker: str
    store: Store
    root: str  # the tracker's key prefix inside the store, ending in "/"
    days: int
    layout: str = "trailkeeper"


@dataclass(slots=True)
class RoundReport:
    deleted: dict[str, list[str]] = field(default_factory=dict)
    kept: dict[str, int] = field(default_factory=dict)
    locked: dict[str, list[str]] = field(default_factory=dict)  # expired, but under Object Lock
    failures: dict[str, str] = field(default_factory=dict)


def tracker_root(prefix: str, tracker: str, layout: str = "trailkeeper") -> str:
    """The key prefix under which a tracker's files live (see daemon.archive.keys)."""
    top = CLOUDTRAIL_ROOT if layout == "cloudtrail" else tracker
    parts = [p for p in (prefix.strip("/"), top) if p]
    return "/".join(parts) + "/"


def _file_pattern(tracker: str, layout: str = "trailkeeper") -> re.Pattern[str]:
    if layout == "cloudtrail":
        # <tenant>_CloudTrail_<region>_<YYYYMMDDTHHMMZ>_<writer>-<first>-<last>.json.gz
        return re.compile(r"^.+_CloudTrail_.+_\d{8}T\d{4}Z_[A-Za-z0-9]+-\d+-\d+(?:_[0-9a-f]+)?\.json\.gz$")
    # <writer>_<tracker>_<YYYYMMDDTHHMMZ>_<first>-<last>.json[.gz|.zst]
    name = re.escape(tracker)
    return re.compile(rf"^[^/]+_{name}_\d{{8}}T\d{{4}}Z_\d+-\d+(?:_[0-9a-f]+)?\.json(?:\.\w+)?$")


def file_day_end(key: str, modified: float) -> float:
    """When the day a file belongs to ended (Unix time): the key's date, else its mtime."""
    m = _DATE_IN_KEY.search(key)
    if m:
        try:
            day = dt.datetime(int(m.group(1)), int(m.group(2)), int(m.group(3)), tzinfo=dt.UTC)
        except ValueError:
            pass
        else:
            return day.timestamp() + _DAY
    return modified


def is_expired(key: str, modified: float, days: int, now: float) -> bool:
    """True only when the file's whole day lies more than ``days`` days in the past."""
    return file_day_end(key, modified) + days * _DAY <= now


class Retention:
    """Runs retention for every tracker with ``retention_days`` every ``interval``.

    ``run()`` until ``stop()``. Failures are logged once per round per tracker and
    counted; the next round tries again.
    """

    def __init__(
        self,
        trackers: list[TrackerRetention],
        config: RetentionConfig,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.trackers = trackers
        self.config = config
        self.clock = clock
        self._stop = asyncio.Event()

    @classmethod
    def from_config(
        cls, config: RetentionConfig, trackers: Iterable[TrackerSettings], stores: dict[str, Store]
    ) -> Retention:
        """Retention for every tracker that sets ``retention_days`` (the others keep forever)."""
        items = [
            TrackerRetention(
                t.name, stores[t.store], tracker_root(t.prefix, t.name, t.layout), t.retention_days, t.layout
            )
            for t in trackers
            if t.retention_days is not None
        ]
        return cls(items, config)

    async def run(self) -> None:
        while not self._stop.is_set():
            await self.run_once()
            try:
                await asyncio.wait_for(self._stop.wait(), timeout=self.config.interval)
            except TimeoutError:
                continue

    def stop(self) -> None:
        self._stop.set()

    async def run_once(self) -> RoundReport:
        report = RoundReport()
        for t in self.trackers:
            try:
                await self._sweep(t, report)
            except StoreError as exc:
                reason = "unavailable" if exc.retryable else "permanent"
                telemetry.RETENTION_FAILURES.labels(tracker=t.tracker, reason=reason).inc()
                report.failures[t.tracker] = str(exc)
                log.error("retention.failed", tracker=t.tracker, store=t.store.name, error=str(exc))
                continue
            telemetry.RETENTION_LAST_RUN.labels(tracker=t.tracker).set(self.clock())
        return report

    async def _sweep(self, t: TrackerRetention, report: RoundReport) -> None:
        now = self.clock()
        names = _file_pattern(t.tracker, t.layout)
        deleted: list[str] = []
        locked: list[str] = []
        kept = 0
        async for obj in t.store.list(t.root):
            if not names.match(obj.key.rsplit("/", 1)[-1]):
                continue
            if not is_expired(obj.key, obj.modified, t.days, now):
                kept += 1
                continue
            if isinstance(t.store, S3Store):
                until = await t.store.lock_until(obj.key)
                if until is not None and until.timestamp() > now:
                    locked.append(obj.key)
                    continue
            await t.store.delete(obj.key)
            deleted.append(obj.key)
            telemetry.RETENTION_DELETED.labels(tracker=t.tracker).inc()
        report.deleted[t.tracker] = deleted
        report.locked[t.tracker] = locked
        report.kept[t.tracker] = kept
        if locked:
            log.info(
                "retention.kept_locked",
                tracker=t.tracker,
                store=t.store.name,
                files=len(locked),
                detail="expired by retention_days but still under Object Lock; swept after the lock ends",
            )
        if deleted:
            log.info(
                "retention.swept",
                tracker=t.tracker,
                store=t.store.name,
                deleted=len(deleted),
                kept=kept,
                retention_days=t.days,
            )
