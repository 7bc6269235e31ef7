"""The rules in force, swappable at run time (SIGHUP) without ever being left empty."""

from __future__ import annotations

import asyncio

from daemon.events import Event
from daemon.rules.config import RulesConfig
from daemon.rules.engine import RuleEngine
from daemon.rules.loader import RuleLoadError, load_rules
from daemon.rules.model import Match
from daemon.telemetry import RULES_RELOADS, get_logger

log = get_logger("rules")


class RuleSet:
    """Holds the current RuleEngine and replaces it on reload.

    Construction loads the rules and raises RuleLoadError when they are bad, so a
    daemon refuses to start with broken rules. ``reload`` never raises for bad
    rules: it keeps the rules in force and logs every problem.
    """

    def __init__(self, config: RulesConfig, *, metrics: bool = True) -> None:
        self._config = config
        self._metrics = metrics
        self._engine = RuleEngine(load_rules(config), metrics=metrics)
        log.info("rules.loaded", rules=len(self._engine.rules))

    @property
    def engine(self) -> RuleEngine:
        return self._engine

    @property
    def config(self) -> RulesConfig:
        return self._config

    def match(self, event: Event) -> list[Match]:
        return self._engine.match(event)

    def flush_metrics(self) -> None:
        """Push pending match counts to the metrics; call when a batch ends and on stop."""
        self._engine.flush_metrics()

    def _build(self, config: RulesConfig) -> RuleEngine:
        return RuleEngine(load_rules(config), metrics=self._metrics)

    def _install(self, config: RulesConfig, engine: RuleEngine) -> None:
        old = {r.id for r in self._engine.rules}
        new = {r.id for r in engine.rules}
        # Counts gathered by the old engine would otherwise be lost with it.
        self._engine.flush_metrics()
        # One attribute assignment: matchers see the old engine or the new one, never a mix.
        self._engine = engine
        self._config = config
        RULES_RELOADS.labels(result="ok").inc()
        log.info(
            "rules.reloaded",
            rules=len(new),
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
            engine = self._build(target)
        except RuleLoadError as exc:
            self._refuse(exc)
            return False
        self._install(target, engine)
        return True

    async def reload_async(self, config: RulesConfig | None = None) -> bool:
        """``reload`` with file reading and compiling off the event loop."""
        target = config if config is not None else self._config
        try:
            engine = await asyncio.to_thread(self._build, target)
        except RuleLoadError as exc:
            self._refuse(exc)
            return False
        self._install(target, engine)
        return True
