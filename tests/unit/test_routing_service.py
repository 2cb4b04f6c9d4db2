"""RoutingService and OutcomeService over the in-memory fakes: no gRPC, no disk."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from routing_sidecar.config import parse_config
from routing_sidecar.domain import (
    Attempt,
    AttemptStatus,
    DecisionStatus,
    Outcome,
    ReasonCode,
    Rejection,
    Requirements,
    Task,
)
from routing_sidecar.errors import InvalidArgument, StorageError
from routing_sidecar.service.routing import RoutingState
from routing_sidecar.settings import RouterSettings
from tests.fakes import Stack, service_stack


def model(provider: str, price: float, quality: float, tier: int = 1) -> dict[str, Any]:
    return {"provider": provider, "tier": tier, "input_per_mtok": price,
            "output_per_mtok": price, "context_window": 100_000, "tokens_per_s": 100,
            "quality": quality}


def config(**overrides: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "models": {"weak": model("w", 0.5, 0.7), "strong": model("s", 10.0, 0.9),
                   "top": model("t", 20.0, 0.95, tier=3)},
        "policies": {"main": {"objective": "cost_speed", "models": ["weak", "strong", "top"],
                              "fallbacks": 1}},
        "default_policy": "main",
        "budgets": [{"scope": "global", "period": "day", "limit_usd": 1.0}],
        "tiers": {"reserve_above": 3},
    }
    raw.update(overrides)
    return raw


def settings(**overrides: Any) -> RouterSettings:
    return parse_config(yaml.safe_dump(config(**overrides)), "test").settings()


def stack(**overrides: Any) -> Stack:
    return service_stack(settings(**overrides))


def task(i: int = 1, **kw: Any) -> Task:
    kw.setdefault("estimated_input_tokens", 1_000)
    kw.setdefault("max_output_tokens", 1_000)
    return Task(kw.pop("task_id", f"t-{i}"), kw.pop("task_type", "job"), **kw)


def attempt(name: str, status: AttemptStatus = AttemptStatus.SUCCESS, **kw: Any) -> Attempt:
    kw.setdefault("input_tokens", 1_000)
    kw.setdefault("output_tokens", 500)
    return Attempt(name, "", status, **kw)


def used(s: Stack, scope: str = "global") -> tuple[int, int]:
    (status,) = [b for b in s.ledger.status(s.clock.now()) if b.scope == scope]
    return status.spent_micros, status.reserved_micros


# -- route ------------------------------------------------------------------------------------

async def test_a_decision_is_reserved_and_audited_together() -> None:
    s = stack()
    d = await s.routing.route(task())
    assert d.status is DecisionStatus.ROUTED and d.selection.chosen is not None
    assert used(s) == (0, d.selection.estimated_cost_micros)
    record = s.store.decisions[d.decision_id]
    assert record.chosen_model == d.selection.chosen.model
    assert {e.scope for e in s.store.ledger} == {"global"}


async def test_a_failed_commit_leaves_no_reservation_behind() -> None:
    s = stack()
    s.store.fail_writes = 1
    with pytest.raises(StorageError):
        await s.routing.route(task())
    assert used(s) == (0, 0)
    assert s.store.decisions == {} and s.store.ledger == []
    assert (await s.routing.route(task(2))).status is DecisionStatus.ROUTED


async def test_the_per_task_limit_spans_every_decision_of_the_task() -> None:
    # One task routed five times used to reserve five limits.
    s = stack(budgets=[{"scope": "task", "limit_usd": 0.002, "on_exceed": "reject"}])
    first = await s.routing.route(task(task_id="T-42"))
    assert first.status is DecisionStatus.ROUTED  # weak: 2,000 tokens at $0.50/M = $0.001
    second = await s.routing.route(task(task_id="T-42"))
    assert second.status is DecisionStatus.ROUTED
    third = await s.routing.route(task(task_id="T-42"))
    assert (third.status, third.selection.reason_code) == (
        DecisionStatus.REJECTED, ReasonCode.BUDGET_EXHAUSTED)
    assert "$0.0020 used" in third.selection.reason
    other = await s.routing.route(task(task_id="T-43"))
    assert other.status is DecisionStatus.ROUTED


async def test_exploration_is_drawn_once_and_counted_as_it_was_decided() -> None:
    # Every decision's `explored` flag is exactly what the exploration share counts: the draw
    # that admitted a model is never re-drawn by a second pass.
    s = service_stack(settings(learning={"forget": 1.0, "exploration": {"max_share": 0.5}},
                               budgets=[]), seed=3)
    floor = Requirements(min_quality=0.85)
    flags = []
    for i in range(200):
        d = await s.routing.route(task(i, requires=floor))
        flags.append(d.selection.explored)
        chosen = d.selection.chosen
        assert chosen is not None
        if d.selection.explored:
            assert "exploring: " in chosen.reason
    share = s.routing.learner.quality.exploration_share("job")
    assert sum(flags) > 0 and share == pytest.approx(sum(flags) / len(flags))


async def test_a_downgraded_choice_carries_its_own_estimate() -> None:
    # strong is the only model proven for the floor, and over a budget that downgrades: weak
    # (whose estimate meets the floor) takes the task, and its reason is its own, never
    # strong's or another draw's.
    s = stack(budgets=[{"scope": "model:strong", "period": "day", "limit_usd": 0.03,
                        "on_exceed": "downgrade"}],
              policies={"main": {"objective": "quality", "models": ["weak", "strong"],
                                 "fallbacks": 1}})
    floor = Requirements(min_quality=0.6)
    first = await s.routing.route(task(1, requires=floor))
    assert first.selection.chosen is not None and first.selection.chosen.model == "strong"
    second = await s.routing.route(task(2, requires=floor))
    assert second.selection.reason_code is ReasonCode.DOWNGRADED, second.selection.reason
    assert "Downgraded from strong: budget model:strong/day exhausted" in second.selection.reason
    chosen = second.selection.chosen
    assert chosen is not None and chosen.model == "weak"
    assert chosen.reason.startswith("chosen: best score; unproven: 0.70 (n=0, lower bound 0.57)")


# -- outcomes ---------------------------------------------------------------------------------

async def test_one_absurd_outcome_cannot_wreck_every_budget() -> None:
    # 32 attempts of a model at $1M each, for a decision that cost a fraction of a cent.
    s = stack()
    d = await s.routing.route(task())
    before = s.ledger.status(s.clock.now())
    absurd = Outcome(d.decision_id, tuple(attempt("top", cost_micros=10**12) for _ in range(32)))
    with pytest.raises(InvalidArgument, match=r"^attempts: has 32 entries; at most 16"):
        await s.outcomes.report(absurd)
    one = Outcome(d.decision_id, (attempt("top", cost_micros=10**12),))
    with pytest.raises(InvalidArgument, match=r"^attempts\[0\]\.cost_micros: 1000000000000 is "
                                             r"more than 1000 input and 500 output tokens"):
        await s.outcomes.report(one)
    assert s.ledger.status(s.clock.now()) == before
    assert s.store.outcomes == {}


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        (attempt("gpt-9"), "attempts[0].model"),
        (attempt("weak", input_tokens=99_000, output_tokens=2_000), "attempts[0].input_tokens"),
        (attempt("weak", started_at=253402300799.0), "attempts[0].started_at"),  # year 9999
        (attempt("weak", started_at=0.0), "attempts[0].started_at"),  # before the decision
        (attempt("weak", duration_s=10 * 86_400.0), "attempts[0].duration"),
    ],
)
async def test_outcome_checks_name_the_field_and_charge_nothing(bad: Attempt, field: str) -> None:
    s = stack()
    d = await s.routing.route(task())
    before = s.ledger.status(s.clock.now())
    with pytest.raises(InvalidArgument) as exc:
        await s.outcomes.report(Outcome(d.decision_id, (bad,), success=True))
    assert exc.value.field == field
    assert s.ledger.status(s.clock.now()) == before and s.store.outcomes == {}


async def test_an_attempt_off_the_plan_is_allowed_and_flagged() -> None:
    s = stack()
    d = await s.routing.route(task())
    assert d.selection.chosen is not None and d.selection.chosen.model == "weak"
    plan = {"weak", *(f.model for f in d.selection.fallbacks)}
    off = next(m for m in ("strong", "top") if m not in plan)
    ack = await s.outcomes.report(Outcome(d.decision_id, (attempt("weak"), attempt(off)),
                                          success=True))
    assert [a.off_plan for a in ack.attempts] == [False, True]
    assert [a.off_plan for a in s.store.attempts[d.decision_id]] == [False, True]


async def test_an_outcome_for_a_rejected_decision_is_charged() -> None:
    s = stack(budgets=[{"scope": "global", "period": "day", "limit_usd": 0.0001}])
    d = await s.routing.route(task())
    assert d.status is DecisionStatus.REJECTED
    ack = await s.outcomes.report(Outcome(d.decision_id, (attempt("weak"),), success=True))
    assert ack.actual_cost_micros == 750
    assert used(s) == (750, 0)


async def test_a_duplicate_answers_with_what_was_recorded_and_charges_nothing() -> None:
    s = stack()
    d = await s.routing.route(task())
    first = await s.outcomes.report(Outcome(d.decision_id, (attempt("weak"),), success=True))
    spent = used(s)
    again = await s.outcomes.report(
        Outcome(d.decision_id, (attempt("weak", output_tokens=900),), success=True))
    assert (again.duplicate, again.actual_cost_micros) == (True, first.actual_cost_micros)
    assert used(s) == spent


async def test_a_failed_outcome_commit_reopens_the_reservation() -> None:
    s = stack()
    d = await s.routing.route(task())
    reserved = used(s)
    s.store.fail_writes = 1
    with pytest.raises(StorageError):
        await s.outcomes.report(Outcome(d.decision_id, (attempt("weak"),), success=True))
    assert used(s) == reserved
    await s.outcomes.report(Outcome(d.decision_id, (attempt("weak"),), success=True))
    assert used(s) == (750, 0)


# -- reload -----------------------------------------------------------------------------------

async def reload_with(s: Stack, **overrides: Any) -> None:
    s.routing.apply(RoutingState.of(settings(**overrides)))


async def test_reload_applies_new_priors() -> None:
    s = stack()
    assert (await s.routing.route(task(requires=Requirements(min_quality=0.8)))
            ).selection.chosen.model == "strong"  # type: ignore[union-attr]
    models = config()["models"]
    models["weak"] = model("w", 0.5, 0.95)
    await reload_with(s, models=models)
    d = await s.routing.route(task(2, requires=Requirements(min_quality=0.8)))
    assert d.selection.chosen is not None and d.selection.chosen.model == "weak"


async def test_reload_applies_new_health_settings_and_keeps_what_health_learned() -> None:
    s = stack()
    d = await s.routing.route(task())
    failed = attempt("weak", AttemptStatus.TRANSIENT_ERROR)
    await s.outcomes.report(Outcome(d.decision_id, (failed, failed), success=False))
    assert (await s.routing.route(task(2))).selection.chosen.model == "weak"  # type: ignore[union-attr]
    await reload_with(s, health={"breaker": {"consecutive_failures": 1}})
    d = await s.routing.route(task(3))
    await s.outcomes.report(Outcome(d.decision_id, (failed,), success=False))
    d = await s.routing.route(task(4))
    assert d.selection.chosen is not None and d.selection.chosen.model != "weak"
    weak = next(a for a in d.selection.alternatives if a.model == "weak")
    assert weak.rejection is Rejection.CIRCUIT_OPEN


async def test_reload_applies_new_learning_settings_and_keeps_the_evidence() -> None:
    s = stack()
    for i in range(5):
        d = await s.routing.route(task(i))
        await s.outcomes.report(Outcome(d.decision_id, (attempt("weak"),), success=True,
                                        quality=1.0))
    learned = s.routing.learner.quality.mean("job", "weak")
    await reload_with(s, learning={"pool_strength": 100.0})
    after = s.routing.learner.quality.mean("job", "weak")
    assert 0.7 < after < learned  # the same evidence, now against a much stronger prior


async def test_reload_applies_new_critical_lanes() -> None:
    s = stack(learning={"exploration": {"enabled": False}})
    floor = Requirements(min_quality=0.96)
    d = await s.routing.route(task(requires=floor, labels={"lane": "prod"}))
    assert d.selection.reason_code is ReasonCode.BELOW_FLOOR
    await reload_with(s, critical_lanes=["prod"], learning={"exploration": {"enabled": False}})
    d = await s.routing.route(task(2, requires=floor, labels={"lane": "prod"}))
    assert (d.status, d.selection.reason_code) == (
        DecisionStatus.REJECTED, ReasonCode.NO_CAPABLE_MODEL)


async def test_reload_applies_new_tiers_and_ev_window() -> None:
    s = stack(policies={"main": {"objective": "quality", "models": ["weak", "top"]}})
    assert (await s.routing.route(task())).selection.chosen.model == "top"  # type: ignore[union-attr]
    for i in range(30):
        await s.routing.route(task(10 + i, ev=1.0, dry_run=True))
    await reload_with(s, policies={"main": {"objective": "quality", "models": ["weak", "top"]}},
                      tiers={"reserve_above": 1, "ev_window": 10, "ev_min_samples": 5})
    assert len(s.routing.ev_window) == 10  # resized, holding the most recent EVs
    d = await s.routing.route(task(2, ev=0.5))
    assert d.selection.chosen is not None and d.selection.chosen.model == "weak"
    d = await s.routing.route(task(3, ev=50.0))  # above the recent P90: claims tier 3
    assert d.selection.chosen is not None and d.selection.chosen.model == "top"


async def test_reload_keeps_the_ledger_s_entries_under_new_rules() -> None:
    s = stack()
    d = await s.routing.route(task())
    reserved = used(s)
    await reload_with(s, budgets=[{"scope": "global", "period": "day", "limit_usd": 0.0005}])
    assert used(s) == reserved
    assert (await s.routing.route(task(2))).status is DecisionStatus.REJECTED
    await s.outcomes.report(Outcome(d.decision_id, (attempt("weak"),), success=True))
    assert used(s) == (750, 0)
