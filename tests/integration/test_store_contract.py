"""What every store promises, on both: SQLite files and a real PostgreSQL database.

Group commit (acknowledged only after commit, one bad write fails only itself), exactly-once
outcomes, the ledger's rows restoring the ledger, pruning and the routing matrix. Each test
runs against each store; `peek` reads through a connection of its own, i.e. what a crash
would leave.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from routing_sidecar import domain
from routing_sidecar.config import StoreConfig
from routing_sidecar.core.budget import Ledger
from routing_sidecar.core.budget_rules import EntryKind, LedgerEntry
from routing_sidecar.domain import BudgetPeriod, BudgetRule
from routing_sidecar.errors import StorageError
from routing_sidecar.ports import ActivityBucket, PauseRecord, PolicyChange
from routing_sidecar.records import (
    GradeRecord,
    OutcomeRecord,
    PerformanceRecord,
    stored_alternatives,
)
from routing_sidecar.storage import Job, Store, Write, open_store
from tests.store_records import GPT5, HAIKU, T0, FixedClock, attempt, decision_record, outcome

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Backend:
    """One store under test: its config, how to read it from outside, its placeholders."""

    name: str
    cfg: StoreConfig
    peek: Callable[..., Awaitable[list[tuple[Any, ...]]]]
    close: Callable[[], Awaitable[None]]

    def sql(self, text: str) -> str:
        """A statement written with `?` placeholders, in this store's dialect."""
        if self.name == "sqlite":
            return text
        numbers = iter(range(1, 1000))
        return re.sub(r"\?", lambda _: f"${next(numbers)}", text)

    async def open(self) -> Store:
        return await open_store(self.cfg, clock=FixedClock())


async def sqlite_backend(path: Path) -> Backend:
    async def peek(sql: str, *args: object) -> list[tuple[Any, ...]]:
        with sqlite3.connect(path) as conn:
            return conn.execute(sql, args).fetchall()

    async def close() -> None:
        pass

    return Backend("sqlite", StoreConfig(path=str(path), retention_days=30), peek, close)


async def postgres_backend(dsn: str) -> Backend:
    # Connections of the test's own, never the store's.
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=4)

    async def peek(sql: str, *args: object) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in await pool.fetch(backend.sql(sql), *args)]

    backend = Backend("postgres", StoreConfig(url=dsn, retention_days=30), peek, pool.close)
    return backend


