"""The daemon's side of witnessing (daemon/integrity/witnessing.py) against a real witness on
loopback: cosignatures land beside the checkpoint, a witness that knows another size is answered
with a proof from that size, and a witness ahead of the log, a fork, or a dead witness are
counted and reported, never fatal to the chain."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from daemon.integrity import merkle
from daemon.integrity.checkpoint import Checkpoint, Signer
from daemon.integrity.config import WitnessConfig
from daemon.integrity.cosignature import Cosigner, cosignatures
from daemon.integrity.witnessing import CheckpointPublisher, add_checkpoint_body, checkpoint_key
from daemon.stores.local import LocalStore, LocalStoreConfig
from daemon.witness.server import Witness, WitnessServer
from daemon.witness.state import WitnessState

ORIGIN = "trailkeeper/default/w1"


class Leaves:
    """The slice of TreeLog the publisher uses: leaf hashes by range."""

    def __init__(self, n: int, salt: bytes = b"") -> None:
        self.leaves = [merkle.leaf_hash(salt + str(i).encode()) for i in range(n)]

    def leaves_sync(self, start: int, end: int) -> list[bytes]:
        return self.leaves[start:end]

    def note(self, signer: Signer, size: int) -> str:
        return Checkpoint(ORIGIN, size, merkle.root_of(self.leaves[:size])).sign([signer])


@pytest.fixture
def signer() -> Signer:
    return Signer("trailkeeper", Ed25519PrivateKey.generate())


@pytest.fixture
async def witness(tmp_path: Path, signer: Signer) -> AsyncIterator[tuple[str, Cosigner]]:
    cosigner = Cosigner("unit.witness.test/w1", Ed25519PrivateKey.generate())
    state = WitnessState.create(tmp_path / "witness.db", cosigner.name, cosigner.key.vkey())
    state.add_log("trailkeeper/", signer.verifier.vkey(), prefix=True)
    server = WitnessServer(Witness(state, cosigner), "127.0.0.1", 0)
    port = await server.start()
    try:
        yield f"http://127.0.0.1:{port}", cosigner
    finally:
        await server.stop()
        state.close()


def publisher(tmp_path: Path, url: str, cosigner: Cosigner, alert_after: int = 2) -> CheckpointPublisher:
    store = LocalStore("local", LocalStoreConfig(path=tmp_path / "archive", fsync=False))
    return CheckpointPublisher(
        tracker="default",
        writer="w1",
        prefix="trails",
        stores=[store],
        witnesses=[WitnessConfig(url=url, vkey=cosigner.key.vkey(), timeout=5)],  # type: ignore[arg-type]
        alert_after=alert_after,
    )


async def test_checkpoints_are_cosigned_and_published_with_the_cosignature(
    tmp_path: Path, signer: Signer, witness: tuple[str, Cosigner]
) -> None:
    url, cosigner = witness
    pub = publisher(tmp_path, url, cosigner)
    tree, state = Leaves(40), {}  # type: ignore[var-annotated]
    try:
        for size in (3, 17, 17, 40):  # first contact, growth, a heartbeat, growth again
            out = await pub.publish(tree.note(signer, size), size, tree, state)  # type: ignore[arg-type]
            assert [c.witness for c in cosignatures(out, [cosigner.key])] == [cosigner.key]
        stored = (tmp_path / "archive" / checkpoint_key("trails", "default", "w1")).read_text()
        assert stored == out and stored.startswith(tree.note(signer, 40))
        assert state[cosigner.key.vkey()]["size"] == 40 and state[cosigner.key.vkey()]["missed"] == 0
    finally:
        await pub.close()


async def test_a_witness_that_holds_another_size_gets_a_proof_from_that_size(
    tmp_path: Path, signer: Signer, witness: tuple[str, Cosigner]
) -> None:
    url, cosigner = witness
    pub = publisher(tmp_path, url, cosigner)
    tree = Leaves(30)
    try:
        await pub.publish(tree.note(signer, 12), 12, tree, {})  # type: ignore[arg-type]
        state: dict = {}  # type: ignore[type-arg]  # the daemon's record of it was lost
        out = await pub.publish(tree.note(signer, 30), 30, tree, state)  # type: ignore[arg-type]
        assert cosignatures(out, [cosigner.key]) and state[cosigner.key.vkey()]["size"] == 30
    finally:
        await pub.close()


async def test_a_log_behind_its_witness_or_forked_is_refused_and_reported(
    tmp_path: Path, signer: Signer, witness: tuple[str, Cosigner]
) -> None:
    url, cosigner = witness
    pub = publisher(tmp_path, url, cosigner, alert_after=2)
    tree = Leaves(30)
    try:
        await pub.publish(tree.note(signer, 30), 30, tree, {})  # type: ignore[arg-type]
        state: dict = {}  # type: ignore[type-arg]
        # Rolled back: the log now claims 20 records.
        out = await pub.publish(tree.note(signer, 20), 20, tree, state)  # type: ignore[arg-type]
        assert not cosignatures(out, [cosigner.key])
        st = state[cosigner.key.vkey()]
        assert st["missed"] == 1 and "rolled back or forked" in st["error"]
        assert pub.healthy_problems(state) == []
        # Forked: the same size with other records.
        other = Leaves(30, salt=b"fork")
        state[cosigner.key.vkey()]["size"] = 30
        out = await pub.publish(other.note(signer, 30), 30, other, state)  # type: ignore[arg-type]
        assert not cosignatures(out, [cosigner.key])
        assert state[cosigner.key.vkey()]["missed"] == 2 and "HTTP 422" in state[cosigner.key.vkey()]["error"]
        (problem,) = pub.healthy_problems(state)
        assert "unit.witness.test/w1" in problem and "2 intervals" in problem
        # The published checkpoint is still written, without the refused cosignature.
        stored = (tmp_path / "archive" / checkpoint_key("trails", "default", "w1")).read_text()
        assert stored == other.note(signer, 30)
    finally:
        await pub.close()


async def test_a_dead_witness_never_raises(tmp_path: Path, signer: Signer) -> None:
    from tests.conftest import free_port

    cosigner = Cosigner("dead.witness.test/w1", Ed25519PrivateKey.generate())
    pub = publisher(tmp_path, f"http://127.0.0.1:{free_port()}", cosigner, alert_after=1)
    tree, state = Leaves(5), {}  # type: ignore[var-annotated]
    try:
        out = await pub.publish(tree.note(signer, 5), 5, tree, state)  # type: ignore[arg-type]
        assert out == tree.note(signer, 5)
        assert "cannot reach" in pub.healthy_problems(state)[0]
    finally:
        await pub.close()


def test_the_request_body_follows_tlog_witness() -> None:
    body = add_checkpoint_body("origin\n1\nroot\n\n\u2014 k sig\n", 7, [b"\x00" * 32, b"\x01" * 32])
    head, _, note = body.decode().partition("\n\n")
    assert head.split("\n") == ["old 7", "A" * 43 + "=", "AQEB" * 10 + "AQE="]
    assert note.startswith("origin\n")
    with pytest.raises(ValueError):
        add_checkpoint_body("x\n", 1, [b"\x00" * 32] * 64)
