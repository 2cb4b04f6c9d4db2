"""A store made by the previous build (schema 6) opens, migrates and reads back unchanged.

Schema 7 dropped indexes no query needs, and new rows keep common sentences as codes; the
rows an older build wrote (sentences in full, one index more per ledger column) must read
back exactly as before, beside new ones, with the budget arithmetic unchanged.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from routing_sidecar.core.budget_rules import EntryKind, LedgerEntry
from routing_sidecar.domain import BudgetPeriod
from routing_sidecar.records import stored_alternatives, stored_fallbacks
from routing_sidecar.storage import SCHEMA_VERSION, SqliteStore
from routing_sidecar.storage.migrations import MIGRATIONS, AddColumn
from routing_sidecar.storage.rows import DECISION_COLUMNS, LEDGER_COLUMNS, insert, params, qmarks
from tests.store_records import (
    OLD_ALTERNATIVES,
    OLD_FALLBACKS,
    OLD_REASON,
    T0,
    FixedClock,
    decision_record,
)

DROPPED = {"ledger_by_bucket", "ledger_by_reservation", "ledger_by_period_end",
           "decisions_by_task"}
DAY0, DAY1 = T0 - 43_200, T0 + 43_200
RESERVED = [
    LedgerEntry(EntryKind.RESERVE, "old", "global", BudgetPeriod.DAY, DAY0, DAY1, 6_000, T0,
                T0 + 900),
    LedgerEntry(EntryKind.RESERVE, "old", "task:t-old", BudgetPeriod.TASK, T0, T0 + 604_800,
                6_000, T0, T0 + 900),
    LedgerEntry(EntryKind.SETTLE, "old", "global", BudgetPeriod.DAY, DAY0, DAY1, 5_000, T0 + 5),
]


def schema_6_file(path: Path) -> None:
    """A file as the previous build left it: its scripts, an old decision and ledger rows."""
    with sqlite3.connect(path) as conn:
        for step in MIGRATIONS[:6]:
            if isinstance(step, AddColumn):
                conn.execute(f"ALTER TABLE {step.table} ADD COLUMN {step.column} "
                             f"{step.declaration}")
            else:
                conn.executescript(step)
        old = decision_record("old")
        row = dict(zip(DECISION_COLUMNS, params(old, DECISION_COLUMNS), strict=True))
        row.update(task_type="fix_bug", policy="code", reason=OLD_REASON,
                   alternatives_json=OLD_ALTERNATIVES, fallbacks_json=OLD_FALLBACKS)
        conn.execute(insert("model_routing_decisions", DECISION_COLUMNS, qmarks),
                     tuple(row.values()))
        for entry in RESERVED:
            conn.execute(insert("budget_ledger", LEDGER_COLUMNS, qmarks),
                         params(entry, LEDGER_COLUMNS))
        conn.execute("PRAGMA user_version = 6")


def indexes(path: Path) -> set[str]:
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'").fetchall()
    return {r[0] for r in rows}


async def test_a_schema_6_store_migrates_and_reads_back_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "routing.db"
    schema_6_file(path)
    assert indexes(path) >= DROPPED
    store = await SqliteStore.open(str(path), retention_days=30, clock=FixedClock())
    try:
        old = await store.get_decision("dold")
        assert old is not None and old.reason == OLD_REASON
        alts = stored_alternatives(old)
        assert [a["reason"] for a in alts][:3] == [
            "tier 2 reserved: no ev given and priority 60 < 95",
            "fallback 1: different provider", "chosen: best score"]
        assert [f["model"] for f in stored_fallbacks(old)] == ["claude-haiku-4-5", "glm-4.6"]
        assert await store.load_ledger_entries() == RESERVED
        totals = {(t.scope, t.kind): t.amount_micros for t in await store.ledger_totals()}
        assert totals == {("global", EntryKind.RESERVE): 6_000,
                          ("global", EntryKind.SETTLE): 5_000,
                          ("task:t-old", EntryKind.RESERVE): 6_000}

        new = decision_record("new")
        await store.record_decision(new, RESERVED[:1])
        assert await store.get_decision("dnew") == new
        listed = {v.decision.decision_id: v.decision for v in await store.list_decisions(10)}
        assert listed["dold"].reason == OLD_REASON and listed["dnew"] == new
        # The prune still finds closed reservations without the indexes it used to have.
        assert await store.prune(older_than=T0 + 2 * 604_800) == 2
        assert await store.load_ledger_entries() == []
    finally:
        await store.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    assert not DROPPED & indexes(path)
