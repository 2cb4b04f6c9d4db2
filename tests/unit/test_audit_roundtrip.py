"""Decisions made by the core read back from their audit rows exactly as they were answered.

The rows keep common sentences as codes (core/reasons.py); this drives `decide` over the
shipped catalog through every shape of sentence it writes and reads each row back.
"""

from __future__ import annotations

import itertools

import orjson
import pytest

from routing_sidecar import domain
from routing_sidecar.core.catalog import Catalog
from routing_sidecar.core.decide import decide
from routing_sidecar.core.view import BudgetLine, DecisionView, Exploration, QualitySignal
from routing_sidecar.records import (
    ALTERNATIVE_FIELDS,
    FALLBACK_FIELDS,
    MARK,
    DecisionRecord,
    stored_alternatives,
    stored_fallbacks,
)
from routing_sidecar.storage.rows import DECISION_COLUMNS, decision_from_row, params

TASK_TYPES = ("fix_bug", "analyze_logs", "simple_query", "research_market", "check_links",
              "strategic_design", "something_else")
REQUESTS: list[dict[str, object]] = [
    {}, {"priority": 10}, {"priority": 99}, {"ev": 0.5}, {"ev": 80.0}, {"value_micros": 50_000},
    {"value_micros": 1}, {"requires": domain.Requirements(capabilities=frozenset({"vision"}))},
    {"requires": domain.Requirements(capabilities=frozenset({"long_context", "reasoning"}))},
    {"requires": domain.Requirements(min_quality=0.8)},
    {"requires": domain.Requirements(min_quality=0.99)},
    {"requires": domain.Requirements(min_tier=2)}, {"exclude_models": frozenset({"gpt-5-mini"})},
    {"estimated_input_tokens": 500_000}, {"objective": domain.Objective.QUALITY},
]


def views(catalog: Catalog) -> list[DecisionView]:
    names = sorted(catalog.models)
    rule = domain.BudgetRule("project:*", domain.BudgetPeriod.MONTH, 10_000)
    down = domain.BudgetRule("global", domain.BudgetPeriod.DAY, 10_000,
                             on_exceed=domain.OnExceed.DOWNGRADE)
    return [
        DecisionView(),
        DecisionView(ev_threshold=40.0, breakers={names[0]: "circuit open: 5 failures"},
                     penalties={names[1]: 0.2}),
        DecisionView(budgets={n: (BudgetLine(rule, "project:alpha", 9_000),)
                              for n in names[::2]}),
        DecisionView(budgets={n: (BudgetLine(down, "global", 9_990),) for n in names[::3]}),
        DecisionView(budgets={names[0]: (BudgetLine(rule, "project:alpha", 0),)},
                     budgets_unavailable="redis unreachable"),
        DecisionView(exploration=Exploration.ON, quality={
            n: QualitySignal(0.75, 3.0, 0.6, draw=0.9 - 0.1 * i) for i, n in enumerate(names)}),
    ]


def record(sel: domain.Selection, task: domain.Task) -> DecisionRecord:
    return DecisionRecord.from_decision(domain.Decision("d1", task.task_id, 1.0, sel), task, "c")


def test_every_decision_reads_back_as_it_was_answered(router_catalog: Catalog) -> None:
    coded = whole = 0
    for view, task_type, request in itertools.product(
            views(router_catalog), TASK_TYPES, REQUESTS):
        kw = {"estimated_input_tokens": 2_000, "priority": 60, **request}
        task = domain.Task("t-1", task_type, **kw)  # type: ignore[arg-type]
        sel = decide(task, router_catalog, view)
        rec = record(sel, task)
        read = decision_from_row(params(rec, DECISION_COLUMNS))
        assert read.reason == sel.reason, (task, view)
        assert stored_alternatives(read) == [
            {f: getattr(a, f) for f in ALTERNATIVE_FIELDS} for a in sel.alternatives], task
        assert stored_fallbacks(read) == [
            {f: getattr(x, f) for f in FALLBACK_FIELDS} for x in sel.fallbacks], task
        rows = orjson.loads(rec.alternatives_json)
        coded += sum(isinstance(r[5], int) for r in rows)
        whole += sum(isinstance(r[5], str) for r in rows)
    # Most sentences are stored as codes, the rest (floor notes, budgets ...) as written.
    assert coded > whole > 0


@pytest.mark.parametrize("task_type", TASK_TYPES)
def test_a_plain_routed_decision_keeps_no_sentence(router_catalog: Catalog,
                                                   task_type: str) -> None:
    task = domain.Task("t-1", task_type, 60, estimated_input_tokens=2_000)
    sel = decide(task, router_catalog)
    rec = record(sel, task)
    assert rec.reason.startswith(MARK) and len(rec.reason) < 12
    assert all(isinstance(r[5], int) for r in orjson.loads(rec.alternatives_json))
    assert all(isinstance(f, int) for f in orjson.loads(rec.fallbacks_json))
