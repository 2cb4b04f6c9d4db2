"""QualityBook: priors, convergence, confidence, critical lanes, exploration, drift, restore."""

from __future__ import annotations

import dataclasses
import random

import pytest

from routing_sidecar.config import ExplorationConfig, LearningConfig, parse_config
from routing_sidecar.core.catalog import Catalog
from routing_sidecar.core.learning import (
    LearningSnapshot,
    QualityBook,
    QualityGate,
    describe,
    is_critical,
)
from routing_sidecar.core.selection import Signals, select
from routing_sidecar.domain import (
    Objective,
    Policy,
    QualityEstimate,
    Rejection,
    Requirements,
    Selection,
    Task,
    TierRules,
)
from tests.unit.conftest import spec

CHEAP = spec("cheap", "a", 1, inp=0.3, out=1.2, q=0.72)
STRONG = spec("strong", "b", 1, inp=3.0, out=15.0, q=0.93)
MID = spec("mid", "c", 1, inp=1.0, out=5.0, q=0.86)
MODELS = {m.name: m for m in (CHEAP, STRONG, MID)}
PRIOR = {name: m.quality for name, m in MODELS.items()}
FLOOR = 0.8


def qbook(*, explore: bool = True, max_share: float = 0.1, min_samples: float = 5,
          **kw: float) -> QualityBook:
    cfg = LearningConfig(exploration=ExplorationConfig(
        enabled=explore, max_share=max_share, min_samples_to_prove=min_samples), **kw)
    return QualityBook(cfg, PRIOR.__getitem__)


def catalog(*, critical: bool = False) -> Catalog:
    pol = Policy("main", ("cheap", "mid", "strong"), objective=Objective.COST_SPEED,
                 quality_floor=FLOOR, critical=critical)
    return Catalog.build(tuple(MODELS.values()), (pol,), (), (), TierRules(), "main")


def task(task_type: str = "job", **labels: str) -> Task:
    return Task("t", task_type, estimated_input_tokens=1000, labels=labels)


def route(qb: QualityBook, t: Task, cat: Catalog, rng: random.Random | None = None
          ) -> tuple[Selection, QualityGate]:
    policy = cat.policies["main"]
    gate = qb.gate(is_critical(t, policy, frozenset({"prod"})), rng)
    sel = select(t, cat, Signals(quality=qb.quality, quality_check=gate))
    return gate.annotate(sel), gate


def reason(sel: Selection, model: str) -> tuple[Rejection, str]:
    (a,) = [a for a in sel.alternatives if a.model == model]
    return a.rejection, a.reason


# -- prior and estimate ---------------------------------------------------------------------

@pytest.mark.parametrize(
    ("model", "proven"),
    [("strong", True), ("mid", False), ("cheap", False)],  # mid: 0.86, lower bound 0.796
)
def test_a_fresh_book_starts_from_the_catalog(model: str, proven: bool) -> None:
    qb = qbook()
    est = qb.estimate("anything", model)
    assert est.mean == pytest.approx(PRIOR[model]) and est.samples == 0.0
    assert est.lower_bound < est.mean
    q = qb.qualify("anything", model, FLOOR)
    assert (q.ok, q.explored) == (proven, False)
    assert qb.quality("anything", MODELS[model]) == PRIOR[model]


def test_describe_rounds_the_bound_down() -> None:
    assert describe(QualityEstimate(0.86, 0.0, 0.7963)) == "0.86 (n=0, lower bound 0.79)"
    assert describe(QualityEstimate(0.9, 12.4, 0.8)) == "0.90 (n=12, lower bound 0.80)"


@pytest.mark.parametrize(
    ("success", "quality", "y"),
    [(True, None, 1.0), (False, None, 0.0), (True, 0.6, 0.6), (False, 0.3, 0.3),
     (True, 1.7, 1.0), (True, -1.0, 0.0)],
)
def test_observation_scores_quality_else_success(
    success: bool, quality: float | None, y: float
) -> None:
    qb = qbook(prior_strength=0.0)
    qb.observe("t", "cheap", success, quality)
    assert qb.estimate("t", "cheap").mean == pytest.approx(y)
    (row,) = qb.stats()
    assert row.success_rate == float(success)
    assert row.graded == (quality is not None)


# -- convergence: cheapest capable --------------------------------------------------------

@pytest.mark.parametrize(
    ("task_type", "cheap_quality", "chosen"),
    [("docs_fix", 0.93, "cheap"), ("architecture", 0.45, "strong")],
)
def test_learning_drives_the_cheapest_capable_choice(
    task_type: str, cheap_quality: float, chosen: str
) -> None:
    qb = qbook()
    cat = catalog()
    sel, _ = route(qb, task(task_type), cat)
    assert sel.chosen is not None and sel.chosen.model == "strong"  # the catalog says so
    for _ in range(100):
        qb.observe(task_type, "cheap", True, cheap_quality)
    sel, _ = route(qb, task(task_type), cat)
    assert sel.chosen is not None and sel.chosen.model == chosen
    rej, why = reason(sel, "cheap")
    if chosen == "cheap":
        assert rej is Rejection.CHOSEN
        assert why.startswith("chosen: best score; proven: 0.89 (n=79, lower bound 0.88)")
        assert sel.chosen.reason == why
        assert sel.chosen.estimated_quality == pytest.approx(qb.estimate(task_type, "cheap").mean)
    else:
        assert rej is Rejection.QUALITY
        assert why == "unproven: 0.50 (n=79, lower bound 0.49) below floor 0.80; no exploration"
        assert reason(sel, "strong")[1].endswith("meets floor 0.80")


