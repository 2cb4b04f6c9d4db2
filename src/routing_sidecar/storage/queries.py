"""The admin API's queries: recent decisions, fallbacks, activity, policy edits, pauses.

The SQLite statements are here (JSON1 for labels); storage/postgres/admin.py has the same
queries in PostgreSQL's dialect. Turning rows into records is shared by both.
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

from routing_sidecar.domain import AttemptStatus
from routing_sidecar.ports import (
    ActivityBucket,
    AuditedDecision,
    FallbackCell,
    PauseRecord,
    PolicyChange,
)
from routing_sidecar.records import AttemptRecord, DecisionRecord
from routing_sidecar.storage.batching import Write
from routing_sidecar.storage.rows import (
    DECISION_COLUMNS,
    OUTCOME_COLUMNS,
    SELECTION_COLUMNS,
    decision_from_row,
    outcome_from_row,
)

Rows = Callable[[str, Sequence[object]], Awaitable[list[Any]]]
MAX_LABEL_KEYS = 64
_BOOL_ATTEMPT_FIELDS = frozenset({"off_plan"})

# -- rows to records (both dialects) ----------------------------------------------------------


def attempt_from_row(row: Sequence[Any]) -> AttemptRecord:
    """A `model_selections` row (SELECTION_COLUMNS order) as its record."""
    d = dict(zip(SELECTION_COLUMNS, row, strict=True))
    d["status"] = AttemptStatus(d["status"])
    for name in _BOOL_ATTEMPT_FIELDS & d.keys():
        d[name] = bool(d[name])
    return AttemptRecord(**d)


def audited(records: Sequence[DecisionRecord], outcome_rows: Iterable[Sequence[Any]],
            attempt_rows: Iterable[Sequence[Any]]) -> list[AuditedDecision]:
    """Decisions with their outcomes and attempts (attempt rows in decision, index order)."""
    outcomes = {o.decision_id: o for o in map(outcome_from_row, outcome_rows)}
    attempts: dict[str, list[AttemptRecord]] = {}
    for a in map(attempt_from_row, attempt_rows):
        attempts.setdefault(a.decision_id, []).append(a)
    return [AuditedDecision(r, outcomes.get(r.decision_id),
                            tuple(attempts.get(r.decision_id, ()))) for r in records]


def fallback_cells_from(rows: Iterable[Sequence[Any]]) -> list[FallbackCell]:
    """(model, value, fallback decisions) rows as cells."""
    return [FallbackCell(str(model), str(value), int(n or 0)) for model, value, n in rows]


def check_bucket(bucket_s: float) -> None:
    """Refuse a bucket size that is not a positive number of seconds."""
    if not (math.isfinite(bucket_s) and bucket_s > 0):
        raise ValueError(f"bucket_s must be a positive number of seconds (got {bucket_s})")


def buckets_from(decision_rows: Iterable[Sequence[Any]], spend_rows: Iterable[Sequence[Any]],
                 bucket_s: float) -> list[ActivityBucket]:
    """(bucket, decisions, estimated) and (bucket, spend) rows as buckets, oldest first."""
    cells: dict[int, dict[str, int]] = {}
    for bucket, n, estimated in decision_rows:
        cells.setdefault(int(bucket), {}).update(decisions=int(n),
                                                 estimated_cost_micros=int(estimated or 0))
    for bucket, spend in spend_rows:
        cells.setdefault(int(bucket), {})["spend_micros"] = int(spend or 0)
    return [ActivityBucket(b * bucket_s, **cells[b]) for b in sorted(cells)]


# -- SQLite ---------------------------------------------------------------------------------

_SELECT_DECISIONS = f"SELECT {', '.join(DECISION_COLUMNS)} FROM model_routing_decisions"
_SELECT_OUTCOMES = f"SELECT {', '.join(OUTCOME_COLUMNS)} FROM decision_outcomes"
_SELECT_ATTEMPTS = f"SELECT {', '.join(SELECTION_COLUMNS)} FROM model_selections"

# A fallback decision is one whose reported outcome took more than one attempt (as in stats).
_FALLBACK = "(SELECT COUNT(*) FROM model_selections s WHERE s.decision_id = d.decision_id) > 1"
FALLBACKS_BY_TASK = f"""
SELECT d.chosen_model, d.task_type, SUM({_FALLBACK})
FROM model_routing_decisions d
WHERE d.decided_at >= ? AND d.dry_run = 0 AND d.chosen_model IS NOT NULL
GROUP BY 1, 2 ORDER BY 1, 2
"""
FALLBACKS_BY_LABEL = f"""
SELECT d.chosen_model, CAST(j.value AS TEXT), SUM({_FALLBACK})
FROM model_routing_decisions d JOIN json_each(d.labels_json) j
WHERE d.decided_at >= ? AND d.dry_run = 0 AND d.chosen_model IS NOT NULL AND j.key = ?
GROUP BY 1, 2 ORDER BY 1, 2
"""
LABEL_KEYS = f"""
SELECT DISTINCT j.key FROM model_routing_decisions d JOIN json_each(d.labels_json) j
WHERE d.decided_at >= ? AND d.dry_run = 0 ORDER BY 1 LIMIT {MAX_LABEL_KEYS}
"""
DECISIONS_PER_BUCKET = """
SELECT CAST(decided_at / ? AS INTEGER), COUNT(*),
       SUM(CASE WHEN chosen_model IS NULL THEN 0 ELSE estimated_cost_micros END)
