"""What every index backend provides, and the rows it stores.

The index is a derived, disposable view of recent events: the journal and the
archive are the evidence. Losing the index loses nothing (rebuild it by
resetting its cursor); a row in it is never the only copy of an event.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import orjson
from pydantic import BaseModel, ConfigDict, Field, model_validator

from daemon.api.audit import SOURCE as AUDIT_SOURCE
from daemon.events import CANONICAL_FIELDS, Entry, Event
from daemon.index.query import Query, encode_cursor
from daemon.index.values import MAX_COLUMN_BYTES, column_text, display_text, exact_json, load_exact
from daemon.integrity.merkle import leaf_hash
from daemon.units import Duration

# The fields of a list item, in order.
LIST_COLUMNS: tuple[str, ...] = (*CANONICAL_FIELDS, "category", "severity", "rules", "received_ms")
# What a list query selects: the item's fields, then what ``row_to_item`` derives them from.
ITEM_COLUMNS: tuple[str, ...] = (*LIST_COLUMNS, "source", "exact")
# Every column, in the order of ``IndexRow.values``.
ALL_COLUMNS: tuple[str, ...] = (*ITEM_COLUMNS, "journal_offset", "record")
# Text columns stored in their column form (daemon.index.values).
TEXT_COLUMNS: tuple[str, ...] = (*CANONICAL_FIELDS, "category", "severity", "source")
# An event is identified by (tenant, id). No tenant is stored as "" (never a real tenant:
# canonical fields are None, not "", when absent), so the identity has no NULL in it.
NO_TENANT = ""

ORIGIN_TRAILKEEPER = "trailkeeper"
ORIGIN_PRODUCER = "producer"
# Sources of the daemon's own audit records: today's constant, and "audit", which earlier
# versions wrote (rows they indexed keep it until retention removes them).
_AUDIT_SOURCES = frozenset({AUDIT_SOURCE, "audit"})


class IndexConfig(BaseModel):
    """``index:``: the queryable store of recent events behind ``GET /v1/events``."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    enabled: bool = True
    """Index events for the query API; false: no index, no GET /v1/events."""
    backend: Literal["sqlite", "postgres"] = "sqlite"
    """sqlite: an embedded file; postgres: a database several replicas can share."""
    path: Path | None = None
    """sqlite: the database file (WAL mode); null: <journal.dir>/index/events.db."""
    dsn: str | None = None
    """postgres: a libpq DSN, e.g. postgresql://tk@db:5432/trailkeeper (use ${ENV} for a password)."""
    pg_schema: str = Field(default="trailkeeper", pattern=r"^[a-z_][a-z0-9_]{0,62}$")
    """postgres: the schema holding the index tables."""
    pool_size: int = Field(default=4, ge=1, le=64)
    """Connections serving queries (sqlite: read-only connections; postgres: pool size)."""
    retention: Duration = 7 * 86400.0
    """Events received longer ago than this leave the index (never the archive)."""
    prune_interval: Duration = 300.0
    """How often retention runs."""
    batch: int = Field(default=2000, ge=1, le=50_000)
    """Journal entries indexed per write."""

    @model_validator(mode="after")
    def _dsn(self) -> IndexConfig:
        if self.backend == "postgres" and not self.dsn:
            raise ValueError("dsn: required when backend is postgres (postgresql://user@host:5432/db)")
        return self


class IndexUnavailable(Exception):
    """The index backend failed (disk, database connection). Retryable unless stated."""


class IndexRefused(Exception):
    """The backend refused the rows themselves (their content, not its own state): writing
    the same rows again fails the same way, so they must not be retried as an outage."""


@dataclass(frozen=True, slots=True)
class Classification:
    """What the rules engine says about an event: the highest-severity match and every rule."""

    category: str | None
    severity: str | None
    rules: tuple[str, ...] = ()


# Injected by the app: the rule engine's view of one event, or None if no rule matches.
Classifier = Callable[[Event], Classification | None]


