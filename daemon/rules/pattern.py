"""EventBridge-style event patterns over an event's canonical fields and its raw record.

A pattern is a mapping. Top-level keys name canonical fields (``service``,
``operation``, ``code``, ...); the raw record (CloudTrail record or CTS trace)
is matched under ``record`` with its own nested keys. At any level, ``$or``
takes a list of patterns of which one must match, ``$and`` a list of patterns
that must all match (for two conditions on one key), and ``$not`` one pattern
that must not match (an absent field does not match, so its negation does).
Every leaf is a list of alternatives, any of which may match:

- an exact value: a string, a number, ``true``/``false`` or ``null``;
- ``{"prefix": "Delete"}`` / ``{"suffix": ".png"}``, each also in the form
  ``{"prefix": {"equals-ignore-case": "delete"}}``;
- ``{"equals-ignore-case": "rebootserver"}``, also with a list of strings, any of
  which may match (``{"equals-ignore-case": ["rebootServer", "stopServer"]}``);
- ``{"anything-but": ...}`` with a value, a list of values, or
  ``{"prefix": ...}``, ``{"suffix": ...}``, ``{"equals-ignore-case": ...}``,
  ``{"wildcard": ...}``;
- ``{"exists": true|false}``;
- ``{"numeric": [">", 0, "<=", 5]}`` (operators ``<``, ``<=``, ``=``, ``>=``, ``>``);
- ``{"cidr": "10.0.0.0/8"}`` (IPv4 or IPv6);
- ``{"wildcard": "*UnauthorizedOperation"}`` (``*`` is any run of characters,
  ``\\*`` a literal star);
- ``{"contains": "Suspended"}``, also ``{"contains": {"equals-ignore-case": "suspended"}}``;
- ``{"regex": "^arn:aws:iam::[0-9]+:root$"}``: a Python regular expression found
  anywhere in the string (anchor it to match the whole); flags inline, ``(?i)``;
- ``{"text": [alternatives]}``: the alternatives applied to the value's text, as
  log search tools see it: a string as it is, ``true``/``false``, a number in
  JSON notation, an object or an array as its compact JSON text (in record
  order); ``null`` counts as absent, so ``{"text": [{"exists": false}]}`` is
  "null or absent". Sigma rules compile to this form.

Semantics follow EventBridge: a field absent from the event matches only
``{"exists": false}`` (``anything-but`` needs the field to be present); when the
event holds an array, the leaf matches if any element does; a nested pattern
applied to an array of objects matches if one element matches all of it.

Canonical fields are opaque strings (or absent), so on them numeric values and
``numeric`` ranges also compare strings that read as numbers: ``code`` "403"
matches ``{"numeric": [">=", 400]}``. On the raw record only JSON numbers do,
as in EventBridge.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import orjson

from daemon.events import CANONICAL_FIELDS, MATCH_FIELDS

RECORD_KEY: Final = "record"
OR_KEY: Final = "$or"
AND_KEY: Final = "$and"
NOT_KEY: Final = "$not"

_MISSING: Final = object()
_EMPTY: Final[dict[str, Any]] = {}

Scalar = str | int | float | bool | None
Pred = Callable[[Any], bool]


class PatternError(ValueError):
    """A pattern cannot be compiled. ``path`` names the offending key (``match.record.x[0]``)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


# --- leaves ---------------------------------------------------------------------------------


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _as_number(value: Any, canonical: bool) -> float | None:
    """The numeric value of an event value, or None when it is not a number."""
    if _is_number(value):
        number = float(value)
        return number if math.isfinite(number) else None
    if canonical and isinstance(value, str) and value:
        try:
            number = float(value)
        except ValueError:
            return None
        return number if math.isfinite(number) else None
    return None


def _wildcard_regex(text: str, path: str) -> re.Pattern[str]:
    if "**" in text:
        raise PatternError(path, "consecutive '*' characters are not allowed in a wildcard")
    parts: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            if i + 1 >= len(text) or text[i + 1] not in "*\\":
                raise PatternError(path, "in a wildcard, '\\' may only escape '*' or '\\'")
            parts.append(re.escape(text[i + 1]))
            i += 2
            continue
        parts.append(".*" if ch == "*" else re.escape(ch))
        i += 1
    return re.compile("".join(parts), re.DOTALL)


