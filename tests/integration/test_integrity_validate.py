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
    assert code == 1 and categories(report) == {"truncated"}, "the published checkpoint is newer"
    # An insider who also removes the published checkpoint leaves a self-consistent archive...
    for p in (arch / "archive").rglob("_checkpoint/*"):
        p.unlink()
    code, report = run_validate(arch, capsys)
    assert code == 0, report
    # ...that a checkpoint kept elsewhere (or a witness: tests/integration/test_witnessing.py) exposes.
    code, report = run_validate(arch, capsys, "--trusted-checkpoint", str(trusted))
    assert code == 1 and categories(report) == {"truncated"}


def test_a_checkpoint_copy_in_another_store_exposes_a_truncated_archive(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "offsite-run"
    asyncio.run(
        build_archive(
            root,
            events=2000,
            max_events=400,
            digests=2,
            integrity_extra=", checkpoint_stores: [offsite]",
            stores_extra=f", offsite: {{type: local, path: {root}/offsite, fsync: false}}",
        )
    )
    assert list((root / "offsite").rglob("_checkpoint/w1"))
    cfg = root / "tk.yaml"
    cfg.write_text(
        f"writer_id: w1\njournal: {{dir: {root}/journal}}\n"
        f"stores: {{local: {{type: local, path: {root}/archive}}, offsite: {{type: local, path: {root}/offsite}}}}\n"
        "trackers: [{name: default, store: local, prefix: trails}]\n"
        f"integrity: {{keys_dir: {root}/keys, state_dir: {root}/state, checkpoint_stores: [offsite]}}\n"
    )
    args = ["validate", "-c", str(cfg), "--public-key", str(root / "keys"), "--json"]
    assert main(args) == 0
    capsys.readouterr()
    for p in (root / "archive").rglob("*"):
        if p.is_file():
            p.chmod(0o644)
    for d in digests(root)[-2:]:
        for f in orjson.loads(d.read_bytes())["files"]:
            (root / "archive" / f["key"]).unlink()
        d.unlink()
    for p in (root / "archive").rglob("_checkpoint/*"):
        p.unlink()
    assert main(args) == 1
    report = orjson.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert categories(report) == {"truncated"}
    assert any(c["source"].startswith("offsite:") for c in report["checkpoints"])


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


def _validate_default(root: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, dict]:  # type: ignore[type-arg]
    """validate as a scheduled job runs it: no --no-cache, nothing but the keys."""
    code = main(["validate", str(root / "archive"), "--public-key", str(root / "keys"), "--json", *extra])
    return code, orjson.loads(capsys.readouterr().out.strip().splitlines()[-1])


def _flip_keep_mtime(f: Path) -> None:
    st = f.stat()
    raw = f.read_bytes()
    f.write_bytes(raw[:100] + bytes([raw[100] ^ 1]) + raw[101:])
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))  # touch -r


