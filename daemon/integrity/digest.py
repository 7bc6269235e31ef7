"""Signed digest chains: every ``digest_interval`` and at shutdown, per tracker.

A digest lists the files stored in its interval, carries the signed checkpoint
of the tree after them, and links to the previous digest by key, SHA-256 and
signature. The signature covers the whole document, including the digest's own
key and end time, so a digest copied to another key fails validation. No
object metadata is used: the local store and S3 validate the same way.

Keys: ``<prefix>/<tracker>/_digest/<writer>/YYYY/MM/DD/<writer>_<tracker>_<YYYYMMDDTHHMMSSZ>_<seq>.json``
(``_digest`` cannot clash with a tenant segment: tenants never start with ``_``
except the archive's ``_unknown``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import hashlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from daemon.durable import atomic_write
from daemon.integrity.checkpoint import Checkpoint, Signer, Verifier
from daemon.integrity.tree import TreeLog
from daemon.stores.base import Store, StoreError
from daemon.telemetry import get_logger

if TYPE_CHECKING:
    from daemon.integrity.witnessing import CheckpointPublisher

log = get_logger("integrity")

FORMAT = "trailkeeper-digest/1"
DIGEST_DIR = "_digest"


def iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_iso(text: str) -> float:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def digest_prefix(prefix: str, tracker: str) -> str:
    return "/".join(p for p in (prefix.strip("/"), tracker, DIGEST_DIR) if p) + "/"


def digest_key(prefix: str, tracker: str, writer: str, end: float, seq: int) -> str:
    t = dt.datetime.fromtimestamp(end, tz=dt.UTC)
    name = f"{writer}_{tracker}_{t.strftime('%Y%m%dT%H%M%SZ')}_{seq:012d}.json"
    return f"{digest_prefix(prefix, tracker)}{writer}/{t.strftime('%Y/%m/%d')}/{name}"


def origin_for(origin: str, tracker: str, writer: str) -> str:
    return f"{origin}/{tracker}/{writer}"


def signed_bytes(doc: dict[str, Any]) -> bytes:
    """The canonical bytes a digest's signature covers: every field but ``signature``."""
    body = {k: v for k, v in doc.items() if k != "signature"}
    return orjson.dumps(body, option=orjson.OPT_SORT_KEYS)


def sign_digest(doc: dict[str, Any], signer: Signer) -> bytes:
    sig = signer.sign(signed_bytes(doc))
    doc["signature"] = {
        "algorithm": "Ed25519",
        "key_name": signer.name,
        "key_id": signer.key_id.hex(),
        "value": base64.b64encode(sig).decode(),
    }
    return orjson.dumps(doc, option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2) + b"\n"


def verify_digest(doc: dict[str, Any], verifiers: list[Verifier]) -> Verifier | None:
    """The key that signed ``doc``; None for an unknown key. Raises ValueError on a bad signature."""
    sig = doc.get("signature")
    if not isinstance(sig, dict):
        raise ValueError("the digest has no signature")
    kid = str(sig.get("key_id", ""))
    name = str(sig.get("key_name", ""))
    for v in verifiers:
        if v.key_id.hex() == kid and v.name == name:
            if not v.verify(signed_bytes(doc), base64.b64decode(str(sig.get("value", "")))):
                raise ValueError(f"the signature by {name} ({kid}) does not verify")
            return v
    return None


