"""The response cache as the services use it: keys, lookups, stores, stats and the sweeper.

Lookups and stores never fail a request: a cache back end that cannot answer is a miss (and a
store that cannot commit is not acknowledged), logged once per failure. Hit and miss counts are
tallied in memory, per hour and (namespace, policy, project), and written with the batched
last-use times on every sweep; reports add what is not written yet, so they are always current.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from routing_sidecar import domain
from routing_sidecar.core.cache_key import CacheKey, decision_key, partition_of
from routing_sidecar.core.catalog import Catalog
from routing_sidecar.core.rules import resolve_objective
from routing_sidecar.errors import InvalidArgument, StorageError
from routing_sidecar.ports import (
    Cache,
    CacheFootprint,
    CacheUsage,
    Clock,
    PendingStore,
    SweepResult,
)
from routing_sidecar.settings import CacheSettings
from routing_sidecar.waiting import wake_or_timeout

log = logging.getLogger(__name__)
HOUR_S = 3600.0

# (policy, project, hit, micro-USD saved): what the metrics count for each lookup.
LookupHook = Callable[[str, str, bool, int], None]
_TallyKey = tuple[float, str, str, str]  # hour, namespace, policy, project


def project_of(task: domain.Task) -> str:
    """The project label a request's lookups and entries are counted under."""
    return task.labels.get("project", "")


@dataclass(frozen=True, slots=True)
class CacheReport:
    """What `cache stats` shows: what the cache holds and how lookups went since a time."""

    backend: str
    since: float
    footprint: CacheFootprint
    usage: tuple[CacheUsage, ...]
    max_entries: int
    max_bytes: int


def cached_selection(task: domain.Task, policy: domain.Policy, entry: domain.CacheEntry,
                     catalog: Catalog, now: float) -> domain.Selection:
    """The CACHE_HIT decision: the entry's model named as chosen, at no cost, nothing else."""
    spec = catalog.models.get(entry.model)
    age = max(0.0, now - entry.created_at)
    reason = (f"cache hit: the stored answer of decision {entry.source_decision_id} "
              f"({entry.model} on {entry.provider}, {_age(age)} old) under policy "
              f"{policy.name}; no model call, nothing reserved")
    chosen = domain.Alternative(
        model=entry.model, provider=entry.provider, tier=spec.tier if spec else 0, score=0.0,
        estimated_cost_micros=0, rejection=domain.Rejection.CHOSEN,
        reason=f"chosen: answered from the cache (decision {entry.source_decision_id})",
        estimated_quality=spec.quality if spec else 0.0,
    )
    return domain.Selection(
        status=domain.DecisionStatus.CACHE_HIT, reason_code=domain.ReasonCode.CACHE_HIT,
        policy=policy.name, objective=resolve_objective(task, policy, catalog), reason=reason,
        alternatives=(chosen,), chosen=chosen,
    )


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


class Flights:
    """One request per key in flight: the others wait for it to land, then look again."""

    def __init__(self) -> None:
        self._flying: dict[str, asyncio.Event] = {}

    def __len__(self) -> int:
        return len(self._flying)

    def board(self, key: str) -> asyncio.Event | None:
        """None: the caller leads (and must `land`); else the event the leader sets."""
        event = self._flying.get(key)
        if event is None:
            self._flying[key] = asyncio.Event()
        return event

    def land(self, key: str) -> None:
        """The leader is done (answer stored or not): wake everyone waiting on the key."""
        event = self._flying.pop(key, None)
        if event is not None:
            event.set()


