"""The ``local`` store: a directory tree, written atomically, files left read-only."""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict

from daemon.durable import fsync_dir
from daemon.stores.base import (
    ObjectConflict,
    ObjectInfo,
    ObjectMissing,
    StoreError,
    StorePermanentError,
    StoreUnavailable,
    check_key,
)


def _file_mode(value: object) -> object:
    # YAML 1.1 reads 0444 as octal but 0o444 as a string: accept both spellings.
    if isinstance(value, str):
        return int(value, 8)
    return value


class LocalStoreConfig(BaseModel):
    """A directory on local disk (the embedded default)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)
    type: Literal["local"] = "local"
    """Store type."""
    path: Path = Path("var/archive")
    """Root directory of the store."""
    file_mode: Annotated[int, BeforeValidator(_file_mode)] = 0o444
    """Mode of stored files (0o444 or 0444): read-only so a stray write cannot alter evidence."""
    fsync: bool = True
    """fsync each file and its directory before it counts as stored."""


class LocalStore:
    """Atomic writes: temp file, fsync, rename, fsync of the directory.

    All disk work runs in a thread so the event loop never waits on fsync.
    """

    def __init__(self, name: str, config: LocalStoreConfig) -> None:
        self.name = name
        self.config = config
        self.root = config.path

    def _path(self, key: str) -> Path:
        return self.root / check_key(self.name, key)

    def _wrap(self, exc: OSError, action: str, key: str) -> StoreError:
        if isinstance(exc, PermissionError):
            return StoreUnavailable(
                self.name,
                f"cannot {action} {key!r} under {self.root}: permission denied",
                hint="make the directory writable by the daemon's user",
            )
        return StoreUnavailable(self.name, f"cannot {action} {key!r} under {self.root}: {exc}")

    def _same_or_conflict(self, key: str, path: Path, data: bytes) -> None:
        if hashlib.sha256(path.read_bytes()).digest() != hashlib.sha256(data).digest():
            raise ObjectConflict(self.name, f"{key!r} exists with different content")

    def _write_tmp(self, path: Path, data: bytes) -> Path:
        """Write ``data`` to a new temp file beside ``path`` (fsynced, final mode); the caller
        links or renames it into place and removes it."""
        path.parent.mkdir(parents=True, exist_ok=True)
        # A unique temp name per call: concurrent writers of one key must not share it.
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            try:
                view = memoryview(data)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                if self.config.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.chmod(tmp, self.config.file_mode)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return tmp

    def _put_sync(self, key: str, data: bytes) -> None:
        path = self._path(key)
        if path.exists():
            self._same_or_conflict(key, path, data)
            return
        tmp = self._write_tmp(path, data)
        try:
            # link() refuses an existing target, so the file is written once even when
            # two writers race past the exists() check (rename would silently replace).
            try:
                os.link(tmp, path)
            except FileExistsError:
                self._same_or_conflict(key, path, data)
                return
        finally:
            tmp.unlink(missing_ok=True)
        if self.config.fsync:
            fsync_dir(path.parent)

    async def put(self, key: str, data: bytes) -> None:
        try:
            await asyncio.to_thread(self._put_sync, key, data)
        except OSError as exc:
            raise self._wrap(exc, "write", key) from exc

    def _replace_sync(self, key: str, data: bytes) -> None:
        path = self._path(key)
        tmp = self._write_tmp(path, data)
        try:
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        if self.config.fsync:
            fsync_dir(path.parent)

    async def replace(self, key: str, data: bytes) -> None:
        """Atomically write or overwrite ``key`` (temp file, fsync, rename)."""
        try:
            await asyncio.to_thread(self._replace_sync, key, data)
        except OSError as exc:
            raise self._wrap(exc, "write", key) from exc

    def _get_sync(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError as exc:
            raise ObjectMissing(self.name, f"no object at {key!r}") from exc

    async def get(self, key: str) -> bytes:
        try:
            return await asyncio.to_thread(self._get_sync, key)
        except OSError as exc:
            raise self._wrap(exc, "read", key) from exc

    async def head(self, key: str) -> ObjectInfo | None:
        try:
            st = await asyncio.to_thread(os.stat, self._path(key))
        except FileNotFoundError:
            return None
        return ObjectInfo(key, st.st_size, st.st_mtime)

    def _list_sync(self, prefix: str) -> list[ObjectInfo]:
        out: list[ObjectInfo] = []
        if not self.root.exists():
            return out
        base = self.root
        # Walk only the directory that can hold the prefix, not the whole tree.
        start = base / prefix.rsplit("/", 1)[0] if "/" in prefix else base
        if not start.exists():
            return out
        for dirpath, _dirs, files in os.walk(start):
            for fname in files:
                if fname.startswith(".") and fname.endswith(".tmp"):
                    continue
                full = Path(dirpath) / fname
                key = full.relative_to(base).as_posix()
                if key.startswith(prefix):
                    st = full.stat()
                    out.append(ObjectInfo(key, st.st_size, st.st_mtime))
        out.sort(key=lambda o: o.key)
        return out

    async def list(self, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        try:
            items = await asyncio.to_thread(self._list_sync, prefix)
        except OSError as exc:
            raise self._wrap(exc, "list", prefix) from exc
        for item in items:
            yield item

    async def delete(self, key: str) -> None:
        try:
            await asyncio.to_thread(self._path(key).unlink, True)
        except OSError as exc:
            raise self._wrap(exc, "delete", key) from exc

    def _check_sync(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise PermissionError(f"{self.root} is not writable")

    async def check(self) -> None:
        try:
            await asyncio.to_thread(self._check_sync)
        except OSError as exc:
            raise StorePermanentError(
                self.name, f"{self.root} is not writable: {exc}", hint="fix the directory's permissions"
            ) from exc

    async def close(self) -> None:
        return None
