"""Witnessed checkpoints end to end: the daemon's digest chain cosigned by two real witnesses on
loopback (``trailkeeper witness`` and the independent ``aics-witness``), then an insider with write
access to the archive rolls it back, truncates it or forks it, keeping every signature valid.
``validate`` must report ``truncated`` from what is published and cosigned alone: nobody hands
it a checkpoint."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from integrity_harness import build_archive
from witness_peers import AicsWitness, free_port

from daemon.archive.fileformat import split_records
from daemon.cli import main
from daemon.integrity import merkle
from daemon.integrity.checkpoint import Checkpoint
from daemon.integrity.digest import sign_digest
from daemon.integrity.keys import KeyStore

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ORIGIN = "trailkeeper/default/w1"
TK = [sys.executable, "-m", "daemon"]


class OurWitness:
    def __init__(self, directory: Path, log_vkey: str) -> None:
        self.dir = directory
        out = subprocess.run(
            [*TK, "witness", "init", "--dir", str(directory), "--name", "tk.witness.test/w1"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        self.vkey = out.strip().splitlines()[-1].strip()
        subprocess.run(
            [*TK, "witness", "add-log", "--dir", str(directory), "--origin-prefix", "trailkeeper/", "--vkey", log_vkey],
            check=True,
            capture_output=True,
        )
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [*TK, "witness", "serve", "--dir", str(directory), "--listen", f"127.0.0.1:{self.port}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        import socket

        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("trailkeeper witness did not start") from None
                time.sleep(0.1)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture(scope="module")
def witnessed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, OurWitness, AicsWitness]]:
    root = tmp_path_factory.mktemp("witnessed")
    log_vkey = KeyStore(root / "keys").generate("trailkeeper").verifier.vkey()
    ours = OurWitness(root / "witness-ours", log_vkey)
    theirs = AicsWitness(root / "witness-aics")
    try:
        theirs.init(ORIGIN, log_vkey)
        theirs.start()
        extra = f", witnesses: [{{url: '{ours.url}', vkey: '{ours.vkey}'}}, {{url: '{theirs.url}', vkey: '{theirs.vkey}'}}]"
        asyncio.run(build_archive(root, events=3000, max_events=400, digests=4, integrity_extra=extra))
        (root / "extra.txt").write_text(extra)
        yield root, ours, theirs
    finally:
        theirs.stop()
        ours.stop()


@pytest.fixture
def arch(witnessed: tuple[Path, OurWitness, AicsWitness], tmp_path: Path) -> Path:
    root = witnessed[0]
    dst = tmp_path / "copy"
    shutil.copytree(root / "archive", dst / "archive")
    shutil.copytree(root / "keys", dst / "keys")
    shutil.copytree(root / "published", dst / "published")
    for p in (dst / "archive").rglob("*"):
        if p.is_file():
            p.chmod(0o644)
    return dst


def digests(root: Path) -> list[Path]:
    return sorted((root / "archive").rglob("_digest/**/*.json"), key=lambda p: p.name.rsplit("_", 1)[-1])


def validate(root: Path, capsys: pytest.CaptureFixture[str], *witness_args: str) -> tuple[int, dict]:  # type: ignore[type-arg]
    code = main(["validate", str(root / "archive"), "--public-key", str(root / "keys"), "--json", *witness_args])
    return code, orjson.loads(capsys.readouterr().out.strip().splitlines()[-1])


def categories(report: dict) -> set[str]:  # type: ignore[type-arg]
    return {f["category"] for f in report["findings"]}


def witness_args(which: str, ours: OurWitness, theirs: AicsWitness) -> list[str]:
    chosen = {"ours": [ours], "aics": [theirs], "both": [ours, theirs]}[which]
    out = []
    for w in chosen:
        out += ["--witness", w.url, "--witness-key", w.vkey]
    return [*out, "--witnesses", str(len(chosen))]


def test_every_checkpoint_is_cosigned_by_both_witnesses(
    witnessed: tuple[Path, OurWitness, AicsWitness], arch: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, ours, theirs = witnessed
    code, report = validate(arch, capsys, *witness_args("both", ours, theirs))
    assert code == 0, report["findings"]
    published = [c for c in report["checkpoints"] if "_checkpoint" in c["source"]]
    assert published and set(published[0]["cosigned_by"]) == {"tk.witness.test/w1", "aics.witness.test/w1"}
    # The published note carries the log's signature and both cosignatures.
    note = next((arch / "archive").rglob("_checkpoint/w1")).read_text()
    assert note.count("\u2014 ") == 3
    newest = orjson.loads(digests(arch)[-1].read_bytes())
    assert note.startswith(newest["checkpoint"].split("\n\n")[0])


def test_without_the_required_cosignatures_the_chain_is_unwitnessed(
    witnessed: tuple[Path, OurWitness, AicsWitness], arch: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, ours, _ = witnessed
    # A witness key nobody cosigned with: the newest checkpoint lacks its cosignature.
    other = subprocess.run(
        [*TK, "witness", "init", "--dir", str(arch / "stranger"), "--name", "stranger.test/w"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip().splitlines()[-1]
    code, report = validate(arch, capsys, "--witness-key", other, "--witness-key", ours.vkey, "--witnesses", "2")
    assert code == 1 and categories(report) == {"unwitnessed"}


def _delete_tail(root: Path, n: int) -> None:
    for d in digests(root)[-n:]:
        for f in orjson.loads(d.read_bytes())["files"]:
            (root / "archive" / f["key"]).unlink()
        d.unlink()


@pytest.mark.parametrize("which", ["ours", "aics", "both"])
def test_deleting_the_newest_files_digests_and_checkpoint_is_truncated(
    witnessed: tuple[Path, OurWitness, AicsWitness], arch: Path, capsys: pytest.CaptureFixture[str], which: str
) -> None:
    _, ours, theirs = witnessed
    _delete_tail(arch, 2)
    for p in (arch / "archive").rglob("_checkpoint/*"):
        p.unlink()
    code, report = validate(arch, capsys)
    assert code == 0, "without witnesses the shortened archive is self-consistent"
    code, report = validate(arch, capsys, *witness_args(which, ours, theirs))
    assert code == 1 and "truncated" in categories(report), report["findings"]
    assert categories(report) <= {"truncated", "unwitnessed"}


@pytest.mark.parametrize("which", ["ours", "aics"])
def test_an_older_self_consistent_state_with_its_own_cosigned_checkpoint_is_truncated(
    witnessed: tuple[Path, OurWitness, AicsWitness], arch: Path, capsys: pytest.CaptureFixture[str], which: str
) -> None:
    _, ours, theirs = witnessed
    kept = sorted((arch / "published").iterdir(), key=lambda p: int(p.name))
    old_seq = int(kept[1].name)
    # Roll everything back to the state just after digest old_seq, checkpoint and cosignatures included.
    n_newer = sum(1 for d in digests(arch) if orjson.loads(d.read_bytes())["sequence"] > old_seq)
    _delete_tail(arch, n_newer)
    for p in (arch / "archive").rglob("_checkpoint/*"):
        p.write_bytes((kept[1] / p.name).read_bytes())
    code, report = validate(arch, capsys, "--witness-key", ours.vkey, "--witness-key", theirs.vkey, "--witnesses", "2")
    assert code == 0, "by itself the old state is complete, signed and even cosigned"
    code, report = validate(arch, capsys, *witness_args(which, ours, theirs))
    assert code == 1 and "truncated" in categories(report), report["findings"]


def test_a_forked_chain_rewritten_with_the_real_key_is_truncated(
    witnessed: tuple[Path, OurWitness, AicsWitness], arch: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The insider holds the signing key: they drop one record of the newest file and re-sign
    every digest and checkpoint after it. Only the witnesses remember the real tree."""
    _, ours, theirs = witnessed
    signer = KeyStore(arch / "keys").active()
    assert signer is not None
    ds = digests(arch)
    docs = [orjson.loads(d.read_bytes()) for d in ds]
    target = max(i for i, d in enumerate(docs) if d["files"])
    entry = docs[target]["files"][-1]
    path = arch / "archive" / entry["key"]
    lines = gzip.decompress(path.read_bytes()).split(b"\n")
    del lines[2]
    data = gzip.compress(b"\n".join(lines), mtime=0)
    path.write_bytes(data)
    records = split_records(gzip.decompress(data))
    entry.update(
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        records=len(records),
        last_leaf=entry["first_leaf"] + len(records) - 1,
        merkle_root=merkle.root_of(merkle.leaf_hashes(records)).hex(),
    )
    # Rebuild the leaves of the whole tree from the files, as the insider would.
    leaves: list[bytes] = []
    for d in docs:
        for f in d["files"]:
            raw = gzip.decompress((arch / "archive" / f["key"]).read_bytes())
            leaves += merkle.leaf_hashes(split_records(raw))
    prev = None
    for i, (p, doc) in enumerate(zip(ds, docs, strict=True)):
        doc.pop("signature")
        if i >= target:
            size = len(leaves)
            doc["tree_size"] = size
            if i > target:
                doc["tree_size_before"] = size
            text = doc["checkpoint"][: doc["checkpoint"].find("\n\n") + 1]
            cp = Checkpoint.parse(text)
            doc["checkpoint"] = Checkpoint(cp.origin, size, merkle.root_of(leaves)).sign([signer])
        if prev is not None:
            doc["previous"].update(prev)
        raw = sign_digest(doc, signer)
        p.write_bytes(raw)
        signed = orjson.loads(raw)
        prev = {
            "sha256": hashlib.sha256(raw).hexdigest(),
            "signature": signed["signature"]["value"],
            "tree_size": signed["tree_size"],
        }
    for p in (arch / "archive").rglob("_checkpoint/*"):
        p.write_text(docs[-1]["checkpoint"])
    code, report = validate(arch, capsys)
    assert code == 0, f"the fork is self-consistent and signed: {report['findings']}"
    code, report = validate(arch, capsys, *witness_args("both", ours, theirs))
    assert code == 1 and "truncated" in categories(report), report["findings"]


