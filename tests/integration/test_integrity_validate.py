"""Validate archives built by the real journal, archiver and integrity recorder; tamper with copies."""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import os
import shutil
import sys
from pathlib import Path

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from integrity_harness import build_archive

from daemon.cli import main
from daemon.integrity.digest import sign_digest
from daemon.integrity.keys import KeyStore

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("archive")
    asyncio.run(build_archive(root, events=6000, max_events=400, digests=4))
    return root


@pytest.fixture
def arch(built: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(built, dst)
    for p in (dst / "archive").rglob("*"):
        if p.is_file():
            p.chmod(0o644)
    return dst


def files(root: Path) -> list[Path]:
    return sorted(p for p in (root / "archive").rglob("*.json.gz"))


def digests(root: Path) -> list[Path]:
    return sorted((root / "archive").rglob("_digest/**/*.json"), key=lambda p: p.name.rsplit("_", 1)[-1])


def run_validate(root: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, dict]:  # type: ignore[type-arg]
    code = main(
        [
            "validate",
            str(root / "archive"),
            "--public-key",
            str(root / "keys"),
            "--json",
            "--no-cache",
            *extra,
        ]
    )
    out = capsys.readouterr().out.strip().splitlines()[-1]
    return code, orjson.loads(out)


def categories(report: dict) -> set[str]:  # type: ignore[type-arg]
    return {f["category"] for f in report["findings"]}


def test_untouched_archive_is_valid(arch: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, report = run_validate(arch, capsys)
    assert code == 0, report["findings"]
    assert report["counts"]["valid"] == len(files(arch)) + len(digests(arch))
    assert len(digests(arch)) >= 5 and len(files(arch)) >= 15


def test_one_byte_changed(arch: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = files(arch)[3]
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 1
    f.write_bytes(bytes(data))
    code, report = run_validate(arch, capsys)
    assert code == 1 and "modified" in categories(report)


def test_file_deleted(arch: Path, capsys: pytest.CaptureFixture[str]) -> None:
    files(arch)[5].unlink()
    code, report = run_validate(arch, capsys)
    assert code == 1 and "missing" in categories(report)


def test_foreign_file_added(arch: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = files(arch)[0]
    foreign = f.with_name(f.name.replace("_0000", "_9999"))
    foreign.write_bytes(gzip.compress(b'{"Records":[\n{"eventID":"forged"}\n]}\n'))
    code, report = run_validate(arch, capsys)
    assert code == 1 and categories(report) == {"unlisted"}


def test_files_swapped(arch: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = files(arch)[1], files(arch)[7]
    da, db = a.read_bytes(), b.read_bytes()
    a.write_bytes(db)
    b.write_bytes(da)
    code, report = run_validate(arch, capsys)
    assert code == 1 and categories(report) == {"moved"}


def test_digest_deleted_mid_chain(arch: Path, capsys: pytest.CaptureFixture[str]) -> None:
    digests(arch)[2].unlink()
    code, report = run_validate(arch, capsys)
    assert code == 1 and "chain-gap" in categories(report)
    # The files that only the deleted digest listed now look inserted.
    assert "missing" in categories(report)


def test_digest_resigned_with_another_key(arch: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = digests(arch)[2]
    doc = orjson.loads(d.read_bytes())
    doc.pop("signature")
    other = KeyStore(arch / "otherkeys").generate("trailkeeper")
    d.write_bytes(sign_digest(doc, other))
    code, report = run_validate(arch, capsys)
    assert code == 1 and "unknown-key" in categories(report)


def test_record_removed_and_recompressed(arch: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = files(arch)[4]
    lines = gzip.decompress(f.read_bytes()).split(b"\n")
    del lines[2]  # a middle record line, still a well-formed file
    f.write_bytes(gzip.compress(b"\n".join(lines), mtime=0))
    code, report = run_validate(arch, capsys)
    assert code == 1 and "modified" in categories(report)


def test_tail_deleted_detected_by_trusted_checkpoint(arch: Path, capsys: pytest.CaptureFixture[str]) -> None:
    newest = digests(arch)[-1]
    trusted = arch / "trusted.note"
    trusted.write_text(orjson.loads(newest.read_bytes())["checkpoint"])
    code, _ = run_validate(arch, capsys, "--trusted-checkpoint", str(trusted))
    assert code == 0
    # Delete the last two digests and every file they list.
    for d in digests(arch)[-2:]:
        for f in orjson.loads(d.read_bytes())["files"]:
            (arch / "archive" / f["key"]).unlink()
        d.unlink()
    code, report = run_validate(arch, capsys)
    assert code == 0, "without a trusted checkpoint the shortened archive is self-consistent"
    code, report = run_validate(arch, capsys, "--trusted-checkpoint", str(trusted))
    assert code == 1 and categories(report) == {"truncated"}


def test_tail_deleted_detected_by_max_age(arch: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _ = run_validate(arch, capsys, "--max-age", "1h")
    assert code == 0
    code, report = run_validate(arch, capsys, "--max-age", "1ms")
    assert code == 1 and categories(report) == {"truncated"}


def test_moved_digest_fails(arch: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = digests(arch)[1]
    d.rename(d.with_name(d.name.replace("_0000", "_0001")))
    code, report = run_validate(arch, capsys)
    assert code == 1 and "moved" in categories(report)


def test_incremental_rerun_reads_nothing(
    arch: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    cache = tmp_path / "cache.json"
    args = [
        "validate",
        str(arch / "archive"),
        "--public-key",
        str(arch / "keys"),
        "--json",
        "--cache",
        str(cache),
    ]
    assert main(args) == 0
    first = orjson.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert main(args) == 0
    second = orjson.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert first["files_read"] == len(files(arch)) and second["files_read"] == 0
    assert second["files_cached"] == len(files(arch))
    # A change with a new mtime is read again and caught.
    f = files(arch)[2]
    raw = f.read_bytes()
    f.write_bytes(raw[:-1] + bytes([raw[-1] ^ 1]))
    os.utime(f, (1, 1))
    assert main(args) == 1
    capsys.readouterr()


def test_inclusion_proof_verifies_independently(arch: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = arch / "tk.yaml"
    cfg.write_text(
        f"writer_id: w1\njournal: {{dir: {arch}/journal}}\n"
        f"stores: {{local: {{type: local, path: {arch}/archive}}}}\n"
        f"integrity: {{keys_dir: {arch}/keys, state_dir: {arch}/state}}\n"
    )
    rec = gzip.decompress(files(arch)[6].read_bytes()).split(b"\n")[3].rstrip(b",")
    event_id = orjson.loads(rec)["eventID"]
    assert main(["prove", event_id, "-c", str(cfg)]) == 0
    proof = orjson.loads(capsys.readouterr().out)
    assert base64.b64decode(proof["record"]) == rec
    # RFC 9162 section 2.1.3.2, written out here independently of daemon.integrity.merkle.
    h = lambda b: hashlib.sha256(b).digest()  # noqa: E731
    fn, sn, r = proof["leaf_index"], proof["tree_size"] - 1, h(b"\x00" + rec)
    for p in map(bytes.fromhex, proof["audit_path"]):
        if fn % 2 == 1 or fn == sn:
            r = h(b"\x01" + p + r)
            while fn % 2 == 0 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = h(b"\x01" + r + p)
        fn, sn = fn >> 1, sn >> 1
    assert sn == 0
    # The checkpoint, read as a C2SP signed note with nothing but `cryptography`.
    text, _, sigs = proof["checkpoint"].partition("\n\n")
    _origin, size, root_b64 = text.split("\n")[:3]
    assert r == base64.b64decode(root_b64) and int(size) == proof["tree_size"]
    vkey = (arch / "keys" / next((arch / "keys").glob("*.vkey")).name).read_text().strip()
    name, kid_hex, key_b64 = vkey.split("+", 2)
    pub = base64.b64decode(key_b64)[1:]
    assert hashlib.sha256(name.encode() + b"\n\x01" + pub).digest()[:4].hex() == kid_hex
    line = sigs.strip("\n")
    assert line.startswith("\u2014 " + name + " ")
    blob = base64.b64decode(line.split(" ")[2])
    assert blob[:4].hex() == kid_hex
    Ed25519PublicKey.from_public_bytes(pub).verify(blob[4:], (text + "\n").encode())
    # And our own offline verifier accepts it and rejects a changed record.
    pf = arch / "proof.json"
    pf.write_bytes(orjson.dumps(proof))
    assert main(["verify-proof", str(pf), "--public-key", vkey]) == 0
    proof["record"] = base64.b64encode(rec.replace(b"eventID", b"eventId")).decode()
    pf.write_bytes(orjson.dumps(proof))
    assert main(["verify-proof", str(pf), "--public-key", vkey]) == 1
    capsys.readouterr()
