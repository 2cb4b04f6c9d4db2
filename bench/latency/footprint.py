"""Bytes on disk per decision in steady state: the SQLite store and its WAL under Route load.

A fresh sidecar on an empty store takes `first` Routes at concurrency 32, then rests while
its checkpointer copies the WAL back (steady state: the WAL has reached the size it keeps
between checkpoints); then `second` more Routes and the same rest. The figure is the growth
of the store file between the two rests over the decisions written between them (counted in
the store itself): after a rest every decision is in the store. The WAL's size is sampled
every 20 ms throughout; the growth of both files together is kept too, for the record.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from bench.latency.rpc import Stats, run_round
from bench.latency.targets import Variant, start_sidecar
from bench.latency.workload import build_requests
from routing_sidecar_api.routing_sidecar.v1 import router_pb2_grpc as pb_grpc

CONCURRENCY = 32
REST_S = 1.0  # five of the checkpointer's rounds: the WAL has been copied back by then
SAMPLE_S = 0.02


@dataclass(frozen=True)
class Snapshot:
    """Sizes on disk after a rest, and the decisions the store holds then."""

    decisions: int
    db_bytes: int
    wal_bytes: int

    @property
    def total(self) -> int:
        """Store and WAL together."""
        return self.db_bytes + self.wal_bytes


@dataclass(frozen=True)
class Footprint:
    """Two snapshots of one store and the largest WAL seen between and before them."""

    before: Snapshot
    after: Snapshot
    wal_max_bytes: int
    errors: int

    @property
    def decisions(self) -> int:
        """Decisions written between the two snapshots."""
        return self.after.decisions - self.before.decisions

    @property
    def bytes_per_decision(self) -> float:
        """Growth of store + WAL per decision written between the snapshots."""
        return (self.after.total - self.before.total) / self.decisions if self.decisions else 0.0

    @property
    def db_bytes_per_decision(self) -> float:
        """Growth of the store file alone per decision."""
        grew = self.after.db_bytes - self.before.db_bytes
        return grew / self.decisions if self.decisions else 0.0


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def count_decisions(db: Path) -> int:
    """Rows in the store's decision table, read through a read-only connection."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT count(*) FROM model_routing_decisions").fetchone()[0])
    finally:
        conn.close()


def snapshot(db: Path) -> Snapshot:
    """The decisions stored and the sizes of the store and its WAL, now."""
    return Snapshot(count_decisions(db), _size(db), _size(db.with_name(db.name + "-wal")))


async def _sample_wal(wal: Path, peak: list[int]) -> None:
    while True:
        peak[0] = max(peak[0], _size(wal))
        await asyncio.sleep(SAMPLE_S)


async def _load(address: str, db: Path, first: int, second: int,
                overrides: Mapping[str, Any]) -> Footprint:
    peak = [0]
    sampler = asyncio.get_running_loop().create_task(
        _sample_wal(db.with_name(db.name + "-wal"), peak))
    stats = Stats()
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = pb_grpc.RouterStub(channel)
            part_a = build_requests(first, "footprint-a", **overrides)
            await run_round(stub, part_a, CONCURRENCY, stats)
            await asyncio.sleep(REST_S)
            before = await asyncio.to_thread(snapshot, db)
            part_b = build_requests(second, "footprint-b", **overrides)
            await run_round(stub, part_b, CONCURRENCY, stats)
            await asyncio.sleep(REST_S)
            after = await asyncio.to_thread(snapshot, db)
    finally:
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
    return Footprint(before, after, peak[0], sum(stats.errors.values()))


def measure_footprint(variant: Variant, work: Path, store_dir: Path, first: int,
                      second: int) -> Footprint:
    """Start `variant` on a fresh store, load it in two parts, measure the growth between."""
    with contextlib.ExitStack() as stack:
        sidecar = start_sidecar(stack, variant, work, store_dir, name=f"{variant.name}-footprint")
        db = store_dir / f"{sidecar.name}.db"
        return asyncio.run(_load(sidecar.address, db, first, second, variant.request))