def _string_or_ignore_case(value: Any, path: str, op: str) -> tuple[str, bool]:
    """The operand of prefix/suffix: a string, or {"equals-ignore-case": string}."""
    if isinstance(value, str):
        return value, False
    if isinstance(value, dict) and len(value) == 1 and "equals-ignore-case" in value:
        inner = value["equals-ignore-case"]
        if isinstance(inner, str):
            return inner.lower(), True
        raise PatternError(f"{path}.equals-ignore-case", "expected a string")
    raise PatternError(path, f"{op} takes a string or {{equals-ignore-case: string}}")


def _str_list(value: Any, path: str, what: str) -> list[str]:
    values = value if isinstance(value, list) else [value]
    if not values or not all(isinstance(v, str) for v in values):
        raise PatternError(path, f"{what} takes a string or a non-empty list of strings")
    return values


def _numeric_pred(spec: Any, path: str, canonical: bool) -> Pred:
    ops = {"<", "<=", "=", ">=", ">"}
    if not isinstance(spec, list) or not spec or len(spec) % 2:
        raise PatternError(path, 'numeric takes operator/number pairs, e.g. [">=", 400, "<", 500]')
    conds: list[tuple[str, float]] = []
    for i in range(0, len(spec), 2):
        op, bound = spec[i], spec[i + 1]
        if op not in ops:
            raise PatternError(f"{path}[{i}]", f"unknown numeric operator {op!r} (use < <= = >= >)")
        if not _is_number(bound):
            raise PatternError(f"{path}[{i + 1}]", f"expected a number after {op!r}")
        conds.append((op, float(bound)))

    def pred(value: Any) -> bool:
        number = _as_number(value, canonical)
        if number is None:
            return False
        for op, bound in conds:
            if op == "<":
                ok = number < bound
            elif op == "<=":
                ok = number <= bound
            elif op == "=":
                ok = number == bound
            elif op == ">=":
                ok = number >= bound
            else:
                ok = number > bound
            if not ok:
                return False
        return True

    return pred


def _cidr_pred(spec: Any, path: str) -> Pred:
    if not isinstance(spec, str):
        raise PatternError(path, "cidr takes a string such as 10.0.0.0/8")
    try:
        network = ipaddress.ip_network(spec, strict=False)
    except ValueError as exc:
        raise PatternError(path, f"not a CIDR block: {exc}") from exc

    def pred(value: Any) -> bool:
        if not isinstance(value, str):
            return False
        try:
            address = ipaddress.ip_address(value)
        except ValueError:
            return False
        return address.version == network.version and address in network

    return pred


def _anything_but_pred(spec: Any, path: str, canonical: bool) -> Pred:
    if isinstance(spec, dict):
        if len(spec) != 1:
            raise PatternError(path, "anything-but takes one of prefix, suffix, equals-ignore-case, wildcard")
        op, operand = next(iter(spec.items()))
        sub = f"{path}.{op}"
        if op == "prefix":
            if not isinstance(operand, str):
                raise PatternError(sub, "expected a string")
            return lambda v: isinstance(v, str) and not v.startswith(operand)
        if op == "suffix":
            if not isinstance(operand, str):
                raise PatternError(sub, "expected a string")
            return lambda v: isinstance(v, str) and not v.endswith(operand)
        if op == "equals-ignore-case":
            lowered = frozenset(s.lower() for s in _str_list(operand, sub, op))
            return lambda v: isinstance(v, str) and v.lower() not in lowered
        if op == "wildcard":
            regexes = [_wildcard_regex(s, sub) for s in _str_list(operand, sub, op)]
            return lambda v: isinstance(v, str) and not any(r.fullmatch(v) for r in regexes)
        raise PatternError(sub, f"unknown anything-but operator {op!r}")
    values = spec if isinstance(spec, list) else [spec]
    if not values:
        raise PatternError(path, "anything-but needs at least one value")
    strings: set[str] = set()
    numbers: set[float] = set()
    for i, v in enumerate(values):
        if isinstance(v, str):
            strings.add(v)
        elif _is_number(v):
            numbers.add(float(v))
        else:
            raise PatternError(
                f"{path}[{i}]" if isinstance(spec, list) else path, "anything-but takes strings or numbers"
            )

    def pred(value: Any) -> bool:
        if isinstance(value, str) and value in strings:
            return False
        if numbers:
            number = _as_number(value, canonical)
            if number is not None and number in numbers:
                return False
        return True

    return pred


