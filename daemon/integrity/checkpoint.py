"""C2SP signed notes and tlog-checkpoints, Ed25519 only.

A note is UTF-8 text ending in a newline, a blank line, then one line per
signature: ``— <key name> <base64(key id (4 bytes) || signature)>``. The key id
is the first four bytes of SHA-256(name || 0x0A || 0x01 || public key), as in
C2SP signed-note and Go's golang.org/x/mod/sumdb/note, so any verifier of
that ecosystem checks our checkpoints. A checkpoint's text is the origin line,
the tree size in decimal, the base64 root hash, then optional extension lines.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

ALG_ED25519 = 0x01
SIG_PREFIX = "\u2014 "  # em dash and space


class NoteError(ValueError):
    """A note or checkpoint is malformed."""


class UnknownKey(NoteError):
    """No signature on the note is by a key we know."""


class BadSignature(NoteError):
    """A signature by a known key does not verify."""


def raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def key_id(name: str, public: bytes) -> bytes:
    """C2SP key id: SHA-256(name || "\\n" || 0x01 || public key)[:4]."""
    return hashlib.sha256(name.encode() + b"\n" + bytes([ALG_ED25519]) + public).digest()[:4]


def _check_name(name: str) -> None:
    if not name or any(c.isspace() for c in name) or "+" in name:
        raise NoteError(f"key name {name!r} must be non-empty, without spaces or '+'")


@dataclass(frozen=True, slots=True)
class Verifier:
    name: str
    public: bytes  # raw 32-byte Ed25519 key

    @property
    def key_id(self) -> bytes:
        return key_id(self.name, self.public)

    def vkey(self) -> str:
        """The verifier key string: ``name+hex(key id)+base64(0x01 || key)``."""
        encoded = base64.b64encode(bytes([ALG_ED25519]) + self.public).decode()
        return f"{self.name}+{self.key_id.hex()}+{encoded}"

    def verify(self, message: bytes, signature: bytes) -> bool:
        try:
            Ed25519PublicKey.from_public_bytes(self.public).verify(signature, message)
        except InvalidSignature:
            return False
        return True


def parse_key_string(text: str, alg: int, what: str) -> tuple[str, bytes, str]:
    """Split ``name+hex(key id)+base64(alg || key)`` into (name, raw key, hex id).

    Checks the name, the encoding and the algorithm byte; the caller checks the id, which
    depends on the algorithm. Raises NoteError naming ``what`` and the problem.
    """
    parts = text.strip().split("+", 2)
    if len(parts) != 3:
        raise NoteError(f"not a {what} (name+keyid+key): {text.strip()[:60]!r}")
    name, hex_id, b64 = parts
    _check_name(name)
    try:
        blob = base64.b64decode(b64, validate=True)
    except binascii.Error as exc:
        raise NoteError(f"{what} {name!r}: key is not base64") from exc
    if len(blob) != 33 or blob[0] != alg:
        raise NoteError(f"{what} {name!r}: not a type 0x{alg:02x} Ed25519 key")
    return name, blob[1:], hex_id


def parse_vkey(text: str) -> Verifier:
    """Parse a verifier key string. Raises NoteError."""
    name, public, hex_id = parse_key_string(text, ALG_ED25519, "verifier key")
    v = Verifier(name, public)
    if hex_id != v.key_id.hex():
        raise NoteError(f"verifier key {name!r}: key id {hex_id} does not match the key")
    return v


@dataclass(frozen=True, slots=True)
class Signer:
    name: str
    private: Ed25519PrivateKey

    @property
    def verifier(self) -> Verifier:
        return Verifier(self.name, raw_public(self.private.public_key()))

    @property
    def key_id(self) -> bytes:
        return self.verifier.key_id

    def sign(self, message: bytes) -> bytes:
        return self.private.sign(message)


def sign_note(text: str, signers: Sequence[Signer]) -> str:
    """Sign ``text`` (which must end in a newline) and return the full note."""
    if not text.endswith("\n") or "\n\n" in text:
        raise NoteError("note text must end in a newline and contain no blank line")
    lines = []
    for s in signers:
        _check_name(s.name)
        blob = s.key_id + s.sign(text.encode())
        lines.append(f"{SIG_PREFIX}{s.name} {base64.b64encode(blob).decode()}\n")
    return text + "\n" + "".join(lines)


@dataclass(frozen=True, slots=True)
class Signature:
    name: str
    key_id: bytes
    signature: bytes


def split_note(note: str) -> tuple[str, list[Signature]]:
    """Separate a note's text from its signature lines. Raises NoteError."""
    cut = note.rfind("\n\n")
    if cut < 0:
        raise NoteError("a signed note needs a blank line before its signatures")
    text, sig_block = note[: cut + 1], note[cut + 2 :]
    if not sig_block.endswith("\n"):
        raise NoteError("a signed note ends with a newline")
    sigs = []
    for line in sig_block[:-1].split("\n"):
        if not line.startswith(SIG_PREFIX):
            raise NoteError(f"malformed signature line {line[:60]!r}")
        name, _, b64 = line[len(SIG_PREFIX) :].partition(" ")
        try:
            blob = base64.b64decode(b64, validate=True)
        except binascii.Error as exc:
            raise NoteError(f"signature by {name!r} is not base64") from exc
        if len(blob) < 5:
            raise NoteError(f"signature by {name!r} is too short")
        sigs.append(Signature(name, blob[:4], blob[4:]))
    return text, sigs


