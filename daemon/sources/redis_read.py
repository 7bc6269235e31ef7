"""The half of the Redis source that runs in a decode worker process: reads ahead.

Kept apart from ``daemon.sources.redis`` so that a worker imports only redis-py's
synchronous client and the decoder, not the daemon's broker clients.
"""

from __future__ import annotations

import contextlib
from typing import Any, NamedTuple

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from daemon.decodepool import DecodedMessages, decode_messages


def text(value: bytes) -> str:
    """A stream entry's id or field name as text (bytes that are not UTF-8 escaped)."""
    return value.decode("utf-8", errors="backslashreplace")


class ReadAhead(NamedTuple):
    """A read done in a worker, in flat lists (cheap to send back): each entry's id and body
    (None when it lacks the body field; its fields are then in ``fields``), and the journal
    payloads of the entries with a body of at most ``max_message_bytes``."""

    ids: list[bytes]
    bodies: list[bytes | None]
    fields: dict[int, dict[bytes, bytes]]
    decoded: DecodedMessages


class ReadParams(NamedTuple):
    """What a worker needs to read for a source (picklable)."""

    url: str
    client_name: str
    stream: str
    group: str
    consumer: str
    batch: int
    field: bytes
    max_message_bytes: int
    max_event_bytes: int
    source: str


# A worker's connections, one per source: kept between reads, dropped when one fails.
_worker_clients: dict[tuple[str, str], Any] = {}


def read_ahead(p: ReadParams) -> ReadAhead:
    """Runs in a decode worker: XREADGROUP of new entries without blocking, decoded.

    Not idempotent: the entries read are pending at the consumer from then on, whether or
    not the result reaches the caller. May raise redis errors (the connection is dropped,
    the next call opens a new one).
    """
    key = (p.url, p.client_name)
    client: Any = _worker_clients.get(key)
    if client is None:
        # Reconnection is the source's: a command never silently retries on a new socket (a
        # retried XREADGROUP would leave the entries of the lost reply pending, unseen).
        client = redis.Redis.from_url(
            p.url, retry=Retry(NoBackoff(), 0), **client_options(p.client_name, 10.0)
        )
        _worker_clients[key] = client
    try:
        resp = client.xreadgroup(p.group, p.consumer, {p.stream: ">"}, count=p.batch)
    except Exception:
        del _worker_clients[key]
        with contextlib.suppress(Exception):
            client.close()
        raise
    entries = resp[0][1] if resp else []
    ids: list[bytes] = []
    bodies: list[bytes | None] = []
    missing: dict[int, dict[bytes, bytes]] = {}
    decodable: list[tuple[bytes, str]] = []
    prefix = p.stream + "/"
    for entry_id, fields in entries:
        body = fields.get(p.field)
        if body is None:
            missing[len(ids)] = fields
        elif len(body) <= p.max_message_bytes:
            decodable.append((body, prefix + text(entry_id)))
        ids.append(entry_id)
        bodies.append(body)
    return ReadAhead(ids, bodies, missing, decode_messages(decodable, p.max_event_bytes, p.source))


def client_options(client_name: str, socket_timeout: float) -> dict[str, Any]:
    """Client settings both connections share (the retry policy is each client kind's own)."""
    return {"client_name": client_name, "socket_connect_timeout": 5, "socket_timeout": socket_timeout}
