"""The witness's memory: SQLite, one connection, every change in one ``BEGIN IMMEDIATE`` transaction.

Contract of :meth:`WitnessState.advance`, the only path that cosigns: under a
process-wide lock and inside one write transaction it reads the checkpoint
held for the origin, checks the submitted old size and the consistency proof
against it, takes the time, signs, stores the new state and commits. The
cosignature line is returned only after the commit, so a witness never hands
out a cosignature it could forget. ``BEGIN IMMEDIATE`` also serialises against
other processes on the same file (``add-log`` or ``status`` while ``serve``
runs).

Invariants, also enforced by triggers so neither a code path nor a careless
manual edit can break them: per origin the size never decreases, the root never changes at an equal
size, the cosignature time never decreases, and held state is never deleted.

The database is created only by :meth:`WitnessState.create` (``witness
init``). :meth:`WitnessState.open` refuses a missing or foreign file: a
witness that starts again with empty state could be led to cosign a fork of
what it cosigned before.

Blocking calls: use them from a thread (``asyncio.to_thread``) in the server.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from daemon.integrity.checkpoint import Verifier, parse_vkey
from daemon.integrity.merkle import EMPTY_ROOT, ProofError, verify_consistency

SCHEMA_VERSION = 1
# SQLite integers are signed 64-bit.
MAX_TREE_SIZE = 2**63 - 1
# Evidence is only ever written for trees a trusted log key signed, one row per tree, but a
# misbehaving log could still sign many: the first conflicting ones matter.
EVIDENCE_PER_ORIGIN = 1000

_SCHEMA = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE trust (
        pattern  TEXT NOT NULL,
        prefix   INTEGER NOT NULL CHECK (prefix IN (0, 1)),
        vkey     TEXT NOT NULL,
        added_at INTEGER NOT NULL,
        PRIMARY KEY (pattern, prefix, vkey)
    )""",
    """CREATE TABLE cosigned (
        origin      TEXT PRIMARY KEY,
        origin_hash TEXT NOT NULL UNIQUE,
        size        INTEGER NOT NULL CHECK (size >= 0),
        root        BLOB NOT NULL CHECK (length(root) = 32),
        note        TEXT NOT NULL,
        timestamp   INTEGER NOT NULL,
        updated_at  INTEGER NOT NULL
    )""",
    # One row per log-signed tree (origin, size, root): whether a request is evidence depends
    # on the tree, not on the proof sent with it, and anyone may resend a public checkpoint with
    # junk proofs, which must not crowd out the trees that matter.
    """CREATE TABLE evidence (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        origin      TEXT NOT NULL,
        size        INTEGER NOT NULL,
        root        BLOB NOT NULL,
        received_at INTEGER NOT NULL,
        reason      TEXT NOT NULL,
        old_size    INTEGER NOT NULL,
        held_size   INTEGER NOT NULL,
        held_root   BLOB,
        request     BLOB NOT NULL,
        UNIQUE (origin, size, root)
    )""",
    """CREATE TRIGGER cosigned_no_rollback BEFORE UPDATE ON cosigned
    WHEN NEW.size < OLD.size OR (NEW.size = OLD.size AND NEW.root <> OLD.root)
      OR NEW.timestamp < OLD.timestamp OR NEW.origin <> OLD.origin
    BEGIN SELECT RAISE(ABORT, 'witness state rollback'); END""",
    """CREATE TRIGGER cosigned_no_delete BEFORE DELETE ON cosigned
    BEGIN SELECT RAISE(ABORT, 'witness state cannot be deleted'); END""",
    # INSERT OR REPLACE deletes the old row without firing DELETE triggers: check inserts too.
    """CREATE TRIGGER cosigned_no_replace BEFORE INSERT ON cosigned
    WHEN EXISTS (SELECT 1 FROM cosigned WHERE origin = NEW.origin AND (size > NEW.size
                 OR (size = NEW.size AND root <> NEW.root) OR timestamp > NEW.timestamp))
    BEGIN SELECT RAISE(ABORT, 'witness state rollback'); END""",
)

_HELD = "origin, size, root, note, timestamp, updated_at"


class StateError(Exception):
    """The database is missing, foreign, or cannot be read or written. The message says what to do."""


class Refusal(Exception):
    """A submission the witness will not cosign, with its HTTP status."""

    status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Conflict(Refusal):
    """``old`` is not the size this witness holds (409); ``held_size`` is what the log should use."""

    status = 409

    def __init__(self, message: str, held_size: int) -> None:
        super().__init__(message)
        self.held_size = held_size


class Inconsistent(Refusal):
    """The checkpoint does not extend the one held (422). The request was kept as evidence."""

    status = 422


