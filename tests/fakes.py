"""Shared fakes: a clock moved by hand, an in-memory audit log and ledger store, a service stack.

These stand in for the ports (Clock, AuditLog, LedgerStore), never for the code under test: a
service test runs the real RoutingService and OutcomeService over them, without gRPC or disk.
"""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from routing_sidecar import logs
from routing_sidecar.calls import (
    CallParams,
    ChatMessage,
    ProviderCall,
    ProviderKind,
    ProviderSettings,
    Role,
    StreamEnd,
    StreamEvent,
    TextDelta,
)
from routing_sidecar.core.budget import Ledger
from routing_sidecar.core.budget_rules import EntryKind, LedgerEntry
from routing_sidecar.errors import ProviderError, StorageError
from routing_sidecar.providers import fake_script
from routing_sidecar.records import (
    AttemptRecord,
    DecisionRecord,
    GradeRecord,
    LedgerTotal,
    ModelTaskCell,
    OutcomeRecord,
    PerformanceRecord,
    RoutingStats,
)
from routing_sidecar.service.budgets import LocalBudgets
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
    grades: dict[str, GradeRecord] = field(default_factory=dict)
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

    async def get_attempts(self, decision_id: str) -> list[AttemptRecord]:
        return list(self.attempts.get(decision_id, ()))

    async def record_grade(self, grade: GradeRecord,
                           performance: Sequence[PerformanceRecord] = ()) -> bool:
        self._write()
        if grade.decision_id in self.grades:
            return False
        self.grades[grade.decision_id] = grade
        self.performance += performance
        return True

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
    book = LocalBudgets(ledger)
    routing = RoutingService(RoutingState.of(settings), clock, book, store, learner,
                             new_id=lambda: logs.bind_decision(f"d{next(ids)}"),
                             rng=random.Random(seed))
    outcomes = OutcomeService(lambda: routing.catalog, book, store, clock, learner,
                              settings.outcomes)
    return Stack(routing, outcomes, store, clock, ledger)


# --- provider calls (execute mode) ---------------------------------------------------------

TEST_KEY = "sk-test-9f8e7d6c5b4a39281706"
PROMPT = (ChatMessage(Role.SYSTEM, "You answer briefly."),
          ChatMessage(Role.USER, "Name a few things found near a river."))


def provider_settings(kind: str, base_url: str = "", name: str | None = None,
                      **overrides: Any) -> ProviderSettings:
    """Settings of a test provider whose key is TEST_KEY in the env variable TEST_PROVIDER_KEY."""
    fields: dict[str, Any] = {
        "name": name or kind, "kind": ProviderKind(kind), "base_url": base_url,
        "api_key_env": "TEST_PROVIDER_KEY", "key_required": kind != "fake",
        "timeout_s": 10.0, "connect_timeout_s": 2.0, "first_token_timeout_s": 5.0,
    }
    fields.update(overrides)
    return ProviderSettings(**fields)


TEST_ENV = {"TEST_PROVIDER_KEY": TEST_KEY}


def provider_call(upstream: str, stream: bool = True, **kw: Any) -> ProviderCall:
    """A call of the test prompt to an upstream (fake) model."""
    return ProviderCall(model="catalog-model", upstream_model=upstream,
                        messages=kw.pop("messages", PROMPT), stream=stream,
                        params=kw.pop("params", CallParams()), **kw)


def expected_answer(upstream: str, messages: tuple[ChatMessage, ...] = PROMPT,
                    max_tokens: int | None = None) -> str:
    """The text the fake answers for a model and prompt (its grammar is deterministic)."""
    script = fake_script.parse_model(upstream)
    contents = [m.content for m in messages]
    tokens, _ = fake_script.answer_tokens(fake_script.prompt_of(contents), script, max_tokens)
    return "".join(tokens)


def prompt_words(messages: tuple[ChatMessage, ...] = PROMPT) -> int:
    """Whitespace-separated words of the prompt, counted independently of the fake."""
    return sum(len(m.content.split()) for m in messages)


async def collect(events: AsyncIterator[StreamEvent]) -> tuple[list[str], StreamEnd]:
    """The text deltas of a successful stream and its end event (which must be last)."""
    texts: list[str] = []
    end: StreamEnd | None = None
    async for event in events:
        assert end is None, "an event arrived after StreamEnd"
        if isinstance(event, TextDelta):
            texts.append(event.text)
        else:
            end = event
    assert end is not None, "the stream ended without StreamEnd"
    return texts, end


async def failure(events: AsyncIterator[StreamEvent]) -> tuple[list[str], ProviderError]:
    """The text deltas of a stream that must fail, and its ProviderError."""
    texts: list[str] = []
    try:
        async for event in events:
            assert not isinstance(event, StreamEnd), "the stream succeeded"
            texts.append(event.text)
    except ProviderError as exc:
        return texts, exc
    raise AssertionError("the stream ended without an error")
