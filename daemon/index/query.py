"""Index queries: filters, tenant scope, keyset cursors, and the SQL both backends share.

Results are ordered newest first on ``(time, id, tenant)`` (one id may exist in several
tenants). A cursor is the stored ``(time, id, tenant)`` of the last row of a page, so
paging is stable: rows indexed after the first page never shift later pages, and each
row is returned once across a full walk. Values are compared in their column form
(daemon.index.values), so a filter for a value with NUL or a very long value still
finds exactly its rows.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from daemon.index.values import MAX_COLUMN_BYTES, column_text, escape_text

MAX_LIMIT = 1000
DEFAULT_LIMIT = 100
MAX_FILTER_CHARS = 512
# A cursor carries three stored values of up to MAX_COLUMN_BYTES each, base64-encoded.
MAX_CURSOR_CHARS = 4096

# Exact-match filters: query parameter -> column. Each column has an index on (column, time, id).
EXACT_FILTERS: dict[str, str] = {
    "service": "service",
    "operation": "operation",
    "resource_type": "resource_type",
    "resource_id": "resource_id",
    "resource_name": "resource_name",
    "user": "user_name",
    "user_id": "user_id",
    "source_ip": "source_ip",
    "rating": "rating",
    "category": "category",
    "severity": "severity",
    "tenant": "tenant",
}
QUERY_PARAMS = (*EXACT_FILTERS, "start", "end", "q", "limit", "cursor")


class QueryError(ValueError):
    """A filter, limit or cursor the caller sent is invalid (answer 400)."""


def normalise_time(value: str, name: str) -> str:
    """An ISO-8601 time in the index's format (``YYYY-MM-DDTHH:MM:SS.mmmZ``, UTC).

    Raises QueryError naming the parameter when the value is not a time.
    """
    text = value.strip()
    try:
        if text.isdigit():
            parsed = dt.datetime.fromtimestamp(int(text) / 1000, tz=dt.UTC)
        else:
            parsed = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except (ValueError, OverflowError, OSError) as exc:
        raise QueryError(
            f"{name}: {value!r} is not a time; use ISO 8601 such as 2024-07-30T21:31:10Z or epoch ms"
        ) from exc
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    try:
        parsed = parsed.astimezone(dt.UTC)
    except (OverflowError, ValueError) as exc:
        raise QueryError(f"{name}: {value!r} is out of range") from exc
    return parsed.strftime("%Y-%m-%dT%H:%M:%S.") + f"{parsed.microsecond // 1000:03d}Z"


# The stored (time, id, tenant) a page ends at; tenant None: a cursor from before tenants
# were part of an event's identity, compared on (time, id) alone.
After = tuple[str, str, str | None]


def encode_cursor(time: str, event_id: str, tenant: str = "") -> str:
    """A cursor after the row stored with these (column-form) values."""
    return base64.urlsafe_b64encode(orjson.dumps([time, event_id, tenant])).decode().rstrip("=")


def decode_cursor(cursor: str) -> After:
    """The stored ``(time, id, tenant)`` a cursor points after. Raises QueryError for a
    damaged cursor. Two-element cursors of earlier versions are still accepted."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        value = orjson.loads(raw)
    except (binascii.Error, ValueError) as exc:
        raise QueryError("cursor: not a cursor returned by this API (pass next_cursor unchanged)") from exc
    if (
        not isinstance(value, list)
        or len(value) not in (2, 3)
        or not all(isinstance(v, str) and len(v) <= MAX_COLUMN_BYTES for v in value)
    ):
        raise QueryError("cursor: not a cursor returned by this API (pass next_cursor unchanged)")
    return value[0], value[1], value[2] if len(value) == 3 else None


