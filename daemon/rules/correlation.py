"""Correlation rules: key events made of several events (a burst, a spread, a sequence).

A correlation is written in a rule file beside the rules, under ``correlations:``::

    correlations:
      - id: aws.console-login-failure-burst
        category: high_risk
        severity: high
        description: A burst of failed console sign-ins from one address.
        type: event_count              # event_count, value_count, temporal, temporal_ordered
        match:                         # the events counted: an inline pattern ...
          operation: [ConsoleLogin]
          error: [Failed authentication]
        # rules: [cis.4.6-console-authentication-failures]   ... or rules in force, by id
        group_by: [source_ip]          # canonical fields, or record.<path> into the raw record
        timespan: 1m                   # ms, s, m, h, d
        condition: {gte: 20}           # gte or gt; value_count also needs field:
      - id: aws.iam-backdoor-user
        type: temporal_ordered         # the steps in this order, all within the timespan
        rules:                         # a rule id or {match: pattern} per step
          - match: {operation: [CreateUser]}
          - match: {operation: [AttachUserPolicy]}
          - match: {operation: [CreateAccessKey]}
        group_by: [user_id]
        timespan: 10m

Windows run on each event's own time (CloudTrail ``eventTime``, CTS ``time``; the
receive time when an event has none), so a replay of the journal makes the same
decisions as the live run. A correlation fires once per window: after a burst has
been reported, its group stays quiet for one timespan, so 1,000 failures in a
minute are one key event, not 981. The match is attached to the event that
completes the correlation.

State is bounded: each correlation keeps at most ``max_groups`` groups (the least
recently used one is evicted and counted in a metric), and a group holds at most
as many events as its threshold needs. A ``Track`` is the state of one journal
consumer (the index, the notifier): each consumer reads the journal at its own pace,
so each runs the correlations over the same events in the same order and reaches the
same decisions, and its state is saved beside its cursor (see ``Track``).
"""

from __future__ import annotations

import bisect
import datetime as dt
import hashlib
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

import orjson

from daemon import telemetry
from daemon.durable import atomic_write
from daemon.events import CANONICAL_FIELDS, Event
from daemon.rules.model import Match, header_problems
from daemon.rules.pattern import Pattern, PatternError, text_of
from daemon.telemetry import get_logger
from daemon.units import parse_duration

log = get_logger("rules")

CorrelationType = Literal["event_count", "value_count", "temporal", "temporal_ordered"]
TYPES: Final = ("event_count", "value_count", "temporal", "temporal_ordered")
OPERATORS: Final = ("gte", "gt")
DEFAULT_MAX_GROUPS: Final = 10_000
# A threshold above this would let one group hold more events than a snapshot should carry.
MAX_THRESHOLD: Final = 10_000
# An event stamped further ahead of its receive time than this is placed at its receive
# time: one event from a skewed clock must not make its group blind to every later event.
MAX_AHEAD_MS: Final = 3_600_000
# Recorded fires kept for re-delivery (see Track): bounded even if a consumer never commits.
MAX_FIRED: Final = 100_000
SNAPSHOT_VERSION: Final = 1
_SWEEP_EVERY: Final = 256
_SHOWN_CHARS: Final = 200
CORRELATION_KEYS: Final = (
    "id",
    "category",
    "severity",
    "description",
    "tags",
    "type",
    "rules",
    "match",
    "group_by",
    "timespan",
    "condition",
    "field",
)


# --- the model ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FieldRef:
    """A value of an event: a canonical field, or a path into the raw record."""

    name: str
    canonical: str | None = None
    path: tuple[str, ...] = ()

    @classmethod
    def parse(cls, name: str, *, record_default: bool = False) -> FieldRef:
        """``source_ip`` (canonical) or ``record.userIdentity.arn``; with ``record_default``
        (Sigma fields are record fields) a name that is not canonical is a record path."""
        if name in CANONICAL_FIELDS and not record_default:
            return cls(name, canonical=name)
        text = name[len("record.") :] if name.startswith("record.") else name
        if not record_default and not name.startswith("record."):
            raise ValueError(f"{name!r}: a canonical field ({', '.join(CANONICAL_FIELDS)}) or record.<path>")
        parts = tuple(p for p in text.split(".") if p)
        if not parts:
            raise ValueError(f"{name!r}: an empty record path")
        return cls(name, path=parts)

    def value(self, event: Event) -> str | None:
        if self.canonical is not None:
            return event.canonical.get(self.canonical)
        node: Any = event.parsed
        for part in self.path:
            if not isinstance(node, Mapping):
                return None
            node = node.get(part)
        return text_of(node)


