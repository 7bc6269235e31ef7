"""``trailkeeper keys | validate | checkpoint | prove | verify-proof``. Wire with ``register(subparsers)``."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from daemon.config import Config, ConfigError, load_config
from daemon.integrity.checkpoint import NoteError, Verifier
from daemon.integrity.keys import KeyError_, KeyStore, load_verifiers
from daemon.integrity.trust import Trust
from daemon.stores.base import Store, StoreError
from daemon.stores.local import LocalStore, LocalStoreConfig
from daemon.telemetry import configure_cli_logging
from daemon.units import parse_duration


def _config(args: argparse.Namespace) -> Config:
    return load_config(getattr(args, "config", None))


def _keystore(args: argparse.Namespace) -> KeyStore:
    return KeyStore(Path(args.keys_dir) if args.keys_dir else _config(args).integrity.keys_dir)


def _cmd_keys(args: argparse.Namespace) -> int:
    ks = _keystore(args)
    if args.action == "generate":
        name = args.name or _config(args).integrity.origin
        if ks.active() is not None and not args.force:
            print(f"{ks.dir} already has an active key; use `keys rotate` (or --force)", file=sys.stderr)
            return 1
        s = ks.generate(name)
        print(s.verifier.vkey())
    elif args.action == "rotate":
        new, old = ks.rotate()
        print(f"active key is now {new.key_id.hex()} (was {old}); restart the daemon to sign with it")
        print(new.verifier.vkey())
    elif args.action == "list":
        for k in ks.all_keys():
            state = "active" if k.active else ("retired" if not k.has_private else "inactive")
            print(f"{k.key_id}  {state:8}  {k.vkey}")
    elif args.format == "vkeys":
        for k in ks.all_keys():
            print(k.vkey)
    else:
        from daemon.integrity.trust import export_trust

        if not ks.all_keys():
            raise KeyError_(f"{ks.dir}: no keys to export (the daemon makes one on first start)")
        witnesses = []
        if not args.keys_dir or args.config:
            witnesses = [{"url": str(w.url), "vkey": w.vkey} for w in _config(args).integrity.witnesses]
        data = orjson.dumps(export_trust(ks, witnesses), option=orjson.OPT_INDENT_2) + b"\n"
        if args.out:
            Path(args.out).write_bytes(data)
            print(f"wrote {args.out}: keep it off the archive host and pass it to `validate --trust`")
        else:
            sys.stdout.write(data.decode())
    return 0


def _verifiers(args: argparse.Namespace, config: Config | None) -> list[Verifier]:
    """Keys for prove: those given, else the keys directory (proofs are checked again offline)."""
    sources = list(args.public_key or [])
    if not sources and config is not None and config.integrity.keys_dir.exists():
        sources = [str(config.integrity.keys_dir)]
    if not sources:
        raise KeyError_("no public keys: pass --public-key (a vkey, a file of vkeys or a keys directory)")
    return load_verifiers(sources)


def _trust(args: argparse.Namespace, config: Config) -> Trust:
    """What validate trusts: a trust file or keys named on the command line, never silently
    the daemon's own writable keys directory. Raises KeyError_ saying how to pin keys."""
    from daemon.integrity.trust import Trust, TrustedKey, is_trust_file, load_trust_file

    parts: list[Trust] = []
    for path in args.trust or []:
        parts.append(load_trust_file(Path(path)))
    for src in args.public_key or []:
        p = Path(src)
        if p.is_file() and is_trust_file(p):
            parts.append(load_trust_file(p))
            continue
        if p.is_dir() and p.resolve() == config.integrity.keys_dir.resolve():
            print(
                f"warning: --public-key {src} is the daemon's own keys directory: anyone who can write "
                "there can make validation pass; pin a trust file instead",
                file=sys.stderr,
            )
        parts.append(Trust([TrustedKey(v) for v in load_verifiers([src])], f"--public-key {src}"))
    if not parts and config.integrity.trust_file is not None:
        parts.append(load_trust_file(config.integrity.trust_file))
    if not parts and args.trust_keys_dir:
        kd = config.integrity.keys_dir
        print(
            f"WARNING: trusting every key in {kd}, a directory on the archive host that the daemon "
            "writes: an insider who swaps or adds a key there passes this validation. Pin the keys with "
            "`trailkeeper keys export-public --out trust.json` kept elsewhere, and `--trust trust.json`.",
            file=sys.stderr,
        )
        return Trust([TrustedKey(v) for v in load_verifiers([str(kd)])], f"keys directory {kd}", False)
    if not parts:
        raise KeyError_(
            "no pinned keys to validate against: pass --trust FILE (written by `trailkeeper keys "
            "export-public` and kept off the archive host), set integrity.trust_file, or pass "
            f"--public-key. Keys in {config.integrity.keys_dir} are not trusted on their own; add "
            "--trust-keys-dir to use them anyway."
        )
    keys = [k for t in parts for k in t.keys]
    return Trust(keys, ", ".join(t.source for t in parts), True, [w for t in parts for w in t.witnesses])


