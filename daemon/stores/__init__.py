"""Object stores. Every store type is registered here, and only here."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from daemon.stores.base import Store
from daemon.stores.local import LocalStore, LocalStoreConfig
from daemon.stores.s3 import S3Store, S3StoreConfig

# One entry of ``stores:``; ``type`` picks the model, so errors name the right fields.
StoreConfig = Annotated[LocalStoreConfig | S3StoreConfig, Field(discriminator="type")]
STORE_TYPES = frozenset({"local", "s3"})


def build_store(name: str, config: LocalStoreConfig | S3StoreConfig) -> Store:
    """Instantiate the runtime store for one ``stores.<name>`` entry."""
    if isinstance(config, LocalStoreConfig):
        return LocalStore(name, config)
    if isinstance(config, S3StoreConfig):
        return S3Store(name, config)
    raise TypeError(f"no store type for {type(config).__name__}")


__all__ = ["STORE_TYPES", "S3Store", "S3StoreConfig", "Store", "StoreConfig", "build_store"]
