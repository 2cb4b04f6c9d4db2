"""Durable state: the only place aiosqlite (sqlite/) and asyncpg (postgres/) are imported."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeAlias

from routing_sidecar.ports import Clock
from routing_sidecar.storage.migrations import SCHEMA_VERSION
from routing_sidecar.storage.sqlite import SqliteStore
from routing_sidecar.storage.writer import GroupWriter, Job, Once, Write

if TYPE_CHECKING:
    from routing_sidecar.config import StoreConfig
    from routing_sidecar.storage.postgres import PostgresStore

Store: TypeAlias = "SqliteStore | PostgresStore"


def __getattr__(name: str) -> Any:
    # PostgreSQL (asyncpg) loads only for a config with `store.url`: a shorter start on SQLite.
    if name == "PostgresStore":
        from routing_sidecar.storage.postgres import PostgresStore  # noqa: PLC0415

        return PostgresStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = ["SCHEMA_VERSION", "GroupWriter", "Job", "Once", "PostgresStore", "SqliteStore",
           "Store", "Write", "open_store"]


async def open_store(store_cfg: StoreConfig, *, clock: Clock) -> Store:
    """The store the config names: PostgreSQL for `store.url`, else SQLite at `store.path`."""
    if store_cfg.url is not None:
        from routing_sidecar.storage.postgres import PostgresStore  # noqa: PLC0415

        return await PostgresStore.open(
            store_cfg.url, retention_days=store_cfg.retention_days, clock=clock,
            pool_size=store_cfg.pool_size, connect_timeout_s=store_cfg.connect_timeout_s,
            command_timeout_s=store_cfg.command_timeout_s,
        )
    assert store_cfg.path is not None, "StoreConfig fills in the default path"
    return await SqliteStore.open(store_cfg.path, retention_days=store_cfg.retention_days,
                                  clock=clock)
