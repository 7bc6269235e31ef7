"""Pinned trust: the public keys an auditor accepts, with when each key may have signed.

``trailkeeper keys export-public`` writes a trust file from the daemon's keys
directory; the auditor keeps it away from the archive host and gives it to
``validate --trust`` (or ``integrity.trust_file``). Format (JSON)::

    {"format": "trailkeeper-trust/1", "exported_at": "...",
     "keys": [{"key_id": "...", "name": "...", "vkey": "name+id+key",
               "valid_from": "ISO time", "valid_until": "ISO time or null",
               "status": "active" | "retired"}],
     "rotations": [{"at": "...", "retired": "<key id>", "active": "<key id>"}],
     "witnesses": [{"url": "...", "vkey": "..."}]}

A key signs from its ``valid_from`` until its ``valid_until`` (its rotation)
plus one digest interval: the daemon picks a rotated key up at its next digest.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from daemon.integrity.checkpoint import NoteError, Verifier, parse_vkey
from daemon.integrity.keys import KeyError_, KeyStore

FORMAT = "trailkeeper-trust/1"
# Clocks of the daemon and of the machine that exported the file may disagree a little.
CLOCK_SKEW = 300.0


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _ts(text: object, where: str) -> float | None:
    if text is None:
        return None
    try:
        return dt.datetime.fromisoformat(str(text).replace("Z", "+00:00")).timestamp()
    except ValueError as exc:
        raise KeyError_(f"{where}: {text!r} is not an ISO time") from exc


@dataclass(frozen=True, slots=True)
class TrustedKey:
    verifier: Verifier
    valid_from: float | None = None
    valid_until: float | None = None

    def covers(self, when: float, interval: float) -> bool:
        """Whether a digest ending at ``when`` may carry this key's signature."""
        if self.valid_from is not None and when < self.valid_from - CLOCK_SKEW:
            return False
        return self.valid_until is None or when <= self.valid_until + interval + CLOCK_SKEW

    def window(self) -> str:
        return f"{_iso(self.valid_from) or 'the beginning'} to {_iso(self.valid_until) or 'now'}"


@dataclass(slots=True)
class Trust:
    """What validation trusts, and where that trust came from (shown in every report)."""

    keys: list[TrustedKey]
    source: str
    pinned: bool = True
    witnesses: list[dict[str, str]] = field(default_factory=list)

    @property
    def verifiers(self) -> list[Verifier]:
        return [k.verifier for k in self.keys]

    def key_for(self, v: Verifier) -> TrustedKey | None:
        return next((k for k in self.keys if k.verifier == v), None)


def export_trust(ks: KeyStore, witnesses: list[dict[str, str]] | None = None) -> dict[str, Any]:
    """The trust document for every key in ``ks``, retired ones included."""
    hist = ks.history()
    keys = []
    rotations = []
    for k in ks.all_keys():
        h = hist.get(k.key_id, {})
        keys.append(
            {
                "key_id": k.key_id,
                "name": k.name,
                "vkey": k.vkey,
                "valid_from": _iso(h.get("created")),
                "valid_until": _iso(h.get("retired")),
                "status": "active" if k.active else ("retired" if h.get("retired") else "inactive"),
            }
        )
    ordered = sorted(keys, key=lambda k: k["valid_from"] or "")
    for old in ordered:
        if old["valid_until"] is None:
            continue
        successor = next(
            (k for k in ordered if (k["valid_from"] or "") >= old["valid_until"] and k is not old), None
        )
        rotations.append(
            {"at": old["valid_until"], "retired": old["key_id"], "active": successor and successor["key_id"]}
        )
    return {
        "format": FORMAT,
        "exported_at": _iso(dt.datetime.now(dt.UTC).timestamp()),
        "keys": ordered,
        "rotations": rotations,
        "witnesses": witnesses or [],
    }


def parse_trust(data: bytes, source: str) -> Trust:
    """Parse a trust file. Raises KeyError_ naming the file and the entry that is wrong."""
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise KeyError_(f"{source}: not a trust file (JSON expected): {exc}") from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise KeyError_(f"{source}: not a {FORMAT} file (write one with `trailkeeper keys export-public`)")
    keys = []
    for i, k in enumerate(doc.get("keys") or []):
        where = f"{source}: keys[{i}]"
        try:
            v = parse_vkey(str(k["vkey"]))
        except (KeyError, TypeError, NoteError) as exc:
            raise KeyError_(f"{where}: {exc}") from exc
        keys.append(TrustedKey(v, _ts(k.get("valid_from"), where), _ts(k.get("valid_until"), where)))
    if not keys:
        raise KeyError_(f"{source}: the trust file lists no keys")
    witnesses = [w for w in doc.get("witnesses") or [] if isinstance(w, dict)]
    return Trust(keys, source, True, witnesses)


def load_trust_file(path: Path) -> Trust:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeyError_(f"trust file {path}: cannot read it: {exc.strerror}") from exc
    return parse_trust(data, f"trust file {path}")


def is_trust_file(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(64).lstrip().startswith(b"{")
    except OSError:
        return False
