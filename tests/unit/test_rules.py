"""Rule matching, policy and objective resolution, percentile math, catalog checks."""

from __future__ import annotations

import pytest

from routing_sidecar.core.catalog import Catalog
from routing_sidecar.core.rules import (
    matches,
    percentile,
    reservation_reason,
    resolve_objective,
    resolve_policy,
    tier_ceiling,
)
from routing_sidecar.domain import Match, Objective, Policy, Rule, ShapeRule, Task, TierRules
from routing_sidecar.errors import ConfigError, InvalidArgument
from tests.unit.conftest import spec


def task(task_type: str = "fix_bug", priority: int = 50, **kw: object) -> Task:
    return Task("t-1", task_type, priority, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("match", "t", "expected"),
    [
        (Match(), task("anything"), True),
        (Match(("fix_bug",)), task("fix_bug"), True),
        (Match(("fix_bug",)), task("fix_bugs"), False),
        (Match(("fix_bug",)), task("FIX_BUG"), False),
        (Match(("docs_*",)), task("docs_update"), True),
        (Match(("docs_*",)), task("update_docs"), False),
        (Match(("*test*",)), task("run_unit_tests"), True),
        (Match(("lint?",)), task("lint1"), True),
        (Match(("lint?",)), task("lint12"), False),
        (Match(("type_[ab]",)), task("type_b"), True),
        (Match(("type_[ab]",)), task("type_c"), False),
        (Match(("a", "b_*", "c")), task("b_x"), True),
        (Match(("a", "b_*", "c")), task("c"), True),
        (Match(("a", "b_*", "c")), task("d"), False),
        (Match(priority_min=30, priority_max=60), task(priority=30), True),
        (Match(priority_min=30, priority_max=60), task(priority=60), True),
        (Match(priority_min=30, priority_max=60), task(priority=29), False),
        (Match(priority_min=30, priority_max=60), task(priority=61), False),
        (Match(priority_max=30), task(priority=0), True),
        (Match(labels={"project": "alpha"}), task(labels={"project": "alpha", "x": "1"}), True),
        (Match(labels={"project": "alpha"}), task(labels={"project": "beta"}), False),
        (Match(labels={"project": "alpha"}), task(labels={}), False),
        (Match(labels={"a": "1", "b": "2"}), task(labels={"a": "1"}), False),
        (Match(("docs_*",), None, 30, {"lane": "x"}), task("docs_a", 30, labels={"lane": "x"}),
         True),
        (Match(("docs_*",), None, 30, {"lane": "x"}), task("docs_a", 31, labels={"lane": "x"}),
         False),
    ],
)
def test_matches(match: Match, t: Task, expected: bool) -> None:
    assert matches(match, t) is expected


def _catalog(rules: list[Rule], shapes: tuple[ShapeRule, ...] = (),
             objective: Objective | None = None) -> Catalog:
    models = [spec("m1")]
    policies = [Policy(n, ("m1",), objective=objective) for n in ("normal", "code", "ops", "hi")]
    return Catalog.build(models, policies, rules, shapes, default_policy="normal")


RULES = [
    Rule(Match(("fix_bug", "deploy_code")), "code"),
    Rule(Match(("docs_*",), priority_max=30), "ops"),
    Rule(Match(("docs_*",), priority_min=90), "hi"),
    Rule(Match(labels={"lane": "ops"}), "ops"),
    Rule(Match(("fix_*",)), "hi"),  # shadowed for fix_bug by the first rule
]


@pytest.mark.parametrize(
    ("t", "policy"),
    [
        (task("fix_bug"), "code"),
        (task("deploy_code"), "code"),
        (task("fix_typo"), "hi"),
        (task("docs_api", 30), "ops"),
        (task("docs_api", 31), "normal"),
        (task("docs_api", 95), "hi"),
        (task("other", labels={"lane": "ops"}), "ops"),
        (task("fix_bug", labels={"lane": "ops"}), "code"),  # first match wins
        (task("other"), "normal"),
        (task("fix_bug", policy="ops"), "ops"),  # override beats rules
    ],
)
def test_resolve_policy(t: Task, policy: str) -> None:
    assert resolve_policy(t, _catalog(RULES)).name == policy


def test_rule_cache_does_not_freeze_priority_or_labels() -> None:
    cat = _catalog(RULES)
    answers = [resolve_policy(task("docs_api", p), cat).name for p in (10, 50, 95, 10)]
    assert answers == ["ops", "normal", "hi", "ops"]


def test_unknown_override_policy_is_invalid_argument() -> None:
    with pytest.raises(InvalidArgument) as err:
        resolve_policy(task(policy="nope"), _catalog(RULES))
    assert err.value.field == "policy"
    assert "unknown policy 'nope'" in str(err.value)


SHAPES = (
    ShapeRule(Match(("docs_*", "check_links")), Objective.COST_SPEED),
    ShapeRule(Match(("strategic_*",)), Objective.QUALITY),
    ShapeRule(Match(labels={"complexity": "high"}), Objective.QUALITY),
)


