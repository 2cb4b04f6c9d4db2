"""Durable state: the only place aiosqlite is imported."""

from routing_sidecar.storage.migrations import SCHEMA_VERSION
from routing_sidecar.storage.sqlite import SqliteStore
from routing_sidecar.storage.writer import GroupWriter, Job, Once, Write

__all__ = ["SCHEMA_VERSION", "GroupWriter", "Job", "Once", "SqliteStore", "Write"]
