"""Records to statement parameters and result rows back to records, for both SQL dialects.

Record fields are named after their columns, so a row is the record's values in field order;
only the placeholders differ between dialects (`?` in SQLite, `$n` in PostgreSQL).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import fields, replace
from operator import attrgetter
from typing import Any

from routing_sidecar.core.budget_rules import EntryKind, LedgerEntry
from routing_sidecar.domain import BudgetPeriod, DecisionStatus, Objective, ReasonCode
from routing_sidecar.records import (
    MARK,
    AttemptRecord,
    DecisionRecord,
    GradeRecord,
    LedgerTotal,
    ModelLabelCell,
    ModelTaskCell,
    OutcomeRecord,
    PerformanceRecord,
    ProviderCell,
    RoutingStats,
    stored_reason,
)

Marks = Callable[[int], str]  # 0-based parameter index -> placeholder


def columns(record: type) -> tuple[str, ...]:
    """A record's column names, in field order."""
    return tuple(f.name for f in fields(record))


DECISION_COLUMNS = columns(DecisionRecord)
SELECTION_COLUMNS = columns(AttemptRecord)
OUTCOME_COLUMNS = columns(OutcomeRecord)
LEDGER_COLUMNS = columns(LedgerEntry)
PERFORMANCE_COLUMNS = columns(PerformanceRecord)
GRADE_COLUMNS = columns(GradeRecord)
PERFORMANCE_KEY = ("task_type", "model", "window_start")


def qmarks(_: int) -> str:
    """SQLite's placeholder."""
    return "?"


def dollars(i: int) -> str:
    """PostgreSQL's placeholder for parameter i (0-based)."""
    return f"${i + 1}"


def insert(table: str, cols: Sequence[str], marks: Marks, tail: str = "") -> str:
    """An INSERT of one row of `cols`, with the dialect's placeholders."""
    values = ", ".join(marks(i) for i in range(len(cols)))
    return f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({values}){tail}"


def upsert_performance(marks: Marks) -> str:
    """Add a performance window to the row already there (both dialects spell it alike)."""
    added = ", ".join(
        f"{c} = model_performance.{c} + excluded.{c}"
        for c in PERFORMANCE_COLUMNS if c not in PERFORMANCE_KEY
    )
    return insert("model_performance", PERFORMANCE_COLUMNS, marks,
                  f" ON CONFLICT ({', '.join(PERFORMANCE_KEY)}) DO UPDATE SET {added}")


_GETTERS: dict[tuple[str, ...], Callable[[object], Any]] = {}


def params(record: object, cols: Sequence[str]) -> tuple[object, ...]:
    """The record's values for `cols`, in order."""
    key = tuple(cols)
    getter = _GETTERS.get(key)
    if getter is None:  # one C call per row instead of a generator over the columns
        getter = _GETTERS[key] = _getter(key)
    result: tuple[object, ...] = getter(record)
    return result


def _getter(cols: tuple[str, ...]) -> Callable[[object], Any]:
    if len(cols) > 1:
        return attrgetter(*cols)  # a tuple from two names on
    return lambda record: tuple(getattr(record, c) for c in cols)


def check_outcome(decision_id: str, attempts: Sequence[AttemptRecord],
                  outcome: OutcomeRecord) -> None:
    """Refuse an outcome whose records belong to another decision."""
    if outcome.decision_id != decision_id or any(
        a.decision_id != decision_id for a in attempts
    ):
        raise ValueError(f"records do not all belong to decision {decision_id!r}")


def decision_from_row(row: Sequence[Any]) -> DecisionRecord:
    """A `model_routing_decisions` row (DECISION_COLUMNS order) as its record."""
    d = dict(zip(DECISION_COLUMNS, row, strict=True))
    d.update(status=DecisionStatus(d["status"]), reason_code=ReasonCode(d["reason_code"]),
             objective=Objective(d["objective"]), dry_run=bool(d["dry_run"]))
    record = DecisionRecord(**d)
    if not record.reason.startswith(MARK):
        return record
    # A sentence stored as a code reads back as the text the decision answered with.
    return replace(record, reason=stored_reason(record))


def outcome_from_row(row: Sequence[Any]) -> OutcomeRecord:
    """A `decision_outcomes` row (OUTCOME_COLUMNS order) as its record."""
    d = dict(zip(OUTCOME_COLUMNS, row, strict=True))
    d["success"] = bool(d["success"])
    return OutcomeRecord(**d)


def ledger_entries(rows: Iterable[Sequence[Any]]) -> list[LedgerEntry]:
    """`budget_ledger` rows (LEDGER_COLUMNS order) as entries."""
    return [LedgerEntry(EntryKind(r[0]), r[1], r[2], BudgetPeriod(r[3]), *r[4:]) for r in rows]


def ledger_totals(rows: Iterable[Sequence[Any]]) -> list[LedgerTotal]:
    """(scope, period, period_start, kind, sum) rows as totals."""
    return [LedgerTotal(r[0], BudgetPeriod(r[1]), r[2], EntryKind(r[3]), int(r[4]))
            for r in rows]


def assemble_stats(since: float, by_task: Iterable[Sequence[Any]],
                   by_label: Iterable[Sequence[Any]], decisions: Iterable[Sequence[Any]],
                   attempts: Iterable[Sequence[Any]]) -> RoutingStats:
    """The routing matrix from the four stats queries' rows (see either dialect's stats)."""
    cells: dict[str, dict[str, int]] = {}
    for provider, n, fallbacks in decisions:
        cells.setdefault(provider, {}).update(decisions=n, fallback_decisions=fallbacks)
    for provider, n, failed, tokens_in, tokens_out, spend in attempts:
        cells.setdefault(provider, {}).update(
            attempts=n, failed_attempts=failed, input_tokens=tokens_in,
            output_tokens=tokens_out, spend_micros=spend,
        )
    return RoutingStats(
        since,
        tuple(ModelTaskCell(*r) for r in by_task),
        tuple(ModelLabelCell(*r) for r in by_label),
        tuple(ProviderCell(p, **c) for p, c in sorted(cells.items())),
    )
