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
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import orjson

from daemon.index.query import EXACT_FILTERS

if TYPE_CHECKING:
    import aiohttp

EVENTS_PATH = "/v1/events"
DEFAULT_URL = "http://127.0.0.1:8787"

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


# --- talking to a daemon (shared by `query` and `send`) ------------------------------------------


class ApiClientError(Exception):
    """A request to the daemon failed; ``str()`` is one line naming the URL and what to do."""


def base_url(url: str) -> str:
    """The daemon's base URL from what the operator typed: ``http(s)://host:port``, with or
    without a path prefix (a reverse proxy's), and with or without ``/v1/events`` at the end.

    Raises ApiClientError for anything but an http(s) URL with a host.
    """
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise ApiClientError(
            f"--url {url!r} is not the daemon's base URL: give http(s)://HOST:PORT "
            f"(for example {DEFAULT_URL}); {EVENTS_PATH} is added"
        )
    path = parts.path.rstrip("/")
    path = path.removesuffix(EVENTS_PATH)
    return f"{parts.scheme}://{parts.netloc}{path}"


def client_ssl(url: str, cafile: str | None) -> ssl.SSLContext | bool:
    """The TLS context for ``url``: the system's CAs, or only ``cafile`` when given."""
    if cafile is None:
        return True
    if not url.startswith("https://"):
        raise ApiClientError(f"--cafile {cafile} is for an https:// URL; {url} is plain http")
    try:
        return ssl.create_default_context(cafile=cafile)
    except (OSError, ssl.SSLError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ApiClientError(f"--cafile {cafile}: cannot load it as a PEM CA bundle ({reason})") from exc


def connection_error(url: str, exc: BaseException) -> ApiClientError:
    """One line for a request that got no HTTP answer (TLS, refused, DNS, reset, timeout)."""
    import aiohttp

    https = url.startswith("https://")
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        cert = exc.certificate_error
        reason = getattr(cert, "verify_message", None) or str(cert)
        return ApiClientError(
            f"{url}: the daemon's TLS certificate is not trusted ({reason}): pass --cafile with "
            "the CA certificate (or the self-signed certificate) it uses"
        )
    if isinstance(exc, aiohttp.ClientConnectorSSLError | aiohttp.ClientSSLError | ssl.SSLError):
        return ApiClientError(
            f"{url}: TLS handshake failed ({_reason(exc)}): if the daemon serves plain HTTP "
            "(no ingest.http.tls), use an http:// URL"
        )
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return ApiClientError(f"{url}: host {exc.host!r} does not resolve: check the host name in --url")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return ApiClientError(
            f"{url}: cannot connect ({_reason(exc)}): is the daemon running and listening there "
            "(ingest.http.listen)? check the host and port in --url"
        )
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError | ConnectionError):
        hint = "" if https else "; if the daemon serves TLS (ingest.http.tls), use an https:// URL"
        return ApiClientError(f"{url}: the server closed the connection without an answer{hint}")
    if isinstance(exc, TimeoutError):
        return ApiClientError(f"{url}: no answer in time: is the daemon overloaded or the URL wrong?")
    if isinstance(exc, aiohttp.InvalidURL):
        return ApiClientError(f"{url}: not a valid URL")
    return ApiClientError(f"{url}: request failed ({type(exc).__name__}: {_reason(exc)})")


def http_error(
    url: str, status: int, reason: str | None, body: bytes, retry_after: str | None
) -> ApiClientError:
    """One line for an HTTP answer that is not the one expected: the daemon's JSON error
    when there is one, else a sign that --url points at something other than the daemon."""
    message: str | None = None
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        doc = None
    if isinstance(doc, dict) and isinstance(doc.get("error"), str):
        message = doc["error"]
    if message is None:
        snippet = body[:60].decode("utf-8", "replace").strip().replace("\n", " ")
        return ApiClientError(
            f"{url}: HTTP {status} {reason or ''}".rstrip()
            + f" with a body that is not the daemon's JSON ({snippet!r}): is --url the "
            "daemon's ingest listener (ingest.http.listen)?"
        )
    hint = {
        401: "pass a valid token with --token (or TRAILKEEPER_TOKEN)",
        403: "this token's role or tenants do not allow it: use a token that does",
    }.get(status, "")
    if retry_after and status in (429, 503):
        hint = f"retry after {retry_after} s"
    text = " ".join(message.split())
    return ApiClientError(f"{url}: HTTP {status}: {text}" + (f" ({hint})" if hint else ""))


def _reason(exc: BaseException) -> str:
    os_error = getattr(exc, "os_error", None)
    if isinstance(os_error, OSError) and os_error.strerror:
        return os_error.strerror
    text = str(exc) or type(exc).__name__
    return " ".join(text.split())


async def _get_json(
    session: aiohttp.ClientSession,
    url: str,
    context: ssl.SSLContext | bool,
    params: dict[str, str] | None = None,
) -> Any:
    """GET ``url`` and return its JSON body; anything else raises ApiClientError."""
    import aiohttp

    try:
        async with session.get(url, params=params, ssl=context) as resp:
            body = await resp.read()
            if resp.status != 200:
                raise http_error(url, resp.status, resp.reason, body, resp.headers.get("Retry-After"))
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise connection_error(url, exc) from exc
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise http_error(url, 200, "OK", body, None) from exc


# --- query -------------------------------------------------------------------------------------


def register(subparsers: Any) -> None:
    """Add ``query`` to the ``trailkeeper`` command line."""
    p = subparsers.add_parser(
        "query",
        help="query recent events through a daemon's API",
        description="Query recent events, newest first. The token comes from --token or TRAILKEEPER_TOKEN.",
    )
    p.add_argument(
        "--url",
        default=os.environ.get("TRAILKEEPER_URL", DEFAULT_URL),
        help=f"the daemon's base URL, as for send (default: $TRAILKEEPER_URL or {DEFAULT_URL})",
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
    from daemon.telemetry import configure_cli_logging

    configure_cli_logging()
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
    """The query; 0 on success, 1 with one line on stderr when the daemon cannot answer it."""
    try:
        return await _query(args, token)
    except ApiClientError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


async def _query(args: argparse.Namespace, token: str) -> int:
    from urllib.parse import quote

    import aiohttp

    base = base_url(args.url)
    context = client_ssl(base, args.cafile)
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession(headers=headers) as session:
        if args.event_id:
            doc = await _get_json(session, f"{base}{EVENTS_PATH}/{quote(args.event_id, safe='')}", context)
            sys.stdout.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n")
            return 0
        params = _params(args)
        shown = 0
        cursor: str | None = None
        first = True
        while True:
            page_limit = min(1000, args.limit - shown) if not args.all else 1000
            query = {**params, "limit": str(max(1, page_limit)), **({"cursor": cursor} if cursor else {})}
            doc = await _get_json(session, f"{base}{EVENTS_PATH}", context, query)
            if not isinstance(doc, dict) or not isinstance(doc.get("events"), list):
                raise ApiClientError(
                    f"{base}{EVENTS_PATH}: the answer has no event list: is --url the daemon's API?"
                )
            events: list[dict[str, Any]] = doc["events"]
            _print(events, args.json, header=first)
            first = False
            shown += len(events)
            cursor = doc.get("next_cursor")
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
