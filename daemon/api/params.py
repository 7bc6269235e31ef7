"""Query parameters and JSON request bodies, checked against the OpenAPI document.

The document (daemon/api/openapi.yaml) is the one description of what each
operation takes; ``Operation.parse_query`` and ``Operation.parse_body`` apply it,
so the server accepts exactly what the document allows and refuses the rest with
400 naming the parameter. Only the JSON Schema keywords below are implemented; a
schema using another one fails at load time rather than being silently ignored.

Query values arrive as text. For ``type: integer`` the text must be an optional
``-`` and ASCII digits (no ``+``, spaces, superscripts or full-width digits),
which is what OpenAPI's form serialisation produces; ``type: boolean`` is
``true`` or ``false``. String lengths count Unicode code points, as JSON Schema
does. ``pattern`` uses ECMA-262 semantics for the classes used here (``\\d`` is
ASCII). ``format: date-time`` is RFC 3339 section 5.6.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from multidict import MultiMapping

_KEYWORDS = frozenset(
    {
        "type",
        "nullable",
        "enum",
        "minLength",
        "maxLength",
        "pattern",
        "format",
        "minimum",
        "maximum",
        "properties",
        "required",
        "additionalProperties",
        "items",
        "minItems",
        "maxItems",
        "anyOf",
        "oneOf",
        "not",
        # Annotations: no effect on validation.
        "default",
        "description",
        "example",
        "examples",
        "title",
    }
)
_FORMATS = frozenset({"date-time"})
_INTEGER = re.compile(r"^-?[0-9]{1,18}$", re.ASCII)
_DATE_TIME = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$", re.ASCII
)
# The span a time bound can take; bounds outside it are clamped to it. From year 1000, so
# that every bound has four year digits (the index compares times as text).
MIN_TIME = dt.datetime(1000, 1, 1, tzinfo=dt.UTC)
MAX_TIME = dt.datetime(9999, 12, 31, 23, 59, 59, 999000, tzinfo=dt.UTC)


class SchemaError(ValueError):
    """The document uses a schema this module cannot enforce (a bug in the document)."""


class ParameterError(ValueError):
    """A parameter or body does not match the document; the message names it (answer 400)."""

    def __init__(self, where: str, problem: str) -> None:
        super().__init__(f"{where}: {problem}")
        self.where = where
        self.problem = problem


def _resolve(schema: Any, components: Mapping[str, Any], seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """``schema`` with every ``$ref`` replaced by its target, checked for supported keywords."""
    if not isinstance(schema, dict):
        raise SchemaError(f"not a schema: {schema!r}")
    ref = schema.get("$ref")
    if ref is not None:
        prefix = "#/components/schemas/"
        if not isinstance(ref, str) or not ref.startswith(prefix) or ref[len(prefix) :] not in components:
            raise SchemaError(f"unresolvable $ref {ref!r}")
        if ref in seen:
            raise SchemaError(f"recursive $ref {ref!r} is not supported here")
        return _resolve(components[ref[len(prefix) :]], components, (*seen, ref))
    unknown = set(schema) - _KEYWORDS
    if unknown:
        raise SchemaError(f"unsupported schema keyword(s) {sorted(unknown)}")
    if "format" in schema and schema["format"] not in _FORMATS:
        raise SchemaError(f"unsupported format {schema['format']!r}")
    out = dict(schema)
    for key in ("items", "not"):
        if key in out:
            out[key] = _resolve(out[key], components, seen)
    if isinstance(out.get("additionalProperties"), dict):
        out["additionalProperties"] = _resolve(out["additionalProperties"], components, seen)
    if "properties" in out:
        out["properties"] = {k: _resolve(v, components, seen) for k, v in out["properties"].items()}
    for key in ("anyOf", "oneOf"):
        if key in out:
            out[key] = [_resolve(s, components, seen) for s in out[key]]
    if "pattern" in out:
        out["_pattern"] = re.compile(out["pattern"], re.ASCII)
    return out


def parse_date_time(text: str) -> dt.datetime | None:
    """An RFC 3339 date-time as an aware datetime in UTC (clamped to MIN_TIME..MAX_TIME),
    or None when ``text`` is not one. A leap second (``:60``) reads as the minute's last ms."""
    m = _DATE_TIME.match(text)
    if m is None:
        return None
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    fraction, offset = m.group(7), m.group(8)
    leap = second == 60
    if hour > 23 or minute > 59 or second > 60 or year == 0:
        return None
    try:
        micro = int((fraction[1:] + "000000")[:6]) if fraction else 0
        parsed = dt.datetime(
            year, month, day, hour, minute, 59 if leap else second, 999000 if leap else micro
        )
    except ValueError:
        return None
    if offset in ("Z", "z"):
        delta = dt.timedelta(0)
    else:
        oh, om = int(offset[1:3]), int(offset[4:6])
        if oh > 23 or om > 59:
            return None
        delta = dt.timedelta(hours=oh, minutes=om) * (1 if offset[0] == "+" else -1)
    try:
        return (parsed - delta).replace(tzinfo=dt.UTC)
    except OverflowError:
        return MIN_TIME if delta > dt.timedelta(0) else MAX_TIME


