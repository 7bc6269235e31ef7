"""Reload the config when its file changes (``config_watch``), as SIGHUP does.

In Kubernetes a ConfigMap mounted as a directory is updated by the kubelet without
touching the file the daemon was given: ``trailkeeper.yaml`` is a symlink to
``..data/trailkeeper.yaml``, and ``..data`` is a symlink to a timestamped directory that
the kubelet replaces atomically. Neither inotify on the path nor its mtime sees that
reliably, so the watch reads the file through its path on every poll (following the
symlinks afresh) and compares a hash of the content. The file is a few KiB: one read
every few seconds, in a thread so the event loop never waits on the disk.

Contract: ``reload`` is called once per distinct content of the watched files, never for
a poll that found the same content, so a broken file is reported once (by the reload's
own log line) and not every poll; the old config stays in force until a content loads.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from daemon.telemetry import get_logger

log = get_logger("configwatch")


def fingerprint(paths: Sequence[Path]) -> str:
    """SHA-256 over the content of ``paths``, read through their symlinks (blocking).

    A file that cannot be read contributes its error instead, so a file that disappears
    or comes back counts as a change, and the same error twice does not."""
    digest = hashlib.sha256()
    for path in paths:
        # A directory (rules.files takes them) stands for its *.yaml and *.yml files, as the
        # rules loader reads them.
        files = [path]
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml"))
        for file in files:
            digest.update(str(file).encode() + b"\0")
            try:
                digest.update(b"ok\0" + file.read_bytes())
            except OSError as exc:
                digest.update(f"error\0{exc.strerror}".encode())
            digest.update(b"\0")
    return digest.hexdigest()


class ConfigWatch:
    """Polls the config file every ``interval`` s and calls ``reload`` when it changed.

    ``paths`` is asked for the files on every poll (the config file first, then whatever it
    names that a reload re-reads, such as rule files), so a reload that names new files
    has them watched from the next poll on. ``baseline`` is the fingerprint of what is in
    force; take it with ``fingerprint`` when the config is loaded.
    """

    def __init__(
        self,
        paths: Callable[[], Sequence[Path]],
        interval: float,
        reload: Callable[[], Awaitable[bool]],
        baseline: str,
    ) -> None:
        self.paths = paths
        self.interval = interval
        self.reload = reload
        self.seen = baseline
        self.reloads = 0  # reloads started by the watch, for tests and logs

    async def poll(self) -> bool | None:
        """One round: None when nothing changed, else the reload's result."""
        paths = list(self.paths())
        current = await asyncio.to_thread(fingerprint, paths)
        if current == self.seen:
            return None
        # Recorded before the reload: a content that fails to load is tried once, and the
        # next attempt waits for the operator's next change.
        self.seen = current
        self.reloads += 1
        log.info("config.changed", path=str(paths[0]) if paths else None, action="reloading")
        return await self.reload()

    async def run(self) -> None:
        """Poll until cancelled; a poll never ends the loop (the reload itself never raises)."""
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.poll()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # keep watching: a later change may load fine
                log.error("config.watch_failed", error=f"{type(exc).__name__}: {exc}")
