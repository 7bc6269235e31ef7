"""``trailkeeper keys | validate | prove | verify-proof``. Wire with ``register(subparsers)``."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import sys
from pathlib import Path
from typing import Any

import orjson

from daemon.config import Config, ConfigError, load_config
from daemon.integrity.checkpoint import NoteError, Verifier
from daemon.integrity.keys import KeyError_, KeyStore, load_verifiers
from daemon.stores.base import Store, StoreError
from daemon.stores.local import LocalStore, LocalStoreConfig
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
    else:
        for k in ks.all_keys():
            print(k.vkey)
    return 0


def _verifiers(args: argparse.Namespace, config: Config | None) -> list[Verifier]:
    sources = list(args.public_key or [])
    if not sources and config is not None and config.integrity.keys_dir.exists():
        sources = [str(config.integrity.keys_dir)]
    if not sources:
        raise KeyError_("no public keys: pass --public-key (a vkey, a file of vkeys or a keys directory)")
    return load_verifiers(sources)


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
    from daemon.integrity.validate import Validator, default_cache_path

    config = _config(args)
    store, prefix = _store_for(args, config)
    trusted = [Path(p).read_text() for p in args.trusted_checkpoint or []]  # noqa: ASYNC240 - tiny files, CLI
    since = dt.datetime.fromisoformat(args.since.replace("Z", "+00:00")).timestamp() if args.since else None
    cache = (
        None if args.no_cache else Path(args.cache) if args.cache else default_cache_path(store.name, prefix)
    )
    try:
        report = await Validator(
            store,
            prefix,
            _verifiers(args, config),
            trusted=trusted,
            max_age=parse_duration(args.max_age) if args.max_age else None,
            since=since,
            cache_path=cache,
            workers=args.workers,
            progress=not args.json and not args.quiet and sys.stderr.isatty(),
        ).run()
    finally:
        await store.close()
    if args.json:
        print(orjson.dumps(report.to_json()).decode())
    else:
        for f in report.findings:
            print(f"{f.category:14} {f.key}  {f.detail}")
        counts = ", ".join(f"{n} {c}" for c, n in report.counts().items())
        print(
            f"{'OK' if report.ok else 'FAILED'}: {counts}; read {report.files_read} files "
            f"({report.bytes_read} bytes), {report.files_cached} unchanged since the last run"
        )
    return 0 if report.ok else 1


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
    """Add ``keys``, ``validate``, ``prove`` and ``verify-proof`` to the trailkeeper CLI."""
    keys = subparsers.add_parser("keys", help="manage the Ed25519 keys that sign digests")
    keys.add_argument("action", choices=["generate", "rotate", "list", "export-public"])
    keys.add_argument("--config", "-c")
    keys.add_argument("--keys-dir", help="default: integrity.keys_dir")
    keys.add_argument("--name", help="signer name for generate (default: integrity.origin)")
    keys.add_argument("--force", action="store_true", help="generate even if a key is active")
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
    val.add_argument("--public-key", action="append", help="vkey, file of vkeys or keys dir (repeat)")
    val.add_argument("--trusted-checkpoint", action="append", help="a signed checkpoint kept elsewhere")
    val.add_argument("--max-age", help="fail if a chain's newest digest is older (e.g. 2h)")
    val.add_argument("--since", help="read only files of digests ending after this ISO time")
    val.add_argument("--json", action="store_true")
    val.add_argument("--cache", help="verified-state cache file")
    val.add_argument("--no-cache", action="store_true", help="re-read and re-hash every file")
    val.add_argument("--workers", type=int)
    val.add_argument("--quiet", "-q", action="store_true")
    val.set_defaults(func=_guard(_cmd_validate))

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