def _is_none(value: Any) -> bool:
    return value is None


def _present(value: Any) -> bool:
    return True


def _is_bool(expected: bool) -> Pred:
    return lambda value: value is expected


def _equals_number(target: float, canonical: bool) -> Pred:
    return lambda value: _as_number(value, canonical) == target


def _starts(text: str, folded: bool) -> Pred:
    if folded:
        return lambda value: isinstance(value, str) and value.lower().startswith(text)
    return lambda value: isinstance(value, str) and value.startswith(text)


def _ends(text: str, folded: bool) -> Pred:
    if folded:
        return lambda value: isinstance(value, str) and value.lower().endswith(text)
    return lambda value: isinstance(value, str) and value.endswith(text)


def _equals_folded(text: str) -> Pred:
    return lambda value: isinstance(value, str) and value.lower() == text


def _equals_folded_any(texts: frozenset[str]) -> Pred:
    return lambda value: isinstance(value, str) and value.lower() in texts


def _wildcard(regex: re.Pattern[str]) -> Pred:
    return lambda value: isinstance(value, str) and regex.fullmatch(value) is not None


def _contains(text: str, folded: bool) -> Pred:
    if folded:
        return lambda value: isinstance(value, str) and text in value.lower()
    return lambda value: isinstance(value, str) and text in value


def _regex_pred(spec: Any, path: str) -> Pred:
    if not isinstance(spec, str):
        raise PatternError(path, "regex takes a string (a Python regular expression)")
    try:
        regex = re.compile(spec)
    except re.error as exc:
        raise PatternError(path, f"not a valid regular expression: {exc}") from exc
    return lambda value: isinstance(value, str) and regex.search(value) is not None


