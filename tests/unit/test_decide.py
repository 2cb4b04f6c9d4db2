"""decide(): README steps 1-6, table by table: filters, tiers, slots, scoring, fallbacks, step 6."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from routing_sidecar.core import view as core_view
from routing_sidecar.core.catalog import Catalog
from routing_sidecar.core.decide import decide, estimate_output_tokens
from routing_sidecar.core.view import BudgetLine, DecisionView, Exploration, QualitySignal
from routing_sidecar.domain import (
    BudgetPeriod,
    BudgetRule,
    DecisionStatus,
    ModelSpec,
    Objective,
    OnExceed,
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
    sel = decide(task(priority=priority, objective=objective), catalog())
    assert chosen(sel) == expected
    assert sel.objective is objective


@pytest.mark.parametrize(
    ("priority", "tier"), [(0, 1), (94, 1), (95, 3), (100, 3)]
)
def test_priority_override_claims_reserved_tiers(priority: int, tier: int) -> None:
    sel = decide(task(priority=priority, objective=Objective.QUALITY), catalog())
    assert sel.chosen is not None and sel.chosen.tier == tier


def test_reserved_reason_explains_the_missing_claim() -> None:
    sel = decide(task(ev=0.4, objective=Objective.QUALITY), catalog(),
                 DecisionView(ev_threshold=12.0))
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
    sel = decide(task(ev=ev, objective=Objective.QUALITY), catalog(),
                 DecisionView(ev_threshold=threshold))
    assert (chosen(sel) == "a3") is claims
    assert (alt(sel, "a3")[0] is Rejection.TIER_RESERVED) is not claims


def test_min_tier_raises_the_ceiling_to_the_cheapest_capable_tier() -> None:
    sel = decide(task(requires=Requirements(min_tier=2), objective=Objective.QUALITY), catalog())
    assert chosen(sel) == "a2"
    assert alt(sel, "a1") == (Rejection.MIN_TIER, "tier 1 below required tier 2")
    assert alt(sel, "a3")[0] is Rejection.TIER_RESERVED


def test_reserve_above_two_keeps_tier_two_open() -> None:
    cat = Catalog.build(MODELS, [Policy("main", ORDER)], tiers=TierRules(reserve_above=2))
    sel = decide(task(objective=Objective.QUALITY), cat)
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
    sel = decide(t, router_catalog, DecisionView(ev_threshold=10.0))
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
    sel = decide(t, router_catalog, DecisionView(ev_threshold=threshold))
    assert sel.objective is Objective.QUALITY
    assert sel.chosen is not None and sel.chosen.tier == tier
    if tier == 3:
        assert sel.chosen.model == "gpt-5"
    else:
        assert alt(sel, "gpt-5")[0] is Rejection.TIER_RESERVED


def test_fix_bug_routes_under_code_with_fallbacks(router_catalog: Catalog) -> None:
    sel = decide(task("fix_bug", estimated_input_tokens=20_000), router_catalog)
    assert (sel.status, sel.reason_code) == (DecisionStatus.ROUTED, ReasonCode.SELECTED)
    assert (sel.policy, sel.objective) == ("code", Objective.BALANCED)
    assert [a.model for a in sel.alternatives] == list(router_catalog.policies["code"].models)
    assert chosen(sel) == "minimax-m2"
    assert [f.model for f in sel.fallbacks] == ["claude-haiku-4-5", "glm-4.6"]
    providers = [sel.chosen.provider] + [f.provider for f in sel.fallbacks]  # type: ignore[union-attr]
    assert len(set(providers)) == 3
    assert {a.model for a in sel.alternatives if a.rejection is Rejection.TIER_RESERVED} == {
        "gpt-5-codex", "claude-sonnet-4-5", "gpt-5", "claude-opus-4-1"}
    assert sel.estimated_cost_micros == router_catalog.models["minimax-m2"].cost_micros(
        20_000, 8_000)
    assert sel.reason.startswith(
        "minimax-m2 (minimax, tier 1) for fix_bug under policy code, objective balanced: "
        "best score 0.765 at est. $0.0156"
    )
    assert sel.reason.endswith("; 4 higher-tier models reserved.")


# --- stage A filters --------------------------------------------------------------------


def test_excluded_models_are_never_chosen() -> None:
    sel = decide(task(exclude_models=frozenset({"b1"})), catalog())
    assert chosen(sel) == "a1"
    assert alt(sel, "b1") == (Rejection.EXCLUDED, "excluded by the request")


def test_capability_filter_names_what_is_missing() -> None:
    req = Requirements(capabilities=frozenset({"vision", "reasoning"}))
    sel = decide(task(requires=req), catalog())
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
    sel = decide(t, catalog())
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
    assert chosen(decide(task(estimated_input_tokens=5_000), cat)) == "small"
    assert chosen(decide(task(estimated_input_tokens=8_500), cat)) == "big"


def test_quality_floor_uses_the_estimate_from_the_view() -> None:
    t = task(requires=Requirements(min_quality=0.8))
    sel = decide(t, catalog())
    assert chosen(sel) == "a2"  # tier 1 fails the floor, so tier 2 is the cheapest capable
    assert alt(sel, "b1") == (
        Rejection.QUALITY,
        "unproven: 0.72 (n=0, lower bound 0.72) below floor 0.80; no exploration")
    learned = DecisionView(quality={"b1": QualitySignal.known(0.9)})
    sel = decide(t, catalog(), learned)
    assert chosen(sel) == "b1"
    assert sel.chosen is not None and sel.chosen.estimated_quality == 0.9
    assert sel.chosen.reason == (
        "chosen: best score; proven: 0.90 (n=0, lower bound 0.90) meets floor 0.80")


def test_policy_quality_floor() -> None:
    sel = decide(task(), catalog(Policy("main", ORDER, quality_floor=0.71)))
    assert alt(sel, "a1")[0] is Rejection.QUALITY
    assert chosen(sel) == "b1"


def test_open_circuit_drops_a_model_after_the_builtin_checks() -> None:
    t = task(exclude_models=frozenset({"a2"}))
    view = DecisionView(breakers={"b1": "circuit open until 12:00:30Z", "a2": "circuit open"})
    sel = decide(t, catalog(), view)
    assert chosen(sel) == "a1"
    assert alt(sel, "b1") == (Rejection.CIRCUIT_OPEN, "circuit open until 12:00:30Z")
    assert alt(sel, "a2")[0] is Rejection.EXCLUDED  # the request's own exclusion comes first


def test_paused_model_is_out_with_the_operator_reason() -> None:
    sel = decide(task(), catalog(), DecisionView(paused={"b1": "by ops at 12:00Z"}))
    assert chosen(sel) == "a1"
    assert alt(sel, "b1") == (Rejection.EXCLUDED, "paused: by ops at 12:00Z")


# --- stage B cost -----------------------------------------------------------------------


def test_max_cost_per_task() -> None:
    cat = catalog(Policy("main", ORDER, max_cost_per_task_micros=10_000))
    sel = decide(task(priority=95, objective=Objective.QUALITY), cat)
    assert chosen(sel) == "b1"
    assert alt(sel, "a2") == (Rejection.MAX_COST, "est. $0.0184 above policy max $0.0100")
    assert alt(sel, "a3")[0] is Rejection.MAX_COST
    assert alt(sel, "c3")[0] is Rejection.MAX_COST


ALPHA = BudgetRule("project:alpha", BudgetPeriod.MONTH, 10_000)


def _budget(names: set[str] | None = None, rule: BudgetRule = ALPHA,
            used: int = 9_999) -> DecisionView:
    """Budget lines with `used` of the rule's limit spent, on the named models (all: None)."""
    models = [m.name for m in MODELS if names is None or m.name in names]
    return DecisionView(budgets={m: (BudgetLine(rule, "project:alpha", used),) for m in models})


