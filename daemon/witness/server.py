"""The witness over HTTP (C2SP tlog-witness v1), on aiohttp.

``POST /add-checkpoint``, body: ``old <size>``, zero to 63 base64 proof hashes,
an empty line, the signed checkpoint note. Checked in this order:

- 400: malformed body or checkpoint, more than 63 proof lines, a size above
  2^63-1, old size larger than the checkpoint size;
- 404: no trusted keys for the checkpoint's origin;
- 403: no signature by a trusted key, a trusted key's signature fails, or one
  trusted key signed twice (lines by unknown keys are ignored);
- 409: old size is not the size this witness cosigned last (0 if never);
  body ``<size>\\n``, ``Content-Type: text/x.tlog.size``;
- 422: the checkpoint does not extend the one held (the request is kept as
  evidence);
- 503: the clock reads earlier than the last cosignature for this log
  (``Retry-After``), or the database cannot be written;
- 200: one cosignature line ``— <name> base64(key id || time || signature)``.

Also 413 for a body over ``max_body`` bytes and 408 for one that does not
arrive within ``BODY_TIMEOUT`` seconds. ``GET /<sha256(origin) hex>/checkpoint``
serves the latest cosigned note (404 if none), ``GET /healthz`` answers ``ok``
(503 once the database failed in a way only a restart clears).
No client address is logged.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from daemon.integrity.checkpoint import (
    SIG_PREFIX,
    BadSignature,
    Checkpoint,
    NoteError,
    Signature,
    UnknownKey,
    open_note,
    split_note,
)
from daemon.integrity.cosignature import Cosigner
from daemon.telemetry import get_logger
from daemon.witness.state import (
    MAX_TREE_SIZE,
    ClockBehind,
    Conflict,
    Refusal,
    StateError,
    Submission,
    WitnessState,
)

log = get_logger("witness")

MAX_BODY_BYTES = 1 << 20
MAX_PROOF_LINES = 63
# A slow client cannot hold a request (and a connection) open for longer than this.
BODY_TIMEOUT = 10.0
SIZE_TYPE = "text/x.tlog.size"
_NO_STORE = {"Cache-Control": "no-store"}
# signed-note: no control characters but the newline (so no CR either).
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f]")


class BadRequest(Exception):
    """The request body or checkpoint is malformed (400)."""


@dataclass(frozen=True, slots=True)
class _Parsed:
    old_size: int
    proof: tuple[bytes, ...]
    checkpoint: Checkpoint
    note: str
    text: str
    signatures: list[Signature]


def _decimal(text: str, what: str) -> int:
    # Bounded before int(): Python refuses (ValueError) to parse very long digit strings.
    if not text.isascii() or not text.isdigit() or len(text) > 19 or (text != "0" and text[0] == "0"):
        raise BadRequest(f"{what} {text[:30]!r} is not a decimal number without leading zeros")
    value = int(text)
    if value > MAX_TREE_SIZE:
        raise BadRequest(f"{what} {value} is above 2^63-1")
    return value


def _hash(line: bytes) -> bytes:
    try:
        raw = base64.b64decode(line, validate=True)
    except binascii.Error as exc:
        raise BadRequest("a consistency proof line is not base64") from exc
    if len(raw) != 32 or base64.b64encode(raw) != line:
        raise BadRequest("a consistency proof line is not one canonical base64 SHA-256 hash")
    return raw


def parse_body(body: bytes) -> _Parsed:
    """Split and parse an add-checkpoint body; raise BadRequest naming what is wrong.

    The header ends at the first empty line: no header line can be empty, so
    everything after the first blank line is the note.
    """
    head, sep, note_bytes = body.partition(b"\n\n")
    if not sep:
        raise BadRequest("no empty line between the old size and proof lines and the checkpoint")
    lines = head.split(b"\n")
    if not lines[0].startswith(b"old "):
        raise BadRequest("the first line must be 'old <size>'")
    old_size = _decimal(lines[0][4:].decode("ascii", "replace"), "old size")
    if len(lines) - 1 > MAX_PROOF_LINES:
        raise BadRequest(f"{len(lines) - 1} consistency proof lines; at most {MAX_PROOF_LINES}")
    proof = tuple(_hash(ln) for ln in lines[1:])
    try:
        note = note_bytes.decode("utf-8")
        text, signatures = split_note(note)
    except (UnicodeDecodeError, NoteError) as exc:
        raise BadRequest(f"malformed checkpoint note: {exc}") from exc
    if _CONTROL.search(note):
        raise BadRequest("the checkpoint note contains a control character (CR, NUL, tab...)")
    text_lines = text.split("\n")
    if "\n\n" in text or len(text_lines) < 4 or not signatures:
        raise BadRequest("malformed checkpoint: origin, size and root lines, then signature lines")
    _decimal(text_lines[1], "checkpoint size")
    try:
        checkpoint = Checkpoint.parse(text)
    except ValueError as exc:
        raise BadRequest(f"malformed checkpoint: {exc}") from exc
    if old_size > checkpoint.size:
        raise BadRequest(f"old size {old_size} is larger than the checkpoint size {checkpoint.size}")
    return _Parsed(old_size, proof, checkpoint, note, text, signatures)


def _signature_line(sig: Signature) -> str:
    return f"{SIG_PREFIX}{sig.name} {base64.b64encode(sig.key_id + sig.signature).decode()}\n"


def _text(status: int, message: str, **headers: str) -> web.Response:
    return web.Response(status=status, text=message + "\n", content_type="text/plain",
                        charset="utf-8", headers={**_NO_STORE, **headers})


class Witness:
    """The request handlers, bound to a state database and the witness key."""

    def __init__(
        self, state: WitnessState, cosigner: Cosigner, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.state = state
        self.cosigner = cosigner
        self.clock = clock

    async def add_checkpoint(self, body: bytes) -> web.Response:
        """Answer one add-checkpoint body (see the module docstring for the statuses)."""
        try:
            parsed = parse_body(body)
        except BadRequest as exc:
            return _text(400, f"bad request: {exc}")
        cp = parsed.checkpoint
        try:
            keys = await asyncio.to_thread(self.state.keys_for, cp.origin)
        except StateError as exc:
            log.error("witness.storage_failed", error=str(exc))
            return _text(503, "witness storage unavailable")
        if not keys:
            return _text(404, "unknown log origin")
        try:
            _, good = open_note(parsed.note, keys)
        except BadSignature as exc:
            # A trusted key's signature that fails is a forgery attempt or a broken log: say so.
            log.warning("witness.bad_log_signature", origin=cp.origin, error=str(exc))
            return _text(403, f"forbidden: {exc}")
        except UnknownKey as exc:
            return _text(403, f"forbidden: {exc}")
        except NoteError as exc:  # split_note already passed; kept so nothing escapes as a 500
            return _text(400, f"bad request: {exc}")
        trusted = {(v.name, v.key_id) for v in good}
        own = [s for s in parsed.signatures if (s.name, s.key_id) in trusted]
        if len(own) != len({(s.name, s.key_id) for s in own}):
            # tlog-checkpoint: one line per key; two from a trusted key make the note invalid.
            return _text(403, "forbidden: a trusted key signed the checkpoint twice")
        sub = Submission(
            origin=cp.origin, old_size=parsed.old_size, proof=parsed.proof, size=cp.size, root=cp.root,
            text=parsed.text, log_signatures="".join(map(_signature_line, own)), request=body,
        )
        return await self._advance(sub)

    async def _advance(self, sub: Submission) -> web.Response:
        def cosign(timestamp: int) -> str:
            return self.cosigner.cosign(sub.text, timestamp)

        try:
            line = await asyncio.to_thread(self.state.advance, sub, cosign, self.clock)
        except Conflict as exc:
            log.info("witness.conflict", origin=sub.origin, old=sub.old_size, held=exc.held_size)
            return web.Response(status=409, body=f"{exc.held_size}\n".encode(),
                                headers={"Content-Type": SIZE_TYPE, **_NO_STORE})
        except ClockBehind as exc:
            log.error("witness.clock_behind", origin=sub.origin, seconds=exc.behind)
            return _text(503, exc.message, **{"Retry-After": str(max(1, exc.behind))})
        except Refusal as exc:
            log.warning("witness.refused", origin=sub.origin, status=exc.status, reason=exc.message)
            return _text(exc.status, exc.message)
        except StateError as exc:
            log.error("witness.storage_failed", origin=sub.origin, error=str(exc))
            return _text(503, "witness storage unavailable")
        log.info("witness.cosigned", origin=sub.origin, old=sub.old_size, size=sub.size)
        return web.Response(status=200, text=line, content_type="text/plain", charset="utf-8",
                            headers=_NO_STORE)

    async def checkpoint(self, request: web.Request) -> web.Response:
        try:
            held = await asyncio.to_thread(self.state.held_by_hash, request.match_info["hash"])
        except StateError as exc:
            log.error("witness.storage_failed", error=str(exc))
            return _text(503, "witness storage unavailable")
        if held is None:
            return _text(404, "no checkpoint cosigned for this log")
        return web.Response(text=held.note, content_type="text/plain", charset="utf-8", headers=_NO_STORE)


def build_app(witness: Witness, *, max_body: int = MAX_BODY_BYTES) -> web.Application:
    """The aiohttp application: add-checkpoint, the monitoring endpoint and healthz."""

    async def add_checkpoint(request: web.Request) -> web.Response:
        if request.content_length is not None and request.content_length > max_body:
            return _text(413, f"request body over {max_body} bytes")
        try:
            async with asyncio.timeout(BODY_TIMEOUT):
                body = await request.read()
        except web.HTTPRequestEntityTooLarge:  # chunked bodies: aiohttp counts while reading
            return _text(413, f"request body over {max_body} bytes")
        except TimeoutError:
            return _text(408, f"the request body did not arrive within {BODY_TIMEOUT:g} s")
        return await witness.add_checkpoint(body)

    async def healthz(request: web.Request) -> web.Response:
        return _text(200, "ok") if witness.state.usable else _text(503, "witness storage failed")

    app = web.Application(client_max_size=max_body)
    app.router.add_post("/add-checkpoint", add_checkpoint)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/{hash:[0-9a-f]{64}}/checkpoint", witness.checkpoint)
    return app


class WitnessServer:
    """The app on a TCP listener. ``start`` returns the bound port (pass 0 for a free one)."""

    def __init__(self, witness: Witness, host: str, port: int, *, max_body: int = MAX_BODY_BYTES) -> None:
        self.host, self.port = host, port
        self._runner = web.AppRunner(
            build_app(witness, max_body=max_body),
            access_log=None,  # no client addresses in the logs
            handle_signals=False,
            shutdown_timeout=5,
            keepalive_timeout=15,
        )

    async def start(self) -> int:
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        try:
            await site.start()
        except BaseException:
            await self._runner.cleanup()
            raise
        addresses = self._runner.addresses
        self.port = int(addresses[0][1]) if addresses else self.port
        return self.port

    async def stop(self) -> None:
        """Stop accepting, let in-flight requests finish (their commits included), close."""
        await self._runner.cleanup()
