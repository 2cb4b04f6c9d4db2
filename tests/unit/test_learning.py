"""QualityBook: priors, pooling, convergence, confidence, critical lanes, exploration, restore."""

from __future__ import annotations

import dataclasses
import random
from datetime import UTC

import pytest

from routing_sidecar.config import parse_config
from routing_sidecar.core.budget import Ledger
from routing_sidecar.core.candidates import Cand, Level, qualify
from routing_sidecar.core.catalog import Catalog
from routing_sidecar.core.decide import decide
from routing_sidecar.core.health import HealthBook
from routing_sidecar.core.learning import POOLED, LearningSnapshot, QualityBook
from routing_sidecar.core.rules import is_critical
from routing_sidecar.core.view import Exploration, QualitySignal
from routing_sidecar.domain import (
    Objective,
    Policy,
    Rejection,
    Selection,
    Task,
    TierRules,
)
from routing_sidecar.service.learning import Learner
from routing_sidecar.service.routing import RoutingState
from routing_sidecar.service.view import build_view
from routing_sidecar.settings import ExplorationSettings, LearningSettings, RouterSettings
from tests.unit.conftest import spec

CHEAP = spec("cheap", "a", 1, inp=0.3, out=1.2, q=0.72)
STRONG = spec("strong", "b", 1, inp=3.0, out=15.0, q=0.93)
MID = spec("mid", "c", 1, inp=1.0, out=5.0, q=0.86)
MODELS = {m.name: m for m in (CHEAP, STRONG, MID)}
PRIOR = {name: m.quality for name, m in MODELS.items()}
FLOOR = 0.8


def qbook(*, explore: bool = True, max_share: float = 0.1, min_samples: float = 5,
          **kw: float) -> QualityBook:
    settings = LearningSettings(exploration=ExplorationSettings(
        enabled=explore, max_share=max_share, min_samples_to_prove=min_samples),
        **kw)  # type: ignore[arg-type]
    return QualityBook(settings, PRIOR.__getitem__)


def catalog(*, critical: bool = False) -> Catalog:
    pol = Policy("main", ("cheap", "mid", "strong"), objective=Objective.COST_SPEED,
                 quality_floor=FLOOR, critical=critical)
    return Catalog.build(tuple(MODELS.values()), (pol,), (), (), TierRules(), "main",
                         critical_lanes=("prod",))


def task(task_type: str = "job", **labels: str) -> Task:
    return Task("t", task_type, estimated_input_tokens=1000, labels=labels)


def route(qb: QualityBook, t: Task, cat: Catalog, rng: random.Random | None = None) -> Selection:
    """Decide over the view the service builds, with this book as its learned quality."""
    learner = Learner(HealthBook(RouterSettings().health), qb)
    state = RoutingState(RouterSettings(), cat)
    view = build_view(t, cat.policies["main"], state, learner, Ledger((), UTC), None, 0.0,
                      rng if rng is not None else _NO_DRAWS)
    return decide(t, cat, view)


class _NoDraws(random.Random):
    """An rng that fails the test if a draw is made."""

    def gauss(self, mu: float = 0.0, sigma: float = 1.0) -> float:
        raise AssertionError("no draw expected")


_NO_DRAWS = _NoDraws()


def reason(sel: Selection, model: str) -> tuple[Rejection, str]:
    (a,) = [a for a in sel.alternatives if a.model == model]
    return a.rejection, a.reason


def level(qb: QualityBook, kind: str, model: str, floor: float = FLOOR,
          rng: random.Random | None = None, critical: bool = False) -> tuple[Level, str]:
    """Where the model stands against the floor, and why, as a decision would see it."""
    c = Cand(0, MODELS[model], 0, qb.signal(kind, model, rng))
    qualify(c, floor, critical, qb.exploration(kind))
    return c.level, c.note


# -- prior and estimate ---------------------------------------------------------------------

@pytest.mark.parametrize(
    ("model", "proven"),
    [("strong", True), ("mid", False), ("cheap", False)],
)
def test_a_fresh_book_starts_from_the_catalog(model: str, proven: bool) -> None:
    qb = qbook()
    sig = qb.signal("anything", model)
    assert sig.mean == pytest.approx(PRIOR[model]) and sig.samples == 0.0
    assert sig.lower_bound < sig.mean and sig.draw is None
    assert sig.proven(FLOOR) is proven


def test_describe_rounds_the_bound_down() -> None:
    assert QualitySignal(0.86, 0.0, 0.7963).describe() == "0.86 (n=0, lower bound 0.79)"
    assert QualitySignal(0.9, 12.4, 0.8).describe() == "0.90 (n=12, lower bound 0.80)"