@dataclass(slots=True)
class IndexRow:
    """One event as indexed."""

    canonical: dict[str, str | None]
    received_ms: int
    journal_offset: int
    source: str
    record: bytes
    classification: Classification | None = None

    @property
    def id(self) -> str:
        value = self.canonical["id"]
        assert value is not None
        return value

    @classmethod
    def from_entry(cls, entry: Entry, classification: Classification | None) -> IndexRow:
        return cls(
            entry.canonical, entry.received_ms, entry.offset, entry.source, entry.record, classification
        )

    @property
    def tenant_key(self) -> str:
        """The tenant as stored: its column form, NO_TENANT when the event has none."""
        return column_text(self.canonical.get("tenant") or NO_TENANT)

    @property
    def id_key(self) -> str:
        """The id as stored (its column form)."""
        return column_text(self.id)

    def values(self) -> list[Any]:
        """Stored column values in ALL_COLUMNS order: text in its column form, and the
        original values in ``exact`` when any column form differs from its value.

        Raises ValueError or TypeError for a row no backend can store (a bug upstream).
        """
        c = self.classification
        exact: dict[str, str] = {}
        out: list[Any] = []
        for name in CANONICAL_FIELDS:
            value = self.canonical.get(name)
            if name == "tenant" and not value:
                value = NO_TENANT
            out.append(_stored(name, value, exact))
        out.append(_stored("category", c.category if c else None, exact))
        out.append(_stored("severity", c.severity if c else None, exact))
        out.append(orjson.dumps(list(c.rules)).decode() if c and c.rules else None)
        out.append(self.received_ms)
        out.append(_stored("source", self.source, exact))
        out.append(exact_json(exact) if exact else None)
        out.append(self.journal_offset)
        out.append(self.record)
        return out


def _stored(name: str, value: str | None, exact: dict[str, str]) -> str | None:
    """The column form of one value; records the original in ``exact`` when they differ."""
    # The common case (short ASCII without NUL) is its own column form: skip the work.
    if value is None or (value.isascii() and len(value) <= MAX_COLUMN_BYTES and "\x00" not in value):
        return value
    form = column_text(value)
    if form != value:
        exact[name] = value
    return form


@dataclass(frozen=True, slots=True)
class Location:
    """Where an archived event is: the file's key and the record's position (leaf) in it.

    ``record_hash`` is the record's RFC 9162 leaf hash, SHA-256(0x00 || record). It ties the
    location to one event's exact bytes, not to its id: the same id in another tenant (a
    different record) never shows this location, and the archiver need not know tenants.
    """

    event_id: str
    tracker: str
    store: str
    key: str
    leaf: int
    stored_ms: int
    record_hash: bytes

    def to_dict(self) -> dict[str, Any]:
        return {"tracker": self.tracker, "store": self.store, "key": self.key, "leaf": self.leaf}


@dataclass(slots=True)
class Page:
    items: list[dict[str, Any]]
    next_cursor: str | None


@dataclass(slots=True)
class StoredEvent:
    """``GET /v1/events/{id}``: the indexed fields, the record as stored, and where it is archived."""

    fields: dict[str, Any]
    record: bytes
    journal_offset: int
    source: str
    locations: list[Location] = field(default_factory=list)

    @property
    def record_hash(self) -> bytes:
        """The record's leaf hash, the key of its archive locations."""
        return leaf_hash(self.record)


def origin_of(source: str | None) -> str:
    """``trailkeeper`` for the daemon's own audit records, ``producer`` for everything sent to it."""
    return ORIGIN_TRAILKEEPER if source in _AUDIT_SOURCES else ORIGIN_PRODUCER