def text_of(value: Any) -> str | None:
    """The text form ``{"text": ...}`` matches: None for null (absent)."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    return orjson.dumps(value).decode()


def _text_pred(inner: _Leaf) -> Pred:
    """A whole-value check: sees objects and arrays themselves, not their elements."""

    def pred(value: Any) -> bool:
        if value is _MISSING or value is None:
            return inner.allows_missing
        text = text_of(value)
        return inner.allows_missing if text is None else inner.match_value(text)

    return pred


@dataclass(frozen=True, slots=True)
class _LeafInfo:
    """What the index needs to know about a leaf (only exact strings, prefixes...)."""

    exact: frozenset[str]
    prefixes: frozenset[str]
    ignore_case: frozenset[str]
    other: bool  # any alternative that is not an exact string, prefix or ignore-case string
    allows_missing: bool


class _Leaf:
    """A compiled list of alternatives for one field."""

    __slots__ = ("_preds", "_strings", "_whole", "allows_missing", "info", "needles")

    needles: Needles | None

    def __init__(self, values: Any, path: str, canonical: bool) -> None:
        if not isinstance(values, list):
            raise PatternError(path, f"expected a list of alternatives, e.g. [{_example(values)}]")
        if not values:
            raise PatternError(path, "an empty list matches nothing; remove the key or add a value")
        strings: set[str] = set()
        prefixes: set[str] = set()
        ignore_case: set[str] = set()
        preds: list[Pred] = []
        whole: list[Pred] = []  # applied to the value as it is (missing, object, array included)
        plain = 0  # alternatives an index can use: exact strings, prefixes, ignore-case strings
        allows_missing = False
        for i, alt in enumerate(values):
            at = f"{path}[{i}]"
            if isinstance(alt, str):
                strings.add(alt)
                plain += 1
                continue
            if alt is None:
                preds.append(_is_none)
            elif isinstance(alt, bool):
                preds.append(_is_bool(alt))
            elif _is_number(alt):
                preds.append(_equals_number(float(alt), canonical))
            elif isinstance(alt, dict):
                if len(alt) != 1:
                    raise PatternError(at, "an operator object holds exactly one operator")
                op, operand = next(iter(alt.items()))
                sub = f"{at}.{op}"
                if op == "prefix":
                    text, folded = _string_or_ignore_case(operand, sub, op)
                    if folded:
                        preds.append(_starts(text, folded=True))
                    else:
                        prefixes.add(text)
                        plain += 1
                        preds.append(_starts(text, folded=False))
                elif op == "suffix":
                    text, folded = _string_or_ignore_case(operand, sub, op)
                    preds.append(_ends(text, folded))
                elif op == "equals-ignore-case":
                    # A list is shorthand for one alternative per string, as anything-but
                    # takes it: a pack of CTS operation names stays one readable line.
                    folded_all = frozenset(s.lower() for s in _str_list(operand, sub, op))
                    ignore_case |= folded_all
                    plain += 1
                    if len(folded_all) == 1:
                        preds.append(_equals_folded(next(iter(folded_all))))
                    else:
                        preds.append(_equals_folded_any(folded_all))
                elif op == "anything-but":
                    preds.append(_anything_but_pred(operand, sub, canonical))
                elif op == "exists":
                    if not isinstance(operand, bool):
                        raise PatternError(sub, "exists takes true or false")
                    if operand:
                        preds.append(_present)
                    else:
                        allows_missing = True
                elif op == "numeric":
                    preds.append(_numeric_pred(operand, sub, canonical))
                elif op == "cidr":
                    preds.append(_cidr_pred(operand, sub))
                elif op == "wildcard":
                    if not isinstance(operand, str):
                        raise PatternError(sub, "wildcard takes a string")
                    regex = _wildcard_regex(operand, sub)
                    preds.append(_wildcard(regex))
                elif op == "contains":
                    text, folded = _string_or_ignore_case(operand, sub, op)
                    preds.append(_contains(text, folded))
                elif op == "regex":
                    preds.append(_regex_pred(operand, sub))
                elif op == "text":
                    whole.append(_text_pred(_Leaf(operand, sub, canonical=False)))
                else:
                    raise PatternError(
                        sub,
                        f"unknown operator {op!r} (known: prefix, suffix, equals-ignore-case, "
                        "anything-but, exists, numeric, cidr, wildcard, contains, regex, text)",
                    )
            else:
                raise PatternError(at, f"unsupported value {alt!r}")
        self._strings = frozenset(strings)
        self._preds = tuple(preds)
        self._whole = tuple(whole)
        self.needles = _leaf_needles(values)
        self.allows_missing = allows_missing
        # Anything beyond exact strings, plain prefixes and ignore-case strings defeats
        # indexing on this field.
        self.info = _LeafInfo(
            frozenset(strings),
            frozenset(prefixes),
            frozenset(ignore_case),
            other=len(values) != plain,
            allows_missing=allows_missing,
        )

    def match_value(self, value: Any) -> bool:
        """Match one present scalar value."""
        if value.__class__ is str and value in self._strings:
            return True
        return any(p(value) for p in self._preds)

    def __call__(self, value: Any) -> bool:
        if self._whole and any(p(value) for p in self._whole):
            return True
        if value is _MISSING or isinstance(value, dict):
            return self.allows_missing
        if isinstance(value, list):
            items = [v for v in value if not isinstance(v, dict | list)]
            if not items:
                return self.allows_missing
            return any(self.match_value(v) for v in items)
        return self.match_value(value)


# --- needles: text the raw record must hold for a record pattern to match -------------------

# Characters JSON never needs to escape: a value made of them appears as such in the raw
# bytes unless the producer chose \u escapes (the engine then skips the pre-check).
# ('/' too: the engine skips the pre-check for records with \/ escapes.)
_SAFE_RUN: Final = re.compile(r"[A-Za-z0-9 :._@=,+/-]{3,}")
# Under `text`, numbers and containers are matched re-rendered (1.5 for 15e-1, no spaces
# after ':'), so only what renders as in the raw bytes: letters, spaces and _ @ / -.
_TEXT_RUN: Final = re.compile(r"[A-Za-z _@/-]{3,}")
# Keys a needle can be scoped to: they appear quoted as such in the raw bytes.
_PLAIN_KEY: Final = re.compile(r"[A-Za-z0-9_.:@/-]+")


@dataclass(frozen=True, slots=True)
class Needle:
    """Text the raw record holds whenever a leaf matches.

    ``folded``: the comparison ignores case, so ``text`` is lower-case and is looked for
    in the lower-cased record; otherwise it is looked for as it is. ``key``: the quoted
    JSON key (``b'"userAgent"'``) under which the value lies, at some depth, when known:
    the engine may then look only inside the string values of that key (a value of any
    other type counts as holding it). None: anywhere in the record.
    """

    text: bytes
    folded: bool
    key: bytes | None = None


Needles = tuple[Needle, ...]


def _literal_needle(text: str, folded: bool, runs_of: re.Pattern[str] = _SAFE_RUN) -> Needle | None:
    runs = runs_of.findall(text)
    if not runs:
        return None
    longest: str = max(runs, key=len)
    return Needle(longest.lower().encode() if folded else longest.encode(), folded)


def _regex_needle(regex: str, runs_of: re.Pattern[str]) -> Needle | None:
    """A literal every match of a simple regex contains, or None."""
    flags = re.match(r"^\(\?([a-zA-Z]+)\)", regex)
    folded = flags is not None and "i" in flags.group(1)
    body = regex[flags.end() :] if flags is not None else regex
    if any(c in body for c in "|([{"):
        return None
    runs: list[str] = []
    current: list[str] = []
    i = 0
    while i < len(body):
        ch = body[i]
        if ch == "\\" and i + 1 < len(body) and not body[i + 1].isalnum():
            current.append(body[i + 1])
            i += 2
        elif ch in "?*":
            if current:
                current.pop()  # the character before is optional
            runs.append("".join(current))
            current = []
            i += 1
        elif ch == "+" or ch in ".^$\\":
            # After x+ the run cannot go on (xa+b does not contain xab).
            runs.append("".join(current))
            current = []
            i += 2 if ch == "\\" else 1
        else:
            current.append(ch)
            i += 1
    runs.append("".join(current))
    needles = [n for n in (_literal_needle(r, folded, runs_of) for r in runs) if n is not None]
    return max(needles, key=lambda n: len(n.text)) if needles else None


def _alt_needle(alt: Any, runs_of: re.Pattern[str]) -> Needle | None:
    if isinstance(alt, str):
        return _literal_needle(alt, False, runs_of)
    if not isinstance(alt, dict) or len(alt) != 1:
        return None
    op, operand = next(iter(alt.items()))
    if op in ("prefix", "suffix", "contains", "equals-ignore-case"):
        folded = op == "equals-ignore-case"
        if isinstance(operand, dict):
            operand = operand.get("equals-ignore-case")
            folded = True
        return _literal_needle(operand, folded, runs_of) if isinstance(operand, str) else None
    if op == "regex" and isinstance(operand, str):
        return _regex_needle(operand, runs_of)
    return None


def _leaf_needles(values: list[Any], runs_of: re.Pattern[str] = _SAFE_RUN) -> Needles | None:
    """One of these is in the raw record whenever the leaf matches a value."""
    out: list[Needle] = []
    for alt in values:
        if isinstance(alt, dict) and len(alt) == 1 and "text" in alt and isinstance(alt["text"], list):
            inner = _leaf_needles(alt["text"], _TEXT_RUN)
            if inner is None:
                return None
            # A whole-value match renders objects and arrays, whose text is not a string
            # value of the key; the engine counts any value that is not a string as a hit.
            out += inner
            continue
        needle = _alt_needle(alt, runs_of)
        if needle is None:
            return None
        out.append(needle)
    return tuple(out) if out else None


def _scoped(needles: Needles | None, key: str) -> Needles | None:
    """Leaf needles tied to the key whose value they are in (already scoped ones kept)."""
    if needles is None or not _PLAIN_KEY.fullmatch(key):
        return needles
    quoted = f'"{key}"'.encode()
    return tuple(Needle(n.text, n.folded, quoted) if n.key is None else n for n in needles)


def _best(candidates: list[Needles | None]) -> Needles | None:
    """Of requirements that all hold, the most selective one (fewest, longest needles)."""
    known = [c for c in candidates if c is not None]
    if not known:
        return None
    return min(known, key=lambda n: (len(n), -min(len(x.text) for x in n)))


def _union(branches: list[Needles | None]) -> Needles | None:
    if not branches or any(b is None for b in branches):
        return None
    return tuple(x for b in branches if b is not None for x in b)


def _example(value: Any) -> str:
    return f'"{value}"' if isinstance(value, str) else repr(value)


# --- objects --------------------------------------------------------------------------------


class _Object:
    """A compiled nested pattern over a JSON object (the raw record or a part of it)."""

    __slots__ = ("_ands", "_checks", "_nots", "_ors", "needles")

    def __init__(self, pattern: Any, path: str) -> None:
        if not isinstance(pattern, dict):
            raise PatternError(path, "expected a mapping of keys to lists or nested mappings")
        if not pattern:
            raise PatternError(path, "an empty mapping; remove it or add keys")
        checks: list[tuple[str, Callable[[Any], bool]]] = []
        ors: list[tuple[_Object, ...]] = []
        ands: list[_Object] = []
        nots: list[_Object] = []
        for key, value in pattern.items():
            if not isinstance(key, str):
                raise PatternError(path, f"key {key!r} is not a string")
            sub = f"{path}.{key}"
            if key == OR_KEY:
                branches = _or_list(value, sub)
                ors.append(tuple(_Object(b, f"{sub}[{i}]") for i, b in enumerate(branches)))
            elif key == AND_KEY:
                ands += [_Object(b, f"{sub}[{i}]") for i, b in enumerate(_and_list(value, sub))]
            elif key == NOT_KEY:
                nots.append(_Object(value, sub))
            elif isinstance(value, dict):
                checks.append((key, _nested(_Object(value, sub))))
            else:
                checks.append((key, _Leaf(value, sub, canonical=False)))
        self._checks = tuple(checks)
        self._ors = tuple(ors)
        self._ands = tuple(ands)
        self._nots = tuple(nots)
        self.needles: Needles | None = _best(
            [
                _scoped(check.needles, key) if isinstance(check, _Leaf) else getattr(check, "needles", None)
                for key, check in checks
            ]
            + [_union([b.needles for b in branches]) for branches in ors]
            + [a.needles for a in ands]
        )

    def __call__(self, obj: Any) -> bool:
        if not isinstance(obj, dict):
            obj = _EMPTY
        for key, check in self._checks:
            if not check(obj.get(key, _MISSING)):
                return False
        if not all(any(b(obj) for b in branches) for branches in self._ors):
            return False
        return all(a(obj) for a in self._ands) and not any(n(obj) for n in self._nots)


class _Nested:
    """A nested pattern as a check on one key's value."""

    __slots__ = ("_check", "needles")

    def __init__(self, check: Callable[[Any], bool], needles: Needles | None) -> None:
        self._check = check
        self.needles = needles

    def __call__(self, value: Any) -> bool:
        return self._check(value)