class ClockBehind(Refusal):
    """The clock reads earlier than the last cosignature for this log (503)."""

    status = 503

    def __init__(self, message: str, behind: int) -> None:
        super().__init__(message)
        self.behind = behind


@dataclass(frozen=True, slots=True)
class Held:
    """The latest checkpoint cosigned for one origin."""

    origin: str
    size: int
    root: bytes
    note: str  # checkpoint text, the verified log signatures and this witness's cosignature
    timestamp: int  # time inside that cosignature (POSIX seconds)
    updated_at: int


@dataclass(frozen=True, slots=True)
class Trust:
    """Log keys trusted for one origin, or for every origin starting with ``pattern``."""

    pattern: str
    prefix: bool
    vkeys: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Evidence:
    """A log-signed checkpoint refused because it conflicts with what was cosigned (first request kept)."""

    id: int
    origin: str
    size: int
    root: bytes
    received_at: int
    reason: str
    old_size: int
    held_size: int
    held_root: bytes | None
    request: bytes  # the whole add-checkpoint body


@dataclass(frozen=True, slots=True)
class Submission:
    """An add-checkpoint request whose format and log signatures were already checked."""

    origin: str
    old_size: int
    proof: tuple[bytes, ...]
    size: int
    root: bytes
    text: str  # the checkpoint text (what the log signed and the witness cosigns)
    log_signatures: str  # the verified log signature lines, each ending in a newline
    request: bytes


def origin_hash(origin: str) -> str:
    """Lowercase hex SHA-256 of the origin: the path of ``GET /<hash>/checkpoint``."""
    return hashlib.sha256(origin.encode()).hexdigest()


def _held(row: Sequence[Any]) -> Held:
    # The schema's CHECK constraints fix the column types.
    origin, size, root, note, timestamp, updated_at = row
    return Held(origin, size, bytes(root), note, timestamp, updated_at)


def _reusable(held: Held, sub: Submission, now: int) -> str:
    """The stored cosignature line if it covers exactly ``sub.text`` at ``now``, else ""."""
    if held.timestamp != now or not held.note.startswith(sub.text + "\n"):
        return ""
    return held.note[held.note.rstrip("\n").rfind("\n") + 1 :]


def _connect(path: Path, mode: str) -> sqlite3.Connection:
    # A URI with mode=rw never creates the file, so a lost database stays lost instead of empty.
    try:
        conn = sqlite3.connect(
            f"file:{quote(str(path))}?mode={mode}",
            uri=True,
            timeout=30.0,
            isolation_level=None,  # explicit BEGIN/COMMIT only
            check_same_thread=False,  # every use holds WitnessState._lock
        )
    except sqlite3.Error as exc:
        raise StateError(f"cannot open the witness database {path}: {exc}") from exc
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        # FULL: a commit is on disk before the witness answers 200.
        conn.execute("PRAGMA synchronous=FULL")
    except sqlite3.Error as exc:
        conn.close()
        raise StateError(f"{path} is not a usable SQLite database: {exc}") from exc
    return conn


