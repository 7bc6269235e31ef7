"""The compiled rule index: which rules could match an event, found without scanning them all.

Each rule is filed once, under the most selective thing its pattern pins down:

1. exact ``operation`` values, paired with exact ``service`` values when it has
   them (``(service, operation)`` keys) or alone (``(None, operation)``);
2. ``operation`` prefixes and equals-ignore-case values, in small side tables;
3. exact ``service`` values alone;
4. exact values of a low-cardinality field (``user_type``, ``trace_type``,
   ``rating``, ``format``);
5. a canonical field that must be present (``code``, ...): the rule is skipped
   for events that lack it, which is most of them;
6. otherwise the fallback set, tried on every event.

The candidates for an event depend only on a short key built from those fields,
so they are computed once per distinct key and cached. The cost per event is a
key lookup plus the candidates' residual checks, whatever the number of rules.
Where the index already guarantees ``service`` and ``operation``, the residual
pattern omits them; a rule whose whole pattern is that pair costs nothing more.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from daemon.events import Event
from daemon.rules.model import Match, Rule
from daemon.rules.pattern import Pattern
from daemon.telemetry import RULE_MATCH_SECONDS, RULE_MATCHES, RULES_LOADED

# Fields worth indexing by exact value when a rule names no operation or service:
# they take few distinct values, so the candidate cache stays small.
_SECONDARY_FIELDS: Final[tuple[str, ...]] = ("user_type", "trace_type", "rating", "format")
# Distinct candidate keys kept before the cache is cleared (random operation names
# from a noisy client must not grow memory without bound).
_CACHE_LIMIT: Final = 65_536
_EMPTY: Final[dict[str, Any]] = {}


@dataclass(frozen=True, slots=True)
class _Candidate:
    order: int
    residual: Pattern | None  # None: the index alone proves the match
    uses_record: bool
    match: Match
    counter: Any  # the rule's pre-bound metrics child


def _exact_strings(pattern: Pattern, key: str) -> frozenset[str] | None:
    """Exact string values a top-level field must take, or None if unconstrained that way."""
    info = pattern.leaves.get(key)
    if info is None or info.other or info.prefixes or info.ignore_case or not info.exact:
        return None
    return info.exact


def _or_exact(pattern: Pattern, key: str) -> frozenset[str] | None:
    """Exact values of ``key`` implied by the pattern, looking through ``$or`` branches."""
    direct = _exact_strings(pattern, key)
    if direct is not None:
        return direct
    for branches in pattern.or_branches:
        union: set[str] = set()
        for branch in branches:
            values = _or_exact(branch, key)
            if values is None:
                break
            union |= values
        else:
            return frozenset(union)
    return None


class RuleEngine:
    """Classifies events against a fixed set of compiled rules.

    Thread-compatible: matching only reads the index, except for the candidate
    cache, whose updates are single dict operations. Build a new engine to change
    the rules (see ``RuleSet`` for reloads).
    """

    def __init__(self, rules: Sequence[Rule], *, metrics: bool = True) -> None:
        self.rules: tuple[Rule, ...] = tuple(rules)
        self._metrics = metrics
        self._exact: dict[tuple[str | None, str], list[_Candidate]] = {}
        self._op_ci: dict[str, list[_Candidate]] = {}
        self._op_prefix: dict[int, dict[str, list[_Candidate]]] = {}
        self._service: dict[str, list[_Candidate]] = {}
        self._secondary: dict[str, dict[str, list[_Candidate]]] = {}
        self._guarded: dict[str, list[_Candidate]] = {}
        self._fallback: list[_Candidate] = []
        for order, rule in enumerate(self.rules):
            self._file(order, rule)
        self._secondary_fields = tuple(f for f in _SECONDARY_FIELDS if f in self._secondary)
        self._guard_fields = tuple(sorted(self._guarded))
        self._cache: dict[tuple[Any, ...], tuple[_Candidate, ...]] = {}
        if metrics:
            RULES_LOADED.set(len(self.rules))

    # --- building ---------------------------------------------------------------------------

    def _candidate(self, order: int, rule: Rule, residual: Pattern | None) -> _Candidate:
        counter = (
            RULE_MATCHES.labels(rule=rule.id, category=rule.category) if self._metrics else None
        )
        uses_record = residual is not None and residual.uses_record
        return _Candidate(order, residual, uses_record, rule.match, counter)

    def _file(self, order: int, rule: Rule) -> None:
        pattern = rule.pattern
        ops = _exact_strings(pattern, "operation")
        services = _exact_strings(pattern, "service")
        if ops is not None:
            if services is not None:
                residual = pattern.without(frozenset({"service", "operation"}))
                cand = self._candidate(order, rule, residual)
                for service in services:
                    for op in ops:
                        self._exact.setdefault((service, op), []).append(cand)
            else:
                cand = self._candidate(order, rule, pattern.without(frozenset({"operation"})))
                for op in ops:
                    self._exact.setdefault((None, op), []).append(cand)
            return
        op_info = pattern.leaves.get("operation")
        if op_info is not None and not op_info.other:
            # Exact values, prefixes and ignore-case values: each into its own table,
            # with the full pattern checked afterwards.
            cand = self._candidate(order, rule, pattern)
            for op in op_info.exact:
                self._exact.setdefault((None, op), []).append(cand)
            for prefix in op_info.prefixes:
                self._op_prefix.setdefault(len(prefix), {}).setdefault(prefix, []).append(cand)
            for folded in op_info.ignore_case:
                self._op_ci.setdefault(folded, []).append(cand)
            return
        or_ops = _or_exact(pattern, "operation")
        if or_ops is not None:
            cand = self._candidate(order, rule, pattern)
            for op in or_ops:
                self._exact.setdefault((None, op), []).append(cand)
            return
        services = services if services is not None else _or_exact(pattern, "service")
        if services is not None:
            cand = self._candidate(order, rule, pattern)
            for service in services:
                self._service.setdefault(service, []).append(cand)
            return
        for field in _SECONDARY_FIELDS:
            values = _exact_strings(pattern, field)
            if values is not None:
                cand = self._candidate(order, rule, pattern)
                table = self._secondary.setdefault(field, {})
                for value in values:
                    table.setdefault(value, []).append(cand)
                return
        for field, info in sorted(pattern.leaves.items(), key=_guard_preference):
            if not info.allows_missing:
                self._guarded.setdefault(field, []).append(self._candidate(order, rule, pattern))
                return
        self._fallback.append(self._candidate(order, rule, pattern))

    # --- matching ---------------------------------------------------------------------------

    def _candidates(
        self, canonical: Mapping[str, Any], key: tuple[Any, ...]
    ) -> tuple[_Candidate, ...]:
        service = canonical.get("service")
        op = canonical.get("operation")
        found: dict[int, _Candidate] = {}

        def add(cands: Iterable[_Candidate] | None) -> None:
            if cands:
                for c in cands:
                    found[c.order] = c

        if op is not None:
            add(self._exact.get((service, op)))
            add(self._exact.get((None, op)))
            if self._op_ci:
                add(self._op_ci.get(op.lower()))
            for length, table in self._op_prefix.items():
                if len(op) >= length:
                    add(table.get(op[:length]))
        if service is not None:
            add(self._service.get(service))
        for field in self._secondary_fields:
            value = canonical.get(field)
            if value is not None:
                add(self._secondary[field].get(value))
        for field in self._guard_fields:
            if canonical.get(field) is not None:
                add(self._guarded[field])
        add(self._fallback)
        result = tuple(found[k] for k in sorted(found))
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[key] = result
        return result

    def _key(self, canonical: Mapping[str, Any]) -> tuple[Any, ...]:
        get = canonical.get
        key: tuple[Any, ...] = (get("service"), get("operation"))
        if self._secondary_fields:
            key += tuple(get(f) for f in self._secondary_fields)
        if self._guard_fields:
            key += tuple(get(f) is not None for f in self._guard_fields)
        return key

    def match_fields(
        self, canonical: Mapping[str, Any], record: Mapping[str, Any] | None = None
    ) -> list[Match]:
        """Matches for canonical fields and a parsed record, in rule order. No metrics."""
        key = self._key(canonical)
        cands = self._cache.get(key)
        if cands is None:
            cands = self._candidates(canonical, key)
        out: list[Match] = []
        rec = record if record is not None else _EMPTY
        for cand in cands:
            residual = cand.residual
            if residual is None or residual.matches(canonical, rec):
                out.append(cand.match)
        return out

    def match(self, event: Event) -> list[Match]:
        """Every rule matching the event, in rule order; counts matches and time taken.

        The raw record is parsed only when a candidate rule looks into it. Never
        raises for event content: a record that is not a JSON object is matched as
        an empty one.
        """
        start = time.perf_counter()
        canonical = event.canonical
        key = self._key(canonical)
        cands = self._cache.get(key)
        if cands is None:
            cands = self._candidates(canonical, key)
        out: list[Match] = []
        record: Mapping[str, Any] | None = None
        for cand in cands:
            residual = cand.residual
            if residual is not None:
                if cand.uses_record:
                    if record is None:
                        record = _parsed(event)
                    ok = residual.matches(canonical, record)
                else:
                    ok = residual.matches(canonical, _EMPTY)
                if not ok:
                    continue
            out.append(cand.match)
            if cand.counter is not None:
                cand.counter.inc()
        if self._metrics:
            RULE_MATCH_SECONDS.observe(time.perf_counter() - start)
        return out

    def index_stats(self) -> dict[str, int]:
        """How the rules were filed; for ``rules list`` and the benchmark."""
        return {
            "rules": len(self.rules),
            "exact_keys": len(self._exact),
            "prefix_tables": len(self._op_prefix),
            "ignore_case_keys": len(self._op_ci),
            "service_keys": len(self._service),
            "secondary_fields": len(self._secondary),
            "guarded": sum(len(v) for v in self._guarded.values()),
            "fallback": len(self._fallback),
        }


def _guard_preference(item: tuple[str, Any]) -> tuple[int, str]:
    # Fields absent from most events make the best guards.
    return (0 if item[0] in ("code", "error") else 1, item[0])


def _parsed(event: Event) -> Mapping[str, Any]:
    try:
        value = event.parsed
    except ValueError:
        return _EMPTY
    return value if isinstance(value, dict) else _EMPTY