@dataclass(frozen=True, slots=True)
class Step:
    """One base rule of a correlation: a rule in force (by id) or an inline pattern.

    ``group`` gives, in ``Correlation.group_by`` order, where this step's events carry
    each group value (Sigma aliases let the steps name them differently); ``value`` is
    the field a value_count counts.
    """

    label: str
    group: tuple[FieldRef, ...]
    rule: str | None = None
    pattern: Pattern | None = None
    value: FieldRef | None = None
    # The canonical part of an inline pattern that reads the record: checked first, so the
    # record is parsed only for events that can match.
    prefilter: Pattern | None = field(default=None, compare=False)

    def matches(self, event: Event, rule_ids: frozenset[str]) -> bool:
        if self.rule is not None:
            return self.rule in rule_ids
        assert self.pattern is not None
        if not self.pattern.uses_record:
            return self.pattern.matches(event.canonical)
        if self.prefilter is not None and not self.prefilter.matches(event.canonical):
            return False
        return self.pattern.matches(event.canonical, event.parsed)


@dataclass(frozen=True, slots=True)
class Correlation:
    """A compiled correlation rule. ``needed`` is what fires it: events (event_count),
    distinct values (value_count) or distinct steps seen (temporal; all steps in order for
    temporal_ordered). ``hides`` lists base rules whose own matches are not reported (Sigma
    ``generate: false``)."""

    id: str
    category: str
    severity: str
    description: str
    type: CorrelationType
    steps: tuple[Step, ...]
    group_by: tuple[str, ...]
    timespan_ms: int
    needed: int
    tags: tuple[str, ...] = ()
    source: str = ""
    hides: tuple[str, ...] = ()

    @property
    def fingerprint(self) -> str:
        """Changes when anything deciding the state changes: a reload keeps the state of
        an unchanged correlation and starts a changed one afresh."""
        doc = {
            "type": self.type,
            "steps": [
                [
                    s.label,
                    s.rule,
                    s.pattern.source if s.pattern else None,
                    [g.name for g in s.group],
                    s.value.name if s.value else None,
                ]
                for s in self.steps
            ],
            "span": self.timespan_ms,
            "needed": self.needed,
            "scope": "tenant",  # group keys lead with the tenant: older state starts afresh
        }
        return hashlib.sha256(orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]

    @property
    def referenced(self) -> tuple[str, ...]:
        return tuple(s.rule for s in self.steps if s.rule is not None)

    def match(self, key: tuple[str | None, ...], count: int) -> Match:
        """The key-event match: the description names the group and what was counted."""
        group = ", ".join(f"{n}={_shown(v)}" for n, v in zip(self.group_by, key, strict=True)) or "all events"
        span = _span_text(self.timespan_ms)
        if self.type == "event_count":
            what = f"{count} events within {span}"
        elif self.type == "value_count":
            field_name = self.steps[0].value.name if self.steps[0].value else "value"
            what = f"{count} distinct {field_name} values within {span}"
        elif self.type == "temporal":
            what = (
                f"{count} of {len(self.steps)} rules ({', '.join(s.label for s in self.steps)}) within {span}"
            )
        else:
            what = f"{' then '.join(s.label for s in self.steps)} within {span}"
        text = (
            f"{self.description} Correlation: {what} for {group}."
            if self.description
            else f"{what} for {group}."
        )
        return Match(self.id, self.category, self.severity, text.strip(), self.tags)


def _shown(value: str | None) -> str:
    if value is None:
        return "(none)"
    return value if len(value) <= _SHOWN_CHARS else value[:_SHOWN_CHARS] + "..."