def _store_for(args: argparse.Namespace, config: Config) -> tuple[Store, str]:
    from daemon.stores import build_store

    if args.target and args.target.startswith("s3://"):
        return _s3_target(args, config)
    if args.target:
        return LocalStore(
            "validate", LocalStoreConfig(path=Path(args.target), fsync=False)
        ), args.prefix or ""
    name = args.store or config.trackers[0].store
    if name not in config.stores:
        raise ConfigError("--store", [f"no store named {name!r} in stores"])
    return build_store(name, config.stores[name]), args.prefix if args.prefix is not None else ""


def _s3_target(args: argparse.Namespace, config: Config) -> tuple[Store, str]:
    """``s3://bucket/prefix``: the bucket with the settings (endpoint, credentials, region)
    of ``--store`` or of the config's first s3 store; with none, the usual AWS chain."""
    from daemon.stores import build_store
    from daemon.stores.s3 import S3StoreConfig

    bucket, _, prefix = args.target.removeprefix("s3://").partition("/")
    base: S3StoreConfig | None = None
    if args.store:
        chosen = config.stores.get(args.store)
        if not isinstance(chosen, S3StoreConfig):
            raise ConfigError("--store", [f"no s3 store named {args.store!r} in stores"])
        base = chosen
    else:
        base = next((sc for sc in config.stores.values() if isinstance(sc, S3StoreConfig)), None)
    settings = (
        base.model_copy(update={"bucket": bucket, "prefix": ""})
        if base is not None
        else S3StoreConfig(type="s3", bucket=bucket)
    )
    return build_store("validate", settings), (args.prefix if args.prefix is not None else prefix)


async def _validate(args: argparse.Namespace) -> int:
    from daemon.integrity.cosignature import parse_cosigner_vkey
    from daemon.integrity.validate import Validator
    from daemon.stores import build_store

    config = _config(args)
    trust = _trust(args, config)
    store, prefix = _store_for(args, config)
    trusted = [Path(p).read_text() for p in args.trusted_checkpoint or []]  # noqa: ASYNC240 - tiny files, CLI
    since = dt.datetime.fromisoformat(args.since.replace("Z", "+00:00")).timestamp() if args.since else None
    ic = config.integrity
    vkeys = list(args.witness_key or []) + [w.vkey for w in ic.witnesses] + [
        str(w["vkey"]) for w in trust.witnesses if w.get("vkey")
    ]
    witness_keys = list({k.key_id: k for k in (parse_cosigner_vkey(v) for v in vkeys)}.values())
    urls = list(
        dict.fromkeys(
            list(args.witness or [])
            + [str(w.url) for w in ic.witnesses]
            + [str(w["url"]) for w in trust.witnesses if w.get("url")]
        )
    )
    extra = [] if args.target else [build_store(n, config.stores[n]) for n in ic.checkpoint_stores]
    try:
        report = await Validator(
            store,
            prefix,
            trust,
            trusted=trusted,
            max_age=parse_duration(args.max_age) if args.max_age else None,
            since=since,
            workers=args.workers,
            progress=not args.json and not args.quiet and sys.stderr.isatty(),
            digest_interval=ic.digest_interval,
            witness_keys=witness_keys,
            witnesses_required=args.witnesses,
            witness_urls=urls,
            checkpoint_stores=extra,
        ).run()
    finally:
        await store.close()
        for s in extra:
            await s.close()
    if not args.target:
        # The daemon's own archive: keep the outcome where GET /v1/admin/integrity shows it.
        from daemon.integrity.validate import save_last_validation

        state = ic.state_dir or config.journal.dir / "integrity"
        try:
            save_last_validation(state, report, f"{store.name}:{prefix}", time.time())
        except OSError as exc:
            print(f"note: cannot record this run in {state}: {exc.strerror}", file=sys.stderr)
    if args.json:
        print(orjson.dumps(report.to_json()).decode())
    else:
        for f in report.findings:
            print(f"{f.category:14} {f.key}  {f.detail}")
        counts = ", ".join(f"{n} {c}" for c, n in report.counts().items())
        witnessed = sum(1 for c in report.checkpoints if c.get("cosigned_by"))
        print(
            f"{'OK' if report.ok else 'FAILED'}: {counts}; read {report.files_read} files "
            f"({report.bytes_read} bytes); keys from {report.trust}; "
            f"{len(report.checkpoints)} published checkpoint(s), {witnessed} cosigned"
        )
    return 0 if report.ok else 1


