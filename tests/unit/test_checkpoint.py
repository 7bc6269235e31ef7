"""C2SP signed notes against the reference vector of golang.org/x/mod/sumdb/note (note_test.go):
the PeterNeumann key pair and its published signature. Ed25519 is deterministic, so our
signer must reproduce the published note byte for byte."""

from __future__ import annotations

import base64
import os
import stat

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from daemon.integrity.checkpoint import (
    BadSignature,
    Checkpoint,
    Signer,
    UnknownKey,
    open_checkpoint,
    open_note,
    parse_vkey,
    sign_note,
)
from daemon.integrity.keys import KeyStore

VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
SKEY_SEED = base64.b64decode("AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz")[1:]
TEXT = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n"
NOTE = (
    TEXT
    + "\n\u2014 PeterNeumann "
    + "x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
)


def test_reference_note_byte_for_byte() -> None:
    signer = Signer("PeterNeumann", Ed25519PrivateKey.from_private_bytes(SKEY_SEED))
    assert signer.verifier.vkey() == VKEY
    assert sign_note(TEXT, [signer]) == NOTE
    text, good = open_note(NOTE, [parse_vkey(VKEY)])
    assert text == TEXT and good[0].name == "PeterNeumann"


def test_forged_and_unknown_signatures() -> None:
    with pytest.raises(BadSignature):
        open_note(NOTE.replace("problem,", "problem;"), [parse_vkey(VKEY)])
    s = Signer("PeterNeumann", Ed25519PrivateKey.generate())
    with pytest.raises(UnknownKey):
        open_note(NOTE, [s.verifier])


def test_checkpoint_round_trip() -> None:
    s = Signer("log.example", Ed25519PrivateKey.generate())
    note = Checkpoint("log.example/t/w", 12, bytes(range(32))).sign([s])
    cp = open_checkpoint(note, [s.verifier])
    assert (cp.origin, cp.size, cp.root) == ("log.example/t/w", 12, bytes(range(32)))


def test_keystore_generate_rotate_keeps_public_keys(tmp_path: os.PathLike[str]) -> None:
    from pathlib import Path

    ks = KeyStore(Path(tmp_path) / "keys")
    first = ks.ensure("trailkeeper")
    key_file = ks.dir / f"{first.key_id.hex()}.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert ks.ensure("trailkeeper").key_id == first.key_id
    new, old = ks.rotate()
    assert old == first.key_id.hex() and new.key_id != first.key_id
    assert not key_file.exists()
    ids = {v.key_id for v in ks.verifiers()}
    assert ids == {first.key_id, new.key_id}
    assert ks.active() is not None and ks.active().key_id == new.key_id  # type: ignore[union-attr]