def test_budget_on_every_model_rejects_with_budget_exhausted() -> None:
    sel = decide(task(priority=95), catalog(), _budget())
    assert (sel.status, sel.reason_code) == (DecisionStatus.REJECTED, ReasonCode.BUDGET_EXHAUSTED)
    assert sel.chosen is None and sel.fallbacks == ()
    assert {a.rejection for a in sel.alternatives} == {Rejection.BUDGET}
    assert "budget project:alpha/month exhausted; on_exceed reject" in sel.reason


def test_budget_never_promotes_a_task_to_a_reserved_tier() -> None:
    sel = decide(task(), catalog(), _budget({"a1", "b1"}))
    assert (sel.status, sel.reason_code) == (DecisionStatus.REJECTED, ReasonCode.BUDGET_EXHAUSTED)
    assert alt(sel, "c3")[0] is Rejection.TIER_RESERVED


def test_max_cost_alone_is_no_capable_model() -> None:
    cat = catalog(Policy("main", ORDER, max_cost_per_task_micros=1))
    sel = decide(task(), cat)
    assert (sel.status, sel.reason_code) == (DecisionStatus.REJECTED, ReasonCode.NO_CAPABLE_MODEL)


# --- slots ------------------------------------------------------------------------------


def test_no_free_capable_slot_awaits_instead_of_rejecting() -> None:
    slots = (Slot("s-a3", "a3", 0.1), Slot("s-a1", "a1", 1.0))
    sel = decide(task(available_slots=slots), catalog())
    assert (sel.status, sel.reason_code) == (DecisionStatus.AWAIT_SLOT, ReasonCode.AWAITING_SLOT)
    assert sel.chosen is None
    assert alt(sel, "a1") == (Rejection.NO_SLOT, "every offered slot is full")
    assert alt(sel, "b1") == (Rejection.NO_SLOT, "no slot offered for this model")
    assert alt(sel, "a3")[0] is Rejection.TIER_RESERVED  # a free slot does not promote
    assert "a1, b1" in sel.reason