async def _checkpoints(args: argparse.Namespace) -> list[dict[str, str]]:
    """Each chain's latest published (and cosigned) checkpoint: from the store, else local state."""
    from daemon.archive.keys import CHECKPOINT_DIR
    from daemon.integrity.digest import load_chain_state
    from daemon.stores import build_store

    config = _config(args)
    found: list[dict[str, str]] = []
    for t in config.trackers:
        if not t.verify or (args.tracker and t.name != args.tracker):
            continue
        store = build_store(t.store, config.stores[t.store])
        base = "/".join(p for p in (t.prefix.strip("/"), t.name, CHECKPOINT_DIR) if p) + "/"
        try:
            async for o in store.list(base):
                note = (await store.get(o.key)).decode("utf-8", "replace")
                writer = o.key.rsplit("/", 1)[-1]
                found.append({"tracker": t.name, "writer": writer, "key": o.key, "note": note})
        except StoreError as exc:
            print(f"warning: {t.store}: {exc}; showing this host's own chain state", file=sys.stderr)
        finally:
            await store.close()
        if not any(f["tracker"] == t.name for f in found):
            state = config.integrity.state_dir or config.journal.dir / "integrity"
            for d in sorted((state / t.name).glob("*/chain.json")) if (state / t.name).exists() else []:
                doc = load_chain_state(d.parent)
                note = str(doc.get("published") or (doc.get("last") or {}).get("checkpoint") or "")
                if note:
                    found.append({"tracker": t.name, "writer": d.parent.name, "key": str(d), "note": note})
    return found


def _cmd_checkpoint(args: argparse.Namespace) -> int:
    from daemon.integrity.checkpoint import Checkpoint

    found = asyncio.run(_checkpoints(args))
    if not found:
        print("no checkpoint yet: the daemon publishes one at start and every interval", file=sys.stderr)
        return 1
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        for f in found:
            (out / f"{f['tracker']}_{f['writer']}.checkpoint").write_text(f["note"])
            print(f"wrote {out / (f['tracker'] + '_' + f['writer'] + '.checkpoint')}")
    elif args.json:
        print(orjson.dumps(found).decode())
    else:
        for i, f in enumerate(found):
            cp = Checkpoint.parse(f["note"][: f["note"].find("\n\n") + 1])
            if i:
                print()
            print(f"# {f['tracker']}/{f['writer']}: {cp.size} records, from {f['key']}")
            sys.stdout.write(f["note"])
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    return asyncio.run(_validate(args))


async def _prove(args: argparse.Namespace) -> int:
    from daemon.app import resolve_writer_id
    from daemon.archive.fileformat import read_records
    from daemon.integrity import prove
    from daemon.integrity.tree import TreeLog
    from daemon.stores import build_store

    config = _config(args)
    tracker = next((t for t in config.trackers if t.name == args.tracker), None)
    if tracker is None:
        raise ConfigError("--tracker", [f"no tracker named {args.tracker!r}"])
    writer = args.writer or resolve_writer_id(config)
    state = config.integrity.state_dir or config.journal.dir / "integrity"
    tree = TreeLog(state / tracker.name / writer).load_sync()
    doc: dict[str, Any]
    if args.consistency:
        old = Path(args.consistency).read_text()  # noqa: ASYNC240 - a tiny file, CLI
        doc = prove.consistency(tree, old, _verifiers(args, config))
    else:
        store = build_store(tracker.store, config.stores[tracker.store])
        try:
            keys = [args.file] if args.file else [f.key for f in reversed(tree.files)]
            doc = {}
            for key in keys:
                records = read_records(await store.get(key))
                try:
                    doc = prove.inclusion_from_records(tree, args.event_id, {key: records})
                    break
                except prove.ProveError as exc:
                    if "none of the files" not in str(exc):
                        raise
            if not doc:
                raise prove.ProveError(f"event {args.event_id} is not in tracker {tracker.name}'s files")
        finally:
            await store.close()
    print(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())
    return 0


def _cmd_prove(args: argparse.Namespace) -> int:
    return asyncio.run(_prove(args))


