"""The SQLite store on real files: migrations, group commit, idempotency, restore, prune."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from collections.abc import AsyncIterator
from datetime import UTC
from pathlib import Path

import pytest

from routing_sidecar import domain
from routing_sidecar.core.budget import Ledger
from routing_sidecar.core.budget_rules import EntryKind, LedgerEntry
from routing_sidecar.domain import BudgetPeriod, BudgetRule
from routing_sidecar.errors import StorageError
from routing_sidecar.ports import AttemptRecord, DecisionRecord, OutcomeRecord
from routing_sidecar.storage import SCHEMA_VERSION, Job, SqliteStore, Write

T0 = 1_773_144_000.0  # 2026-03-10 12:00 UTC
GPT5 = domain.ModelSpec("gpt-5", "openai", 3, 1_250_000, 10_000_000, 400_000, 60, 0.91)
HAIKU = domain.ModelSpec("claude-haiku-4-5", "anthropic", 1, 1_000_000, 5_000_000, 200_000,
                         150, 0.72)
TABLES = {"model_routing_decisions", "model_selections", "decision_outcomes",
          "model_performance", "budget_ledger", "routing_policies"}


class FixedClock:
    def __init__(self, now: float = T0) -> None:
        self.t = now

    def now(self) -> float:
        return self.t

    def monotonic(self) -> float:
        return self.t


def decision_record(i: int | str, *, model: domain.ModelSpec = GPT5, decided_at: float = T0,
                    labels: dict[str, str] | None = None, task_type: str = "fix_bug",
                    dry_run: bool = False, cost: int = 1_000) -> DecisionRecord:
    alt = domain.Alternative(model.name, model.provider, model.tier, 0.8, cost,
                             domain.Rejection.CHOSEN, "best score", 0.9, slot_id="s1")
    other = domain.Alternative("claude-opus-4-1", "anthropic", 3, 0.5, 9_000,
                               domain.Rejection.OUTSCORED, "pricier", 0.93)
    selection = domain.Selection(
        domain.DecisionStatus.ROUTED, domain.ReasonCode.SELECTED, "code",
        domain.Objective.BALANCED, f"{model.name} is the cheapest capable model", (alt, other),
        chosen=alt, fallbacks=(domain.Fallback("claude-opus-4-1", "anthropic", 3, 9_000),))
    task = domain.Task(task_id=f"task-{i}", task_type=task_type,
                       labels=labels if labels is not None else {"project": "alpha"},
                       dry_run=dry_run)
    decision = domain.Decision(f"d{i}", task.task_id, decided_at, selection, dry_run=dry_run)
    return DecisionRecord.from_decision(decision, task, "cfg1", trace_id="t" * 32)


def attempt(decision_id: str, index: int, model: domain.ModelSpec = GPT5,
            status: domain.AttemptStatus = domain.AttemptStatus.SUCCESS,
            cost: int = 900) -> AttemptRecord:
    a = domain.Attempt(model.name, model.provider, status, "", T0, 1.5, 100, 50, cost)
    return AttemptRecord.from_attempt(decision_id, index, a, 1_000, cost)


def outcome(decision_id: str, cost: int = 900) -> OutcomeRecord:
    return OutcomeRecord(decision_id, True, 0.9, cost, T0 + 10)


def peek(path: Path, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    """Read the file from a separate, plain sqlite3 connection: what a crash would leave."""
    with sqlite3.connect(path) as conn:
        return conn.execute(sql, params).fetchall()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "nested" / "dir" / "routing.db"


@pytest.fixture
async def store(db_path: Path) -> AsyncIterator[SqliteStore]:
    s = await SqliteStore.open(str(db_path), retention_days=30, clock=FixedClock())
    try:
        yield s
    finally:
        await s.close()


# -- schema ----------------------------------------------------------------------------------

async def test_migrations_apply_on_a_new_file_and_are_a_no_op_on_reopen(db_path: Path) -> None:
    store = await SqliteStore.open(str(db_path), retention_days=30, clock=FixedClock())
    await store.record_decision(decision_record(1))
    await store.close()
    assert peek(db_path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    assert peek(db_path, "PRAGMA journal_mode") == [("wal",)]
    names = {r[0] for r in peek(db_path, "SELECT name FROM sqlite_master WHERE type='table'")}
    assert names >= TABLES
    schema = peek(db_path, "SELECT sql FROM sqlite_master ORDER BY name")

    again = await SqliteStore.open(str(db_path), retention_days=30, clock=FixedClock())
    assert await again.get_decision("d1") == decision_record(1)
    await again.close()
    assert peek(db_path, "SELECT sql FROM sqlite_master ORDER BY name") == schema

    # Re-running the scripts over an existing schema is harmless too.
    with sqlite3.connect(db_path) as conn:
        conn.execute("PRAGMA user_version = 0")
    third = await SqliteStore.open(str(db_path), retention_days=30, clock=FixedClock())
    assert await third.get_decision("d1") is not None
    await third.close()
    assert peek(db_path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]


async def test_a_file_from_a_newer_build_is_refused(db_path: Path) -> None:
    db_path.parent.mkdir(parents=True)
    with sqlite3.connect(db_path) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StorageError, match="newer"):
        await SqliteStore.open(str(db_path), retention_days=30, clock=FixedClock())


@pytest.mark.parametrize(("mode", "value"), [("NORMAL", 1), ("FULL", 2)])
async def test_synchronous_is_configurable(db_path: Path, mode: str, value: int) -> None:
    store = await SqliteStore.open(str(db_path), retention_days=30, clock=FixedClock(),
                                   synchronous=mode)  # type: ignore[arg-type]

    def read_pragma(conn: sqlite3.Connection) -> int:
        value: int = conn.execute("PRAGMA synchronous").fetchone()[0]
        return value

    assert await store.writer.run(read_pragma) == value
    await store.close()


# -- group commit -----------------------------------------------------------------------------

async def test_concurrent_submits_share_commits_and_each_returns_after_its_commit(
    store: SqliteStore, db_path: Path
) -> None:
    n = 300
    visible: list[bool] = []
    reader = sqlite3.connect(db_path)

    async def one(i: int) -> None:
        await store.record_decision(decision_record(i))
        # Acknowledged: a separate connection to the file must already see the row.
        rows = reader.execute("SELECT 1 FROM model_routing_decisions WHERE decision_id = ?",
                              (f"d{i}",)).fetchall()
        visible.append(rows == [(1,)])

    commits_before = store.writer.commits
    await asyncio.gather(*(one(i) for i in range(n)))
    reader.close()
    assert visible == [True] * n
    commits = store.writer.commits - commits_before
    assert 1 <= commits < n
    assert commits >= n // 512 + 1  # the batch cap holds
    assert peek(db_path, "SELECT COUNT(*) FROM model_routing_decisions") == [(n,)]


async def test_a_write_error_fails_only_its_own_job(store: SqliteStore, db_path: Path) -> None:
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
    assert "UNIQUE" in results[2].message
    assert store.writer.failed_batches == 2  # the shared batch, then the duplicate alone
    assert peek(db_path, "SELECT decision_id FROM model_routing_decisions ORDER BY 1") == [
        ("d1",), ("d2",)]
    await store.record_decision(decision_record(3))  # the writer carries on
    assert peek(db_path, "SELECT COUNT(*) FROM model_routing_decisions") == [(3,)]


async def test_a_bad_statement_fails_its_batch_with_storage_error(store: SqliteStore) -> None:
    with pytest.raises(StorageError, match="no such table"):
        await store.writer.submit(Job((Write("INSERT INTO nowhere VALUES (?)", (1,)),)))


async def test_close_commits_everything_already_queued(db_path: Path) -> None:
    store = await SqliteStore.open(str(db_path), retention_days=30, clock=FixedClock())
    tasks = [asyncio.create_task(store.record_decision(decision_record(i))) for i in range(200)]
    await asyncio.sleep(0)  # every task has queued its job and waits for the commit
    await store.close()
    assert all(t.done() and t.exception() is None for t in tasks)
    assert peek(db_path, "SELECT COUNT(*) FROM model_routing_decisions") == [(200,)]
    with pytest.raises(StorageError, match="closed"):
        await store.record_decision(decision_record(999))
    await store.close()  # idempotent


KILLER = textwrap.dedent("""
    import asyncio, sys
    from routing_sidecar.ports import SystemClock
    from routing_sidecar.storage import SqliteStore
    from tests.integration.test_sqlite_store import decision_record

    async def main():
        store = await SqliteStore.open(sys.argv[1], retention_days=30, clock=SystemClock())
        async def one(i):
            await store.record_decision(decision_record(i))
            print(f"d{i}", flush=True)
        i = 0
        while True:
            await asyncio.gather(*(one(i + k) for k in range(20)))
            i += 20

    asyncio.run(main())