def test_learned_evidence_can_unprove_the_catalog_favourite() -> None:
    qb = qbook()
    for _ in range(60):
        qb.observe("t", "strong", False)
    q = qb.qualify("t", "strong", FLOOR)
    assert not q.ok and q.estimate.mean < 0.5


def test_min_samples_to_prove_applies_when_the_catalog_does_not_vouch() -> None:
    qb = qbook(prior_strength=1.0, min_samples=5, confidence=0.5)
    for _ in range(3):
        qb.observe("t", "cheap", True, 0.95)
    q = qb.qualify("t", "cheap", FLOOR)
    assert q.estimate.lower_bound >= FLOOR and not q.ok
    assert "needs 5 observations" in q.reason
    for _ in range(2):
        qb.observe("t", "cheap", True, 0.95)
    assert qb.qualify("t", "cheap", FLOOR).ok
    # The catalog vouches for strong, so it needs no observations at all.
    assert qb.qualify("t", "strong", FLOOR).ok


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
    for _ in range(10):
        qb.observe("job", "cheap", True, 0.95)  # promising but unproven
    rng = random.Random(seed)
    for cat, labels in ((catalog(critical=True), {}), (catalog(), {"lane": "prod"})):
        sel, gate = route(qb, task("job", **labels), cat, rng)
        assert sel.chosen is not None and sel.chosen.model == "strong"
        rej, why = reason(sel, "cheap")
        assert rej is Rejection.QUALITY
        assert why.startswith("unproven on a critical lane: 0.") and "below floor 0.80" in why
        assert not gate.explored("cheap")
    # Off the critical lane the same evidence gets explored for some seeds (checked below).


def test_exploration_admits_an_unproven_model_off_critical_lanes() -> None:
    qb = qbook(max_share=1.0)
    for _ in range(20):
        qb.note_decision("job", False)
    rng = random.Random(7)
    explored = 0
    for _ in range(200):
        sel, gate = route(qb, task("job"), catalog(), rng)
        assert sel.chosen is not None
        if gate.explored(sel.chosen.model):
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
        sel, gate = route(qb, task("job"), catalog(), rng)
        assert sel.chosen is not None
        was = gate.explored(sel.chosen.model)
        qb.note_decision("job", was)
        explored += was
        assert qb.exploration_share("job") <= max_share + 1e-9
        assert explored <= max_share * i + 1e-9
    assert explored >= max_share * 2000 * 0.5  # the budget is actually used
    spent = qb.qualify("job", "cheap", FLOOR, rng=random.Random(0))
    assert spent.ok or "exploration share spent" in spent.reason or "sampled" in spent.reason


def test_the_share_is_per_task_type() -> None:
    qb = qbook(max_share=0.5)
    for _ in range(10):
        qb.note_decision("a", True)
    assert not qb.can_explore("a")
    assert qb.can_explore("b") is False  # a fresh type needs decisions before its first
    qb.note_decision("b", False)
    assert not qb.can_explore("b")
    qb.note_decision("b", False)  # one explored decision in three stays within half
    assert qb.can_explore("b")


@pytest.mark.parametrize(("explore", "rng"), [(False, random.Random(1)), (True, None)])
def test_no_exploration_when_disabled_or_without_randomness(
    explore: bool, rng: random.Random | None
) -> None:
    qb = qbook(explore=explore, max_share=1.0)
    for _ in range(50):
        qb.note_decision("job", False)
    for _ in range(50):
        q = qb.qualify("job", "cheap", FLOOR, rng=rng)
        assert not q.ok and q.reason.endswith("; no exploration")


# -- forgetting -----------------------------------------------------------------------------

@pytest.mark.parametrize(("forget", "follows"), [(0.98, True), (1.0, False)])
def test_forgetting_follows_drift(forget: float, follows: bool) -> None:
    qb = qbook(forget=forget)
    for _ in range(400):
        qb.observe("job", "cheap", True, 0.95)
    assert qb.qualify("job", "cheap", FLOOR).ok
    for _ in range(60):
        qb.observe("job", "cheap", True, 0.40)  # the model got worse
    est = qb.estimate("job", "cheap")
    assert qb.qualify("job", "cheap", FLOOR).ok is not follows
    if follows:
        assert est.mean < 0.65 and est.samples == pytest.approx(1 / (1 - forget), rel=0.01)
    else:
        assert est.mean > 0.85 and est.samples == pytest.approx(460)


