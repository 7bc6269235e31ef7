"""``trailkeeper query``: the query API from the command line.

It talks to a running daemon's API with a token, never to the index file
directly: the same access control applies and the query is audited like any
other, so the command line is no side door around either.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import ssl
import sys
from typing import Any

import orjson

from daemon.index.query import EXACT_FILTERS

TABLE_COLUMNS = (
    "time",
    "tenant",
    "service",
    "operation",
    "user_name",
    "source_ip",
    "resource_name",
    "rating",
    "category",
)


def register(subparsers: Any) -> None:
    """Add ``query`` to the ``trailkeeper`` command line."""
    p = subparsers.add_parser(
        "query",
        help="query recent events through a daemon's API",
        description="Query recent events, newest first. The token comes from --token or TRAILKEEPER_TOKEN.",
    )
    p.add_argument(
        "--url", default=os.environ.get("TRAILKEEPER_URL", "http://127.0.0.1:8787"), help="API base URL"
    )
    p.add_argument(
        "--token", default=None, help="auditor or admin bearer token (default: $TRAILKEEPER_TOKEN)"
    )
    p.add_argument("--cafile", help="CA certificate to trust for an https URL with a private certificate")
    for name in EXACT_FILTERS:
        p.add_argument(f"--{name.replace('_', '-')}", dest=f"f_{name}", metavar="VALUE", help=f"exact {name}")
    p.add_argument("--start", help="from this time (ISO 8601 or epoch ms), inclusive")
    p.add_argument("--end", help="until this time, exclusive")
    p.add_argument("--text", "-q", dest="f_q", metavar="TEXT", help="free text in operation or resource name")
    p.add_argument("--limit", type=int, default=50, help="events to show (default 50)")
    p.add_argument("--all", action="store_true", help="follow every page")
    p.add_argument("--id", dest="event_id", help="show one event in full (record, classification, archive)")
    p.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    token = args.token or os.environ.get("TRAILKEEPER_TOKEN")
    if not token:
        print("error: a token is required (--token or TRAILKEEPER_TOKEN)", file=sys.stderr)
        return 2
    return asyncio.run(_run(args, token))


def _params(args: argparse.Namespace) -> dict[str, str]:
    params = {name: getattr(args, f"f_{name}") for name in EXACT_FILTERS if getattr(args, f"f_{name}")}
    if args.start:
        params["start"] = args.start
    if args.end:
        params["end"] = args.end
    if args.f_q:
        params["q"] = args.f_q
    return params


async def _run(args: argparse.Namespace, token: str) -> int:
    import aiohttp

    context: ssl.SSLContext | bool = ssl.create_default_context(cafile=args.cafile) if args.cafile else True
    headers = {"Authorization": f"Bearer {token}"}
    base = args.url.rstrip("/")
    async with aiohttp.ClientSession(headers=headers) as session:
        if args.event_id:
            async with session.get(f"{base}/v1/events/{args.event_id}", ssl=context) as resp:
                doc = await resp.json(content_type=None)
                if resp.status != 200:
                    print(f"error: {resp.status} {doc.get('error', doc)}", file=sys.stderr)
                    return 1
            sys.stdout.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n")
            return 0
        params = _params(args)
        shown = 0
        cursor: str | None = None
        first = True
        while True:
            page_limit = min(1000, args.limit - shown) if not args.all else 1000
            query = {**params, "limit": str(max(1, page_limit)), **({"cursor": cursor} if cursor else {})}
            async with session.get(f"{base}/v1/events", params=query, ssl=context) as resp:
                doc = await resp.json(content_type=None)
                if resp.status != 200:
                    retry = resp.headers.get("Retry-After")
                    hint = f" (retry after {retry} s)" if retry else ""
                    print(f"error: {resp.status} {doc.get('error', doc)}{hint}", file=sys.stderr)
                    return 1
            events: list[dict[str, Any]] = doc["events"]
            _print(events, args.json, header=first)
            first = False
            shown += len(events)
            cursor = doc["next_cursor"]
            if cursor is None or (not args.all and shown >= args.limit):
                break
        if cursor is not None and not args.json:
            print(f"-- more: rerun with --all, or a larger --limit (shown {shown})", file=sys.stderr)
    return 0


def _print(events: list[dict[str, Any]], as_json: bool, header: bool) -> None:
    if as_json:
        for e in events:
            sys.stdout.write(orjson.dumps(e).decode() + "\n")
        return
    # ORIGIN last: it tells trailkeeper's own audit records from what producers sent.
    columns = (*TABLE_COLUMNS, "origin")
    widths = {
        "time": 24,
        "tenant": 14,
        "service": 24,
        "operation": 28,
        "user_name": 20,
        "source_ip": 16,
        "origin": 11,
    }
    if header:
        print("  ".join(c.upper().ljust(widths.get(c, 16)) for c in columns).rstrip())
    for e in events:
        cells = []
        for c in columns:
            w = widths.get(c, 16)
            raw = str(e.get(c) or "-")[: w + 1]
            # Producer text reaches a terminal here: show control characters (NUL, ESC
            # sequences, newlines) as escapes rather than letting them act on it.
            value = raw if raw.isprintable() else raw.encode("unicode_escape").decode("ascii")
            cells.append((value if len(value) <= w else value[: w - 1] + "…").ljust(w))
        print("  ".join(cells).rstrip())
