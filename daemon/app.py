"""Wires the components together and owns startup and shutdown.

Shutdown order (SIGTERM or SIGINT): stop intake (queue sources first: they stop
pulling and ack only what is durable; then the HTTP listener), let
every archiver store its open files, commit cursors, close the journal. A
second signal forces an immediate exit; the journal makes that safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from daemon import telemetry
from daemon.archive.archiver import Archiver, Delivery
from daemon.archive.tracker import quarantine_delivery, tracker_delivery
from daemon.config import Config
from daemon.intake import Intake
from daemon.journal import Journal
from daemon.sources import QueueSource, build_source
from daemon.sources.http import HttpIngest
from daemon.stores import build_store
from daemon.stores.base import Store, StoreError
from daemon.telemetry import get_logger

log = get_logger("app")

STOP_GRACE_SECONDS = 30.0


def split_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)


def resolve_writer_id(config: Config) -> str:
    """The configured writer id, or one generated once and kept beside the journal."""
    if config.writer_id:
        return config.writer_id
    path = config.journal.dir / "writer-id"
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = f"tk{secrets.token_hex(4)}"
    tmp = path.with_name(".writer-id.tmp")
    tmp.write_text(writer + "\n")
    os.replace(tmp, path)
    return writer


class App:
    """The running daemon. ``start`` then ``stop``; or ``serve`` until a signal."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.writer_id = ""
        self.stores: dict[str, Store] = {}
        self.journal = Journal(
            config.journal.dir,
            max_bytes=config.journal.max_bytes,
            segment_bytes=config.journal.segment_bytes,
            fsync=config.journal.fsync,
        )
        self.intake = Intake(self.journal)
        self.archivers: list[Archiver] = []
        self.sources: list[QueueSource] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._runners: list[web.AppRunner] = []
        self._stop_requested = asyncio.Event()
        self._signals = 0
        self.http_port: int | None = None
        self.metrics_port: int | None = None

    # --- startup ----------------------------------------------------------------------------

    def _deliveries(self) -> list[Delivery]:
        c = self.config
        out = [quarantine_delivery(c.quarantine, self.stores[c.quarantine.store], self.writer_id)]
        for tracker in c.trackers:
            out.append(tracker_delivery(tracker, self.stores[tracker.store], self.writer_id))
        return out

    async def start(self) -> None:
        c = self.config
        self.writer_id = await asyncio.to_thread(resolve_writer_id, c)
        self.stores = {name: build_store(name, sc) for name, sc in c.stores.items()}
        deliveries = self._deliveries()
        report = await self.journal.open(consumers=[d.cursor for d in deliveries])
        log.info(
            "journal.recovered",
            dir=str(c.journal.dir),
            segments=report.segments,
            entries=report.entries,
            start_offset=report.start_offset,
            end_offset=report.end_offset,
            truncated_bytes=report.truncated_bytes,
            truncated_at=report.truncated_at,
            backlog={name: report.end_offset - off for name, off in report.cursors.items()},
        )
        state_dir = c.journal.dir / "state"
        for d in deliveries:
            archiver = Archiver(self.journal, d, state_dir)
            self.archivers.append(archiver)
            self._tasks.append(asyncio.create_task(self._guard(archiver.run(), d.cursor)))
        api = web.Application(client_max_size=(c.ingest.http.max_body_bytes if c.ingest.http else 1024**2))
        api.router.add_get("/healthz", self._healthz)
        api.router.add_get("/readyz", self._readyz)
        if c.ingest.http is not None:
            HttpIngest(c.ingest.http, self.intake).add_routes(api)
            self.http_port = await self._listen(api, c.ingest.http.listen)
        for source_config in c.ingest.sources:
            source = build_source(source_config, self.intake, self.writer_id)
            await source.start()
            self.sources.append(source)
        if c.metrics.listen:
            metrics = web.Application()
            metrics.router.add_get("/metrics", self._metrics)
            metrics.router.add_get("/healthz", self._healthz)
            self.metrics_port = await self._listen(metrics, c.metrics.listen)
        log.info(
            "app.started",
            writer_id=self.writer_id,
            http=f"{split_listen(c.ingest.http.listen)[0]}:{self.http_port}" if c.ingest.http else None,
            metrics_port=self.metrics_port,
            trackers=[t.name for t in c.trackers],
            sources=[s.name for s in self.sources],
        )

    async def _listen(self, app: web.Application, listen: str) -> int:
        host, port = split_listen(listen)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=5)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        self._runners.append(runner)
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        return int(sockets[0].getsockname()[1]) if sockets else port

    async def _guard(self, coro: Any, name: str) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("app.component_failed", component=name, error=str(exc))
            self.request_stop()

    # --- endpoints --------------------------------------------------------------------------

    async def _healthz(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, _request: web.Request) -> web.Response:
        problems: list[str] = []
        if self.journal.failed is not None:
            problems.append(f"journal write failed: {self.journal.failed}")
        elif not self.journal.writable():
            problems.append(
                f"journal at its budget ({self.journal.bytes_used} of {self.journal.max_bytes} bytes)"
            )
        for archiver in self.archivers:
            if not archiver.healthy:
                problems.append(f"archive {archiver.d.name}: {archiver.last_error}")
        for source in self.sources:
            if not source.healthy:
                problems.append(f"source {source.name} ({source.type}): {source.last_error}")
        for name, store in self.stores.items():
            try:
                await asyncio.wait_for(store.check(), timeout=5)
            except (StoreError, TimeoutError) as exc:
                problems.append(f"store {name}: {exc or 'timed out'}")
        status = 503 if problems else 200
        return web.json_response({"ready": not problems, "problems": problems}, status=status)

    async def _metrics(self, _request: web.Request) -> web.Response:
        body = generate_latest(telemetry.REGISTRY)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    # --- shutdown ---------------------------------------------------------------------------

    def request_stop(self) -> None:
        self._stop_requested.set()

    def _on_signal(self, signum: int) -> None:
        self._signals += 1
        if self._signals > 1:
            log.warning("app.forced_exit", signal=signal.Signals(signum).name)
            os._exit(128 + signum)
        log.info("app.stopping", signal=signal.Signals(signum).name)
        self.request_stop()

    async def stop(self, grace: float = STOP_GRACE_SECONDS) -> None:
        """Stop intake, store open files (waiting up to ``grace`` s for a failing store), close."""
        await asyncio.gather(*(source.stop() for source in self.sources), return_exceptions=True)
        self.sources.clear()
        for runner in self._runners:
            await runner.cleanup()
        self._runners.clear()
        for archiver in self.archivers:
            archiver.stop(deadline=grace)
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.journal.close()
        for store in self.stores.values():
            with contextlib.suppress(Exception):
                await store.close()
        log.info("app.stopped", end_offset=self.journal.end_offset)

    async def serve(self) -> None:
        """Run until SIGTERM/SIGINT, then shut down cleanly."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        try:
            await self.start()
            await self._stop_requested.wait()
        finally:
            await self.stop()


def state_dir(config: Config) -> Path:
    return config.journal.dir / "state"
