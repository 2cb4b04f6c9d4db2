"""The RouteRequest mix sent to both servers, and a representative Decision for the no-op."""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from routing_sidecar_api.routing_sidecar.v1 import router_pb2 as pb


@dataclass(frozen=True)
class Kind:
    """One kind of task in the mix, with its share of requests."""

    task_type: str
    weight: int
    priority: int
    input_tokens: int
    output_tokens: int
    capabilities: tuple[str, ...] = ()
    ev: float | None = None
    labels: Mapping[str, str] = field(default_factory=dict)


MIX: tuple[Kind, ...] = (
    Kind("fix_bug", 30, 60, 12_000, 2_000, ("code",), labels={"lane": "backend"}),
    Kind("check_links", 15, 20, 2_000, 300, labels={"lane": "docs"}),
    Kind("strategic_design", 10, 80, 30_000, 6_000, ev=5_000.0,
         labels={"lane": "architecture", "complexity": "high"}),
    Kind("docs_update", 20, 25, 4_000, 1_500, labels={"lane": "docs"}),
    Kind("analyze_logs", 25, 50, 50_000, 1_000, ("long_context",), labels={"lane": "ops"}),
)
PROJECTS = ("alpha", "beta", "gamma")


def make_request(kind: Kind, task_id: str, project: str, **overrides: Any) -> pb.RouteRequest:
    """One RouteRequest of the given kind."""
    req = pb.RouteRequest(
        task_id=task_id,
        task_type=kind.task_type,
        priority=kind.priority,
        requires=pb.Requirements(capabilities=list(kind.capabilities)),
        estimated_input_tokens=kind.input_tokens,
        max_output_tokens=kind.output_tokens,
        labels={"project": project, **kind.labels},
        dry_run=False,
    )
    if kind.ev is not None:
        req.ev = kind.ev
    for name, value in overrides.items():
        setattr(req, name, value)
    return req


def build_requests(n: int, prefix: str, seed: int = 7, **overrides: Any) -> list[pb.RouteRequest]:
    """`n` requests drawn from MIX by weight, with unique task ids; same seed, same mix."""
    rng = random.Random(seed)
    kinds = rng.choices(MIX, weights=[k.weight for k in MIX], k=n)
    return [
        make_request(k, f"{prefix}-{i}", PROJECTS[i % len(PROJECTS)], **overrides)
        for i, k in enumerate(kinds)
    ]


def representative_decision() -> pb.Decision:
    """A Decision shaped like a real one: 7 alternatives, 2 fallbacks, 3 budget scopes."""
    models = [
        ("gpt-5-codex", "openai", 2, 32_500), ("claude-sonnet-4-5", "anthropic", 2, 66_000),
        ("claude-haiku-4-5", "anthropic", 1, 22_000), ("minimax-m2", "minimax", 1, 6_000),
        ("glm-4.6", "zhipu", 1, 11_600), ("gpt-5", "openai", 3, 35_000),
        ("claude-opus-4-1", "anthropic", 3, 330_000),
    ]
    fates = ["chosen", "fallback", "fallback", "outscored", "outscored", "tier_reserved",
             "max_cost"]
    alternatives = [
        pb.Alternative(
            model=m, provider=p, tier=t, score=0.8 - 0.07 * i, estimated_cost_micros=c,
            chosen=i == 0, rejection=fates[i], estimated_quality=0.9 - 0.03 * i,
            reason=f"{m} scored {0.8 - 0.07 * i:.3f} under balanced ({fates[i]})",
        )
        for i, (m, p, t, c) in enumerate(models)
    ]
    fallbacks = [pb.Fallback(model=m, provider=p, tier=t, estimated_cost_micros=c)
                 for m, p, t, c in models[1:3]]
    budgets = [
        pb.BudgetStatus(scope=s, period=per, limit_micros=lim, spent_micros=1_234_567,
                        reserved_micros=32_500, remaining_micros=lim - 1_267_067,
                        state=pb.BUDGET_STATE_OK)
        for s, per, lim in (("global", pb.BUDGET_PERIOD_DAY, 50_000_000),
                            ("project:alpha", pb.BUDGET_PERIOD_MONTH, 300_000_000),
                            ("task", pb.BUDGET_PERIOD_TASK, 1_000_000))
    ]
    d = pb.Decision(
        decision_id="01JD6Q8Z3K4M5N6P7Q8R9S0T1V", task_id="bench-0",
        status=pb.DECISION_STATUS_ROUTED, reason_code=pb.REASON_CODE_SELECTED,
        model="gpt-5-codex", provider="openai", tier=2, fallbacks=fallbacks,
        estimated_cost_micros=32_500, policy="code", objective=pb.OBJECTIVE_BALANCED,
        reason="fix_bug routed to gpt-5-codex (openai, tier 2): best balanced score of 5 "
               "capable models; fallbacks claude-sonnet-4-5, claude-haiku-4-5.",
        alternatives=alternatives, budgets=budgets,
    )
    d.decided_at.GetCurrentTime()
    return d
