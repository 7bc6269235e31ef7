"""C2SP tlog-cosignature (``cosignature/v1``, Ed25519): what a witness signs about a checkpoint.

A witness signs, with its own key, the lines::

    cosignature/v1
    time <POSIX seconds>
    <the checkpoint text: origin, size, root hash, extension lines>

and publishes the signature as an ordinary signed-note line, ``— <name>
base64(key id || 8-byte big-endian time || signature)``, where the key id is
SHA-256(name || 0x0A || 0x04 || public key)[:4]. A cosigned checkpoint is the
log's signed note with these lines appended, so one file carries both.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from daemon.integrity.checkpoint import SIG_PREFIX, NoteError, parse_key_string, raw_public, split_note

ALG_COSIGNATURE = 0x04
LABEL = "cosignature/v1"


def cosigner_key_id(name: str, public: bytes) -> bytes:
    return hashlib.sha256(name.encode() + b"\n" + bytes([ALG_COSIGNATURE]) + public).digest()[:4]


def message(checkpoint_text: str, timestamp: int) -> bytes:
    """The bytes a cosignature covers. ``checkpoint_text`` is the note text (ends in a newline)."""
    return f"{LABEL}\ntime {timestamp}\n{checkpoint_text}".encode()


@dataclass(frozen=True, slots=True)
class CosignerKey:
    """A witness's public key: ``name+hex(key id)+base64(0x04 || key)``."""

    name: str
    public: bytes

    @property
    def key_id(self) -> bytes:
        return cosigner_key_id(self.name, self.public)

    def vkey(self) -> str:
        encoded = base64.b64encode(bytes([ALG_COSIGNATURE]) + self.public).decode()
        return f"{self.name}+{self.key_id.hex()}+{encoded}"

    def verify(self, checkpoint_text: str, timestamp: int, signature: bytes) -> bool:
        try:
            Ed25519PublicKey.from_public_bytes(self.public).verify(
                signature, message(checkpoint_text, timestamp)
            )
        except InvalidSignature:
            return False
        return True


def parse_cosigner_vkey(text: str) -> CosignerKey:
    """Parse a witness vkey (type 0x04). Raises NoteError naming what is wrong."""
    name, public, hex_id = parse_key_string(text, ALG_COSIGNATURE, "witness key")
    key = CosignerKey(name, public)
    if hex_id != key.key_id.hex():
        raise NoteError(f"witness key {name!r}: key id {hex_id} does not match the key")
    return key


@dataclass(frozen=True, slots=True)
class Cosigner:
    """A witness's private key."""

    name: str
    private: Ed25519PrivateKey

    @property
    def key(self) -> CosignerKey:
        return CosignerKey(self.name, raw_public(self.private.public_key()))

    def cosign(self, checkpoint_text: str, timestamp: int) -> str:
        """One signature line (with its newline) over ``checkpoint_text`` at ``timestamp``."""
        sig = self.private.sign(message(checkpoint_text, timestamp))
        blob = self.key.key_id + timestamp.to_bytes(8, "big") + sig
        return f"{SIG_PREFIX}{self.name} {base64.b64encode(blob).decode()}\n"


@dataclass(frozen=True, slots=True)
class Cosignature:
    witness: CosignerKey
    timestamp: int


def cosignatures(note: str, keys: Iterable[CosignerKey]) -> list[Cosignature]:
    """The valid cosignatures on ``note`` by ``keys``, one per key at most.

    Lines by other keys are ignored. A line by a known key that does not verify
    raises NoteError: a forged cosignature is evidence, never merely uncounted.
    """
    text, sigs = split_note(note)
    known = {(k.name, k.key_id): k for k in keys}
    out: dict[bytes, Cosignature] = {}
    for sig in sigs:
        k = known.get((sig.name, sig.key_id))
        if k is None:
            continue
        if len(sig.signature) != 72:
            raise NoteError(f"cosignature by {sig.name} is not a cosignature/v1 signature")
        ts = int.from_bytes(sig.signature[:8], "big")
        if not k.verify(text, ts, sig.signature[8:]):
            raise NoteError(f"cosignature by {sig.name} ({sig.key_id.hex()}) does not verify")
        prev = out.get(k.key_id)
        if prev is None or ts > prev.timestamp:
            out[k.key_id] = Cosignature(k, ts)
    return list(out.values())


def merge_signatures(note: str, lines: Iterable[str]) -> str:
    """``note`` with extra signature lines appended, skipping exact duplicates."""
    have = set(note.splitlines(keepends=True))
    extra = [ln if ln.endswith("\n") else ln + "\n" for ln in lines if ln.strip()]
    return note + "".join(ln for ln in extra if ln not in have)
