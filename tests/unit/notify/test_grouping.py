"""Alert-storm grouping: group_wait, group_interval, repeat_interval, dedupe, replay boundaries."""

from __future__ import annotations

from pathlib import Path

from daemon.notify.config import RouteConfig
from daemon.notify.grouping import Grouper

MATCH = [{"rule": "r1", "category": "cost_sensitive", "severity": "medium", "description": "d", "tags": []}]


def _ev(i: int, user: str = "eve", op: str = "DeleteBucket") -> dict[str, str]:
    return {"id": f"e{i}", "user_name": user, "operation": op, "time": f"2024-01-01T00:00:{i % 60:02d}.000Z"}


def _grouper(tmp: Path) -> Grouper:
    route = RouteConfig(
        topic="t", group_by=["user_name", "operation"], group_wait=10, group_interval=60, repeat_interval=600
    )
    return Grouper([route], tmp / "groups.json")


def test_storm_is_one_summary_then_interval_batches(tmp_path: Path) -> None:
    g = _grouper(tmp_path)
    for i in range(1000):
        g.add(0, i, 0, _ev(i), MATCH, now=100.0 + i * 0.001)
    assert g.due(105.0) == []
    [(gid, _, summary, _)] = g.due(110.0)
    s = summary["summary"]
    assert (
        s["count"] == 1000 and s["operations"] == {"DeleteBucket": 1000} and s["principals"] == {"eve": 1000}
    )
    assert len(s["event_ids"]) == 10 and s["first_offset"] == 0 and s["last_offset"] == 999
    g.sent(gid, 110.0)
    g.add(0, 1000, 0, _ev(1000), MATCH, now=111.0)
    assert g.due(150.0) == []  # group_interval after the last send
    [(_, _, later, _)] = g.due(170.0)
    assert later["summary"]["count"] == 1


def test_duplicates_and_replayed_offsets_count_once(tmp_path: Path) -> None:
    g = _grouper(tmp_path)
    g.add(0, 1, 0, _ev(1), MATCH, now=0.0)
    g.add(0, 2, 0, _ev(1), MATCH, now=0.0)  # same event id, sent twice by the source
    [(gid, _, s, _)] = g.due(100.0)
    assert s["summary"]["count"] == 1
    g.sent(gid, 100.0)
    fresh = _grouper(tmp_path)
    fresh.through = dict(g.through)
    fresh.add(0, 1, 0, _ev(1), MATCH, now=200.0)  # a replay after a crash
    assert fresh.due(1000.0) == []


def test_quiet_group_reopens_with_group_wait(tmp_path: Path) -> None:
    g = _grouper(tmp_path)
    g.add(0, 1, 0, _ev(1), MATCH, now=0.0)
    [(gid, _, _, _)] = g.due(10.0)
    g.sent(gid, 10.0)
    g.add(0, 2, 0, _ev(2), MATCH, now=1000.0)  # quiet longer than repeat_interval
    assert g.due(1005.0) == []
    assert len(g.due(1010.0)) == 1


def test_groups_split_by_key_and_hold_the_cursor(tmp_path: Path) -> None:
    g = _grouper(tmp_path)
    g.add(0, 5, 0, _ev(1, user="a"), MATCH, now=0.0)
    g.add(0, 7, 0, _ev(2, user="b"), MATCH, now=0.0)
    assert g.oldest_held() == 5
    assert len(g.due(10.0)) == 2
