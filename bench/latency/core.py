"""Microbenchmark of the pure core's decide(): a synthetic 50-model, 100-rule catalog.

Standalone: `python -m bench.latency.core [--calls N]`.
"""

from __future__ import annotations

import argparse
import gc
import random
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from bench.latency.workload import MIX, PROJECTS
from bench.procs import REPO
from routing_sidecar.config import load_config
from routing_sidecar.core.catalog import Catalog
from routing_sidecar.core.decide import decide
from routing_sidecar.core.view import DecisionView
from routing_sidecar.domain import (
    Match,
    ModelSpec,
    Objective,
    Policy,
    Requirements,
    Rule,
    ShapeRule,
    Task,
    TierRules,
)

PROVIDERS = ("anthropic", "openai", "google", "mistral", "deepseek", "xai", "zhipu", "local")
CAPABILITIES = ("code", "tools", "vision", "reasoning", "long_context", "json")
OBJECTIVES = (Objective.COST_SPEED, Objective.BALANCED, Objective.QUALITY)
TASK_TYPES = (
    [f"type_{k}" for k in range(20)] + [f"team{k}_build" for k in range(10)]
    + [f"docs_{w}" for w in ("update", "review", "links")]
    + ["fix_bug", "analyze_logs", "strategic_design", "check_links", "security_audit",
       "unit_tests", "unmatched_a", "unmatched_b", "refactor_api", "lint_fix"]
)


@dataclass(frozen=True)
class CoreResult:
    """Per-call timings of decide() on one catalog."""

    label: str
    models: int
    rules: int
    calls: int
    p50_us: float
    p99_us: float
    mean_us: float
    statuses: dict[str, int] = field(default_factory=dict)


def synthetic_models(rng: random.Random, n: int = 50) -> list[ModelSpec]:
    """`n` models over several providers, tiers 1-3, varied prices, windows, capabilities."""
    models = []
    for i in range(n):
        provider, tier = PROVIDERS[i % len(PROVIDERS)], 1 + rng.choices(range(3), (5, 3, 2))[0]
        local = provider == "local"
        price = 0 if local else int(rng.uniform(0.1, 1.5) * 10**6 * (1, 3, 10)[tier - 1])
        models.append(ModelSpec(
            name=f"{provider}-t{tier}-{i}", provider=provider, tier=tier,
            input_micros_per_mtok=price, output_micros_per_mtok=price * rng.choice((4, 5, 8)),
            context_window=rng.choice((32_768, 128_000, 200_000, 400_000, 1_048_576)),
            tokens_per_s=rng.uniform(30, 250), quality=rng.uniform(0.5, 0.7) + 0.1 * tier,
            capabilities=frozenset(rng.sample(CAPABILITIES, rng.randint(0, 5))),
            origin="local" if local else "hosted",
        ))
    return models


def synthetic_policies(rng: random.Random, models: Sequence[ModelSpec]) -> list[Policy]:
    """Ten policies of 6-12 models (`p0` the default) and `wide`, over all models."""
    names = [m.name for m in models]
    policies = [
        Policy(
            f"p{k}", tuple(rng.sample(names, rng.randint(6, 12))),
            objective=rng.choice((None, *OBJECTIVES)),
            max_cost_per_task_micros=rng.choice((None, 50_000, 250_000, 1_000_000)),
            fallbacks=rng.randint(1, 3),
        )
        for k in range(10)
    ]
    return [*policies, Policy("wide", tuple(names), max_cost_per_task_micros=2_000_000,
                              fallbacks=3)]


def synthetic_rules(rng: random.Random, n: int = 100) -> list[Rule]:
    """`n` rules mixing exact lists, globs, priority ranges and labels; first match wins."""
    rules = []
    for i in range(n):
        kind = i % 4
        if kind == 0:
            types: tuple[str, ...] = tuple(rng.sample(TASK_TYPES, 3))
        elif kind == 1:
            types = (f"team{rng.randrange(12)}_*", f"*_{rng.choice(('x', 'y', 'build'))}")
        else:
            types = (rng.choice(("docs_*", "type_1*", "*test*", "*_audit", "fix_*")),)
        lo = rng.choice((None, 0, 30, 60))
        hi = rng.choice((None, 40, 80, 100)) if lo is None or lo < 40 else None
        labels = {"project": rng.choice(PROJECTS)} if kind == 3 else {}
        rules.append(Rule(Match(types, lo, hi, labels), f"p{rng.randrange(1, 10)}"))
    return rules