def open_note(note: str, verifiers: Iterable[Verifier]) -> tuple[str, list[Verifier]]:
    """Verify a note; return its text and the keys whose signatures verified.

    Raises BadSignature when a known key's signature fails (a forgery is never
    outweighed by another good signature), UnknownKey when no signature is by a
    known key, NoteError when malformed.
    """
    text, sigs = split_note(note)
    known = {(v.name, v.key_id): v for v in verifiers}
    good: list[Verifier] = []
    for sig in sigs:
        v = known.get((sig.name, sig.key_id))
        if v is None:
            continue
        if not v.verify(text.encode(), sig.signature):
            raise BadSignature(f"signature by {sig.name} ({sig.key_id.hex()}) does not verify")
        good.append(v)
    if not good:
        ids = ", ".join(f"{s.name} {s.key_id.hex()}" for s in sigs) or "none"
        raise UnknownKey(f"no signature by a known key (signed by: {ids})")
    return text, good


@dataclass(frozen=True, slots=True)
class Checkpoint:
    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = field(default=())

    def text(self) -> str:
        lines = [self.origin, str(self.size), base64.b64encode(self.root).decode(), *self.extensions]
        return "\n".join(lines) + "\n"

    def sign(self, signers: Sequence[Signer]) -> str:
        return sign_note(self.text(), signers)

    @classmethod
    def parse(cls, text: str) -> Checkpoint:
        lines = text.split("\n")
        if len(lines) < 4 or lines[-1] != "":
            raise NoteError("a checkpoint has an origin, a size and a root hash line")
        origin, size, root = lines[0], lines[1], lines[2]
        if not origin or not size.isdigit() or (size != "0" and size.startswith("0")):
            raise NoteError(f"bad checkpoint origin or size line {size!r}")
        try:
            raw = base64.b64decode(root, validate=True)
        except binascii.Error as exc:
            raise NoteError("checkpoint root is not base64") from exc
        if len(raw) != 32:
            raise NoteError("checkpoint root is not a SHA-256 hash")
        return cls(origin, int(size), raw, tuple(lines[3:-1]))


def open_checkpoint(note: str, verifiers: Iterable[Verifier]) -> Checkpoint:
    """Verify a signed checkpoint and parse it. Raises NoteError (or its subclasses)."""
    text, _ = open_note(note, verifiers)
    return Checkpoint.parse(text)
