"""Sigma rules (the SigmaHQ format) compiled into trailkeeper rules.

Each Sigma rule is parsed with pySigma and compiled into the same pattern
language as the YAML rules (``daemon.rules.pattern``), so the engine indexes it
like any other rule. The mapping of log sources and field names is in
``daemon.rules.sigma_mapping``.

What compiles:

- detection maps (all fields must match) and lists (any item), values as lists
  (any value, or every value with ``|all``);
- ``|contains``, ``|startswith``, ``|endswith``, ``|re`` (with ``|i``, ``|m``,
  ``|s``), ``|cidr``, ``|exists``, ``|cased``, ``|all``; wildcards ``*`` and
  ``?``; ``null`` (the field is absent or null); numbers and booleans (compared
  as text, so ``'false'`` matches a JSON ``false``);
- conditions with ``and``, ``or``, ``not``, parentheses, ``1 of``/``all of``
  a selection, a pattern such as ``selection_*``, or ``them``.

Matching follows Sigma: strings compare without regard to case unless
``|cased``; ``|re`` is case-sensitive unless ``|i``; a value is matched as text
(an object or an array as its compact JSON text), so ``requestParameters|contains``
searches the whole request; a path through an array reads its elements.

Everything else is refused, with the rule's id and the feature, never compiled
in part: keyword (field-less) detections, modifiers such as ``|base64offset``,
``|windash``, ``|expand``, ``|fieldref``, ``|gt``, placeholders, correlation and
filter documents, and log sources other than those in ``LOGSOURCES``.

A compiled rule's id is ``sigma.<uuid>``; its description holds the title and
the author and licence attribution that the Detection Rule License asks every
match to carry; its source names the file, author and licence. The level gives
the severity (``LEVELS``); the category comes from the level
(``rules.sigma_level_categories``), else from the first entry of
``rules.sigma_categories`` whose tag the rule carries, else
``rules.sigma_default_category``. For the built-in pack see ``dedupe``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Final

import yaml
from sigma.collection import SigmaCollection
from sigma.conditions import (
    ConditionAND,
    ConditionFieldEqualsValueExpression,
    ConditionNOT,
    ConditionOR,
    ConditionValueExpression,
)
from sigma.correlations import SigmaCorrelationRule
from sigma.exceptions import SigmaError
from sigma.modifiers import reverse_modifier_mapping
from sigma.rule import SigmaDetection, SigmaDetectionItem, SigmaRule
from sigma.types import (
    Placeholder,
    SigmaBool,
    SigmaCasedString,
    SigmaCIDRExpression,
    SigmaExists,
    SigmaNull,
    SigmaNumber,
    SigmaRegularExpression,
    SigmaRegularExpressionFlag,
    SigmaString,
    SpecialChars,
)

from daemon.events import FORMAT_CTS, canonicalise
from daemon.rules.model import Rule
from daemon.rules.pattern import AND_KEY, NOT_KEY, OR_KEY, RECORD_KEY, Pattern, PatternError, text_of
from daemon.rules.sigma_examples import candidate_events
from daemon.rules.sigma_mapping import (
    CANONICAL_SIGMA_FIELDS,
    CANONICAL_STRING_TWINS,
    CTS_FIELDS,
    DEFAULT_CATEGORY,
    DEFAULT_LEVEL_CATEGORIES,
    DEFAULT_TAG_CATEGORIES,
    LEVELS,
    LOGSOURCES,
)

BUILTIN_PACKAGE: Final = "daemon.rules.packs"
BUILTIN_DIR: Final = "sigma"
BUILTIN_SOURCE: Final = "builtin:sigma"
BUILTIN_LICENSE: Final = "DRL-1.1"
# Modifiers whose effect compiles faithfully; every other one refuses the rule.
_MODIFIERS: Final = frozenset(
    {
        "contains",
        "startswith",
        "endswith",
        "all",
        "re",
        "i",
        "ignorecase",
        "m",
        "multiline",
        "s",
        "dotall",
        "cidr",
        "exists",
        "cased",
    }
)
_RE_FLAGS: Final = {
    SigmaRegularExpressionFlag.IGNORECASE: "i",
    SigmaRegularExpressionFlag.MULTILINE: "m",
    SigmaRegularExpressionFlag.DOTALL: "s",
}
_SUFFIXES: Final = (".yml", ".yaml")


class SigmaRefused(Exception):
    """A Sigma rule uses a feature that cannot be compiled (``feature`` says which)."""

    def __init__(self, feature: str) -> None:
        super().__init__(feature)
        self.feature = feature


@dataclass(frozen=True, slots=True)
class Refusal:
    """One Sigma rule (or file) that was not compiled, and why."""

    source: str
    rule_id: str  # the Sigma id, or "" when the document has none
    title: str
    reason: str

    def message(self) -> str:
        who = f"rule {self.rule_id}" if self.rule_id else "a document"
        title = f" ({self.title})" if self.title else ""
        return f"{self.source}: {who}{title}: refused: {self.reason}"


@dataclass(slots=True)
class SigmaImport:
    """The outcome of compiling Sigma files: rules, and the documents refused."""

    rules: list[Rule] = field(default_factory=list)
    refused: list[Refusal] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class SigmaOptions:
    """How levels and tags become severity and category (the ``rules.sigma_*`` keys)."""

    tag_categories: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_TAG_CATEGORIES))
    level_categories: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_LEVEL_CATEGORIES))
    default_category: str = DEFAULT_CATEGORY


# --- values --------------------------------------------------------------------------------


def _string_alt(value: SigmaString, cased: bool) -> dict[str, Any]:
    """One pattern alternative for a Sigma string with its wildcards."""
    parts: list[str | SpecialChars] = []
    for part in value.s:
        if isinstance(part, Placeholder):
            raise SigmaRefused(f"placeholder %{part.name}%")
        if parts and part is SpecialChars.WILDCARD_MULTI and parts[-1] is SpecialChars.WILDCARD_MULTI:
            continue
        parts.append(part)
    if all(p is SpecialChars.WILDCARD_MULTI for p in parts) and parts:
        return {"exists": True}  # '*' is any value at all
    lead = bool(parts) and parts[0] is SpecialChars.WILDCARD_MULTI
    trail = len(parts) > int(lead) and parts[-1] is SpecialChars.WILDCARD_MULTI
    core = parts[int(lead) : len(parts) - int(trail)]
    if all(isinstance(p, str) for p in core):
        text = "".join(p for p in core if isinstance(p, str))
        operand: Any = text if cased else {"equals-ignore-case": text}
        if lead and trail:
            return {"contains": operand}
        if lead:
            return {"suffix": operand}
        if trail:
            return {"prefix": operand}
        return operand if cased else {"equals-ignore-case": text}
    regex = []
    for p in parts:
        if p is SpecialChars.WILDCARD_MULTI:
            regex.append(".*")
        elif p is SpecialChars.WILDCARD_SINGLE:
            regex.append(".")
        else:
            assert isinstance(p, str)
            regex.append(re.escape(p))
    return {"regex": ("(?s)" if cased else "(?is)") + "^" + "".join(regex) + "$"}


def _value_alt(value: Any) -> dict[str, Any] | str:
    if isinstance(value, SigmaCasedString):
        return _string_alt(value, cased=True)
    if isinstance(value, SigmaString):
        return _string_alt(value, cased=False)
    if isinstance(value, SigmaNull):
        return {"exists": False}
    if isinstance(value, SigmaExists):
        return {"exists": bool(value.exists)}
    if isinstance(value, SigmaBool):
        return {"equals-ignore-case": "true" if value.boolean else "false"}
    if isinstance(value, SigmaNumber):
        text = text_of(value.number)
        assert text is not None
        return text
    if isinstance(value, SigmaRegularExpression):
        if value.regexp.contains_placeholder():
            raise SigmaRefused("placeholder in a regular expression")
        flags = "".join(sorted(_RE_FLAGS[f] for f in value.flags))
        regexp = value.regexp.to_plain()
        return {"regex": f"(?{flags}){regexp}" if flags else regexp}
    if isinstance(value, SigmaCIDRExpression):
        return {"cidr": str(value.network)}
    raise SigmaRefused(f"value type {type(value).__name__}")


# --- the condition tree --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Leaf:
    canonical: str | None  # a canonical field, or None for a record path
    path: tuple[str, ...]  # the record path; () for service and operation
    alts: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class _Bool:
    op: str  # "and", "or", "not"
    args: tuple[Any, ...]


class _Compiler:
    def __init__(self, fmt: str) -> None:
        self.fmt = fmt
        self.canonical = CANONICAL_SIGMA_FIELDS[fmt]
        self.twins = CANONICAL_STRING_TWINS[fmt]

    def field(self, name: str, alt: Any = None) -> tuple[str | None, tuple[str, ...]]:
        if self.fmt == FORMAT_CTS:
            name = CTS_FIELDS.get(name, name)
        canon = self.canonical.get(name)
        if canon is not None:
            return canon, ()
        twin = self.twins.get(name) if _string_comparison(alt) else None
        path = tuple(name.split("."))
        if not all(path):
            raise SigmaRefused(f"field name {name!r}")
        # A twin keeps its record path: the examples of a rule are records.
        return twin, path

    def tree(self, node: Any) -> Any:
        if isinstance(node, ConditionFieldEqualsValueExpression):
            alt = _value_alt(node.value)
            canon, path = self.field(node.field, alt)
            return _Leaf(canon, path, (alt,))
        if isinstance(node, ConditionValueExpression):
            raise SigmaRefused("keywords (a value without a field)")
        if isinstance(node, ConditionAND):
            return _Bool("and", tuple(self.tree(a) for a in node.args))
        if isinstance(node, ConditionOR):
            return _Bool("or", tuple(self.tree(a) for a in node.args))
        if isinstance(node, ConditionNOT):
            return _Bool("not", tuple(self.tree(a) for a in node.args))
        raise SigmaRefused(f"condition element {type(node).__name__}")


def _string_comparison(alt: Any) -> bool:
    """True if the alternative can only match a non-empty string (or a CIDR's address).

    Such a comparison has the same outcome on a record field and on its canonical twin,
    which differ only where the record's value is empty, missing or not a string.
    """
    if isinstance(alt, str):
        return bool(alt)
    if not isinstance(alt, dict) or len(alt) != 1:
        return False
    op, operand = next(iter(alt.items()))
    if op == "cidr":
        return True
    if op == "regex":
        try:
            return isinstance(operand, str) and re.search(operand, "") is None
        except re.error:
            return False  # the pattern compiler refuses the rule with the reason
    if op not in ("equals-ignore-case", "prefix", "suffix", "contains"):
        return False
    if isinstance(operand, dict) and len(operand) == 1:
        operand = operand.get("equals-ignore-case")
    return isinstance(operand, str) and bool(operand)


def _nest(path: tuple[str, ...], leaf: list[Any]) -> dict[str, Any]:
    out: Any = leaf
    for key in reversed(path):
        out = {key: out}
    assert isinstance(out, dict)
    return out


def _render(node: Any) -> dict[str, Any]:
    if isinstance(node, _Leaf):
        if node.canonical is not None:
            return {node.canonical: list(node.alts)}
        return {RECORD_KEY: _nest(node.path, [{"text": list(node.alts)}])}
    assert isinstance(node, _Bool)
    if node.op == "not":
        (arg,) = node.args
        return {NOT_KEY: _render(arg)}
    args = _flatten(node)
    if node.op == "or":
        merged: dict[tuple[str | None, tuple[str, ...]], list[Any]] = {}
        others: list[Any] = []
        for arg in args:
            if isinstance(arg, _Leaf):
                merged.setdefault((arg.canonical, arg.path), []).extend(arg.alts)
            else:
                others.append(arg)
        branches = [_render(_Leaf(c, p, tuple(alts))) for (c, p), alts in merged.items()]
        branches += [_render(o) for o in others]
        return branches[0] if len(branches) == 1 else {OR_KEY: branches}
    result: dict[str, Any] = {}
    extra: list[dict[str, Any]] = []
    for arg in args:
        part = _render(arg)
        if _mergeable(result, part):
            _merge(result, part)
        else:
            extra.append(part)
    if extra:
        result[AND_KEY] = extra
    return result


def _flatten(node: _Bool) -> list[Any]:
    out: list[Any] = []
    for arg in node.args:
        if isinstance(arg, _Bool) and arg.op == node.op:
            out += _flatten(arg)
        else:
            out.append(arg)
    return out


def _mergeable(into: Mapping[str, Any], part: Mapping[str, Any]) -> bool:
    for key, value in part.items():
        if key not in into:
            continue
        mine = into[key]
        if key.startswith("$") or not (isinstance(mine, dict) and isinstance(value, dict)):
            return False
        if not _mergeable(mine, value):
            return False
    return True


def _merge(into: dict[str, Any], part: Mapping[str, Any]) -> None:
    for key, value in part.items():
        if key in into:
            _merge(into[key], value)
        else:
            into[key] = value


def _required_ops(node: Any) -> list[Any] | None:
    """Alternatives of ``operation`` that every match must satisfy, if the condition implies some."""
    if isinstance(node, _Leaf):
        return list(node.alts) if node.canonical == "operation" else None
    assert isinstance(node, _Bool)
    if node.op == "not":
        return None
    found = [_required_ops(a) for a in node.args]
    if node.op == "and":
        known = [f for f in found if f is not None]
        return min(known, key=len) if known else None
    if any(f is None for f in found):
        return None
    return [alt for f in found if f is not None for alt in f]


# --- rules ---------------------------------------------------------------------------------


def _check_items(detection: SigmaDetection | SigmaDetectionItem) -> None:
    if isinstance(detection, SigmaDetection):
        for item in detection.detection_items:
            _check_items(item)
        return
    if detection.field is None:
        raise SigmaRefused("keywords (a value without a field)")
    for modifier in detection.modifiers:
        name = reverse_modifier_mapping.get(modifier.__name__, modifier.__name__)
        if name not in _MODIFIERS:
            raise SigmaRefused(f"modifier |{name}")


def category_of(rule: SigmaRule | SigmaCorrelationRule, level: str | None, options: SigmaOptions) -> str:
    """The category of a Sigma rule or correlation: by level, then by tag, then the default."""
    if level is not None and level in options.level_categories:
        return options.level_categories[level]
    tags = {str(t).lower() for t in rule.tags}
    for tag, category in options.tag_categories.items():
        if tag.lower() in tags:
            return category
    return options.default_category


def compile_rule(rule: SigmaRule, source: str, options: SigmaOptions, *, license: str | None = None) -> Rule:
    """One trailkeeper rule for a parsed Sigma rule. Raises SigmaRefused naming the feature."""
    if rule.errors:
        raise SigmaRefused(f"not a valid Sigma rule: {rule.errors[0]}")
    if rule.id is None:
        raise SigmaRefused("the rule has no id")
    logsource = rule.logsource
    key = (str(logsource.product or ""), str(logsource.service or ""))
    fmt = LOGSOURCES.get(key)
    if fmt is None or logsource.category:
        given = ", ".join(
            f"{k}: {v}"
            for k, v in (
                ("product", logsource.product),
                ("service", logsource.service),
                ("category", logsource.category),
            )
            if v
        )
        known = "; ".join(f"product: {p}, service: {s}" for p, s in LOGSOURCES)
        raise SigmaRefused(f"logsource {{{given}}} (supported: {known})")
    for detection in rule.detection.detections.values():
        _check_items(detection)
    tree, fmt = compiled_tree(rule)
    body = _render(tree)
    match: dict[str, Any] = {"format": [fmt]}
    if "operation" not in body:
        ops = _required_ops(tree)
        if ops is not None:
            # Implied by the condition: lets the index file the rule under its operations.
            match["operation"] = ops
    if _mergeable(match, body):
        _merge(match, body)
    else:
        match[AND_KEY] = [body]
    try:
        pattern = Pattern(match, "match")
    except PatternError as exc:
        raise SigmaRefused(f"cannot be expressed: {exc}") from exc
    examples = _examples(tree, fmt, pattern)
    level = rule.level.name.lower() if rule.level is not None else None
    severity = LEVELS.get(level or "medium", "medium")
    licence = rule.license or license
    author = rule.author or "unknown author"
    attribution = f"Sigma rule by {author}" + (f", {licence}" if licence else "")
    return Rule(
        id=f"sigma.{rule.id}",
        category=category_of(rule, level, options),
        severity=severity,
        description=f"{rule.title}. Source: {_origin(source)} ({attribution}).",
        pattern=pattern,
        tags=("sigma", *(str(t) for t in rule.tags)),
        source=f"{source} ({attribution})",
        examples_match=examples[0],
        examples_no_match=examples[1],
    )


def _origin(source: str) -> str:
    if source.startswith(BUILTIN_SOURCE + "/"):
        name = source.rsplit("/", 1)[-1]
        return f"SigmaHQ/sigma rules/cloud/aws/cloudtrail/{name}"
    return source


def compiled_tree(rule: SigmaRule) -> tuple[Any, str]:
    """The condition tree and event format of a Sigma rule (for example events)."""
    fmt = LOGSOURCES[(str(rule.logsource.product or ""), str(rule.logsource.service or ""))]
    compiler = _Compiler(fmt)
    trees = [compiler.tree(c.parsed) for c in rule.detection.parsed_condition]
    return (trees[0] if len(trees) == 1 else _Bool("or", tuple(trees))), fmt


def _examples(
    tree: Any, fmt: str, pattern: Pattern
) -> tuple[tuple[dict[str, Any], ...], tuple[dict[str, Any], ...]]:
    """Up to three matching and three non-matching events, labelled by the pattern itself."""
    match: list[dict[str, Any]] = []
    no_match: list[dict[str, Any]] = []
    for record in candidate_events(tree, fmt):
        canonical = canonicalise(record)
        if isinstance(canonical, str):
            continue
        bucket = match if pattern.matches(canonical, record) else no_match
        if len(bucket) < 3:
            bucket.append(record)
        if len(match) >= 3 and len(no_match) >= 3:
            break
    return tuple(match), tuple(no_match)


def _documents(text: str, source: str, result: SigmaImport) -> list[Any]:
    try:
        collection = SigmaCollection.from_yaml(text, collect_errors=True, resolve_references=False)
    except (yaml.YAMLError, SigmaError) as exc:
        result.refused.append(Refusal(source, "", "", f"not a readable Sigma file: {exc}"))
        return []
    if collection.errors and not collection.rules:
        result.refused.append(Refusal(source, "", "", f"not a Sigma rule: {collection.errors[0]}"))
    return list(collection.rules)


def compile_text(
    text: str, source: str, options: SigmaOptions, result: SigmaImport, *, license: str | None = None
) -> None:
    """Compile every rule of one Sigma file into ``result``."""
    for doc in _documents(text, source, result):
        rule_id = str(getattr(doc, "id", "") or "")
        title = str(getattr(doc, "title", "") or "")
        if isinstance(doc, SigmaCorrelationRule):
            result.refused.append(Refusal(source, rule_id, title, "correlation rules are not compiled here"))
            continue
        if not isinstance(doc, SigmaRule):
            result.refused.append(Refusal(source, rule_id, title, f"{type(doc).__name__} documents"))
            continue
        try:
            result.rules.append(compile_rule(doc, source, options, license=license))
        except SigmaRefused as exc:
            result.refused.append(Refusal(source, rule_id, title, exc.feature))
        except SigmaError as exc:  # pySigma found the rule itself broken while we walked it
            result.refused.append(Refusal(source, rule_id, title, f"not a valid Sigma rule: {exc}"))


def expand_paths(paths: Iterable[Path]) -> list[Path]:
    """Files as given; directories searched recursively for *.yml and *.yaml, sorted."""
    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            out += sorted(p for p in path.rglob("*") if p.suffix in _SUFFIXES and p.is_file())
        else:
            out.append(path)
    return out


def compile_paths(paths: Iterable[Path], options: SigmaOptions) -> SigmaImport:
    """Compile Sigma files and folders. Blocking. Never raises for a rule's content."""
    result = SigmaImport()
    for path in expand_paths(paths):
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            result.refused.append(Refusal(str(path), "", "", f"cannot read the file: {reason}"))
            continue
        compile_text(text, str(path), options, result)
    return result


def builtin_files() -> list[tuple[str, str]]:
    """(name, text) of the vendored SigmaHQ rules, sorted by name."""
    root = resources.files(BUILTIN_PACKAGE).joinpath(BUILTIN_DIR)
    out: list[tuple[str, str]] = []
    for folder in sorted(root.iterdir(), key=lambda p: p.name):
        if not folder.is_dir():
            continue
        for item in sorted(folder.iterdir(), key=lambda p: p.name):
            if item.name.endswith(_SUFFIXES):
                out.append((f"{folder.name}/{item.name}", item.read_text(encoding="utf-8")))
    return out


def compile_builtin(options: SigmaOptions) -> SigmaImport:
    """The built-in Sigma pack, compiled (before ``dedupe``)."""
    result = SigmaImport()
    for name, text in builtin_files():
        compile_text(text, f"{BUILTIN_SOURCE}/{name}", options, result, license=BUILTIN_LICENSE)
    return result


# --- deduplication against the other packs -------------------------------------------------


def _plain_pairs(rule: Rule) -> set[tuple[str | None, str]] | None:
    """(service, operation) pairs a rule matches unconditionally, or None if it has conditions.

    service None: any service. Only rules made of nothing but exact service and
    operation values (and a format) cover anything.
    """
    source = rule.pattern.source
    if not set(source) <= {"service", "operation", "format"} or "operation" not in source:
        return None
    ops = source["operation"]
    services = source.get("service", [None])
    if not all(isinstance(o, str) for o in ops) or not all(s is None or isinstance(s, str) for s in services):
        return None
    return {(s, o) for s in services for o in ops}


def _ci_values(leaf: Any) -> list[str] | None:
    """Lower-cased values of a leaf made only of strings and equals-ignore-case strings."""
    if not isinstance(leaf, list):
        return None
    out: list[str] = []
    for alt in leaf:
        if isinstance(alt, str):
            out.append(alt.lower())
        elif (
            isinstance(alt, dict)
            and set(alt) == {"equals-ignore-case"}
            and isinstance(alt["equals-ignore-case"], str)
        ):
            out.append(alt["equals-ignore-case"].lower())
        else:
            return None
    return out


def dedupe(sigma_rules: Iterable[Rule], others: Iterable[Rule]) -> tuple[list[Rule], dict[str, list[str]]]:
    """Built-in Sigma rules minus what the other rules in force already flag.

    Policy: an operation is dropped from a Sigma rule when, for every service the
    Sigma rule names, a rule in force (outside the built-in Sigma pack) matches
    that service and operation with no further condition: every event the Sigma
    rule would flag for it is flagged already, so it would only be a second key
    match for the same event. A Sigma rule left with no operation is not loaded.
    Sigma rules that name no service or operation, and rules with conditions on
    both sides, are kept as they are: they flag different things. Returns the
    rules kept and, per dropped or narrowed rule id, the ids of the covering rules.
    """
    covered: dict[tuple[str | None, str], str] = {}
    for rule in others:
        pairs = _plain_pairs(rule)
        for pair in pairs or ():
            covered.setdefault((pair[0].lower() if pair[0] else None, pair[1].lower()), rule.id)
    kept: list[Rule] = []
    report: dict[str, list[str]] = {}
    for rule in sigma_rules:
        source = rule.pattern.source
        ops = _ci_values(source.get("operation"))
        named = _ci_values(source["service"]) if "service" in source else None
        # No service named: the rule is about the operation wherever it occurs.
        services: list[str | None] | None = [None] if "service" not in source else list(named or []) or None
        if ops is None or services is None:
            kept.append(rule)
            continue
        by: set[str] = set()
        remaining: list[Any] = []
        for op, alt in zip(ops, source["operation"], strict=True):
            covering = [covered.get((s, op)) or covered.get((None, op)) for s in services]
            if all(covering):
                by.update(c for c in covering if c)
            else:
                remaining.append(alt)
        if not by:
            kept.append(rule)
            continue
        report[rule.id] = sorted(by)
        if remaining:
            kept.append(_narrowed(rule, remaining))
    return kept, report


def _matches(pattern: Pattern, record: dict[str, Any]) -> bool:
    canonical = canonicalise(record)
    return not isinstance(canonical, str) and pattern.matches(canonical, record)


def _narrowed(rule: Rule, operations: list[Any]) -> Rule:
    source = dict(rule.pattern.source)
    source["operation"] = operations
    pattern = Pattern(source)
    # Matching examples of a dropped operation now belong to no_match; the others
    # are renamed to a remaining operation, kept only when they match.
    match: list[dict[str, Any]] = []
    no_match = list(rule.examples_no_match)
    names = [o if isinstance(o, str) else o["equals-ignore-case"] for o in operations]
    for example in rule.examples_match:
        if _matches(pattern, example):
            match.append(example)
            continue
        no_match.append(example)  # a dropped operation: the covering rule flags it
        for name in names:
            candidate = {**example, "eventName": name}
            if _matches(pattern, candidate):
                match.append(candidate)
                break
    return Rule(
        id=rule.id,
        category=rule.category,
        severity=rule.severity,
        description=rule.description,
        pattern=pattern,
        tags=rule.tags,
        source=rule.source,
        examples_match=tuple(match),
        examples_no_match=tuple(no_match[:6]),
    )
