"""The rules in force, swappable at run time (SIGHUP) without ever being left empty."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from pathlib import Path

from daemon import telemetry
from daemon.events import KIND_EVENT, Event, decode_entry
from daemon.journal import Journal
from daemon.rules.config import RulesConfig
from daemon.rules.correlation import Correlation, Track
from daemon.rules.engine import RuleEngine
from daemon.rules.loader import Loaded, RuleLoadError, load_all
from daemon.rules.model import Match
from daemon.telemetry import RULES_RELOADS, get_logger

log = get_logger("rules")

# With no snapshot to start from, a consumer's correlation state is rebuilt from at most
# this many journal entries before its cursor: enough for minutes of a busy trail.
REBUILD_MAX_ENTRIES = 500_000
SAVE_INTERVAL = 1.0  # seconds between correlation snapshots of a consumer that moved


def hold_cursor(consumer: str) -> str:
    """The journal cursor holding back the entries a consumer's correlation state may need."""
    return f"{consumer}-correlation"


class ConsumerRules:
    """The rules as one journal consumer sees them: stateless matches plus its correlations.

    ``match`` is the notifier's classifier; the index uses it through the app.
    """

    def __init__(self, ruleset: RuleSet, track: Track) -> None:
        self._ruleset = ruleset
        self.track = track

    def match(self, event: Event) -> list[Match]:
        return self.track.classify(event, self._ruleset.engine.match(event))


