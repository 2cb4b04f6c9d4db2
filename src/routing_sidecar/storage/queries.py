"""The admin API's queries (SQLite dialect, JSON1 for labels).

Recent decisions, fallbacks per matrix cell, activity over time, policy edits and paused
models. Each statement is a named constant and each function takes the store's `rows` reader (or
returns writes for its writer), so another store can port them one by one.
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import fields
from typing import Any

from routing_sidecar.domain import AttemptStatus, DecisionStatus, Objective, ReasonCode
from routing_sidecar.ports import (
    ActivityBucket,
    AttemptRecord,
    DecisionRecord,
    DecisionView,
    FallbackCell,
    OutcomeRecord,
    PauseRecord,
    PolicyChange,
)
from routing_sidecar.storage.writer import Write

Rows = Callable[[str, Sequence[object]], Awaitable[list[Any]]]

DECISION_COLUMNS = tuple(f.name for f in fields(DecisionRecord))
SELECTION_COLUMNS = tuple(f.name for f in fields(AttemptRecord))
OUTCOME_COLUMNS = tuple(f.name for f in fields(OutcomeRecord))
MAX_LABEL_KEYS = 64

_SELECT_DECISIONS = f"SELECT {', '.join(DECISION_COLUMNS)} FROM model_routing_decisions"
_SELECT_OUTCOMES = f"SELECT {', '.join(OUTCOME_COLUMNS)} FROM decision_outcomes"
_SELECT_ATTEMPTS = f"SELECT {', '.join(SELECTION_COLUMNS)} FROM model_selections"

# A fallback decision is one whose reported outcome took more than one attempt (as in stats).
_FALLBACK = "(SELECT COUNT(*) FROM model_selections s WHERE s.decision_id = d.decision_id) > 1"
_FALLBACKS_BY_TASK = f"""
SELECT d.chosen_model, d.task_type, SUM({_FALLBACK})
FROM model_routing_decisions d
WHERE d.decided_at >= ? AND d.dry_run = 0 AND d.chosen_model IS NOT NULL
GROUP BY 1, 2 ORDER BY 1, 2
"""
_FALLBACKS_BY_LABEL = f"""
SELECT d.chosen_model, CAST(j.value AS TEXT), SUM({_FALLBACK})
FROM model_routing_decisions d JOIN json_each(d.labels_json) j
WHERE d.decided_at >= ? AND d.dry_run = 0 AND d.chosen_model IS NOT NULL AND j.key = ?
GROUP BY 1, 2 ORDER BY 1, 2
"""
_LABEL_KEYS = f"""
SELECT DISTINCT j.key FROM model_routing_decisions d JOIN json_each(d.labels_json) j
WHERE d.decided_at >= ? AND d.dry_run = 0 ORDER BY 1 LIMIT {MAX_LABEL_KEYS}
"""
_DECISIONS_PER_BUCKET = """
SELECT CAST(decided_at / ? AS INTEGER), COUNT(*),
       SUM(CASE WHEN chosen_model IS NULL THEN 0 ELSE estimated_cost_micros END)
