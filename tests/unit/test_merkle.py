"""RFC 9162 hashing and proofs, checked against published vectors.

Vectors: transparency-dev/merkle, proof/verify_test.go (commit
02194e9afb6c1d95b5381350007963aa70fff472), the RFC 6962/9162 reference tree of
eight leaves: the leaf data, the root of each prefix, and inclusion and
consistency proofs. Values copied, not code.
"""

from __future__ import annotations

import hashlib
import random

import pytest

from daemon.integrity import merkle

LEAVES = [
    bytes.fromhex(h)
    for h in (
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    )
]
ROOTS = [
    bytes.fromhex(h)
    for h in (
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    )
]


def _h(*hexes: str) -> list[bytes]:
    return [bytes.fromhex(x) for x in hexes]


# (leaf index 1-based as in the source, tree size, proof)
INCLUSION = [
    (
        1,
        8,
        _h(
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ),
    ),
    (
        6,
        8,
        _h(
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ),
    ),
    (3, 3, _h("fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125")),
    (
        2,
        5,
        _h(
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ),
    ),
]
CONSISTENCY = [
    (
        1,
        8,
        _h(
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ),
    ),
    (
        6,
        8,
        _h(
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ),
    ),
    (
        2,
        5,
        _h(
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ),
    ),
    (
        6,
        7,
        _h(
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ),
    ),
]
HASHES = [merkle.leaf_hash(x) for x in LEAVES]


def _get(hashes: list[bytes]) -> merkle.Leaves:
    return lambda a, b: hashes[a:b]


def test_empty_tree_hash_is_sha256_of_nothing() -> None:
    assert merkle.root_of([]) == hashlib.sha256(b"").digest()


@pytest.mark.parametrize("n", range(1, 9))
def test_roots_match_reference(n: int) -> None:
    assert merkle.root_of(HASHES[:n]) == ROOTS[n - 1]


@pytest.mark.parametrize(("leaf", "size", "proof"), INCLUSION)
def test_inclusion_proofs_match_and_verify(leaf: int, size: int, proof: list[bytes]) -> None:
    assert merkle.inclusion_proof(_get(HASHES), leaf - 1, size) == proof
    merkle.verify_inclusion(HASHES[leaf - 1], leaf - 1, size, proof, ROOTS[size - 1])


@pytest.mark.parametrize(("leaf", "size", "proof"), INCLUSION)
def test_corrupted_inclusion_proofs_fail(leaf: int, size: int, proof: list[bytes]) -> None:
    root, lh, i = ROOTS[size - 1], HASHES[leaf - 1], leaf - 1
    bad = [
        (lh, i + 1, size, proof, root),
        (lh, i, size * 2, proof, root),
        (merkle.leaf_hash(b"WrongLeaf"), i, size, proof, root),
        (lh, i, size, proof, merkle.EMPTY_ROOT),
        (lh, i, size, [*proof, root], root),
        (lh, i, size, [root, *proof], root),
        (lh, i, size, proof[:-1], root),
    ]
    for j in range(len(proof)):
        flipped = list(proof)
        flipped[j] = bytes([flipped[j][0] ^ 8]) + flipped[j][1:]
        bad.append((lh, i, size, flipped, root))
    for args in bad:
        with pytest.raises(merkle.ProofError):
            merkle.verify_inclusion(*args)


@pytest.mark.parametrize(("m", "n", "proof"), CONSISTENCY)
def test_consistency_proofs_match_and_verify(m: int, n: int, proof: list[bytes]) -> None:
    assert merkle.consistency_proof(_get(HASHES), m, n) == proof
    merkle.verify_consistency(m, n, proof, ROOTS[m - 1], ROOTS[n - 1])
    with pytest.raises(merkle.ProofError):
        merkle.verify_consistency(m, n, proof, ROOTS[n - 1], ROOTS[m - 1])
    with pytest.raises(merkle.ProofError):
        merkle.verify_consistency(m, n, proof[:-1], ROOTS[m - 1], ROOTS[n - 1])
    with pytest.raises(merkle.ProofError):
        merkle.verify_consistency(m, n, [], ROOTS[m - 1], ROOTS[n - 1])


def test_trivial_consistency_cases() -> None:
    merkle.verify_consistency(0, 5, [], merkle.EMPTY_ROOT, ROOTS[4])
    merkle.verify_consistency(3, 3, [], ROOTS[2], ROOTS[2])
    with pytest.raises(merkle.ProofError):
        merkle.verify_consistency(3, 3, [], ROOTS[2], ROOTS[3])
    with pytest.raises(merkle.ProofError):
        merkle.verify_consistency(4, 3, [], ROOTS[3], ROOTS[2])


def test_random_trees_round_trip() -> None:
    rng = random.Random(7)
    hashes = [merkle.leaf_hash(rng.randbytes(10)) for _ in range(300)]
    for _ in range(200):
        n = rng.randint(1, 300)
        i = rng.randrange(n)
        root = merkle.root_of(hashes[:n])
        merkle.verify_inclusion(hashes[i], i, n, merkle.inclusion_proof(_get(hashes), i, n), root)
        m = rng.randint(1, n)
        proof = merkle.consistency_proof(_get(hashes), m, n)
        merkle.verify_consistency(m, n, proof, merkle.root_of(hashes[:m]), root)


def test_compact_range_round_trips_through_json() -> None:
    cr = merkle.CompactRange()
    cr.extend(HASHES[:7])
    again = merkle.CompactRange.from_json(cr.to_json())
    again.append(HASHES[7])
    assert again.root() == ROOTS[7]
