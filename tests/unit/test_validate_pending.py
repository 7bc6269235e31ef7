"""Which unlisted files a live chain may still list (daemon/integrity/validate.py ``_pending``):
a window from the head's interval (or, after a crash, the crashed process's last interval) to
one digest interval past the head, and never past now."""

from __future__ import annotations

import datetime as dt

from daemon.integrity.digest import iso
from daemon.integrity.validate import PENDING_GRACE, Validator, _Digest
from daemon.stores.local import LocalStore, LocalStoreConfig

T0 = 1_790_000_000.0  # 2026-09-21T...Z
HOUR = 3600.0


def digest(seq: int, start: float, end: float, *, chain_start: bool = False, chain_end: bool = False) -> _Digest:
    doc = {
        "sequence": seq,
        "start_time": iso(start),
        "end_time": iso(end),
        "chain_start": chain_start,
        "chain_end": chain_end,
        "digest_interval": HOUR,
    }
    return _Digest(f"d{seq}", doc, "")


def key(at: float) -> str:
    stamp = dt.datetime.fromtimestamp(at, tz=dt.UTC).strftime("%Y%m%dT%H%M")
    return f"trails/default/t/r/2026/09/21/w1_default_{stamp}Z_{1:020d}-{2:020d}.json.gz"


def validator(tmp: object, now: float) -> Validator:
    store = LocalStore("s", LocalStoreConfig(path=tmp, fsync=False))  # type: ignore[arg-type]
    return Validator(store, "", [], now=now)


def test_window_of_a_running_chain(tmp_path: object) -> None:
    chains = {("default", "w1"): [digest(1, T0, T0, chain_start=True), digest(2, T0, T0 + HOUR)]}
    v = validator(tmp_path, now=T0 + HOUR + 600)
    assert v._pending(key(T0 + HOUR + 300), chains)
    assert v._pending(key(T0 + 30), chains), "a file opened in the head's interval, stored late"
    assert not v._pending(key(T0 - 2 * HOUR), chains), "long before the head's interval: inserted"
    assert not v._pending(key(T0 + HOUR + 600 + PENDING_GRACE + 120), chains), "after now"
    assert not v._pending(key(4_102_444_740.0), chains), "20991231T2359Z"


def test_no_more_than_one_interval_past_the_head_even_if_now_is_later(tmp_path: object) -> None:
    chains = {("default", "w1"): [digest(1, T0, T0 + HOUR)]}
    v = validator(tmp_path, now=T0 + 30 * HOUR)  # the writer stopped writing digests a day ago
    assert v._pending(key(T0 + 1.5 * HOUR), chains)
    assert not v._pending(key(T0 + 3 * HOUR), chains)


def test_backlog_archived_after_a_restart_keeps_its_receive_time(tmp_path: object) -> None:
    crashed_last = digest(2, T0 + HOUR, T0 + 2 * HOUR)
    restart = digest(3, T0 + 5 * HOUR, T0 + 5 * HOUR, chain_start=True)
    chains = {("default", "w1"): [digest(1, T0, T0 + HOUR, chain_start=True), crashed_last, restart]}
    v = validator(tmp_path, now=T0 + 5 * HOUR + 60)
    # Received by the crashed process after its last digest, archived by the new one.
    assert v._pending(key(T0 + 2 * HOUR + 300), chains)
    assert not v._pending(key(T0 + 0.5 * HOUR), chains), "listed-interval times are not pending"


def test_an_ended_chain_has_nothing_pending(tmp_path: object) -> None:
    chains = {("default", "w1"): [digest(1, T0, T0 + HOUR, chain_end=True)]}
    assert not validator(tmp_path, now=T0 + HOUR)._pending(key(T0 + HOUR - 60), chains)
