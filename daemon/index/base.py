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

from daemon.events import CANONICAL_FIELDS, Entry, Event
from daemon.index.query import Query
from daemon.units import Duration

# Columns returned by a list query, in order.
LIST_COLUMNS: tuple[str, ...] = (*CANONICAL_FIELDS, "category", "severity", "rules", "received_ms")
ALL_COLUMNS: tuple[str, ...] = (*LIST_COLUMNS, "journal_offset", "source", "record")


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

    def values(self) -> list[Any]:
        """Column values in ALL_COLUMNS order."""
        c = self.classification
        return [
            *(self.canonical.get(f) for f in CANONICAL_FIELDS),
            c.category if c else None,
            c.severity if c else None,
            orjson.dumps(list(c.rules)).decode() if c and c.rules else None,
            self.received_ms,
            self.journal_offset,
            self.source,
            self.record,
        ]


@dataclass(frozen=True, slots=True)
class Location:
    """Where an archived event is: the file's key and the record's position (leaf) in it."""

    event_id: str
    tracker: str
    store: str
    key: str
    leaf: int
    stored_ms: int

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


def row_to_item(row: Sequence[Any]) -> dict[str, Any]:
    """A list item (LIST_COLUMNS order) as the API returns it."""
    item = dict(zip(LIST_COLUMNS, row, strict=True))
    rules = item.get("rules")
    item["rules"] = orjson.loads(rules) if rules else []
    item["received_ms"] = int(item["received_ms"])
    return item


class IndexBackend(Protocol):
    """An index store. All methods may raise IndexUnavailable; writes are idempotent."""

    name: str

    async def open(self) -> None:
        """Connect and create the schema if missing. Idempotent."""

    async def close(self) -> None: ...

    async def write(self, rows: Sequence[IndexRow]) -> int:
        """Insert rows; a row whose id is already indexed is skipped (first write wins).

        Returns how many rows were new. At-least-once delivery makes repeats normal.
        """

    async def add_locations(self, locations: Sequence[Location]) -> None:
        """Record archive locations; repeating one is a no-op."""

    async def search(self, query: Query) -> Page:
        """A page of rows newest first, restricted to ``query.tenants`` when set."""

    async def get(self, event_id: str) -> StoredEvent | None:
        """One event by id, whatever its tenant: the caller enforces scope."""

    async def prune(self, before_ms: int) -> int:
        """Delete rows and locations received before ``before_ms``; returns rows deleted."""

    async def count(self) -> int: ...

    async def check(self) -> None:
        """Raise IndexUnavailable if the backend cannot serve queries."""