@pytest.mark.parametrize(
    ("success", "quality", "y"),
    [(True, None, 1.0), (False, None, 0.0), (True, 0.6, 0.6), (False, 0.3, 0.3),
     (True, 1.7, 1.0), (True, -1.0, 0.0)],
)
def test_observation_scores_quality_else_success(
    success: bool, quality: float | None, y: float
) -> None:
    qb = qbook(prior_strength=0.0, pool_strength=0.0)
    qb.observe("t", "cheap", success, quality)
    assert qb.mean("t", "cheap") == pytest.approx(y)
    pooled, row = qb.stats()
    assert (pooled.task_type, row.task_type) == (POOLED, "t")
    assert row.success_rate == float(success)
    assert row.graded == (quality is not None)


# -- pooling across task types ----------------------------------------------------------------

def test_a_new_task_type_starts_from_what_the_model_did_on_the_others() -> None:
    qb = qbook()
    for kind in ("a", "b", "c"):
        for _ in range(40):
            qb.observe(kind, "cheap", True, 0.95)
    fresh = qb.signal("never-seen", "cheap")
    assert fresh.samples == 0.0
    assert fresh.mean > 0.9  # not the catalog's 0.72
    # ... so on a new task type the cheap model is already the cheapest capable one.
    assert level(qb, "never-seen", "cheap") == (Level.PROVEN, level(qb, "never-seen", "cheap")[1])
    assert route(qb, task("never-seen"), catalog()).chosen.model == "cheap"  # type: ignore[union-attr]


def test_a_task_type_s_own_outcomes_count_once() -> None:
    # With one task type the pool holds exactly its evidence: the estimate must equal the
    # plain posterior over the catalog prior, not count each outcome twice.
    qb = qbook(prior_strength=5.0, pool_strength=5.0, forget=1.0)
    for _ in range(3):
        qb.observe("job", "cheap", False)
    assert qb.mean("job", "cheap") == pytest.approx(0.72 * 5 / 8)


def test_the_pooled_estimate_forgets() -> None:
    qb = qbook(forget=0.9, prior_strength=2.0)
    for i in range(200):
        qb.observe(f"t{i % 20}", "cheap", True, 0.95)
    for i in range(100):
        qb.observe(f"t{i % 20}", "cheap", True, 0.30)  # the model got worse everywhere
    assert qb.signal("new", "cheap").mean < 0.45


# -- convergence: cheapest capable --------------------------------------------------------

@pytest.mark.parametrize(
    ("task_type", "cheap_quality", "chosen"),
    [("docs_fix", 0.93, "cheap"), ("architecture", 0.45, "strong")],
)
def test_learning_drives_the_cheapest_capable_choice(
    task_type: str, cheap_quality: float, chosen: str
) -> None:
    qb = qbook(explore=False)
    cat = catalog()
    sel = route(qb, task(task_type), cat)
    assert sel.chosen is not None and sel.chosen.model == "strong"  # the catalog says so
    for _ in range(100):
        qb.observe(task_type, "cheap", True, cheap_quality)
    sel = route(qb, task(task_type), cat)
    assert sel.chosen is not None and sel.chosen.model == chosen
    rej, why = reason(sel, "cheap")
    if chosen == "cheap":
        assert rej is Rejection.CHOSEN
        assert why.startswith("chosen: best score; proven: 0.91 (n=79, lower bound 0.90)")
        assert sel.chosen.reason == why
        assert sel.chosen.estimated_quality == pytest.approx(qb.mean(task_type, "cheap"))
    else:
        assert rej is Rejection.QUALITY
        assert why == "unproven: 0.47 (n=79, lower bound 0.46) below floor 0.80; no exploration"
        assert reason(sel, "strong")[1].endswith("meets floor 0.80")


def test_learned_evidence_can_unprove_the_catalog_favourite() -> None:
    qb = qbook()
    for _ in range(60):
        qb.observe("t", "strong", False)
    sig = qb.signal("t", "strong")
    assert not sig.proven(FLOOR) and sig.mean < 0.5


def test_min_samples_to_prove_applies_when_the_prior_does_not_vouch() -> None:
    qb = qbook(prior_strength=1.0, pool_strength=1.0, min_samples=5, confidence=0.5)
    for _ in range(3):
        qb.observe("t", "cheap", True, 0.95)
    kind, note = level(qb, "t", "cheap")
    assert qb.signal("t", "cheap").lower_bound >= FLOOR and kind is not Level.PROVEN
    assert "not yet backed by enough observations" in note
    for _ in range(2):
        qb.observe("t", "cheap", True, 0.95)
    assert level(qb, "t", "cheap")[0] is Level.PROVEN
    # The prior vouches for strong, so it needs no observations at all.
    assert level(qb, "t", "strong")[0] is Level.PROVEN


