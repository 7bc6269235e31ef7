"""Fixtures shared across the suite: real services on this machine, unique names per test."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

PG_ADMIN_DSN = os.environ.get("TK_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")


def unavailable(service: str, exc: BaseException) -> None:
    """Skip when a real service is unreachable, except in CI where that is a failure."""
    message = f"{service} is unreachable ({exc}); start it to run this test"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


@contextlib.asynccontextmanager
async def _pg_database() -> AsyncIterator[str]:
    import asyncpg

    try:
        admin = await asyncpg.connect(PG_ADMIN_DSN, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        unavailable(f"PostgreSQL at {PG_ADMIN_DSN}", exc)
        raise
    name = f"tk_test_{uuid.uuid4().hex[:12]}"
    await admin.execute(f'CREATE DATABASE "{name}"')
    base, _, _ = PG_ADMIN_DSN.rpartition("/")
    try:
        yield f"{base}/{name}"
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture
def pg_database() -> Callable[[], Any]:
    """``async with pg_database() as dsn``: a fresh PostgreSQL database, dropped afterwards.

    Skips when PostgreSQL is unreachable (fails when CI=true).
    """
    return _pg_database


@pytest.fixture
async def pg_dsn() -> AsyncIterator[str]:
    async with _pg_database() as dsn:
        yield dsn