class _ChainState:
    """Where the chain stands, persisted atomically beside the tree."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.doc: dict[str, Any] = {"sequence": 0, "files_through": 0, "last": None, "pending": None}

    def load_sync(self) -> None:
        if self.path.exists():
            self.doc = orjson.loads(self.path.read_bytes())

    def save_sync(self) -> None:
        atomic_write(self.path, orjson.dumps(self.doc))


def load_chain_state(tree_dir: Path) -> dict[str, Any]:
    st = _ChainState(tree_dir / "chain.json")
    st.load_sync()
    return st.doc


class DigestWriter:
    """Emits one tracker's digests. ``run()`` until ``stop()``; stop writes the chain-end digest.

    ``run`` writes a chain-start digest at once (so a young archive has a head to be
    measured against), then one every interval. Each digest is recorded as pending
    (fsynced) before it is put, so a crash between the two re-puts the same bytes on
    the next start rather than leaving a hole. After each digest the checkpoint is
    published and witnessed (``publisher``), which never holds the chain back.
    """

    def __init__(
        self,
        *,
        store: Store,
        prefix: str,
        tracker: str,
        writer: str,
        tree: TreeLog,
        signer: Signer,
        origin: str,
        interval: float,
        clock: Callable[[], float] = time.time,
        reload_signer: Callable[[], Signer] | None = None,
        publisher: CheckpointPublisher | None = None,
    ) -> None:
        self.store = store
        self.prefix = prefix
        self.tracker = tracker
        self.writer = writer
        self.tree = tree
        self.signer = signer
        self.origin = origin_for(origin, tracker, writer)
        self.interval = interval
        self.clock = clock
        self.reload_signer = reload_signer
        self.publisher = publisher
        self._emit_lock = asyncio.Lock()
        self.state = _ChainState(tree.dir / "chain.json")
        self._stop = asyncio.Event()
        self._deadline: float | None = None
        self._last_report = 0.0
        self._started = False
        self._interval_start = 0.0

    async def start(self) -> None:
        """Load the chain state. Never waits on the store: ``run`` finishes pending work."""
        await asyncio.to_thread(self.state.load_sync)
        # A new process always starts a new chain; it links back to the last digest,
        # whether the previous chain ended cleanly or not.
        self.state.doc["in_chain"] = False
        self._interval_start = self.clock()
        self._started = True

    async def _finish_pending(self) -> None:
        """Put a digest left pending by a crash or a failed stop: the same bytes, the same key."""
        pending = self.state.doc.get("pending")
        if pending:
            data = base64.b64decode(pending["data"])
            await self._put(pending["key"], data)
            self._commit(pending["key"], data)
            await asyncio.to_thread(self.state.save_sync)

    async def run(self) -> None:
        """Emit digests every interval until ``stop``, then the chain-end digest.

        If the store stays down past the stop deadline, the unfinished digest stays
        pending in the local state and is put on the next start.
        """
        if not self._started:
            await self.start()
        try:
            await self._finish_pending()
            await self.emit(end_chain=False)
            await self._loop()
        except _GiveUp:
            log.warning(
                "integrity.stop_incomplete",
                tracker=self.tracker,
                detail="the store is down; the pending digest is written on the next start",
            )

    async def _loop(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=self.interval)
            if self._stop.is_set():
                break
            await self.emit(end_chain=False)
        await self.emit(end_chain=True)

    def stop(self, deadline: float | None = None) -> None:
        """Ask ``run`` to write the chain-end digest and return; give up after ``deadline`` s."""
        if deadline is not None:
            self._deadline = time.monotonic() + deadline
        self._stop.set()

    async def emit(self, *, end_chain: bool) -> str:
        """Write one digest now; returns its key. Retries the store until it takes it.

        Serialised: concurrent calls write consecutive digests, never two with one sequence.
        """
        async with self._emit_lock:
            key = await self._emit(end_chain)
        await self._publish()
        return key

    async def _refresh_signer(self) -> None:
        # A rotated key signs from the next digest on: the trust file's validity windows
        # assume a retired key stops signing within one interval.
        if self.reload_signer is None:
            return
        try:
            signer = await asyncio.to_thread(self.reload_signer)
        except Exception as exc:  # a broken key file must not stop the chain: keep signing
            log.error("integrity.key_reload_failed", tracker=self.tracker, error=str(exc))
            return
        if signer.key_id != self.signer.key_id:
            log.info("integrity.key_rotated", tracker=self.tracker, key_id=signer.key_id.hex())
            self.signer = signer

    async def _publish(self) -> None:
        if self.publisher is None:
            return
        last = self.state.doc.get("last")
        if not last:
            return
        witnesses = self.state.doc.setdefault("witnesses", {})
        self.state.doc["published"] = await self.publisher.publish(
            last["checkpoint"], int(last["tree_size"]), self.tree, witnesses
        )
        await asyncio.to_thread(self.state.save_sync)

    def witness_problems(self) -> list[str]:
        if self.publisher is None:
            return []
        return self.publisher.healthy_problems(self.state.doc.get("witnesses", {}))

    async def _emit(self, end_chain: bool) -> str:
        await self._refresh_signer()
        async with self.tree.lock:
            st = self.state.doc
            through = int(st["files_through"])
            files = self.tree.files[through:]
            size = self.tree.size
            root = self.tree.frontier.root()
        last = st.get("last")
        end = max(self.clock(), self._interval_start)
        seq = int(st["sequence"]) + 1
        key = digest_key(self.prefix, self.tracker, self.writer, end, seq)
        chain_start = not st.get("in_chain", False)
        checkpoint = Checkpoint(self.origin, size, root).sign([self.signer])
        doc: dict[str, Any] = {
            "format": FORMAT,
            "key": key,
            "tracker": self.tracker,
            "writer": self.writer,
            "sequence": seq,
            "chain_start": chain_start,
            "chain_end": end_chain,
            "start_time": iso(self._interval_start),
            "end_time": iso(end),
            "previous": None
            if last is None
            else {k: last[k] for k in ("key", "sha256", "signature", "end_time", "tree_size")},
            "tree_size_before": files[0].first_leaf if files else size,
            "tree_size": size,
            "digest_interval": self.interval,
            "files": [f.to_digest() for f in files],
            "checkpoint": checkpoint,
        }
        data = sign_digest(doc, self.signer)
        st["pending"] = {"key": key, "data": base64.b64encode(data).decode(), "through": through + len(files)}
        await asyncio.to_thread(self.state.save_sync)
        await self._put(key, data)
        self._commit(key, data)
        st["in_chain"] = not end_chain
        await asyncio.to_thread(self.state.save_sync)
        self._interval_start = end
        log.info(
            "integrity.digest_stored",
            tracker=self.tracker,
            key=key,
            files=len(files),
            tree_size=size,
            chain_start=chain_start,
            chain_end=end_chain,
        )
        return key

    def _commit(self, key: str, data: bytes) -> None:
        st = self.state.doc
        doc = orjson.loads(data)
        st["sequence"] = doc["sequence"]
        st["files_through"] = st["pending"]["through"]
        st["last"] = {
            "key": key,
            "sha256": hashlib.sha256(data).hexdigest(),
            "signature": doc["signature"]["value"],
            "end_time": doc["end_time"],
            "tree_size": doc["tree_size"],
            "checkpoint": doc["checkpoint"],
        }
        st["pending"] = None

    async def _put(self, key: str, data: bytes) -> None:
        delay = 0.5
        while True:
            try:
                await self.store.put(key, data)
                return
            except StoreError as exc:
                # Once a minute, not on every retry: a dead store must not flood the log.
                if time.monotonic() - self._last_report >= 60.0:
                    self._last_report = time.monotonic()
                    log.error(
                        "integrity.digest_store_failed",
                        tracker=self.tracker,
                        key=key,
                        error=str(exc),
                        detail="retrying; the digest stays pending locally until the store takes it",
                    )
                if self._past_deadline():
                    raise _GiveUp() from exc
                if not self._stop.is_set():
                    # Woken early by stop, so shutdown does not wait out a long backoff.
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stop.wait(), timeout=delay)
                if self._stop.is_set():
                    # Retry often, but never sleep past the deadline: giving up is on time.
                    await asyncio.sleep(min(delay, 0.5, self._until_deadline()))
                    if self._past_deadline():
                        raise _GiveUp() from exc
                delay = min(delay * 2, 30.0)

    def _past_deadline(self) -> bool:
        return self._deadline is not None and time.monotonic() >= self._deadline

    def _until_deadline(self) -> float:
        if self._deadline is None:
            return float("inf")
        return max(0.0, self._deadline - time.monotonic())


class _GiveUp(Exception):
    """Stop was requested and the store stayed down past the deadline."""