def test_slot_for_an_incapable_model_only_is_rejected_not_awaited() -> None:
    req = Requirements(capabilities=frozenset({"audio"}))
    sel = decide(task(requires=req, available_slots=(Slot("s1", "a1"),)), catalog())
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
    sel = decide(task(available_slots=slots), catalog())
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
    sel = decide(task(available_slots=slots), catalog(Policy("main", ("t1", "t2")), models=TWINS))
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
    sel = decide(task(), cat)
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
    sel = decide(t, router_catalog, DecisionView(ev_threshold=10.0))
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
    sel = decide(task(), catalog(Policy("main", ("b1", "a1", "a2"), fallbacks=0)))
    assert chosen(sel) == "b1"
    assert alt(sel, "a1") == (Rejection.OUTSCORED, "score 0.7551 below chosen 0.775")
    assert alt(sel, "b1") == (Rejection.CHOSEN, "chosen: best score")
    assert sel.alternatives[2].score == 0.0  # a2 reserved before scoring
    assert sel.reason.endswith("; 1 higher-tier model reserved.")


@pytest.mark.parametrize("t", INVARIANT_TASKS, ids=lambda t: t.task_type)
def test_deterministic(router_catalog: Catalog, t: Task) -> None:
    from routing_sidecar.config import load_config
    from tests.unit.conftest import ROUTER_YAML

    fresh = Catalog.from_settings(load_config(ROUTER_YAML).settings())
    signals = DecisionView(ev_threshold=10.0)
    first = decide(t, router_catalog, signals)
    assert decide(t, router_catalog, signals) == first
    assert decide(t, fresh, signals) == first


def test_unknown_override_policy_is_invalid_argument() -> None:
    with pytest.raises(InvalidArgument, match="policy: unknown policy 'nope'"):
        decide(task(policy="nope"), catalog())


