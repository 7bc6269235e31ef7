"""integrity.key_file: a signing key held outside the data volume (a mounted Kubernetes Secret).

The key file is only read; what the daemon must remember about it (its public half, when it
started and stopped signing) goes to integrity.keys_dir on the data volume, so a key rotated
in the Secret still validates what it signed and `keys export-public` pins both.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, generate_private_key
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from daemon.config import ConfigError, parse_config
from daemon.integrity.checkpoint import Signer
from daemon.integrity.keys import KeyStore
from daemon.integrity.runtime import Integrity, current_signer, load_signer
from daemon.integrity.trust import export_trust
from daemon.stores.local import LocalStore, LocalStoreConfig

ROOT = Path(__file__).resolve().parents[2]


def pkcs8_pem(key: Ed25519PrivateKey) -> bytes:
    """What `openssl genpkey -algorithm ed25519` writes."""
    return key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())


def config_text(tmp: Path, key_file: Path | str) -> str:
    return (
        f"journal: {{dir: {tmp}/journal}}\n"
        f"stores: {{local: {{type: local, path: {tmp}/archive}}}}\n"
        f'integrity: {{key_file: "{key_file}", keys_dir: {tmp}/keys}}\n'
    )


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as err:
        parse_config(text, "test.yaml")
    return err.value.problems


def test_an_empty_key_file_is_a_config_error_naming_the_yaml_path(tmp_path: Path) -> None:
    key = tmp_path / "signing-key.pem"
    key.write_bytes(b"")
    (problem,) = problems(config_text(tmp_path, key))
    assert problem.startswith("integrity.key_file:")
    assert "is empty" in problem and "openssl genpkey -algorithm ed25519" in problem


def test_a_missing_key_file_is_a_config_error_naming_the_yaml_path(tmp_path: Path) -> None:
    (problem,) = problems(config_text(tmp_path, tmp_path / "nope.pem"))
    assert problem.startswith("integrity.key_file:") and "No such file" in problem


@pytest.mark.parametrize("kind", ["garbage", "ecdsa", "openssh"])
def test_a_key_file_of_the_wrong_format_says_which_format_is_wanted(tmp_path: Path, kind: str) -> None:
    key = tmp_path / "signing-key.pem"
    if kind == "garbage":
        key.write_text("not a key\n")
    elif kind == "ecdsa":
        ec = generate_private_key(SECP256R1())
        key.write_bytes(ec.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    else:
        ed = Ed25519PrivateKey.generate()
        key.write_bytes(ed.private_bytes(Encoding.PEM, PrivateFormat.OpenSSH, NoEncryption()))
    (problem,) = problems(config_text(tmp_path, key))
    assert problem.startswith("integrity.key_file:")
    assert "Ed25519" in problem or "PEM" in problem, problem


def test_an_empty_key_file_path_means_none(tmp_path: Path) -> None:
    assert parse_config(config_text(tmp_path, "")).integrity.key_file is None


def test_a_key_made_by_openssl_is_accepted(tmp_path: Path) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed")
    key = tmp_path / "signing-key.pem"
    subprocess.run([openssl, "genpkey", "-algorithm", "ed25519", "-out", str(key)], check=True, timeout=30)
    config = parse_config(config_text(tmp_path, key))
    assert load_signer(config).name == "trailkeeper"


def test_the_key_files_public_half_and_its_rotation_are_kept_on_the_data_volume(tmp_path: Path) -> None:
    key = tmp_path / "secrets" / "signing-key.pem"
    key.parent.mkdir()
    first = Ed25519PrivateKey.generate()
    key.write_bytes(pkcs8_pem(first))
    key.chmod(0o400)
    config = parse_config(config_text(tmp_path, key))
    signer = load_signer(config)
    expected = Signer("trailkeeper", first)
    assert signer.verifier.vkey() == expected.verifier.vkey()
    # Nothing is written beside the key file (a read-only Secret mount); keys_dir holds the record.
    assert sorted(p.name for p in key.parent.iterdir()) == ["signing-key.pem"]
    store = KeyStore(tmp_path / "keys")
    assert not list(store.dir.glob("*.key")), "the private key must not be copied to the volume"
    (info,) = store.all_keys()
    assert info.active and not info.has_private and info.vkey == expected.verifier.vkey()
    # Starting again with the same key changes nothing.
    history = (store.dir / "history.json").read_bytes()
    load_signer(config)
    assert (store.dir / "history.json").read_bytes() == history

    # The Secret is rotated: the next digest signs with the new key, and the old one is retired.
    second = Ed25519PrivateKey.generate()
    key.chmod(0o600)
    key.write_bytes(pkcs8_pem(second))
    rotated = current_signer(config)
    assert rotated.verifier.vkey() == Signer("trailkeeper", second).verifier.vkey()
    trust = export_trust(store)
    status = {k["vkey"]: (k["status"], k["valid_until"]) for k in trust["keys"]}
    assert status[expected.verifier.vkey()][0] == "retired" and status[expected.verifier.vkey()][1]
    assert status[rotated.verifier.vkey()] == ("active", None)
    assert [r["retired"] for r in trust["rotations"]] == [signer.key_id.hex()]


async def test_a_key_file_that_vanished_after_loading_stops_start_with_a_config_error(
    tmp_path: Path,
) -> None:
    key = tmp_path / "signing-key.pem"
    key.write_bytes(pkcs8_pem(Ed25519PrivateKey.generate()))
    config = parse_config(config_text(tmp_path, key))
    key.write_bytes(b"")
    stores = {"local": LocalStore("local", LocalStoreConfig(path=tmp_path / "archive"))}
    with pytest.raises(ConfigError) as err:
        await Integrity(config, stores, "w1").start()  # type: ignore[arg-type]
    (problem,) = err.value.problems
    assert problem.startswith("integrity.key_file:") and "is empty" in problem


@pytest.mark.parametrize("command", ["check-config", "run"])
def test_check_config_and_run_report_a_bad_key_file_in_one_line_without_a_traceback(
    tmp_path: Path, command: str
) -> None:
    key = tmp_path / "signing-key.pem"
    key.write_bytes(b"")
    cfg = tmp_path / "trailkeeper.yaml"
    cfg.write_text(
        config_text(tmp_path, key) + 'ingest: {http: {listen: "127.0.0.1:0"}}\nmetrics: {listen: null}\n'
    )
    argv = [command, str(cfg)] if command == "check-config" else [command, "--config", str(cfg)]
    proc = subprocess.run(
        [sys.executable, "-m", "daemon", *argv], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert proc.returncode == (1 if command == "check-config" else 2), proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"  - integrity.key_file: {key} is empty" in proc.stderr, proc.stderr