def _span_text(ms: int) -> str:
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def needed_count(op: str, count: int) -> int:
    """Events a condition ``{op: count}`` needs to hold, for the operators that fire on arrival."""
    return count + 1 if op == "gt" else count


# --- parsing the YAML form ---------------------------------------------------------------


def _canonical_prefilter(pattern: Pattern) -> Pattern | None:
    canon = {k: v for k, v in pattern.source.items() if k in CANONICAL_FIELDS}
    if not canon or not pattern.uses_record:
        return None
    return Pattern(canon)


def inline_step(label: str, pattern: Pattern, group: tuple[FieldRef, ...], value: FieldRef | None) -> Step:
    return Step(label, group, pattern=pattern, value=value, prefilter=_canonical_prefilter(pattern))


def parse_correlation(raw: Any, index: int, source: str, problems: list[str]) -> Correlation | None:
    """One correlation of a rule file, or None with every problem appended to ``problems``.

    References to rules by id are checked later, against the rules in force.
    """
    if not isinstance(raw, dict):
        problems.append(f"{source}: correlations[{index}]: expected a mapping with id, type, ...")
        return None
    cid = raw.get("id")
    where = (
        f"{source}: correlation {cid!r}"
        if isinstance(cid, str) and cid
        else f"{source}: correlations[{index}]"
    )
    before = len(problems)
    problems += header_problems(raw, where, CORRELATION_KEYS)
    category = raw.get("category")
    severity = raw.get("severity")
    description = raw.get("description", "")
    if not isinstance(description, str):
        description = ""
    tags = raw.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        problems.append(f"{where}: tags: expected a list of strings")
        tags = []
    ctype = raw.get("type")
    if ctype not in TYPES:
        problems.append(f"{where}: type: expected one of {', '.join(TYPES)}")
    span_ms = 0
    try:
        span_ms = int(parse_duration(raw.get("timespan")) * 1000)
        if span_ms <= 0:
            raise ValueError("a timespan must be longer than 0")
    except ValueError as exc:
        problems.append(f"{where}: timespan: required; {exc}")
    group: tuple[FieldRef, ...] = ()
    group_by = raw.get("group_by", [])
    if not isinstance(group_by, list) or not all(isinstance(g, str) for g in group_by):
        problems.append(f"{where}: group_by: expected a list of field names")
    else:
        refs = []
        for i, name in enumerate(group_by):
            try:
                refs.append(FieldRef.parse(name))
            except ValueError as exc:
                problems.append(f"{where}: group_by[{i}]: {exc}")
        group = tuple(refs)
    value: FieldRef | None = None
    if "field" in raw:
        if ctype != "value_count":
            problems.append(f"{where}: field: only for type value_count")
        elif not isinstance(raw["field"], str):
            problems.append(f"{where}: field: expected a field name")
        else:
            try:
                value = FieldRef.parse(raw["field"])
            except ValueError as exc:
                problems.append(f"{where}: field: {exc}")
    elif ctype == "value_count":
        problems.append(f"{where}: field: required for value_count (the field whose distinct values count)")
    steps = _parse_steps(raw, where, str(cid), group, value, problems)
    needed = _parse_condition(raw.get("condition"), ctype, len(steps), where, problems)
    if ctype in ("event_count", "value_count") and len(steps) > 1 and "match" in raw:
        problems.append(f"{where}: give either match or rules, not both")
    if ctype in ("temporal", "temporal_ordered") and len(steps) < 2:
        problems.append(f"{where}: rules: a {ctype} correlation needs at least two steps")
    if len(problems) > before:
        return None
    assert isinstance(cid, str) and isinstance(category, str) and isinstance(severity, str)
    assert ctype in TYPES
    return Correlation(
        id=cid,
        category=category,
        severity=severity,
        description=description.strip(),
        type=ctype,
        steps=steps,
        group_by=tuple(g.name for g in group),
        timespan_ms=span_ms,
        needed=needed,
        tags=tuple(tags),
        source=source,
    )