""")


def test_kill_9_loses_nothing_that_was_acknowledged(db_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen([sys.executable, "-c", KILLER, str(db_path)], cwd=root,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    watchdog = threading.Timer(60, proc.kill)  # a stuck child ends the test, not the run
    watchdog.start()
    acked = [proc.stdout.readline().strip() for _ in range(500)]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    watchdog.cancel()
    assert all(acked), "the child stopped acknowledging"
    stored = {r[0] for r in peek(db_path, "SELECT decision_id FROM model_routing_decisions")}
    assert set(acked) <= stored


# -- records ----------------------------------------------------------------------------------

async def test_a_decision_round_trips(store: SqliteStore) -> None:
    record = decision_record("x", labels={"project": "alpha", "lane": "fast"})
    await store.record_decision(record)
    assert await store.get_decision("dx") == record
    assert await store.get_decision("nope") is None
    assert json.loads(record.alternatives_json)[0]["rejection"] == "chosen"
    assert json.loads(record.labels_json) == {"lane": "fast", "project": "alpha"}


async def test_record_outcome_is_idempotent(store: SqliteStore, db_path: Path) -> None:
    await store.record_decision(decision_record(1))
    assert await store.record_outcome("d1", [attempt("d1", 0)], outcome("d1"), ())
    again = await store.record_outcome("d1", [attempt("d1", 0, cost=5)], outcome("d1", 5), ())
    assert again is False
    assert peek(db_path, "SELECT actual_cost_micros FROM model_selections") == [(900,)]
    assert peek(db_path, "SELECT actual_cost_micros FROM decision_outcomes") == [(900,)]


async def test_concurrent_duplicate_outcomes_write_exactly_once(store: SqliteStore,
                                                                 db_path: Path) -> None:
    await store.record_decision(decision_record(1))
    entry = LedgerEntry(EntryKind.SETTLE, "d1", "global", BudgetPeriod.DAY, T0, T0 + 1, 7, T0)
    results = await asyncio.gather(*(
        store.record_outcome("d1", [attempt("d1", 0), attempt("d1", 1)], outcome("d1"), [entry])
        for _ in range(5)))
    assert sorted(results) == [False, False, False, False, True]
    assert peek(db_path, "SELECT COUNT(*) FROM model_selections") == [(2,)]
    assert peek(db_path, "SELECT SUM(amount_micros) FROM budget_ledger") == [(7,)]


async def test_record_outcome_refuses_records_of_another_decision(store: SqliteStore) -> None:
    with pytest.raises(ValueError, match="d1"):
        await store.record_outcome("d1", [attempt("d2", 0)], outcome("d1"), ())


async def test_record_config_keeps_the_first_load(store: SqliteStore, db_path: Path) -> None:
    await store.record_config("h1", '{"a":1}', T0)
    await store.record_config("h1", '{"a":1}', T0 + 60)
    await store.record_config("h2", '{"a":2}', T0 + 90)
    assert peek(db_path, "SELECT config_hash, loaded_at FROM routing_policies ORDER BY 1") == [
        ("h1", T0), ("h2", T0 + 90)]


# -- ledger -----------------------------------------------------------------------------------

RULES = (BudgetRule("global", BudgetPeriod.DAY, 50_000), BudgetRule("project:*",
         BudgetPeriod.MONTH, 30_000), BudgetRule("provider:openai", BudgetPeriod.WEEK, 40_000),
         BudgetRule("task", BudgetPeriod.TASK, 40_000))


async def drive(ledger: Ledger, store: SqliteStore) -> None:
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


async def test_ledger_rows_round_trip_into_restore(store: SqliteStore) -> None:
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
        pair = totals.setdefault((t.scope, t.period_start), [0, 0])
        pair[0 if t.kind is EntryKind.SETTLE else 1] += t.amount_micros
    for now in (T0, T0 + 86_400):
        for s in ledger.status(now):
            assert totals.get((s.scope, s.period_start or 0.0), [0, 0]) == [
                s.spent_micros, s.reserved_micros]


async def test_prune_drops_old_decisions_and_closed_ledger_rows(store: SqliteStore,
                                                               db_path: Path) -> None:
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
    left = peek(db_path, "SELECT decision_id FROM model_routing_decisions ORDER BY 1")
    assert left == [("d3",), ("d4",), ("dnew",)]
    assert peek(db_path, "SELECT decision_id FROM decision_outcomes ORDER BY 1") == [
        ("d3",), ("d4",)]
    assert peek(db_path, "SELECT COUNT(*) FROM model_selections") == [(2,)]
    assert [e.reservation_id for e in await store.load_ledger_entries()] == ["open", "now"]
    assert await store.prune() == 2  # default cutoff: 30 days of retention before the clock
    assert await store.prune() == 0


# -- stats ------------------------------------------------------------------------------------

async def test_routing_stats_matrix(store: SqliteStore) -> None:
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
    stats = await store.routing_stats(T0 - 1, ["project", "lane", "missing"])
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
    assert by_provider["anthropic"].attempts == 2
    assert by_provider["anthropic"].spend_micros == 500
    assert by_provider["anthropic"].input_tokens == 200
