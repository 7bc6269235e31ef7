"""One behaviour suite for every index backend (SQLite file, real PostgreSQL).

Expected results are computed here in Python from the rows written, so each
filter is checked against an independent implementation, not against itself.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from daemon.events import CANONICAL_FIELDS
from daemon.index import Classification, IndexBackend, IndexRow, Location, Query, build_index
from daemon.index.base import IndexConfig
from daemon.index.query import EXACT_FILTERS

TENANTS = ["111111111111", "222222222222", "333333333333"]
OPERATIONS = ["CreateUser", "DeleteTrail", "StopLogging", "DescribeInstances", "GetObject", "put_100%_bucket"]
USERS = ["alice", "bob", "christophe", "Zoë"]


def make_rows(n: int, seed: int = 7, base_ms: int = 1_722_375_000_000) -> list[IndexRow]:
    rnd = random.Random(seed)
    rows = []
    for i in range(n):
        # Few distinct seconds, so many rows share a time and the id breaks the tie.
        t = base_ms + rnd.randrange(0, 40) * 1000
        second, ms = divmod(t, 1000)
        import datetime as dt

        stamp = dt.datetime.fromtimestamp(second, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{ms:03d}Z"
        canonical: dict[str, str | None] = dict.fromkeys(CANONICAL_FIELDS)
        canonical.update(
            id=f"ev-{i:05d}-{rnd.randrange(10**6):06d}",
            time=stamp,
            service=rnd.choice(["iam.amazonaws.com", "cloudtrail.amazonaws.com", "ecs"]),
            operation=rnd.choice(OPERATIONS),
            resource_type=rnd.choice(["AWS::IAM::User", "bucket", None]),
            resource_id=rnd.choice([f"arn:aws:iam::1:user/u{i % 5}", None]),
            resource_name=rnd.choice([f"res-{i % 9}", "Admin_Bucket", None]),
            user_name=rnd.choice(USERS),
            user_id=f"AID{i % 4}",
            source_ip=rnd.choice(["255.090.254.5", "10.0.0.1", "::1"]),
            rating=rnd.choice(["normal", "warning", "incident"]),
            tenant=rnd.choice([*TENANTS, None]),
            format="cloudtrail",
        )
        cls = rnd.choice(
            [
                None,
                Classification("defense-evasion", "high", ("cloudtrail-stop",)),
                Classification("persistence", "medium", ("iam-create-user", "iam-any")),
            ]
        )
        record = orjson.dumps({"eventID": canonical["id"], "n": i, "x": "é"})
        rows.append(IndexRow(canonical, t, i, "http", record, cls))
    return rows


@pytest.fixture(params=["sqlite", "postgres"])
async def index(
    request: pytest.FixtureRequest, tmp_path: Path, pg_database: Callable[[], Any]
) -> AsyncIterator[IndexBackend]:
    async with contextlib.AsyncExitStack() as stack:
        if request.param == "sqlite":
            backend = build_index(IndexConfig(path=tmp_path / "index" / "events.db"))
        else:
            dsn = await stack.enter_async_context(pg_database())
            backend = build_index(IndexConfig(backend="postgres", dsn=dsn, pg_schema="tk_contract"))
        await backend.open()
        stack.push_async_callback(backend.close)
        yield backend


def expected(rows: list[IndexRow], pred: Callable[[IndexRow], bool]) -> list[str]:
    hits = [r for r in rows if pred(r)]
    hits.sort(key=lambda r: (r.canonical["time"], r.id), reverse=True)
    return [r.id for r in hits]


async def walk(index: IndexBackend, q: Query) -> list[str]:
    ids: list[str] = []
    while True:
        page = await index.search(q)
        ids += [item["id"] for item in page.items]
        if page.next_cursor is None:
            return ids
        q = Query.from_params({**_params_of(q), "cursor": page.next_cursor}, q.tenants)


def _params_of(q: Query) -> dict[str, str]:
    reverse = {v: k for k, v in EXACT_FILTERS.items()}
    params = {reverse[c]: v for c, v in q.filters.items()}
    if q.start:
        params["start"] = q.start
    if q.end:
        params["end"] = q.end
    if q.text:
        params["q"] = q.text
    params["limit"] = str(q.limit)
    return params


async def test_writes_are_idempotent(index: IndexBackend) -> None:
    rows = make_rows(50)
    assert await index.write(rows) == 50
    assert await index.write(rows) == 0
    assert await index.write(rows[:10] + make_rows(3, seed=99, base_ms=1_800_000_000_000)) == 3
    assert await index.count() == 53


async def test_first_write_wins_for_a_repeated_id(index: IndexBackend) -> None:
    rows = make_rows(1)
    await index.write(rows)
    clone = IndexRow(dict(rows[0].canonical, operation="Tampered"), 1, 2, "http", b"{}", None)
    assert await index.write([clone]) == 0
    stored = await index.get(rows[0].id)
    assert stored is not None and stored.fields["operation"] == rows[0].canonical["operation"]


@pytest.mark.parametrize("param", sorted(EXACT_FILTERS))
async def test_each_exact_filter_returns_exactly_the_matching_rows(index: IndexBackend, param: str) -> None:
    rows = make_rows(300)
    await index.write(rows)
    column = EXACT_FILTERS[param]
    values = {r.values()[list(_all_columns()).index(column)] for r in rows} - {None}
    assert values, f"test data has no value for {column}"
    for value in sorted(values):
        q = Query.from_params({param: value, "limit": "1000"})
        page = await index.search(q)

        def pred(r: IndexRow, column: str = column, value: Any = value) -> bool:
            return r.values()[list(_all_columns()).index(column)] == value

        assert [i["id"] for i in page.items] == expected(rows, pred), (param, value)
        assert all(i[column] == value for i in page.items)


def _all_columns() -> tuple[str, ...]:
    from daemon.index.base import ALL_COLUMNS

    return ALL_COLUMNS


async def test_time_range_is_start_inclusive_end_exclusive(index: IndexBackend) -> None:
    rows = make_rows(200)
    await index.write(rows)
    times = sorted({r.canonical["time"] for r in rows if r.canonical["time"]})
    start, end = times[5], times[20]
    page = await index.search(Query.from_params({"start": start, "end": end, "limit": "1000"}))
    assert [i["id"] for i in page.items] == expected(
        rows, lambda r: start <= (r.canonical["time"] or "") < end
    )
    # Other spellings of the same instant select the same rows.
    page2 = await index.search(
        Query.from_params({"start": start.replace("Z", "+00:00"), "end": end, "limit": "1000"})
    )
    assert page2.items == page.items


async def test_free_text_matches_operation_or_resource_name_case_insensitively(index: IndexBackend) -> None:
    rows = make_rows(200)
    await index.write(rows)

    def has(text: str) -> Callable[[IndexRow], bool]:
        return lambda r: any(
            text.lower() in (r.canonical[f] or "").lower() for f in ("operation", "resource_name")
        )

    for text in ("user", "ADMIN", "stoplog", "res-3"):
        page = await index.search(Query.from_params({"q": text, "limit": "1000"}))
        assert [i["id"] for i in page.items] == expected(rows, has(text)), text
    # LIKE wildcards in the text are literal characters.
    page = await index.search(Query.from_params({"q": "100%_", "limit": "1000"}))
    assert [i["id"] for i in page.items] == expected(rows, has("100%_"))
    page = await index.search(Query.from_params({"q": "_", "limit": "1000"}))
    assert [i["id"] for i in page.items] == expected(rows, has("_"))


async def test_combined_filters_and_tenant_scope(index: IndexBackend) -> None:
    rows = make_rows(300)
    await index.write(rows)
    scope = frozenset(TENANTS[:2])
    q = Query.from_params({"user": "alice", "rating": "warning", "limit": "1000"}, tenants=scope)
    page = await index.search(q)
    want = expected(
        rows,
        lambda r: (
            r.canonical["user_name"] == "alice"
            and r.canonical["rating"] == "warning"
            and r.canonical["tenant"] in scope
        ),
    )
    assert want and [i["id"] for i in page.items] == want
    assert all(i["tenant"] in scope for i in page.items)
    nothing = await index.search(Query.from_params({"limit": "1000"}, tenants=frozenset()))
    assert nothing.items == []


async def test_paging_returns_each_row_once_newest_first_and_is_stable(index: IndexBackend) -> None:
    rows = make_rows(230)
    await index.write(rows)
    q = Query.from_params({"limit": "7"})
    first = await index.search(q)
    assert first.next_cursor is not None
    # Newer rows arriving mid-walk must not shift the pages after the cursor.
    await index.write(make_rows(20, seed=3, base_ms=1_900_000_000_000))
    ids = [i["id"] for i in first.items]
    ids += await walk(index, Query.from_params({"limit": "7", "cursor": first.next_cursor}))
    assert ids == expected(rows, lambda r: True)
    assert len(ids) == len(set(ids)) == 230


async def test_filtered_paging_covers_exactly_the_matches(index: IndexBackend) -> None:
    rows = make_rows(300)
    await index.write(rows)
    ids = await walk(index, Query.from_params({"operation": "CreateUser", "limit": "4"}))
    assert ids == expected(rows, lambda r: r.canonical["operation"] == "CreateUser")


async def test_get_returns_record_classification_and_locations(index: IndexBackend) -> None:
    rows = make_rows(20)
    await index.write(rows)
    row = next(r for r in rows if r.classification is not None)
    loc = Location(row.id, "default", "local", "trails/default/x.json.gz", 4, row.received_ms)
    await index.add_locations([loc])
    await index.add_locations([loc])
    stored = await index.get(row.id)
    assert stored is not None
    assert stored.record == row.record
    assert stored.journal_offset == row.journal_offset
    assert stored.fields["category"] == row.classification.category
    assert stored.fields["severity"] == row.classification.severity
    assert stored.fields["rules"] == list(row.classification.rules)
    assert stored.locations == [loc]
    assert await index.get("no-such-id") is None


async def test_prune_removes_only_rows_received_before_the_cutoff(index: IndexBackend) -> None:
    rows = make_rows(100)
    await index.write(rows)
    cutoff = sorted(r.received_ms for r in rows)[40]
    old = [r for r in rows if r.received_ms < cutoff]
    await index.add_locations([Location(old[0].id, "t", "s", "k", 0, cutoff - 1)])
    assert await index.prune(cutoff) == len(old)
    assert await index.count() == 100 - len(old)
    assert await index.get(old[0].id) is None
    assert await index.prune(cutoff) == 0


async def test_check_passes_on_an_open_index(index: IndexBackend) -> None:
    await index.check()
