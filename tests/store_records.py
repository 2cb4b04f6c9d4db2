"""Audit records for the store tests, built the way the service builds them."""

from __future__ import annotations

from routing_sidecar import domain
from routing_sidecar.records import AttemptRecord, DecisionRecord, OutcomeRecord

T0 = 1_773_144_000.0  # 2026-03-10 12:00 UTC
GPT5 = domain.ModelSpec("gpt-5", "openai", 3, 1_250_000, 10_000_000, 400_000, 60, 0.91)
HAIKU = domain.ModelSpec("claude-haiku-4-5", "anthropic", 1, 1_000_000, 5_000_000, 200_000,
                         150, 0.72)


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


# A row of the previous build (schema 6), as a bench store held it: sentences in full.
OLD_ALTERNATIVES = (
    '[["gpt-5-codex","openai",2,0.0,35000,"tier_reserved","tier 2 reserved: no ev given and '
    'priority 60 < 95",0.85],["claude-haiku-4-5","anthropic",1,0.7361,22000,"fallback",'
    '"fallback 1: different provider",0.72],["minimax-m2","minimax",1,0.765,6000,"chosen",'
    '"chosen: best score",0.7],["glm-4.6","zhipu",1,0.7149,11600,"fallback",'
    '"fallback 2: different provider",0.71],["llama-3.1-8b-local","local",1,0.7225,0,'
    '"outscored","score 0.7225 below chosen 0.765",0.55]]')
OLD_FALLBACKS = '[["claude-haiku-4-5","anthropic",1,22000],["glm-4.6","zhipu",1,11600]]'
OLD_REASON = ("minimax-m2 (minimax, tier 1) for fix_bug under policy code, objective balanced: "
              "best score 0.765 at est. $0.0060; 1 higher-tier model reserved.")
