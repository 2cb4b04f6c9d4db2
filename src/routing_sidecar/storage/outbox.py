"""A small durable queue on local disk: budget changes waiting for the shared ledger to return.

While Redis cannot be reached, an outcome's charges (and, in `local` mode, what this sidecar
spent on its own) are kept here, committed before the outcome is acknowledged, and replayed in
order once Redis answers again. One SQLite file per sidecar, WAL, one table.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from routing_sidecar.errors import StorageError
from routing_sidecar.ports import PendingSettle

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id        INTEGER PRIMARY KEY,
    op        TEXT NOT NULL,
    queued_at REAL NOT NULL
) STRICT;
"""


class Outbox:
    """Pending settles in order, on a local SQLite file; each one survives a kill -9."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: str) -> Outbox:
        """Open (creating if needed) the outbox file."""
        def connect() -> sqlite3.Connection:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
            conn.executescript(_SCHEMA)
            return conn
        try:
            return cls(await asyncio.to_thread(connect))
        except (OSError, sqlite3.Error) as exc:
            raise StorageError(f"{path}: cannot open the outbox: {exc}") from exc

    async def add(self, op: PendingSettle) -> int:
        """Queue one settle; returns once it is committed."""
        text = json.dumps(asdict(op), separators=(",", ":"))
        async with self._lock:
            try:
                return await asyncio.to_thread(self._insert, text, op.now)
            except sqlite3.Error as exc:
                raise StorageError(f"outbox write failed: {exc}") from exc

    def _insert(self, text: str, at: float) -> int:
        cursor = self._conn.execute("INSERT INTO outbox (op, queued_at) VALUES (?, ?)", (text, at))
        return int(cursor.lastrowid or 0)

    async def pending(self, limit: int = 500) -> list[tuple[int, PendingSettle]]:
        """The oldest queued settles, in the order they were queued."""
        async with self._lock:
            rows: Sequence[tuple[int, str]] = await asyncio.to_thread(
                lambda: self._conn.execute(
                    "SELECT id, op FROM outbox ORDER BY id LIMIT ?", (limit,)).fetchall())
        out = []
        for row_id, text in rows:
            raw = json.loads(text)
            raw["charges"] = tuple((str(m), int(a)) for m, a in raw["charges"])
            out.append((row_id, PendingSettle(**raw)))
        return out

    async def done(self, row_id: int) -> None:
        """Forget a settle the shared ledger has applied."""
        async with self._lock:
            await asyncio.to_thread(self._conn.execute, "DELETE FROM outbox WHERE id = ?",
                                    (row_id,))

    async def size(self) -> int:
        """How many settles are waiting."""
        async with self._lock:
            row = await asyncio.to_thread(
                lambda: self._conn.execute("SELECT COUNT(*) FROM outbox").fetchone())
        return int(row[0])

    async def close(self) -> None:
        """Close the file."""
        async with self._lock:
            await asyncio.to_thread(self._conn.close)
