"""The query index of recent events: backends, the journal consumer, queries."""

from __future__ import annotations

from pathlib import Path

from daemon.index.base import (
    Classification,
    Classifier,
    IndexBackend,
    IndexConfig,
    IndexRefused,
    IndexRow,
    IndexUnavailable,
    Location,
    Page,
    StoredEvent,
)
from daemon.index.consumer import CURSOR, Indexer
from daemon.index.query import Query, QueryError


def build_index(config: IndexConfig, default_dir: Path | None = None) -> IndexBackend:
    """The backend ``index.backend`` names; SQLite without ``path`` lives in ``default_dir``.

    Raises ValueError for an incomplete config.
    """
    if config.backend == "postgres":
        from daemon.index.postgres import PostgresIndex

        if not config.dsn:
            raise ValueError("index.dsn: required when index.backend is postgres")
        return PostgresIndex(config.dsn, config.pg_schema, config.pool_size)
    from daemon.index.sqlite import SqliteIndex

    path = config.path
    if path is None:
        if default_dir is None:
            raise ValueError("index.path: required when there is no journal directory to default to")
        path = default_dir / "index" / "events.db"
    return SqliteIndex(path, readers=config.pool_size)


__all__ = [
    "CURSOR",
    "Classification",
    "Classifier",
    "IndexBackend",
    "IndexConfig",
    "IndexRefused",
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
