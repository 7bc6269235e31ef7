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

The candidates for an event depend only on a key made of its low-cardinality
canonical fields (service, operation, code, user_type, trace_type, rating,
format), so they are computed once per distinct key and cached. Better still, a
rule that reads nothing but those fields has the same outcome for every event
with that key: it is decided when the cache entry is filled. What remains per
event is one key lookup plus the checks of rules that look at other fields or
into the raw record (a handful), whatever the number of rules.
"""

from __future__ import annotations

import operator
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from daemon.events import Event
from daemon.rules.model import Match, Rule
from daemon.rules.pattern import Needles, Pattern
from daemon.telemetry import RULE_MATCH_SECONDS, RULE_MATCHES, RULES_LOADED

# Fields worth indexing by exact value when a rule names no operation or service:
# they take few distinct values, so the candidate cache stays small.
_SECONDARY_FIELDS: Final[tuple[str, ...]] = ("user_type", "trace_type", "rating", "format")
# Fields whose values make up the cache key: few distinct values each in real traffic.
_KEY_FIELDS: Final[tuple[str, ...]] = (
    "service",
    "operation",
    "code",
    "user_type",
    "trace_type",
    "rating",
    "format",
)
_KEY_SET: Final = frozenset(_KEY_FIELDS)
# Distinct candidate keys kept before the cache is cleared (random operation names
# from a noisy client must not grow memory without bound).
_CACHE_LIMIT: Final = 65_536
_EMPTY: Final[dict[str, Any]] = {}
# One event in TIMING_SAMPLE is timed into the histogram; counts flush every FLUSH_EVERY.
TIMING_SAMPLE: Final = 16
FLUSH_EVERY: Final = 4096


@dataclass(frozen=True, slots=True)
class _Candidate:
    order: int
    residual: Pattern | None  # None: the index alone proves the match
    uses_record: bool
    static: bool  # the outcome depends on key fields only: decided once per cache key
    match: Match
    # Text one of which the raw record must hold (Pattern.needles): a record without any
    # is not parsed for this rule.
    needles: Needles | None = None
    # (canonical field, [(text, folded)]): the field's value holds one of the texts (as it
    # is, or lower-cased when folded) whenever the rule matches; a missing value never does.
    gate: tuple[str, tuple[tuple[str, bool], ...]] | None = None


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
        self._static_fields: set[str] = set()
        for order, rule in enumerate(self.rules):
            self._file(order, rule)
        self._secondary_fields = tuple(f for f in _SECONDARY_FIELDS if f in self._secondary)
        self._guard_fields = tuple(sorted(self._guarded))
        # Guard fields outside the key: their presence must be part of the key.
        self._extra_guards = tuple(f for f in self._guard_fields if f not in _KEY_SET)
        # Only the key fields some rule depends on: a shorter key is cheaper to build.
        used = {"service", "operation", *self._secondary_fields, *self._guard_fields}
        used |= self._static_fields
        self._key_fields = tuple(f for f in _KEY_FIELDS if f in used)
        # itemgetter of two or more fields returns a tuple, which is the key.
        self._getter = operator.itemgetter(*self._key_fields)
        self._cache: dict[tuple[Any, ...], tuple[_Candidate, ...]] = {}
        self._seen = 0
        self._pending = [0] * len(self.rules)
        self._counters: list[Any] = [
            RULE_MATCHES.labels(rule=r.id, category=r.category) if metrics else None for r in self.rules
        ]
        if metrics:
            RULES_LOADED.set(len(self.rules))

    # --- building ---------------------------------------------------------------------------

    def _candidate(self, order: int, rule: Rule, residual: Pattern | None) -> _Candidate:
        uses_record = residual is not None and residual.uses_record
        static = residual is None or (not uses_record and residual.fields <= _KEY_SET)
        if static and residual is not None:
            self._static_fields |= residual.fields
        needles = residual.needles if residual is not None and uses_record else None
        gate = None
        if residual is not None and not static:
            # A field outside the key: key fields are decided once per key anyway.
            gates = [(f, n) for f, n in residual.field_needles.items() if f not in _KEY_SET]
            if gates:
                field, best = min(gates, key=lambda g: (len(g[1]), -min(len(x.text) for x in g[1])))
                gate = (field, tuple((n.text.decode(), n.folded) for n in best))
        return _Candidate(order, residual, uses_record, static, rule.match, needles, gate)

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

    def _candidates(self, canonical: Mapping[str, Any], key: tuple[Any, ...]) -> tuple[_Candidate, ...]:
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
        result: list[_Candidate] = []
        for k in sorted(found):
            cand = found[k]
            if not cand.static:
                result.append(cand)
            elif cand.residual is None or cand.residual.matches(canonical, _EMPTY):
                # Decided for every event with this key: keep it with nothing left to check.
                result.append(_Candidate(k, None, False, True, cand.match))
        return self._remember(key, tuple(result))

    def _remember(self, key: tuple[Any, ...], result: tuple[_Candidate, ...]) -> tuple[_Candidate, ...]:
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[key] = result
        return result

    def _key(self, canonical: Mapping[str, Any]) -> tuple[Any, ...]:
        try:
            key: tuple[Any, ...] = self._getter(canonical)
        except KeyError:  # canonical dicts normally carry every field; tolerate partial ones
            key = tuple(map(canonical.get, self._key_fields))
        if self._extra_guards:
            get = canonical.get
            key += tuple(get(f) is not None for f in self._extra_guards)
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
        an empty one. Match counts reach the metrics in batches (``flush_metrics``);
        the time histogram samples one event in ``TIMING_SAMPLE``, because
        observing every event would cost more than matching it.
        """
        self._seen += 1
        timed = self._metrics and not self._seen % TIMING_SAMPLE
        start = time.perf_counter() if timed else 0.0
        canonical = event.canonical
        key = self._key(canonical)
        cands = self._cache.get(key)
        if cands is None:
            cands = self._candidates(canonical, key)
        out: list[Match] = []
        if not cands:
            if timed:
                self._timed(start)
            return out
        pending = self._pending
        record: Mapping[str, Any] | None = None
        shape = -1
        for cand in cands:
            residual = cand.residual
            if residual is not None:
                gate = cand.gate
                if gate is not None:
                    value = canonical.get(gate[0])
                    if value is None or not _text_holds(value, gate[1]):
                        continue
                if cand.uses_record:
                    needles = cand.needles
                    if needles is not None:
                        if shape < 0:
                            shape = _shape(event.record)
                        if shape and not _holds(event.record, shape, needles):
                            continue
                    if record is None:
                        record = _parsed(event)
                    ok = residual.matches(canonical, record)
                else:
                    ok = residual.matches(canonical, _EMPTY)
                if not ok:
                    continue
            out.append(cand.match)
            pending[cand.order] += 1
        if timed:
            self._timed(start)
        return out

    def _timed(self, start: float) -> None:
        RULE_MATCH_SECONDS.observe(time.perf_counter() - start)
        # FLUSH_EVERY is a multiple of TIMING_SAMPLE, so this runs on a timed event.
        if not self._seen % FLUSH_EVERY:
            self.flush_metrics()

    def flush_metrics(self) -> None:
        """Add the match counts gathered since the last flush to the metrics.

        Called every ``FLUSH_EVERY`` events by ``match``; call it when a batch ends
        or before stopping so that no count is left behind.
        """
        if not self._metrics:
            return
        pending = self._pending
        for order, n in enumerate(pending):
            if n:
                self._counters[order].inc(n)
                pending[order] = 0

    def checks_for(self, canonical: Mapping[str, Any]) -> int:
        """How many rules are still checked one by one for an event with these fields.

        Diagnostics and the benchmark: the per-event work beyond the key lookup.
        """
        key = self._key(canonical)
        cands = self._cache.get(key)
        if cands is None:
            cands = self._candidates(canonical, key)
        return sum(1 for c in cands if c.residual is not None)

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