def _nested(sub: _Object) -> Callable[[Any], bool]:
    # A sub-pattern that matches an empty object (only `exists: false` leaves) needs no text.
    return _Nested(_nested_check(sub), None if sub(_EMPTY) else sub.needles)


def _nested_check(sub: _Object) -> Callable[[Any], bool]:
    def check(value: Any) -> bool:
        if isinstance(value, list):
            objects = [v for v in value if isinstance(v, dict)]
            if objects:
                return any(sub(v) for v in objects)
            return sub(_EMPTY)
        # A missing or scalar value is an empty object: only `exists: false` leaves match it.
        return sub(value if isinstance(value, dict) else _EMPTY)

    return check


def _or_list(value: Any, path: str) -> list[Any]:
    if not isinstance(value, list) or not value:
        raise PatternError(path, "$or takes a non-empty list of patterns")
    return value


def _and_list(value: Any, path: str) -> list[Any]:
    if not isinstance(value, list) or not value:
        raise PatternError(path, "$and takes a non-empty list of patterns")
    return value


# --- top level ------------------------------------------------------------------------------


class Pattern:
    """A compiled pattern. Immutable; safe to share between rules, trackers and routes.

    Construction raises PatternError naming the offending key.
    """

    __slots__ = (
        "_ands",
        "_canon",
        "_nots",
        "_ors",
        "_record",
        "field_needles",
        "fields",
        "leaves",
        "needles",
        "source",
        "uses_record",
    )

    uses_record: bool
    fields: frozenset[str]

    def __init__(self, pattern: Mapping[str, Any], path: str = "match") -> None:
        if not isinstance(pattern, Mapping):
            raise PatternError(path, "expected a mapping of canonical fields, record, $or, $and and $not")
        if not pattern:
            raise PatternError(path, "an empty pattern would match every event; add at least one key")
        self.source: dict[str, Any] = dict(pattern)
        canon: list[tuple[str, _Leaf]] = []
        ors: list[tuple[Pattern, ...]] = []
        ands: list[Pattern] = []
        nots: list[Pattern] = []
        record: _Object | None = None
        for key, value in pattern.items():
            sub = f"{path}.{key}"
            if key == RECORD_KEY:
                record = _Object(value, sub)
            elif key == OR_KEY:
                branches = _or_list(value, sub)
                ors.append(tuple(Pattern(b, f"{sub}[{i}]") for i, b in enumerate(branches)))
            elif key == AND_KEY:
                ands += [Pattern(b, f"{sub}[{i}]") for i, b in enumerate(_and_list(value, sub))]
            elif key == NOT_KEY:
                nots.append(Pattern(value, sub))
            elif key in CANONICAL_FIELDS or key in MATCH_FIELDS:
                if isinstance(value, dict):
                    raise PatternError(sub, "canonical fields are strings: expected a list of alternatives")
                canon.append((key, _Leaf(value, sub, canonical=True)))
            else:
                raise PatternError(
                    sub,
                    f"unknown field {key!r}: top-level keys are canonical fields "
                    f"({', '.join(CANONICAL_FIELDS + MATCH_FIELDS)}), 'record' for the raw record, "
                    "'$or', '$and' "
                    "or '$not'",
                )
        self._canon = tuple(canon)
        self._ors = tuple(ors)
        self._ands = tuple(ands)
        self._nots = tuple(nots)
        self._record = record
        self.leaves: dict[str, _LeafInfo] = {k: leaf.info for k, leaf in canon}
        # Per top-level canonical field, text its value holds whenever its leaf matches
        # (such a leaf never matches a missing value): a cheap pre-check for the engine.
        self.field_needles: dict[str, Needles] = {k: leaf.needles for k, leaf in canon if leaf.needles}
        nested = [p for b in ors for p in b] + ands + nots
        # Text the raw record must hold (lower-cased) for the pattern to match; None: no
        # such requirement. Lets the engine skip parsing records that cannot match.
        self.needles: Needles | None = _best(
            [record.needles if record is not None else None]
            + [_union([p.needles for p in b]) for b in ors]
            + [a.needles for a in ands]
        )
        self.uses_record = record is not None or any(p.uses_record for p in nested)
        # Canonical fields the pattern reads, $or, $and and $not branches included.
        self.fields = frozenset(k for k, _ in canon).union(*(p.fields for p in nested))

    @property
    def or_branches(self) -> tuple[tuple[Pattern, ...], ...]:
        return self._ors

    def matches(self, canonical: Mapping[str, Any], record: Mapping[str, Any] | None = None) -> bool:
        """True when the event (canonical fields, raw record as a dict) matches.

        A canonical value of None counts as absent. ``record`` may be omitted when
        ``uses_record`` is False.
        """
        for key, leaf in self._canon:
            value = canonical.get(key)
            if not leaf(_MISSING if value is None else value):
                return False
        if self._record is not None and not self._record(record if record is not None else _EMPTY):
            return False
        if not all(any(b.matches(canonical, record) for b in branches) for branches in self._ors):
            return False
        return all(a.matches(canonical, record) for a in self._ands) and not any(
            n.matches(canonical, record) for n in self._nots
        )

    def without(self, keys: frozenset[str]) -> Pattern | None:
        """The same pattern minus top-level canonical ``keys`` (already checked by an index).

        None when nothing is left to check.
        """
        rest = {k: v for k, v in self.source.items() if k not in keys}
        if not rest:
            return None
        return Pattern(rest)


def compile_pattern(pattern: Any, path: str = "match") -> Pattern:
    """Compile a pattern; raises PatternError naming the offending key."""
    return Pattern(pattern, path)
