"""The fleet's audit trail on PostgreSQL: the only place asyncpg is imported."""

from routing_sidecar.storage.postgres.dsn import Redactor
from routing_sidecar.storage.postgres.migrations import SCHEMA_VERSION
from routing_sidecar.storage.postgres.store import PostgresStore
from routing_sidecar.storage.postgres.writer import PgWriter

__all__ = ["SCHEMA_VERSION", "PgWriter", "PostgresStore", "Redactor"]
