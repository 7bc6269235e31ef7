"""``trailkeeper witness init | add-log | serve | status``. Wire with ``register(subparsers)``.

User errors (a missing or foreign directory, a malformed key, a port in use)
print one line on stderr naming the input and what to do, and exit 2.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime as dt
import os
import signal
import stat
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from daemon.integrity.checkpoint import NoteError, parse_vkey
from daemon.integrity.cosignature import Cosigner, parse_cosigner_vkey
from daemon.integrity.keys import KeyError_, load_private_pem
from daemon.witness import db_path, key_path
from daemon.witness.state import StateError, WitnessState, origin_hash

DEFAULT_LISTEN = "127.0.0.1:7380"


class UserError(Exception):
    """Bad input on the command line; the message says what to do."""


# --- keys ---------------------------------------------------------------------------------------


def _cosigner(name: str, key: Ed25519PrivateKey) -> Cosigner:
    cosigner = Cosigner(name, key)
    try:
        parse_cosigner_vkey(cosigner.key.vkey())  # the name rules of a cosigner key
    except NoteError as exc:
        raise UserError(f"--name {name!r}: {exc} (use e.g. witness.example.org/w1)") from exc
    return cosigner


def _write_key(path: Path, key: Ed25519PrivateKey) -> None:
    pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    # O_EXCL: a witness key is never overwritten; a new key is a new witness.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, pem)
        os.fsync(fd)
    finally:
        os.close(fd)


def _load_key(path: Path) -> Ed25519PrivateKey:
    try:
        mode = path.stat().st_mode
        data = path.read_bytes()
    except OSError as exc:
        raise UserError(f"{path}: cannot read the witness key: {exc.strerror}") from exc
    if mode & 0o077:
        raise UserError(f"{path} has mode {stat.S_IMODE(mode):04o}; the witness key must be private: "
                        f"chmod 600 {path}")
    return load_private_pem(data, str(path))


def _open(directory: Path) -> tuple[WitnessState, Cosigner]:
    """The state and key of an initialised witness directory; both must agree on the identity."""
    if not db_path(directory).exists():
        raise UserError(f"{directory} is not an initialised witness directory (no {db_path(directory).name}):"
                        f" run `trailkeeper witness init --dir {directory} --name NAME`")
    state = WitnessState.open(db_path(directory))
    try:
        name, vkey = state.identity()
        cosigner = Cosigner(name, _load_key(key_path(directory)))
        if cosigner.key.vkey() != vkey:
            raise UserError(f"{key_path(directory)} is not the key of this witness database ({vkey}); "
                            "restore the original key file")
    except BaseException:
        state.close()
        raise
    return state, cosigner


# --- commands -----------------------------------------------------------------------------------


def _without_key(dp: Path) -> str:
    """What to do with a database whose key is gone: only one that never cosigned may be dropped."""
    state = WitnessState.open(dp)
    try:
        cosigned = state.all_held()
    finally:
        state.close()
    if not cosigned:
        return f"this witness never cosigned anything, so delete {dp} and run init again"
    return (f"the key of a witness that cosigned {len(cosigned)} log(s) is lost: restore it, or retire "
            "this witness (publish a new --name and key)")


def _cmd_init(args: argparse.Namespace) -> int:
    directory = Path(args.dir)
    kp, dp = key_path(directory), db_path(directory)
    if dp.exists():
        if not kp.exists():
            raise UserError(f"{dp} exists but {kp} does not: {_without_key(dp)}")
        state, cosigner = _open(directory)
        state.close()
        if args.name != cosigner.name:
            raise UserError(f"{directory} holds the witness {cosigner.name!r}, not {args.name!r}; a new "
                            "name is a new witness: use another --dir")
        print(cosigner.key.vkey())
        return 0
    if kp.exists():
        raise UserError(
            f"{kp} exists but {dp} does not: the witness state is lost. A witness that forgot what it "
            f"cosigned must not restart: move {kp} aside and init a new witness with a new --name"
        )
    cosigner = _cosigner(args.name, Ed25519PrivateKey.generate())
    if not directory.exists():
        directory.mkdir(parents=True, mode=0o700)
        os.chmod(directory, 0o700)  # mkdir's mode is masked by the umask
    elif not directory.is_dir():
        raise UserError(f"--dir {directory} is not a directory")
    # The database first: one left without a key never cosigned, so init can say to delete it.
    WitnessState.create(dp, cosigner.name, cosigner.key.vkey()).close()
    _write_key(kp, cosigner.private)
    print(cosigner.key.vkey())
    return 0


def _cmd_add_log(args: argparse.Namespace) -> int:
    pattern: str = args.origin if args.origin is not None else args.origin_prefix
    flag = "--origin" if args.origin is not None else "--origin-prefix"
    if not pattern or any(c.isspace() or ord(c) < 0x20 for c in pattern):
        raise UserError(f"{flag} {pattern!r} must be non-empty, without spaces or control characters")
    try:
        parse_vkey(args.vkey)
    except NoteError as exc:
        raise UserError(f"--vkey: {exc}; pass the log's verifier key (name+keyid+base64, as printed by "
                        "`trailkeeper keys export-public`)") from exc
    state, _ = _open(Path(args.dir))
    try:
        added = state.add_log(pattern, args.vkey, prefix=args.origin is None)
    finally:
        state.close()
    what = f"origins starting with {pattern!r}" if args.origin is None else f"origin {pattern!r}"
    print(f"{'trusting' if added else 'already trusted'}: {args.vkey.strip()} for {what}")
    return 0


def _split_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise UserError(f"--listen {listen!r}: expected HOST:PORT, e.g. {DEFAULT_LISTEN}")
    return host.strip("[]"), int(port)


async def _serve(state: WitnessState, cosigner: Cosigner, host: str, port: int) -> None:
    from daemon.telemetry import get_logger
    from daemon.witness.server import Witness, WitnessServer

    log = get_logger("witness")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = WitnessServer(Witness(state, cosigner), host, port)
    try:
        bound = await server.start()
    except OSError as exc:
        raise UserError(f"--listen {host}:{port}: cannot listen: {exc.strerror}") from exc
    log.info("witness.listening", host=host, port=bound, vkey=cosigner.key.vkey())
    try:
        await stop.wait()
    finally:
        await server.stop()
        log.info("witness.stopped")


def _cmd_serve(args: argparse.Namespace) -> int:
    from daemon.telemetry import configure_logging

    host, port = _split_listen(args.listen)
    state, cosigner = _open(Path(args.dir))
    configure_logging(args.log_level, "json")
    try:
        asyncio.run(_serve(state, cosigner, host, port))
    finally:
        state.close()
    return 0


def _iso(ts: int) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _cmd_status(args: argparse.Namespace) -> int:
    state, cosigner = _open(Path(args.dir))
    try:
        held, trusted, evidence = state.all_held(), state.trusted(), state.evidence_counts()
    finally:
        state.close()
    logs = [
        {
            "origin": h.origin,
            "origin_hash": origin_hash(h.origin),
            "size": h.size,
            "root": base64.b64encode(h.root).decode(),
            "cosigned_at": _iso(h.timestamp),
            "evidence": evidence.get(h.origin, 0),
        }
        for h in held
    ]
    trust = [
        {("origin_prefix" if t.prefix else "origin"): t.pattern, "vkeys": list(t.vkeys)} for t in trusted
    ]
    if args.json:
        doc = {"name": cosigner.name, "vkey": cosigner.key.vkey(), "trusted": trust, "logs": logs}
        print(orjson.dumps(doc).decode())
        return 0
    print(f"witness {cosigner.key.vkey()}")
    for t in trusted:
        for v in t.vkeys:
            print(f"trusted {'prefix ' if t.prefix else 'origin '}{t.pattern}  {v}")
    if not logs:
        print("no checkpoint cosigned yet")
    for entry in logs:
        extra = f"  evidence {entry['evidence']}" if entry["evidence"] else ""
        print(f"{entry['origin']}  size {entry['size']}  root {entry['root']}  "
              f"cosigned {entry['cosigned_at']}{extra}")
    return 0


# --- wiring -------------------------------------------------------------------------------------


def _guard(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except (UserError, StateError, KeyError_) as exc:
            print(f"error: {exc}", file=sys.stderr)
        except OSError as exc:
            print(f"error: {exc.filename or args.dir}: {exc.strerror}", file=sys.stderr)
        return 2

    return run


def register(subparsers: Any) -> None:
    """Add ``witness init | add-log | serve | status`` to the trailkeeper CLI."""
    witness = subparsers.add_parser("witness", help="run a C2SP tlog-witness that cosigns checkpoints")
    actions = witness.add_subparsers(dest="action", required=True)

    init = actions.add_parser("init", help="create the witness key and database; print the witness vkey")
    init.add_argument("--dir", required=True, help="witness directory (created, mode 0700)")
    init.add_argument("--name", required=True, help="cosigner name, permanent (e.g. witness.example.org/w1)")
    init.set_defaults(func=_guard(_cmd_init))

    add = actions.add_parser("add-log", help="trust a log key for an origin (repeat to add keys)")
    add.add_argument("--dir", required=True)
    which = add.add_mutually_exclusive_group(required=True)
    which.add_argument("--origin", help="the checkpoint origin, exactly")
    which.add_argument("--origin-prefix", help="every origin starting with this (e.g. trailkeeper/)")
    add.add_argument("--vkey", required=True, help="the log's verifier key (name+keyid+base64)")
    add.set_defaults(func=_guard(_cmd_add_log))

    serve = actions.add_parser("serve", help="answer add-checkpoint requests until SIGTERM/SIGINT")
    serve.add_argument("--dir", required=True)
    serve.add_argument("--listen", default=DEFAULT_LISTEN, help=f"HOST:PORT (default {DEFAULT_LISTEN})")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serve.set_defaults(func=_guard(_cmd_serve))

    status = actions.add_parser("status", help="the witness vkey and the latest cosigned size per origin")
    status.add_argument("--dir", required=True)
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=_guard(_cmd_status))
