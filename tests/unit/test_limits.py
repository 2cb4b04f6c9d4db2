"""Label limits: scope labels normalised, new values capped; the config folds its scopes."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from routing_sidecar.config import LimitsConfig, parse_config
from routing_sidecar.core.budget_rules import EntryKind, LedgerEntry
from routing_sidecar.domain import BudgetPeriod, Task
from routing_sidecar.errors import ConfigError, InvalidArgument, ResourceExhausted
from routing_sidecar.service.limits import LabelLimits, fold_entries
from routing_sidecar.settings import LimitSettings

ROUTER_YAML = Path(__file__).resolve().parents[2] / "config" / "router.yaml"


def task(**labels: str) -> Task:
    return Task("t", "fix_bug", labels=labels)


def caps(casefold: bool = True, **caps: int) -> LimitSettings:
    return LimitSettings(caps, casefold)


def config(**extra: object) -> dict:  # type: ignore[type-arg]
    raw = yaml.safe_load(ROUTER_YAML.read_text())
    raw.update(extra)
    return raw  # type: ignore[no-any-return]


@pytest.mark.parametrize(("value", "scope"), [
    ("alpha", "alpha"), ("ALPHA", "alpha"), ("Team.A/b-c_d", "team.a/b-c_d"),
])
def test_scope_labels_are_folded(value: str, scope: str) -> None:
    out = LabelLimits().admit(task(project=value, worker=value.upper(), layer="API"),
                              caps(project=10))
    assert out.labels == {"project": scope, "worker": scope, "layer": "API"}


def test_untouched_labels_keep_the_task_itself() -> None:
    t = task(project="alpha", lane="Fast")
    assert LabelLimits().admit(t, caps(project=10)) is t


@pytest.mark.parametrize("value", ["al pha", "alpha*", "alpha\n", "caf\u00e9", "a:b", "a\x00"])
def test_values_that_cannot_name_a_scope_are_refused(value: str) -> None:
    limits = LabelLimits()
    with pytest.raises(InvalidArgument) as err:
        limits.admit(task(project=value), caps(project=10))
    assert err.value.field == "labels[project]"
    assert limits.known("project") == 0


def test_casefold_off_keeps_case_but_still_checks_the_charset() -> None:
    limits, settings = LabelLimits(), caps(False, project=10)
    assert limits.admit(task(project="ALPHA"), settings).labels == {"project": "ALPHA"}
    with pytest.raises(InvalidArgument):
        limits.admit(task(project="AL PHA"), settings)


def test_cap_refuses_new_values_counts_them_and_keeps_known_ones() -> None:
    refused: list[str] = []
    limits, settings = LabelLimits(), caps(project=2, lane=1)
    limits.on_refused = refused.append
    limits.admit(task(project="a"), settings)
    limits.admit(task(project="B"), settings)
    with pytest.raises(ResourceExhausted) as err:
        limits.admit(task(project="c"), settings)
    assert err.value.field == "labels[project]"
    assert refused == ["project"]
    for value in ("a", "A", "b"):
        limits.admit(task(project=value), settings)
    assert limits.known("project") == 2


def test_a_refusal_admits_nothing_of_the_request() -> None:
    limits, settings = LabelLimits(), caps(project=1, lane=5)
    limits.admit(task(project="a"), settings)
    with pytest.raises(ResourceExhausted):
        limits.admit(task(lane="l1", project="b"), settings)
    assert limits.known("lane") == 0


def test_uncapped_and_empty_values_are_not_tracked() -> None:
    limits = LabelLimits()
    for i in range(50):
        limits.admit(task(ticket=f"T-{i}", project=""), caps(project=1))
    assert limits.known("ticket") == limits.known("project") == 0


def test_known_values_work_beyond_the_cap() -> None:
    limits = LabelLimits(known=[("project", "old1"), ("project", "old2")])
    assert limits.known("project") == 2
    limits.admit(task(project="OLD1"), caps(project=1))
    with pytest.raises(ResourceExhausted):
        limits.admit(task(project="new"), caps(project=1))


def test_a_raised_cap_admits_new_values_at_once() -> None:
    limits = LabelLimits()
    limits.admit(task(worker="w1"), caps(worker=1))
    with pytest.raises(ResourceExhausted):
        limits.admit(task(worker="w2"), caps(worker=1))
    limits.admit(task(worker="w2"), caps(worker=2))


def test_fold_entries_merges_old_mixed_case_rows() -> None:
    def row(scope: str) -> LedgerEntry:
        return LedgerEntry(EntryKind.RESERVE, "r", scope, BudgetPeriod.DAY, 0.0, 1.0, 5, 0.0)

    rows = [row("project:Alpha"), row("worker:W1"), row("model:GPT-5"), row("global")]
    folded = [e.scope for e in fold_entries(rows, casefold=True)]
    assert folded == ["project:alpha", "worker:w1", "model:GPT-5", "global"]
    assert [e.scope for e in fold_entries(rows, casefold=False)] == [e.scope for e in rows]


# -- config ----------------------------------------------------------------------------------


def test_limits_defaults_and_caps() -> None:
    cfg = parse_config(yaml.safe_dump(config()), "t")
    assert cfg.limits == LimitsConfig()
    assert cfg.settings().limits == LimitSettings()
    assert dict(LimitSettings().caps) == {"layer": 1000, "project": 1000, "worker": 1000,
                                          "lane": 100}
    custom = LimitsConfig(max_label_values=7, capped_labels=["layer", "team", "project"],
                          max_projects=3, casefold_scope_labels=False).settings()
    assert dict(custom.caps) == {"layer": 7, "team": 7, "project": 3, "worker": 1000,
                                 "lane": 100}
    assert not custom.casefold_scope_labels


def test_config_folds_project_and_worker_budget_scopes_and_rule_labels() -> None:
    raw = config(budgets=[
        {"scope": "project:Alpha", "limit_usd": 1}, {"scope": "worker:GPU-*", "limit_usd": 1},
        {"scope": "model:gpt-5", "limit_usd": 1},
    ], rules=[{"match": {"labels": {"project": "Alpha", "layer": "API"}}, "policy": "code"}])
    settings = parse_config(yaml.safe_dump(raw), "t").settings()
    assert [r.scope for r in settings.budgets] == ["project:alpha", "worker:gpu-*", "model:gpt-5"]
    assert settings.rules[0].match.labels == {"project": "alpha", "layer": "API"}
    raw["limits"] = {"casefold_scope_labels": False}
    kept = parse_config(yaml.safe_dump(raw), "t").settings()
    assert kept.budgets[0].scope == "project:Alpha"


def test_config_scopes_that_fold_together_are_duplicates() -> None:
    raw = config(budgets=[{"scope": "project:Alpha", "limit_usd": 1},
                          {"scope": "project:ALPHA", "limit_usd": 2}])
    with pytest.raises(ConfigError) as err:
        parse_config(yaml.safe_dump(raw), "t")
    assert "budgets[1]: duplicate budget for project:alpha/month" in err.value.problems


@pytest.mark.parametrize(("limits", "path"), [
    ({"max_projects": 0}, "limits.max_projects"),
    ({"capped_labels": ["bad key"]}, "limits.capped_labels"),
    ({"capped_labels": ["layer\n"]}, "limits.capped_labels"),
    ({"max_everything": 1}, "limits.max_everything"),
])
def test_bad_limits_name_their_path(limits: dict, path: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ConfigError) as err:
        parse_config(yaml.safe_dump(config(limits=limits)), "t")
    assert any(p.startswith(f"{path}:") for p in err.value.problems), err.value.problems


def test_budget_scope_with_a_trailing_newline_is_refused() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(yaml.safe_dump(config(budgets=[{"scope": "project:alpha\n",
                                                     "limit_usd": 1}])), "t")
    assert err.value.problems[0].startswith("budgets[0].scope:")