# _shape() bits: needles can be checked at all; the record is ASCII; it holds no backslash.
_SOUND: Final = 1
_ASCII: Final = 2
_PLAIN: Final = 4
_SPACE: Final = b" \t\r\n"


def _shape(raw: bytes) -> int:
    """What the needle checks may assume about a raw record (0: nothing, parse it).

    A needle is plain ASCII text; it is missing from a record that holds the value only
    when the value is spelt with \\u or \\/ escapes, or, for a case-insensitive needle,
    through a non-ASCII character that lower-cases to ASCII (the Kelvin sign).
    """
    # find() of one byte is a memchr: most records hold no backslash at all, and only
    # those that do pay for the two substring scans.
    if raw.find(b"\\") < 0:
        return _SOUND | _PLAIN | (_ASCII if raw.isascii() else 0)
    if b"\\u" in raw or b"\\/" in raw:
        return 0
    return _SOUND | (_ASCII if raw.isascii() else 0)


def _text_holds(value: str, texts: tuple[tuple[str, bool], ...]) -> bool:
    # A loop, not any(): a generator costs more than the check on every event.
    for text, folded in texts:  # noqa: SIM110
        if text in (value.lower() if folded else value):
            return True
    return False


def _holds(raw: bytes, shape: int, needles: Needles) -> bool:
    """False only if the record holds none of the needles (so the rule cannot match)."""
    lowered: bytes | None = None
    for needle in needles:
        if not needle.folded:
            if needle.text in raw:
                return True
        elif not shape & _ASCII:
            return True
        elif needle.key and shape & _PLAIN:
            # Lower-casing a whole record costs more than finding the key and folding its
            # value; without a backslash a string value ends at the next quote.
            if _in_values(raw, needle.key, needle.text):
                return True
        else:
            if lowered is None:
                lowered = raw.lower()
            if needle.text in lowered:
                return True
    return False


def _in_values(raw: bytes, key: bytes, text: bytes) -> bool:
    """True if some value of ``key`` (quoted) holds ``text`` ignoring case, or is not a string.

    Only for records without a backslash: a quote then always ends a string, so a quoted
    key followed by a colon is a key and its string value runs to the next quote.
    """
    n = len(raw)
    start = 0
    while True:
        i = raw.find(key, start)
        if i < 0:
            return False
        j = i + len(key)
        while j < n and raw[j] in _SPACE:
            j += 1
        if j >= n or raw[j] != 0x3A:  # the key's text as a value, not a key
            start = j
            continue
        j += 1
        while j < n and raw[j] in _SPACE:
            j += 1
        if j >= n or raw[j] != 0x22:
            return True  # an object, array, number...: the pattern decides
        end = raw.find(b'"', j + 1)
        if end < 0 or text in raw[j + 1 : end].lower():
            return True
        start = end + 1


def _parsed(event: Event) -> Mapping[str, Any]:
    try:
        value = event.parsed
    except ValueError:
        return _EMPTY
    return value if isinstance(value, dict) else _EMPTY