def test_finding1_a_byte_flipped_with_its_mtime_restored_is_caught_on_the_next_run(
    arch: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    code, first = _validate_default(arch, capsys)
    assert code == 0 and first["files_read"] == len(files(arch))
    f = files(arch)[3]
    _flip_keep_mtime(f)
    code, second = _validate_default(arch, capsys)
    assert code == 1 and categories(second) == {"modified"}
    assert second["files_read"] == len(files(arch)), "every run reads every file"


def test_finding2_a_clean_copy_validated_first_does_not_vouch_for_a_tampered_one(
    built: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(built, a)
    shutil.copytree(built, b)  # copytree keeps mtimes: both copies look alike by metadata
    for p in (b / "archive").rglob("*.json.gz"):
        p.chmod(0o644)
    _flip_keep_mtime(files(b)[5])
    assert _validate_default(a, capsys)[0] == 0
    code, report = _validate_default(b, capsys)
    assert code == 1 and categories(report) == {"modified"}


@pytest.fixture(scope="module")
def built_live(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("live")
    asyncio.run(build_archive(root, events=1500, max_events=400, digests=2, live=True))
    return root


def _forge_file(root: Path, stamp: str, name_from: Path) -> Path:
    writer, tracker = name_from.name.split("_")[:2]
    forged = name_from.with_name(f"{writer}_{tracker}_{stamp}Z_{'9' * 20}-{'9' * 20}.json.gz")
    forged.write_bytes(name_from.read_bytes())
    return forged


def test_finding3_a_far_future_file_on_a_live_chain_is_unlisted_not_pending(
    built_live: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    import datetime as dt

    arch = tmp_path / "live"
    shutil.copytree(built_live, arch)
    assert not orjson.loads(digests(arch)[-1].read_bytes())["chain_end"]

    code, report = run_validate(arch, capsys)
    assert code == 0, report["findings"]
    pending = report["counts"]["pending"]  # files closed after the newest digest
    now = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M")
    near = _forge_file(arch, now, files(arch)[0])
    code, report = run_validate(arch, capsys)
    assert code == 0, report["findings"]
    assert report["counts"]["pending"] == pending + 1, "a file of the current interval is pending"
    near.unlink()
    far = _forge_file(arch, "20991231T2359", files(arch)[0])
    code, report = run_validate(arch, capsys)
    assert code == 1 and categories(report) == {"unlisted"}
    assert [f["key"] for f in report["findings"]] == [str(far.relative_to(arch / "archive"))]


def _resign_everything(root: Path, signer: object) -> None:
    """What an insider with the archive host does: a new key, every digest and checkpoint
    re-signed with it, each link rewritten so the chain holds together."""
    from daemon.integrity.checkpoint import Checkpoint, Signer

    assert isinstance(signer, Signer)
    prev = None
    for d in digests(root):
        doc = orjson.loads(d.read_bytes())
        doc.pop("signature")
        text = doc["checkpoint"][: doc["checkpoint"].find("\n\n") + 1]
        doc["checkpoint"] = Checkpoint.parse(text).sign([signer])
        if prev is not None:
            doc["previous"].update(prev)
        data = sign_digest(doc, signer)
        d.chmod(0o644)
        d.write_bytes(data)
        signed = orjson.loads(data)
        prev = {"sha256": hashlib.sha256(data).hexdigest(), "signature": signed["signature"]["value"]}
    for p in (root / "archive").rglob("_checkpoint/*"):
        note = p.read_text()
        p.chmod(0o644)
        p.write_text(Checkpoint.parse(note[: note.find("\n\n") + 1]).sign([signer]))


def _config_file(root: Path, extra: str = "") -> Path:
    cfg = root / "tk.yaml"
    cfg.write_text(
        f"writer_id: w1\njournal: {{dir: {root}/journal}}\n"
        f"stores: {{local: {{type: local, path: {root}/archive}}}}\n"
        f"integrity: {{keys_dir: {root}/keys, state_dir: {root}/state{extra}}}\n"
    )
    return cfg


def test_finding4_swapped_keys_with_everything_resigned_fail_against_the_pinned_trust_file(
    arch: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    trust = tmp_path / "offsite" / "trust.json"
    trust.parent.mkdir()
    assert main(["keys", "export-public", "--keys-dir", str(arch / "keys"), "--out", str(trust)]) == 0
    capsys.readouterr()
    shutil.rmtree(arch / "keys")
    _resign_everything(arch, KeyStore(arch / "keys").generate("trailkeeper"))
    cfg = _config_file(arch)
    args = ["validate", "-c", str(cfg), "--json"]
    # The attack is complete: the daemon's own keys directory now vouches for it...
    assert main([*args, "--trust-keys-dir"]) == 0
    err = capsys.readouterr().err
    assert "WARNING" in err and "archive host" in err
    # ...and validation without pinned keys refuses to run rather than trust that directory.
    assert main(args) == 2
    assert "no pinned keys" in capsys.readouterr().err
    # The trust file from before the swap catches it, through the config and no key flag at all.
    cfg = _config_file(arch, f", trust_file: {trust}")
    assert main(["validate", "-c", str(cfg), "--json"]) == 1
    report = orjson.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # Every digest is refused, so the files they list count as inserted too.
    assert "unknown-key" in categories(report) and report["counts"].get("valid", 0) == 0
    assert {f["key"] for f in report["findings"] if f["category"] == "unknown-key"} >= {
        str(d.relative_to(arch / "archive")) for d in digests(arch)
    }
    assert report["trust"].startswith("trust file")
    assert main([*args, "--trust", str(trust)]) == 1
    capsys.readouterr()


def test_finding4_an_attackers_key_added_beside_the_real_one_is_not_trusted(
    arch: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    trust = tmp_path / "trust.json"
    assert main(["keys", "export-public", "--keys-dir", str(arch / "keys"), "--out", str(trust)]) == 0
    capsys.readouterr()
    evil = KeyStore(arch / "keys").generate("trailkeeper", activate=False)
    d = digests(arch)[2]
    doc = orjson.loads(d.read_bytes())
    doc.pop("signature")
    doc["files"][0]["records"] += 0  # any rewrite the attacker likes, signed with their key
    d.write_bytes(sign_digest(doc, evil))
    code, report = run_validate(arch, capsys)  # --public-key keys/: the directory vouches for it
    assert "unknown-key" not in categories(report)
    code = main(["validate", str(arch / "archive"), "--trust", str(trust), "--json"])
    report = orjson.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 1 and "unknown-key" in categories(report)


def test_a_retired_key_signing_after_its_rotation_is_refused(
    arch: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    import time as _time

    ks = KeyStore(arch / "keys")
    old = ks.active()
    assert old is not None
    hist = ks.history()
    kid = old.key_id.hex()
    # Retired (on paper) a day before the archive was written: its digests are out of window.
    hist[kid]["retired"] = _time.time() - 86400 * 2
    hist[kid]["created"] = _time.time() - 86400 * 3
    (arch / "keys" / "history.json").write_bytes(orjson.dumps(hist))
    trust = tmp_path / "trust.json"
    assert main(["keys", "export-public", "--keys-dir", str(arch / "keys"), "--out", str(trust)]) == 0
    capsys.readouterr()
    code = main(["validate", str(arch / "archive"), "--trust", str(trust), "--json"])
    report = orjson.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 1 and "unknown-key" in categories(report)
    assert all(
        "outside the window" in f["detail"] for f in report["findings"] if f["category"] == "unknown-key"
    )


def test_finding7_a_file_moved_to_another_key_is_named_moved(
    arch: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = files(arch)[4]
    dest = f.with_name("x" + f.name)
    f.rename(dest)
    code, report = run_validate(arch, capsys)
    assert code == 1 and categories(report) == {"moved"}
    keys = {x["key"] for x in report["findings"]}
    assert keys == {str(f.relative_to(arch / "archive")), str(dest.relative_to(arch / "archive"))}
    # The tree is rebuilt from the moved bytes, so nothing after it is reported.
    assert report["counts"]["valid"] == len(files(arch)) - 1 + len(digests(arch))


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