@dataclass(slots=True)
class Query:
    """One page request. ``tenants`` is the caller's scope: None means every tenant.

    An empty ``tenants`` set matches nothing (a token that may see no tenant).
    """

    filters: dict[str, str] = field(default_factory=dict)  # column -> exact value
    start: str | None = None  # inclusive
    end: str | None = None  # exclusive
    text: str | None = None  # substring of operation or resource_name, case-insensitive
    limit: int = DEFAULT_LIMIT
    after: After | None = None
    tenants: frozenset[str] | None = None

    @classmethod
    def from_params(cls, params: Mapping[str, str], tenants: frozenset[str] | None = None) -> Query:
        """Build a query from HTTP/CLI parameters. Raises QueryError on any invalid value."""
        unknown = sorted(set(params) - set(QUERY_PARAMS))
        if unknown:
            raise QueryError(f"unknown parameter(s) {', '.join(unknown)}; known: {', '.join(QUERY_PARAMS)}")
        q = cls(tenants=tenants)
        for name, value in params.items():
            # Any character is allowed (NUL too): the index stores and compares column
            # forms, so a value a producer could send can also be searched for.
            most = MAX_CURSOR_CHARS if name == "cursor" else MAX_FILTER_CHARS
            if len(value) > most:
                raise QueryError(f"{name}: longer than {most} characters")
        for name, column in EXACT_FILTERS.items():
            given = params.get(name)
            if given is not None:
                if given == "":
                    raise QueryError(f"{name}: empty value; omit the parameter to match any")
                q.filters[column] = given
        if params.get("start"):
            q.start = normalise_time(params["start"], "start")
        if params.get("end"):
            q.end = normalise_time(params["end"], "end")
        if q.start and q.end and q.start >= q.end:
            raise QueryError(f"start ({q.start}) must be before end ({q.end})")
        if params.get("q"):
            q.text = params["q"]
        if "limit" in params:
            raw = params["limit"]
            if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= MAX_LIMIT:
                raise QueryError(f"limit: expected an integer from 1 to {MAX_LIMIT}, got {raw!r}")
            q.limit = int(raw)
        if params.get("cursor"):
            q.after = decode_cursor(params["cursor"])
        return q


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


@dataclass(slots=True)
class Sql:
    text: str
    args: list[Any]


def build_select(
    q: Query,
    columns: str,
    placeholder: Callable[[int], str],
    like: str = "LIKE",
    lower: bool = False,
) -> Sql:
    """The page query for ``q``: WHERE on filters and scope, keyset on (time, id, tenant),
    LIMIT n+1. Filter and tenant values are bound in their column form, the free text
    escaped the way stored text is.

    ``placeholder(i)`` renders the i-th (1-based) parameter: ``?`` for SQLite,
    ``$i`` for PostgreSQL. ``like`` is the case-insensitive LIKE operator.
    """
    where: list[str] = []
    args: list[Any] = []

    def arg(value: Any) -> str:
        args.append(value)
        return placeholder(len(args))

    for column, value in q.filters.items():
        where.append(f"{column} = {arg(column_text(value))}")
    if q.tenants is not None:
        if not q.tenants:
            where.append("1 = 0")
        else:
            marks = ", ".join(arg(column_text(t)) for t in sorted(q.tenants))
            where.append(f"tenant IN ({marks})")
    if q.start is not None:
        where.append(f"time >= {arg(q.start)}")
    if q.end is not None:
        where.append(f"time < {arg(q.end)}")
    if q.text:
        text = escape_text(q.text)
        pattern = f"%{_like_escape(text.lower() if lower else text)}%"
        a, b = arg(pattern), arg(pattern)
        where.append(f"(operation {like} {a} ESCAPE '\\' OR resource_name {like} {b} ESCAPE '\\')")
    if q.after is not None:
        t, i = arg(q.after[0]), arg(q.after[1])
        if q.after[2] is None:
            where.append(f"(time, id) < ({t}, {i})")
        else:
            where.append(f"(time, id, tenant) < ({t}, {i}, {arg(q.after[2])})")
    sql = f"SELECT {columns} FROM events"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += f" ORDER BY time DESC, id DESC, tenant DESC LIMIT {arg(q.limit + 1)}"
    return Sql(sql, args)