class CacheService:
    """Looks requests up, stores answers, counts, reports, and sweeps in the background."""

    def __init__(self, cache: Cache, clock: Clock, settings: Callable[[], CacheSettings],
                 backend: str = "sqlite") -> None:
        self._cache = cache
        self._clock = clock
        self._settings = settings
        self.backend = backend
        self.on_lookup: LookupHook | None = None  # set by the app to count metrics
        self._tally: dict[_TallyKey, list[int]] = {}
        self._flushing: dict[_TallyKey, list[int]] = {}
        self._touched: dict[str, float] = {}
        self._wake = asyncio.Event()
        self._puts = 0
        self.flights = Flights()  # execute mode: one provider call per key at a time

    @property
    def settings(self) -> CacheSettings:
        """The cache settings in force (they follow config reloads)."""
        return self._settings()

    def now(self) -> float:
        """The cache's clock: entries are stamped and expire by it."""
        return self._clock.now()

    # -- keys and lookups ------------------------------------------------------------------

    def route_key(self, task: domain.Task, policy: str) -> CacheKey | None:
        """The decision-mode key of a Route, or None when it has no cache_key (or no cache)."""
        s = self.settings
        if not s.enabled or not task.cache_key:
            return None
        return decision_key(partition_of(task.labels, s.partition_labels), "", policy,
                            task.cache_key)

    async def lookup(self, key: CacheKey, project: str,
                     count: bool = True) -> domain.CacheEntry | None:
        """The live entry under a key, or None; counted as a hit or a miss.

        With `count` False the caller counts the request's final result (`count_lookup`).
        """
        now = self._clock.now()
        try:
            entry = await self._cache.get(key.digest, now)
        except StorageError as exc:
            log.warning("cache lookup failed; answering as a miss",
                        extra={"cache_key": key.short, "error": exc.message})
            entry = None
        if entry is not None:
            self._touched[key.digest] = now
        if count:
            self.count_lookup(key, project, entry)
        return entry

    def count_lookup(self, key: CacheKey, project: str, entry: domain.CacheEntry | None) -> None:
        """Count one request's lookup: a hit (saving the entry's cost) or a miss."""
        saved = entry.cost_micros if entry is not None else 0
        self._count(key.namespace, key.policy, project, int(entry is not None),
                    misses=int(entry is None), saved=saved)
        if self.on_lookup is not None:
            self.on_lookup(key.policy, project, entry is not None, saved)

    # -- stores ----------------------------------------------------------------------------

    def check_value(self, field: str, value: bytes) -> None:
        """Refuse a value above `max_value_bytes`, naming the field."""
        limit = self.settings.max_value_bytes
        if len(value) > limit:
            raise InvalidArgument(field, f"is {len(value)} bytes; at most {limit} allowed "
                                         "(cache.max_value_bytes)")

    async def remember(self, decision_id: str, key: CacheKey, project: str) -> None:
        """Note where this decision's outcome will store its value (a failure only logs)."""
        expires = self._clock.now() + self.settings.ttl_s
        pending = PendingStore(decision_id, key.digest, key.namespace, project, key.policy,
                               expires)
        try:
            await self._cache.put_pending(pending)
        except StorageError as exc:
            log.warning("cache: could not remember a decision's key; its outcome will not "
                        "be stored", extra={"cache_key": key.short, "error": exc.message})

    async def store_outcome(self, decision_id: str, value: bytes, cost_micros: int,
                            model: str, provider: str) -> bool:
        """Store a decision-mode result under its decision's key; True once durable."""
        now = self._clock.now()
        try:
            pending = await self._cache.get_pending(decision_id, now)
        except StorageError as exc:
            log.warning("cache: pending store unreadable", extra={"error": exc.message})
            return False
        if pending is None:
            return False
        entry = domain.CacheEntry(
            pending.key, pending.namespace, pending.project, pending.policy, value,
            decision_id, model, provider, cost_micros, now, now + self.settings.ttl_s)
        return await self.store(entry)

    async def store(self, entry: domain.CacheEntry) -> bool:
        """Put an entry; True once durable, False (logged) when the back end failed."""
        try:
            await self._cache.put(entry)
        except StorageError as exc:
            log.warning("cache store failed", extra={"cache_key": entry.key[:16],
                                                     "error": exc.message})
            return False
        self._count(entry.namespace, entry.policy, entry.project, 0, stores=1)
        self._puts += 1
        if self._puts >= max(1, self.settings.max_entries // 10):
            self._wake.set()  # many stores since the last sweep: sweep early
        return True

    # -- admin -----------------------------------------------------------------------------

    async def purge(self, namespace: str | None = None, project: str | None = None) -> int:
        """Delete the entries of a namespace and/or project (or all); return how many."""
        removed = await self._cache.purge(namespace, project)
        log.info("cache purged", extra={"namespace": namespace, "project": project,
                                        "entries": removed})
        return removed

    async def report(self, since: float, namespace: str | None = None,
                     project: str | None = None) -> CacheReport:
        """Entries, bytes and usage since a time, including counts not yet written."""
        s = self.settings
        footprint = await self._cache.footprint(namespace, project)
        rows = {(u.namespace, u.policy, u.project): u
                for u in await self._cache.usage(since, namespace, project)}
        hour = since - since % HOUR_S
        for tally in (self._flushing, self._tally):
            for (at, ns, policy, proj), counts in tally.items():
                if at < hour or (namespace is not None and ns != namespace) or (
                        project is not None and proj != project):
                    continue
                old = rows.get((ns, policy, proj), CacheUsage(hour, ns, policy, proj))
                rows[(ns, policy, proj)] = CacheUsage(
                    hour, ns, policy, proj, old.hits + counts[0], old.misses + counts[1],
                    old.stores + counts[2], old.saved_micros + counts[3])
        usage = tuple(rows[k] for k in sorted(rows))
        return CacheReport(self.backend, since, footprint, usage, s.max_entries, s.max_bytes)

    # -- background ------------------------------------------------------------------------

    def _count(self, namespace: str, policy: str, project: str, hits: int, *, misses: int = 0,
               stores: int = 0, saved: int = 0) -> None:
        now = self._clock.now()
        cell = self._tally.setdefault((now - now % HOUR_S, namespace, policy, project),
                                      [0, 0, 0, 0])
        cell[0] += hits
        cell[1] += misses
        cell[2] += stores
        cell[3] += saved

    async def flush(self) -> None:
        """Write the tallied counts and last-use times; on failure keep them for next time."""
        tally, self._tally = self._tally, {}
        touched, self._touched = self._touched, {}
        self._flushing = tally
        rows = [CacheUsage(at, ns, policy, proj, *counts)
                for (at, ns, policy, proj), counts in tally.items()]
        try:
            await self._cache.add_usage(rows)
        except StorageError:
            for k, counts in tally.items():
                cell = self._tally.setdefault(k, [0, 0, 0, 0])
                for i, n in enumerate(counts):
                    cell[i] += n
            raise
        finally:
            self._flushing = {}
        try:
            await self._cache.touch(touched)
        except StorageError:
            for digest, at in touched.items():
                self._touched[digest] = max(at, self._touched.get(digest, at))
            raise

    async def sweep_once(self) -> SweepResult:
        """Flush counts, then drop expired entries and evict down to the configured bounds."""
        self._puts = 0
        await self.flush()
        s = self.settings
        result = await self._cache.sweep(self._clock.now(), s.max_entries, s.max_bytes)
        if result.expired or result.evicted:
            log.info("cache swept", extra={"expired": result.expired,
                                           "evicted": result.evicted})
        return result

    async def run(self) -> None:
        """Sweep every `sweep_interval_s` (sooner after many stores) until cancelled."""
        while True:
            await wake_or_timeout(self._wake, self.settings.sweep_interval_s)
            self._wake.clear()
            try:
                await self.sweep_once()
            except StorageError as exc:
                log.warning("cache sweep failed; retrying next round",
                            extra={"error": exc.message})

    async def close(self) -> None:
        """Write what is tallied (best effort) and close the back end."""
        try:
            await self.flush()
        except StorageError as exc:
            log.warning("cache counts not written at shutdown", extra={"error": exc.message})
        await self._cache.close()