@pytest.fixture(params=["sqlite", "postgres"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    if request.param == "sqlite":
        b = await sqlite_backend(tmp_path / "nested" / "dir" / "routing.db")
    else:
        b = await postgres_backend(request.getfixturevalue("pg_dsn"))
    try:
        yield b
    finally:
        await b.close()


@pytest.fixture
async def store(backend: Backend) -> AsyncIterator[Store]:
    s = await backend.open()
    try:
        yield s
    finally:
        await s.close()


# -- group commit -----------------------------------------------------------------------------

async def test_concurrent_submits_share_commits_and_each_returns_after_its_commit(
    store: Store, backend: Backend
) -> None:
    n = 300
    visible: list[bool] = []

    async def one(i: int) -> None:
        await store.record_decision(decision_record(i))
        # Acknowledged: a separate connection must already see the row.
        rows = await backend.peek(
            "SELECT 1 FROM model_routing_decisions WHERE decision_id = ?", f"d{i}")
        visible.append(rows == [(1,)])

    commits_before = store.writer.commits
    await asyncio.gather(*(one(i) for i in range(n)))
    assert visible == [True] * n
    commits = store.writer.commits - commits_before
    assert 1 <= commits < n
    assert commits >= n // 512 + 1  # the batch cap holds
    assert await backend.peek("SELECT COUNT(*) FROM model_routing_decisions") == [(n,)]


async def test_a_write_error_fails_only_its_own_job(store: Store, backend: Backend) -> None:
    # d1 twice in one batch violates the primary key: the batch rolls back and is retried job
    # by job, so only the duplicate fails and its neighbours commit.
    results = await asyncio.gather(
        store.record_decision(decision_record(1)),
        store.record_decision(decision_record(2)),
        store.record_decision(decision_record(1)),
        return_exceptions=True,
    )
    assert results[:2] == [None, None], results
    assert isinstance(results[2], StorageError) and results[2].retryable
    assert "unique" in results[2].message.lower()
    assert store.writer.failed_batches == 2  # the shared batch, then the duplicate alone
    assert await backend.peek(
        "SELECT decision_id FROM model_routing_decisions ORDER BY 1") == [("d1",), ("d2",)]
    await store.record_decision(decision_record(3))  # the writer carries on
    assert await backend.peek("SELECT COUNT(*) FROM model_routing_decisions") == [(3,)]


async def test_a_bad_statement_fails_its_batch_with_storage_error(
    store: Store, backend: Backend
) -> None:
    with pytest.raises(StorageError, match="nowhere"):
        await store.writer.submit(Job((Write(backend.sql("INSERT INTO nowhere VALUES (?)"),
                                             (1,)),)))
    await store.record_decision(decision_record(1))  # and the writer carries on
    assert await store.get_decision("d1") is not None


async def test_close_commits_everything_already_queued(backend: Backend) -> None:
    store = await backend.open()
    tasks = [asyncio.create_task(store.record_decision(decision_record(i))) for i in range(200)]
    await asyncio.sleep(0)  # every task has queued its job and waits for the commit
    await store.close()
    assert all(t.done() and t.exception() is None for t in tasks)
    assert await backend.peek("SELECT COUNT(*) FROM model_routing_decisions") == [(200,)]
    with pytest.raises(StorageError, match="closed"):
        await store.record_decision(decision_record(999))
    await store.close()  # idempotent


KILLER = textwrap.dedent("""
    import asyncio, json, sys
    from routing_sidecar.config import StoreConfig
    from routing_sidecar.ports import (SystemClock)
    from routing_sidecar.storage import open_store
    from tests.store_records import decision_record

    async def main():
        cfg = StoreConfig.model_validate(json.loads(sys.argv[1]))
        store = await open_store(cfg, clock=SystemClock())
        async def one(i):
            await store.record_decision(decision_record(i))
            print(f"d{i}", flush=True)
        i = 0
        while True:
            await asyncio.gather(*(one(i + k) for k in range(20)))
            i += 20

    asyncio.run(main())
""")


async def test_kill_9_loses_nothing_that_was_acknowledged(backend: Backend) -> None:
    # model_dump would mask the password; the child needs the real DSN.
    cfg = backend.cfg
    spec = json.dumps({"path": cfg.path} if cfg.path else {"url": cfg.url})
    proc = subprocess.Popen(  # noqa: ASYNC220 - only started here; every wait is in a thread
        [sys.executable, "-c", KILLER, spec], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    watchdog = threading.Timer(60, proc.kill)  # a stuck child ends the test, not the run
    watchdog.start()
    try:
        stdout = proc.stdout
        acked = await asyncio.to_thread(lambda: [stdout.readline().strip() for _ in range(500)])
        os.kill(proc.pid, signal.SIGKILL)
        await asyncio.to_thread(proc.wait)
    finally:
        watchdog.cancel()
    assert all(acked), "the child stopped acknowledging"
    stored = {r[0] for r in await backend.peek("SELECT decision_id FROM model_routing_decisions")}
    assert set(acked) <= stored


# -- records ----------------------------------------------------------------------------------

async def test_a_decision_round_trips(store: Store) -> None:
    record = decision_record("x", labels={"project": "alpha", "lane": "fast", "ünï": "cødé"})
    await store.record_decision(record)
    assert await store.get_decision("dx") == record
    assert await store.get_decision("nope") is None
    assert stored_alternatives(record)[0]["rejection"] == "chosen"
    assert json.loads(record.labels_json) == {"lane": "fast", "project": "alpha", "ünï": "cødé"}
    dry = decision_record("dry", dry_run=True, labels={})
    await store.record_decision(dry)
    assert await store.get_decision("ddry") == dry


async def test_record_outcome_is_idempotent(store: Store, backend: Backend) -> None:
    await store.record_decision(decision_record(1))
    assert await store.record_outcome("d1", [attempt("d1", 0)], outcome("d1"), ())
    again = await store.record_outcome("d1", [attempt("d1", 0, cost=5)], outcome("d1", 5), ())
    assert again is False
    assert await backend.peek("SELECT actual_cost_micros FROM model_selections") == [(900,)]
    assert await backend.peek("SELECT actual_cost_micros FROM decision_outcomes") == [(900,)]


async def test_an_outcome_and_its_attempts_round_trip(store: Store, backend: Backend) -> None:
    await store.record_decision(decision_record(1))
    assert await store.get_outcome("d1") is None
    improvised = replace(attempt("d1", 1, model=HAIKU), off_plan=True)
    result = OutcomeRecord("d1", False, None, 1_200, T0 + 5)
    assert await store.record_outcome("d1", [attempt("d1", 0), improvised], result, ())
    assert await store.get_outcome("d1") == result
    assert await backend.peek(
        "SELECT attempt_index, model, off_plan FROM model_selections ORDER BY 1") == [
        (0, "gpt-5", False), (1, "claude-haiku-4-5", True)]


async def test_concurrent_duplicate_outcomes_write_exactly_once(store: Store,
                                                                 backend: Backend) -> None:
    await store.record_decision(decision_record(1))
    entry = LedgerEntry(EntryKind.SETTLE, "d1", "global", BudgetPeriod.DAY, T0, T0 + 1, 7, T0)
    results = await asyncio.gather(*(
        store.record_outcome("d1", [attempt("d1", 0), attempt("d1", 1)], outcome("d1"), [entry])
        for _ in range(5)))
    assert sorted(results) == [False, False, False, False, True]
    assert await backend.peek("SELECT COUNT(*) FROM model_selections") == [(2,)]
    assert await backend.peek("SELECT SUM(amount_micros) FROM budget_ledger") == [(7,)]


async def test_attempts_read_back_and_a_grade_is_written_once(store: Store,
                                                             backend: Backend) -> None:
    await store.record_decision(decision_record(1))
    improvised = replace(attempt("d1", 1, model=HAIKU), off_plan=True)
    ungraded = OutcomeRecord("d1", True, None, 1_800, T0 + 5)
    assert await store.record_outcome("d1", [attempt("d1", 0), improvised], ungraded, ())
    assert await store.get_attempts("d1") == [attempt("d1", 0), improvised]
    assert await store.get_attempts("d-unknown") == []
    window = PerformanceRecord("fix_bug", HAIKU.name, T0 - T0 % 3600, quality_sum=0.4,
                               quality_count=1)
    grade = GradeRecord("d1", HAIKU.name, 0.4, T0 + 60)
    fresh = await asyncio.gather(*(store.record_grade(grade, (window,)) for _ in range(4)))
    assert sorted(fresh) == [False, False, False, True]
    assert await backend.peek("SELECT decision_id, model, quality, graded_at FROM "
                              "decision_grades") == [("d1", HAIKU.name, 0.4, T0 + 60)]
    graded = await store.get_outcome("d1")
    assert graded is not None and graded.quality == 0.4  # the outcome row says it too
    assert await backend.peek("SELECT quality_sum, quality_count FROM model_performance") == [
        (0.4, 1)]
    assert await store.prune(T0 + 1) == 1
    assert await backend.peek("SELECT COUNT(*) FROM decision_grades") == [(0,)]


async def test_record_outcome_refuses_records_of_another_decision(store: Store) -> None:
    with pytest.raises(ValueError, match="d1"):
        await store.record_outcome("d1", [attempt("d2", 0)], outcome("d1"), ())


async def test_record_config_keeps_the_first_load(store: Store, backend: Backend) -> None:
    await store.record_config("h1", '{"a":1}', T0)
    await store.record_config("h1", '{"a":1}', T0 + 60)
    await store.record_config("h2", '{"a":2}', T0 + 90)
    assert await backend.peek(
        "SELECT config_hash, loaded_at FROM routing_policies ORDER BY 1") == [
        ("h1", T0), ("h2", T0 + 90)]


async def test_learned_snapshots_replace_each_other(store: Store) -> None:
    assert await store.load_learned("health") is None
    await store.save_learned("health", '{"v":1}', T0)
    await store.save_learned("health", '{"v":2}', T0 + 1)
    await store.save_learned("quality", "[]", T0 + 1)
    assert await store.load_learned("health") == '{"v":2}'
    assert await store.load_learned("quality") == "[]"


async def test_performance_windows_add_up(store: Store, backend: Backend) -> None:
    for i in range(3):
        await store.record_decision(decision_record(i))
        window = PerformanceRecord("fix_bug", "gpt-5", T0, decisions=1, successes=1,
                                   quality_sum=0.5, quality_count=1, latency_sum_s=1.25,
                                   cost_sum_micros=100 + i)
        await store.record_outcome(f"d{i}", [attempt(f"d{i}", 0)], outcome(f"d{i}"), (),
                                   [window])
    assert await backend.peek(
        "SELECT decisions, successes, failures, quality_sum, quality_count, latency_sum_s, "
        "cost_sum_micros FROM model_performance") == [(3, 3, 0, 1.5, 3, 3.75, 303)]


# -- ledger -----------------------------------------------------------------------------------

RULES = (BudgetRule("global", BudgetPeriod.DAY, 50_000), BudgetRule("project:*",
         BudgetPeriod.MONTH, 30_000), BudgetRule("provider:openai", BudgetPeriod.WEEK, 40_000),
         BudgetRule("task", BudgetPeriod.TASK, 40_000))


async def drive(ledger: Ledger, store: Store) -> None:
    """Route, report and expire through the store the way the service does."""
    labels = [{"project": "alpha"}, {"project": "beta"}, {}]
    now = T0
    for i in range(60):
        now += 600
        model = GPT5 if i % 3 else HAIKU
        task_id = f"task-{i % 7}"  # several decisions share each task's per-task budget
        block, change = ledger.reserve(f"d{i}", labels[i % 3], model, "code", task_id,
                                       1_500 + 10 * i, now, now + 1_800)
        assert block is None
        await store.record_decision(decision_record(i, model=model, decided_at=now),
                                    change.entries)
        if i % 4 == 0 and i >= 4:
            j = i - 4
            settled = ledger.settle(f"d{j}", labels[j % 3], "code", f"task-{j % 7}",
                                    [(GPT5 if j % 3 else HAIKU, 1_400 + i)], now - 2_400, now)
            rid = f"d{j}"
            await store.record_outcome(rid, [attempt(rid, 0)], outcome(rid), settled.entries)
        if i % 10 == 0:
            await store.record_ledger(ledger.expire(now).entries)


async def test_ledger_rows_round_trip_into_restore(store: Store) -> None:
    ledger = Ledger(RULES, UTC)
    await drive(ledger, store)
    restored = Ledger(RULES, UTC)
    restored.restore(await store.load_ledger_entries())
    for now in (T0, T0 + 86_400, T0 + 7 * 86_400):
        assert restored.status(now) == ledger.status(now)
        for i in range(7):  # each task's own budget, too
            for model in (GPT5, HAIKU):
                assert restored.lines({}, model, "code", f"task-{i}", now) == ledger.lines(
                    {}, model, "code", f"task-{i}", now)
    # ledger_totals is the SQL view of the same sums.
    totals: dict[tuple[str, float], list[int]] = {}
    for t in await store.ledger_totals():
        assert type(t.amount_micros) is int
        pair = totals.setdefault((t.scope, t.period_start), [0, 0])
        pair[0 if t.kind is EntryKind.SETTLE else 1] += t.amount_micros
    for now in (T0, T0 + 86_400):
        for s in ledger.status(now):
            assert totals.get((s.scope, s.period_start or 0.0), [0, 0]) == [
                s.spent_micros, s.reserved_micros]


async def test_prune_drops_old_decisions_and_closed_ledger_rows(store: Store,
                                                               backend: Backend) -> None:
    day = 86_400.0
    for i in range(5):
        rid = f"d{i}"
        await store.record_decision(decision_record(i, decided_at=T0 - (40 - i) * day))
        await store.record_outcome(rid, [attempt(rid, 0)], outcome(rid), ())
    await store.record_decision(decision_record("new", decided_at=T0))
    old = (BudgetPeriod.DAY, T0 - 41 * day, T0 - 40 * day)
    rows = [
        LedgerEntry(EntryKind.RESERVE, "closed", "global", *old, 10, T0 - 41 * day),
        LedgerEntry(EntryKind.RELEASE, "closed", "global", *old, -10, T0 - 41 * day),
        LedgerEntry(EntryKind.RESERVE, "open", "global", *old, 20, T0 - 41 * day),
        LedgerEntry(EntryKind.RESERVE, "now", "global", BudgetPeriod.DAY, T0 - 100,
                    T0 + 100, 30, T0),
    ]
    await store.record_ledger(rows)
    assert await store.prune(T0 - 37 * day, chunk=2) == 3  # d0, d1, d2, two per transaction
    left = await backend.peek("SELECT decision_id FROM model_routing_decisions ORDER BY 1")
    assert left == [("d3",), ("d4",), ("dnew",)]
    assert await backend.peek("SELECT decision_id FROM decision_outcomes ORDER BY 1") == [
        ("d3",), ("d4",)]
    assert await backend.peek("SELECT COUNT(*) FROM model_selections") == [(2,)]
    assert [e.reservation_id for e in await store.load_ledger_entries()] == ["open", "now"]
    assert await store.prune() == 2  # default cutoff: 30 days of retention before the clock
    assert await store.prune() == 0


# -- stats ------------------------------------------------------------------------------------

async def test_routing_stats_matrix(store: Store) -> None:
    await store.record_decision(decision_record(1, labels={"project": "alpha", "lane": "a"}))
    await store.record_decision(decision_record(2, labels={"project": "beta"}, cost=2_000))
    await store.record_decision(decision_record(3, model=HAIKU, task_type="docs_update"))
    await store.record_decision(decision_record(4, dry_run=True))
    await store.record_decision(decision_record(5, decided_at=T0 - 3600))
    # d1 fell back from gpt-5 to haiku; d3 succeeded first time.
    await store.record_outcome("d1", [
        attempt("d1", 0, status=domain.AttemptStatus.RATE_LIMITED, cost=0),
        attempt("d1", 1, model=HAIKU, cost=300)], outcome("d1", 300), ())
    await store.record_outcome("d3", [attempt("d3", 0, model=HAIKU, cost=200)],
                               outcome("d3", 200), ())
    stats = await store.routing_stats(T0 - 1, ["project", "lane", "missing", "lane"])
    assert [(c.model, c.task_type, c.decisions, c.estimated_cost_micros, c.actual_cost_micros)
            for c in stats.by_model_task] == [
        ("claude-haiku-4-5", "docs_update", 1, 1_000, 200), ("gpt-5", "fix_bug", 2, 3_000, 300)]
    assert [(c.model, c.label_key, c.label_value, c.decisions, c.actual_cost_micros)
            for c in stats.by_model_label] == [
        ("claude-haiku-4-5", "project", "alpha", 1, 200),
        ("gpt-5", "lane", "a", 1, 300),
        ("gpt-5", "project", "alpha", 1, 300),
        ("gpt-5", "project", "beta", 1, 0)]
    by_provider = {c.provider: c for c in stats.by_provider}
    assert by_provider["openai"].decisions == 2
    assert by_provider["openai"].fallback_decisions == 1
    assert (by_provider["openai"].attempts, by_provider["openai"].failed_attempts) == (1, 1)
    assert by_provider["anthropic"].decisions == 1
    assert by_provider["anthropic"].fallback_decisions == 0
    assert by_provider["anthropic"].attempts == 2
    assert by_provider["anthropic"].spend_micros == 500
    assert by_provider["anthropic"].input_tokens == 200
    cells = [*stats.by_model_task, *stats.by_model_label, *stats.by_provider]
    assert all(type(v) is int for c in cells for v in vars_of(c) if not isinstance(v, str))
    empty = await store.routing_stats(T0 + 1, ["project"])
    assert (empty.by_model_task, empty.by_model_label, empty.by_provider) == ((), (), ())


def vars_of(cell: object) -> list[object]:
    return [getattr(cell, f) for f in cell.__dataclass_fields__]  # type: ignore[attr-defined]


# -- the admin API's queries and operator state (storage/queries.py, postgres/admin.py) --------

async def test_recent_decisions_newest_first_filtered_with_outcomes_and_attempts(
    store: Store,
) -> None:
    for i in range(4):
        await store.record_decision(decision_record(
            i, decided_at=T0 + i, task_type="docs" if i == 2 else "fix_bug",
            labels={"project": "alpha", "layer": "api"},
            **({"model": HAIKU} if i == 3 else {})))
    await store.record_outcome("d1", [attempt("d1", 0, status=domain.AttemptStatus.TIMEOUT),
                                      attempt("d1", 1, HAIKU)], outcome("d1", 1_800))
    views = await store.list_decisions(10)
    assert [v.decision.decision_id for v in views] == ["d3", "d2", "d1", "d0"]
    d1 = next(v for v in views if v.decision.decision_id == "d1")
    assert d1.decision == await store.get_decision("d1")  # labels spelt alike by both
    assert d1.outcome is not None and d1.outcome.actual_cost_micros == 1_800
    assert [(a.attempt_index, a.model, a.status) for a in d1.attempts] == [
        (0, "gpt-5", domain.AttemptStatus.TIMEOUT), (1, HAIKU.name, domain.AttemptStatus.SUCCESS)]
    assert [v.decision.decision_id for v in await store.list_decisions(2)] == ["d3", "d2"]
    assert [v.decision.decision_id
            for v in await store.list_decisions(10, model=HAIKU.name)] == ["d3"]
    assert [v.decision.decision_id
            for v in await store.list_decisions(10, task_type="docs")] == ["d2"]
    one = await store.decision_view("d1")
    assert one is not None and one == d1
    assert await store.decision_view("nope") is None
    assert (await store.decision_view("d0")).outcome is None  # type: ignore[union-attr]


async def test_fallbacks_per_cell_label_keys_and_activity_buckets(store: Store) -> None:
    await store.record_decision(decision_record(0, decided_at=T0, labels={"layer": "api"}))
    await store.record_decision(decision_record(1, decided_at=T0 + 30,
                                                labels={"layer": "ui", "project": "x"}))
    await store.record_decision(decision_record(2, decided_at=T0 + 90, labels={}))
    await store.record_decision(decision_record(3, decided_at=T0 + 95, dry_run=True,
                                                labels={"secret_key": "v"}))
    await store.record_outcome("d0", [attempt("d0", 0), attempt("d0", 1, HAIKU)],
                               outcome("d0", 2_000))
    assert [(c.model, c.value, c.fallback_decisions)
            for c in await store.fallback_cells(T0, None)] == [("gpt-5", "fix_bug", 1)]
    by_layer = await store.fallback_cells(T0, "layer")
    assert [(c.value, c.fallback_decisions) for c in by_layer] == [("api", 1), ("ui", 0)]
    assert await store.label_keys(T0) == ["layer", "project"]  # dry runs left out
    assert await store.label_keys(T0 + 31) == []
    minutes = await store.activity(T0, 60.0)
    assert minutes == [ActivityBucket(T0, 2, 2_000, 2_000),  # outcome reported at T0 + 10
                       ActivityBucket(T0 + 60, 1, 1_000, 0)]
    assert all(type(x) is int for b in minutes for x in (b.decisions, b.spend_micros))
    assert await store.activity(T0 + 3600, 60.0) == []
    with pytest.raises(ValueError, match="bucket_s"):
        await store.activity(T0, 0.0)


async def test_policy_changes_and_pauses_survive_reopening(store: Store,
                                                           backend: Backend) -> None:
    first = await store.record_policy_change(
        PolicyChange("code", "set", '{"models": ["m"]}', "h1", T0), '{"cfg": 1}')
    second = await store.record_policy_change(
        PolicyChange("code", "revert", "", "h0", T0 + 1), '{"cfg": 0}')
    assert (first, second) == (1, 2)
    await store.set_pause(PauseRecord("m", T0, "incident"))
    await store.set_pause(PauseRecord("n", T0))
    await store.set_pause(PauseRecord("m", T0 + 5, "again"))
    await store.clear_pause("n")
    await store.close()
    assert await backend.peek(
        "SELECT config_hash FROM routing_policies ORDER BY config_hash") == [("h0",), ("h1",)]
    again = await backend.open()
    try:
        assert await again.policy_changes() == [
            PolicyChange("code", "set", '{"models": ["m"]}', "h1", T0, 1),
            PolicyChange("code", "revert", "", "h0", T0 + 1, 2)]
        assert await again.load_pauses() == [PauseRecord("m", T0 + 5, "again")]
    finally:
        await again.close()


async def test_an_older_schema_gains_the_admin_tables(backend: Backend) -> None:
    store = await backend.open()
    await store.close()
    if backend.name == "sqlite":
        with sqlite3.connect(backend.cfg.path or "") as conn:  # as an older build left it
            conn.execute("DROP TABLE routing_policy_changes")
            conn.execute("DROP TABLE model_pauses")
            conn.execute("DROP INDEX outcomes_by_time")
            conn.execute("DROP TABLE decision_grades")
            conn.execute("PRAGMA user_version = 3")
    else:
        for statement in ("DROP TABLE routing_policy_changes", "DROP TABLE model_pauses",
                          "DROP INDEX outcomes_by_time", "DROP TABLE decision_grades",
                          "DELETE FROM schema_migrations WHERE version >= 4"):
            await backend.peek(statement)
    store = await backend.open()
    try:
        assert await store.load_pauses() == [] and await store.policy_changes() == []
        await store.set_pause(PauseRecord("m", T0))
        assert [p.model for p in await store.load_pauses()] == ["m"]
    finally:
        await store.close()
