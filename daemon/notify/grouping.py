"""Alert-storm control: grouping of events per route, Alertmanager style.

Events of a grouped route with equal ``group_by`` values form a group. The
group's first message waits ``group_wait`` to gather more; while events keep
coming, one summary goes out at most every ``group_interval``; a group quiet for
``repeat_interval`` is forgotten, so the next event opens a fresh group.
Duplicate event ids (a source sending the same event twice, or a journal
replay) are counted once.

Durability: a summary's events stay uncommitted in the journal until the
summary is in the outboxes. Per group, the offset of the last event already
summarised (``through``) is saved before the notifier's cursor moves, so a
replay after a crash never summarises an event twice.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from daemon.durable import atomic_write
from daemon.notify.config import RouteConfig, severity_rank

MAX_IDS_LISTED = 10
RECENT_IDS = 100_000  # per route: event ids remembered for dedupe across summaries


@dataclass(slots=True)
class _Batch:
    first_offset: int
    first_ingest_ms: int
    count: int = 0
    operations: Counter[str] = field(default_factory=Counter)
    principals: Counter[str] = field(default_factory=Counter)
    rules: dict[str, dict[str, Any]] = field(default_factory=dict)
    first_time: str | None = None
    last_time: str | None = None
    event_ids: list[str] = field(default_factory=list)
    last_offset: int = -1
    severity: str = "info"


@dataclass(slots=True)
class Group:
    route: int
    key: tuple[str, ...]
    fields: dict[str, str | None]
    flush_at: float
    last_activity: float
    last_sent: float | None = None
    batch: _Batch | None = None


def principal(canonical: dict[str, Any]) -> str:
    return str(canonical.get("user_name") or canonical.get("user_id") or "unknown")


def group_id(route: int, key: tuple[str, ...]) -> str:
    return f"{route}|" + hashlib.sha256(orjson.dumps(list(key))).hexdigest()[:24]


class Grouper:
    """Holds open groups of all grouped routes. Not thread-safe; used by the notifier's loop."""

    def __init__(self, routes: list[RouteConfig], state_path: Path, max_ids: int = MAX_IDS_LISTED) -> None:
        self.routes = routes
        self.state_path = state_path
        self.max_ids = max_ids
        self.groups: dict[str, Group] = {}
        self.through: dict[str, int] = {}
        self.recent: dict[int, OrderedDict[str, None]] = {}
        self.dirty = False

    # --- persistence ------------------------------------------------------------------------

    def load(self) -> None:
        if self.state_path.exists():
            doc = orjson.loads(self.state_path.read_bytes())
            self.through = {k: int(v) for k, v in doc.get("through", {}).items()}
            for gid, g in doc.get("sent", {}).items():
                route = int(gid.split("|", 1)[0])
                if route >= len(self.routes):
                    continue
                self.groups[gid] = Group(
                    route,
                    tuple(g["key"]),
                    g["fields"],
                    flush_at=0.0,
                    last_activity=float(g["last_activity"]),
                    last_sent=float(g["last_sent"]),
                )

    def _save_sync(self, data: bytes) -> None:
        atomic_write(self.state_path, data)

    async def save(self) -> None:
        sent = {
            gid: {
                "key": list(g.key),
                "fields": g.fields,
                "last_sent": g.last_sent,
                "last_activity": g.last_activity,
            }
            for gid, g in self.groups.items()
            if g.last_sent is not None
        }
        data = orjson.dumps({"through": self.through, "sent": sent})
        await asyncio.to_thread(self._save_sync, data)
        self.dirty = False

    # --- grouping ---------------------------------------------------------------------------

    def add(
        self,
        route_index: int,
        offset: int,
        ingest_ms: int,
        canonical: dict[str, Any],
        matches: list[dict[str, Any]],
        now: float,
    ) -> None:
        """Take one event into its group (no-op for a replayed or duplicate event)."""
        route = self.routes[route_index]
        fields: dict[str, str | None] = {}
        for f in route.group_by:
            if f == "rule":
                fields[f] = matches[0]["rule"]
            elif f == "category":
                fields[f] = matches[0]["category"]
            else:
                fields[f] = canonical.get(f)
        key = tuple("" if v is None else v for v in fields.values())
        gid = group_id(route_index, key)
        if offset <= self.through.get(gid, -1):
            return  # summarised before a restart
        event_id = str(canonical.get("id"))
        # An event is (tenant, id): two tenants may use one id, and each is a key event.
        identity = f"{canonical.get('tenant') or ''}\x00{event_id}"
        recent = self.recent.setdefault(route_index, OrderedDict())
        if identity in recent:
            return
        recent[identity] = None
        if len(recent) > RECENT_IDS:
            recent.popitem(last=False)
        g = self.groups.get(gid)
        if g is not None and g.batch is None and now - g.last_activity >= route.repeat_interval:
            del self.groups[gid]
            g = None
        if g is None:
            g = Group(route_index, key, fields, flush_at=now + route.group_wait, last_activity=now)
            self.groups[gid] = g
        if g.batch is None:
            g.batch = _Batch(offset, ingest_ms)
            if g.last_sent is not None:
                g.flush_at = max(now, g.last_sent + route.group_interval)
        g.last_activity = now
        b = g.batch
        b.count += 1
        b.operations[str(canonical.get("operation"))] += 1
        b.principals[principal(canonical)] += 1
        for m in matches:
            b.rules.setdefault(m["rule"], m)
            if severity_rank(m["severity"]) > severity_rank(b.severity):
                b.severity = m["severity"]
        t = canonical.get("time")
        if t is not None:
            if b.first_time is None or t < b.first_time:
                b.first_time = t
            if b.last_time is None or t > b.last_time:
                b.last_time = t
        if len(b.event_ids) < self.max_ids:
            b.event_ids.append(event_id)
        b.last_offset = max(b.last_offset, offset)

    def next_deadline(self) -> float | None:
        times = [g.flush_at for g in self.groups.values() if g.batch is not None]
        return min(times) if times else None

    def oldest_held(self) -> int | None:
        """The lowest journal offset held in an unsent batch (the cursor must stay at or below it)."""
        offs = [g.batch.first_offset for g in self.groups.values() if g.batch is not None]
        return min(offs) if offs else None

    def due(self, now: float, force: bool = False) -> list[tuple[str, Group, dict[str, Any], int]]:
        """Take every batch whose time has come: (group id, group, summary, first ingest ms).

        The caller writes the summaries to the outboxes, then calls ``sent``.
        """
        out = []
        for gid, g in self.groups.items():
            b = g.batch
            if b is None or (not force and now < g.flush_at):
                continue
            route = self.routes[g.route]
            summary = {
                "key": g.fields,
                "count": b.count,
                "operations": dict(b.operations.most_common()),
                "principals": dict(b.principals.most_common()),
                "first_time": b.first_time,
                "last_time": b.last_time,
                "event_ids": b.event_ids,
                "rules": sorted(b.rules),
                "first_offset": b.first_offset,
                "last_offset": b.last_offset,
                "group_by": route.group_by,
            }
            out.append(
                (
                    gid,
                    g,
                    {"summary": summary, "matches": list(b.rules.values()), "severity": b.severity},
                    b.first_ingest_ms,
                )
            )
        return out

    def sent(self, gid: str, now: float) -> None:
        g = self.groups[gid]
        assert g.batch is not None
        self.through[gid] = g.batch.last_offset
        g.batch = None
        g.last_sent = now
        g.flush_at = now + self.routes[g.route].group_interval
        self.dirty = True

    def prune(self, now: float, committed: int) -> None:
        """Forget quiet groups and boundaries the committed cursor has passed."""
        for gid in [
            gid
            for gid, g in self.groups.items()
            if g.batch is None and now - g.last_activity >= self.routes[g.route].repeat_interval
        ]:
            del self.groups[gid]
            self.dirty = True
        stale = [gid for gid, off in self.through.items() if off < committed and gid not in self.groups]
        for gid in stale:
            del self.through[gid]
            self.dirty = True
