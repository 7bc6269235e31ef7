"""The witness's state rules, without HTTP: what it cosigns, what it refuses, what it remembers."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from daemon.integrity.checkpoint import NoteError, Signer, open_note
from daemon.integrity.cosignature import Cosigner, cosignatures
from daemon.witness import state as state_mod
from daemon.witness.state import (
    ClockBehind,
    Conflict,
    Inconsistent,
    StateError,
    Submission,
    WitnessState,
    origin_hash,
)
from tests.unit.witness import ToyLog

COSIGNER = Cosigner("witness.test/w1", Ed25519PrivateKey.generate())


class Clock:
    def __init__(self, now: float = 1_700_000_000) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def db(tmp_path: Path) -> Iterator[WitnessState]:
    s = WitnessState.create(tmp_path / "witness.db", COSIGNER.name, COSIGNER.key.vkey())
    yield s
    s.close()


def submission(log: ToyLog, old: int, size: int, *, proof: list[bytes] | None = None) -> Submission:
    """What the server hands the state after checking format and log signatures."""
    cp, note = log.checkpoint(size), log.note(size)
    hashes = tuple(log.proof(old, size) if proof is None else proof)
    return Submission(log.origin, old, hashes, size, cp.root, cp.text(), note[len(cp.text()) + 1 :],
                      request=f"old {old}\n\n{note}".encode())


def advance(db: WitnessState, sub: Submission, clock: Clock | None = None) -> str:
    return db.advance(sub, lambda ts: COSIGNER.cosign(sub.text, ts), clock or Clock())


def test_first_checkpoint_then_extension_are_cosigned_and_stored(db: WitnessState) -> None:
    log = ToyLog().grow(5)
    line = advance(db, submission(log, 0, 3))
    held = db.held(log.origin)
    assert held is not None and (held.size, held.root) == (3, log.root(3))
    # The stored note is the log's signed note plus this cosignature: both verify.
    assert held.note == log.note(3) + line
    open_note(held.note, [log.signer.verifier])
    assert [c.timestamp for c in cosignatures(held.note, [COSIGNER.key])] == [1_700_000_000]

    advance(db, submission(log, 3, 5), Clock(1_700_000_010))
    held = db.held(log.origin)
    assert held is not None and (held.size, held.timestamp) == (5, 1_700_000_010)
    assert db.held_by_hash(origin_hash(log.origin)) == held


def test_old_size_must_be_the_held_size(db: WitnessState) -> None:
    log = ToyLog().grow(8)
    advance(db, submission(log, 0, 4))
    before = db.held(log.origin)
    for old in (0, 2, 5):
        with pytest.raises(Conflict) as err:
            advance(db, submission(log, old, 8))
        assert err.value.held_size == 4
    with pytest.raises(Conflict) as err:
        advance(db, submission(log, 2, 2))  # a smaller tree, claiming its own size
    assert err.value.held_size == 4
    assert db.held(log.origin) == before
    assert db.evidence() == []  # a stale old size is not misbehaviour


def test_inconsistent_trees_are_refused_and_kept_as_evidence(db: WitnessState) -> None:
    log = ToyLog().grow(8)
    advance(db, submission(log, 0, 4))
    before = db.held(log.origin)

    fork = log.fork(2)
    with pytest.raises(Inconsistent):
        advance(db, submission(fork, 4, 8, proof=fork.proof(4, 8)))  # a proof for the fork's own old root
    with pytest.raises(Inconsistent):
        advance(db, submission(log, 4, 8, proof=log.proof(3, 8)))  # a proof between other sizes
    with pytest.raises(Inconsistent):
        advance(db, submission(fork, 4, 4))  # same size, another root
    with pytest.raises(Conflict):
        advance(db, submission(fork, 0, 4))  # same size, another root, wrong old: still evidence

    assert db.held(log.origin) == before
    kept = db.evidence(log.origin)
    # One row per log-signed tree: the fork at size 4 was sent twice and is kept once.
    assert [(e.size, e.root) for e in kept] == [(8, fork.root(8)), (8, log.root(8)), (4, fork.root(4))]
    assert all((e.held_size, e.held_root) == (4, log.root(4)) for e in kept)
    assert "different roots" in kept[2].reason and kept[2].old_size == 4
    assert db.evidence_counts() == {log.origin: 3}


def test_junk_proofs_on_a_public_checkpoint_add_no_evidence_rows(db: WitnessState) -> None:
    log = ToyLog().grow(8)
    advance(db, submission(log, 0, 4))
    for junk in range(5):
        with pytest.raises(Inconsistent):
            advance(db, submission(log, 4, 8, proof=[bytes([junk]) * 32]))
    assert len(db.evidence()) == 1
    advance(db, submission(log, 4, 8))  # the honest request still goes through


def test_old_zero_takes_no_proof_and_size_zero_needs_the_empty_root(db: WitnessState) -> None:
    log = ToyLog().grow(4)
    with pytest.raises(Inconsistent):
        advance(db, submission(log, 0, 4, proof=log.proof(2, 4)))
    empty = ToyLog().grow(1)
    with pytest.raises(Inconsistent):
        # A size-0 checkpoint with a non-empty root.
        sub = submission(empty, 0, 0)
        advance(db, Submission(sub.origin, 0, (), 0, empty.root(1), sub.text, sub.log_signatures, b""))
    assert db.held(log.origin) is None and len(db.evidence()) == 2
    advance(db, submission(log, 0, 0))  # the empty tree itself is fine
    advance(db, submission(log, 0, 4))


def test_the_held_checkpoint_is_cosigned_again_with_a_fresh_time(db: WitnessState) -> None:
    log = ToyLog().grow(3)
    first = advance(db, submission(log, 0, 3))
    line = advance(db, submission(log, 3, 3), Clock(1_700_000_050))
    assert line != first
    held = db.held(log.origin)
    assert held is not None and (held.size, held.root, held.timestamp) == (3, log.root(3), 1_700_000_050)
    assert held.note.endswith(line)
    assert [c.timestamp for c in cosignatures(held.note, [COSIGNER.key])] == [1_700_000_050]
    # Within the same second the stored line is the answer, and nothing is written.
    changes = db._conn.total_changes
    assert advance(db, submission(log, 3, 3), Clock(1_700_000_050.9)) == line
    assert db._conn.total_changes == changes and db.held(log.origin) == held


def test_never_dates_a_cosignature_before_the_last_one(db: WitnessState) -> None:
    log = ToyLog().grow(6)
    advance(db, submission(log, 0, 3), Clock(1_700_000_100))
    before = db.held(log.origin)
    with pytest.raises(ClockBehind) as err:
        advance(db, submission(log, 3, 6), Clock(1_700_000_097))
    assert err.value.behind == 3 and err.value.status == 503
    assert db.held(log.origin) == before
    advance(db, submission(log, 3, 6), Clock(1_700_000_100))  # the same second is not earlier


def test_the_database_itself_refuses_rollback_and_deletion(db: WitnessState) -> None:
    log = ToyLog().grow(4)
    advance(db, submission(log, 0, 4))
    conn = sqlite3.connect(db.path)
    try:
        for sql in (
            "UPDATE cosigned SET size = 2",
            "UPDATE cosigned SET root = zeroblob(32)",
            "UPDATE cosigned SET timestamp = timestamp - 1",
            "DELETE FROM cosigned",
            "INSERT OR REPLACE INTO cosigned SELECT origin, origin_hash, 1, root, note, timestamp, 0"
            " FROM cosigned",
        ):
            with pytest.raises(sqlite3.IntegrityError):
                conn.execute(sql)
    finally:
        conn.close()
    held = db.held(log.origin)
    assert held is not None and held.size == 4


def test_state_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "witness.db"
    log = ToyLog().grow(4)
    first = WitnessState.create(path, COSIGNER.name, COSIGNER.key.vkey())
    first.add_log("trailkeeper/", log.vkey, prefix=True)
    advance(first, submission(log, 0, 4))
    first.close()
    assert path.stat().st_mode & 0o777 == 0o600

    again = WitnessState.open(path)
    try:
        assert again.identity() == (COSIGNER.name, COSIGNER.key.vkey())
        assert [v.vkey() for v in again.keys_for(log.origin)] == [log.vkey]
        with pytest.raises(Conflict) as err:
            advance(again, submission(log, 0, 2))
        assert err.value.held_size == 4
    finally:
        again.close()


def test_open_refuses_missing_and_foreign_files(tmp_path: Path) -> None:
    with pytest.raises(StateError, match="witness init"):
        WitnessState.open(tmp_path / "witness.db")
    assert not (tmp_path / "witness.db").exists()  # opening never creates
    (tmp_path / "junk.db").write_text("not sqlite at all, just text" * 10)
    with pytest.raises(StateError):
        WitnessState.open(tmp_path / "junk.db")
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.close()
    with pytest.raises(StateError, match="not a trailkeeper witness database"):
        WitnessState.open(other)
    WitnessState.create(tmp_path / "w.db", COSIGNER.name, COSIGNER.key.vkey()).close()
    with pytest.raises(StateError, match="already exists"):
        WitnessState.create(tmp_path / "w.db", COSIGNER.name, COSIGNER.key.vkey())


def test_keys_for_prefers_the_exact_origin_then_the_longest_prefix(db: WitnessState) -> None:
    broad, narrow, exact, rotated = (Signer(f"k{i}", Ed25519PrivateKey.generate()).verifier.vkey()
                                     for i in range(4))
    assert db.add_log("trailkeeper/", broad, prefix=True)
    assert db.add_log("trailkeeper/audit/", narrow, prefix=True)
    assert db.add_log("trailkeeper/audit/tk9", exact, prefix=False)
    assert db.add_log("trailkeeper/audit/tk9", rotated, prefix=False)
    assert not db.add_log("trailkeeper/", broad, prefix=True)  # idempotent

    def keys(origin: str) -> set[str]:
        return {v.vkey() for v in db.keys_for(origin)}

    assert keys("trailkeeper/default/tk1") == {broad}
    assert keys("trailkeeper/audit/tk1") == {narrow}
    assert keys("trailkeeper/audit/tk9") == {exact, rotated}
    assert keys("trailkeeper") == set() and keys("other/default/tk1") == set()
    with pytest.raises(NoteError):
        db.add_log("x", "not-a-key", prefix=False)
    assert [(t.pattern, t.prefix, len(t.vkeys)) for t in db.trusted()] == [
        ("trailkeeper/", True, 1), ("trailkeeper/audit/", True, 1), ("trailkeeper/audit/tk9", False, 2)]


def test_evidence_is_capped_per_origin(db: WitnessState, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(state_mod, "EVIDENCE_PER_ORIGIN", 2)
    log = ToyLog().grow(8)
    advance(db, submission(log, 0, 2))
    for size in range(3, 8):
        with pytest.raises(Inconsistent):
            advance(db, submission(log, 2, size, proof=[bytes(32)]))
    assert [e.size for e in db.evidence(log.origin)] == [3, 4]


class FlakyConnection:
    """A real connection whose COMMIT (and, if asked, ROLLBACK) fails as on a full or broken disk."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.failing: set[str] = set()

    def execute(self, sql: str, *args: object) -> sqlite3.Cursor:
        if sql in self.failing:
            raise sqlite3.OperationalError("disk I/O error")
        return self.conn.execute(sql, *args)

    @property
    def in_transaction(self) -> bool:
        return self.conn.in_transaction

    def close(self) -> None:
        self.conn.close()


def test_a_failed_write_cosigns_nothing_and_a_stuck_connection_is_never_read(tmp_path: Path) -> None:
    path = tmp_path / "witness.db"
    WitnessState.create(path, COSIGNER.name, COSIGNER.key.vkey()).close()
    flaky = FlakyConnection(sqlite3.connect(path, isolation_level=None, check_same_thread=False))
    db = WitnessState(path, flaky)  # type: ignore[arg-type]
    log = ToyLog().grow(4)

    flaky.failing = {"COMMIT"}
    with pytest.raises(StateError):
        advance(db, submission(log, 0, 2))
    assert db.usable and db.held(log.origin) is None  # rolled back: nothing to forget
    flaky.failing = set()
    advance(db, submission(log, 0, 2))

    flaky.failing = {"COMMIT", "ROLLBACK"}
    with pytest.raises(StateError):
        advance(db, submission(log, 2, 4))
    # The open transaction holds size 4 uncommitted: it must never be served.
    assert not db.usable
    with pytest.raises(StateError, match="failed earlier"):
        db.held(log.origin)
    db.close()
    again = WitnessState.open(path)
    held = again.held(log.origin)
    assert held is not None and held.size == 2
    again.close()
