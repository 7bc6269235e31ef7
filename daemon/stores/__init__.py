"""Object stores. Every store type is registered here, and only here."""

from __future__ import annotations

from daemon.stores.base import Store
from daemon.stores.local import LocalStore, LocalStoreConfig

# A discriminated union on ``type`` once there is more than one store type.
StoreConfig = LocalStoreConfig


def build_store(name: str, config: StoreConfig) -> Store:
    """Instantiate the runtime store for one ``stores.<name>`` entry."""
    if isinstance(config, LocalStoreConfig):
        return LocalStore(name, config)
    raise TypeError(f"no store type for {type(config).__name__}")


__all__ = ["Store", "StoreConfig", "build_store"]
