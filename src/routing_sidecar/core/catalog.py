"""The immutable routing catalog: models, policies, rules and their precompiled matchers."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from types import MappingProxyType
from typing import Generic, TypeVar

from routing_sidecar.domain import Match, ModelSpec, Policy, Rule, ShapeRule, Task, TierRules
from routing_sidecar.errors import ConfigError
from routing_sidecar.settings import RouterSettings

_GLOB_CHARS = frozenset("*?[")
# Task types come from callers, so each per-type match cache is bounded to stay small under
# a flood of distinct types; past the bound, lookups simply fall back to a full scan.
_TYPE_CACHE_MAX = 4096
_DEFAULT_TIERS = TierRules()
T = TypeVar("T")


@lru_cache(maxsize=1024)
def compile_globs(patterns: tuple[str, ...]) -> tuple[frozenset[str], re.Pattern[str] | None]:
    """Split task-type patterns into exact names and one combined fnmatch-style regex."""
    exact = frozenset(p for p in patterns if not _GLOB_CHARS.intersection(p))
    globs = [fnmatch.translate(p) for p in patterns if _GLOB_CHARS.intersection(p)]
    return exact, (re.compile("|".join(globs)) if globs else None)


@dataclass(frozen=True, slots=True)
class CompiledMatch:
    """A Match with its globs compiled once; checks tasks without allocating."""

    any_type: bool
    exact: frozenset[str]
    regex: re.Pattern[str] | None
    priority_min: int | None
    priority_max: int | None
    labels: tuple[tuple[str, str], ...]

    @classmethod
    def of(cls, match: Match) -> CompiledMatch:
        """Compile a Match."""
        exact, regex = compile_globs(match.task_types)
        return cls(
            any_type=not match.task_types,
            exact=exact,
            regex=regex,
            priority_min=match.priority_min,
            priority_max=match.priority_max,
            labels=tuple(match.labels.items()),
        )

    def type_matches(self, task_type: str) -> bool:
        """Check the type condition: exact or glob, any of the list; empty matches all."""
        if self.any_type or task_type in self.exact:
            return True
        return self.regex is not None and self.regex.match(task_type) is not None

    def rest_matches(self, task: Task) -> bool:
        """Check the inclusive priority range and that every label is equal."""
        if self.priority_min is not None and task.priority < self.priority_min:
            return False
        if self.priority_max is not None and task.priority > self.priority_max:
            return False
        labels = task.labels
        return all(labels.get(k) == v for k, v in self.labels)

    def matches(self, task: Task) -> bool:
        """Check every condition."""
        return self.type_matches(task.task_type) and self.rest_matches(task)


@dataclass(frozen=True, slots=True)
class Catalog:
    """Everything selection needs from the config, validated and precompiled."""

    models: Mapping[str, ModelSpec]
    policies: Mapping[str, Policy]
    rules: tuple[Rule, ...]
    shapes: tuple[ShapeRule, ...]
    tiers: TierRules
    default_policy: str
    # Lanes (the `lane` label) that only ever get models proven above the quality floor.
    critical_lanes: frozenset[str] = frozenset()
    _rule_index: _FirstMatch[Rule] = field(init=False, repr=False, compare=False)
    _shape_index: _FirstMatch[ShapeRule] = field(init=False, repr=False, compare=False)
    _candidates: Mapping[str, tuple[ModelSpec, ...]] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        problems = list(_problems(self))
        if problems:
            raise ConfigError("<catalog>", problems)
        setattr_ = object.__setattr__
        setattr_(self, "_rule_index", _FirstMatch(self.rules, [r.match for r in self.rules]))
        setattr_(self, "_shape_index", _FirstMatch(self.shapes, [s.match for s in self.shapes]))
        setattr_(self, "_candidates", MappingProxyType({
            name: tuple(self.models[m] for m in pol.models) for name, pol in self.policies.items()
        }))

    def providers(self) -> tuple[str, ...]:
        """Every provider in the catalog, sorted."""
        return tuple(sorted({m.provider for m in self.models.values()}))

    @classmethod
    def from_settings(cls, s: RouterSettings) -> Catalog:
        """Build the catalog from the settings a validated configuration converts to."""
        return cls.build(s.models, s.policies, s.rules, s.shapes, s.tiers, s.default_policy,
                         s.critical_lanes)

    @classmethod
    def build(
        cls,
        models: Iterable[ModelSpec] | Mapping[str, ModelSpec],
        policies: Iterable[Policy] | Mapping[str, Policy],
        rules: Iterable[Rule] = (),
        shapes: Iterable[ShapeRule] = (),
        tiers: TierRules = _DEFAULT_TIERS,
        default_policy: str | None = None,
        critical_lanes: Iterable[str] = (),
    ) -> Catalog:
        """Build from domain objects (tests, bench); default policy defaults to the first."""
        model_map = dict(models) if isinstance(models, Mapping) else {m.name: m for m in models}
        policy_map = (
            dict(policies) if isinstance(policies, Mapping) else {p.name: p for p in policies}
        )
        default = default_policy if default_policy is not None else next(iter(policy_map), "")
        return cls(
            models=MappingProxyType(model_map),
            policies=MappingProxyType(policy_map),
            rules=tuple(rules),
            shapes=tuple(shapes),
            tiers=tiers,
            default_policy=default,
            critical_lanes=frozenset(critical_lanes),
        )

    def candidates(self, policy: Policy) -> tuple[ModelSpec, ...]:
        """Return the policy's models in configured order, resolved to specs."""
        found = self._candidates.get(policy.name)
        if found is not None and self.policies.get(policy.name) is policy:
            return found
        return tuple(self.models[m] for m in policy.models)

    def first_rule(self, task: Task) -> Rule | None:
        """Return the first rule matching the task, or None."""
        return self._rule_index.first(task)

    def first_shape(self, task: Task) -> ShapeRule | None:
        """Return the first task-shape rule matching the task, or None."""
        return self._shape_index.first(task)


