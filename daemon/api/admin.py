"""The admin API: the dead-letter store, reload and the integrity state, over HTTP.

Each route goes through ``ApiGuard.protect("admin", <operationId>, <resource type>, ...)``,
so only the ``admin`` role reaches a handler, rate limits apply, and every call (its
refusals and 400s included) is recorded in the trail before it is answered. Parameters
and bodies are checked against the OpenAPI document (daemon.api.params).

- ``GET /v1/admin/dlq`` lists what ``trailkeeper notify dlq list`` lists: the dead
  messages of every outbox under the state directory, including outboxes of
  subscriptions since removed from the config (they stay on disk).
- ``POST /v1/admin/dlq/replay`` does what ``notify dlq replay`` does: dead messages
  go back to pending with a fresh age; the running worker is woken to send them.
- ``POST /v1/admin/reload`` is SIGHUP: ``App.reload``.
- ``GET /v1/admin/integrity``: per verified tracker, the chain's head digest, its
  checkpoint as published and each witness's state, from the digest writer's state.

Dead letters carry event content, so a token limited to some tenants sees (and
replays) only messages of events of those tenants; group summaries, which can span
tenants, only a token for every tenant. Reload and the integrity state hold no event
content and are daemon-wide.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from daemon.api.auth import Principal
from daemon.api.params import ParameterError
from daemon.api.routes import ApiGuard, api_spec, audit_info, audit_params, error
from daemon.notify.outbox import Outbox, OutMessage, list_dead_sync, replay_sync
from daemon.telemetry import get_logger

if TYPE_CHECKING:
    from daemon.integrity.runtime import Integrity
    from daemon.notify.notifier import Notifier
    from daemon.notify.worker import SubscriptionWorker

log = get_logger("api.admin")

DEFAULT_LIMIT = 100
ROUTES = {
    "listDeadLetters": "/v1/admin/dlq",
    "replayDeadLetters": "/v1/admin/dlq/replay",
    "reloadConfig": "/v1/admin/reload",
    "getIntegrity": "/v1/admin/integrity",
}


@dataclass(frozen=True, slots=True)
class Box:
    """One outbox file; ``outbox`` and ``worker`` are set when the running config delivers it."""

    topic: str
    subscription: str
    path: Path
    outbox: Outbox | None = None
    worker: SubscriptionWorker | None = None

    @property
    def active(self) -> bool:
        return self.outbox is not None


def encode_cursor(topic: str, subscription: str, seq: int) -> str:
    """A dead-letter page cursor: after message ``seq`` of that outbox."""
    return base64.urlsafe_b64encode(orjson.dumps([topic, subscription, seq])).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[str, str, int]:
    """Raises ParameterError for anything ``encode_cursor`` did not make."""
    try:
        value = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError) as exc:
        raise ParameterError(
            "cursor", "not a cursor returned by this API (pass next_cursor unchanged)"
        ) from exc
    if (
        not isinstance(value, list)
        or len(value) != 3
        or not isinstance(value[0], str)
        or not isinstance(value[1], str)
        or not isinstance(value[2], int)
        or isinstance(value[2], bool)
    ):
        raise ParameterError("cursor", "not a cursor returned by this API (pass next_cursor unchanged)")
    return value[0], value[1], value[2]


def _event(m: OutMessage) -> dict[str, Any]:
    doc = m.body.get("doc")
    event = doc.get("event") if isinstance(doc, dict) else None
    return event if isinstance(event, dict) else {}


def _kind(m: OutMessage) -> str:
    doc = m.body.get("doc")
    return "group" if isinstance(doc, dict) and doc.get("kind") == "group" else "event"


def _tenant(m: OutMessage) -> str | None:
    tenant = _event(m).get("tenant") if _kind(m) == "event" else None
    return tenant if isinstance(tenant, str) else None


def _visible(principal: Principal, m: OutMessage) -> bool:
    return principal.tenants is None or (_kind(m) == "event" and principal.sees(_tenant(m)))


def dead_letter(box: Box, m: OutMessage) -> dict[str, Any]:
    """One message as the API shows it (``#/components/schemas/DeadLetter``)."""
    event_id = _event(m).get("id") if _kind(m) == "event" else None
    title = m.body.get("title")
    return {
        "topic": box.topic,
        "subscription": box.subscription,
        "id": m.id,
        "kind": _kind(m),
        "created": m.created,
        "parked": m.done_at,
        "attempts": m.attempts,
        "error": m.last_error,
        "title": title if isinstance(title, str) else None,
        "event_id": event_id if isinstance(event_id, str) else None,
        "tenant": _tenant(m),
        "active": box.active,
    }


class _Refused(Exception):
    """A request answered before its handler's work: carries the response (413, 415)."""

    def __init__(self, response: web.Response) -> None:
        super().__init__(response.status)
        self.response = response


class AdminApi:
    """The four admin routes. Everything it works on is reached through getters, read per
    request: reload replaces the notifier, and integrity starts after the routes exist."""

    def __init__(
        self,
        guard: ApiGuard,
        *,
        state_dir: Path,
        notifier: Callable[[], Notifier | None],
        reload: Callable[[], Awaitable[bool]],
        config_path: str | None,
        integrity: Callable[[], Integrity | None],
        last_validation: Callable[[], dict[str, Any] | None] | None = None,
    ) -> None:
        self.guard = guard
        self.state_dir = state_dir
        self.notifier = notifier
        self._reload = reload
        self.config_path = config_path
        self.integrity = integrity
        self.last_validation = last_validation
        # One reload at a time from the API: two would race to swap the notifier.
        self._reload_lock = asyncio.Lock()

    def add_routes(self, app: web.Application) -> None:
        g = self.guard
        for operation, resource, method, handler in (
            ("listDeadLetters", "dlq", "GET", self.list_dead_letters),
            ("replayDeadLetters", "dlq", "POST", self.replay_dead_letters),
            ("reloadConfig", "config", "POST", self.reload),
            ("getIntegrity", "integrity", "GET", self.get_integrity),
        ):
            route = ROUTES[operation]
            app.router.add_route(method, route, g.protect("admin", operation, resource, handler, route=route))

    # --- the dead-letter store ------------------------------------------------------------

    def boxes(self) -> list[Box]:
        """Every outbox: the running config's, then any other file under state/notify, sorted."""
        found: dict[Path, Box] = {}
        notifier = self.notifier()
        if notifier is not None:
            for topic, subs in notifier.subs.items():
                for s in subs:
                    found[s.outbox.path] = Box(topic, s.cfg.name, s.outbox.path, s.outbox, s.worker)
        for path in sorted((self.state_dir / "notify").glob("*.sqlite")):
            if path not in found:
                # Outside the running config, names come from the file name, as the CLI reads them.
                topic, _, name = path.stem.partition(".")
                found[path] = Box(topic, name, path)
        return sorted(found.values(), key=lambda b: (b.topic, b.subscription))

    @staticmethod
    def _selected(boxes: list[Box], topic: str | None, subscription: str | None) -> list[Box]:
        return [
            b
            for b in boxes
            if (topic is None or b.topic == topic)
            and (subscription is None or b.subscription == subscription)
        ]

    async def list_dead_letters(self, request: web.Request, principal: Principal | None) -> web.Response:
        """A page of dead letters in (topic, subscription, parking) order."""
        assert principal is not None
        info = audit_info()
        info["request"] = {"method": "GET", "filters": audit_params(request.query)}
        try:
            p = api_spec()["listDeadLetters"].parse_query(request.query)
            after = decode_cursor(p["cursor"]) if p.get("cursor") else None
        except ParameterError as exc:
            return error(400, str(exc))
        tenant: str | None = p.get("tenant")
        if tenant is not None and not principal.sees(tenant):
            return error(403, f"token {principal.name!r} may not read tenant {tenant!r}")
        limit: int = p.get("limit", DEFAULT_LIMIT)
        items: list[tuple[Box, OutMessage]] = []
        for box in self._selected(self.boxes(), p.get("topic"), p.get("subscription")):
            if after is not None and (box.topic, box.subscription) < after[:2]:
                continue
            dead = await asyncio.to_thread(list_dead_sync, box.path)
            for m in dead:
                if after is not None and (box.topic, box.subscription) == after[:2] and m.seq <= after[2]:
                    continue
                if not _visible(principal, m) or (tenant is not None and _tenant(m) != tenant):
                    continue
                items.append((box, m))
            if len(items) > limit:
                break
        page, more = items[:limit], len(items) > limit
        last = page[-1] if more else None
        next_cursor = encode_cursor(last[0].topic, last[0].subscription, last[1].seq) if last else None
        info["response"] = {"count": len(page), "more": more}
        return web.json_response(
            {"dead_letters": [dead_letter(b, m) for b, m in page], "next_cursor": next_cursor}
        )

    async def _json_body(self, request: web.Request, operation: str) -> Any:
        """The request's JSON body, checked against the document. Raises ParameterError (400)
        or _Refused (413, 415): answered by the handler, so the guard audits them too."""
        if request.content_type != "application/json":
            raise _Refused(
                error(
                    415,
                    f"the body must be application/json, not {request.content_type!r}",
                    accepted_types=["application/json"],
                )
            )
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge as exc:
            raise _Refused(error(413, f"the request body is too large: {exc.text}")) from exc
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ParameterError("body", f"not valid JSON ({exc})") from exc
        return api_spec()[operation].parse_body(value)

    async def replay_dead_letters(self, request: web.Request, principal: Principal | None) -> web.Response:
        """Move the chosen dead letters back to their outboxes and wake their workers."""
        assert principal is not None
        info = audit_info()
        info["request"] = {"method": "POST"}
        try:
            body = await self._json_body(request, "replayDeadLetters")
        except ParameterError as exc:
            return error(400, str(exc))
        except _Refused as refused:
            return refused.response
        ids: list[str] | None = body.get("ids")
        topic, subscription = body.get("topic"), body.get("subscription")
        info["request"] = {
            "method": "POST",
            "all": ids is None,
            "ids": ids[:100] if ids is not None else None,
            "topic": topic,
            "subscription": subscription,
        }
        wanted = set(ids) if ids is not None else None
        found: set[str] = set()
        total = 0
        per_box: list[dict[str, Any]] = []
        for box in self._selected(self.boxes(), topic, subscription):
            chosen: list[str] | None
            if wanted is None and principal.tenants is None:
                chosen = None  # every dead letter of the box, in one statement
            else:
                dead = await asyncio.to_thread(list_dead_sync, box.path)
                chosen = [m.id for m in dead if _visible(principal, m) and (wanted is None or m.id in wanted)]
                found.update(chosen)
                if not chosen:
                    continue
            if box.outbox is not None:
                count = await box.outbox.replay(chosen)
            else:
                count = await asyncio.to_thread(replay_sync, box.path, chosen)
            if count and box.worker is not None:
                box.worker.wake()
            if count or chosen:
                per_box.append(
                    {
                        "topic": box.topic,
                        "subscription": box.subscription,
                        "replayed": count,
                        "active": box.active,
                    }
                )
            total += count
        missing = sorted(wanted - found) if wanted is not None else []
        log.info("notify.dlq_replayed", replayed=total, missing=len(missing), by=principal.name)
        info["response"] = {"replayed": total, "missing": len(missing)}
        return web.json_response({"replayed": total, "missing": missing, "subscriptions": per_box})

    # --- reload -----------------------------------------------------------------------------

    async def reload(self, request: web.Request, principal: Principal | None) -> web.Response:
        """What SIGHUP does; 422 when the file or its rules do not load (nothing changes)."""
        assert principal is not None
        info = audit_info()
        info["request"] = {"method": "POST"}
        async with self._reload_lock:
            ok = await self._reload()
        info["response"] = {"reloaded": ok}
        if not ok:
            return error(
                422,
                f"the config {self.config_path or '(embedded default)'} or its rules do not load; "
                "the ones in force stay. The daemon's log says what is wrong (app.reload_failed, "
                "rules.reload_failed or notify.reload_failed)",
            )
        return web.json_response({"reloaded": True, "config": self.config_path})

    # --- integrity --------------------------------------------------------------------------

    async def get_integrity(self, request: web.Request, principal: Principal | None) -> web.Response:
        """Each chain's head, published checkpoint and witnesses; the last validation or null."""
        assert principal is not None
        audit_info()["request"] = {"method": "GET"}
        integrity = self.integrity()
        chains = []
        for tracker, dw in sorted((integrity.writers if integrity is not None else {}).items()):
            st = dw.state.doc
            last = st.get("last") or None
            pending = st.get("pending") or None
            states = st.get("witnesses") or {}
            witnesses = []
            for w in dw.publisher.witnesses if dw.publisher is not None else []:
                vkey = w.key.vkey()
                ws = states.get(vkey) or {}
                witnesses.append(
                    {
                        "name": w.label,
                        "url": w.url,
                        "vkey": vkey,
                        "size": ws.get("size"),
                        "cosigned_at": ws.get("cosigned_at"),
                        "missed": int(ws.get("missed", 0)),
                        "error": ws.get("error"),
                    }
                )
            chains.append(
                {
                    "tracker": tracker,
                    "writer": dw.writer,
                    "sequence": int(st.get("sequence", 0)),
                    "head": {k: last[k] for k in ("key", "sha256", "end_time", "tree_size")}
                    if last
                    else None,
                    "pending": pending["key"] if pending else None,
                    "checkpoint": last.get("checkpoint") if last else None,
                    "published": st.get("published"),
                    "witnesses": witnesses,
                }
            )
        validation = (
            await asyncio.to_thread(self.last_validation) if self.last_validation is not None else None
        )
        return web.json_response({"chains": chains, "last_validation": validation})
