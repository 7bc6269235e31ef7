"""Query parameters, cursors and the SQL they become (no database)."""

from __future__ import annotations

import pytest

from daemon.index.query import Query, QueryError, build_select, decode_cursor, encode_cursor, normalise_time


def test_times_are_normalised_to_the_index_format() -> None:
    assert normalise_time("2024-07-30T21:31:10Z", "start") == "2024-07-30T21:31:10.000Z"
    assert normalise_time("2024-07-30T23:31:10.5+02:00", "start") == "2024-07-30T21:31:10.500Z"
    assert normalise_time("1722375070000", "start") == "2024-07-30T21:31:10.000Z"
    assert normalise_time("2024-07-30", "start") == "2024-07-30T00:00:00.000Z"
    with pytest.raises(QueryError, match="start"):
        normalise_time("last tuesday", "start")


def test_cursor_round_trip_and_damage() -> None:
    c = encode_cursor("2024-07-30T21:31:10.000Z", "abc", "t1")
    assert decode_cursor(c) == ("2024-07-30T21:31:10.000Z", "abc", "t1")
    # A cursor from before tenants were part of the identity still reads, on (time, id) alone.
    import base64

    old = base64.urlsafe_b64encode(b'["2024-07-30T21:31:10.000Z","abc"]').decode().rstrip("=")
    assert decode_cursor(old) == ("2024-07-30T21:31:10.000Z", "abc", None)
    for bad in ("%%%", "e30", encode_cursor("a", "b")[:-3] + "zzz"):
        with pytest.raises(QueryError, match="cursor"):
            decode_cursor(bad)


def test_parameters_map_to_filters_and_are_checked() -> None:
    q = Query.from_params({"user": "bob", "operation": "X", "limit": "10", "q": "a%b"}, frozenset({"t"}))
    assert q.filters == {"user_name": "bob", "operation": "X"} and q.limit == 10 and q.text == "a%b"
    for params in ({"limit": "0"}, {"limit": "-1"}, {"bogus": "1"}, {"user": ""}, {"user": "x" * 513}):
        with pytest.raises(QueryError):
            Query.from_params(params)
    # NUL is a character a producer can send, so a filter may ask for it (the index stores
    # and compares an escaped form, see test_index_values).
    assert Query.from_params({"operation": "Nul\x00Name", "q": "\x00"}).filters == {
        "operation": "Nul\x00Name"
    }


def test_sql_binds_every_value_and_escapes_like() -> None:
    q = Query.from_params(
        {"operation": "x'; DROP TABLE events; --", "q": "50%_off", "limit": "5"}, frozenset({"b", "a"})
    )
    sql = build_select(q, "id", lambda i: f"${i}", like="ILIKE")
    assert "DROP" not in sql.text
    assert sql.args == ["x'; DROP TABLE events; --", "a", "b", "%50\\%\\_off%", "%50\\%\\_off%", 6]
    assert sql.text.endswith("ORDER BY time DESC, id DESC, tenant DESC LIMIT $6")
    assert "1 = 0" in build_select(Query(tenants=frozenset()), "id", lambda i: "?").text
