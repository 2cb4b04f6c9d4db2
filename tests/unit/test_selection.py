"""select(): filters, tier reservation, slots, scoring, fallbacks, alternatives, reasons."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from routing_sidecar.core.catalog import Catalog
from routing_sidecar.core.selection import Signals, estimate_output_tokens, select
from routing_sidecar.domain import (
    DecisionStatus,
    ModelSpec,
    Objective,
    Policy,
    ReasonCode,
    Rejection,
    Requirements,
    Selection,
    Slot,
    Task,
    TierRules,
)
from routing_sidecar.errors import InvalidArgument
from tests.unit.conftest import spec

# A small catalog: two tier-1 models, one tier-2, two tier-3 on three providers.
A1 = spec("a1", "a", 1, 1.0, 5.0, tps=150, q=0.70, caps=("code", "tools"))
B1 = spec("b1", "b", 1, 0.5, 2.0, ctx=100_000, tps=100, q=0.72, caps=("code",))
A2 = spec("a2", "a", 2, 3.0, 15.0, tps=80, q=0.85, caps=("code", "tools", "vision"))
A3 = spec("a3", "a", 3, 15.0, 75.0, tps=40, q=0.93, caps=("code", "tools", "vision", "reasoning"))
C3 = spec("c3", "c", 3, 2.0, 10.0, ctx=400_000, tps=60, q=0.88, caps=("code", "tools", "reasoning"))
MODELS = (A1, B1, A2, A3, C3)
ORDER = tuple(m.name for m in MODELS)


def catalog(*policies: Policy, models: Sequence[ModelSpec] = MODELS) -> Catalog:
    pols = policies or (Policy("main", ORDER),)
    return Catalog.build(models, pols, (), (), TierRules(), pols[0].name)


def task(task_type: str = "job", priority: int = 50, **kw: object) -> Task:
    kw.setdefault("estimated_input_tokens", 1_000)
    return Task("t-1", task_type, priority, **kw)  # type: ignore[arg-type]


def alt(sel: Selection, model: str) -> tuple[Rejection, str]:
    (a,) = [a for a in sel.alternatives if a.model == model]
    return a.rejection, a.reason


def chosen(sel: Selection) -> str:
    assert sel.status is DecisionStatus.ROUTED, sel.reason
    assert sel.chosen is not None
    return sel.chosen.model


# --- objectives and tier reservation -----------------------------------------------------


@pytest.mark.parametrize(
    ("objective", "priority", "expected"),
    [
        (Objective.COST_SPEED, 50, "b1"),  # the cheapest
        (Objective.COST_SPEED, 95, "b1"),  # claiming tier 3 does not make it win on cost
        (Objective.QUALITY, 50, "b1"),  # best quality among the allowed tier-1 models
        (Objective.QUALITY, 95, "a3"),  # best quality overall once tier 3 is claimed
        (Objective.BALANCED, 50, "b1"),
    ],
)
def test_objective_picks(objective: Objective, priority: int, expected: str) -> None:
    sel = select(task(priority=priority, objective=objective), catalog())
    assert chosen(sel) == expected
    assert sel.objective is objective


@pytest.mark.parametrize(
    ("priority", "tier"), [(0, 1), (94, 1), (95, 3), (100, 3)]
)
def test_priority_override_claims_reserved_tiers(priority: int, tier: int) -> None:
    sel = select(task(priority=priority, objective=Objective.QUALITY), catalog())
    assert sel.chosen is not None and sel.chosen.tier == tier


def test_reserved_reason_explains_the_missing_claim() -> None:
    sel = select(task(ev=0.4, objective=Objective.QUALITY), catalog(), Signals(ev_threshold=12.0))
    assert alt(sel, "a3") == (
        Rejection.TIER_RESERVED,
        "tier 3 reserved: ev 0.40 not above recent P90 12.00 and priority 50 < 95",
    )
    assert alt(sel, "a2")[0] is Rejection.TIER_RESERVED
    assert "3 higher-tier models reserved" in sel.reason


@pytest.mark.parametrize(
    ("ev", "threshold", "claims"),
    [
        (50.0, 12.0, True),
        (12.0, 12.0, False),  # must be above, not equal
        (5.0, 12.0, False),
        (50.0, None, False),  # too little history: ev cannot claim
        (None, 12.0, False),
    ],
)
def test_ev_claims_reserved_tiers(ev: float | None, threshold: float | None, claims: bool) -> None:
    sel = select(task(ev=ev, objective=Objective.QUALITY), catalog(), Signals(threshold))
    assert (chosen(sel) == "a3") is claims
    assert (alt(sel, "a3")[0] is Rejection.TIER_RESERVED) is not claims


def test_min_tier_raises_the_ceiling_to_the_cheapest_capable_tier() -> None:
    sel = select(task(requires=Requirements(min_tier=2), objective=Objective.QUALITY), catalog())
    assert chosen(sel) == "a2"
    assert alt(sel, "a1") == (Rejection.MIN_TIER, "tier 1 below required tier 2")
    assert alt(sel, "a3")[0] is Rejection.TIER_RESERVED


def test_reserve_above_two_keeps_tier_two_open() -> None:
    cat = Catalog.build(MODELS, [Policy("main", ORDER)], tiers=TierRules(reserve_above=2))
    sel = select(task(objective=Objective.QUALITY), cat)
    assert chosen(sel) == "a2"
    assert alt(sel, "a3")[0] is Rejection.TIER_RESERVED


# --- shipped config ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("task_type", "priority", "objective"),
    [
        ("check_links", 20, Objective.AUTO),
        ("check_links", 50, Objective.AUTO),
        ("check_links", 50, Objective.QUALITY),
        ("link_checker", 80, Objective.QUALITY),
        ("docs_update", 60, Objective.QUALITY),
    ],
)
def test_docs_and_link_checks_never_get_tier_three(
    router_catalog: Catalog, task_type: str, priority: int, objective: Objective
) -> None:
    t = task(task_type, priority, objective=objective, ev=3.0)
    sel = select(t, router_catalog, Signals(ev_threshold=10.0))
    assert sel.chosen is not None and sel.chosen.tier == 1
    assert all(f.tier == 1 for f in sel.fallbacks)
    for a in sel.alternatives:
        if a.tier == 3:
            assert a.rejection is Rejection.TIER_RESERVED


@pytest.mark.parametrize(
    ("ev", "threshold", "tier"), [(50.0, 12.0, 3), (5.0, 12.0, 1), (50.0, None, 1)]
)
def test_strategic_design_claims_tier_three_only_with_high_ev(
    router_catalog: Catalog, ev: float, threshold: float | None, tier: int
) -> None:
    t = task("strategic_design", ev=ev, estimated_input_tokens=30_000)
    sel = select(t, router_catalog, Signals(ev_threshold=threshold))
    assert sel.objective is Objective.QUALITY
    assert sel.chosen is not None and sel.chosen.tier == tier
    if tier == 3:
        assert sel.chosen.model == "gpt-5"
    else:
        assert alt(sel, "gpt-5")[0] is Rejection.TIER_RESERVED


def test_fix_bug_routes_under_code_with_fallbacks(router_catalog: Catalog) -> None:
    sel = select(task("fix_bug", estimated_input_tokens=20_000), router_catalog)
    assert (sel.status, sel.reason_code) == (DecisionStatus.ROUTED, ReasonCode.SELECTED)
    assert (sel.policy, sel.objective) == ("code", Objective.BALANCED)
    assert [a.model for a in sel.alternatives] == list(router_catalog.policies["code"].models)
    assert chosen(sel) == "minimax-m2"
    assert [f.model for f in sel.fallbacks] == ["glm-4.6", "claude-haiku-4-5"]
    providers = [sel.chosen.provider] + [f.provider for f in sel.fallbacks]  # type: ignore[union-attr]
    assert len(set(providers)) == 3
    assert {a.model for a in sel.alternatives if a.rejection is Rejection.TIER_RESERVED} == {
        "gpt-5-codex", "claude-sonnet-4-5", "gpt-5", "claude-opus-4-1"}
    assert sel.estimated_cost_micros == router_catalog.models["minimax-m2"].cost_micros(
        20_000, 8_000)
    assert sel.reason.startswith(
        "minimax-m2 (minimax, tier 1) for fix_bug under policy code, objective balanced: "
        "best score 0.8 at est. $0.0156"
    )
    assert sel.reason.endswith("; 4 higher-tier models reserved.")


# --- stage A filters --------------------------------------------------------------------


def test_excluded_models_are_never_chosen() -> None:
    sel = select(task(exclude_models=frozenset({"b1"})), catalog())
    assert chosen(sel) == "a1"
    assert alt(sel, "b1") == (Rejection.EXCLUDED, "excluded by the request")


def test_capability_filter_names_what_is_missing() -> None:
    req = Requirements(capabilities=frozenset({"vision", "reasoning"}))
    sel = select(task(requires=req), catalog())
    assert chosen(sel) == "a3"  # the only capable model, so its tier is the cheapest capable
    assert alt(sel, "a1") == (Rejection.CAPABILITY, "lacks capability: reasoning, vision")
    assert alt(sel, "a2") == (Rejection.CAPABILITY, "lacks capability: reasoning")
    assert alt(sel, "c3") == (Rejection.CAPABILITY, "lacks capability: vision")


@pytest.mark.parametrize(
    ("input_tokens", "output_tokens", "b1_fits"),
    [(98_976, 0, True), (98_977, 0, False), (10_000, 95_000, False), (500_000, 0, False)],
)
def test_prompt_that_does_not_fit_never_picks_the_model(
    input_tokens: int, output_tokens: int, b1_fits: bool
) -> None:
    t = task(estimated_input_tokens=input_tokens, max_output_tokens=output_tokens,
             objective=Objective.COST_SPEED, priority=99)
    sel = select(t, catalog())
    rejection, reason = alt(sel, "b1")
    assert (rejection is not Rejection.CONTEXT_WINDOW) is b1_fits
    if not b1_fits:
        needed = input_tokens + (output_tokens or 1024)
        assert str(needed) in reason and "100000" in reason
        assert sel.chosen is None or sel.chosen.model != "b1"
        assert all(f.model != "b1" for f in sel.fallbacks)
    if input_tokens == 500_000:  # fits nowhere
        assert (sel.status, sel.reason_code) == (
            DecisionStatus.REJECTED, ReasonCode.NO_CAPABLE_MODEL)


def test_context_penalty_steers_away_from_a_nearly_full_window() -> None:
    small = spec("small", "x", ctx=10_000)
    big = spec("big", "y", ctx=100_000)
    cat = catalog(Policy("main", ("small", "big")), models=(small, big))
    assert chosen(select(task(estimated_input_tokens=5_000), cat)) == "small"
    assert chosen(select(task(estimated_input_tokens=8_500), cat)) == "big"


def test_quality_floor_uses_the_estimate_from_signals() -> None:
    t = task(requires=Requirements(min_quality=0.8))
    sel = select(t, catalog())
    assert chosen(sel) == "a2"  # tier 1 fails the floor, so tier 2 is the cheapest capable
    assert alt(sel, "b1") == (Rejection.QUALITY, "estimated quality 0.72 below floor 0.80")
    learned = Signals(quality=lambda kind, m: 0.9 if m.name == "b1" else m.quality)
    sel = select(t, catalog(), learned)
    assert chosen(sel) == "b1"
    assert sel.chosen is not None and sel.chosen.estimated_quality == 0.9


def test_policy_quality_floor() -> None:
    sel = select(task(), catalog(Policy("main", ORDER, quality_floor=0.71)))
    assert alt(sel, "a1")[0] is Rejection.QUALITY
    assert chosen(sel) == "b1"


def test_capability_filter_drops_a_model_after_builtin_checks() -> None:
    seen: list[tuple[str, int]] = []

    def breaker(t: Task, m: ModelSpec, cost: int) -> tuple[Rejection, str] | None:
        seen.append((m.name, cost))
        return (Rejection.CIRCUIT_OPEN, f"circuit open for {m.provider}") if m.provider == "b" \
            else None

    t = task(exclude_models=frozenset({"a2"}))
    sel = select(t, catalog(), Signals(capability_filters=(breaker,)))
    assert chosen(sel) == "a1"
    assert alt(sel, "b1") == (Rejection.CIRCUIT_OPEN, "circuit open for b")
    assert alt(sel, "a2")[0] is Rejection.EXCLUDED
    assert seen == [(m.name, m.cost_micros(1_000, 1_024)) for m in (A1, B1, A3, C3)]


# --- stage B cost -----------------------------------------------------------------------


def test_max_cost_per_task() -> None:
    cat = catalog(Policy("main", ORDER, max_cost_per_task_micros=10_000))
    sel = select(task(priority=95, objective=Objective.QUALITY), cat)
    assert chosen(sel) == "b1"
    assert alt(sel, "a2") == (Rejection.MAX_COST, "est. $0.0184 above policy max $0.0100")
    assert alt(sel, "a3")[0] is Rejection.MAX_COST
    assert alt(sel, "c3")[0] is Rejection.MAX_COST


def _budget(names: set[str] | None = None) -> Signals:
    def headroom(t: Task, m: ModelSpec, cost: int) -> tuple[Rejection, str] | None:
        if names is None or m.name in names:
            return Rejection.BUDGET, f"project:alpha has less than {cost} micros left"
        return None
    return Signals(cost_filters=(headroom,))


def test_budget_filter_on_every_model_rejects_with_budget_exhausted() -> None:
    sel = select(task(priority=95), catalog(), _budget())
    assert (sel.status, sel.reason_code) == (DecisionStatus.REJECTED, ReasonCode.BUDGET_EXHAUSTED)
    assert sel.chosen is None and sel.fallbacks == ()
    assert {a.rejection for a in sel.alternatives} == {Rejection.BUDGET}
    assert "budget" in sel.reason


def test_budget_never_promotes_a_task_to_a_reserved_tier() -> None:
    sel = select(task(), catalog(), _budget({"a1", "b1"}))
    assert (sel.status, sel.reason_code) == (DecisionStatus.REJECTED, ReasonCode.BUDGET_EXHAUSTED)
    assert alt(sel, "c3")[0] is Rejection.TIER_RESERVED


def test_max_cost_alone_is_no_capable_model() -> None:
    cat = catalog(Policy("main", ORDER, max_cost_per_task_micros=1))
    sel = select(task(), cat)
    assert (sel.status, sel.reason_code) == (DecisionStatus.REJECTED, ReasonCode.NO_CAPABLE_MODEL)


# --- slots ------------------------------------------------------------------------------


def test_no_free_capable_slot_awaits_instead_of_rejecting() -> None:
    slots = (Slot("s-a3", "a3", 0.1), Slot("s-a1", "a1", 1.0))
    sel = select(task(available_slots=slots), catalog())
    assert (sel.status, sel.reason_code) == (DecisionStatus.AWAIT_SLOT, ReasonCode.AWAITING_SLOT)
    assert sel.chosen is None
    assert alt(sel, "a1") == (Rejection.NO_SLOT, "every offered slot is full")
    assert alt(sel, "b1") == (Rejection.NO_SLOT, "no slot offered for this model")
    assert alt(sel, "a3")[0] is Rejection.TIER_RESERVED  # a free slot does not promote
    assert "a1, b1" in sel.reason


def test_slot_for_an_incapable_model_only_is_rejected_not_awaited() -> None:
    req = Requirements(capabilities=frozenset({"audio"}))
    sel = select(task(requires=req, available_slots=(Slot("s1", "a1"),)), catalog())
    assert (sel.status, sel.reason_code) == (DecisionStatus.REJECTED, ReasonCode.NO_CAPABLE_MODEL)


@pytest.mark.parametrize(
    ("slots", "model", "slot_id"),
    [
        ((Slot("s1", "b1", 1.0), Slot("s2", "a1", 0.99)), "a1", "s2"),
        ((Slot("hi", "b1", 0.7), Slot("lo", "b1", 0.2), Slot("full", "b1", 1.0)), "b1", "lo"),
        ((Slot("x", "b1", 0.3), Slot("y", "b1", 0.3)), "b1", "x"),
    ],
)
def test_slot_choice(slots: tuple[Slot, ...], model: str, slot_id: str) -> None:
    sel = select(task(available_slots=slots), catalog())
    assert chosen(sel) == model
    assert sel.chosen is not None and sel.chosen.slot_id == slot_id


TWINS = (spec("t1", "x"), spec("t2", "y"))


@pytest.mark.parametrize(
    ("utilisation", "expected"),
    [(None, "t1"), ((0.5, 0.2), "t2"), ((0.2, 0.5), "t1"), ((0.3, 0.3), "t1")],
)
def test_ties_go_to_lowest_utilisation_then_policy_order(
    utilisation: tuple[float, float] | None, expected: str
) -> None:
    slots = () if utilisation is None else (
        Slot("s1", "t1", utilisation[0]), Slot("s2", "t2", utilisation[1]))
    sel = select(task(available_slots=slots), catalog(Policy("main", ("t1", "t2")), models=TWINS))
    assert chosen(sel) == expected
    assert sel.alternatives[0].score == sel.alternatives[1].score
    other = "t2" if expected == "t1" else "t1"
    assert [f.model for f in sel.fallbacks] == [other]


# --- fallback chain ---------------------------------------------------------------------

X1 = spec("x1", "a", q=0.9)
X2 = spec("x2", "a", q=0.85)
Y1 = spec("y1", "b", q=0.6)
Z1 = spec("z1", "c", q=0.5)


@pytest.mark.parametrize(
    ("models", "fallbacks", "chain"),
    [
        ((X1, X2, Y1, Z1), 2, ["y1", "z1"]),
        ((X1, X2, Y1, Z1), 3, ["y1", "z1", "x2"]),
        ((X1, X2, Y1), 2, ["y1", "x2"]),
        ((X1, X2, Y1), 1, ["y1"]),
        ((X1, X2, Y1), 0, []),
        ((X1,), 2, []),
    ],
)
def test_fallback_chain_switches_provider_first(
    models: tuple[ModelSpec, ...], fallbacks: int, chain: list[str]
) -> None:
    cat = catalog(Policy("main", tuple(m.name for m in models), objective=Objective.QUALITY,
                         fallbacks=fallbacks), models=models)
    sel = select(task(), cat)
    assert chosen(sel) == "x1"
    assert [f.model for f in sel.fallbacks] == chain
    reasons = [a.reason for a in sel.alternatives if a.rejection is Rejection.FALLBACK]
    if chain == ["y1", "x2"]:
        assert alt(sel, "y1")[1] == "fallback 1: different provider"
        assert alt(sel, "x2")[1] == "fallback 2: next best, no other provider left"
    assert len(reasons) == len(chain)


# --- invariants -------------------------------------------------------------------------

INVARIANT_TASKS = [
    task("fix_bug", estimated_input_tokens=20_000),
    task("check_links", 20),
    task("strategic_design", ev=99.0),
    task("analyze_logs", requires=Requirements(capabilities=frozenset({"long_context"}))),
    task("write_email", available_slots=(Slot("s", "gpt-5", 0.1),)),
    task("write_email", policy="deep_research", estimated_input_tokens=2_000_000),
    task("write_email", exclude_models=frozenset({"gpt-5-mini", "claude-haiku-4-5"})),
]


@pytest.mark.parametrize("t", INVARIANT_TASKS, ids=lambda t: t.task_type)
def test_every_candidate_appears_once_and_one_is_chosen(router_catalog: Catalog, t: Task) -> None:
    sel = select(t, router_catalog, Signals(ev_threshold=10.0))
    policy = router_catalog.policies[sel.policy]
    assert [a.model for a in sel.alternatives] == list(policy.models)
    chosen_alts = [a for a in sel.alternatives if a.chosen]
    if sel.status is DecisionStatus.ROUTED:
        assert chosen_alts == [sel.chosen]
        fallback_alts = {a.model for a in sel.alternatives if a.rejection is Rejection.FALLBACK}
        assert fallback_alts == {f.model for f in sel.fallbacks}
        assert len(sel.fallbacks) <= policy.fallbacks
    else:
        assert chosen_alts == [] and sel.chosen is None
    for a in sel.alternatives:
        assert a.reason
        m = router_catalog.models[a.model]
        assert a.estimated_cost_micros == m.cost_micros(
            t.estimated_input_tokens, estimate_output_tokens(t, policy))
        if a.rejection not in (Rejection.CHOSEN, Rejection.FALLBACK, Rejection.OUTSCORED):
            assert a.score == 0.0


def test_outscored_reason_compares_scores() -> None:
    sel = select(task(), catalog(Policy("main", ("b1", "a1", "a2"), fallbacks=0)))
    assert chosen(sel) == "b1"
    assert alt(sel, "a1") == (Rejection.OUTSCORED, "score 0.6457 below chosen 0.81")
    assert alt(sel, "b1") == (Rejection.CHOSEN, "chosen: best score")
    assert sel.alternatives[2].score == 0.0  # a2 reserved before scoring
    assert sel.reason.endswith("; 1 higher-tier model reserved.")


@pytest.mark.parametrize("t", INVARIANT_TASKS, ids=lambda t: t.task_type)
def test_deterministic(router_catalog: Catalog, t: Task) -> None:
    from routing_sidecar.config import load_config
    from tests.unit.conftest import ROUTER_YAML

    fresh = Catalog.from_config(load_config(ROUTER_YAML))
    signals = Signals(ev_threshold=10.0)
    first = select(t, router_catalog, signals)
    assert select(t, router_catalog, signals) == first
    assert select(t, fresh, signals) == first


def test_unknown_override_policy_is_invalid_argument() -> None:
    with pytest.raises(InvalidArgument, match="policy: unknown policy 'nope'"):
        select(task(policy="nope"), catalog())


@pytest.mark.parametrize(
    ("task_out", "policy_out", "expected"), [(500, 4_000, 500), (0, 4_000, 4_000), (0, None, 1024)]
)
def test_estimate_output_tokens(task_out: int, policy_out: int | None, expected: int) -> None:
    t = task(max_output_tokens=task_out)
    assert estimate_output_tokens(t, Policy("p", ("a1",), max_output_tokens=policy_out)) == expected