@pytest.mark.parametrize(
    ("t", "policy_objective", "expected"),
    [
        (task("docs_api", objective=Objective.QUALITY), Objective.COST_SPEED, Objective.QUALITY),
        (task("docs_api"), Objective.BALANCED, Objective.BALANCED),
        (task("docs_api"), None, Objective.COST_SPEED),
        (task("strategic_plan"), None, Objective.QUALITY),
        (task("docs_api", labels={"complexity": "high"}), None, Objective.COST_SPEED),
        (task("other", labels={"complexity": "high"}), None, Objective.QUALITY),
        (task("other"), None, Objective.BALANCED),
        (task("other", objective=Objective.COST_SPEED), None, Objective.COST_SPEED),
    ],
)
def test_resolve_objective_order(
    t: Task, policy_objective: Objective | None, expected: Objective
) -> None:
    cat = _catalog([], SHAPES, policy_objective)
    assert resolve_objective(t, cat.policies["normal"], cat) is expected


@pytest.mark.parametrize(
    ("task_type", "priority", "policy", "objective"),
    [
        ("fix_bug", 50, "code", Objective.BALANCED),
        ("investigate_error", 50, "code", Objective.BALANCED),
        ("research_market", 50, "deep_research", Objective.QUALITY),
        ("check_links", 20, "ops", Objective.COST_SPEED),
        ("check_links", 50, "normal", Objective.COST_SPEED),
        ("docs_update", 30, "ops", Objective.COST_SPEED),
        ("strategic_design", 50, "normal", Objective.QUALITY),
        ("write_email", 50, "normal", Objective.BALANCED),
    ],
)
def test_shipped_config_rules_and_shapes(
    router_catalog: Catalog, task_type: str, priority: int, policy: str, objective: Objective
) -> None:
    t = task(task_type, priority)
    pol = resolve_policy(t, router_catalog)
    assert pol.name == policy
    assert resolve_objective(t, pol, router_catalog) is objective


@pytest.mark.parametrize(
    ("values", "pct", "expected"),
    [
        ([1.0, 2.0, 3.0, 4.0], 50, 2.5),
        ([1.0, 2.0, 3.0, 4.0], 90, 3.7),
        ([1.0, 2.0, 3.0, 4.0], 0, 1.0),
        ([1.0, 2.0, 3.0, 4.0], 100, 4.0),
        ([4.0, 1.0, 3.0, 2.0], 25, 1.75),
        ([7.0], 90, 7.0),
        ([10.0, 0.0], 90, 9.0),
        (list(range(1, 101)), 90, 90.1),
    ],
)
def test_percentile(values: list[float], pct: float, expected: float) -> None:
    assert percentile(values, pct) == pytest.approx(expected)


def test_percentile_empty_and_bad_pct() -> None:
    assert percentile([], 90) is None
    with pytest.raises(ValueError, match=r"0\.\.100"):
        percentile([1.0], 101)
    with pytest.raises(ValueError, match=r"0\.\.100"):
        percentile([1.0], float("nan"))


def test_percentile_does_not_sort_callers_list() -> None:
    values = [3.0, 1.0, 2.0]
    percentile(values, 50)
    assert values == [3.0, 1.0, 2.0]


@pytest.mark.parametrize(
    ("policies", "rules", "default", "problem"),
    [
        ([Policy("a", ("m1", "ghost"))], [], "a", "policies.a.models[1]: unknown model 'ghost'"),
        ([Policy("a", ("m1",))], [Rule(Match(), "b")], "a", "rules[0].policy: unknown policy 'b'"),
        ([Policy("a", ("m1",))], [], "zzz", "default_policy: unknown policy 'zzz'"),
        ([Policy("a", ())], [], "a", "policies.a.models: empty"),
    ],
)
def test_catalog_refuses_inconsistent_input(
    policies: list[Policy], rules: list[Rule], default: str, problem: str
) -> None:
    with pytest.raises(ConfigError) as err:
        Catalog.build([spec("m1")], policies, rules, (), default_policy=default)
    assert problem in err.value.problems


@pytest.mark.parametrize(
    ("t", "cheapest", "threshold", "ceiling"),
    [
        (task(priority=50), 1, None, 1),
        (task(priority=50), 2, None, 2),  # never below the cheapest capable tier
        (task(priority=94), 1, 12.0, 1),
        (task(priority=95), 1, 12.0, None),
        (task(ev=12.5), 1, 12.0, None),
        (task(ev=12.0), 1, 12.0, 1),
        (task(ev=1e9), 1, None, 1),
    ],
)
def test_tier_ceiling(t: Task, cheapest: int, threshold: float | None, ceiling: int | None) -> None:
    assert tier_ceiling(t, TierRules(), cheapest, threshold) == ceiling


@pytest.mark.parametrize(
    ("t", "threshold", "reason"),
    [
        (task(ev=0.4), 12.0, "ev 0.40 not above recent P90 12.00 and priority 50 < 95"),
        (task(ev=0.4), None, "ev 0.40 but too few recent EVs for a P90 and priority 50 < 95"),
        (task(priority=7), 12.0, "no ev given and priority 7 < 95"),
    ],
)
def test_reservation_reason(t: Task, threshold: float | None, reason: str) -> None:
    assert reservation_reason(t, TierRules(), threshold) == reason
