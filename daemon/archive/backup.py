"""Backup: copy archive objects from one store to another, verify every copy by hash.

Each job, every ``interval``:

1. lists its prefixes in the source and the destination;
2. copies objects it has not copied yet, and repairs copies that are missing
   from the destination, differ in size, or were modified after they were
   copied (and, a few per round, copies whose bytes no longer hash to what was
   verified: ``reverify_per_round`` re-reads the oldest-verified copies);
3. verifies each copy by reading it back and comparing its SHA-256 with the
   source bytes; only a verified copy is recorded;
4. records progress in ``<journal dir>/state/backup.<job>.json`` (atomic
   write: temp file, fsync, rename, fsync of the directory), every
   ``save_every`` copies and at the end of the round.

Archive objects are written once, so a source object whose size or hash has
changed since it was backed up is reported (``source_changed``) and its
backup is left untouched: the backup must keep the original evidence.

At-least-once and idempotent: after a crash the round starts over from the
recorded state, and re-copying an object already in the destination with the
same bytes is a no-op (stores' ``put`` is idempotent).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, model_validator

from daemon import telemetry
from daemon.archive.keys import CHECKPOINT_DIR
from daemon.durable import atomic_write
from daemon.stores.base import ObjectConflict, ObjectInfo, ObjectMissing, Store, StoreError
from daemon.telemetry import get_logger
from daemon.units import Duration

log = get_logger("backup")

_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"
# Stores stamp mtimes at second precision or coarser; a copy is "modified after
# it was made" only beyond this slack.
_MTIME_SLACK = 2.0


class BackupJobConfig(BaseModel):
    """One backup job: ``from`` store to ``to`` store, for some key prefixes."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)
    name: str = Field(pattern=_NAME)
    """Job name; appears in metrics and in the state file name."""
    source: str = Field(alias="from")
    """The store copied from."""
    destination: str = Field(alias="to")
    """The store copied to (a different one)."""
    prefixes: list[str] = Field(default_factory=lambda: [""])
    """Key prefixes to copy; [""]: everything."""
    interval: Duration = 3600.0
    """Time between rounds."""
    reverify_per_round: int = Field(default=100, ge=0)
    """Destination copies re-read and re-hashed each round, oldest-verified first."""
    concurrency: int = Field(default=4, ge=1, le=64)
    """Copies in flight at once."""
    save_every: int = Field(default=100, ge=1)
    """Progress is written to the state file after this many copies (and at each round's end)."""

    @model_validator(mode="after")
    def _distinct(self) -> BackupJobConfig:
        if self.source == self.destination:
            raise ValueError("from and to name the same store: a backup needs a second store")
        return self


class BackupConfig(BaseModel):
    """Periodic verified copies of archive objects to a second store."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)
    jobs: list[BackupJobConfig] = Field(default_factory=list)
    """Backup jobs, each copying some prefixes from one store to another."""


@dataclass(slots=True)
class Copied:
    sha256: str
    size: int
    copied_at: float
    verified_at: float

    def to_json(self) -> dict[str, Any]:
        return {
            "sha256": self.sha256,
            "size": self.size,
            "copied_at": self.copied_at,
            "verified_at": self.verified_at,
        }


class BackupState:
    """Verified copies by key, persisted atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.objects: dict[str, Copied] = {}

    def _load_sync(self) -> None:
        if not self.path.exists():
            return
        doc = orjson.loads(self.path.read_bytes())
        self.objects = {
            k: Copied(v["sha256"], int(v["size"]), float(v["copied_at"]), float(v["verified_at"]))
            for k, v in doc.get("objects", {}).items()
        }

    async def load(self) -> None:
        await asyncio.to_thread(self._load_sync)

    def _save_sync(self, data: bytes) -> None:
        atomic_write(self.path, data)

    async def save(self) -> None:
        doc = {"version": 1, "objects": {k: v.to_json() for k, v in sorted(self.objects.items())}}
        await asyncio.to_thread(self._save_sync, orjson.dumps(doc))


@dataclass(slots=True)
class RoundReport:
    copied: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    source_changed: list[str] = field(default_factory=list)
    pending: int = 0
    aborted: str | None = None


def _mutable(key: str) -> bool:
    return f"/{CHECKPOINT_DIR}/" in f"/{key}"


class _Abort(Exception):
    """A store is down or refuses us: stop this round, try the whole job again next time."""


