"""Column forms: storable, bounded, unchanged for ordinary values, different for different values."""

from __future__ import annotations

import itertools
import json

import pytest

from daemon.index.values import (
    ESC,
    MAX_COLUMN_BYTES,
    column_text,
    display_text,
    escape_text,
    exact_json,
    load_exact,
)

ORDINARY = [
    "",
    "CreateUser",
    "255.090.254.5",
    "Zoë",
    "arn:aws:iam::1:user/x",
    "長" * 250,
    "x" * MAX_COLUMN_BYTES,
]
ODD = [
    "\x00",
    "Nul\x00Name",
    "\ud800",
    "a\udfffb",
    ESC,
    ESC + ESC,
    ESC + "\ue001",
    "x" * (MAX_COLUMN_BYTES + 1),
    "長" * 257,
    "\U0001f600" * 300,
    ("\x00" + ESC + "\ud800") * 400,
]


def storable(form: str) -> bool:
    try:
        data = form.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return b"\x00" not in data and len(data) <= MAX_COLUMN_BYTES


@pytest.mark.parametrize("value", ORDINARY)
def test_ordinary_values_are_stored_unchanged(value: str) -> None:
    assert column_text(value) == value
    assert escape_text(value) == value


@pytest.mark.parametrize("value", ODD, ids=range(len(ODD)))
def test_odd_values_get_a_storable_bounded_form(value: str) -> None:
    form = column_text(value)
    assert form != value
    assert storable(form), (value[:20], form[:20])
    assert column_text(value) == form  # deterministic: writes and filters agree


def test_different_values_never_share_a_form() -> None:
    long = "p" * 5000
    values = [
        *ORDINARY,
        *ODD,
        long + "1",
        long + "2",
        long[:-1] + ESC,
        "\x00" * 1000 + "a",
        "\x00" * 1000 + "b",
        # A value spelled like another value's escape must not collide with it.
        ESC + "\ue001",
        escape_text("\x00"),
        column_text("x" * 2000),
    ]
    forms = [column_text(v) for v in values]
    for (a, fa), (b, fb) in itertools.combinations(zip(values, forms, strict=True), 2):
        if a != b:
            assert fa != fb, (a[:20], b[:20])


def test_the_escape_keeps_substrings_for_free_text_search() -> None:
    value = "Nul\x00Name\ud800" + ESC
    for i, j in itertools.combinations(range(len(value) + 1), 2):
        assert escape_text(value[i:j]) in escape_text(value)


def test_exact_values_round_trip_through_ascii_json() -> None:
    original = {"operation": "Nul\x00Name", "user_name": "a\ud800b", "tenant": "長"}
    data = exact_json(original)
    assert data.isascii()
    assert load_exact(data) == original
    assert load_exact(None) == {} and load_exact(b"") == {}
    assert json.loads(data)["operation"] == "Nul\x00Name"


def test_display_text_is_valid_unicode() -> None:
    assert display_text("a\ud800b\udfff") == "a\ufffdb\ufffd"
    assert display_text("Nul\x00Name") == "Nul\x00Name"
    display_text("a\ud800").encode("utf-8")
