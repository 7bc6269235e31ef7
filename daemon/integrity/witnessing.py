"""Publishing each chain's checkpoint and getting it cosigned by witnesses (C2SP tlog-witness).

Every digest interval the chain's signed checkpoint goes to each configured
witness with a consistency proof from the size that witness last cosigned
(``POST <url>/add-checkpoint``); the cosignature lines that come back are
appended to the note, which is then written to
``<prefix>/<tracker>/_checkpoint/<writer>`` in the tracker's store and in every
``integrity.checkpoint_stores`` store. A witness that is down, behind or
refusing never delays the digest chain: it is counted, logged, and reported
by /readyz once it has missed ``witness_alert_after`` intervals.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from daemon.archive.keys import CHECKPOINT_DIR
from daemon.integrity import merkle
from daemon.integrity.checkpoint import NoteError
from daemon.integrity.config import WitnessConfig
from daemon.integrity.cosignature import CosignerKey, cosignatures, merge_signatures, parse_cosigner_vkey
from daemon.integrity.tree import TreeLog
from daemon.stores.base import Store, StoreError
from daemon.telemetry import (
    CHECKPOINT_PUBLISHED,
    WITNESS_LAST_COSIGNED,
    WITNESS_MISSED_INTERVALS,
    WITNESS_REQUESTS,
    get_logger,
)

log = get_logger("integrity")

MAX_PROOF_LINES = 63


def checkpoint_key(prefix: str, tracker: str, writer: str) -> str:
    return "/".join(p for p in (prefix.strip("/"), tracker, CHECKPOINT_DIR, writer) if p)


def origin_path(origin: str) -> str:
    """The witness's monitoring path for ``origin``: ``<sha256(origin) hex>/checkpoint``."""
    return f"{hashlib.sha256(origin.encode()).hexdigest()}/checkpoint"


class WitnessError(Exception):
    """A witness did not cosign. ``result`` is the metric label."""

    result = "unavailable"


class WitnessConflict(WitnessError):
    """409: the witness holds another size for this log; ``size`` is the one it holds."""

    result = "conflict"

    def __init__(self, size: int) -> None:
        super().__init__(f"the witness last cosigned size {size}")
        self.size = size


class WitnessRefused(WitnessError):
    """400/403/404/422: the witness will not cosign this checkpoint as sent."""

    result = "refused"


def add_checkpoint_body(note: str, old_size: int, proof: Sequence[bytes]) -> bytes:
    if len(proof) > MAX_PROOF_LINES:
        raise ValueError(f"a consistency proof of {len(proof)} hashes is longer than tlog-witness allows")
    lines = [f"old {old_size}", *(base64.b64encode(h).decode() for h in proof)]
    return ("\n".join(lines) + "\n\n" + note).encode()