@pytest.mark.parametrize(
    ("task_out", "policy_out", "expected"), [(500, 4_000, 500), (0, 4_000, 4_000), (0, None, 1024)]
)
def test_estimate_output_tokens(task_out: int, policy_out: int | None, expected: int) -> None:
    t = task(max_output_tokens=task_out)
    assert estimate_output_tokens(t, Policy("p", ("a1",), max_output_tokens=policy_out)) == expected


# --- step 6: budgets that downgrade or reject ------------------------------------------------

DAY = BudgetRule("global", BudgetPeriod.DAY, 10_000, on_exceed=OnExceed.DOWNGRADE)
ALPHA_REJECT = BudgetRule("project:alpha", BudgetPeriod.MONTH, 10_000, on_exceed=OnExceed.REJECT)
TASK_CAP = BudgetRule("task", BudgetPeriod.TASK, 5_000, on_exceed=OnExceed.DOWNGRADE)


def lines(rule: BudgetRule, key: str, used: int, models: Sequence[str]) -> DecisionView:
    return DecisionView(budgets={m: (BudgetLine(rule, key, used),) for m in models})


@pytest.mark.parametrize(
    ("view", "status", "code", "model", "words"),
    [
        # 2,000 left: the preferred b1 (est. 2,548) does not fit a budget that downgrades,
        # and neither does anything else, so the reason says no downgrade was possible.
        (lines(DAY, "global", 8_000, ["b1", "a1"]), DecisionStatus.REJECTED,
         ReasonCode.BUDGET_EXHAUSTED, None, "no cheaper model fits to downgrade to"),
        # With room for a1 but a model budget on b1 alone, the task downgrades to a1.
        (lines(DAY, "model:b1", 9_000, ["b1"]), DecisionStatus.ROUTED,
         ReasonCode.DOWNGRADED, "a1", "Downgraded from b1: budget model:b1/day exhausted."),
        # A budget that rejects refuses the task, never quietly running a lesser model.
        (lines(ALPHA_REJECT, "project:alpha", 9_000, ["b1"]), DecisionStatus.REJECTED,
         ReasonCode.BUDGET_EXHAUSTED, None, "b1 is over budget (budget project:alpha/month "
         "exhausted; on_exceed reject)"),
        # The per-task limit counts what this task already used, and says so in numbers.
        (lines(TASK_CAP, "task:t-1", 4_000, ["b1", "a1"]), DecisionStatus.REJECTED,
         ReasonCode.BUDGET_EXHAUSTED, None, "$0.0040 used + est. $0.0025 above the per-task "
         "limit $0.0050"),
        # A free call never breaks a budget, even an exhausted one.
        (lines(DAY, "global", 10_000, []), DecisionStatus.ROUTED, ReasonCode.SELECTED, "b1", ""),
    ],
)
def test_budgets_downgrade_or_reject(view: DecisionView, status: DecisionStatus,
                                     code: ReasonCode, model: str | None, words: str) -> None:
    sel = decide(task(objective=Objective.COST_SPEED), catalog(), view)
    assert (sel.status, sel.reason_code) == (status, code), sel.reason
    assert (sel.chosen.model if sel.chosen else None) == model
    assert words in sel.reason
    if status is DecisionStatus.REJECTED:
        assert sel.fallbacks == () and not any(a.chosen for a in sel.alternatives)


def test_downgraded_fallbacks_are_only_models_that_fit() -> None:
    view = DecisionView(budgets={"b1": (BudgetLine(DAY, "model:b1", 9_000),)})
    sel = decide(task(objective=Objective.COST_SPEED, priority=99), catalog(), view)
    assert sel.reason_code is ReasonCode.DOWNGRADED
    assert "b1" not in [f.model for f in sel.fallbacks]
    assert alt(sel, "b1") == (Rejection.BUDGET, "budget model:b1/day exhausted")


# --- step 6: quality floors route ------------------------------------------------------------

