"""Wires the components together and owns startup and shutdown.

Shutdown order (SIGTERM or SIGINT): stop intake (queue sources first: they stop
pulling and ack only what is durable; then the HTTP listener), let
every archiver store its open files, commit cursors, close the journal. A
second signal forces an immediate exit; the journal makes that safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import secrets
import signal
import ssl
import time
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from daemon import telemetry
from daemon.api.admin import AdminApi
from daemon.api.audit import Auditor
from daemon.api.auth import Authenticator, Principal
from daemon.api.cloudtrail import CloudTrailApi
from daemon.api.cloudtrail_data import CloudTrailDataApi
from daemon.api.cts import CtsApi
from daemon.api.errors import JsonErrorAppRunner, json_app
from daemon.api.routes import ApiGuard, ProofProvider, QueryApi
from daemon.archive.archiver import Archiver, Delivery, Listener
from daemon.archive.backup import Backup
from daemon.archive.retention import Retention
from daemon.archive.tracker import quarantine_delivery, tracker_delivery, tracker_filter
from daemon.config import Config, ConfigError, TlsConfig, load_config
from daemon.configwatch import ConfigWatch, fingerprint
from daemon.decodepool import DecodePool, default_workers
from daemon.events import Event
from daemon.health import DownstreamHealth
from daemon.index import CURSOR as INDEX_CURSOR
from daemon.index import Classifier, IndexBackend, Indexer, IndexUnavailable, build_index
from daemon.index.base import Classification, StoredEvent
from daemon.intake import Intake
from daemon.integrity.prove import ProveError, inclusion_at
from daemon.integrity.runtime import Integrity
from daemon.integrity.validate import load_last_validation
from daemon.journal import Journal
from daemon.notify import notifier as notify_mod
from daemon.rules.model import summarise
from daemon.rules.ruleset import RuleSet, hold_cursor
from daemon.sources.base import QueueSource
from daemon.sources.http import HttpIngest
from daemon.sources.registry import build_source
from daemon.stores import build_store
from daemon.stores.base import Store
from daemon.telemetry import get_logger

log = get_logger("app")

ADMIN_HEALTH_ROUTE = "/v1/admin/health"
JOURNAL_WARN_FRACTION = 0.8  # /readyz warns from this share of the journal's budget
STOP_CANCEL_SLACK = 0.5  # past the shutdown deadline, a component still in a store call is cancelled
FORCE_AFTER_SECONDS = 1.0  # a second SIGTERM/SIGINT at least this long after the first forces exit


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

    def __init__(self, config: Config, config_path: str | None = None) -> None:
        """Build the components. Raises RuleLoadError when the rules are bad."""
        self.config = config
        self.config_path = config_path
        self.rules = RuleSet(config.rules)
        self.writer_id = ""
        self.stores: dict[str, Store] = {}
        self.journal = Journal(
            config.journal.dir,
            max_bytes=config.journal.max_bytes,
            segment_bytes=config.journal.segment_bytes,
            fsync=config.journal.fsync,
        )
        self.intake = Intake(self.journal)
        self.decode_pool: DecodePool | None = None
        self.archivers: list[Archiver] = []
        self.sources: list[QueueSource] = []
        self.index: IndexBackend | None = None
        self.indexer: Indexer | None = None
        # Set before start() to classify indexed events (the rule engine) and prove them (integrity).
        self.classify: Classifier | None = None
        self.proof: ProofProvider | None = None
        # Other components add admin routes through the guard: guard.protect("admin", ...).
        self.guard: ApiGuard | None = None
        self._tls: ssl.SSLContext | None = None
        self.integrity: Integrity | None = None
        self.notifier: notify_mod.Notifier | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._aux_tasks: list[asyncio.Task[None]] = []
        self.retention: Retention | None = None
        self.backup: Backup | None = None
        self._runners: list[web.AppRunner] = []
        self._stop_requested = asyncio.Event()
        self._first_signal: float | None = None
        self._reloads: set[asyncio.Task[bool]] = set()
        # One reload at a time (SIGHUP, the admin API and the config watch may coincide):
        # two would race to swap the notifier.
        self._reload_lock = asyncio.Lock()
        self.health = DownstreamHealth(self)
        # Loops that only watch (health refresh, config watch): cancelled first on stop.
        self._watch_tasks: list[asyncio.Task[None]] = []
        self.http_port: int | None = None
        self.metrics_port: int | None = None
        self._correlation_stop = asyncio.Event()
        self._correlation_task: asyncio.Task[None] | None = None

    # --- startup ----------------------------------------------------------------------------

    def _deliveries(self) -> list[Delivery]:
        c = self.config
        out = [quarantine_delivery(c.quarantine, self.stores[c.quarantine.store], self.writer_id)]
        for tracker in c.trackers:
            out.append(
                tracker_delivery(tracker, self.stores[tracker.store], self.writer_id, tracker_filter(tracker))
            )
        return out

    async def start(self) -> None:
        c = self.config
        # Taken first: a change made while the components start is still seen as a change.
        watch = await self._config_watch()
        # Notification settings `check-config` refuses (templates, route patterns, TLS files)
        # stop the start before anything is opened, as a ConfigError: exit 2, no traceback.
        await asyncio.to_thread(notify_mod.check_notify, c.notify, self._config_source())
        # A bad certificate fails the start before anything is opened.
        http_tls = c.ingest.http.tls if c.ingest.http else None
        self._tls = _ssl_context(http_tls) if http_tls else None
        self.writer_id = await asyncio.to_thread(resolve_writer_id, c)
        self.stores = {name: build_store(name, sc) for name, sc in c.stores.items()}
        deliveries = self._deliveries()
        consumers = [d.cursor for d in deliveries] + ([INDEX_CURSOR] if c.index.enabled else [])
        if notify_mod.enabled(c.notify):
            consumers.append(notify_mod.CURSOR)
        # The index and the notifier classify, so each keeps correlation state; its hold
        # cursor keeps the journal entries that state may have to be rebuilt from.
        correlating = [n for n in (INDEX_CURSOR, notify_mod.CURSOR) if n in consumers]
        report = await self.journal.open(consumers=consumers + [hold_cursor(n) for n in correlating])
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
        await self.rules.restore(self.journal, state_dir, correlating)
        self._correlation_task = asyncio.create_task(
            self._guard(self.rules.run_persist(self.journal, self._correlation_stop), "correlation")
        )
        if c.index.enabled:
            self.index = build_index(c.index, c.journal.dir)
            try:
                # Open now so queries work from the first request; if the backend is down,
                # ingest still starts and the indexer keeps retrying (readyz says why).
                await self.index.open()
            except IndexUnavailable as exc:
                log.error("index.open_failed", backend=self.index.name, error=str(exc))
            self.indexer = Indexer(self.journal, self.index, c.index, self.classify or self._classify)
            self._tasks.append(asyncio.create_task(self._guard(self.indexer.run(), INDEX_CURSOR)))
        # Worker processes for decoding request bodies and building archive files.
        workers = c.ingest.http.decode_workers if c.ingest.http else None
        if workers is None:
            # Reading the cgroup files is a few small reads of /proc and /sys: not worth a thread.
            usable = default_workers()
            workers, why = usable.count, usable.reason
        else:
            why = "ingest.http.decode_workers in the config"
        log.info("decode.workers", workers=workers, reason=why)
        self.decode_pool = DecodePool(workers)
        await self.decode_pool.start()
        self.integrity = Integrity(c, self.stores, self.writer_id)
        await self.integrity.start()
        tracker_names = {t.name for t in c.trackers}
        for d in deliveries:
            listeners: list[Listener] = list(self.integrity.listeners(d.name))
            if self.indexer is not None and d.name in tracker_names:
                listeners.append(self.indexer.on_stored)
            archiver = Archiver(self.journal, d, state_dir, listeners, self.decode_pool.run)
            self.archivers.append(archiver)
            self._tasks.append(asyncio.create_task(self._guard(archiver.run(), d.cursor)))
        self.retention = Retention.from_config(c.retention, c.trackers, self.stores)
        self.backup = Backup.from_config(c.backup, self.stores, state_dir)
        self._aux_tasks = [
            asyncio.create_task(self._guard(self.retention.run(), "retention")),
            asyncio.create_task(self._guard(self.backup.run(), "backup")),
        ]
        # Every server answers errors as JSON, aiohttp's own included (daemon.api.errors).
        api = json_app(client_max_size=(c.ingest.http.max_body_bytes if c.ingest.http else 1024**2))
        api.router.add_get("/healthz", self._healthz)
        api.router.add_get("/readyz", self._readyz)
        api.router.add_get("/healthz/downstream", self._downstream)
        if c.ingest.http is not None:
            auth = Authenticator(c.auth, c.ingest.http.tokens)
            auditor = Auditor(self.intake, c.auth.audit_tenant, self.writer_id)
            self.guard = ApiGuard(auth, auditor)
            HttpIngest(c.ingest.http, self.intake, self.decode_pool, self.guard).add_routes(api)
            http = c.ingest.http
            CloudTrailDataApi(
                self.intake, self.decode_pool, self.guard, http.max_event_bytes, http.retry_after
            ).add_routes(api)
            if self.index is not None:
                QueryApi(self.index, self.guard, self.proof or self._proof).add_routes(api)
                CloudTrailApi(self.index, self.guard).add_routes(api)
                CtsApi(self.index, self.guard, c.trackers).add_routes(api)
            # Getters: reload replaces the notifier, and it starts after the listener.
            AdminApi(
                self.guard,
                state_dir=state_dir,
                notifier=lambda: self.notifier,
                reload=self.reload,
                config_path=self.config_path,
                integrity=lambda: self.integrity,
                last_validation=lambda: load_last_validation(
                    c.integrity.state_dir or c.journal.dir / "integrity"
                ),
            ).add_routes(api)
            api.router.add_get(notify_mod.CONFIRM_ROUTE, self._confirm_subscription)
            api.router.add_get(
                ADMIN_HEALTH_ROUTE,
                self.guard.protect(
                    "admin", "getHealth", "health", self._admin_health, route=ADMIN_HEALTH_ROUTE
                ),
            )
            self.http_port = await self._listen(
                api, c.ingest.http.listen, self._tls, where="ingest.http.listen"
            )
        if notify_mod.enabled(c.notify):
            self.notifier = notify_mod.build(
                self.journal,
                c,
                state_dir,
                self._public_url(),
                self.rules.consumer(notify_mod.CURSOR),
                self._config_source(),
            )
            await self.notifier.start()
        for source_config in c.ingest.sources:
            source = build_source(source_config, self.intake, self.writer_id)
            source.pool = self.decode_pool
            await source.start()
            self.sources.append(source)
        if c.metrics.listen:
            metrics = json_app()
            metrics.router.add_get("/metrics", self._metrics)
            metrics.router.add_get("/healthz", self._healthz)
            self.metrics_port = await self._listen(metrics, c.metrics.listen, where="metrics.listen")
        self._watch_tasks.append(asyncio.create_task(self._guard(self.health.run(), "health")))
        if watch is not None:
            self._watch_tasks.append(asyncio.create_task(self._guard(watch.run(), "config_watch")))
        # Everything built at startup (rules, templates, config) lives as long as the process:
        # move it out of the collector's reach so full collections stay short on the hot path.
        gc.collect()
        gc.freeze()
        log.info(
            "app.started",
            writer_id=self.writer_id,
            http=f"{split_listen(c.ingest.http.listen)[0]}:{self.http_port}" if c.ingest.http else None,
            metrics_port=self.metrics_port,
            trackers=[t.name for t in c.trackers],
            sources=[s.name for s in self.sources],
        )

    async def _config_watch(self) -> ConfigWatch | None:
        """The watch of the config file (config_watch), or None when off or on the embedded default."""
        interval = self.config.config_watch
        if interval is None or self.config_path is None:
            return None
        config_file = Path(self.config_path)

        def paths() -> list[Path]:
            # The rule files in force, not those at start: a reload may name others.
            return [config_file, *self.rules.config.files]

        baseline = await asyncio.to_thread(fingerprint, paths())
        log.info("config.watching", path=str(config_file), interval=interval)
        return ConfigWatch(paths, interval, self.reload, baseline)

    def _config_source(self) -> str:
        """The config file as a ConfigError names it (as `check-config` does)."""
        return self.config_path or "embedded default config"

    def _public_url(self, config: Config | None = None) -> str:
        c = config or self.config
        if c.notify.public_url:
            return c.notify.public_url
        if c.ingest.http is None:
            return "http://127.0.0.1"
        host = split_listen(c.ingest.http.listen)[0]
        host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
        return f"http://{host}:{self.http_port}"

    async def _confirm_subscription(self, request: web.Request) -> web.Response:
        topic, name = request.match_info["topic"], request.match_info["subscription"]
        worker = self.notifier.worker(topic, name) if self.notifier is not None else None
        if worker is None:
            return web.json_response({"error": f"no subscription {topic}/{name}"}, status=404)
        if not await worker.confirm(request.query.get("token", "")):
            return web.json_response({"error": "the token does not match this subscription"}, status=403)
        return web.json_response({"confirmed": True, "topic": topic, "subscription": name})

    async def _listen(
        self, app: web.Application, listen: str, tls: ssl.SSLContext | None = None, *, where: str
    ) -> int:
        """Serve ``app`` on ``listen``. Raises ConfigError naming ``where`` (the YAML path) when the
        address cannot be bound: a port in use is the operator's to fix, not a crash."""
        host, port = split_listen(listen)
        runner = JsonErrorAppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=5)
        await runner.setup()
        site = web.TCPSite(runner, host, port, ssl_context=tls)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise ConfigError(
                where, [f"{where}: cannot listen on {listen}: {exc.strerror or exc}; pick a free address"]
            ) from exc
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

    def _classify(self, event: Event) -> Classification | None:
        """The index's view of the rules: one category and severity (``summarise``), and every
        matching rule id."""
        matches = self.rules.consumer(INDEX_CURSOR).match(event)
        if not matches:
            return None
        category, severity = summarise(matches)
        return Classification(category, severity, tuple(m.rule for m in matches))

    async def _proof(self, stored: StoredEvent) -> dict[str, Any] | None:
        """The inclusion proof of an archived event, once a digest has published its leaf."""
        if self.integrity is None:
            return None
        for loc in stored.locations:
            if loc.tracker not in self.integrity.writers:
                continue
            tree = await self.integrity.recorder.tree(loc.tracker)
            try:
                return await asyncio.to_thread(
                    inclusion_at, tree, str(stored.fields.get("id")), loc.key, loc.leaf, stored.record
                )
            except ProveError as exc:
                log.debug("api.proof_unavailable", key=loc.key, reason=str(exc))
        return None

    # --- endpoints --------------------------------------------------------------------------

    async def _healthz(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, _request: web.Request) -> web.Response:
        """Ready means "can accept events": the journal is writable and under its budget.

        Stores, archivers, the index, sources and witnesses are not part of it: the journal
        holds events through their outages, and a probe failing then would take the pod out
        of its Service exactly when producers need it (see daemon.health).
        """
        problems: list[str] = []
        warnings: list[str] = []
        used, budget = self.journal.bytes_used, self.journal.max_bytes
        if self.journal.failed is not None:
            # Public: the error names the journal's files; the log line has it (journal.write_failed).
            problems.append("journal write failed: see the daemon's journal.write_failed log line")
        elif not self.journal.writable():
            problems.append(f"journal at its budget ({used} of {budget} bytes)")
        elif used >= JOURNAL_WARN_FRACTION * budget:
            warnings.append(f"journal at {100 * used // budget}% of its budget; see GET /healthz/downstream")
        return web.json_response(
            {"ready": not problems, "problems": problems, "warnings": warnings},
            status=503 if problems else 200,
        )

    async def _downstream(self, _request: web.Request) -> web.Response:
        """Stores, archivers, the index and sources: 200 when all work, else 503 naming them.
        Public, so in fixed words only; the errors themselves are in GET /v1/admin/health."""
        report = await self.health.report()
        return web.json_response(report.body(detailed=False), status=200 if report.healthy else 503)

    async def _admin_health(self, _request: web.Request, _principal: Principal | None) -> web.Response:
        """As /healthz/downstream, with each component's error and the witnesses' state (admin)."""
        # 200 either way: this is a status query; 503 from an admin route means "not recorded".
        report = await self.health.report()
        return web.json_response(report.body(detailed=True))

    async def _metrics(self, _request: web.Request) -> web.Response:
        body = generate_latest(telemetry.REGISTRY)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    # --- shutdown ---------------------------------------------------------------------------

    def request_stop(self) -> None:
        self._stop_requested.set()

    def _on_signal(self, signum: int) -> None:
        now = time.monotonic()
        if self._first_signal is not None:
            # One stop request often arrives twice at once (to the process and to its group,
            # or from a wrapper that forwards it): only a deliberate second signal forces exit.
            if now - self._first_signal < FORCE_AFTER_SECONDS:
                log.info("app.signal_ignored", signal=signal.Signals(signum).name, reason="already stopping")
                return
            log.warning("app.forced_exit", signal=signal.Signals(signum).name)
            os._exit(128 + signum)
        self._first_signal = now
        log.info("app.stopping", signal=signal.Signals(signum).name)
        self.request_stop()

    def _on_reload(self) -> None:
        task = asyncio.get_running_loop().create_task(self.reload())
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)

    async def reload(self) -> bool:
        """Re-read the config file and swap in its rules (SIGHUP).

        Never raises: a bad config or bad rules are logged and the ones in force stay.
        Components other than the rules keep the config they started with.
        """
        async with self._reload_lock:
            log.info("app.reloading", config=self.config_path or "embedded default")
            try:
                config = await asyncio.to_thread(load_config, self.config_path)
            except ConfigError as exc:
                action = "fix the file" + (
                    " (reloaded when it changes)" if self.config.config_watch else " and send SIGHUP again"
                )
                log.error("app.reload_failed", problems=exc.problems, action=action)
                return False
            rules_ok = await self.rules.reload_async(config.rules)
            notify_ok = await self._reload_notify(config)
            return rules_ok and notify_ok

    async def _reload_notify(self, config: Config) -> bool:
        """Swap topics, subscriptions and routes: build the new notifier first, so a bad
        template or pattern keeps the old one running; then stop the old and start the new.

        Outboxes are files named by topic and subscription, so messages waiting in them
        are picked up by the new workers; a removed subscription's outbox stays on disk.
        """
        if config.notify == self.config.notify:
            return True
        new: notify_mod.Notifier | None = None
        try:
            if notify_mod.enabled(config.notify):
                new = notify_mod.build(
                    self.journal,
                    config,
                    self.config.journal.dir / "state",
                    self._public_url(config),
                    self.rules.consumer(notify_mod.CURSOR),
                    self._config_source(),
                )
        except Exception as exc:
            log.error("notify.reload_failed", error=str(exc), action="fix the file and send SIGHUP again")
            return False
        if self.notifier is not None:
            await self.notifier.stop()
        if new is None:
            self.journal.unregister(notify_mod.CURSOR)
        else:
            await new.start()
        self.notifier = new
        self.config = self.config.model_copy(update={"notify": config.notify})
        log.info(
            "notify.reloaded",
            topics=sorted(config.notify.topics),
            routes=len(config.notify.routes),
        )
        return True

    async def stop(self, grace: float | None = None) -> None:
        """Stop intake, store open files and write the chain-end digests, then close.

        ``grace`` (default: the config's shutdown_grace) bounds the whole shutdown, not
        each stage: the deadline is set once and every stage that may wait on a store
        (archivers, sweeps and backups, digests) gets only what is left of it. Past it,
        what is not stored stays in the journal (archiver intents, pending digests) and
        is finished on the next start.
        """
        deadline = time.monotonic() + (self.config.shutdown_grace if grace is None else grace)
        # Components give up by themselves at the deadline (after a failed try, never in the
        # middle of one); this later cut-off cancels one stuck inside a store call.
        cutoff = deadline + STOP_CANCEL_SLACK

        def left() -> float:
            return max(0.0, deadline - time.monotonic())

        for task in self._watch_tasks:
            task.cancel()
        await asyncio.gather(*self._watch_tasks, return_exceptions=True)
        self._watch_tasks.clear()
        await asyncio.gather(*(source.stop() for source in self.sources), return_exceptions=True)
        self.sources.clear()
        for runner in self._runners:
            await runner.cleanup()
        self._runners.clear()
        if self.notifier is not None:
            await self.notifier.stop()
        for aux in (self.retention, self.backup):
            if aux is not None:
                aux.stop()
        for archiver in self.archivers:
            archiver.stop(deadline=left())
        if self.indexer is not None:
            self.indexer.stop()
        # The archivers give up between two tries at the deadline; one stuck inside a store
        # call (a connect or read timeout) is cancelled there: its intent stays recorded.
        await _finish_by(self._tasks, cutoff)
        # A sweep or a backup round may be waiting on a slow store: it is safe to cut
        # short (both record progress durably and resume on the next start).
        await _finish_by(self._aux_tasks, deadline)
        if self.index is not None:
            await self.index.close()
        if self.integrity is not None:
            # After the archivers: the chain-end digest must list their last files.
            await self.integrity.stop(left(), wait=max(0.0, cutoff - time.monotonic()))
        await self._stop_correlation()
        await self.journal.close()
        if self.decode_pool is not None:
            await self.decode_pool.close()
        for store in self.stores.values():
            with contextlib.suppress(Exception):
                await store.close()
        self.rules.flush_metrics()
        log.info("app.stopped", end_offset=self.journal.end_offset)

    async def _stop_correlation(self) -> None:
        """After the consumers: save their correlation state as of what they last read."""
        self._correlation_stop.set()
        if self._correlation_task is None:
            return
        await asyncio.gather(self._correlation_task, return_exceptions=True)
        self._correlation_task = None
        try:
            await self.rules.persist(self.journal)
        except Exception as exc:
            # The next start rebuilds from the last snapshot and the journal: nothing is lost.
            log.error("correlation.save_failed", error=str(exc))

    async def serve(self) -> None:
        """Run until SIGTERM/SIGINT, then shut down cleanly."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        loop.add_signal_handler(signal.SIGHUP, self._on_reload)
        try:
            await self.start()
            await self._stop_requested.wait()
        finally:
            await self.stop()


async def _finish_by(tasks: list[asyncio.Task[None]], deadline: float) -> None:
    """Wait for ``tasks`` until the monotonic ``deadline``, then cancel those still running."""
    if not tasks:
        return
    _done, pending = await asyncio.wait(tasks, timeout=max(0.0, deadline - time.monotonic()))
    for task in pending:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _ssl_context(tls: TlsConfig) -> ssl.SSLContext:
    """A server TLS context; raises ValueError naming the files when they cannot be loaded."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(tls.cert_file, tls.key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(
            f"ingest.http.tls: cannot load certificate {tls.cert_file} with key {tls.key_file}: {exc}"
        ) from exc
    return context


def state_dir(config: Config) -> Path:
    return config.journal.dir / "state"