class WitnessState:
    """The witness database. Thread-safe; every method blocks on SQLite."""

    def __init__(self, path: Path, conn: sqlite3.Connection) -> None:
        self.path = path
        self._conn = conn
        self._lock = threading.Lock()
        self._failed = ""  # why this connection must not be used again

    # --- lifecycle -------------------------------------------------------------------------

    @classmethod
    def create(cls, path: Path, name: str, vkey: str) -> WitnessState:
        """Create a new database bound to the witness ``name`` and ``vkey``. Refuses an existing file."""
        try:
            # Created empty (a valid SQLite file) and private; SQLite gives -wal and -shm its mode.
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError as exc:
            raise StateError(f"{path} already exists") from exc
        try:
            state = cls(path, _connect(path, "rw"))
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        try:
            with state._transaction() as db:
                for statement in _SCHEMA:
                    db.execute(statement)
                db.executemany(
                    "INSERT INTO meta (key, value) VALUES (?, ?)",
                    [("schema_version", str(SCHEMA_VERSION)), ("name", name), ("vkey", vkey)],
                )
        except BaseException:
            state.close()
            path.unlink(missing_ok=True)
            raise
        return state

    @classmethod
    def open(cls, path: Path) -> WitnessState:
        """Open a database ``create`` made. Raises StateError for a missing or foreign file."""
        if not path.is_file():
            raise StateError(
                f"{path} does not exist: run `trailkeeper witness init` first. If this witness "
                "ever cosigned, its state is lost: retire it (new --name and key), do not restart it"
            )
        state = cls(path, _connect(path, "rw"))
        try:
            version = state._meta("schema_version")
        except StateError:
            state.close()
            raise
        if version != str(SCHEMA_VERSION):
            state.close()
            raise StateError(f"{path} is not a trailkeeper witness database (schema {version!r})")
        return state

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction under the lock; commits on normal exit, rolls back otherwise."""
        with self._lock:
            self._usable()
            try:
                self._conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise StateError(f"cannot start a transaction on {self.path}: {exc}") from exc
            try:
                yield self._conn
                self._conn.execute("COMMIT")
            except BaseException as exc:
                self._rollback(exc)
                if isinstance(exc, sqlite3.Error):
                    raise StateError(f"the witness database {self.path} refused a write: {exc}") from exc
                raise

    def _rollback(self, cause: BaseException) -> None:
        # After a failed COMMIT SQLite may leave the transaction open. If it cannot be closed,
        # this connection would read its own uncommitted writes back as state (and serve a
        # cosignature that is not on disk): refuse every later use until a restart.
        try:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
        except sqlite3.Error as exc:
            self._failed = f"a transaction could not be rolled back ({exc}) after: {cause}"

    @property
    def usable(self) -> bool:
        """False once a failed write left this connection unusable (see ``_rollback``)."""
        return not self._failed

    def _usable(self) -> None:
        if self._failed:
            raise StateError(f"the witness database {self.path} failed earlier: {self._failed}; restart")

    def _read(self, sql: str, args: Sequence[object] = ()) -> list[Any]:
        with self._lock:
            self._usable()
            try:
                return list(self._conn.execute(sql, tuple(args)).fetchall())
            except sqlite3.Error as exc:
                raise StateError(f"cannot read the witness database {self.path}: {exc}") from exc

    def _meta(self, key: str) -> str | None:
        try:
            rows = self._read("SELECT value FROM meta WHERE key = ?", (key,))
        except StateError as exc:
            raise StateError(f"{self.path} is not a trailkeeper witness database ({exc})") from exc
        return str(rows[0][0]) if rows else None

    # --- identity and trust ----------------------------------------------------------------

    def identity(self) -> tuple[str, str]:
        """The witness name and vkey this database belongs to."""
        name, vkey = self._meta("name"), self._meta("vkey")
        if name is None or vkey is None:
            raise StateError(f"{self.path} records no witness identity; it was not made by `witness init`")
        return name, vkey

    def add_log(self, pattern: str, vkey: str, *, prefix: bool) -> bool:
        """Trust ``vkey`` (a type 0x01 note key) for ``pattern``. False if it already was."""
        parse_vkey(vkey)  # raises NoteError: only well-formed keys are ever stored
        with self._transaction() as db:
            cur = db.execute(
                "INSERT INTO trust (pattern, prefix, vkey, added_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT DO NOTHING",
                (pattern, int(prefix), vkey.strip(), int(time.time())),
            )
            return cur.rowcount == 1

    def trusted(self) -> list[Trust]:
        rows = self._read("SELECT pattern, prefix, vkey FROM trust ORDER BY pattern, prefix, added_at")
        grouped: dict[tuple[str, bool], list[str]] = {}
        for pattern, prefix, vkey in rows:
            grouped.setdefault((pattern, bool(prefix)), []).append(vkey)
        return [Trust(p, x, tuple(v)) for (p, x), v in grouped.items()]

    def keys_for(self, origin: str) -> list[Verifier]:
        """The log keys for ``origin``: those of its exact entry, else of the longest matching prefix.

        The most specific entry wins (keys are never merged across entries), so an exact
        entry can narrow what a broad prefix would accept. Empty: the origin is not configured.
        """
        rows = self._read(
            "SELECT pattern, prefix, vkey FROM trust WHERE (prefix = 0 AND pattern = ?)"
            " OR (prefix = 1 AND substr(?, 1, length(pattern)) = pattern)",
            (origin, origin),
        )
        if not rows:
            return []
        best = max(rows, key=lambda r: (not r[1], len(r[0])))
        chosen = [r[2] for r in rows if r[0] == best[0] and r[1] == best[1]]
        return [parse_vkey(v) for v in chosen]

    # --- held state and evidence -----------------------------------------------------------

    def held(self, origin: str) -> Held | None:
        rows = self._read(f"SELECT {_HELD} FROM cosigned WHERE origin = ?", (origin,))
        return _held(rows[0]) if rows else None

    def held_by_hash(self, hex_hash: str) -> Held | None:
        rows = self._read(f"SELECT {_HELD} FROM cosigned WHERE origin_hash = ?", (hex_hash,))
        return _held(rows[0]) if rows else None

    def all_held(self) -> list[Held]:
        return [_held(r) for r in self._read(f"SELECT {_HELD} FROM cosigned ORDER BY origin")]

    def evidence(self, origin: str | None = None) -> list[Evidence]:
        sql = (
            "SELECT id, origin, size, root, received_at, reason, old_size, held_size, held_root, request"
            " FROM evidence"
        )
        if origin is None:
            rows = self._read(sql + " ORDER BY id")
        else:
            rows = self._read(sql + " WHERE origin = ? ORDER BY id", (origin,))
        return [
            Evidence(i, o, size, bytes(root), at, reason, old, held_size,
                     None if held_root is None else bytes(held_root), bytes(request))
            for i, o, size, root, at, reason, old, held_size, held_root, request in rows
        ]

    def evidence_counts(self) -> dict[str, int]:
        rows = self._read("SELECT origin, COUNT(*) FROM evidence GROUP BY origin")
        return {o: n for o, n in rows}

    # --- the one rule --------------------------------------------------------------------

    def advance(self, sub: Submission, cosign: Callable[[int], str], clock: Callable[[], float]) -> str:
        """Cosign ``sub`` if it extends what is held, persist it, and return the cosignature line.

        ``cosign(timestamp)`` signs ``sub.text``; ``clock`` gives POSIX seconds. Raises
        Conflict (old size is not the held size; 0 when nothing is held), Inconsistent (a
        proof that does not verify, a proof with old size 0, or the held size with another
        root; kept as evidence), ClockBehind (never date a cosignature before the previous
        one), StateError (the database cannot be written; nothing was cosigned).
        Resubmitting the held checkpoint with the held size is cosigned again with a fresh
        time: size and root stay, the stored note and time move on (in the second of the
        stored cosignature, that cosignature is returned and nothing is written).
        """
        refusal: Refusal | None = None
        line = ""
        with self._transaction() as db:
            rows = db.execute(f"SELECT {_HELD} FROM cosigned WHERE origin = ?", (sub.origin,)).fetchall()
            held = _held(rows[0]) if rows else None
            refusal = self._check(db, sub, held)
            now = int(clock())
            if refusal is None and held is not None and now < held.timestamp:
                behind = held.timestamp - now
                refusal = ClockBehind(f"the witness clock is {behind} s behind its last cosignature", behind)
            if refusal is None and held is not None and (line := _reusable(held, sub, now)):
                # Anyone can replay a public checkpoint: within one second, answer with the line
                # already stored (its time is the current second) instead of writing again.
                return line
            if refusal is None:
                line = cosign(now)
                note = f"{sub.text}\n{sub.log_signatures}{line}"
                db.execute(
                    "INSERT INTO cosigned (origin, origin_hash, size, root, note, timestamp, updated_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (origin) DO UPDATE SET size = excluded.size,"
                    " root = excluded.root, note = excluded.note, timestamp = excluded.timestamp,"
                    " updated_at = excluded.updated_at",
                    (sub.origin, origin_hash(sub.origin), sub.size, sub.root, note, now, now),
                )
        # Raised after the commit, so evidence recorded by _check is kept.
        if refusal is not None:
            raise refusal
        return line

    def _check(self, db: sqlite3.Connection, sub: Submission, held: Held | None) -> Refusal | None:
        held_size = held.size if held is not None else 0
        if sub.old_size != held_size:
            if held is not None and sub.size == held.size and sub.root != held.root:
                # Two log-signed trees of one size with different roots prove a split view,
                # whatever old size came with the second one.
                self._keep(db, sub, held, "same size as the cosigned checkpoint, another root")
            return Conflict(f"old size {sub.old_size} is not the cosigned size {held_size}", held_size)
        old_root = held.root if held is not None else EMPTY_ROOT
        try:
            # Also covers: size 0 must carry the empty-tree root, old 0 takes no proof, an
            # equal size must repeat the root.
            verify_consistency(sub.old_size, sub.size, sub.proof, old_root, sub.root)
        except ProofError as exc:
            reason = f"not consistent with the cosigned checkpoint of size {held_size}: {exc}"
            self._keep(db, sub, held, reason)
            return Inconsistent(reason)
        return None

    @staticmethod
    def _keep(db: sqlite3.Connection, sub: Submission, held: Held | None, reason: str) -> None:
        (count,) = db.execute("SELECT COUNT(*) FROM evidence WHERE origin = ?", (sub.origin,)).fetchone()
        if count >= EVIDENCE_PER_ORIGIN:
            return
        db.execute(
            "INSERT INTO evidence (origin, size, root, received_at, reason, old_size, held_size, held_root,"
            " request) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (sub.origin, sub.size, sub.root, int(time.time()), reason, sub.old_size,
             held.size if held else 0, held.root if held else None, sub.request),
        )