class _FirstMatch(Generic[T]):
    """Items in order with compiled matches; finds the first item whose match holds."""

    __slots__ = ("_by_type", "_items", "_matchers")

    def __init__(self, items: Sequence[T], matches: Sequence[Match]) -> None:
        self._items = tuple(items)
        self._matchers = tuple(CompiledMatch.of(m) for m in matches)
        # task_type -> indices whose type condition holds. Memoisation only: it never changes
        # an answer, so selection stays a pure function of its inputs.
        self._by_type: dict[str, tuple[int, ...]] = {}

    def first(self, task: Task) -> T | None:
        """Return the first item whose match holds for the task, or None."""
        kind = task.task_type
        indices = self._by_type.get(kind)
        if indices is None:
            indices = tuple(i for i, m in enumerate(self._matchers) if m.type_matches(kind))
            if len(self._by_type) < _TYPE_CACHE_MAX:
                self._by_type[kind] = indices
        matchers = self._matchers
        for i in indices:
            if matchers[i].rest_matches(task):
                return self._items[i]
        return None


def _problems(cat: Catalog) -> Iterable[str]:
    """Yield every inconsistency that would make selection ill-defined."""
    for name, model in cat.models.items():
        if name != model.name:
            yield f"models.{name}: spec is named {model.name!r}"
    for name, pol in cat.policies.items():
        if name != pol.name:
            yield f"policies.{name}: policy is named {pol.name!r}"
        if not pol.models:
            yield f"policies.{name}.models: empty"
        for i, m in enumerate(pol.models):
            if m not in cat.models:
                yield f"policies.{name}.models[{i}]: unknown model {m!r}"
        if len(set(pol.models)) != len(pol.models):
            yield f"policies.{name}.models: duplicate model"
    for i, rule in enumerate(cat.rules):
        if rule.policy not in cat.policies:
            yield f"rules[{i}].policy: unknown policy {rule.policy!r}"
    if cat.default_policy not in cat.policies:
        yield f"default_policy: unknown policy {cat.default_policy!r}"