def _parse_steps(
    raw: dict[str, Any],
    where: str,
    cid: str,
    group: tuple[FieldRef, ...],
    value: FieldRef | None,
    problems: list[str],
) -> tuple[Step, ...]:
    items: list[Any] = []
    if "match" in raw:
        items.append({"match": raw["match"]})
    rules = raw.get("rules", [])
    if not isinstance(rules, list):
        problems.append(f"{where}: rules: expected a list of rule ids or {{match: pattern}}")
        rules = []
    items += rules
    if not items:
        problems.append(f"{where}: match or rules: required (the events the correlation reads)")
    steps: list[Step] = []
    for i, item in enumerate(items):
        if isinstance(item, str):
            steps.append(Step(item, group, rule=item, value=value))
        elif isinstance(item, dict) and set(item) == {"match"}:
            try:
                pattern = Pattern(
                    item["match"], "match" if "match" in raw and i == 0 else f"rules[{i}].match"
                )
            except PatternError as exc:
                problems.append(f"{where}: {exc.path}: {exc.message}")
                continue
            steps.append(inline_step(f"{cid}#{i + 1}", pattern, group, value))
        else:
            problems.append(f"{where}: rules[{i}]: expected a rule id or {{match: pattern}}")
    return tuple(steps)


def _parse_condition(cond: Any, ctype: Any, steps: int, where: str, problems: list[str]) -> int:
    if cond is None:
        if ctype in ("temporal", "temporal_ordered"):
            return steps
        problems.append(f"{where}: condition: required, such as {{gte: 20}}")
        return 0
    if not isinstance(cond, dict) or len(cond) != 1:
        problems.append(f"{where}: condition: expected one of {{gte: N}} or {{gt: N}}")
        return 0
    [(op, count)] = cond.items()
    if op not in OPERATORS:
        problems.append(
            f"{where}: condition.{op}: only gte and gt (a correlation fires when an event arrives; "
            "fewer-than conditions would need a timer)"
        )
        return 0
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        problems.append(f"{where}: condition.{op}: expected a whole number of at least 1")
        return 0
    needed = needed_count(op, count)
    if ctype == "temporal_ordered" and needed != steps:
        problems.append(f"{where}: condition: a temporal_ordered correlation needs all of its {steps} steps")
    elif ctype == "temporal" and needed > steps:
        problems.append(f"{where}: condition: more rules than the correlation lists ({steps})")
    elif needed > MAX_THRESHOLD:
        problems.append(f"{where}: condition.{op}: at most {MAX_THRESHOLD} (state per group is bounded)")
    return needed


def check_references(correlations: Iterable[Correlation], rule_ids: Iterable[str]) -> list[str]:
    """Problems with the rule ids correlations name: each must be a rule in force."""
    known = set(rule_ids)
    problems = []
    for c in correlations:
        for step in c.steps:
            if step.rule is not None and step.rule not in known:
                problems.append(
                    f"{c.source}: correlation {c.id!r}: rules: no rule with id {step.rule!r} in force "
                    "(a disabled rule cannot be correlated; see `trailkeeper rules list`)"
                )
    return problems


# --- state ---------------------------------------------------------------------------------


class _Group:
    """What one group has seen. ``newest`` is its latest event time; events older than
    ``newest - span`` are late and ignored; until ``quiet_until`` (after a fire) the counting
    kinds ignore events: they are the burst already reported."""

    __slots__ = ("last", "newest", "quiet_until", "reached", "starts", "times", "values")

    def __init__(self, steps: int) -> None:
        self.newest = -(2**62)
        self.quiet_until = -(2**62)
        self.times: list[int] = []
        self.values: dict[str | None, int] = {}
        self.last: dict[int, int] = {}
        self.starts: list[int | None] = [None] * steps
        self.reached: list[int | None] = [None] * steps

    def clear(self) -> None:
        self.times.clear()
        self.values.clear()
        self.last.clear()
        self.starts = [None] * len(self.starts)
        self.reached = [None] * len(self.reached)

    def dump(self) -> list[Any]:
        return [
            self.newest,
            self.quiet_until,
            self.times,
            list(self.values.items()),
            list(self.last.items()),
            self.starts,
            self.reached,
        ]

    @classmethod
    def load(cls, doc: list[Any], steps: int) -> _Group:
        g = cls(steps)
        g.newest, g.quiet_until = int(doc[0]), int(doc[1])
        g.times = [int(t) for t in doc[2]]
        g.values = {v: int(t) for v, t in doc[3]}
        g.last = {int(s): int(t) for s, t in doc[4]}
        if len(doc[5]) == steps and len(doc[6]) == steps:
            g.starts, g.reached = list(doc[5]), list(doc[6])
        return g