PAIR = (spec("weak", "w", q=0.7, inp=0.1, out=0.1), spec("strong", "s", q=0.9, inp=5, out=25))
FLOOR = Requirements(min_quality=0.85)


def pair(**policy: object) -> Catalog:
    return catalog(Policy("main", ("weak", "strong"), objective=Objective.COST_SPEED,
                          **policy),  # type: ignore[arg-type]
                   models=PAIR)


def unproven(mean: float, draw: float | None = None, n: float = 2.0) -> QualitySignal:
    """An estimate whose lower bound sits 0.1 under its mean, backed by too few outcomes."""
    return QualitySignal(mean, n, mean - 0.1, False, mean - 0.15, draw)


@pytest.mark.parametrize(
    ("quality", "exploration", "code", "model", "explored", "words"),
    [
        # strong proven: it runs on proof, weak is out on the floor.
        ({"strong": QualitySignal(0.93, 40, 0.9, True, 0.8)}, Exploration.OFF,
         ReasonCode.SELECTED, "strong", False, "proven: 0.93 (n=40, lower bound 0.90)"),
        # weak unproven but its draw reaches the floor: explored, and cheaper, so it runs.
        ({"weak": unproven(0.8, draw=0.88), "strong": unproven(0.9)}, Exploration.ON,
         ReasonCode.SELECTED, "weak", True, "exploring: 0.80"),
        # nothing proven or explored: strong's estimate meets the floor, so it runs on that.
        ({"weak": unproven(0.8, draw=0.7), "strong": unproven(0.9, draw=0.8)}, Exploration.ON,
         ReasonCode.SELECTED, "strong", False, "rests on estimated quality alone"),
        # no estimate meets the floor: the best estimate runs anyway, below the floor.
        ({"weak": unproven(0.6), "strong": unproven(0.8)}, Exploration.SPENT,
         ReasonCode.BELOW_FLOOR, "strong", False,
         "no capable model's estimate meets floor 0.85, so the best estimate runs (0.80)"),
    ],
)
def test_floor_ladder(quality: dict[str, QualitySignal], exploration: Exploration,
                      code: ReasonCode, model: str, explored: bool, words: str) -> None:
    view = DecisionView(quality=quality, exploration=exploration)
    sel = decide(task(requires=FLOOR), pair(), view)
    assert (sel.status, sel.reason_code) == (DecisionStatus.ROUTED, code), sel.reason
    assert chosen(sel) == model and sel.explored is explored
    assert words in sel.reason or words in alt(sel, model)[1]


@pytest.mark.parametrize("how", ["policy", "lane"])
def test_critical_lanes_and_policies_refuse_instead_of_lowering_the_bar(how: str) -> None:
    cat = pair(critical=True) if how == "policy" else Catalog.build(
        PAIR, [Policy("main", ("weak", "strong"))], critical_lanes=("prod",))
    labels = {"lane": "prod"} if how == "lane" else {}
    view = DecisionView(quality={"weak": unproven(0.8, draw=0.99), "strong": unproven(0.9)},
                        exploration=Exploration.ON)
    sel = decide(task(requires=FLOOR, labels=labels), cat, view)
    assert (sel.status, sel.reason_code) == (DecisionStatus.REJECTED, ReasonCode.NO_CAPABLE_MODEL)
    assert "critical lane" in sel.reason
    assert alt(sel, "weak")[1].startswith("unproven on a critical lane")  # its draw is ignored


def test_exploration_share_spent_is_said() -> None:
    view = DecisionView(quality={"weak": unproven(0.8), "strong": unproven(0.9)},
                        exploration=Exploration.SPENT)
    sel = decide(task(requires=FLOOR), pair(), view)
    assert alt(sel, "weak")[1].endswith("; exploration share spent")