class BackupJob:
    """One job's rounds. ``run_once`` is one round; ``Backup`` schedules them."""

    def __init__(self, config: BackupJobConfig, source: Store, destination: Store, state_dir: Path) -> None:
        self.config = config
        self.source = source
        self.destination = destination
        self.state = BackupState(state_dir / f"backup.{config.name}.json")
        self._loaded = False
        self._labels = {"job": config.name}

    async def _list(self, store: Store) -> dict[str, ObjectInfo]:
        out: dict[str, ObjectInfo] = {}
        for prefix in self.config.prefixes:
            async for obj in store.list(prefix):
                out[obj.key] = obj
        return out

    async def run_once(self) -> RoundReport:
        """One round. Never raises StoreError: failures are reported, counted and retried later."""
        report = RoundReport()
        if not self._loaded:
            await self.state.load()
            self._loaded = True
        try:
            await self._round(report)
        except _Abort as exc:
            report.aborted = str(exc)
            log.error(
                "backup.round_aborted",
                job=self.config.name,
                source=self.source.name,
                destination=self.destination.name,
                error=str(exc),
                detail="nothing is lost: the next round resumes from the recorded state",
            )
        await self.state.save()
        log.info(
            "backup.round",
            job=self.config.name,
            copied=len(report.copied),
            repaired=len(report.repaired),
            failed=len(report.failed),
            source_changed=len(report.source_changed),
            pending=report.pending,
            aborted=report.aborted is not None,
        )
        if report.pending == 0 and report.aborted is None:
            telemetry.BACKUP_LAST_SUCCESS.labels(**self._labels).set(time.time())
        return report

    async def _round(self, report: RoundReport) -> None:
        try:
            src = await self._list(self.source)
            dst = await self._list(self.destination)
        except StoreError as exc:
            self._fail("unavailable" if exc.retryable else "permanent")
            raise _Abort(str(exc)) from exc

        # Objects gone from the source (expired by retention) leave the state: the
        # state mirrors what still needs protecting.
        for key in [k for k in self.state.objects if k not in src]:
            del self.state.objects[key]

        todo: dict[str, str] = {}  # key -> why ("new", "missing", "altered", "updated")
        for key, obj in src.items():
            rec = self.state.objects.get(key)
            if _mutable(key):
                todo[key] = "updated"  # tiny, and rewritten every interval: compared by hash below
            elif rec is None:
                todo[key] = "new"
            elif obj.size != rec.size:
                self._source_changed(key, report, f"size {rec.size} -> {obj.size}")
            elif key not in dst:
                todo[key] = "missing"
            elif dst[key].size != rec.size or dst[key].modified > rec.copied_at + _MTIME_SLACK:
                todo[key] = "altered"

        # Rolling re-verification: catches a copy altered in place with its size and
        # mtime kept, a few objects per round, oldest-verified first.
        candidates = sorted(
            (k for k in self.state.objects if k in dst and k not in todo),
            key=lambda k: self.state.objects[k].verified_at,
        )[: self.config.reverify_per_round]
        for key in candidates:
            if not await self._copy_intact(key):
                todo[key] = "altered"

        pending_bytes = sum(src[k].size for k in todo)
        report.pending = len(todo)
        telemetry.BACKUP_PENDING_OBJECTS.labels(**self._labels).set(len(todo))
        telemetry.BACKUP_PENDING_BYTES.labels(**self._labels).set(pending_bytes)
        for why in ("missing", "altered"):
            for key in sorted(k for k, w in todo.items() if w == why):
                log.warning("backup.copy_damaged", job=self.config.name, key=key, damage=why)

        sem = asyncio.Semaphore(self.config.concurrency)
        since_save = 0
        save_lock = asyncio.Lock()
        abort: list[_Abort] = []

        async def one(key: str, why: str) -> None:
            nonlocal since_save, pending_bytes
            async with sem:
                if abort:
                    return
                try:
                    await self._copy(key, why, report)
                except _Abort as exc:
                    abort.append(exc)
                    return
                report.pending -= 1
                pending_bytes -= src[key].size
                telemetry.BACKUP_PENDING_OBJECTS.labels(**self._labels).set(report.pending)
                telemetry.BACKUP_PENDING_BYTES.labels(**self._labels).set(max(0, pending_bytes))
                since_save += 1
                if since_save >= self.config.save_every:
                    async with save_lock:
                        since_save = 0
                        await self.state.save()

        await asyncio.gather(*(one(k, w) for k, w in sorted(todo.items())))
        if abort:
            raise abort[0]

    async def _copy_intact(self, key: str) -> bool:
        rec = self.state.objects[key]
        try:
            data = await self.destination.get(key)
        except ObjectMissing:
            return False
        except StoreError as exc:
            self._fail("unavailable" if exc.retryable else "permanent")
            raise _Abort(str(exc)) from exc
        if hashlib.sha256(data).hexdigest() != rec.sha256:
            return False
        rec.verified_at = time.time()
        return True

    async def _copy(self, key: str, why: str, report: RoundReport) -> None:
        rec = self.state.objects.get(key)
        try:
            data = await self.source.get(key)
        except ObjectMissing:
            return  # expired between listing and copying
        except StoreError as exc:
            self._fail("unavailable" if exc.retryable else "permanent")
            raise _Abort(str(exc)) from exc
        sha = hashlib.sha256(data).hexdigest()
        if _mutable(key):
            await self._copy_mutable(key, data, sha, rec)
            return
        if rec is not None and rec.sha256 != sha:
            self._source_changed(key, report, f"sha256 {rec.sha256[:16]}... -> {sha[:16]}...")
            return
        try:
            try:
                await self.destination.put(key, data)
            except ObjectConflict:
                # The destination holds other bytes at this key: a damaged copy. The
                # source is the evidence; replace the copy.
                why = "altered"
                await self.destination.delete(key)
                await self.destination.put(key, data)
            readback = await self.destination.get(key)
        except ObjectMissing:
            readback = b""
        except StoreError as exc:
            self._fail("unavailable" if exc.retryable else "permanent")
            raise _Abort(str(exc)) from exc
        if hashlib.sha256(readback).hexdigest() != sha:
            self._fail("verify")
            report.failed[key] = "read-back hash differs from the source"
            log.error(
                "backup.verify_failed",
                job=self.config.name,
                key=key,
                destination=self.destination.name,
                detail="the copy read back does not hash like the source; retried next round",
            )
            return
        now = time.time()
        self.state.objects[key] = Copied(sha, len(data), now, now)
        telemetry.BACKUP_COPIED_OBJECTS.labels(**self._labels).inc()
        telemetry.BACKUP_COPIED_BYTES.labels(**self._labels).inc(len(data))
        if why == "new":
            report.copied.append(key)
        else:
            report.repaired.append(key)
            telemetry.BACKUP_REPAIRED.labels(**self._labels).inc()
            log.warning("backup.copy_repaired", job=self.config.name, key=key, damage=why)

    async def _copy_mutable(self, key: str, data: bytes, sha: str, rec: Copied | None) -> None:
        """The published checkpoint changes every interval by design: replace the copy when
        the source moved on or the copy differs, and never call that a changed source."""
        try:
            if rec is not None and rec.sha256 == sha and await self._copy_intact(key):
                return
            await self.destination.replace(key, data)
        except StoreError as exc:
            self._fail("unavailable" if exc.retryable else "permanent")
            raise _Abort(str(exc)) from exc
        now = time.time()
        self.state.objects[key] = Copied(sha, len(data), now, now)
        telemetry.BACKUP_COPIED_OBJECTS.labels(**self._labels).inc()
        telemetry.BACKUP_COPIED_BYTES.labels(**self._labels).inc(len(data))

    def _source_changed(self, key: str, report: RoundReport, what: str) -> None:
        report.source_changed.append(key)
        self._fail("source_changed")
        log.error(
            "backup.source_changed",
            job=self.config.name,
            key=key,
            source=self.source.name,
            change=what,
            detail="archive objects are written once: the source was altered after it was backed up; "
            "the backup copy is kept as it was",
        )

    def _fail(self, reason: str) -> None:
        telemetry.BACKUP_FAILURES.labels(job=self.config.name, reason=reason).inc()


class Backup:
    """Runs every backup job on its interval until ``stop``."""

    def __init__(self, jobs: list[BackupJob]) -> None:
        self.jobs = jobs
        self._stop = asyncio.Event()

    @classmethod
    def from_config(cls, config: BackupConfig, stores: dict[str, Store], state_dir: Path) -> Backup:
        return cls([BackupJob(j, stores[j.source], stores[j.destination], state_dir) for j in config.jobs])

    async def run(self) -> None:
        await asyncio.gather(*(self._run_job(job) for job in self.jobs))

    async def _run_job(self, job: BackupJob) -> None:
        while not self._stop.is_set():
            await job.run_once()
            try:
                await asyncio.wait_for(self._stop.wait(), timeout=job.config.interval)
            except TimeoutError:
                continue

    def stop(self) -> None:
        self._stop.set()