def index_time(value: str) -> str:
    """A time bound as the index stores times (``YYYY-MM-DDTHH:MM:SS.mmmZ``, UTC).

    ``value`` is either ASCII digits (epoch milliseconds) or an RFC 3339 date-time,
    as already checked against the document; a bound outside MIN_TIME..MAX_TIME is clamped.
    """
    if value.isascii() and value.isdigit():
        ms = min(int(value), int(MAX_TIME.timestamp() * 1000))
        when = dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(milliseconds=ms)
    else:
        parsed = parse_date_time(value)
        if parsed is None:
            raise ValueError(f"{value!r} is neither epoch milliseconds nor an RFC 3339 date-time")
        when = min(max(parsed, MIN_TIME), MAX_TIME)
    return (
        f"{when.year:04d}-{when.month:02d}-{when.day:02d}T{when.hour:02d}:{when.minute:02d}:"
        f"{when.second:02d}.{when.microsecond // 1000:03d}Z"
    )


def _describe(schema: Mapping[str, Any]) -> str:
    kind = schema.get("type")
    if "enum" in schema:
        return "one of " + ", ".join(repr(v) for v in schema["enum"])
    if kind == "integer":
        low, high = schema.get("minimum"), schema.get("maximum")
        bounds = (
            f" from {low} to {high}"
            if low is not None and high is not None
            else f" of at least {low}"
            if low is not None
            else f" of at most {high}"
            if high is not None
            else ""
        )
        return f"an integer{bounds} in ASCII digits"
    if kind == "string" and schema.get("format") == "date-time":
        return "an RFC 3339 date-time such as 2024-07-30T21:31:10Z"
    if kind == "string" and "pattern" in schema:
        return f"a string matching {schema['pattern']}"
    if kind is not None:
        return f"an {kind}" if kind in ("array", "object", "integer") else f"a {kind}"
    if "anyOf" in schema or "oneOf" in schema:
        return " or ".join(_describe(s) for s in schema.get("anyOf", schema.get("oneOf", [])))
    return "a valid value"


_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "array": (list,),
    "object": (dict,),
}


def _type_ok(value: Any, kind: str) -> bool:
    if isinstance(value, bool) and kind in ("integer", "number"):
        return False
    if kind == "integer" and isinstance(value, float):
        return value.is_integer()
    return isinstance(value, _JSON_TYPES[kind])


def check(schema: Mapping[str, Any], value: Any, where: str) -> None:
    """Raise ParameterError (naming ``where``) unless ``value`` is valid against a resolved schema."""
    if value is None:
        if schema.get("nullable") or (schema.get("enum") and None in schema["enum"]):
            return
        if "type" in schema:
            raise ParameterError(where, f"expected {_describe(schema)}, got null")
    kind = schema.get("type")
    if kind is not None and value is not None and not _type_ok(value, kind):
        raise ParameterError(where, f"expected {_describe(schema)}, got {type(value).__name__}")
    if "enum" in schema and value not in schema["enum"]:
        raise ParameterError(where, f"expected {_describe(schema)}, got {_show(value)}")
    if isinstance(value, str):
        if "minLength" in schema and len(value) < schema["minLength"]:
            if schema["minLength"] == 1:
                raise ParameterError(where, "empty value; omit the parameter instead")
            raise ParameterError(where, f"shorter than {schema['minLength']} characters")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            raise ParameterError(where, f"longer than {schema['maxLength']} characters")
        if "_pattern" in schema and not schema["_pattern"].search(value):
            raise ParameterError(where, f"expected {_describe(schema)}, got {_show(value)}")
        if schema.get("format") == "date-time" and parse_date_time(value) is None:
            raise ParameterError(where, f"expected {_describe(schema)}, got {_show(value)}")
    if isinstance(value, int | float) and not isinstance(value, bool):
        low, high = schema.get("minimum"), schema.get("maximum")
        if (low is not None and value < low) or (high is not None and value > high):
            raise ParameterError(where, f"expected {_describe(schema)}, got {value}")
    if isinstance(value, list):
        if "minItems" in schema and len(value) < schema["minItems"]:
            raise ParameterError(where, f"expected at least {schema['minItems']} item(s)")
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            raise ParameterError(where, f"expected at most {schema['maxItems']} items")
        if "items" in schema:
            for i, item in enumerate(value):
                check(schema["items"], item, f"{where}[{i}]")
    if isinstance(value, dict):
        for name in schema.get("required", ()):
            if name not in value:
                raise ParameterError(f"{where}.{name}", "required")
        props: dict[str, Any] = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        for name, item in value.items():
            if name in props:
                check(props[name], item, f"{where}.{name}")
            elif extra is False:
                raise ParameterError(where, f"unknown property {name!r}; known: {', '.join(props)}")
            elif isinstance(extra, dict):
                check(extra, item, f"{where}.{name}")
    if "anyOf" in schema and not any(_valid(s, value) for s in schema["anyOf"]):
        raise ParameterError(where, f"expected {_describe(schema)}, got {_show(value)}")
    if "oneOf" in schema and sum(_valid(s, value) for s in schema["oneOf"]) != 1:
        raise ParameterError(where, f"expected exactly one of {_describe({'anyOf': schema['oneOf']})}")
    if "not" in schema and _valid(schema["not"], value):
        raise ParameterError(where, f"{_show(value)} is not allowed here")


