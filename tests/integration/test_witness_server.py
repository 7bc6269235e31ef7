"""``trailkeeper witness`` over real HTTP on loopback: the tlog-witness statuses, restarts, races,
and one run of init/add-log/serve as processes."""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from daemon.cli import main
from daemon.integrity.checkpoint import Checkpoint, Signer, open_note, sign_note
from daemon.integrity.cosignature import Cosigner, CosignerKey, cosignatures, parse_cosigner_vkey
from daemon.integrity.keys import load_private_pem
from daemon.witness import db_path, key_path
from daemon.witness.server import Witness, WitnessServer
from daemon.witness.state import WitnessState, origin_hash
from tests.conftest import ROOT, free_port
from tests.unit.witness import ToyLog

pytestmark = pytest.mark.integration

NAME = "witness.test/w1"


@dataclass
class Reply:
    status: int
    body: str
    content_type: str
    headers: dict[str, str]


class Running:
    """One in-process witness on a free loopback port, with a client session."""

    def __init__(self, directory: Path, clock: Callable[[], float] = time.time) -> None:
        self.directory = directory
        self.clock = clock
        self.state: WitnessState | None = None
        self.server: WitnessServer | None = None
        self.url = ""
        self.session = aiohttp.ClientSession()

    async def start(self) -> None:
        self.state = WitnessState.open(db_path(self.directory))
        name, _ = self.state.identity()
        key = load_private_pem(key_path(self.directory).read_bytes(), "witness key")
        self.server = WitnessServer(Witness(self.state, Cosigner(name, key), clock=self.clock), "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{await self.server.start()}"

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop()
        if self.state is not None:
            self.state.close()
        self.server = self.state = None

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    async def post(self, body: bytes | object, **kw: object) -> Reply:
        async with self.session.post(self.url + "/add-checkpoint", data=body, **kw) as r:  # type: ignore[arg-type]
            return Reply(r.status, await r.text(), r.headers.get("Content-Type", ""), dict(r.headers))

    async def get(self, path: str) -> Reply:
        async with self.session.get(self.url + path) as r:
            return Reply(r.status, await r.text(), r.headers.get("Content-Type", ""), dict(r.headers))

    async def held_note(self, origin: str) -> str:
        return (await self.get(f"/{origin_hash(origin)}/checkpoint")).body


@pytest.fixture
def witness_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[Path, CosignerKey]:
    directory = tmp_path / "witness"
    assert main(["witness", "init", "--dir", str(directory), "--name", NAME]) == 0
    return directory, parse_cosigner_vkey(capsys.readouterr().out.strip())


@pytest.fixture
def log(witness_dir: tuple[Path, CosignerKey]) -> ToyLog:
    toy = ToyLog().grow(16)
    args = ["witness", "add-log", "--dir", str(witness_dir[0]), "--origin-prefix", "trailkeeper/"]
    assert main([*args, "--vkey", toy.vkey]) == 0
    return toy


@pytest.fixture
async def running(witness_dir: tuple[Path, CosignerKey], log: ToyLog) -> AsyncIterator[Running]:
    w = Running(witness_dir[0])
    await w.start()
    try:
        yield w
    finally:
        await w.stop()
        await w.session.close()


def cosigned_times(note: str, key: CosignerKey) -> list[int]:
    return [c.timestamp for c in cosignatures(note, [key])]


async def test_cosigns_first_checkpoint_and_extensions(
    running: Running, log: ToyLog, witness_dir: tuple[Path, CosignerKey]
) -> None:
    key = witness_dir[1]
    assert (await running.get("/healthz")).body == "ok\n"
    assert (await running.get(f"/{origin_hash(log.origin)}/checkpoint")).status == 404

    first = await running.post(log.body(0, 5))
    assert first.status == 200, first.body
    assert first.content_type == "text/plain; charset=utf-8"
    assert first.body.startswith(f"\u2014 {NAME} ") and first.body.endswith("\n") and first.body.count("\n") == 1
    assert cosigned_times(log.note(5) + first.body, key) != []

    # Signature lines by keys the witness does not know are ignored, not refused.
    stranger = Signer("someone.else", Ed25519PrivateKey.generate())
    second = await running.post(log.body(5, 11, note=log.note(11, [stranger, log.signer])))
    assert second.status == 200, second.body
    (cosig,) = cosignatures(log.note(11) + second.body, [key])
    assert abs(cosig.timestamp - time.time()) < 5

    served = await running.get(f"/{origin_hash(log.origin)}/checkpoint")
    assert served.status == 200 and served.content_type.startswith("text/plain")
    assert served.body == log.note(11) + second.body  # the stranger's line is not served
    text, _ = open_note(served.body, [log.signer.verifier])
    assert Checkpoint.parse(text) == log.checkpoint(11)
    assert cosigned_times(served.body, key) == [cosig.timestamp]

    # The held checkpoint again, with the held size: cosigned again, nothing else moves.
    again = await running.post(log.body(11, 11))
    assert again.status == 200 and cosigned_times(log.note(11) + again.body, key)
    assert running.state is not None and running.state.held(log.origin).size == 11  # type: ignore[union-attr]


async def test_refusals_leave_the_state_unchanged(running: Running, log: ToyLog) -> None:
    assert (await running.post(log.body(0, 8))).status == 200
    held = await running.held_note(log.origin)
    fork = log.fork(6)
    outsider = Signer("trailkeeper", Ed25519PrivateKey.generate())  # same name, another key

    async def refused(body: bytes, status: int, detail: str = "") -> Reply:
        reply = await running.post(body)
        assert reply.status == status, (body[:80], reply.status, reply.body)
        assert detail in reply.body
        return reply

    # 422: the proof does not verify, the held size with another root, a proof with old 0.
    await refused(log.body(8, 12, proof=log.proof(7, 12)), 422)
    await refused(fork.body(8, 12), 422)
    await refused(fork.body(8, 8), 422, "different roots")
    # 409, body the held size: old is not the held size, including a smaller tree at its own size.
    for body in (log.body(0, 12), log.body(4, 12), log.body(4, 4), log.body(10, 12), fork.body(0, 8)):
        reply = await refused(body, 409)
        assert (reply.body, reply.content_type) == ("8\n", "text/x.tlog.size")
    # 400: a smaller checkpoint with old = the held size (old > size).
    await refused(log.body(8, 4, proof=[]), 400, "larger than the checkpoint size")
    # 404: an origin nobody configured (a prefix match is a string prefix, not a path guess).
    other = ToyLog("trailkeeperish/default/tk1").grow(3)
    other.signer = log.signer
    await refused(other.body(0, 3), 404)
    # 403: no trusted signature, a forged one, and a trusted key that signed twice.
    await refused(log.body(8, 12, note=log.note(12, [outsider])), 403)
    good = log.note(12)
    forged = good[:-10] + ("A" if good[-10] != "A" else "B") + good[-9:]
    await refused(log.body(8, 12, note=forged), 403, "does not verify")
    await refused(log.body(8, 12, note=log.note(12, [log.signer, log.signer])), 403, "twice")
    # A proof sent with old 0 (on a log the witness never saw).
    fresh = ToyLog("trailkeeper/other/tk2").grow(4)
    fresh.signer = log.signer
    await refused(fresh.body(0, 4, proof=fresh.proof(2, 4)), 422)

    assert await running.held_note(log.origin) == held
    assert (await running.get(f"/{origin_hash(fresh.origin)}/checkpoint")).status == 404
    assert running.state is not None
    # One row per refused log-signed tree (the fork at size 8 was sent twice).
    assert running.state.evidence_counts() == {log.origin: 3, fresh.origin: 1}
    # The kept request is the whole body, so it can be checked again by anyone.
    kept = running.state.evidence(log.origin)[1]
    assert kept.request == fork.body(8, 12) and kept.held_root == log.root(8)


async def test_malformed_and_oversize_requests(running: Running, log: ToyLog) -> None:
    assert (await running.post(log.body(0, 4))).status == 200
    held = await running.held_note(log.origin)
    note = log.note(8)
    proof = [base64.b64encode(h).decode() for h in log.proof(4, 8)]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    noncanonical = proof[0][:42] + alphabet[alphabet.index(proof[0][42]) ^ 1] + "="
    assert base64.b64decode(noncanonical) == base64.b64decode(proof[0])
    bad = [
        b"garbage",
        b"old 4\n" + note.encode(),  # no empty line after the header
        f"old 04\n\n{note}".encode(),
        f"old -1\n\n{note}".encode(),
        ("old 4\n" + "\n".join([proof[0]] * 64) + "\n\n" + note).encode(),  # 64 proof lines
        ("old 4\n" + proof[0][:-2] + "==\n\n" + note).encode(),  # not 32 bytes
        ("old 4\n" + proof[0][:-1] + "\n\n" + note).encode(),  # no padding
        ("old 4\n" + noncanonical + "\n\n" + note).encode(),  # the same 32 bytes, padding bits set
        f"old 4\n\n{note.split(chr(10) + chr(10))[0]}\n".encode(),  # no signature lines
        f"old 4\n\n{note.replace('8', '8' * 5000, 1)}".encode(),  # a 5000-digit size
        f"old 4\n\n{note.replace('8', str(2**63), 1)}".encode(),
        b"old 4\n\n" + sign_note("trailkeeper/default/tk1\n8\nnot-a-hash\n", [log.signer]).encode(),
        f"old 4\n\n{log.note(8)[:-1]}".encode(),  # no final newline
        b"old 4\n\n\xff\xfe" + note.encode(),  # not UTF-8
        f"old 4\n\n{note.replace(chr(10), chr(13) + chr(10), 2)}".encode(),  # CR in the text
        b"",
    ]
    for body in bad:
        reply = await running.post(body)
        assert reply.status == 400, (body[:60], reply.status, reply.body)
    # 64 proof lines are refused for the count alone; 63 pass the format check.
    sixty_three = ("old 4\n" + "\n".join([proof[0]] * 63) + "\n\n" + note).encode()
    assert (await running.post(sixty_three)).status == 422

    huge = log.body(4, 8) + b"x" * (1 << 20)
    assert (await running.post(huge)).status == 413

    async def chunked() -> AsyncIterator[bytes]:
        for _ in range(20):
            yield b"y" * 65536

    assert (await running.post(chunked())).status == 413
    assert (await running.get("/add-checkpoint")).status == 405
    assert await running.held_note(log.origin) == held
    assert (await running.post(log.body(4, 8))).status == 200


async def test_a_restarted_witness_still_refuses_to_go_back(running: Running, log: ToyLog) -> None:
    assert (await running.post(log.body(0, 6))).status == 200
    assert (await running.post(log.body(6, 9))).status == 200
    before = await running.held_note(log.origin)

    await running.restart()
    assert await running.held_note(log.origin) == before
    reply = await running.post(log.body(0, 6))
    assert (reply.status, reply.body) == (409, "9\n")
    assert (await running.post(log.fork(4).body(9, 9))).status == 422
    assert (await running.post(log.fork(8).body(9, 12))).status == 422
    assert (await running.post(log.body(9, 12))).status == 200


async def test_concurrent_adds_from_one_old_size_never_both_succeed(running: Running, log: ToyLog) -> None:
    assert (await running.post(log.body(0, 4))).status == 200
    forks = [log.fork(4, f"fork{i}") for i in range(8)]
    bodies = [log.body(4, n) for n in range(5, 17)] + [f.body(4, 10) for f in forks]
    replies = await asyncio.gather(*(running.post(b) for b in bodies))
    winners = [i for i, r in enumerate(replies) if r.status == 200]
    assert len(winners) == 1, [r.status for r in replies]
    won_size = Checkpoint.parse(bodies[winners[0]].decode().split("\n\n", 1)[1].split("\n\n")[0] + "\n").size
    assert {(r.status, r.body) for i, r in enumerate(replies) if i != winners[0]} == {(409, f"{won_size}\n")}
    held = await running.held_note(log.origin)
    assert held.startswith(bodies[winners[0]].decode().split("\n\n", 1)[1])


async def test_clock_behind_the_last_cosignature_is_503(
    witness_dir: tuple[Path, CosignerKey], log: ToyLog
) -> None:
    now = [1_800_000_000.0]
    w = Running(witness_dir[0], clock=lambda: now[0])
    await w.start()
    try:
        assert (await w.post(log.body(0, 4))).status == 200
        now[0] -= 3
        reply = await w.post(log.body(4, 8))
        assert reply.status == 503 and reply.headers["Retry-After"] == "3"
        now[0] += 3
        reply = await w.post(log.body(4, 8))
        assert reply.status == 200 and cosigned_times(log.note(8) + reply.body, witness_dir[1]) == [1_800_000_000]
    finally:
        await w.stop()
        await w.session.close()


# --- the command line ---------------------------------------------------------------------------


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "daemon", "witness", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=30)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, str, ToyLog, subprocess.Popen[bytes], Path]]:
    """``init``, ``add-log`` and ``serve`` as processes; yields (url, vkey, log, process, dir)."""
    directory = tmp_path / "w"
    init = _cli("init", "--dir", str(directory), "--name", NAME)
    assert init.returncode == 0, init.stderr
    toy = ToyLog().grow(10)
    added = _cli("add-log", "--dir", str(directory), "--origin", toy.origin, "--vkey", toy.vkey)
    assert added.returncode == 0 and "trusting" in added.stdout, added.stderr
    port = free_port()
    with open(tmp_path / "serve.log", "wb") as errors:
        proc = subprocess.Popen([sys.executable, "-m", "daemon", "witness", "serve", "--dir", str(directory),
                                 "--listen", f"127.0.0.1:{port}"], cwd=ROOT, stderr=errors)
    try:
        yield f"http://127.0.0.1:{port}", init.stdout.strip(), toy, proc, directory
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def test_init_add_log_serve_as_processes(
    served: tuple[str, str, ToyLog, subprocess.Popen[bytes], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    url, vkey, toy, proc, directory = served
    assert directory.stat().st_mode & 0o777 == 0o700
    assert key_path(directory).stat().st_mode & 0o777 == 0o600
    async with aiohttp.ClientSession() as session:
        deadline = time.monotonic() + 15
        while True:
            try:
                async with session.get(url + "/healthz") as r:
                    if r.status == 200:
                        break
            except aiohttp.ClientConnectionError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "witness serve did not start"
            await asyncio.sleep(0.05)
        async with session.post(url + "/add-checkpoint", data=toy.body(0, 10)) as r:
            assert r.status == 200
            line = await r.text()
        async with session.get(f"{url}/{origin_hash(toy.origin)}/checkpoint") as r:
            assert await r.text() == toy.note(10) + line
    assert cosignatures(toy.note(10) + line, [parse_cosigner_vkey(vkey)])

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0

    # Rerunning init prints the same vkey; status reads what serve committed.
    assert main(["witness", "init", "--dir", str(directory), "--name", NAME]) == 0
    assert capsys.readouterr().out.strip() == vkey
    assert main(["witness", "status", "--dir", str(directory), "--json"]) == 0
    import orjson

    doc = orjson.loads(capsys.readouterr().out)
    assert doc["vkey"] == vkey and [(x["origin"], x["size"]) for x in doc["logs"]] == [(toy.origin, 10)]
    assert doc["trusted"] == [{"origin": toy.origin, "vkeys": [toy.vkey]}]
    assert main(["witness", "status", "--dir", str(directory)]) == 0
    assert f"{toy.origin}  size 10" in capsys.readouterr().out


def test_user_errors_exit_2_with_a_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = str(tmp_path / "w")
    cases: list[tuple[list[str], str]] = [
        (["serve", "--dir", d], "witness init"),
        (["status", "--dir", d], "witness init"),
        (["add-log", "--dir", d, "--origin", "x", "--vkey", ToyLog().vkey], "witness init"),
        (["init", "--dir", d, "--name", "has space"], "--name"),
    ]
    for args, hint in cases:
        assert main(["witness", *args]) == 2, args
        err = capsys.readouterr().err
        assert hint in err and "Traceback" not in err, (args, err)
    assert main(["witness", "init", "--dir", d, "--name", NAME]) == 0
    vkey = capsys.readouterr().out.strip()
    more: list[tuple[list[str], str]] = [
        (["init", "--dir", d, "--name", "witness.test/w2"], "new witness"),
        (["add-log", "--dir", d, "--origin", "x", "--vkey", vkey], "--vkey"),  # a witness key, not a log key
        (["add-log", "--dir", d, "--origin", "has space", "--vkey", ToyLog().vkey], "--origin"),
        (["serve", "--dir", d, "--listen", "nonsense"], "--listen"),
    ]
    for args, hint in more:
        assert main(["witness", *args]) == 2, args
        err = capsys.readouterr().err
        assert hint in err and "Traceback" not in err, (args, err)
    # The key without its database is lost state: init refuses to start over with it.
    db_path(Path(d)).rename(tmp_path / "moved.db")
    assert main(["witness", "init", "--dir", d, "--name", NAME]) == 2
    assert "state is lost" in capsys.readouterr().err
    (tmp_path / "moved.db").rename(db_path(Path(d)))
    key_path(Path(d)).rename(tmp_path / "moved.key")
    assert main(["witness", "init", "--dir", d, "--name", NAME]) == 2
    assert "never cosigned anything, so delete" in capsys.readouterr().err
    (tmp_path / "moved.key").rename(key_path(Path(d)))
    os.chmod(key_path(Path(d)), 0o644)
    assert main(["witness", "status", "--dir", d]) == 2
    assert "chmod 600" in capsys.readouterr().err
