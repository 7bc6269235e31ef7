"""``trailkeeper notify test`` and ``notify dlq list|replay|purge``.

``test`` sends one test message through a subscription's real sender (its
URL, TLS settings, signing and template, from the config file) and reports the
result in one line: exit 0 when the endpoint took it, 1 when not, 2 for a bad
config or an unknown subscription. It bypasses the outbox: nothing is retried
and the running daemon is not involved.

The ``dlq`` commands work on the local state directory while the daemon runs
(SQLite in WAL mode; the daemon's workers poll their outbox every second, so
replayed messages go out without a restart and the dead-letter gauge follows a
replay or a purge within a second). ``list`` prints one JSON object per parked
message; ``replay`` moves parked messages back to their outbox with a fresh
maximum age and prints the count; ``purge --yes`` deletes them for good and
prints the count (without ``--yes`` it only says how many it would delete).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
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


def _cmd_purge(args: argparse.Namespace) -> int:
    from daemon.notify.outbox import list_dead_sync, purge_sync

    boxes = _selected(args)
    if isinstance(boxes, int):
        return boxes
    if not args.yes:
        count = sum(len(list_dead_sync(path)) for _, path in boxes)
        where = args.subscription or "every subscription"
        print(
            f"error: purge deletes {count} message(s) of {where} from the dead-letter store for good; "
            "add --yes to do it (or `notify dlq list` to see them first)",
            file=sys.stderr,
        )
        return 2
    total = 0
    for _, path in boxes:
        total += purge_sync(path)
    print(orjson.dumps({"purged": total}).decode())
    return 0


# --- notify test ----------------------------------------------------------------------------


def _find_subscription(config: Any, wanted: str, topic: str | None) -> tuple[str, Any] | str:
    """(topic, subscription config) named by ``wanted`` (NAME or TOPIC/NAME), or the error."""
    if "/" in wanted and topic is None:
        topic, _, wanted = wanted.partition("/")
    topics = config.notify.topics
    if topic is not None and topic not in topics:
        return f"no topic {topic!r} in notify.topics (topics: {', '.join(sorted(topics)) or 'none'})"
    found = [
        (t, s)
        for t, tcfg in topics.items()
        if topic is None or t == topic
        for s in tcfg.subscriptions
        if s.name == wanted
    ]
    if not found:
        known = sorted(f"{t}/{s.name}" for t, tcfg in topics.items() for s in tcfg.subscriptions)
        return f"no subscription {wanted!r} in notify.topics (subscriptions: {', '.join(known) or 'none'})"
    if len(found) > 1:
        return f"subscription {wanted!r} is in topics {', '.join(t for t, _ in found)}: add --topic"
    return found[0]


def _test_doc(topic: str) -> dict[str, Any]:
    """A notification document shaped like an event's, plainly marked as a test."""
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    match = {
        "rule": "trailkeeper.notify_test",
        "category": "test",
        "severity": "info",
        "description": "a test message sent with `trailkeeper notify test`; no event caused it",
        "tags": [],
    }
    event = {
        "id": f"test-{uuid.uuid4()}",
        "time": now,
        "service": "trailkeeper",
        "operation": "NotificationTest",
        "user_name": "trailkeeper notify test",
    }
    return {"kind": "event", "topic": topic, "event": event, "matches": [match], "severity": "info"}


async def _send_test(topic: str, sub: Any, timeout: float) -> str | None:
    """Send one test message; None when the endpoint took it, else the reason."""
    from daemon.notify.base import DeliveryError
    from daemon.notify.notifier import make_sender, message_id
    from daemon.notify.outbox import OutMessage
    from daemon.notify.templates import Renderer, context

    doc = _test_doc(topic)
    where = f"notify.topics.{topic}.subscriptions[{sub.name}].template"
    rendered = Renderer(sub.protocol, sub.template.title, sub.template.body, where).render(context(doc))
    now = time.time()
    msg = OutMessage(
        seq=0,
        id=message_id("test", topic, sub.name, doc["event"]["id"]),
        created=now,
        ingest_ms=int(now * 1000),
        attempts=0,
        body={"title": rendered.title, "text": rendered.text, "doc": doc},
    )
    sender = make_sender(topic, sub, timeout)
    try:
        async with asyncio.timeout(timeout + 5):
            await sender.send(msg)
    except DeliveryError as exc:
        return f"{exc.reason}: {exc.detail}"
    except TimeoutError:
        return f"timeout: no answer within {timeout + 5:g} s"
    finally:
        await sender.close()
    return None


def _cmd_test(args: argparse.Namespace) -> int:
    from daemon.config import ConfigError, load_config
    from daemon.notify.notifier import check_notify
    from daemon.telemetry import configure_cli_logging

    configure_cli_logging()
    source = args.config or "embedded default config"
    try:
        config = load_config(args.config)
        # The sender cannot be built from what `run` would refuse: say so the same way.
        check_notify(config.notify, source)
    except ConfigError as exc:
        print(exc.render(), file=sys.stderr)
        return 2
    found = _find_subscription(config, args.subscription, args.topic)
    if isinstance(found, str):
        print(f"error: {source}: {found}", file=sys.stderr)
        return 2
    topic, sub = found
    delivery = sub.delivery or config.notify.delivery
    name = f"{topic}/{sub.name} ({sub.protocol})"
    error = asyncio.run(_send_test(topic, sub, delivery.timeout))
    if error is not None:
        print(f"error: {name}: the test message was not delivered: {error}", file=sys.stderr)
        return 1
    print(f"{name}: test message delivered")
    return 0


def register(subparsers: Any) -> None:
    """Add ``notify test`` and ``notify dlq list|replay|purge`` to the ``trailkeeper`` parser."""
    notify = subparsers.add_parser("notify", help="notification tools")
    nsub = notify.add_subparsers(dest="notify_command", required=True)
    test = nsub.add_parser("test", help="send one test message through a subscription and report the result")
    test.add_argument("--subscription", "-s", required=True, help="subscription NAME (or TOPIC/NAME)")
    test.add_argument("--topic", "-t", help="the subscription's topic, when its name is in several")
    test.add_argument("--config", "-c", help="YAML config file (default: the embedded default)")
    test.set_defaults(func=_cmd_test)
    dlq = nsub.add_parser("dlq", help="the dead-letter store of undeliverable notifications")
    dsub = dlq.add_subparsers(dest="dlq_command", required=True)
    for name, func, help_text in (
        ("list", _cmd_list, "print parked messages, one JSON object per line"),
        ("replay", _cmd_replay, "send parked messages again (all, or --id ...)"),
        ("purge", _cmd_purge, "delete parked messages for good (needs --yes)"),
    ):
        p = dsub.add_parser(name, help=help_text)
        p.add_argument("--config", "-c", help="YAML config file (default: the embedded default)")
        p.add_argument("--state-dir", help="the journal's state directory (overrides --config)")
        p.add_argument("--subscription", help="only this subscription, as TOPIC/NAME")
        if name == "replay":
            p.add_argument("--id", dest="ids", action="append", help="a message id (repeatable)")
        if name == "purge":
            p.add_argument("--yes", action="store_true", help="really delete (refused without it)")
        p.set_defaults(func=func)