class RuleSet:
    """Holds the current RuleEngine and correlations, and replaces them on reload.

    Construction loads the rules and raises RuleLoadError when they are bad, so a
    daemon refuses to start with broken rules. ``reload`` never raises for bad
    rules: it keeps the rules in force and logs every problem.

    Correlations are stateful, and each journal consumer reads at its own pace, so each
    gets its own ``Track`` (``consumer``); ``restore`` rebuilds them on start and
    ``persist`` saves them (see ``daemon.rules.correlation.Track`` for the contract).
    """

    def __init__(self, config: RulesConfig, *, metrics: bool = True) -> None:
        self._config = config
        self._metrics = metrics
        loaded = load_all(config)
        self._engine = RuleEngine(loaded.rules, metrics=metrics)
        self._correlations = loaded.correlations
        self._hidden = _hidden(loaded.correlations)
        self._tracks: dict[str, Track] = {}
        self._state_dir: Path | None = None
        log.info("rules.loaded", rules=len(self._engine.rules), correlations=len(self._correlations))

    @property
    def engine(self) -> RuleEngine:
        return self._engine

    @property
    def config(self) -> RulesConfig:
        return self._config

    @property
    def correlations(self) -> list[Correlation]:
        return list(self._correlations)

    def match(self, event: Event) -> list[Match]:
        """The stateless matches (no correlation), less base rules a correlation hides."""
        matches = self._engine.match(event)
        if self._hidden:
            return [m for m in matches if m.rule not in self._hidden]
        return matches

    def consumer(self, name: str) -> ConsumerRules:
        """The rules as journal consumer ``name`` (its cursor name) sees them."""
        return ConsumerRules(self, self._track(name))

    def _track(self, name: str) -> Track:
        track = self._tracks.get(name)
        if track is None:
            path = self._state_dir / "correlation" / f"{name}.json" if self._state_dir is not None else None
            track = Track(name, self._correlations, path, max_groups=self._config.correlation_max_groups)
            self._tracks[name] = track
        return track

    def flush_metrics(self) -> None:
        """Push pending match counts to the metrics; call when a batch ends and on stop."""
        self._engine.flush_metrics()

    # --- correlation state across restarts ----------------------------------------------------

    async def restore(self, journal: Journal, state_dir: Path, consumers: Sequence[str]) -> None:
        """Before the consumers start: give each its saved state, then feed it what it had
        read after that snapshot (entries below its cursor), without reporting anything.

        Call after ``journal.open`` with ``hold_cursor(c)`` among its consumers.
        """
        self._state_dir = state_dir
        for name in consumers:
            self._tracks.pop(name, None)
            track = self._track(name)
            cursor = journal.cursor(name)
            loaded = await asyncio.to_thread(track.load)
            if loaded and track.fed > journal.end_offset:
                log.error(
                    "correlation.snapshot_ahead",
                    consumer=name,
                    fed=track.fed,
                    journal_end=journal.end_offset,
                    action="the journal was replaced; correlation state starts afresh",
                )
                track = self._tracks[name] = Track(
                    name, self._correlations, track.path, max_groups=self._config.correlation_max_groups
                )
                loaded = False
            begin = track.fed if loaded else max(journal.start_offset, cursor - REBUILD_MAX_ENTRIES)
            if begin < journal.start_offset:
                telemetry.CORRELATION_STATE_GAPS.labels(consumer=name).inc()
                log.warning(
                    "correlation.state_gap",
                    consumer=name,
                    snapshot_offset=begin,
                    journal_start=journal.start_offset,
                    detail="events between them are no longer in the journal; counts start without them",
                )
                begin = journal.start_offset
            if not loaded:
                track.start_at(begin)
            fed = await self._rebuild(journal, track, begin, cursor)
            log.info(
                "correlation.rebuilt", consumer=name, snapshot=loaded, start=begin, cursor=cursor, events=fed
            )

    async def _rebuild(self, journal: Journal, track: Track, begin: int, end: int) -> int:
        if begin >= end:
            return 0
        reader = journal.reader(hold_cursor(track.name), start=begin)
        fed = 0
        try:
            while reader.next_offset < end:
                entries = await reader.read(min(1000, end - reader.next_offset), timeout=0)
                if not entries:
                    break
                fed += await asyncio.to_thread(self._feed, track, [e for e in entries if e[0] < end])
        finally:
            reader.close()
        return fed

    def _feed(self, track: Track, entries: list[tuple[int, bytes]]) -> int:
        fed = 0
        for offset, payload in entries:
            entry = decode_entry(offset, payload)
            if entry.kind != KIND_EVENT:
                continue
            event = entry.event()
            track.rebuild(offset, event, self._engine.match(event))
            fed += 1
        return fed

    async def persist(self, journal: Journal, *, force: bool = False) -> None:
        """Snapshot each consumer's state that changed, then let the journal release what
        the snapshot no longer needs. Safe to call at any time, from the event loop."""
        for name, track in list(self._tracks.items()):
            if track.path is None or not (track.dirty or force) or track.fed < 0:
                continue
            fed = await asyncio.to_thread(track.save, journal.cursor(name))
            await journal.commit(hold_cursor(name), min(fed, journal.end_offset))

    async def run_persist(self, journal: Journal, stop: asyncio.Event) -> None:
        """``persist`` every SAVE_INTERVAL until ``stop`` is set (the last save is the caller's)."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=SAVE_INTERVAL)
            if not stop.is_set():
                await self.persist(journal)

    # --- reload ---------------------------------------------------------------------------------

    def _build(self, config: RulesConfig) -> tuple[RuleEngine, Loaded]:
        loaded = load_all(config)
        return RuleEngine(loaded.rules, metrics=self._metrics), loaded

    def _install(self, config: RulesConfig, built: tuple[RuleEngine, Loaded]) -> None:
        engine, loaded = built
        old = {r.id for r in self._engine.rules} | {c.id for c in self._correlations}
        new = {r.id for r in engine.rules} | {c.id for c in loaded.correlations}
        # Counts gathered by the old engine would otherwise be lost with it.
        self._engine.flush_metrics()
        for track in self._tracks.values():
            track.reconfigure(loaded.correlations)
        # One attribute assignment: matchers see the old engine or the new one, never a mix.
        self._engine = engine
        self._correlations = loaded.correlations
        self._hidden = _hidden(loaded.correlations)
        self._config = config
        RULES_RELOADS.labels(result="ok").inc()
        log.info(
            "rules.reloaded",
            rules=len(engine.rules),
            correlations=len(loaded.correlations),
            added=sorted(new - old),
            removed=sorted(old - new),
        )

    def _refuse(self, exc: RuleLoadError) -> None:
        RULES_RELOADS.labels(result="failed").inc()
        log.error(
            "rules.reload_failed",
            problems=exc.problems,
            kept_rules=len(self._engine.rules),
            action="fix the rule files and send SIGHUP again; the previous rules stay in force",
        )

    def reload(self, config: RulesConfig | None = None) -> bool:
        """Reload from ``config`` (default: the current one). Blocking: reads files.

        True when the new rules are in force; False when they were refused, in
        which case the previous rules stay in force and the problems are logged.
        """
        target = config if config is not None else self._config
        try:
            built = self._build(target)
        except RuleLoadError as exc:
            self._refuse(exc)
            return False
        self._install(target, built)
        return True

    async def reload_async(self, config: RulesConfig | None = None) -> bool:
        """``reload`` with file reading and compiling off the event loop."""
        target = config if config is not None else self._config
        try:
            built = await asyncio.to_thread(self._build, target)
        except RuleLoadError as exc:
            self._refuse(exc)
            return False
        self._install(target, built)
        return True


def _hidden(correlations: Sequence[Correlation]) -> frozenset[str]:
    return frozenset(r for c in correlations for r in c.hides)
