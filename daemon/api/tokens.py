"""``trailkeeper tokens``: make bearer tokens and their config entries, offline.

``tokens create`` prints a new random token once, then the ``auth.tokens``
entry holding only its SHA-256 (paste it under ``auth.tokens`` or into the file
named by ``auth.tokens_file``). ``tokens hash`` prints the SHA-256 of a token
read on stdin, for a token made elsewhere. Neither talks to a daemon: a token
takes effect when the daemon next starts with the entry in its config.
"""

from __future__ import annotations

import argparse
import datetime as dt
import secrets
import sys
from typing import Any

import yaml
from pydantic import ValidationError

from daemon.api.auth import TokenConfig, hash_token
from daemon.units import parse_duration

# 32 random bytes: guessing is hopeless at any rate the API lets through.
TOKEN_BYTES = 32
TOKEN_PREFIX = "tk_"


def register(subparsers: Any) -> None:
    """Add ``tokens create`` and ``tokens hash`` to the ``trailkeeper`` command line."""
    p = subparsers.add_parser("tokens", help="make API bearer tokens and their config entries")
    sub = p.add_subparsers(dest="tokens_command", required=True)
    create = sub.add_parser(
        "create",
        help="print a new token (once) and its auth.tokens entry",
        description=(
            "Print a new random bearer token, once (trailkeeper keeps only its SHA-256), then the YAML "
            "entry for auth.tokens or auth.tokens_file."
        ),
    )
    create.add_argument("--role", required=True, choices=["producer", "auditor", "admin"])
    create.add_argument(
        "--tenant",
        dest="tenants",
        action="append",
        required=True,
        metavar="TENANT",
        help="a tenant the token may send or read; repeat for more; '*' for every tenant",
    )
    create.add_argument("--name", help="the name in the audit trail (default: <role>-<random>)")
    create.add_argument(
        "--expires",
        metavar="WHEN",
        help="a duration from now (30d, 12h) or an ISO 8601 time (2026-06-30T00:00:00Z)",
    )
    create.set_defaults(func=_cmd_create)
    hashp = sub.add_parser(
        "hash",
        help="print the SHA-256 of a token read on stdin",
        description="Read one token on stdin (surrounding whitespace ignored) and print its SHA-256 hex.",
    )
    hashp.set_defaults(func=_cmd_hash)


def parse_expiry(text: str, now: dt.datetime | None = None) -> dt.datetime:
    """``30d``-style durations from ``now``, or an ISO 8601 time (no zone: UTC). Raises ValueError."""
    now = now or dt.datetime.now(dt.UTC)
    try:
        return (now + dt.timedelta(seconds=parse_duration(text))).replace(microsecond=0)
    except ValueError:
        pass
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ValueError(
            f"--expires: expected a duration such as 30d or an ISO 8601 time, got {text!r}"
        ) from exc
    return when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)


def config_entry(token: TokenConfig) -> str:
    """One ``auth.tokens`` list item, in YAML flow style, that parses back to ``token``."""
    entry: dict[str, Any] = {
        "name": token.name,
        "sha256": token.sha256,
        "role": token.role,
        "tenants": token.tenants,
    }
    if token.expires is not None:
        entry["expires"] = token.expires.isoformat().replace("+00:00", "Z")
    text = yaml.safe_dump(entry, default_flow_style=True, sort_keys=False, width=10_000).strip()
    return f"- {text}"


def _cmd_create(args: argparse.Namespace) -> int:
    secret = TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)
    fields: dict[str, Any] = {
        "name": args.name or f"{args.role}-{secrets.token_hex(3)}",
        "sha256": hash_token(secret),
        "role": args.role,
        "tenants": args.tenants,
    }
    try:
        if args.expires:
            fields["expires"] = parse_expiry(args.expires)
        token = TokenConfig.model_validate(fields)
    except ValueError as exc:
        problems = (
            [f"--{e['loc'][0]}: {e['msg']}" for e in exc.errors()]
            if isinstance(exc, ValidationError)
            else [str(exc)]
        )
        for problem in problems:
            print(f"error: {problem}", file=sys.stderr)
        return 2
    print("# The token, shown this once (trailkeeper keeps only its SHA-256): store it now.")
    print(secret)
    print("# Its entry, for auth.tokens (or the file named by auth.tokens_file):")
    print(config_entry(token))
    return 0


def _cmd_hash(_args: argparse.Namespace) -> int:
    token = sys.stdin.read().strip()
    if not token:
        print('error: no token on stdin (try: printf %s "$TOKEN" | trailkeeper tokens hash)', file=sys.stderr)
        return 2
    print(hash_token(token))
    return 0
