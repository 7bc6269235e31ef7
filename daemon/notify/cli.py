"""``trailkeeper notify dlq list|replay``: the dead-letter store, on the local state directory.

Both work while the daemon runs (SQLite in WAL mode; the daemon's workers poll
their outbox every second, so replayed messages go out without a restart).
``list`` prints one JSON object per parked message; ``replay`` moves parked
messages back to their outbox with a fresh maximum age and prints the count.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import orjson


def _state_dir(args: argparse.Namespace) -> Path | None:
    if args.state_dir:
        return Path(args.state_dir)
    from daemon.config import ConfigError, load_config

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(exc.render(), file=sys.stderr)
        return None
    return config.journal.dir / "state"


def _outboxes(state: Path, subscription: str | None) -> list[tuple[str, Path]]:
    """(topic/subscription, path) of every outbox, or of the one named ``topic/subscription``."""
    base = state / "notify"
    found = []
    for path in sorted(base.glob("*.sqlite")):
        topic, _, name = path.stem.partition(".")
        found.append((f"{topic}/{name}", path))
    if subscription is not None:
        found = [(n, p) for n, p in found if n == subscription]
    return found


def _selected(args: argparse.Namespace) -> list[tuple[str, Path]] | int:
    """The outboxes the command works on, or the exit code after saying what is wrong."""
    state = _state_dir(args)
    if state is None:
        return 2
    boxes = _outboxes(state, args.subscription)
    if args.subscription and not boxes:
        print(f"error: no outbox for {args.subscription!r} under {state}/notify", file=sys.stderr)
        return 1
    return boxes


def _cmd_list(args: argparse.Namespace) -> int:
    from daemon.notify.outbox import list_dead_sync

    boxes = _selected(args)
    if isinstance(boxes, int):
        return boxes
    total = 0
    for name, path in boxes:
        for m in list_dead_sync(path):
            doc: dict[str, Any] = {
                "subscription": name,
                "id": m.id,
                "created": m.created,
                "parked": m.done_at,
                "attempts": m.attempts,
                "error": m.last_error,
                "title": m.body.get("title"),
            }
            event = (m.body.get("doc") or {}).get("event") or {}
            if event.get("id"):
                doc["event_id"] = event["id"]
            print(orjson.dumps(doc).decode())
            total += 1
    print(f"{total} message(s) in the dead-letter store", file=sys.stderr)
    return 0


def _cmd_replay(args: argparse.Namespace) -> int:
    from daemon.notify.outbox import replay_sync

    boxes = _selected(args)
    if isinstance(boxes, int):
        return boxes
    total = 0
    for _, path in boxes:
        total += replay_sync(path, args.ids or None)
    print(orjson.dumps({"replayed": total}).decode())
    if args.ids and total < len(args.ids):
        print(f"warning: {len(args.ids) - total} id(s) were not in the dead-letter store", file=sys.stderr)
        return 1
    return 0


def register(subparsers: Any) -> None:
    """Add ``notify dlq list`` and ``notify dlq replay`` to the ``trailkeeper`` parser."""
    notify = subparsers.add_parser("notify", help="notification tools")
    nsub = notify.add_subparsers(dest="notify_command", required=True)
    dlq = nsub.add_parser("dlq", help="the dead-letter store of undeliverable notifications")
    dsub = dlq.add_subparsers(dest="dlq_command", required=True)
    for name, func, help_text in (
        ("list", _cmd_list, "print parked messages, one JSON object per line"),
        ("replay", _cmd_replay, "send parked messages again (all, or --id ...)"),
    ):
        p = dsub.add_parser(name, help=help_text)
        p.add_argument("--config", "-c", help="YAML config file (default: the embedded default)")
        p.add_argument("--state-dir", help="the journal's state directory (overrides --config)")
        p.add_argument("--subscription", help="only this subscription, as TOPIC/NAME")
        if name == "replay":
            p.add_argument("--id", dest="ids", action="append", help="a message id (repeatable)")
        p.set_defaults(func=func)