def _valid(schema: Mapping[str, Any], value: Any) -> bool:
    try:
        check(schema, value, "")
    except ParameterError:
        return False
    return True


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _from_text(schema: Mapping[str, Any], text: str, where: str) -> Any:
    """A query value as the JSON value the document's schema describes, then checked."""
    kind = schema.get("type")
    if kind is None and ("anyOf" in schema or "oneOf" in schema):
        branches = schema.get("anyOf", schema.get("oneOf", []))
        for branch in branches:
            try:
                return _from_text(branch, text, where)
            except ParameterError:
                continue
        raise ParameterError(where, f"expected {_describe(schema)}, got {_show(text)}")
    value: Any = text
    if kind == "integer":
        if not _INTEGER.match(text):
            raise ParameterError(where, f"expected {_describe(schema)}, got {_show(text)}")
        value = int(text)
    elif kind == "boolean":
        if text not in ("true", "false"):
            raise ParameterError(where, f"expected true or false, got {_show(text)}")
        value = text == "true"
    elif kind not in (None, "string"):
        raise SchemaError(f"{where}: query parameters of type {kind} are not supported")
    check(schema, value, where)
    return value


@dataclass(frozen=True, slots=True)
class Operation:
    """One operation of the document: its query parameters and JSON request body."""

    operation_id: str
    query: dict[str, dict[str, Any]] = field(default_factory=dict)
    required: frozenset[str] = frozenset()
    body: dict[str, Any] | None = None
    body_required: bool = False

    def parse_query(self, given: MultiMapping[str]) -> dict[str, Any]:
        """The given query parameters as typed values (int for integers); absent ones are left out.

        Raises ParameterError for an unknown, repeated, missing or invalid parameter.
        """
        unknown = sorted(set(given) - set(self.query))
        if unknown:
            raise ParameterError(
                ", ".join(unknown), f"unknown parameter(s); known: {', '.join(self.query) or 'none'}"
            )
        out: dict[str, Any] = {}
        for name, schema in self.query.items():
            values = given.getall(name, [])
            if len(values) > 1:
                raise ParameterError(name, f"given {len(values)} times; give it once")
            if not values:
                if name in self.required:
                    raise ParameterError(name, "required")
                continue
            out[name] = _from_text(schema, values[0], name)
        return out

    def parse_body(self, value: Any) -> Any:
        """``value`` (parsed JSON) when it matches the request body schema; raises ParameterError."""
        if self.body is None:
            raise SchemaError(f"{self.operation_id} has no JSON request body")
        check(self.body, value, "body")
        return value


class Spec:
    """The operations of an OpenAPI 3.0 document, by operationId."""

    def __init__(self, doc: Mapping[str, Any]) -> None:
        """Raises SchemaError when an operation uses a schema this module cannot enforce."""
        components = doc.get("components", {}).get("schemas", {})
        self.operations: dict[str, Operation] = {}
        for item in doc.get("paths", {}).values():
            for method, op in item.items():
                if method not in ("get", "put", "post", "delete", "patch") or "operationId" not in op:
                    continue
                query: dict[str, dict[str, Any]] = {}
                required: set[str] = set()
                for param in [*item.get("parameters", []), *op.get("parameters", [])]:
                    if param.get("in") != "query":
                        continue
                    query[param["name"]] = _resolve(param.get("schema", {}), components)
                    if param.get("required"):
                        required.add(param["name"])
                body_doc = op.get("requestBody")
                body = None
                if body_doc is not None and "application/json" in body_doc.get("content", {}):
                    body = _resolve(body_doc["content"]["application/json"].get("schema", {}), components)
                self.operations[op["operationId"]] = Operation(
                    op["operationId"],
                    query,
                    frozenset(required),
                    body,
                    bool(body_doc and body_doc.get("required")),
                )

    def __getitem__(self, operation_id: str) -> Operation:
        return self.operations[operation_id]