class _State:
    """The groups of one correlation, least recently used first."""

    __slots__ = ("correlation", "fed", "groups")

    def __init__(self, correlation: Correlation) -> None:
        self.correlation = correlation
        self.groups: OrderedDict[tuple[str | None, ...], _Group] = OrderedDict()
        self.fed = 0


def event_time_ms(event: Event) -> int:
    """The event's own time in ms (its receive time when it has none, or one far ahead)."""
    text = event.canonical.get("time")
    received = event.received_ms
    if not text:
        return received
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return received
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    ms = int(when.timestamp() * 1000)
    if received > 0 and ms > received + MAX_AHEAD_MS:
        return received
    return ms


class Correlator:
    """Runs correlations over events fed in journal order. Not thread-safe (see Track).

    ``feed`` returns the correlations an event completes, with the group and the count.
    """

    def __init__(self, correlations: Sequence[Correlation], *, max_groups: int = DEFAULT_MAX_GROUPS) -> None:
        self.max_groups = max_groups
        self._states: dict[str, _State] = {c.id: _State(c) for c in correlations}

    @property
    def correlations(self) -> list[Correlation]:
        return [s.correlation for s in self._states.values()]

    def groups(self, correlation_id: str) -> int:
        state = self._states.get(correlation_id)
        return len(state.groups) if state is not None else 0

    def reconfigure(self, correlations: Sequence[Correlation]) -> None:
        """Swap in new definitions, keeping the state of every unchanged correlation."""
        old = self._states
        self._states = {}
        for c in correlations:
            kept = old.get(c.id)
            if kept is not None and kept.correlation.fingerprint == c.fingerprint:
                kept.correlation = c  # category, severity or wording may have changed
                self._states[c.id] = kept
            else:
                self._states[c.id] = _State(c)

    def feed(
        self, event: Event, rule_ids: frozenset[str]
    ) -> list[tuple[Correlation, tuple[str | None, ...], int]]:
        fired: list[tuple[Correlation, tuple[str | None, ...], int]] = []
        t: int | None = None
        for state in self._states.values():
            c = state.correlation
            matched = [i for i, s in enumerate(c.steps) if s.matches(event, rule_ids)]
            if not matched:
                continue
            if t is None:
                t = event_time_ms(event)
            step = c.steps[matched[0]]
            # Groups never span tenants: another tenant's events must neither complete a
            # tenant's burst nor start the quiet time that would hide its real one.
            group = tuple(ref.value(event) for ref in step.group)
            count = self._add(state, (event.canonical.get("tenant"), *group), t, matched, event)
            if count is not None:
                fired.append((c, group, count))
        return fired

    def _group(self, state: _State, key: tuple[str | None, ...]) -> _Group:
        groups = state.groups
        group = groups.get(key)
        if group is not None:
            groups.move_to_end(key)
            return group
        state.fed += 1
        if state.fed % _SWEEP_EVERY == 0:
            self._sweep(state)
        while len(groups) >= self.max_groups:
            groups.popitem(last=False)
            telemetry.CORRELATION_GROUPS_EVICTED.labels(rule=state.correlation.id).inc()
        group = _Group(len(state.correlation.steps))
        groups[key] = group
        return group

    @staticmethod
    def _sweep(state: _State) -> None:
        """Drop groups, oldest first, whose window and quiet time are over."""
        groups = state.groups
        if not groups:
            return
        span = state.correlation.timespan_ms
        newest = max(g.newest for g in groups.values())
        while groups:
            key, g = next(iter(groups.items()))
            if g.newest >= newest - span or g.quiet_until > newest:
                return
            del groups[key]

    def _add(
        self, state: _State, key: tuple[str | None, ...], t: int, matched: list[int], event: Event
    ) -> int | None:
        c = state.correlation
        g = self._group(state, key)
        span = c.timespan_ms
        counting = c.type in ("event_count", "value_count")
        if counting and t < g.quiet_until:
            return None
        if t < g.newest - span:
            return None  # later than the window it belonged to: the window was decided without it
        g.newest = max(g.newest, t)
        floor = g.newest - span
        if c.type == "event_count":
            bisect.insort(g.times, t)
            cut = bisect.bisect_left(g.times, floor)
            if cut:
                del g.times[:cut]
            count = len(g.times)
        elif c.type == "value_count":
            ref = c.steps[matched[0]].value
            value = ref.value(event) if ref is not None else None
            if value is None:
                return None
            g.values[value] = max(g.values.get(value, t), t)
            for v in [v for v, seen in g.values.items() if seen < floor]:
                del g.values[v]
            count = len(g.values)
        elif c.type == "temporal":
            for i in matched:
                g.last[i] = max(g.last.get(i, t), t)
            for i in [i for i, seen in g.last.items() if seen < floor]:
                del g.last[i]
            count = len(g.last)
        else:
            count = self._advance(g, matched, t, span)
        if count < c.needed:
            return None
        g.clear()
        if counting:
            g.quiet_until = g.newest + span
        return count

    @staticmethod
    def _advance(g: _Group, matched: list[int], t: int, span: int) -> int:
        """Ordered steps: for each step, the latest start of a chain that reached it.

        Steps are taken last first, so one event never completes two steps of a chain.
        The latest start is the one with the most time left, so keeping it alone loses no
        sequence that could still complete.
        """
        last = len(g.starts) - 1
        for i in sorted(matched, reverse=True):
            if i == 0:
                first = g.starts[0]
                if first is None or t > first:
                    g.starts[0], g.reached[0] = t, t
                continue
            start, reached = g.starts[i - 1], g.reached[i - 1]
            if start is None or reached is None or reached > t or t - start > span:
                continue
            current = g.starts[i]
            if current is None or start > current:
                g.starts[i], g.reached[i] = start, t
        for i, start in enumerate(g.starts):
            if start is not None and start < g.newest - span:
                g.starts[i] = g.reached[i] = None
        return len(g.starts) if g.starts[last] is not None else 0

    def dump(self) -> dict[str, Any]:
        return {
            cid: {
                "fp": s.correlation.fingerprint,
                "groups": [[list(k), g.dump()] for k, g in s.groups.items()],
            }
            for cid, s in self._states.items()
        }

    def load(self, doc: Mapping[str, Any]) -> int:
        """Restore dumped state for the correlations whose definition is unchanged; returns
        how many groups were restored."""
        restored = 0
        for cid, state in self._states.items():
            saved = doc.get(cid)
            if not isinstance(saved, dict) or saved.get("fp") != state.correlation.fingerprint:
                continue
            steps = len(state.correlation.steps)
            for key, gdoc in saved.get("groups", [])[-self.max_groups :]:
                state.groups[tuple(key)] = _Group.load(gdoc, steps)
                restored += 1
        return restored