# -- critical lanes -------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("labels", "critical_policy", "critical"),
    [({}, False, False), ({"lane": "prod"}, False, True), ({"lane": "batch"}, False, False),
     ({}, True, True)],
)
def test_is_critical(labels: dict[str, str], critical_policy: bool, critical: bool) -> None:
    pol = Policy("p", ("cheap",), critical=critical_policy)
    assert is_critical(task(**labels), pol, {"prod"}) is critical


@pytest.mark.parametrize("seed", range(20))
def test_critical_never_qualifies_an_unproven_model(seed: int) -> None:
    qb = qbook(max_share=1.0)
    for _ in range(20):
        qb.note_decision("job", False)  # plenty of exploration budget
    for _ in range(4):
        qb.observe("job", "cheap", True, 0.95)  # promising but unproven: too few outcomes
    for cat, labels in ((catalog(critical=True), {}), (catalog(), {"lane": "prod"})):
        # No draws are made at all on a critical lane (the rng would fail the test).
        sel = route(qb, task("job", **labels), cat, _NO_DRAWS)
        assert sel.chosen is not None and sel.chosen.model == "strong"
        rej, why = reason(sel, "cheap")
        assert rej is Rejection.QUALITY
        assert why.startswith("unproven on a critical lane: 0.") and "floor 0.80" in why
        assert not sel.explored


def test_exploration_admits_an_unproven_model_off_critical_lanes() -> None:
    qb = qbook(max_share=1.0)
    for _ in range(20):
        qb.note_decision("job", False)
    rng = random.Random(7)
    explored = 0
    for _ in range(200):
        sel = route(qb, task("job"), catalog(), rng)
        assert sel.chosen is not None
        if sel.explored:
            explored += 1
            assert sel.chosen.model in {"cheap", "mid"}
            assert "; exploring: " in sel.chosen.reason
        else:
            assert sel.chosen.model == "strong"
    assert 0 < explored < 200


# -- exploration budget ---------------------------------------------------------------------

@pytest.mark.parametrize(("max_share", "seed"), [(0.1, 1), (0.05, 2), (0.3, 3)])
def test_exploration_share_is_bounded(max_share: float, seed: int) -> None:
    qb = qbook(max_share=max_share)
    rng = random.Random(seed)
    explored = 0
    for i in range(1, 2001):
        sel = route(qb, task("job"), catalog(), rng)
        assert sel.chosen is not None
        qb.note_decision("job", sel.explored)
        explored += sel.explored
        assert qb.exploration_share("job") <= max_share + 1e-9
        assert explored <= max_share * i + 1e-9
    assert explored >= max_share * 2000 * 0.5  # the budget is actually used


def test_the_share_is_per_task_type() -> None:
    qb = qbook(max_share=0.5)
    for _ in range(10):
        qb.note_decision("a", True)
    assert qb.exploration("a") is Exploration.SPENT
    assert qb.exploration("b") is Exploration.SPENT  # a fresh type needs decisions first
    qb.note_decision("b", False)
    assert qb.exploration("b") is Exploration.SPENT
    qb.note_decision("b", False)  # one explored decision in three stays within half
    assert qb.exploration("b") is Exploration.ON
    assert qbook(explore=False).exploration("b") is Exploration.OFF


@pytest.mark.parametrize("explore", [False, True])
def test_no_exploration_when_disabled_or_spent(explore: bool) -> None:
    qb = qbook(explore=explore, max_share=0.0)
    for _ in range(50):
        qb.note_decision("job", False)
    sel = route(qb, task("job"), catalog(), _NO_DRAWS)
    why = "exploration share spent" if explore else "no exploration"
    assert reason(sel, "cheap")[1].endswith(f"; {why}")


# -- forgetting -----------------------------------------------------------------------------

@pytest.mark.parametrize(("forget", "follows"), [(0.98, True), (1.0, False)])
def test_forgetting_follows_drift(forget: float, follows: bool) -> None:
    qb = qbook(forget=forget)
    for _ in range(400):
        qb.observe("job", "cheap", True, 0.95)
    assert qb.signal("job", "cheap").proven(FLOOR)
    for _ in range(60):
        qb.observe("job", "cheap", True, 0.40)  # the model got worse
    sig = qb.signal("job", "cheap")
    assert sig.proven(FLOOR) is not follows
    if follows:
        assert sig.mean < 0.65 and sig.samples == pytest.approx(1 / (1 - forget), rel=0.01)
    else:
        assert sig.mean > 0.85 and sig.samples == pytest.approx(460)


# -- persistence ----------------------------------------------------------------------------

