"""The ``trailkeeper`` command line. Subcommands of components register here, and only here."""

from __future__ import annotations

import argparse
import asyncio
import gzip
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson

from daemon import __version__, configdoc
from daemon.api import cli as query_cli
from daemon.api import tokens as tokens_cli
from daemon.config import ConfigError, load_config
from daemon.integrity import cli as integrity_cli
from daemon.notify import cli as notify_cli
from daemon.rules import cli as rules_cli
from daemon.rules.loader import RuleLoadError, load_rules
from daemon.telemetry import configure_logging
from daemon.witness import cli as witness_cli


def _cmd_run(args: argparse.Namespace) -> int:
    from daemon.app import App

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(exc.render(), file=sys.stderr)
        return 2
    configure_logging(config.log.level, config.log.format)
    try:
        app = App(config, args.config)
    except RuleLoadError as exc:
        print(exc.render(), file=sys.stderr)
        return 2
    try:
        asyncio.run(app.serve())
    except ConfigError as exc:
        print(exc.render(), file=sys.stderr)
        return 2
    return 0


def _cmd_check_config(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.file)
        load_rules(config.rules)
    except ConfigError as exc:
        print(exc.render(), file=sys.stderr)
        return 1
    except RuleLoadError as exc:
        print(exc.render(), file=sys.stderr)
        return 1
    print(f"{args.file or 'embedded default config'}: ok")
    return 0


# --- send ---------------------------------------------------------------------------------------


def _records_from(path: str) -> Iterator[bytes]:
    """Yield one JSON document per record from a CloudTrail file, CTS traces or NDJSON."""
    data = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    stripped = data.lstrip()
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        doc = None
    if doc is None and not stripped.startswith(b"["):
        # NDJSON: pass lines through untouched, bad ones included, so the daemon
        # quarantines them with their reasons rather than this client hiding them.
        for line in data.split(b"\n"):
            if line.strip():
                yield line.strip()
        return
    if doc is None:
        yield data
        return
    items: list[Any]
    if isinstance(doc, dict) and isinstance(doc.get("Records"), list):
        items = doc["Records"]
    elif isinstance(doc, list):
        items = doc
    else:
        items = [doc]
    for item in items:
        yield orjson.dumps(item)


async def _send(files: Sequence[str], url: str, batch: int, token: str | None, quiet: bool) -> int:
    import aiohttp
    from tqdm import tqdm

    records = [r for f in files for r in _records_from(f)]
    headers = {"Content-Type": "application/x-ndjson", "Content-Encoding": "gzip"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    accepted = 0
    rejected: list[dict[str, Any]] = []
    failed = 0
    async with aiohttp.ClientSession() as session:
        with tqdm(total=len(records), unit="ev", disable=quiet, file=sys.stderr) as bar:
            for start in range(0, len(records), batch):
                chunk = records[start : start + batch]
                body = gzip.compress(b"\n".join(chunk) + b"\n", compresslevel=1)
                for _attempt in range(30):
                    async with session.post(url, data=body, headers=headers) as resp:
                        if resp.status in (429, 503):
                            await asyncio.sleep(float(resp.headers.get("Retry-After", "1")))
                            continue
                        doc = await resp.json(content_type=None)
                        if resp.status in (202, 400) and "accepted" in doc:
                            accepted += int(doc["accepted"])
                            for r in doc.get("rejected", []):
                                rejected.append({"index": start + int(r["index"]), "reason": r["reason"]})
                        else:
                            failed += len(chunk)
                            print(f"error: {resp.status} {doc.get('error', doc)}", file=sys.stderr)
                        break
                else:
                    failed += len(chunk)
                    print("error: daemon kept pushing back; giving up on a batch", file=sys.stderr)
                bar.update(len(chunk))
    print(orjson.dumps({"accepted": accepted, "rejected": rejected, "failed": failed}).decode())
    return 0 if not rejected and not failed else 1


def _cmd_send(args: argparse.Namespace) -> int:
    return asyncio.run(_send(args.files, args.url, args.batch, args.token, args.quiet))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trailkeeper", description="Self-hosted audit-trail daemon.")
    parser.add_argument("--version", action="version", version=f"trailkeeper {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the daemon")
    run.add_argument("--config", "-c", help="YAML config file (default: the embedded default)")
    run.set_defaults(func=_cmd_run)

    check = sub.add_parser("check-config", help="validate a config file and report every problem")
    check.add_argument("file", nargs="?", help="YAML config file (default: the embedded default)")
    check.set_defaults(func=_cmd_check_config)

    send = sub.add_parser("send", help="post CloudTrail/CTS files or NDJSON to a running daemon")
    send.add_argument("files", nargs="+", help="files to send ('-' for stdin)")
    send.add_argument("--url", default="http://127.0.0.1:8787/v1/events")
    send.add_argument("--batch", type=int, default=500, help="events per request")
    send.add_argument("--token", help="producer bearer token")
    send.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    send.set_defaults(func=_cmd_send)

    # Every component's subcommands, registered here and only here.
    for register in (
        integrity_cli.register,
        rules_cli.register,
        notify_cli.register,
        query_cli.register,
        configdoc.register,
        witness_cli.register,
        tokens_cli.register,
    ):
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    raise SystemExit(main())