FROM model_routing_decisions WHERE decided_at >= ? AND dry_run = 0 GROUP BY 1
"""
# Spend is counted when it is reported, as the ledger charges it.
SPEND_PER_BUCKET = """
SELECT CAST(o.reported_at / ? AS INTEGER), SUM(o.actual_cost_micros)
FROM decision_outcomes o JOIN model_routing_decisions d ON d.decision_id = o.decision_id
WHERE o.reported_at >= ? AND d.dry_run = 0 GROUP BY 1
"""
POLICY_CHANGES = (
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
PAUSES = "SELECT model, paused_at, reason FROM model_pauses ORDER BY model"


async def _with_attempts(rows: Rows, records: list[DecisionRecord]) -> list[AuditedDecision]:
    """Attach outcomes and attempts to decisions, two queries for the whole page."""
    if not records:
        return []
    ids = [r.decision_id for r in records]
    marks = ", ".join("?" * len(ids))
    outcomes = await rows(f"{_SELECT_OUTCOMES} WHERE decision_id IN ({marks})", ids)
    attempts = await rows(f"{_SELECT_ATTEMPTS} WHERE decision_id IN ({marks}) "
                          "ORDER BY decision_id, attempt_index", ids)
    return audited(records, outcomes, attempts)


async def list_decisions(rows: Rows, limit: int, model: str | None = None,
                         task_type: str | None = None) -> list[AuditedDecision]:
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
    return await _with_attempts(rows, [decision_from_row(r) for r in found])


async def decision_view(rows: Rows, decision_id: str) -> AuditedDecision | None:
    """One decision with its outcome and attempts, or None."""
    found = await rows(f"{_SELECT_DECISIONS} WHERE decision_id = ?", (decision_id,))
    views = await _with_attempts(rows, [decision_from_row(r) for r in found])
    return views[0] if views else None


async def fallback_cells(rows: Rows, since: float, label_key: str | None) -> list[FallbackCell]:
    """Fallback decisions per (model, task type), or per (model, value of `label_key`)."""
    if label_key is None:
        return fallback_cells_from(await rows(FALLBACKS_BY_TASK, (since,)))
    return fallback_cells_from(await rows(FALLBACKS_BY_LABEL, (since, label_key)))


async def label_keys(rows: Rows, since: float) -> list[str]:
    """Label keys used by decisions since a time (at most MAX_LABEL_KEYS), sorted."""
    return [str(r[0]) for r in await rows(LABEL_KEYS, (since,))]


async def activity(rows: Rows, since: float, bucket_s: float) -> list[ActivityBucket]:
    """Decisions, their estimates and reported spend per `bucket_s` bucket, oldest first."""
    check_bucket(bucket_s)
    return buckets_from(await rows(DECISIONS_PER_BUCKET, (bucket_s, since)),
                        await rows(SPEND_PER_BUCKET, (bucket_s, since)), bucket_s)


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
    return [PolicyChange(*r) for r in await rows(POLICY_CHANGES, ())]


def pause_write(pause: PauseRecord) -> Write:
    """The write that stores a model's pause."""
    return Write(UPSERT_PAUSE, (pause.model, pause.paused_at, pause.reason))


def unpause_write(model: str) -> Write:
    """The write that forgets a model's pause."""
    return Write(DELETE_PAUSE, (model,))


async def load_pauses(rows: Rows) -> list[PauseRecord]:
    """Every paused model."""
    return [PauseRecord(*r) for r in await rows(PAUSES, ())]
