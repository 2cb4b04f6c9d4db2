"""The admin API's queries and operator state on a real SQLite file (storage/queries.py)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from routing_sidecar import domain
from routing_sidecar.ports import ActivityBucket, PauseRecord, PolicyChange
from routing_sidecar.storage import SCHEMA_VERSION, SqliteStore
from tests.integration.test_sqlite_store import (
    HAIKU,
    T0,
    FixedClock,
    attempt,
    decision_record,
    outcome,
    peek,
)


async def open_store(path: Path) -> SqliteStore:
    return await SqliteStore.open(str(path), retention_days=30, clock=FixedClock())


async def test_recent_decisions_newest_first_filtered_with_outcomes_and_attempts(
    tmp_path: Path,
) -> None:
    store = await open_store(tmp_path / "r.db")
    try:
        for i in range(4):
            await store.record_decision(decision_record(
                i, decided_at=T0 + i, task_type="docs" if i == 2 else "fix_bug",
                **({"model": HAIKU} if i == 3 else {})))
        await store.record_outcome("d1", [attempt("d1", 0, status=domain.AttemptStatus.TIMEOUT),
                                          attempt("d1", 1, HAIKU)], outcome("d1", 1_800))
        views = await store.list_decisions(10)
        assert [v.decision.decision_id for v in views] == ["d3", "d2", "d1", "d0"]
        d1 = next(v for v in views if v.decision.decision_id == "d1")
        assert d1.outcome is not None and d1.outcome.actual_cost_micros == 1_800
        assert [(a.attempt_index, a.model) for a in d1.attempts] == [(0, "gpt-5"),
                                                                      (1, HAIKU.name)]
        assert [v.decision.decision_id for v in await store.list_decisions(2)] == ["d3", "d2"]
        assert [v.decision.decision_id for v in await store.list_decisions(
            10, model=HAIKU.name)] == ["d3"]
        assert [v.decision.decision_id for v in await store.list_decisions(
            10, task_type="docs")] == ["d2"]
        one = await store.decision_view("d1")
        assert one is not None and one.decision == await store.get_decision("d1")
        assert await store.decision_view("nope") is None
    finally:
        await store.close()


async def test_fallbacks_per_cell_label_keys_and_activity_buckets(tmp_path: Path) -> None:
    store = await open_store(tmp_path / "a.db")
    try:
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
        assert await store.activity(T0 + 3600, 60.0) == []
    finally:
        await store.close()


async def test_policy_changes_and_pauses_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "p.db"
    store = await open_store(path)
    try:
        first = await store.record_policy_change(
            PolicyChange("code", "set", '{"models": ["m"]}', "h1", T0), '{"cfg": 1}')
        second = await store.record_policy_change(
            PolicyChange("code", "revert", "", "h0", T0 + 1), '{"cfg": 0}')
        assert (first, second) == (1, 2)
        await store.set_pause(PauseRecord("m", T0, "incident"))
        await store.set_pause(PauseRecord("n", T0))
        await store.set_pause(PauseRecord("m", T0 + 5, "again"))
        await store.clear_pause("n")
    finally:
        await store.close()
    assert peek(path, "SELECT config_hash FROM routing_policies ORDER BY config_hash") == [
        ("h0",), ("h1",)]
    store = await open_store(path)
    try:
        assert await store.policy_changes() == [
            PolicyChange("code", "set", '{"models": ["m"]}', "h1", T0, 1),
            PolicyChange("code", "revert", "", "h0", T0 + 1, 2)]
        assert await store.load_pauses() == [PauseRecord("m", T0 + 5, "again")]
    finally:
        await store.close()


async def test_a_version_2_file_gains_the_admin_tables(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    store = await open_store(path)
    await store.close()
    with sqlite3.connect(path) as conn:  # as a build before the admin API left it
        conn.execute("DROP TABLE routing_policy_changes")
        conn.execute("DROP TABLE model_pauses")
        conn.execute("PRAGMA user_version = 2")
    store = await open_store(path)
    try:
        assert peek(path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
        assert await store.load_pauses() == [] and await store.policy_changes() == []
    finally:
        await store.close()
