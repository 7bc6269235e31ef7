"""The ``trailkeeper`` command line. Subcommands of components register here, and only here."""

from __future__ import annotations

import argparse
import asyncio
import gzip
import os
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
from daemon.telemetry import configure_cli_logging, configure_logging
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
    from daemon.notify.notifier import check_notify

    if args.file and args.config and args.file != args.config:
        print("error: give the config file once (FILE or --config)", file=sys.stderr)
        return 2
    path = args.config or args.file
    try:
        config = load_config(path)
        load_rules(config.rules)
        # What `run` checks before it starts (templates, route patterns, the subscriptions'
        # TLS files), through the same function, so the two never disagree.
        check_notify(config.notify, path or "embedded default config")
    except ConfigError as exc:
        print(exc.render(), file=sys.stderr)
        return 1
    except RuleLoadError as exc:
        print(exc.render(), file=sys.stderr)
        return 1
    print(f"{path or 'embedded default config'}: ok")
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


async def _send(
    files: Sequence[str], url: str, batch: int, token: str | None, quiet: bool, cafile: str | None = None
) -> int:
    """Post the records of ``files`` in batches; print the tally as JSON on stdout.

    0 when every record was accepted; 1 when some were rejected (their reasons are in the
    tally) or when the daemon could not take a batch (one line on stderr saying why; the
    batches after it are not sent and count as failed).
    """
    import aiohttp
    from tqdm import tqdm

    base = query_cli.base_url(url)
    endpoint = f"{base}{query_cli.EVENTS_PATH}"
    context = query_cli.client_ssl(base, cafile)
    records = [r for f in files for r in _records_from(f)]
    headers = {"Content-Type": "application/x-ndjson", "Content-Encoding": "gzip"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    accepted = 0
    rejected: list[dict[str, Any]] = []
    failed = 0
    error: str | None = None
    # A bar only for a person watching: in a script it would be stderr noise.
    bar_off = quiet or not sys.stderr.isatty()
    async with aiohttp.ClientSession() as session:
        with tqdm(total=len(records), unit="ev", disable=bar_off, file=sys.stderr) as bar:
            for start in range(0, len(records), batch):
                chunk = records[start : start + batch]
                if error is not None:
                    failed += len(chunk)
                    continue
                body = gzip.compress(b"\n".join(chunk) + b"\n", compresslevel=1)
                try:
                    doc = await _post_batch(session, endpoint, body, headers, context)
                except query_cli.ApiClientError as exc:
                    error = str(exc)
                    failed += len(chunk)
                    continue
                accepted += int(doc["accepted"])
                for r in doc.get("rejected", []):
                    rejected.append({"index": start + int(r["index"]), "reason": r["reason"]})
                bar.update(len(chunk))
    if error is not None:
        print(f"error: {error}", file=sys.stderr)
    print(orjson.dumps({"accepted": accepted, "rejected": rejected, "failed": failed}).decode())
    return 0 if not rejected and not failed else 1


async def _post_batch(
    session: Any, endpoint: str, body: bytes, headers: dict[str, str], context: Any
) -> dict[str, Any]:
    """One batch: the daemon's tally (``accepted``, ``rejected``), waiting out its pushback
    (429/503 with Retry-After) up to 30 times. Raises ApiClientError with one line."""
    import aiohttp

    for _attempt in range(30):
        try:
            async with session.post(endpoint, data=body, headers=headers, ssl=context) as resp:
                raw = await resp.read()
                status, reason = resp.status, resp.reason
                retry_after = resp.headers.get("Retry-After")
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise query_cli.connection_error(endpoint, exc) from exc
        if status in (429, 503) and retry_after is not None:
            try:
                await asyncio.sleep(min(60.0, max(0.0, float(retry_after))))
            except ValueError:
                await asyncio.sleep(1.0)
            continue
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError:
            doc = None
        # 400 with a tally: some records were rejected (and quarantined), the rest taken.
        if status in (202, 400) and isinstance(doc, dict) and "accepted" in doc:
            return doc
        raise query_cli.http_error(endpoint, status, reason, raw, retry_after)
    raise query_cli.ApiClientError(f"{endpoint}: the daemon pushed back (429/503) 30 times: retry later")


def _cmd_send(args: argparse.Namespace) -> int:
    configure_cli_logging()
    try:
        token = args.token or os.environ.get("TRAILKEEPER_TOKEN")
        return asyncio.run(_send(args.files, args.url, args.batch, token, args.quiet, args.cafile))
    except query_cli.ApiClientError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: {exc.filename or 'input'}: {exc.strerror or exc}", file=sys.stderr)
        return 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trailkeeper", description="Self-hosted audit-trail daemon.")
    parser.add_argument("--version", action="version", version=f"trailkeeper {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the daemon")
    run.add_argument("--config", "-c", help="YAML config file (default: the embedded default)")
    run.set_defaults(func=_cmd_run)

    check = sub.add_parser("check-config", help="validate a config file and report every problem")
    check.add_argument("file", nargs="?", help="YAML config file (default: the embedded default)")
    check.add_argument("--config", "-c", help="YAML config file, as `run` takes it (same as FILE)")
    check.set_defaults(func=_cmd_check_config)

    send = sub.add_parser("send", help="post CloudTrail/CTS files or NDJSON to a running daemon")
    send.add_argument("files", nargs="+", help="files to send ('-' for stdin)")
    send.add_argument(
        "--url",
        default=os.environ.get("TRAILKEEPER_URL", query_cli.DEFAULT_URL),
        help="the daemon's base URL, as for query; /v1/events is added "
        f"(default: $TRAILKEEPER_URL or {query_cli.DEFAULT_URL})",
    )
    send.add_argument("--batch", type=int, default=500, help="events per request")
    send.add_argument("--token", help="producer bearer token (default: $TRAILKEEPER_TOKEN)")
    send.add_argument("--cafile", help="CA certificate to trust for an https URL with a private certificate")
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
