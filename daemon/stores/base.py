"""The object-store contract that archive, quarantine, digests and backup rely on."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable


class StoreError(Exception):
    """A store operation failed. ``retryable`` tells the caller whether to try again."""

    retryable: bool = True

    def __init__(self, store: str, message: str, *, hint: str = "") -> None:
        text = f"store {store!r}: {message}"
        if hint:
            text += f" ({hint})"
        super().__init__(text)
        self.store = store
        self.hint = hint


class StoreUnavailable(StoreError):
    """The store could not be reached or answered with a transient error: retry later."""


class StorePermanentError(StoreError):
    """Retrying will not help until an operator acts (bad credentials, missing bucket)."""

    retryable = False


class ObjectConflict(StoreError):
    """A different object already sits at a key that must be written once."""

    retryable = False


class ObjectMissing(StoreError):
    """The key holds no object."""

    retryable = False


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    key: str
    size: int
    modified: float  # seconds since the epoch


@runtime_checkable
class Store(Protocol):
    """An object store. Keys are ``/``-separated relative paths without ``..``.

    Contract shared by every implementation (tests/contract/test_stores.py):
    - ``put`` is idempotent: writing the same bytes to a key again succeeds; writing
      different bytes to an existing key raises ObjectConflict (archive keys are
      deterministic, so a difference means something is wrong, never a retry).
    - an object is either fully present or absent; readers never see partial data.
    - ``list`` yields every key under a prefix, sorted.
    """

    name: str

    async def put(self, key: str, data: bytes) -> None: ...

    async def replace(self, key: str, data: bytes) -> None:
        """Write ``data`` at ``key`` whether or not it holds an object (atomic: readers see old or new).

        Only for the few objects that are meant to change (the published checkpoint); on a
        versioned or Object Lock bucket every replaced version is kept.
        """
        ...

    async def get(self, key: str) -> bytes: ...

    async def head(self, key: str) -> ObjectInfo | None: ...

    def list(self, prefix: str = "") -> AsyncIterator[ObjectInfo]: ...

    async def delete(self, key: str) -> None: ...

    async def check(self) -> None:
        """Raise StoreError when the store cannot be written (used by /readyz)."""
        ...

    async def close(self) -> None: ...


def check_key(store: str, key: str) -> str:
    """Refuse keys that could escape the store's root or name nothing."""
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise StorePermanentError(store, f"invalid object key {key!r}")
    return key
