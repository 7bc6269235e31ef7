"""Sigma correlation rules (``correlation:`` documents) as trailkeeper correlations.

A Sigma correlation names its base rules by ``name`` or ``id``; they may sit in any
file of ``rules.sigma`` (all files are read as one collection, as ``sigma convert``
does). Each base rule is the compiled Sigma rule ``sigma.<its id>``; a correlation
whose base rules did not compile is refused with them. What is translated:

- types ``event_count``, ``value_count``, ``temporal``, ``temporal_ordered``;
- ``timespan``, ``group-by``, ``aliases`` (a group-by name read from a different field
  for each base rule), ``condition`` with ``gte`` or ``gt`` (``field:`` for
  value_count);
- ``generate``: false (Sigma's default) hides the base rules' own matches, so only
  the correlation is a key event; true reports both.

Refused, each with its reason: value_sum/avg/percentile/median, extended (boolean)
temporal conditions, ``lt``/``lte``/``eq``/``neq`` conditions (a correlation fires
when an event arrives), correlations of correlations. Fields are the log source's
own (``sourceIPAddress``, ``userIdentity.arn``); in CTS rules the CloudTrail names of
``daemon.rules.sigma_mapping.CTS_FIELDS`` read their CTS twins.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from sigma.collection import SigmaCollection
from sigma.correlations import (
    SigmaCorrelationCondition,
    SigmaCorrelationConditionOperator,
    SigmaCorrelationRule,
    SigmaCorrelationType,
    SigmaRuleReference,
)
from sigma.exceptions import SigmaError
from sigma.rule import SigmaRule

from daemon.rules.correlation import (
    MAX_THRESHOLD,
    Correlation,
    CorrelationType,
    FieldRef,
    Step,
    needed_count,
)
from daemon.rules.sigma import Refusal, SigmaOptions, category_of, expand_paths
from daemon.rules.sigma_mapping import CTS_FIELDS, LEVELS, LOGSOURCES

_TYPES: dict[SigmaCorrelationType, CorrelationType] = {
    SigmaCorrelationType.EVENT_COUNT: "event_count",
    SigmaCorrelationType.VALUE_COUNT: "value_count",
    SigmaCorrelationType.TEMPORAL: "temporal",
    SigmaCorrelationType.TEMPORAL_ORDERED: "temporal_ordered",
}
_OPERATORS = {SigmaCorrelationConditionOperator.GTE: "gte", SigmaCorrelationConditionOperator.GT: "gt"}


class _Refused(Exception):
    pass


@dataclass(slots=True)
class CorrelationImport:
    """Correlations compiled from Sigma files, those refused, and every correlation document
    seen (``handled``: the rule compiler reports these as not its own)."""

    correlations: list[Correlation] = field(default_factory=list)
    refused: list[Refusal] = field(default_factory=list)
    handled: list[Refusal] = field(default_factory=list)



def _field(name: str, base: SigmaRule) -> FieldRef:
    fmt = LOGSOURCES.get((str(base.logsource.product or ""), str(base.logsource.service or "")))
    path = CTS_FIELDS.get(name, name) if fmt == "cts" else name
    ref = FieldRef.parse(path, record_default=True)
    return FieldRef(name, ref.canonical, ref.path)


def _aliased(rule: SigmaCorrelationRule, name: str, ref: SigmaRuleReference) -> str:
    alias = rule.aliases.aliases.get(name)
    if alias is None:
        return name
    for key, value in alias.mapping.items():
        if key.reference == ref.reference or getattr(key, "rule", None) is getattr(ref, "rule", object()):
            return value
    raise _Refused(f"alias {name!r} has no field for base rule {ref.reference!r}")


def compile_correlation(
    rule: SigmaCorrelationRule,
    source: str,
    options: SigmaOptions,
    known: frozenset[str],
    *,
    has_condition: bool = True,
) -> Correlation:
    """One correlation for a parsed Sigma correlation whose references are resolved.

    ``known`` holds the ids of the compiled rules in force; ``has_condition``: the document
    gave a condition (a temporal one without means all of its rules). Raises _Refused
    naming the feature that cannot be translated.
    """
    if rule.id is None:
        raise _Refused("the correlation has no id")
    ctype = _TYPES.get(rule.type)
    if ctype is None:
        raise _Refused(f"correlation type {rule.type.name.lower()}")
    cond = rule.condition
    if not isinstance(cond, SigmaCorrelationCondition):
        raise _Refused("extended (boolean) correlation conditions")
    refs = list(rule.rules or [])
    if not refs:
        raise _Refused("a correlation without rules")
    bases: list[tuple[SigmaRuleReference, SigmaRule]] = []
    for ref in refs:
        base = getattr(ref, "rule", None)
        if isinstance(base, SigmaCorrelationRule):
            raise _Refused(f"base rule {ref.reference!r} is itself a correlation")
        if not isinstance(base, SigmaRule) or base.id is None:
            raise _Refused(f"base rule {ref.reference!r} not found")
        if f"sigma.{base.id}" not in known:
            raise _Refused(f"base rule {ref.reference!r} (sigma.{base.id}) was not compiled")
        bases.append((ref, base))
    op = _OPERATORS.get(cond.op)
    if ctype in ("temporal", "temporal_ordered") and not has_condition:
        needed = len(refs)
    elif op is None:
        raise _Refused(
            f"condition {cond.op.name.lower()} (a correlation fires when an event arrives: gte, gt)"
        )
    elif isinstance(cond.count, float) and not cond.count.is_integer():
        raise _Refused(f"condition count {cond.count}")
    else:
        needed = needed_count(op, int(cond.count))
    if needed < 1 or needed > MAX_THRESHOLD:
        raise _Refused(f"condition count {cond.count} (1 to {MAX_THRESHOLD})")
    if ctype == "temporal_ordered" and needed != len(refs):
        raise _Refused("temporal_ordered with a count other than all of its rules")
    if ctype == "temporal" and needed > len(refs):
        raise _Refused("temporal with a count above its number of rules")
    fieldref = cond.fieldref
    if isinstance(fieldref, list):
        if len(fieldref) != 1:
            raise _Refused("value_count over several fields")
        fieldref = fieldref[0]
    group_by = list(rule.group_by or [])
    steps = []
    try:
        for ref, base in bases:
            group = tuple(_field(_aliased(rule, name, ref), base) for name in group_by)
            value = (
                _field(_aliased(rule, fieldref, ref), base) if ctype == "value_count" and fieldref else None
            )
            steps.append(Step(ref.reference, group, rule=f"sigma.{base.id}", value=value))
    except ValueError as exc:
        raise _Refused(f"field: {exc}") from exc
    level = rule.level.name.lower() if rule.level is not None else None
    author = rule.author or "unknown author"
    hides = () if rule.generate else tuple(s.rule for s in steps if s.rule is not None)
    return Correlation(
        id=f"sigma.{rule.id}",
        category=category_of(rule, level, options),
        severity=LEVELS.get(level or "medium", "medium"),
        description=f"{rule.title}. Source: {source} (Sigma correlation by {author}).",
        type=ctype,
        steps=tuple(steps),
        group_by=tuple(group_by),
        timespan_ms=int(rule.timespan.seconds) * 1000,
        needed=needed,
        tags=("sigma", *(str(t) for t in rule.tags)),
        source=source,
        hides=hides,
    )


def _collection(
    text: str, source: str, out: CorrelationImport
) -> list[tuple[str, SigmaCorrelationRule, bool]]:
    try:
        docs = list(yaml.safe_load_all(text))
    except yaml.YAMLError:
        return []  # the rule compiler reports unreadable files
    found: list[tuple[str, SigmaCorrelationRule, bool]] = []
    for doc in docs:
        if not isinstance(doc, dict) or "correlation" not in doc:
            continue
        rid, title = str(doc.get("id") or ""), str(doc.get("title") or "")
        out.handled.append(Refusal(source, rid, title, ""))
        try:
            body = doc["correlation"]
            given = isinstance(body, dict) and "condition" in body
            found.append((source, SigmaCorrelationRule.from_dict(doc), given))
        except SigmaError as exc:
            out.refused.append(Refusal(source, rid, title, f"not a valid Sigma correlation: {exc}"))
    return found


def compile_correlation_texts(
    texts: Iterable[tuple[str, str]], options: SigmaOptions, known: Iterable[str]
) -> CorrelationImport:
    """Compile the correlation documents of ``(source, text)`` Sigma files, resolving
    their references across all of them. ``known``: the rule ids in force."""
    out = CorrelationImport()
    texts = list(texts)
    correlations: list[tuple[str, SigmaCorrelationRule, bool]] = []
    collections = []
    for source, text in texts:
        correlations += _collection(text, source, out)
        try:
            collections.append(SigmaCollection.from_yaml(text, collect_errors=True, resolve_references=False))
        except (yaml.YAMLError, SigmaError):
            continue
    if not correlations:
        return out
    everything = SigmaCollection.merge(collections, resolve_references=False)
    ids = frozenset(known)
    for source, rule, given in correlations:
        rid, title = str(rule.id or ""), str(rule.title or "")
        try:
            rule.resolve_rule_references(everything)
            out.correlations.append(compile_correlation(rule, source, options, ids, has_condition=given))
        except _Refused as exc:
            out.refused.append(Refusal(source, rid, title, str(exc)))
        except SigmaError as exc:
            out.refused.append(Refusal(source, rid, title, f"not a valid Sigma correlation: {exc}"))
    return out


def compile_correlation_paths(
    paths: Iterable[Path], options: SigmaOptions, known: Iterable[str]
) -> CorrelationImport:
    """``compile_correlation_texts`` over Sigma files and folders. Blocking."""
    texts = []
    for path in expand_paths(paths):
        try:
            texts.append((str(path), path.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError):
            continue  # the rule compiler reports unreadable files
    return compile_correlation_texts(texts, options, known)
