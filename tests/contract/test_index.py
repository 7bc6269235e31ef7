"""One behaviour suite for every index backend (SQLite file, real PostgreSQL).

Expected results are computed here in Python from the rows written, so each
filter is checked against an independent implementation, not against itself.
"""

from __future__ import annotations

import contextlib
import json
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
from daemon.integrity.merkle import leaf_hash

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
    values = {_value(r, column) for r in rows} - {None}
    assert values, f"test data has no value for {column}"
    for value in sorted(values):
        q = Query.from_params({param: value, "limit": "1000"})
        page = await index.search(q)

        def pred(r: IndexRow, column: str = column, value: Any = value) -> bool:
            return _value(r, column) == value

        assert [i["id"] for i in page.items] == expected(rows, pred), (param, value)
        assert all(i[column] == value for i in page.items)


def _value(r: IndexRow, column: str) -> Any:
    """A row's value for a filter column, from what was written (not from the store)."""
    if column in ("category", "severity"):
        return getattr(r.classification, column) if r.classification else None
    return r.canonical.get(column)


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
    loc = Location(
        row.id, "default", "local", "trails/default/x.json.gz", 4, row.received_ms, leaf_hash(row.record)
    )
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
    await index.add_locations([Location(old[0].id, "t", "s", "k", 0, cutoff - 1, leaf_hash(old[0].record))])
    assert await index.prune(cutoff) == len(old)
    assert await index.count() == 100 - len(old)
    assert await index.get(old[0].id) is None
    assert await index.prune(cutoff) == 0


async def test_check_passes_on_an_open_index(index: IndexBackend) -> None:
    await index.check()


# --- identity: (tenant, id) -------------------------------------------------------------------


def _event(event_id: str, tenant: str | None, operation: str, n: int, **fields: str | None) -> IndexRow:
    canonical: dict[str, str | None] = dict.fromkeys(CANONICAL_FIELDS)
    canonical.update(
        id=event_id,
        time=f"2024-07-30T21:31:{n % 60:02d}.{n % 1000:03d}Z",
        service="iam.amazonaws.com",
        operation=operation,
        tenant=tenant,
        format="cloudtrail",
    )
    canonical.update(fields)
    # The stdlib writes a lone surrogate as its JSON escape, as a producer would send it.
    record = json.dumps(
        {"eventID": event_id, "recipientAccountId": tenant, "eventName": operation, "n": n}
    ).encode()
    return IndexRow(canonical, 1_722_375_000_000 + n, n, "http", record)


async def test_the_same_id_in_two_tenants_is_two_events(index: IndexBackend) -> None:
    """Issue 15 finding 1: tenant A's event X must not hide tenant B's event X."""
    a = _event("X", "tenant-a", "PlantedByA", 1)
    b = _event("X", "tenant-b", "RealEventOfB", 2)
    assert await index.write([a]) == 1
    assert await index.write([b]) == 1
    # A replay of either is still a duplicate, also within one batch.
    assert await index.write([a, b, b]) == 0
    assert await index.count() == 2

    found = await index.find("X", frozenset({"tenant-b"}))
    assert [(s.fields["tenant"], s.fields["operation"], s.record) for s in found] == [
        ("tenant-b", "RealEventOfB", b.record)
    ]
    page = await index.search(Query.from_params({"operation": "RealEventOfB"}, frozenset({"tenant-b"})))
    assert [(i["id"], i["tenant"]) for i in page.items] == [("X", "tenant-b")]
    # A caller who sees both gets both, newest received first; get() is the newest.
    assert [s.fields["tenant"] for s in await index.find("X", None)] == ["tenant-b", "tenant-a"]
    newest = await index.get("X")
    assert newest is not None and newest.fields["tenant"] == "tenant-b"
    assert await index.find("X", frozenset({"tenant-c"})) == []
    assert await index.find("X", frozenset()) == []


async def test_an_event_without_tenant_is_its_own_identity(index: IndexBackend) -> None:
    none = _event("Y", None, "NoTenant", 1)
    some = _event("Y", "tenant-a", "WithTenant", 2)
    assert await index.write([none, some]) == 2
    assert await index.write([none]) == 0
    found = await index.find("Y", frozenset({""}))
    assert [(s.fields["tenant"], s.fields["operation"]) for s in found] == [(None, "NoTenant")]
    page = await index.search(Query.from_params({"operation": "NoTenant"}))
    assert [i["tenant"] for i in page.items] == [None]


async def test_paging_returns_rows_that_share_time_and_id_once_each(index: IndexBackend) -> None:
    rows = [_event("same", f"tenant-{i}", "Op", 7) for i in range(5)]
    await index.write(rows)
    ids = await walk(index, Query.from_params({"limit": "2"}))
    assert ids == ["same"] * 5
    tenants: list[str | None] = []
    q = Query.from_params({"limit": "2"})
    while True:
        page = await index.search(q)
        tenants += [i["tenant"] for i in page.items]
        if page.next_cursor is None:
            break
        q = Query.from_params({"limit": "2", "cursor": page.next_cursor})
    assert tenants == [f"tenant-{i}" for i in reversed(range(5))]


async def test_a_location_belongs_to_its_own_record_only(index: IndexBackend) -> None:
    a = _event("X", "tenant-a", "A", 1)
    b = _event("X", "tenant-b", "B", 2)
    await index.write([a, b])
    loc_a = Location("X", "default", "local", "trails/default/tenant-a/f.json.gz", 0, 5, leaf_hash(a.record))
    loc_b = Location("X", "default", "local", "trails/default/tenant-b/f.json.gz", 3, 6, leaf_hash(b.record))
    await index.add_locations([loc_a, loc_b])
    (got_a,) = await index.find("X", frozenset({"tenant-a"}))
    (got_b,) = await index.find("X", frozenset({"tenant-b"}))
    assert got_a.locations == [loc_a]
    assert got_b.locations == [loc_b]