# --- one consumer's state --------------------------------------------------------------------


class Track:
    """The correlation state of one journal consumer, and its snapshot file.

    ``classify`` takes each event the consumer reads, with the rule matches the engine
    found, and returns what the consumer reports: those matches (less the hidden base
    rules) plus any correlation the event completes. Only events read from the journal
    (``event.offset`` set) are correlated.

    Restart contract: ``save`` writes the state as of offset ``fed`` (every event below it
    was fed); the caller then holds the journal from ``fed`` on (its own cursor). On start,
    ``load`` restores it; events between ``fed`` and the consumer's cursor are fed again
    from the journal without being reported (``rebuild``); events the consumer reads again
    below ``fed`` (it had not committed them) are not fed twice: the correlations they
    completed are kept by offset until the consumer's cursor passes them, and returned
    again, so a restart neither resets a count nor repeats or loses a key event.

    Thread-safe: the index classifies in a worker thread while snapshots are taken.
    """

    def __init__(
        self,
        name: str,
        correlations: Sequence[Correlation],
        path: Path | None = None,
        *,
        max_groups: int = DEFAULT_MAX_GROUPS,
    ) -> None:
        self.name = name
        self.path = path
        self._lock = threading.Lock()
        self._correlator = Correlator(correlations, max_groups=max_groups)
        self._hidden = frozenset(r for c in correlations for r in c.hides)
        self.fed = -1  # offsets below this were fed; -1: nothing yet
        self._fired: dict[int, tuple[Match, ...]] = {}
        self.dirty = False

    @property
    def correlator(self) -> Correlator:
        return self._correlator

    def reconfigure(self, correlations: Sequence[Correlation]) -> None:
        with self._lock:
            self._correlator.reconfigure(correlations)
            self._hidden = frozenset(r for c in correlations for r in c.hides)
            self.dirty = True

    def classify(self, event: Event, matches: Sequence[Match]) -> list[Match]:
        offset = event.offset
        with self._lock:
            hidden = self._hidden
            shown = [m for m in matches if m.rule not in hidden] if hidden else list(matches)
            if offset is None:
                return shown
            if offset < self.fed:
                return shown + list(self._fired.get(offset, ()))
            fires = self._feed(offset, event, matches)
        if fires:
            for m in fires:
                telemetry.RULE_MATCHES.labels(rule=m.rule, category=m.category).inc()
        return shown + list(fires)

    def _feed(self, offset: int, event: Event, matches: Sequence[Match]) -> tuple[Match, ...]:
        fires = tuple(c.match(key, count) for c, key, count in self._correlator.feed(event, _ids(matches)))
        self.fed = offset + 1
        self.dirty = True
        if fires:
            self._fired[offset] = fires
            if len(self._fired) > MAX_FIRED:
                del self._fired[min(self._fired)]
        return fires

    def rebuild(self, offset: int, event: Event, matches: Sequence[Match]) -> None:
        """Feed an event the consumer has already reported (below its cursor)."""
        with self._lock:
            if offset >= self.fed:
                self._feed(offset, event, matches)

    def start_at(self, offset: int) -> None:
        """Nothing to restore: feed from ``offset`` on."""
        with self._lock:
            self.fed = offset

    # --- snapshots (blocking: call from a thread) ------------------------------------------

    def save(self, committed: int) -> int:
        """Write the snapshot; returns ``fed``. ``committed`` is the consumer's durable cursor:
        fires below it will never be asked for again."""
        with self._lock:
            for off in [o for o in self._fired if o < committed]:
                del self._fired[off]
            doc = {
                "version": SNAPSHOT_VERSION,
                "consumer": self.name,
                "fed": self.fed,
                "state": self._correlator.dump(),
                "fired": [[o, [m.to_dict() for m in ms]] for o, ms in self._fired.items()],
            }
            fed = self.fed
            self.dirty = False
        if self.path is not None:
            atomic_write(self.path, orjson.dumps(doc))
        return fed

    def load(self) -> bool:
        """Restore the snapshot, if there is a readable one; False otherwise (logged)."""
        if self.path is None or not self.path.exists():
            return False
        try:
            doc = orjson.loads(self.path.read_bytes())
            if doc.get("version") != SNAPSHOT_VERSION:
                raise ValueError(f"snapshot version {doc.get('version')!r}")
            fired = {
                int(o): tuple(
                    Match(m["rule"], m["category"], m["severity"], m["description"], tuple(m.get("tags", ())))
                    for m in ms
                )
                for o, ms in doc.get("fired", [])
            }
            with self._lock:
                groups = self._correlator.load(doc.get("state", {}))
                self.fed = int(doc["fed"])
                self._fired = fired
        except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
            log.error(
                "correlation.snapshot_unreadable",
                consumer=self.name,
                path=str(self.path),
                error=str(exc),
                action="the state is rebuilt from the journal's tail",
            )
            return False
        log.info("correlation.restored", consumer=self.name, fed=self.fed, groups=groups, fired=len(fired))
        return True


def _ids(matches: Sequence[Match]) -> frozenset[str]:
    return frozenset(m.rule for m in matches)
