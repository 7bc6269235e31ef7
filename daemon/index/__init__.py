"""The query index of recent events: backends, the journal consumer, queries."""

from __future__ import annotations

from daemon.index.base import (
    Classification,
    Classifier,
    IndexBackend,
    IndexConfig,
    IndexRow,
    IndexUnavailable,
    Location,
    Page,
    StoredEvent,
)
from daemon.index.consumer import CURSOR, Indexer
from daemon.index.query import Query, QueryError


def build_index(config: IndexConfig) -> IndexBackend:
    """The backend ``index.backend`` names. Raises ValueError for an incomplete config."""
    if config.backend == "postgres":
        from daemon.index.postgres import PostgresIndex

        if not config.dsn:
            raise ValueError("index.dsn: required when index.backend is postgres")
        return PostgresIndex(config.dsn, config.pg_schema, config.pool_size)
    from daemon.index.sqlite import SqliteIndex

    return SqliteIndex(config.path, readers=config.pool_size)


__all__ = [
    "CURSOR",
    "Classification",
    "Classifier",
    "IndexBackend",
    "IndexConfig",
    "IndexRow",
    "IndexUnavailable",
    "Indexer",
    "Location",
    "Page",
    "Query",
    "QueryError",
    "StoredEvent",
    "build_index",
]