def row_to_item(row: Sequence[Any]) -> dict[str, Any]:
    """A list item as the API returns it, from a row in ITEM_COLUMNS order.

    Fields are the values the producer sent (not their column forms), as valid Unicode
    (a lone surrogate reads as U+FFFD); ``tenant`` is None for an event without one;
    ``origin`` says whether trailkeeper itself wrote the event.
    """
    item = dict(zip(ITEM_COLUMNS, row, strict=True))
    source = item.pop("source")
    exact = load_exact(item.pop("exact"))
    if exact:
        # The escape-free original sits beside its column form; the source is not an item field.
        source = exact.pop("source", source)
        for name, value in exact.items():
            if name in item and isinstance(value, str):
                item[name] = display_text(value)
    if item.get("tenant") == NO_TENANT:
        item["tenant"] = None
    rules = item.get("rules")
    item["rules"] = orjson.loads(rules) if rules else []
    item["received_ms"] = int(item["received_ms"])
    item["origin"] = origin_of(source)
    return item


def page_of(rows: Sequence[Sequence[Any]], limit: int) -> Page:
    """A Page from up to ``limit + 1`` rows in ITEM_COLUMNS order (the extra row says "more").

    The cursor holds the last row's stored (time, id, tenant), so paging compares what
    is stored, whatever the values are.
    """
    items = [row_to_item(r) for r in rows[:limit]]
    cursor = None
    if len(rows) > limit and limit > 0:
        last = rows[limit - 1]
        cursor = encode_cursor(
            last[_TIME], last[_ID], last[_TENANT] if last[_TENANT] is not None else NO_TENANT
        )
    return Page(items, cursor)


_TIME = ITEM_COLUMNS.index("time")
_ID = ITEM_COLUMNS.index("id")
_TENANT = ITEM_COLUMNS.index("tenant")


def stored_source(value: str | None, exact: bytes | memoryview | None) -> str:
    """The source of a row as written (its exact value when the column form differs)."""
    original = load_exact(exact).get("source")
    if isinstance(original, str):
        return original
    return value or ""


def stored_event(row: Sequence[Any]) -> StoredEvent:
    """A ``find`` row (ITEM_COLUMNS, then journal_offset and record) as a StoredEvent."""
    n = len(ITEM_COLUMNS)
    return StoredEvent(
        row_to_item(row[:n]),
        bytes(row[n + 1]),
        int(row[n]),
        stored_source(row[ITEM_COLUMNS.index("source")], row[ITEM_COLUMNS.index("exact")]),
    )


class IndexBackend(Protocol):
    """An index store. All methods may raise IndexUnavailable; writes are idempotent."""

    name: str

    async def open(self) -> None:
        """Connect and create the schema if missing. Idempotent."""

    async def close(self) -> None: ...

    async def write(self, rows: Sequence[IndexRow]) -> int:
        """Insert rows; a row whose (tenant, id) is already indexed is skipped (first write wins).

        The same id in another tenant is another event and is always stored. Returns how
        many rows were new. At-least-once delivery makes repeats normal. All or nothing:
        raises IndexRefused (nothing written) when the backend refuses a row's content,
        IndexUnavailable when the backend itself fails.
        """

    async def add_locations(self, locations: Sequence[Location]) -> None:
        """Record archive locations; repeating one is a no-op."""

    async def search(self, query: Query) -> Page:
        """A page of rows newest first, restricted to ``query.tenants`` when set."""

    async def find(
        self, event_id: str, tenants: frozenset[str] | None, limit: int = 100
    ) -> list[StoredEvent]:
        """The events with this id among ``tenants`` (None: every tenant; "" in the set: the
        events without a tenant), newest received first, at most ``limit``, each with the
        archive locations of its own record.

        One lookup restricted to the scope: an id that exists only in other tenants costs
        and answers exactly what an unknown id does.
        """

    async def get(self, event_id: str, tenants: frozenset[str] | None = None) -> StoredEvent | None:
        """The newest of ``find(event_id, tenants)``, or None."""

    async def prune(self, before_ms: int) -> int:
        """Delete rows and locations received before ``before_ms``; returns rows deleted."""

    async def count(self) -> int: ...

    async def check(self) -> None:
        """Raise IndexUnavailable if the backend cannot serve queries."""
