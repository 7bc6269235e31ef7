"""RFC 9162 (Certificate Transparency v2) Merkle tree hashing and proofs.

Leaf hash: SHA-256(0x00 || data); node hash: SHA-256(0x01 || left || right);
the hash of the empty tree is SHA-256(""). Proofs follow RFC 9162 sections
2.1.3 (inclusion) and 2.1.4 (consistency); the verifiers follow the
algorithms of sections 2.1.3.2 and 2.1.4.2 step by step.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()


class ProofError(ValueError):
    """A proof does not verify, or the request for one is out of range."""


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def leaf_hashes(records: Sequence[bytes]) -> list[bytes]:
    """The leaf hash of each record, in order."""
    sha = hashlib.sha256
    return [sha(b"\x00" + r).digest() for r in records]


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two strictly smaller than ``n`` (n > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


class CompactRange:
    """The right frontier of a tree: the roots of its perfect subtrees, largest first.

    Holds O(log n) hashes, yet appends leaves and yields the root of all leaves so far,
    so a log's root never needs the leaves again.
    """

    __slots__ = ("hashes", "size")

    def __init__(self, size: int = 0, hashes: Sequence[bytes] = ()) -> None:
        if len(hashes) != bin(size).count("1"):
            raise ValueError(f"a frontier for {size} leaves has {bin(size).count('1')} hashes")
        self.size = size
        self.hashes = list(hashes)

    def append(self, leaf: bytes) -> None:
        self.hashes.append(leaf)
        size = self.size
        while size & 1:
            right = self.hashes.pop()
            left = self.hashes.pop()
            self.hashes.append(node_hash(left, right))
            size >>= 1
        self.size += 1

    def extend(self, leaves: Sequence[bytes]) -> None:
        # ``append`` inlined: this runs once per archived event.
        hashes = self.hashes
        push, pop = hashes.append, hashes.pop
        sha = hashlib.sha256
        size = self.size
        for leaf in leaves:
            push(leaf)
            n = size
            while n & 1:
                right = pop()
                push(sha(b"\x01" + pop() + right).digest())
                n >>= 1
            size += 1
        self.size = size

    def root(self) -> bytes:
        if not self.hashes:
            return EMPTY_ROOT
        r = self.hashes[-1]
        for h in reversed(self.hashes[:-1]):
            r = node_hash(h, r)
        return r

    def copy(self) -> CompactRange:
        return CompactRange(self.size, self.hashes)

    def to_json(self) -> dict[str, object]:
        return {"size": self.size, "hashes": [h.hex() for h in self.hashes]}

    @classmethod
    def from_json(cls, doc: dict[str, object]) -> CompactRange:
        hashes = doc.get("hashes", [])
        size = doc.get("size", 0)
        if not isinstance(hashes, list) or not isinstance(size, int):
            raise ValueError("a frontier is {size: int, hashes: [hex]}")
        return cls(size, [bytes.fromhex(str(h)) for h in hashes])


def root_of(leaves: Sequence[bytes]) -> bytes:
    """MTH over leaf hashes (not data)."""
    cr = CompactRange()
    cr.extend(leaves)
    return cr.root()


# A leaf source: returns the leaf hashes in [start, end).
Leaves = Callable[[int, int], Sequence[bytes]]


def _mth(get: Leaves, start: int, end: int) -> bytes:
    return root_of(get(start, end))


def inclusion_proof(get: Leaves, index: int, size: int) -> list[bytes]:
    """PATH(m, D[n]) of RFC 9162 2.1.3.1, over leaf hashes. Raises ProofError when out of range."""
    if not 0 <= index < size:
        raise ProofError(f"leaf {index} is not in a tree of {size} leaves")
    path: list[bytes] = []
    lo, hi, m = 0, size, index
    # Iterative form of the recursion: siblings are collected leaf-side first.
    while hi - lo > 1:
        k = _split(hi - lo)
        if m < k:
            path.append(_mth(get, lo + k, hi))
            hi = lo + k
        else:
            path.append(_mth(get, lo, lo + k))
            lo, m = lo + k, m - k
    path.reverse()
    return path


def consistency_proof(get: Leaves, old_size: int, new_size: int) -> list[bytes]:
    """PROOF(m, D[n]) of RFC 9162 2.1.4.1. Empty when the sizes are equal or old_size is 0."""
    if not 0 <= old_size <= new_size:
        raise ProofError(f"no consistency proof from {old_size} to {new_size} leaves")
    if old_size in (0, new_size):
        return []
    out: list[bytes] = []
    lo, hi, m, complete = 0, new_size, old_size, True
    while True:
        n = hi - lo
        if m == n:
            if not complete:
                out.append(_mth(get, lo, hi))
            break
        k = _split(n)
        if m <= k:
            out.append(_mth(get, lo + k, hi))
            hi = lo + k
        else:
            out.append(_mth(get, lo, lo + k))
            lo, m, complete = lo + k, m - k, False
    out.reverse()
    return out


def root_from_inclusion(leaf: bytes, index: int, size: int, proof: Sequence[bytes]) -> bytes:
    """RFC 9162 2.1.3.2: the root an inclusion proof leads to. Raises ProofError if malformed."""
    if not 0 <= index < size:
        raise ProofError(f"leaf index {index} is outside a tree of {size} leaves")
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if len(p) != HASH_SIZE:
            raise ProofError("a proof hash is not 32 bytes")
        if sn == 0:
            raise ProofError("the inclusion proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("the inclusion proof is shorter than the tree is deep")
    return r


def verify_inclusion(leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes) -> None:
    """Raise ProofError unless ``leaf`` is leaf ``index`` of the tree of ``size`` with ``root``."""
    if root_from_inclusion(leaf, index, size, proof) != root:
        raise ProofError("the inclusion proof leads to a different root")


def verify_consistency(
    old_size: int, new_size: int, proof: Sequence[bytes], old_root: bytes, new_root: bytes
) -> None:
    """RFC 9162 2.1.4.2. Raise ProofError unless the new tree extends the old one."""
    if old_size > new_size:
        raise ProofError(f"the tree shrank from {old_size} to {new_size} leaves")
    if old_size == new_size:
        if proof:
            raise ProofError("a proof between equal sizes must be empty")
        if old_root != new_root:
            raise ProofError("equal sizes but different roots")
        return
    if old_size == 0:
        if proof:
            raise ProofError("a proof from the empty tree must be empty")
        return
    if not proof:
        raise ProofError("empty consistency proof")
    if any(len(p) != HASH_SIZE for p in proof):
        raise ProofError("a proof hash is not 32 bytes")
    path = list(proof)
    if old_size & (old_size - 1) == 0:
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError("the consistency proof is too long")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("the consistency proof is too short")
    if fr != old_root:
        raise ProofError("the consistency proof does not lead to the old root")
    if sr != new_root:
        raise ProofError("the consistency proof does not lead to the new root")