# --- value-aware routing ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value_usd", "model"),
    [
        (0.001, "weak"),  # a good result is worth less than strong's extra cost
        (0.1, "weak"),  # +0.2 quality x $0.10 = $0.02 < strong's extra $0.0305
        (1.0, "strong"),  # +$0.20 expected for $0.0305 more: strong pays for itself
    ],
)
def test_value_buys_the_quality_that_pays_for_itself(value_usd: float, model: str) -> None:
    sel = decide(task(value_micros=round(value_usd * 1e6)), pair())
    assert chosen(sel) == model
    other = "strong" if model == "weak" else "weak"
    assert sel.alternatives[0].net_value_micros is not None
    assert f"{model}: +$" in sel.reason and f"expected over {other}" in sel.reason


def test_value_reason_in_numbers_and_the_tier_ceiling_gives_way() -> None:
    cheap = spec("haiku", "a", tier=1, q=0.7, inp=1, out=5)
    opus = spec("opus", "b", tier=3, q=0.95, inp=15, out=75)
    cat = catalog(Policy("main", ("haiku", "opus")), models=(cheap, opus))
    without = decide(task(), cat)
    assert chosen(without) == "haiku" and alt(without, "opus")[0] is Rejection.TIER_RESERVED
    sel = decide(task(value_micros=600_000), cat)
    assert chosen(sel) == "opus"
    # 0.95 x $0.60 - $0.0918 against 0.70 x $0.60 - $0.0061
    assert sel.reason.endswith(
        "value $0.6000: opus: +$0.0643 expected over haiku at $0.0918 vs $0.0061.")
    assert alt(sel, "haiku") == (Rejection.FALLBACK, "fallback 1: different provider")


def test_value_explores_through_the_views_draws_only() -> None:
    # By the means strong wins at $1; weak's draw makes it look as good, so weak is explored.
    view = DecisionView(quality={"weak": unproven(0.7, draw=0.95), "strong": unproven(0.9)},
                        exploration=Exploration.ON)
    sel = decide(task(value_micros=1_000_000), pair(), view)
    assert chosen(sel) == "weak" and sel.explored
    assert "(exploring)" in sel.reason
    # The same view decides the same way every time: nothing is drawn inside decide.
    assert decide(task(value_micros=1_000_000), pair(), view) == sel
    # Without draws (critical lane, or exploration off) the means decide.
    assert chosen(decide(task(value_micros=1_000_000), pair())) == "strong"


def test_execute_mode_skips_models_it_cannot_call() -> None:
    view = DecisionView(uncallable={"b1": "provider b has no key (api_key_env B_KEY unset)"})
    sel = decide(task(), catalog(), view)
    assert chosen(sel) == "a1"
    assert alt(sel, "b1") == (Rejection.NO_CREDENTIALS,
                              "provider b has no key (api_key_env B_KEY unset)")


def test_budgets_that_cannot_be_checked_fail_closed() -> None:
    view = DecisionView(budgets={m.name: (BudgetLine(ALPHA, "project:alpha", 0),) for m in MODELS},
                        budgets_unavailable="the shared budget ledger is unreachable")
    sel = decide(task(), catalog(), view)
    assert (sel.status, sel.reason_code) == (DecisionStatus.REJECTED,
                                             ReasonCode.BUDGET_UNAVAILABLE)
    assert "the shared budget ledger is unreachable" in sel.reason
    # A task no budget governs still routes.
    assert chosen(decide(task(), catalog(), DecisionView(
        budgets_unavailable="the shared budget ledger is unreachable"))) == "b1"


def test_a_catalog_quality_is_one_shared_signal_and_the_share_stays_bounded() -> None:
    first = QualitySignal.known(0.8125)
    assert first == QualitySignal(0.8125, 0.0, 0.8125, True, 0.8125)
    assert QualitySignal.known(0.8125) is first  # not rebuilt for every candidate
    for i in range(core_view._KNOWN_MAX + 5):  # many distinct qualities: the memo starts over
        assert QualitySignal.known(i / 10_000).mean == i / 10_000
    assert len(core_view._KNOWN) <= core_view._KNOWN_MAX
    assert QualitySignal.known(0.8125) == first
