"""The health of everything behind the journal: stores, archivers, the index, queue sources.

Readiness (``GET /readyz``) is only "can this process accept events": the journal is
writable and under its budget. A failing store, index or source does not make the
process unready, because the journal exists to hold events through exactly that outage;
a readiness probe that failed then would take the pod out of its Service and turn a
store outage into an ingest outage. What fails downstream is reported here instead: by
``GET /healthz/downstream`` (public), ``GET /v1/admin/health`` (admin) and the gauge
``trailkeeper_downstream_healthy{component,name}`` that alerts are written against.

Two texts per problem: ``public`` names the component and what is wrong in fixed words,
so anyone who can reach the listener learns nothing about hosts, buckets, paths, key ids
or witness URLs; ``detail`` is the error as the component reported it, for admins.

Checks are shared: a report younger than ``max_age`` is served as is, and one check runs
at a time, so callers of the public endpoint cannot make the daemon hammer its stores.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from daemon import telemetry
from daemon.stores.base import Store, StoreError
from daemon.telemetry import get_logger

if TYPE_CHECKING:
    from daemon.archive.archiver import Archiver
    from daemon.index import Indexer
    from daemon.integrity.runtime import Integrity
    from daemon.sources.base import QueueSource

log = get_logger("health")

STORE_CHECK_TIMEOUT = 5.0
REFRESH_SECONDS = 10.0  # how often the gauge is refreshed without anyone asking
SHARED_FOR_SECONDS = 2.0  # a report this young answers an HTTP request without new checks


class Components(Protocol):
    """What is checked: the running app's components (the lists grow while it starts)."""

    @property
    def stores(self) -> Mapping[str, Store]: ...
    @property
    def archivers(self) -> Sequence[Archiver]: ...
    @property
    def indexer(self) -> Indexer | None: ...
    @property
    def sources(self) -> Sequence[QueueSource]: ...
    @property
    def integrity(self) -> Integrity | None: ...


@dataclass(frozen=True, slots=True)
class Problem:
    component: str  # store, archive, index, source
    name: str
    public: str
    detail: str


@dataclass(frozen=True, slots=True)
class Report:
    """One round of checks. ``healthy`` is False while any problem stands; warnings
    (witnesses that stopped cosigning) never make it unhealthy."""

    problems: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    checked: float = 0.0

    @property
    def healthy(self) -> bool:
        return not self.problems

    def body(self, *, detailed: bool) -> dict[str, Any]:
        """The JSON answer: public wording, or (``detailed``, admins only) the errors themselves."""
        if detailed:
            return {
                "healthy": self.healthy,
                "problems": [p.detail for p in self.problems],
                "warnings": list(self.warnings),
            }
        witnesses = len(self.warnings)
        return {
            "healthy": self.healthy,
            "problems": [p.public for p in self.problems],
            # Witness warnings carry URLs and remote error text: only their number is public.
            "warnings": (
                [f"{witnesses} witness warning(s): details in GET /v1/admin/health"] if witnesses else []
            ),
        }


class DownstreamHealth:
    """Checks the components behind the journal and keeps the gauge current.

    ``report`` never raises; ``run`` refreshes every ``interval`` s until cancelled.
    """

    def __init__(self, components: Components, interval: float = REFRESH_SECONDS) -> None:
        self.components = components
        self.interval = interval
        self._last: Report | None = None
        self._lock = asyncio.Lock()
        self._seen: set[tuple[str, str]] = set()  # components with a gauge series
        self._components: list[tuple[str, str]] = []  # those of the last check
        self._failing: set[tuple[str, str]] = set()

    async def report(self, max_age: float = SHARED_FOR_SECONDS) -> Report:
        """A report at most ``max_age`` s old (0: always check now)."""
        async with self._lock:
            last = self._last
            if last is not None and time.monotonic() - last.checked < max_age:
                return last
            report = await self._check()
            self._last = report
            self._export(report)
            return report

    async def run(self) -> None:
        while True:
            await self.report(max_age=0)
            await asyncio.sleep(self.interval)

    async def _check(self) -> Report:
        c = self.components
        problems: list[Problem] = []
        stores = dict(c.stores)
        results = await asyncio.gather(*(_check_store(s) for s in stores.values()))
        for name, error in zip(stores, results, strict=True):
            if error is not None:
                public, detail = error
                problems.append(Problem("store", name, f"store {name}: {public}", f"store {name}: {detail}"))
        for archiver in list(c.archivers):
            if not archiver.healthy:
                name = archiver.d.name
                problems.append(
                    Problem(
                        "archive",
                        name,
                        f"archive {name}: cannot store files",
                        f"archive {name}: {archiver.last_error}",
                    )
                )
        indexer = c.indexer
        if indexer is not None and not indexer.healthy:
            name = indexer.backend.name
            problems.append(
                Problem("index", name, f"index {name}: unavailable", f"index {name}: {indexer.last_error}")
            )
        for source in list(c.sources):
            if not source.healthy:
                label = f"source {source.name} ({source.type})"
                problems.append(
                    Problem("source", source.name, f"{label}: not connected", f"{label}: {source.last_error}")
                )
        integrity = c.integrity
        warnings = integrity.problems() if integrity is not None else []
        report = Report(problems, warnings, time.monotonic())
        # Every component gets a series, healthy ones included, so an alert can tell
        # "healthy" from "not reported".
        self._components = [("store", n) for n in stores]
        self._components += [("archive", a.d.name) for a in c.archivers]
        self._components += [("index", indexer.backend.name)] if indexer is not None else []
        self._components += [("source", s.name) for s in c.sources]
        return report

    def _export(self, report: Report) -> None:
        failing = {(p.component, p.name) for p in report.problems}
        current = set(self._components)
        for component, name in current:
            telemetry.DOWNSTREAM_HEALTHY.labels(component=component, name=name).set(
                0 if (component, name) in failing else 1
            )
        for component, name in self._seen - current:
            # A component that went away (a source stopped at shutdown) leaves no stale series.
            telemetry.DOWNSTREAM_HEALTHY.remove(component, name)
        # Once per change, not per check: the components log their own errors as they happen.
        for p in report.problems:
            if (p.component, p.name) not in self._failing:
                log.warning("health.downstream_failing", component=p.component, name=p.name, error=p.detail)
        for component, name in sorted((self._failing - failing) & current):
            log.info("health.downstream_recovered", component=component, name=name)
        self._failing = failing
        self._seen = current


async def _check_store(store: Store) -> tuple[str, str] | None:
    """None when the store can be written, else (public wording, the error)."""
    try:
        await asyncio.wait_for(store.check(), timeout=STORE_CHECK_TIMEOUT)
    except TimeoutError:
        return "check timed out", f"check timed out after {STORE_CHECK_TIMEOUT:g} s"
    except StoreError as exc:
        return "not writable", str(exc)
    except Exception as exc:  # a check must report, never break the round of checks
        return "check failed", f"check failed: {type(exc).__name__}: {exc}"
    return None
