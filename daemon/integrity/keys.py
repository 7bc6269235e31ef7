"""Ed25519 signing keys: generated on first run, rotated, listed, exported.

A keys directory holds ``<id>.key`` (PKCS#8 PEM private key, mode 0600) and
``<id>.vkey`` (the public verifier key string) per key, ``active`` naming
the key that signs, and ``history.json``: when each key was made and retired.
Rotation makes a new key active and deletes the old private key; its
``.vkey`` stays, so everything it signed still validates.

This directory is on the archive host and writable by the daemon: validation
trusts what ``trailkeeper keys export-public`` wrote from it (a trust file kept
elsewhere), never the directory itself unless asked to.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_pem_private_key,
)

from daemon.integrity.checkpoint import NoteError, Signer, Verifier, parse_vkey


class KeyError_(Exception):
    """A signing key is missing, unreadable or not Ed25519. The message says what to do."""


@dataclass(frozen=True, slots=True)
class KeyInfo:
    key_id: str
    name: str
    active: bool
    has_private: bool
    vkey: str


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _write_text(path: Path, text: str, mode: int = 0o644) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def load_private_pem(data: bytes, source: str) -> Ed25519PrivateKey:
    try:
        key = load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise KeyError_(f"{source}: not an unencrypted PEM private key ({exc})") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyError_(f"{source}: the key is not Ed25519 (generate one with `trailkeeper keys generate`)")
    return key


def read_key_file(path: Path) -> Ed25519PrivateKey:
    """The key in ``path``, opened read-only (a mounted Secret may be read-only).

    Raises KeyError_ starting with the path: unreadable, empty, or not an unencrypted PEM Ed25519
    private key (PKCS#8, as ``openssl genpkey -algorithm ed25519`` writes it)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeyError_(f"{path}: cannot read it: {exc.strerror or exc}") from exc
    if not data.strip():
        raise KeyError_(
            f"{path} is empty: it must hold an unencrypted PEM Ed25519 private key "
            "(make one with `openssl genpkey -algorithm ed25519`)"
        )
    return load_private_pem(data, str(path))


def signer_from_file(path: Path, name: str) -> Signer:
    """A signer from a PEM file (production ``integrity.key_file``). Raises KeyError_ naming
    ``integrity.key_file``."""
    try:
        return Signer(name, read_key_file(path))
    except KeyError_ as exc:
        raise KeyError_(f"integrity.key_file: {exc}") from exc


class KeyStore:
    """A directory of keys. Blocking file I/O: call from a thread inside the daemon."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory

    def history(self) -> dict[str, dict[str, float | None]]:
        """Key id -> {"created": t, "retired": t or None}; keys made before the history
        existed get the time of their ``.vkey`` file."""
        p = self.dir / "history.json"
        out: dict[str, dict[str, float | None]] = {}
        if p.exists():
            out = orjson.loads(p.read_bytes())
        for path in self.dir.glob("*.vkey") if self.dir.exists() else ():
            out.setdefault(path.stem, {"created": path.stat().st_mtime, "retired": None})
        return out

    def _record(self, kid: str, field: str, at: float) -> None:
        hist = self.history()
        hist.setdefault(kid, {"created": at, "retired": None})[field] = at
        _write_text(self.dir / "history.json", orjson.dumps(hist, option=orjson.OPT_INDENT_2).decode())

    def _active_id(self) -> str | None:
        p = self.dir / "active"
        return p.read_text().strip() if p.exists() else None

    def generate(self, name: str, *, activate: bool = True) -> Signer:
        """Create a new key; make it the active one unless ``activate`` is False."""
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        signer = Signer(name, Ed25519PrivateKey.generate())
        kid = signer.key_id.hex()
        pem = signer.private.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
        _write_private(self.dir / f"{kid}.key", pem)
        _write_text(self.dir / f"{kid}.vkey", signer.verifier.vkey() + "\n")
        self._record(kid, "created", time.time())
        if activate:
            _write_text(self.dir / "active", kid + "\n")
        return signer

    def active(self) -> Signer | None:
        kid = self._active_id()
        if kid is None:
            return None
        vkey = self._verifier(kid)
        path = self.dir / f"{kid}.key"
        if not path.exists():
            raise KeyError_(
                f"{self.dir}: the active key {kid} has no private key file {path.name} (a key from "
                "integrity.key_file keeps only its public half here): set integrity.key_file again, "
                "or start a new key with `trailkeeper keys generate --force`"
            )
        return Signer(vkey.name, load_private_pem(path.read_bytes(), str(path)))

    def record_external(self, signer: Signer) -> str | None:
        """Keep the public half of a key held elsewhere (``integrity.key_file``) as the active key.

        Writes ``<id>.vkey``, ``active`` and the history, never a private key; a different key
        active before is recorded as retired now, so validation keeps trusting what it signed
        until then. Idempotent: the same key again changes nothing. Returns the retired key's id.
        Raises OSError when the directory cannot be written.
        """
        kid = signer.key_id.hex()
        old = self._active_id()
        if old == kid and (self.dir / f"{kid}.vkey").exists():
            return None
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        now = time.time()
        _write_text(self.dir / f"{kid}.vkey", signer.verifier.vkey() + "\n")
        hist = self.history()
        # A key that signs again (a Secret rolled back) is valid again from now on.
        hist[kid] = {"created": hist.get(kid, {}).get("created") or now, "retired": None}
        if old is not None and old != kid:
            hist.setdefault(old, {"created": now, "retired": None})["retired"] = now
        _write_text(self.dir / "history.json", orjson.dumps(hist, option=orjson.OPT_INDENT_2).decode())
        _write_text(self.dir / "active", kid + "\n")
        return old if old != kid else None

    def ensure(self, name: str) -> Signer:
        """The active key, generated on first run (embedded default)."""
        return self.active() or self.generate(name)

    def rotate(self) -> tuple[Signer, str | None]:
        """Make a new key (same name) active; retire the old private key. Returns (new, old id)."""
        old = self.active()
        if old is None:
            raise KeyError_(f"{self.dir}: no active key to rotate; run `trailkeeper keys generate`")
        new = self.generate(old.name)
        old_id = old.key_id.hex()
        (self.dir / f"{old_id}.key").unlink(missing_ok=True)
        self._record(old_id, "retired", time.time())
        return new, old_id

    def _verifier(self, kid: str) -> Verifier:
        path = self.dir / f"{kid}.vkey"
        try:
            return parse_vkey(path.read_text())
        except OSError as exc:
            raise KeyError_(f"{path}: cannot read the public key: {exc.strerror}") from exc
        except NoteError as exc:
            raise KeyError_(f"{path}: {exc}") from exc

    def all_keys(self) -> list[KeyInfo]:
        if not self.dir.exists():
            return []
        active = self._active_id()
        out = []
        for path in sorted(self.dir.glob("*.vkey")):
            kid = path.stem
            v = self._verifier(kid)
            out.append(KeyInfo(kid, v.name, kid == active, (self.dir / f"{kid}.key").exists(), v.vkey()))
        return out

    def verifiers(self) -> list[Verifier]:
        """Every public key, retired ones included."""
        return [parse_vkey(k.vkey) for k in self.all_keys()]


def load_verifiers(sources: list[str]) -> list[Verifier]:
    """Verifier keys from vkey strings, files holding vkey lines, or key directories."""
    out: list[Verifier] = []
    for src in sources:
        p = Path(src)
        if p.is_dir():
            out += KeyStore(p).verifiers()
        elif p.exists():
            for line in p.read_text().splitlines():
                if line.strip() and not line.startswith("#"):
                    try:
                        out.append(parse_vkey(line))
                    except NoteError as exc:
                        raise KeyError_(f"{p}: {exc}") from exc
        else:
            try:
                out.append(parse_vkey(src))
            except NoteError as exc:
                raise KeyError_(f"{src!r} is neither a file, a key directory nor a key: {exc}") from exc
    return out