def _cmd_verify_proof(args: argparse.Namespace) -> int:
    from daemon.integrity.prove import load_proof, verify_proof

    try:
        print(verify_proof(load_proof(Path(args.file)), load_verifiers(args.public_key)))
    except (ValueError, KeyError) as exc:
        print(f"proof does not verify: {exc}", file=sys.stderr)
        return 1
    return 0


def _guard(func: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        from daemon.integrity.prove import ProveError

        configure_cli_logging()
        try:
            result: int = func(args)
            return result
        except ConfigError as exc:
            print(exc.render(), file=sys.stderr)
        except (KeyError_, NoteError, ProveError, StoreError, OSError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
        return 2

    return run


def register(subparsers: Any) -> None:
    """Add ``keys``, ``validate``, ``checkpoint``, ``prove`` and ``verify-proof`` to the trailkeeper CLI."""
    keys = subparsers.add_parser("keys", help="manage the Ed25519 keys that sign digests")
    keys.add_argument("action", choices=["generate", "rotate", "list", "export-public"])
    keys.add_argument("--config", "-c")
    keys.add_argument("--keys-dir", help="default: integrity.keys_dir")
    keys.add_argument("--name", help="signer name for generate (default: integrity.origin)")
    keys.add_argument("--force", action="store_true", help="generate even if a key is active")
    keys.add_argument("--out", "-o", help="export-public: write the trust file here (default: stdout)")
    keys.add_argument(
        "--format",
        choices=["trust", "vkeys"],
        default="trust",
        help="export-public: a trust file (JSON, default) or bare vkey lines",
    )
    keys.set_defaults(func=_guard(_cmd_keys))

    val = subparsers.add_parser("validate", help="check digests, files and the tail of an archive")
    val.add_argument(
        "target",
        nargs="?",
        help="a local archive directory or s3://bucket/prefix (default: the config's store)",
    )
    val.add_argument("--config", "-c")
    val.add_argument("--store", help="a store name from the config (default: the first tracker's)")
    val.add_argument("--prefix", help="key prefix to validate under")
    val.add_argument(
        "--trust", action="append", help="trust file from `keys export-public` (default: trust_file)"
    )
    val.add_argument(
        "--public-key", action="append", help="vkey, file of vkeys, trust file or keys dir (repeat)"
    )
    val.add_argument(
        "--trust-keys-dir",
        action="store_true",
        help="trust integrity.keys_dir, which sits on the archive host (unsafe; says so loudly)",
    )
    val.add_argument("--witness-key", action="append", help="a witness's vkey (repeat; also from config)")
    val.add_argument("--witness", action="append", metavar="URL", help="ask this witness what it cosigned")
    val.add_argument(
        "--witnesses", type=int, help="cosignatures required on each chain's newest checkpoint (default 1)"
    )
    val.add_argument("--trusted-checkpoint", action="append", help="a signed checkpoint kept elsewhere")
    val.add_argument("--max-age", help="fail if a chain's newest digest is older (e.g. 2h)")
    val.add_argument("--since", help="read only files of digests ending after this ISO time")
    val.add_argument("--json", action="store_true")
    # Every run reads every file; the flag stays accepted for scripts written for older versions.
    val.add_argument("--no-cache", action="store_true", help=argparse.SUPPRESS)
    val.add_argument("--workers", type=int)
    val.add_argument("--quiet", "-q", action="store_true")
    val.set_defaults(func=_guard(_cmd_validate))

    cpt = subparsers.add_parser(
        "checkpoint", help="print each chain's latest signed (and cosigned) checkpoint, to keep elsewhere"
    )
    cpt.add_argument("--config", "-c")
    cpt.add_argument("--tracker", help="only this tracker")
    cpt.add_argument("--out", "-o", help="write one <tracker>_<writer>.checkpoint file per chain here")
    cpt.add_argument("--json", action="store_true")
    cpt.set_defaults(func=_guard(_cmd_checkpoint))

    prv = subparsers.add_parser("prove", help="print an inclusion (or consistency) proof as JSON")
    prv.add_argument("event_id", nargs="?", default="")
    prv.add_argument("--config", "-c")
    prv.add_argument("--tracker", default="default")
    prv.add_argument("--writer", help="default: this daemon's writer id")
    prv.add_argument("--file", help="the archive key holding the event (skips the search)")
    prv.add_argument("--consistency", metavar="OLD_CHECKPOINT", help="prove the log extends this")
    prv.add_argument("--public-key", action="append")
    prv.set_defaults(func=_guard(_cmd_prove))

    ver = subparsers.add_parser("verify-proof", help="check a proof offline")
    ver.add_argument("file")
    ver.add_argument("--public-key", action="append", required=True)
    ver.set_defaults(func=_guard(_cmd_verify_proof))