def synthetic_catalog(seed: int = 11) -> Catalog:
    """The synthetic Catalog: 50 models, 11 policies, 100 rules, the shipped shapes."""
    rng = random.Random(seed)
    models = synthetic_models(rng)
    shapes = [
        ShapeRule(Match(("docs_*", "*test*", "check_links", "lint*")), Objective.COST_SPEED),
        ShapeRule(Match(("*architecture*", "*security*", "strategic_*")), Objective.QUALITY),
        ShapeRule(Match(labels={"complexity": "high"}), Objective.QUALITY),
    ]
    return Catalog.build(models, synthetic_policies(rng, models), synthetic_rules(rng), shapes,
                         TierRules(), "p0")


def synthetic_tasks(n: int = 1000, seed: int = 13, policy: str | None = None) -> list[Task]:
    """`n` varied tasks: types, priorities, capabilities, token sizes, labels, some ev."""
    rng = random.Random(seed)
    return [
        Task(
            task_id=f"core-{i}", task_type=rng.choice(TASK_TYPES), priority=rng.randint(0, 100),
            requires=Requirements(
                min_tier=rng.choice((0, 0, 0, 1, 2)),
                capabilities=frozenset(rng.sample(CAPABILITIES, rng.choice((0, 0, 1, 2))))),
            estimated_input_tokens=rng.choice((500, 4_000, 20_000, 90_000, 250_000)),
            max_output_tokens=rng.choice((0, 500, 2_000, 8_000)),
            labels={"project": rng.choice(PROJECTS), "lane": rng.choice(("a", "b", "c")),
                    **({"complexity": "high"} if rng.random() < 0.1 else {})},
            ev=rng.choice((None, None, 50.0, 5_000.0)), policy=policy,
        )
        for i in range(n)
    ]


def mix_tasks() -> list[Task]:
    """The RPC benchmark's request mix as domain Tasks (for the shipped config)."""
    return [
        Task(task_id=f"mix-{k.task_type}-{p}", task_type=k.task_type, priority=k.priority,
             requires=Requirements(capabilities=frozenset(k.capabilities)),
             estimated_input_tokens=k.input_tokens, max_output_tokens=k.output_tokens,
             labels={"project": p, **k.labels}, ev=k.ev)
        for k in MIX for p in PROJECTS
    ]


def time_select(label: str, catalog: Catalog, tasks: Sequence[Task], calls: int,
                warmup: int) -> CoreResult:
    """Time `calls` decide() calls one by one with perf_counter_ns, after `warmup` calls."""
    signals = DecisionView(ev_threshold=1_000.0)
    n = len(tasks)
    for i in range(warmup):
        decide(tasks[i % n], catalog, signals)
    lat = [0] * calls
    statuses: Counter[str] = Counter()
    clock = time.perf_counter_ns
    gc.collect()
    for i in range(calls):
        task = tasks[i % n]
        t0 = clock()
        sel = decide(task, catalog, signals)
        lat[i] = clock() - t0
        statuses[sel.status.value] += 1
    lat.sort()
    return CoreResult(
        label=label, models=len(catalog.models), rules=len(catalog.rules),
        calls=calls, p50_us=lat[calls // 2] / 1000,
        p99_us=lat[min(calls - 1, -(-99 * calls // 100) - 1)] / 1000,
        mean_us=sum(lat) / calls / 1000, statuses=dict(statuses),
    )


def run_core(calls: int = 20_000, warmup: int = 2_000) -> list[CoreResult]:
    """decide() on the synthetic catalog (also with 50 candidates), then the shipped one."""
    shipped = Catalog.from_settings(load_config(REPO / "config" / "router.yaml").settings())
    synthetic = synthetic_catalog()
    return [
        time_select("synthetic, policies of 6-12 models", synthetic, synthetic_tasks(), calls,
                    warmup),
        time_select("synthetic, one 50-model policy", synthetic,
                    synthetic_tasks(policy="wide"), calls // 4, warmup // 4),
        time_select("config/router.yaml, RPC mix", shipped, mix_tasks(), calls // 2,
                    warmup // 2),
    ]


def main() -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20_000)
    args = parser.parse_args()
    for r in run_core(args.calls):
        print(f"{r.label:<36} {r.models:>3} models {r.rules:>3} rules  p50 {r.p50_us:6.1f} µs  "
              f"p99 {r.p99_us:6.1f} µs  mean {r.mean_us:6.1f} µs  {r.statuses}")


if __name__ == "__main__":
    main()