FROM model_routing_decisions WHERE decided_at >= ? AND dry_run = 0 GROUP BY 1
"""
# Spend is counted when it is reported, as the ledger charges it.
_SPEND_PER_BUCKET = """
SELECT CAST(o.reported_at / ? AS INTEGER), SUM(o.actual_cost_micros)
FROM decision_outcomes o JOIN model_routing_decisions d ON d.decision_id = o.decision_id
WHERE o.reported_at >= ? AND d.dry_run = 0 GROUP BY 1
"""
_POLICY_CHANGES = (
    "SELECT policy, action, policy_json, config_hash, changed_at, version "
    "FROM routing_policy_changes ORDER BY version"
)
INSERT_POLICY_CHANGE = (
    "INSERT INTO routing_policy_changes (policy, action, policy_json, config_hash, changed_at) "
    "VALUES (?, ?, ?, ?, ?)"
)
INSERT_CONFIG_VERSION = (
    "INSERT INTO routing_policies (config_hash, config_json, loaded_at) VALUES (?, ?, ?) "
    "ON CONFLICT (config_hash) DO NOTHING"
)
UPSERT_PAUSE = (
    "INSERT INTO model_pauses (model, paused_at, reason) VALUES (?, ?, ?) "
    "ON CONFLICT (model) DO UPDATE SET paused_at = excluded.paused_at, reason = excluded.reason"
)
DELETE_PAUSE = "DELETE FROM model_pauses WHERE model = ?"
_PAUSES = "SELECT model, paused_at, reason FROM model_pauses ORDER BY model"


def decision_record(row: Sequence[Any]) -> DecisionRecord:
    """A `model_routing_decisions` row (DECISION_COLUMNS order) as its record."""
    d = dict(zip(DECISION_COLUMNS, row, strict=True))
    d.update(status=DecisionStatus(d["status"]), reason_code=ReasonCode(d["reason_code"]),
             objective=Objective(d["objective"]), dry_run=bool(d["dry_run"]))
    return DecisionRecord(**d)


def _attempt(row: Sequence[Any]) -> AttemptRecord:
    d = dict(zip(SELECTION_COLUMNS, row, strict=True))
    d["status"] = AttemptStatus(d["status"])
    return AttemptRecord(**d)


def _outcome(row: Sequence[Any]) -> OutcomeRecord:
    d = dict(zip(OUTCOME_COLUMNS, row, strict=True))
    d["success"] = bool(d["success"])
    return OutcomeRecord(**d)


async def _views(rows: Rows, records: list[DecisionRecord]) -> list[DecisionView]:
    """Attach outcomes and attempts to decisions, two queries for the whole page."""
    if not records:
        return []
    ids = [r.decision_id for r in records]
    marks = ", ".join("?" * len(ids))
    outcomes = {o.decision_id: o for o in map(_outcome, await rows(
        f"{_SELECT_OUTCOMES} WHERE decision_id IN ({marks})", ids))}
    attempts: dict[str, list[AttemptRecord]] = {}
    for a in map(_attempt, await rows(
            f"{_SELECT_ATTEMPTS} WHERE decision_id IN ({marks}) "
            "ORDER BY decision_id, attempt_index", ids)):
        attempts.setdefault(a.decision_id, []).append(a)
    return [DecisionView(r, outcomes.get(r.decision_id), tuple(attempts.get(r.decision_id, ())))
            for r in records]


async def list_decisions(rows: Rows, limit: int, model: str | None = None,
                         task_type: str | None = None) -> list[DecisionView]:
    """The most recent decisions (dry runs included, flagged), newest first."""
    where, params = [], []
    if model is not None:
        where.append("chosen_model = ?")
        params.append(model)
    if task_type is not None:
        where.append("task_type = ?")
        params.append(task_type)
    clause = f" WHERE {' AND '.join(where)}" if where else ""
    found = await rows(f"{_SELECT_DECISIONS}{clause} ORDER BY decided_at DESC LIMIT ?",
                       (*params, limit))
    return await _views(rows, [decision_record(r) for r in found])


async def decision_view(rows: Rows, decision_id: str) -> DecisionView | None:
    """One decision with its outcome and attempts, or None."""
    found = await rows(f"{_SELECT_DECISIONS} WHERE decision_id = ?", (decision_id,))
    views = await _views(rows, [decision_record(r) for r in found])
    return views[0] if views else None


async def fallback_cells(rows: Rows, since: float, label_key: str | None) -> list[FallbackCell]:
    """Fallback decisions per (model, task type), or per (model, value of `label_key`)."""
    if label_key is None:
        found = await rows(_FALLBACKS_BY_TASK, (since,))
    else:
        found = await rows(_FALLBACKS_BY_LABEL, (since, label_key))
    return [FallbackCell(model, value, int(n or 0)) for model, value, n in found]


async def label_keys(rows: Rows, since: float) -> list[str]:
    """Label keys used by decisions since a time (at most MAX_LABEL_KEYS), sorted."""
    return [str(r[0]) for r in await rows(_LABEL_KEYS, (since,))]


async def activity(rows: Rows, since: float, bucket_s: float) -> list[ActivityBucket]:
    """Decisions, their estimates and reported spend per `bucket_s` bucket, oldest first."""
    if not (math.isfinite(bucket_s) and bucket_s > 0):
        raise ValueError(f"bucket_s must be a positive number of seconds (got {bucket_s})")
    cells: dict[int, dict[str, int]] = {}
    for bucket, n, estimated in await rows(_DECISIONS_PER_BUCKET, (bucket_s, since)):
        cells.setdefault(int(bucket), {}).update(decisions=n, estimated_cost_micros=estimated)
    for bucket, spend in await rows(_SPEND_PER_BUCKET, (bucket_s, since)):
        cells.setdefault(int(bucket), {})["spend_micros"] = spend
    return [ActivityBucket(b * bucket_s, **cells[b]) for b in sorted(cells)]


def record_policy_change(change: PolicyChange,
                         config_json: str) -> Callable[[sqlite3.Connection], int]:
    """A writer transaction storing the config version and the edit; returns its version."""

    def write(conn: sqlite3.Connection) -> int:
        conn.execute(INSERT_CONFIG_VERSION, (change.config_hash, config_json, change.changed_at))
        cursor = conn.execute(INSERT_POLICY_CHANGE, (
            change.policy, change.action, change.policy_json, change.config_hash,
            change.changed_at))
        return int(cursor.lastrowid or 0)

    return write


async def policy_changes(rows: Rows) -> list[PolicyChange]:
    """Every policy edit, oldest first."""
    return [PolicyChange(*r) for r in await rows(_POLICY_CHANGES, ())]


def pause_write(pause: PauseRecord) -> Write:
    """The write that stores a model's pause."""
    return Write(UPSERT_PAUSE, (pause.model, pause.paused_at, pause.reason))


def unpause_write(model: str) -> Write:
    """The write that forgets a model's pause."""
    return Write(DELETE_PAUSE, (model,))


async def load_pauses(rows: Rows) -> list[PauseRecord]:
    """Every paused model."""
    return [PauseRecord(*r) for r in await rows(_PAUSES, ())]