async def test_origin_tells_the_daemons_own_records_from_producers(index: IndexBackend) -> None:
    from daemon.api.audit import SOURCE

    own = _event("audit-1", "trailkeeper", "queryEvents", 1, service="trailkeeper")
    own.source = SOURCE
    producer = _event("p-1", "trailkeeper", "queryEvents", 2, service="trailkeeper")
    await index.write([own, producer])
    page = await index.search(Query.from_params({"operation": "queryEvents"}))
    assert {i["id"]: i["origin"] for i in page.items} == {"audit-1": "trailkeeper", "p-1": "producer"}
    (stored,) = await index.find("audit-1", None)
    assert stored.fields["origin"] == "trailkeeper" and stored.source == SOURCE


# --- any value a producer can send ---------------------------------------------------------

ODD_VALUES = {
    "nul": "Nul\x00Name",
    "surrogate": "a\ud800b\udfff",
    "escape_char": "\ue000\ue001\ue002",
    "megabyte": "M" * (1024 * 1024),
    "long_cjk": "長" * 700,
    "json_text": '{"a":[[[[1]]]],"n":1e400}',
    "controls": "line\nbreak\r\t\x1b[31m",
    "big_number": "123456789012345678901234567890",
}


@pytest.mark.parametrize("name", sorted(ODD_VALUES))
async def test_any_value_is_stored_and_found(index: IndexBackend, name: str) -> None:
    """Issue 15 finding 2: PostgreSQL refused NUL (and both backends lone surrogates and
    over-long indexed values), wedging the index. Every value is stored, found by an
    exact filter, by free text, by id and through paging, and read back as sent."""
    from daemon.index.values import display_text

    value = ODD_VALUES[name]
    rows = [
        _event(f"odd-{name}", "tenant-a", value, 1, resource_name=value, user_name=value),
        _event(value, value, "OddIdAndTenant", 2),
        _event("plain", "tenant-a", "Plain", 3),
    ]
    assert await index.write(rows) == 3
    shown = display_text(value)

    q = Query(filters={"operation": value}, limit=10)  # also past the API's 512-character limit
    page = await index.search(q)
    assert [i["id"] for i in page.items] == [f"odd-{name}"]
    item = page.items[0]
    assert item["operation"] == item["resource_name"] == item["user_name"] == shown
    page = await index.search(Query(filters={"tenant": value}, limit=10))
    assert [(i["id"], i["tenant"]) for i in page.items] == [(shown, shown)]
    page = await index.search(Query(text=value[:100], limit=10))
    assert f"odd-{name}" in [i["id"] for i in page.items]

    (stored,) = await index.find(value, frozenset({value}))
    assert stored.fields["id"] == shown and stored.record == rows[1].record
    assert await index.find(value, frozenset({"tenant-a"})) == []

    walked = await walk(index, Query.from_params({"limit": "1"}))
    assert walked == ["plain", shown, f"odd-{name}"]


async def test_values_differing_only_past_the_stored_prefix_stay_distinct(index: IndexBackend) -> None:
    base = "p" * 5000
    one, two = _event(base + "1", "t", base + "1", 1), _event(base + "2", "t", base + "2", 2)
    assert await index.write([one, two]) == 2
    for row in (one, two):
        page = await index.search(Query(filters={"operation": row.canonical["operation"] or ""}, limit=10))
        assert [i["id"] for i in page.items] == [row.id]


async def test_a_row_the_database_refuses_raises_index_refused(index: IndexBackend) -> None:
    from daemon.index import IndexRefused

    bad = _event("no-time", "t", "Op", 1)
    bad.canonical["time"] = None  # NOT NULL: refused by the database itself
    with pytest.raises(IndexRefused):
        await index.write([_event("fine", "t", "Op", 2), bad])
    # All or nothing: the good row of the refused batch was not written either.
    assert await index.count() == 0
    assert await index.write([_event("fine", "t", "Op", 2)]) == 1


async def test_a_database_that_is_down_raises_index_unavailable(index: IndexBackend) -> None:
    from daemon.index import IndexUnavailable

    await index.close()
    with pytest.raises(IndexUnavailable):
        await index.write([_event("e", "t", "Op", 1)])
    await index.open()
    assert await index.write([_event("e", "t", "Op", 1)]) == 1


async def test_a_foreign_id_runs_exactly_the_statements_an_unknown_id_does(tmp_path: Path) -> None:
    """Issue 15 finding 3, below the API: looking up an id that exists only in another
    tenant executes the same SQL as an unknown id (SQLite traces every statement)."""
    from daemon.index.sqlite import SqliteIndex

    index = SqliteIndex(tmp_path / "events.db", readers=1)
    await index.open()
    try:
        await index.write([_event("in-b", "tenant-b", "Secret", 1)])
        statements: list[str] = []
        for conn in index._all_readers:
            await conn.set_trace_callback(statements.append)
        assert await index.find("in-b", frozenset({"tenant-a"})) == []
        foreign = [s.replace("in-b", "ID") for s in statements]
        statements.clear()
        assert await index.find("xx-y", frozenset({"tenant-a"})) == []
        unknown = [s.replace("xx-y", "ID") for s in statements]
        assert foreign == unknown and len(foreign) == 1
    finally:
        await index.close()