def test_snapshot_restore_round_trips_exactly() -> None:
    qb = qbook()
    for i in range(300):
        kind = ("a", "b", "c")[i % 3]
        qb.observe(kind, ("cheap", "mid", "strong")[i % 7 % 3], i % 4 != 0,
                   None if i % 2 else (i % 10) / 10)
        qb.note_decision(kind, i % 11 == 0)
    snap = qb.snapshot()
    assert snap.pooled
    again = qbook()
    again.restore(snap)
    assert again.snapshot() == snap
    assert again.stats() == qb.stats()
    for kind in ("a", "b", "c", "z"):
        assert again.exploration_share(kind) == qb.exploration_share(kind)
        assert again.exploration(kind) is qb.exploration(kind)
        for m in MODELS:
            assert again.signal(kind, m, random.Random(1)) == qb.signal(kind, m, random.Random(1))
    again.restore(LearningSnapshot())
    assert again.snapshot() == LearningSnapshot()


def test_a_snapshot_from_before_pooling_rebuilds_the_pool() -> None:
    qb = qbook()
    for kind in ("a", "b"):
        for _ in range(30):
            qb.observe(kind, "cheap", True, 0.9)
    snap = qb.snapshot()
    again = qbook()
    again.restore(LearningSnapshot(snap.estimates, snap.shares))
    # Summing per-type evidence forgets a little less than the real pool did: close, not equal.
    assert again.signal("new", "cheap").mean == pytest.approx(qb.signal("new", "cheap").mean,
                                                              abs=0.01)


def test_task_types_are_bounded_least_recently_updated_first() -> None:
    qb = qbook(max_task_types=2)
    for kind in ("a", "b", "a", "c"):
        qb.observe(kind, "cheap", True)
        qb.note_decision(kind, False)
    snap = qb.snapshot()
    assert [r.task_type for r in snap.estimates] == ["a", "c"]
    assert [r.task_type for r in snap.shares] == ["a", "c"]


def test_learning_config_defaults_in_the_shipped_config() -> None:
    cfg = parse_config("""
models: {m: {provider: p, tier: 1, input_per_mtok: 1, output_per_mtok: 1,
             context_window: 1000, tokens_per_s: 10, quality: 0.5}}
policies: {main: {models: [m]}}
default_policy: main
critical_lanes: [prod]
learning: {forget: 0.99, exploration: {max_share: 0.2}}
""")
    settings = cfg.settings()
    assert settings.critical_lanes == frozenset({"prod"})
    assert settings.learning.forget == 0.99 and settings.learning.exploration.max_share == 0.2
    assert settings.learning.prior_strength == LearningSettings().prior_strength


def test_config_defaults_are_the_settings_defaults() -> None:
    cfg = parse_config("""
models: {m: {provider: p, tier: 1, input_per_mtok: 1, output_per_mtok: 1,
             context_window: 1000, tokens_per_s: 10, quality: 0.5}}
policies: {main: {models: [m]}}
default_policy: main
""")
    settings = cfg.settings()
    defaults = RouterSettings()
    assert (settings.health, settings.learning, settings.ledger, settings.outcomes) == (
        defaults.health, defaults.learning, defaults.ledger, defaults.outcomes)


def test_graded_scores_prove_faster_than_pass_fail_at_the_same_mean() -> None:
    # Both average 0.9 over 100 reports; graded scores cluster near 0.9, pass/fail
    # outcomes swing between 0 and 1, so only the graded evidence is tight enough.
    graded, binary = qbook(), qbook()
    rng = random.Random(3)
    for i in range(100):
        graded.observe("t", "cheap", True, 0.9 + rng.uniform(-0.03, 0.03))
        binary.observe("t", "cheap", i % 10 != 0)
    g, b = graded.signal("t", "cheap"), binary.signal("t", "cheap")
    assert abs(g.mean - b.mean) < 0.01
    assert g.lower_bound > b.lower_bound + 0.015
    floor = (g.lower_bound + b.lower_bound) / 2
    assert g.proven(floor) and not b.proven(floor)


def test_snapshots_without_squares_restore_as_pass_fail() -> None:
    qb = qbook()
    for _ in range(30):
        qb.observe("t", "cheap", True, 0.9)
    rows = qb.snapshot()
    old = LearningSnapshot(
        tuple(dataclasses.replace(r, evidence_sq=None) for r in rows.estimates), rows.shares,
        tuple(dataclasses.replace(r, evidence_sq=None) for r in rows.pooled),
    )
    restored = qbook()
    restored.restore(old)
    assert restored.mean("t", "cheap") == pytest.approx(qb.mean("t", "cheap"))
    assert restored.signal("t", "cheap").lower_bound < qb.signal("t", "cheap").lower_bound
