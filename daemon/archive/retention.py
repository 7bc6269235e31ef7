"""Retention: archive files older than a tracker's ``retention_days`` go away, and nothing younger.

Two mechanisms, chosen by the store:

- S3 stores: trailkeeper never deletes archive objects itself. It sets (and on
  every round checks) a bucket lifecycle rule ``trailkeeper-<tracker>`` that
  expires objects under the tracker's prefix after ``retention_days``. The
  server applies it, and S3 never removes an object version whose Object Lock
  retain-until date has not passed, so WORM protection always wins.
- Every other store (``local``): a sweeper lists the tracker's files and deletes
  those whose whole day is older than ``retention_days``. The day is the UTC
  date in the key (``.../YYYY/MM/DD/<file>``: the receive date of the file's
  first event); a key without a date falls back to the file's mtime. Only files
  named like the tracker's archive files are touched, so digests or anything
  else stored under the same prefix are never swept.

Idempotent: a round can be repeated or interrupted at any point.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict

from daemon import telemetry
from daemon.stores.base import Store, StoreError
from daemon.stores.s3 import S3Store
from daemon.telemetry import get_logger
from daemon.units import Duration

log = get_logger("retention")

_DAY = 86400.0
_DATE_IN_KEY = re.compile(r"(?:^|/)(\d{4})/(\d{2})/(\d{2})/[^/]+$")
RULE_PREFIX = "trailkeeper-"


class RetentionConfig(BaseModel):
    """How often retention runs. The period itself is per tracker (``retention_days``)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)
    interval: Duration = 3600.0
    """Time between rounds: local sweeps, and checks of each S3 tracker's lifecycle rule."""


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


@dataclass(frozen=True, slots=True)
class TrackerRetention:
    """What retention needs to know about one tracker."""

    tracker: str
    store: Store
    root: str  # the tracker's key prefix inside the store, ending in "/"
    days: int


@dataclass(slots=True)
class RoundReport:
    deleted: dict[str, list[str]] = field(default_factory=dict)
    kept: dict[str, int] = field(default_factory=dict)
    lifecycle: dict[str, str] = field(default_factory=dict)  # tracker -> "unchanged" | "set"
    failures: dict[str, str] = field(default_factory=dict)


def tracker_root(prefix: str, tracker: str) -> str:
    """The key prefix under which a tracker's files live (see daemon.archive.keys)."""
    parts = [p for p in (prefix.strip("/"), tracker) if p]
    return "/".join(parts) + "/"


def _file_pattern(tracker: str) -> re.Pattern[str]:
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


def lifecycle_rule(tracker: str, full_prefix: str, days: int) -> dict[str, Any]:
    return {
        "ID": f"{RULE_PREFIX}{tracker}",
        "Filter": {"Prefix": full_prefix},
        "Status": "Enabled",
        "Expiration": {"Days": days},
        # On versioned (and Object Lock) buckets expiry leaves the data as a noncurrent
        # version; this removes it a day later, which S3 refuses while a lock holds.
        "NoncurrentVersionExpiration": {"NoncurrentDays": 1},
    }


def _same_rule(a: dict[str, Any], b: dict[str, Any]) -> bool:
    keys = ("ID", "Filter", "Status", "Expiration", "NoncurrentVersionExpiration")
    return all(a.get(k) == b.get(k) for k in keys)


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
            TrackerRetention(t.name, stores[t.store], tracker_root(t.prefix, t.name), t.retention_days)
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
                if isinstance(t.store, S3Store):
                    report.lifecycle[t.tracker] = await self._ensure_lifecycle(t, t.store)
                else:
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
        names = _file_pattern(t.tracker)
        deleted: list[str] = []
        kept = 0
        async for obj in t.store.list(t.root):
            if not names.match(obj.key.rsplit("/", 1)[-1]):
                continue
            if not is_expired(obj.key, obj.modified, t.days, now):
                kept += 1
                continue
            await t.store.delete(obj.key)
            deleted.append(obj.key)
            telemetry.RETENTION_DELETED.labels(tracker=t.tracker).inc()
        report.deleted[t.tracker] = deleted
        report.kept[t.tracker] = kept
        if deleted:
            log.info(
                "retention.swept",
                tracker=t.tracker,
                store=t.store.name,
                deleted=len(deleted),
                kept=kept,
                retention_days=t.days,
            )

    async def _ensure_lifecycle(self, t: TrackerRetention, store: S3Store) -> str:
        """Make the bucket's lifecycle hold our rule for this tracker; keep everyone else's."""
        cfg = store.config
        full_prefix = f"{cfg.prefix}/{t.root}" if cfg.prefix else t.root
        want = lifecycle_rule(t.tracker, full_prefix, t.days)
        lock = cfg.object_lock
        if lock is not None and lock.retain_days > t.days:
            log.warning(
                "retention.lock_outlives_retention",
                tracker=t.tracker,
                store=store.name,
                retention_days=t.days,
                lock_retain_days=lock.retain_days,
                detail="objects stay until their Object Lock expires; the server refuses earlier deletion",
            )

        rules = await store.lifecycle_rules()
        ours = [r for r in rules if r.get("ID") == want["ID"]]
        if len(ours) == 1 and _same_rule(ours[0], want):
            return "unchanged"
        others = [r for r in rules if r.get("ID") != want["ID"]]
        await store.put_lifecycle_rules([*others, want])
        log.info(
            "retention.lifecycle_set",
            tracker=t.tracker,
            store=store.name,
            bucket=store.bucket,
            prefix=full_prefix,
            retention_days=t.days,
            previous=ours[0] if ours else None,
        )
        return "set"
