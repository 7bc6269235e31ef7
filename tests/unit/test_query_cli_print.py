"""``trailkeeper query``'s table: an ORIGIN column, and producer text that cannot act on a terminal."""

from __future__ import annotations

import pytest

from daemon.api.cli import _print


def item(**over: object) -> dict[str, object]:
    base: dict[str, object] = {
        "time": "2024-07-30T21:31:10.000Z",
        "tenant": "056392974792",
        "service": "iam.amazonaws.com",
        "operation": "CreateUser",
        "user_name": "alice",
        "source_ip": "10.0.0.1",
        "resource_name": "bob",
        "rating": "normal",
        "category": None,
        "origin": "producer",
    }
    base.update(over)
    return base


def test_the_table_shows_who_wrote_each_event(capsys: pytest.CaptureFixture[str]) -> None:
    _print([item(), item(service="trailkeeper", operation="queryEvents", origin="trailkeeper")], False, True)
    header, producer, own = capsys.readouterr().out.splitlines()
    assert header.split()[-1] == "ORIGIN"
    assert producer.split()[-1] == "producer"
    assert own.split()[-1] == "trailkeeper"


def test_control_characters_from_producers_are_shown_escaped(capsys: pytest.CaptureFixture[str]) -> None:
    _print([item(operation="Nul\x00\x1b[2J", user_name="a\nb")], False, False)
    (line,) = capsys.readouterr().out.splitlines()
    assert "\x00" not in line and "\x1b" not in line
    assert "Nul\\x00\\x1b[2J" in line and "a\\nb" in line
