"""Wires integrity into the daemon: one tree and one digest chain per verified tracker."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from daemon.archive.archiver import Listener
from daemon.integrity.checkpoint import Signer
from daemon.integrity.digest import DigestWriter
from daemon.integrity.keys import KeyStore, signer_from_file
from daemon.integrity.tree import IntegrityRecorder
from daemon.stores.base import Store
from daemon.telemetry import get_logger

if TYPE_CHECKING:
    from daemon.config import Config

log = get_logger("integrity")


def load_signer(config: Config) -> Signer:
    """The production key file when configured, else the keys directory (generated on first run)."""
    ic = config.integrity
    if ic.key_file is not None:
        return signer_from_file(ic.key_file, ic.origin)
    return KeyStore(ic.keys_dir).ensure(ic.origin)


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
        signer = await asyncio.to_thread(load_signer, self.config)
        log.info("integrity.key_loaded", key_name=signer.name, key_id=signer.key_id.hex())
        for t in verified:
            tree = await self.recorder.tree(t.name)
            dw = DigestWriter(
                store=self.stores[t.store],
                prefix=t.prefix,
                tracker=t.name,
                writer=self.writer,
                tree=tree,
                signer=signer,
                origin=self.config.integrity.origin,
                interval=self.config.integrity.digest_interval,
            )
            await dw.start()
            self.writers[t.name] = dw
            self._tasks.append(asyncio.create_task(dw.run(), name=f"digest.{t.name}"))

    def listeners(self, delivery: str) -> list[Listener]:
        return [self.recorder.on_stored] if delivery in self.writers else []

    async def stop(self, grace: float | None = None) -> None:
        """Write each chain's end digest, retrying a failing store for up to ``grace`` s."""
        for dw in self.writers.values():
            dw.stop(grace)
        results = await asyncio.gather(*self._tasks, return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException):
                log.error("integrity.stop_failed", error=str(r))