async def add_checkpoint(
    session: aiohttp.ClientSession, url: str, note: str, old_size: int, proof: Sequence[bytes], timeout: float
) -> str:
    """POST one add-checkpoint request; return the cosignature line(s).

    Raises WitnessConflict (409), WitnessRefused (other 4xx), WitnessError (network, 5xx).
    """
    body = add_checkpoint_body(note, old_size, proof)
    try:
        async with session.post(
            url.rstrip("/") + "/add-checkpoint",
            data=body,
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as resp:
            text = (await resp.content.read(64 * 1024)).decode("utf-8", "replace")
            status = resp.status
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise WitnessError(f"cannot reach the witness: {exc or type(exc).__name__}") from exc
    if status == 200:
        return text
    if status == 409:
        try:
            return_size = int(text.strip().splitlines()[0])
        except (ValueError, IndexError) as exc:
            raise WitnessRefused(f"409 without a size: {text[:200]!r}") from exc
        raise WitnessConflict(return_size)
    if 400 <= status < 500:
        raise WitnessRefused(f"HTTP {status}: {text.strip()[:300]}")
    raise WitnessError(f"HTTP {status}: {text.strip()[:300]}")


async def fetch_witnessed(
    session: aiohttp.ClientSession, url: str, origin: str, timeout: float
) -> str | None:
    """The latest checkpoint a witness cosigned for ``origin`` (its monitoring endpoint).

    None when the witness has nothing for the origin (404). Raises WitnessError otherwise.
    """
    try:
        async with session.get(
            f"{url.rstrip('/')}/{origin_path(origin)}", timeout=aiohttp.ClientTimeout(total=timeout)
        ) as resp:
            if resp.status == 404:
                return None
            text = (await resp.content.read(256 * 1024)).decode("utf-8", "replace")
            if resp.status != 200:
                raise WitnessError(f"{url}: HTTP {resp.status}: {text.strip()[:200]}")
            return text
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise WitnessError(f"{url}: cannot reach the witness: {exc or type(exc).__name__}") from exc


@dataclass(slots=True)
class _Witness:
    config: WitnessConfig
    key: CosignerKey

    @property
    def url(self) -> str:
        return str(self.config.url)

    @property
    def label(self) -> str:
        return self.key.name


class CheckpointPublisher:
    """One chain's witnesses and checkpoint objects. ``publish`` after each digest.

    ``state`` is the chain state's ``witnesses`` map (persisted by the digest writer):
    per witness vkey the size it last cosigned, when, and how many intervals it missed.
    """

    def __init__(
        self,
        *,
        tracker: str,
        writer: str,
        prefix: str,
        stores: Sequence[Store],
        witnesses: Sequence[WitnessConfig],
        alert_after: int,
    ) -> None:
        self.tracker = tracker
        self.key = checkpoint_key(prefix, tracker, writer)
        self.stores = list(stores)
        self.witnesses = [_Witness(w, parse_cosigner_vkey(w.vkey)) for w in witnesses]
        self.alert_after = alert_after
        self._session: aiohttp.ClientSession | None = None
        self.problems: dict[str, str] = {}

    def healthy_problems(self, state: dict[str, Any]) -> list[str]:
        """What /readyz reports: witnesses that have missed too many intervals."""
        out = []
        for w in self.witnesses:
            st = state.get(w.key.vkey(), {})
            if int(st.get("missed", 0)) >= self.alert_after:
                out.append(
                    f"witness {w.label} ({w.url}) has not cosigned tracker {self.tracker} for "
                    f"{st['missed']} intervals: {st.get('error') or 'no answer'}"
                )
        return out

    async def publish(self, note: str, size: int, tree: TreeLog, state: dict[str, Any]) -> str:
        """Get ``note`` cosigned and write it out. Never raises for a witness or store failure."""
        lines: list[str] = []
        if self.witnesses:
            if self._session is None:
                self._session = aiohttp.ClientSession()
            results = await asyncio.gather(
                *(
                    self._cosign(w, note, size, tree, state.setdefault(w.key.vkey(), {}))
                    for w in self.witnesses
                )
            )
            lines = [ln for r in results if r for ln in r.splitlines(keepends=True)]
        cosigned = merge_signatures(note, lines)
        for store in self.stores:
            try:
                await store.replace(self.key, cosigned.encode())
                CHECKPOINT_PUBLISHED.labels(self.tracker, store.name, "ok").inc()
            except StoreError as exc:
                CHECKPOINT_PUBLISHED.labels(self.tracker, store.name, "failed").inc()
                log.error(
                    "integrity.checkpoint_publish_failed",
                    tracker=self.tracker,
                    store=store.name,
                    key=self.key,
                    error=str(exc),
                    detail="the next interval publishes again",
                )
        return cosigned

    async def _cosign(
        self, w: _Witness, note: str, size: int, tree: TreeLog, st: dict[str, Any]
    ) -> str | None:
        old = int(st.get("size", 0))
        try:
            try:
                lines = await self._send(w, note, old, size, tree)
            except WitnessConflict as exc:
                # The witness knows better where it stands (a restored state file, a first contact
                # with a witness that already saw this log): prove from its size, once.
                if exc.size > size:
                    raise WitnessRefused(
                        f"the witness has cosigned {exc.size} records of this log, more than its "
                        f"{size}: the log's state was rolled back or forked"
                    ) from exc
                lines = await self._send(w, note, exc.size, size, tree)
            try:
                valid = cosignatures(merge_signatures(note, [lines]), [w.key])
            except NoteError as exc:
                raise WitnessRefused(f"its answer does not verify: {exc}") from exc
            if not valid:
                raise WitnessRefused(f"its answer holds no cosignature by {w.key.vkey()}: {lines[:200]!r}")
        except WitnessError as exc:
            st["missed"] = int(st.get("missed", 0)) + 1
            st["error"] = str(exc)
            WITNESS_REQUESTS.labels(self.tracker, w.label, exc.result).inc()
            WITNESS_MISSED_INTERVALS.labels(self.tracker, w.label).set(st["missed"])
            level = log.error if isinstance(exc, WitnessRefused) else log.warning
            level(
                "integrity.witness_failed",
                tracker=self.tracker,
                witness=w.label,
                url=w.url,
                error=str(exc),
                missed_intervals=st["missed"],
            )
            return None
        now = time.time()
        st.update(size=size, cosigned_at=now, missed=0, error=None)
        WITNESS_REQUESTS.labels(self.tracker, w.label, "cosigned").inc()
        WITNESS_LAST_COSIGNED.labels(self.tracker, w.label).set(now)
        WITNESS_MISSED_INTERVALS.labels(self.tracker, w.label).set(0)
        return lines

    async def _send(self, w: _Witness, note: str, old: int, size: int, tree: TreeLog) -> str:
        if old > size:
            raise WitnessConflict(old)
        proof = (
            await asyncio.to_thread(merkle.consistency_proof, tree.leaves_sync, old, size)
            if 0 < old < size
            else []
        )
        assert self._session is not None
        return await add_checkpoint(self._session, w.url, note, old, proof, w.config.timeout)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
