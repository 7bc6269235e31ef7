"""The notifier: a journal consumer that classifies, routes and fills the outboxes.

Per event: the rules classify it; each route that accepts one of its matches
sends it to the route's topic (a topic gets an event once, through the first
route that selects it for that topic); ungrouped routes write one message per
subscription of the topic at once, grouped routes hand the event to the
Grouper. The notifier commits its journal cursor only after the messages are
durable in every outbox, and never past an event still waiting in a group.
Delivery is at-least-once; message ids are deterministic (topic, subscription,
event id), so a replayed entry is dropped by the outbox.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from daemon.events import KIND_EVENT, Event, decode_entry
from daemon.journal import Journal, JournalReader
from daemon.notify.base import Sender, ssl_context
from daemon.notify.chat import ChatSender
from daemon.notify.config import (
    EmailSubscription,
    NotifyConfig,
    RouteConfig,
    SnsSubscription,
    Subscription,
    WebhookSubscription,
    severity_rank,
)
from daemon.notify.email import EmailSender
from daemon.notify.grouping import Grouper
from daemon.notify.outbox import Outbox, outbox_path
from daemon.notify.sns import SnsSender
from daemon.notify.templates import Renderer, TemplateConfigError, context
from daemon.notify.webhook import WebhookSender
from daemon.notify.worker import SubscriptionWorker
from daemon.telemetry import get_logger

log = get_logger("notify")

CURSOR = "notify"
COMMIT_EVERY = 0.25  # seconds; a replay after a crash is deduplicated by the outboxes


class MatchLike(Protocol):
    @property
    def rule(self) -> str: ...
    @property
    def category(self) -> str: ...
    @property
    def severity(self) -> str: ...

    def to_dict(self) -> dict[str, Any]: ...


class Classifier(Protocol):
    def match(self, event: Event) -> Sequence[MatchLike]: ...


class PatternLike(Protocol):
    uses_record: bool

    def matches(self, canonical: Any, record: Any = None) -> bool: ...


PatternCompiler = Callable[[Any, str], PatternLike]


def make_sender(topic: str, sub: Subscription, timeout: float) -> Sender:
    if isinstance(sub, WebhookSubscription):
        return WebhookSender(topic, sub, timeout)
    if isinstance(sub, EmailSubscription):
        return EmailSender(topic, sub, timeout)
    if isinstance(sub, SnsSubscription):
        return SnsSender(topic, sub, timeout)
    return ChatSender(topic, sub, timeout)


def probe_address(sub: Subscription) -> tuple[str, int] | None:
    """(host, port) a TCP probe connects to while the endpoint cannot be reached."""
    if isinstance(sub, EmailSubscription):
        return sub.host, sub.port
    if isinstance(sub, SnsSubscription):
        url = sub.endpoint_url or f"https://sns.{sub.region}.amazonaws.com"
    else:
        url = sub.url
    parts = urlsplit(url)
    if not parts.hostname:
        return None
    try:
        port = parts.port
    except ValueError:
        return None
    return parts.hostname, port or (443 if parts.scheme == "https" else 80)


def message_id(*parts: object) -> str:
    return "msg_" + hashlib.sha256("|".join(str(p) for p in parts).encode()).hexdigest()[:32]


class _Route:
    def __init__(self, cfg: RouteConfig, pattern: PatternLike | None) -> None:
        self.cfg = cfg
        self.pattern = pattern
        self.categories = frozenset(cfg.categories)
        self.rules = frozenset(cfg.rules)
        self.tenants = frozenset(cfg.tenants)
        self.min_rank = severity_rank(cfg.min_severity) if cfg.min_severity else None

    def select(self, event: Event, matches: Sequence[MatchLike]) -> list[MatchLike]:
        canonical = event.canonical
        if self.tenants and canonical.get("tenant") not in self.tenants:
            return []
        sel = [
            m
            for m in matches
            if (not self.categories or m.category in self.categories)
            and (not self.rules or m.rule in self.rules)
            and (self.min_rank is None or severity_rank(m.severity) >= self.min_rank)
        ]
        if sel and self.pattern is not None:
            record = event.parsed if self.pattern.uses_record else None
            if not self.pattern.matches(canonical, record):
                return []
        return sel


class _Sub:
    def __init__(
        self, topic: str, cfg: Subscription, outbox: Outbox, renderer: Renderer, worker: SubscriptionWorker
    ) -> None:
        self.topic = topic
        self.cfg = cfg
        self.outbox = outbox
        self.renderer = renderer
        self.worker = worker


class Notifier:
    """``start`` / ``stop``. Raises on start when a template or route pattern is invalid."""

    def __init__(
        self,
        journal: Journal,
        config: NotifyConfig,
        classifier: Classifier,
        compile_pattern: PatternCompiler | None,
        state_dir: Path,
        public_url: str,
    ) -> None:
        self.journal = journal
        self.config = config
        self.classifier = classifier
        self.state_dir = state_dir
        self.routes: list[_Route] = []
        for i, r in enumerate(config.routes):
            pattern = None
            if r.pattern is not None:
                if compile_pattern is None:
                    raise ValueError(f"notify.routes[{i}].pattern: no pattern compiler available")
                pattern = compile_pattern(r.pattern, f"notify.routes[{i}].pattern")
            self.routes.append(_Route(r, pattern))
        self.subs: dict[str, list[_Sub]] = {}
        base = public_url.rstrip("/")
        for topic, tcfg in config.topics.items():
            subs = []
            for j, s in enumerate(tcfg.subscriptions):
                delivery = s.delivery or config.delivery
                outbox = Outbox(outbox_path(state_dir, topic, s.name))
                renderer = Renderer(
                    s.protocol,
                    s.template.title,
                    s.template.body,
                    f"notify.topics.{topic}.subscriptions[{j}].template",
                )
                worker = SubscriptionWorker(
                    topic,
                    s.name,
                    s.protocol,
                    outbox,
                    make_sender(topic, s, delivery.timeout),
                    delivery,
                    require_confirmation=isinstance(s, WebhookSubscription) and s.require_confirmation,
                    confirm_url=f"{base}/v1/subscriptions/{topic}/{s.name}/confirm",
                    dedupe_window=config.dedupe_window,
                    probe_address=probe_address(s),
                )
                subs.append(_Sub(topic, s, outbox, renderer, worker))
            self.subs[topic] = subs
        self.grouper = Grouper(config.routes, state_dir / "notify" / "groups.json", config.max_events_listed)
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._committed = 0
        self._commit_task: asyncio.Task[None] | None = None
        journal.register(CURSOR)

    # --- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        await asyncio.to_thread(self.grouper.load)
        for subs in self.subs.values():
            for s in subs:
                await s.worker.open()
                self._tasks.append(asyncio.create_task(s.worker.run(), name=f"notify-{s.topic}-{s.cfg.name}"))
        self._tasks.append(asyncio.create_task(self.run(), name="notifier"))

    async def stop(self) -> None:
        """Stop reading the journal, then the workers. Undelivered messages stay in the outboxes."""
        self._stopping.set()
        for subs in self.subs.values():
            for s in subs:
                s.worker.stop()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for subs in self.subs.values():
            for s in subs:
                s.outbox.close()

    def worker(self, topic: str, name: str) -> SubscriptionWorker | None:
        for s in self.subs.get(topic, []):
            if s.cfg.name == name:
                return s.worker
        return None

    # --- the loop ---------------------------------------------------------------------------

    async def run(self) -> None:
        reader = self.journal.reader(CURSOR)
        self._committed = reader.next_offset
        try:
            await self._loop(reader)
        finally:
            reader.close()

    async def _loop(self, reader: JournalReader) -> None:
        last_commit = time.monotonic()
        unsynced: set[_Sub] = set()
        while True:
            stopping = self._stopping.is_set()
            deadline = self.grouper.next_deadline()
            timeout = 0.5 if deadline is None else min(0.5, max(0.0, deadline - time.time()))
            # Modest batches: classifying one is a synchronous stretch on the event loop.
            entries = await reader.read(500, timeout=0.0 if stopping else timeout)
            out: dict[int, list[tuple[str, int, dict[str, Any]]]] = defaultdict(list)
            targets: dict[int, _Sub] = {}
            now = time.time()
            for offset, payload in entries:
                self._take(offset, payload, now, out, targets)
            flushed = []
            for gid, g, summary, ingest_ms in self.grouper.due(time.time()):
                topic = self.routes[g.route].cfg.topic
                doc = {
                    "kind": "group",
                    "topic": topic,
                    "group": summary["summary"],
                    "matches": summary["matches"],
                    "severity": summary["severity"],
                }
                s0 = summary["summary"]
                for sub in self.subs[topic]:
                    mid = message_id(topic, sub.cfg.name, gid, s0["first_offset"], s0["last_offset"])
                    self._render_into(sub, mid, ingest_ms, doc, out, targets)
                flushed.append(gid)
            if out:
                # Each worker is woken as soon as its own outbox holds the messages: a slow
                # outbox (a busy dead subscription) does not hold back a healthy one.
                await asyncio.gather(*(self._add(targets[k], rows) for k, rows in out.items()))
                unsynced.update(targets[k] for k in out)
            for gid in flushed:
                self.grouper.sent(gid, now)
            self.grouper.prune(now, self._committed)
            if self.grouper.dirty:
                await self.grouper.save()
            target = reader.next_offset
            held = self.grouper.oldest_held()
            if held is not None:
                target = min(target, held)
            if self._commit_task is not None and self._commit_task.done():
                task, self._commit_task = self._commit_task, None
                task.result()  # a disk failure stops the notifier (and the daemon)
            if (
                self._commit_task is None
                and target > self._committed
                and (stopping or not entries or time.monotonic() - last_commit >= COMMIT_EVERY)
            ):
                # In the background: reading and routing go on while the disk syncs.
                boxes, unsynced = list(unsynced), set()
                self._commit_task = asyncio.create_task(self._commit(boxes, target))
                last_commit = time.monotonic()
            if stopping and not entries:
                if self._commit_task is not None:
                    await self._commit_task
                    self._commit_task = None
                if target > self._committed:
                    await self._commit(list(unsynced), target)
                return

    async def _commit(self, boxes: list[_Sub], target: int) -> None:
        """Messages must be power-safe in the outboxes before the journal may forget the
        events behind them: sync the outboxes written since the last commit, then commit."""
        await asyncio.gather(*(sub.outbox.sync() for sub in boxes))
        await self.journal.commit(CURSOR, target)
        self._committed = target

    @staticmethod
    async def _add(sub: _Sub, rows: list[tuple[str, int, dict[str, Any]]]) -> None:
        await sub.outbox.add(rows)
        sub.worker.wake()

    def _take(
        self,
        offset: int,
        payload: bytes,
        now: float,
        out: dict[int, list[tuple[str, int, dict[str, Any]]]],
        targets: dict[int, _Sub],
    ) -> None:
        entry = decode_entry(offset, payload)
        if entry.kind != KIND_EVENT:
            return
        event = entry.event()
        matches = self.classifier.match(event)
        if not matches:
            return
        done: set[str] = set()
        for i, route in enumerate(self.routes):
            topic = route.cfg.topic
            if topic in done:
                continue
            sel = route.select(event, matches)
            if not sel:
                continue
            done.add(topic)
            dicts = [m.to_dict() for m in sel]
            if route.cfg.group_by:
                self.grouper.add(i, offset, entry.received_ms, event.canonical, dicts, now)
                continue
            severity = max((m.severity for m in sel), key=severity_rank)
            doc = {
                "kind": "event",
                "topic": topic,
                "event": event.canonical,
                "matches": dicts,
                "severity": severity,
            }
            for sub in self.subs[topic]:
                # Tenant-qualified: one id in two tenants is two messages (an event without a
                # tenant keeps the id it always had).
                tenant = event.canonical.get("tenant")
                mid = (
                    message_id(topic, sub.cfg.name, tenant, event.id)
                    if tenant
                    else message_id(topic, sub.cfg.name, event.id)
                )
                sub_doc = doc
                if getattr(sub.cfg, "include_record", False):
                    # The record as stored, as its JSON text: the outbox keeps it losslessly
                    # (numbers beyond 64 bits included) and the webhook splices it in unchanged.
                    sub_doc = {**doc, "record_json": event.record.decode("utf-8", "replace")}
                self._render_into(sub, mid, entry.received_ms, sub_doc, out, targets)

    @staticmethod
    def _render_into(
        sub: _Sub,
        mid: str,
        ingest_ms: int,
        doc: dict[str, Any],
        out: dict[int, list[tuple[str, int, dict[str, Any]]]],
        targets: dict[int, _Sub],
    ) -> None:
        rendered = sub.renderer.render(context(doc))
        key = id(sub)
        targets[key] = sub
        out[key].append((mid, ingest_ms, {"title": rendered.title, "text": rendered.text, "doc": doc}))


CONFIRM_ROUTE = "/v1/subscriptions/{topic}/{subscription}/confirm"


def enabled(config: NotifyConfig) -> bool:
    """Notifications run (and hold a journal cursor) only when some route reaches a topic."""
    return bool(config.routes) and any(t.subscriptions for t in config.topics.values())


def _tls_problems(where: str, sub: Subscription) -> list[str]:
    """Problems with the TLS files of one subscription: each file must be readable, and
    together they must load as the sender will load them."""
    if isinstance(sub, SnsSubscription):
        return []
    if isinstance(sub, EmailSubscription):
        if sub.security == "none":
            return []
        files = {"ca_file": sub.ca_file}
        cert = key = None
    else:
        files = {"ca_file": sub.ca_file, "client_cert": sub.client_cert, "client_key": sub.client_key}
        cert, key = sub.client_cert, sub.client_key
    problems = []
    for field, path in files.items():
        if path is None:
            continue
        try:
            with open(path, "rb") as f:
                f.read(1)
        except OSError as exc:
            problems.append(f"{where}.{field}: cannot read {path}: {exc.strerror or exc}")
    if problems:
        return problems
    if key is not None and cert is None:
        return [f"{where}.client_key: set without client_cert; give the certificate too"]
    try:
        ssl_context(sub.verify_tls, sub.ca_file, cert, key)
    except (ssl.SSLError, OSError, ValueError) as exc:
        named = ", ".join(f"{f} {p}" for f, p in files.items() if p is not None)
        return [f"{where}: the TLS files do not load ({named}): {exc}"]
    return []


def check_notify(config: NotifyConfig, source: str) -> None:
    """Refuse what would stop the notifier from starting, naming each YAML path: a
    subscription template that does not compile, a route pattern that does not compile (a key
    on a field events do not have is one) and a subscription TLS file that cannot be loaded.

    ``check-config`` and ``run`` both call this, so they accept and refuse the same files.
    Reads the TLS files (a few small local files, as building the senders does). Raises
    ConfigError listing every problem, with ``source`` (the config file) as its source.
    """
    from daemon.config import ConfigError
    from daemon.rules.pattern import compile_pattern

    problems: list[str] = []
    for topic, tcfg in config.topics.items():
        for j, sub in enumerate(tcfg.subscriptions):
            where = f"notify.topics.{topic}.subscriptions[{j}]"
            # One part at a time, so the problem names the template that is wrong.
            for part in ("title", "body"):
                text = getattr(sub.template, part)
                if not text:
                    continue
                title, body = (text, None) if part == "title" else (None, text)
                try:
                    Renderer(sub.protocol, title, body, f"{where}.template.{part}")
                except TemplateConfigError as exc:
                    problems.append(str(exc))
            problems += _tls_problems(where, sub)
    for i, route in enumerate(config.routes):
        if route.pattern is None:
            continue
        try:
            compile_pattern(route.pattern, f"notify.routes[{i}].pattern")
        except ValueError as exc:  # PatternError names the key it refuses
            problems.append(str(exc))
    if problems:
        raise ConfigError(source, problems)


def build(
    journal: Journal,
    config: Any,
    state_dir: Path,
    public_url: str,
    rules: Classifier,
    source: str = "config",
) -> Notifier:
    """The notifier for a root Config, classifying with ``rules`` (the daemon's RuleSet, so a
    rule reload applies to notifications at once). Raises ConfigError (see ``check_notify``)
    on a bad route pattern, template or TLS file; ``source`` names the config file in it."""
    from daemon.rules.pattern import compile_pattern

    check_notify(config.notify, source)
    return Notifier(journal, config.notify, rules, compile_pattern, state_dir, public_url)
