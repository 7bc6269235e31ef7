"""Wires integrity into the daemon: one tree and one digest chain per verified tracker."""

from __future__ import annotations

import asyncio
import threading
from typing import TYPE_CHECKING

from daemon.archive.archiver import Listener
from daemon.config import ConfigError
from daemon.integrity.checkpoint import Signer
from daemon.integrity.digest import DigestWriter
from daemon.integrity.keys import KeyError_, KeyStore, signer_from_file
from daemon.integrity.tree import IntegrityRecorder
from daemon.integrity.witnessing import CheckpointPublisher
from daemon.stores.base import Store
from daemon.telemetry import get_logger

if TYPE_CHECKING:
    from daemon.config import Config

log = get_logger("integrity")


# Digest writers of several trackers refresh the signer from threads at once.
_RECORD_LOCK = threading.Lock()


def _file_signer(config: Config) -> Signer:
    """The key of ``integrity.key_file``, its public half recorded in ``integrity.keys_dir``.

    The key file is only read (a Secret mount is read-only and may be replaced on rotation);
    the record, on the data volume, is what ``keys export-public`` pins and what keeps a
    rotated-out key trusted for what it signed. Raises KeyError_ naming the YAML path."""
    ic = config.integrity
    assert ic.key_file is not None
    signer = signer_from_file(ic.key_file, ic.origin)
    try:
        with _RECORD_LOCK:
            retired = KeyStore(ic.keys_dir).record_external(signer)
    except OSError as exc:
        raise KeyError_(
            f"integrity.keys_dir: cannot record the public key of integrity.key_file in {ic.keys_dir}: "
            f"{exc.strerror or exc} (it must be a writable directory on the data volume)"
        ) from exc
    if retired is not None:
        log.info("integrity.key_file_rotated", key_id=signer.key_id.hex(), retired=retired)
    return signer


def load_signer(config: Config) -> Signer:
    """The production key file when configured, else the keys directory (generated on first run)."""
    ic = config.integrity
    if ic.key_file is not None:
        return _file_signer(config)
    return KeyStore(ic.keys_dir).ensure(ic.origin)


def current_signer(config: Config) -> Signer:
    """The signer now configured, never generating one (a vanished key is an error, not a new key)."""
    ic = config.integrity
    if ic.key_file is not None:
        return _file_signer(config)
    signer = KeyStore(ic.keys_dir).active()
    if signer is None:
        raise KeyError_(f"{ic.keys_dir}: no active key any more; keeping the one loaded at start")
    return signer


class Integrity:
    """``start()`` before the archivers run, ``stop()`` after they have flushed."""

    def __init__(self, config: Config, stores: dict[str, Store], writer: str) -> None:
        self.config = config
        self.stores = stores
        self.writer = writer
        ic = config.integrity
        self.recorder = IntegrityRecorder(ic.state_dir or config.journal.dir / "integrity", writer)
        self.writers: dict[str, DigestWriter] = {}
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        verified = [t for t in self.config.trackers if t.verify]
        if not verified:
            return
        try:
            signer = await asyncio.to_thread(load_signer, self.config)
        except KeyError_ as exc:
            # The file passed config validation but changed since: still the operator's to fix.
            where = "integrity.key_file" if self.config.integrity.key_file else "integrity.keys_dir"
            text = str(exc)
            raise ConfigError(where, [text if text.startswith("integrity.") else f"{where}: {text}"]) from exc
        log.info("integrity.key_loaded", key_name=signer.name, key_id=signer.key_id.hex())
        ic = self.config.integrity
        for t in verified:
            tree = await self.recorder.tree(t.name)
            publisher = CheckpointPublisher(
                tracker=t.name,
                writer=self.writer,
                prefix=t.prefix,
                stores=[self.stores[t.store]]
                + [self.stores[n] for n in ic.checkpoint_stores if n != t.store],
                witnesses=ic.witnesses,
                alert_after=ic.witness_alert_after,
            )
            dw = DigestWriter(
                store=self.stores[t.store],
                prefix=t.prefix,
                tracker=t.name,
                writer=self.writer,
                tree=tree,
                signer=signer,
                origin=self.config.integrity.origin,
                interval=ic.digest_interval,
                reload_signer=lambda: current_signer(self.config),
                publisher=publisher,
            )
            await dw.start()
            self.writers[t.name] = dw
            self._tasks.append(asyncio.create_task(dw.run(), name=f"digest.{t.name}"))

    def problems(self) -> list[str]:
        """Witnesses that have stopped cosigning, for /readyz."""
        return [p for dw in self.writers.values() for p in dw.witness_problems()]

    def listeners(self, delivery: str) -> list[Listener]:
        return [self.recorder.on_stored] if delivery in self.writers else []

    async def stop(self, grace: float | None = None, wait: float | None = None) -> None:
        """Write each chain's end digest, retrying a failing store for up to ``grace`` s.

        After ``wait`` s (default: ``grace``) a writer still inside a store call is
        cancelled; its digest, saved as pending before the put, is written on the next start.
        """
        for dw in self.writers.values():
            dw.stop(grace)
        wait = grace if wait is None else wait
        if wait is not None and self._tasks:
            # The writers give up by themselves after a failed try past their deadline;
            # this cuts short one stuck inside a call (a connect or read timeout).
            _done, pending = await asyncio.wait(self._tasks, timeout=wait)
            for task in pending:
                log.warning(
                    "integrity.stop_incomplete",
                    task=task.get_name(),
                    detail="the store did not answer in time; the pending digest is put on the next start",
                )
                task.cancel()
        results = await asyncio.gather(*self._tasks, return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError):
                log.error("integrity.stop_failed", error=str(r))
        for dw in self.writers.values():
            if dw.publisher is not None:
                await dw.publisher.close()
