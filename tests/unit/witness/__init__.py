"""A toy transparency log for the witness tests: real leaves, roots, proofs and signed checkpoints."""

from __future__ import annotations

import base64
from collections.abc import Sequence

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from daemon.integrity import merkle
from daemon.integrity.checkpoint import Checkpoint, Signer, split_note


class ToyLog:
    """An append-only list of leaf hashes with a signing key, as trailkeeper's tree logs are."""

    def __init__(self, origin: str = "trailkeeper/default/tk1", key_name: str = "trailkeeper") -> None:
        self.origin = origin
        self.signer = Signer(key_name, Ed25519PrivateKey.generate())
        self.leaves: list[bytes] = []

    @property
    def vkey(self) -> str:
        return self.signer.verifier.vkey()

    def grow(self, n: int, tag: str = "") -> ToyLog:
        start = len(self.leaves)
        self.leaves += [merkle.leaf_hash(f"{self.origin}{tag} event {i}".encode()) for i in range(start, start + n)]
        return self

    def fork(self, at: int, tag: str = "fork") -> ToyLog:
        """A log with the same key and origin whose leaves diverge after ``at``."""
        other = ToyLog(self.origin)
        other.signer = self.signer
        other.leaves = self.leaves[:at]
        return other.grow(len(self.leaves) - at, tag)

    def root(self, size: int) -> bytes:
        return merkle.root_of(self.leaves[:size])

    def checkpoint(self, size: int) -> Checkpoint:
        return Checkpoint(self.origin, size, self.root(size))

    def note(self, size: int, signers: Sequence[Signer] | None = None) -> str:
        return self.checkpoint(size).sign(list(signers) if signers is not None else [self.signer])

    def proof(self, old: int, new: int) -> list[bytes]:
        return merkle.consistency_proof(lambda a, b: self.leaves[a:b], old, new)

    def body(self, old: int, size: int, *, proof: Sequence[bytes] | None = None, note: str | None = None) -> bytes:
        """An add-checkpoint body; by default with the right proof and this log's signature."""
        hashes = self.proof(old, size) if proof is None else proof
        lines = [f"old {old}"] + [base64.b64encode(h).decode() for h in hashes]
        return ("\n".join(lines) + "\n\n" + (note if note is not None else self.note(size))).encode()


def note_text(note: str) -> str:
    return split_note(note)[0]
