"""``trailkeeper witness``: a C2SP tlog-witness (v1) to run on a host other than the log's.

For each log origin it trusts, the witness keeps the latest checkpoint it
cosigned. It cosigns a new checkpoint only when the checkpoint is signed by a
key configured for that origin and a consistency proof shows it extends the
checkpoint held, and it persists the new state before answering. A witness
therefore never cosigns a smaller tree after a larger one, nor two trees of
one log that are inconsistent with each other, across restarts too, as long
as its database survives.

On-disk layout of a witness directory (created by ``trailkeeper witness init``,
mode 0700):

- ``witness.key``: the Ed25519 private key, PKCS#8 PEM, mode 0600.
- ``witness.db`` (with ``-wal`` and ``-shm`` while in use): SQLite holding the
  witness name and vkey, the trusted log keys, the latest cosigned checkpoint
  per origin and the refused requests kept as evidence.

The database *is* the witness's memory: never restore an older copy over a
newer one and never run two witnesses from one directory's key. A witness
whose database is lost must be retired (new name and key), not restarted.
"""

from __future__ import annotations

from pathlib import Path

KEY_FILE = "witness.key"
DB_FILE = "witness.db"


def key_path(directory: Path) -> Path:
    return directory / KEY_FILE


def db_path(directory: Path) -> Path:
    return directory / DB_FILE