def test_checkpoint_command_prints_the_cosigned_checkpoint(
    witnessed: tuple[Path, OurWitness, AicsWitness], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    root = witnessed[0]
    cfg = tmp_path / "tk.yaml"
    cfg.write_text(
        f"writer_id: w1\njournal: {{dir: {root}/journal}}\n"
        f"stores: {{local: {{type: local, path: {root}/archive}}}}\n"
        "trackers: [{name: default, store: local, prefix: trails}]\n"
        f"integrity: {{keys_dir: {root}/keys, state_dir: {root}/state}}\n"
    )
    assert main(["checkpoint", "-c", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# default/w1:") and "tk.witness.test/w1" in out and "aics.witness.test/w1" in out
    assert main(["checkpoint", "-c", str(cfg), "--out", str(tmp_path / "kept")]) == 0
    capsys.readouterr()
    kept = (tmp_path / "kept" / "default_w1.checkpoint").read_text()
    # What was kept works as a trusted checkpoint.
    code = main(
        [
            "validate",
            str(root / "archive"),
            "--public-key",
            str(root / "keys"),
            "--trusted-checkpoint",
            str(tmp_path / "kept" / "default_w1.checkpoint"),
            "--json",
        ]
    )
    assert code == 0 and kept.count("\u2014 ") == 3
    capsys.readouterr()
