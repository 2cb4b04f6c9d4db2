"""Shared fakes: a clock moved by hand, an in-memory audit log and ledger store, a service stack.

These stand in for the ports (Clock, AuditLog, LedgerStore), never for the code under test: a
service test runs the real RoutingService and OutcomeService over them, without gRPC or disk.
"""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from routing_sidecar import logs
from routing_sidecar.core.budget import Ledger
from routing_sidecar.core.budget_rules import EntryKind, LedgerEntry
from routing_sidecar.errors import StorageError
from routing_sidecar.ports import (
    AttemptRecord,
    DecisionRecord,
    LedgerTotal,
    ModelTaskCell,
    OutcomeRecord,
    PerformanceRecord,
    RoutingStats,
)
from routing_sidecar.service.learning import Learner
from routing_sidecar.service.outcomes import OutcomeService
from routing_sidecar.service.routing import RoutingService, RoutingState
from routing_sidecar.settings import RouterSettings

JAN_31 = datetime(2026, 1, 31, 12, 0, tzinfo=UTC).timestamp()


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = JAN_31) -> None:
        self.t = now

    def now(self) -> float:
        return self.t

    def monotonic(self) -> float:
        return self.t


@dataclass
class MemoryStore:
    """AuditLog and LedgerStore in memory, with the same exactly-once outcome rule.

    `fail_writes` makes the next that many writes raise StorageError (nothing is kept), so
    tests can check that a failed commit leaves no trace in the ledger.
    """

    decisions: dict[str, DecisionRecord] = field(default_factory=dict)
    outcomes: dict[str, OutcomeRecord] = field(default_factory=dict)
    attempts: dict[str, list[AttemptRecord]] = field(default_factory=dict)
    ledger: list[LedgerEntry] = field(default_factory=list)
    performance: list[PerformanceRecord] = field(default_factory=list)
    learned: dict[str, str] = field(default_factory=dict)
    configs: dict[str, float] = field(default_factory=dict)
    fail_writes: int = 0

    def _write(self) -> None:
        if self.fail_writes > 0:
            self.fail_writes -= 1
            raise StorageError("write failed: injected by the test")

    async def record_decision(self, row: DecisionRecord,
                              ledger_rows: Sequence[LedgerEntry] = ()) -> None:
        self._write()
        if row.decision_id in self.decisions:
            raise StorageError(f"write failed: duplicate decision {row.decision_id}")
        self.decisions[row.decision_id] = row
        self.ledger += ledger_rows

    async def get_decision(self, decision_id: str) -> DecisionRecord | None:
        return self.decisions.get(decision_id)

    async def record_outcome(self, decision_id: str, attempts: Sequence[AttemptRecord],
                             outcome: OutcomeRecord, ledger_rows: Sequence[LedgerEntry],
                             performance: Sequence[PerformanceRecord] = ()) -> bool:
        self._write()
        if decision_id in self.outcomes:
            return False
        self.outcomes[decision_id] = outcome
        self.attempts[decision_id] = list(attempts)
        self.ledger += ledger_rows
        self.performance += performance
        return True

    async def get_outcome(self, decision_id: str) -> OutcomeRecord | None:
        return self.outcomes.get(decision_id)

    async def save_learned(self, book: str, state_json: str, at: float) -> None:
        self._write()
        self.learned[book] = state_json

    async def load_learned(self, book: str) -> str | None:
        return self.learned.get(book)

    async def record_config(self, config_hash: str, config_json: str, loaded_at: float) -> None:
        self._write()
        self.configs.setdefault(config_hash, loaded_at)

    async def routing_stats(self, since: float, label_keys: Sequence[str] = ()) -> RoutingStats:
        cells: dict[tuple[str, str], list[int]] = {}
        for d in self.decisions.values():
            if d.decided_at >= since and not d.dry_run and d.chosen_model:
                cell = cells.setdefault((d.chosen_model, d.task_type), [0, 0, 0])
                out = self.outcomes.get(d.decision_id)
                cell[0] += 1
                cell[1] += d.estimated_cost_micros
                cell[2] += out.actual_cost_micros if out else 0
        return RoutingStats(since, tuple(ModelTaskCell(m, t, *v)
                                         for (m, t), v in sorted(cells.items())))

    async def prune(self, older_than: float | None = None) -> int:
        old = [k for k, d in self.decisions.items()
               if older_than is not None and d.decided_at < older_than]
        for k in old:
            self.decisions.pop(k)
            self.outcomes.pop(k, None)
            self.attempts.pop(k, None)
        return len(old)

    async def load_ledger_entries(self) -> list[LedgerEntry]:
        return list(self.ledger)

    async def record_ledger(self, rows: Sequence[LedgerEntry]) -> None:
        self._write()
        self.ledger += rows

    async def ledger_totals(self) -> list[LedgerTotal]:
        sums: dict[tuple[str, object, float, EntryKind], int] = {}
        for e in self.ledger:
            key = (e.scope, e.period, e.period_start, e.kind)
            sums[key] = sums.get(key, 0) + e.amount_micros
        return [LedgerTotal(s, p, start, k, v)  # type: ignore[arg-type]
                for (s, p, start, k), v in sorted(sums.items(), key=str)]

    def labels_of(self, decision_id: str) -> dict[str, str]:
        """The labels a decision was audited with."""
        labels: dict[str, str] = json.loads(self.decisions[decision_id].labels_json)
        return labels


@dataclass
class Stack:
    """The real routing and outcome services over the in-memory store and a fake clock."""

    routing: RoutingService
    outcomes: OutcomeService
    store: MemoryStore
    clock: FakeClock
    ledger: Ledger


def service_stack(settings: RouterSettings, *, clock: FakeClock | None = None,
                  store: MemoryStore | None = None, seed: int = 0) -> Stack:
    """Wire the services the way app.Sidecar does, minus gRPC and the SQLite store."""
    clock = clock or FakeClock()
    store = store or MemoryStore()
    ledger = Ledger(settings.budgets, ZoneInfo(settings.ledger.timezone))
    learner = Learner.of(settings)
    ids = itertools.count(1)
    routing = RoutingService(RoutingState.of(settings), clock, ledger, store, learner,
                             new_id=lambda: logs.bind_decision(f"d{next(ids)}"),
                             rng=random.Random(seed))
    outcomes = OutcomeService(lambda: routing.catalog, ledger, store, clock, learner,
                              settings.outcomes)
    return Stack(routing, outcomes, store, clock, ledger)