# -- persistence ----------------------------------------------------------------------------

def test_snapshot_restore_round_trips_exactly() -> None:
    qb = qbook()
    rng = random.Random(3)
    for i in range(300):
        kind = ("a", "b", "c")[i % 3]
        qb.observe(kind, ("cheap", "mid", "strong")[i % 7 % 3], i % 4 != 0,
                   None if i % 2 else (i % 10) / 10)
        qb.note_decision(kind, i % 11 == 0)
    snap = qb.snapshot()
    again = qbook()
    again.restore(snap)
    assert again.snapshot() == snap
    assert again.stats() == qb.stats()
    for kind in ("a", "b", "c", "z"):
        assert again.exploration_share(kind) == qb.exploration_share(kind)
        for m in MODELS:
            assert again.estimate(kind, m) == qb.estimate(kind, m)
            assert again.qualify(kind, m, FLOOR, rng=random.Random(1)) == \
                qb.qualify(kind, m, FLOOR, rng=random.Random(1))
    again.restore(LearningSnapshot())
    assert again.snapshot() == LearningSnapshot()
    del rng


def test_task_types_are_bounded_least_recently_updated_first() -> None:
    qb = qbook(max_task_types=2)
    for kind in ("a", "b", "a", "c"):
        qb.observe(kind, "cheap", True)
        qb.note_decision(kind, False)
    snap = qb.snapshot()
    assert [r.task_type for r in snap.estimates] == ["a", "c"]
    assert [r.task_type for r in snap.shares] == ["a", "c"]


# -- selection wiring -----------------------------------------------------------------------

def test_the_quality_check_runs_only_under_a_floor() -> None:
    calls: list[str] = []

    def check(t: Task, m: object, floor: float) -> None:
        calls.append(getattr(m, "name", ""))

    pol = Policy("main", ("cheap", "strong"))
    cat = Catalog.build(tuple(MODELS.values()), (pol,), (), (), TierRules(), "main")
    select(task(), cat, Signals(quality_check=check))
    assert calls == []
    t = Task("t", "job", requires=Requirements(min_quality=0.99), estimated_input_tokens=10)
    sel = select(t, cat, Signals(quality_check=check))
    assert calls == ["cheap", "strong"]  # the learned check replaces the plain floor test
    assert sel.chosen is not None


def test_annotate_leaves_a_selection_without_verdicts_alone() -> None:
    qb = qbook()
    pol = Policy("main", ("cheap", "strong"))
    cat = Catalog.build(tuple(MODELS.values()), (pol,), (), (), TierRules(), "main")
    gate = qb.gate(False, None)
    sel = select(task(), cat, Signals(quality=qb.quality, quality_check=gate))
    assert gate.annotate(sel) is sel


def test_learning_config_defaults_in_the_shipped_config() -> None:
    cfg = parse_config("""
models: {m: {provider: p, tier: 1, input_per_mtok: 1, output_per_mtok: 1,
             context_window: 1000, tokens_per_s: 10, quality: 0.5}}
policies: {main: {models: [m]}}
default_policy: main
critical_lanes: [prod]
learning: {forget: 0.99, exploration: {max_share: 0.2}}
""")
    assert cfg.critical_lane_set() == frozenset({"prod"})
    assert cfg.learning.forget == 0.99 and cfg.learning.exploration.max_share == 0.2
    assert cfg.learning.prior_strength == LearningConfig().prior_strength


def test_graded_scores_prove_faster_than_pass_fail_at_the_same_mean() -> None:
    # Both average 0.9 over 100 reports; graded scores cluster near 0.9, pass/fail
    # outcomes swing between 0 and 1, so only the graded evidence is tight enough for 0.85.
    graded, binary = qbook(), qbook()
    rng = random.Random(3)
    for i in range(100):
        graded.observe("t", "cheap", True, 0.9 + rng.uniform(-0.03, 0.03))
        binary.observe("t", "cheap", i % 10 != 0)
    g, b = graded.estimate("t", "cheap"), binary.estimate("t", "cheap")
    assert abs(g.mean - b.mean) < 0.01
    assert g.lower_bound > b.lower_bound + 0.015
    floor = (g.lower_bound + b.lower_bound) / 2
    assert graded.qualify("t", "cheap", floor).ok
    assert not binary.qualify("t", "cheap", floor).ok


def test_snapshots_without_squares_restore_as_pass_fail() -> None:
    qb = qbook()
    for _ in range(30):
        qb.observe("t", "cheap", True, 0.9)
    rows = qb.snapshot()
    old = LearningSnapshot(
        tuple(dataclasses.replace(r, evidence_sq=None) for r in rows.estimates), rows.shares
    )
    restored = qbook()
    restored.restore(old)
    assert restored.estimate("t", "cheap").mean == pytest.approx(qb.estimate("t", "cheap").mean)
    assert restored.estimate("t", "cheap").lower_bound < qb.estimate("t", "cheap").lower_bound
