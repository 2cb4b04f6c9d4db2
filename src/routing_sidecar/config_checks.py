"""Checks across sections, each problem prefixed by the path it is about."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from routing_sidecar.config_providers import check_providers
from routing_sidecar.config_server import remote_admin_problem, remote_grpc_problem

if TYPE_CHECKING:
    from routing_sidecar.config import RouterConfig


def cross_check(cfg: RouterConfig) -> Iterator[str]:
    """Yield every inconsistency between sections, each prefixed by its path."""
    if cfg.fleet.redis_url is not None and cfg.fleet.redis_url_env is not None:
        yield "fleet: give redis_url or redis_url_env, not both"
    providers = {m.provider for m in cfg.models.values()}
    for pname, pol in cfg.policies.items():
        seen: set[str] = set()
        for i, model in enumerate(pol.models):
            if model not in cfg.models:
                yield f"policies.{pname}.models[{i}]: unknown model {model!r}"
            if model in seen:
                yield f"policies.{pname}.models[{i}]: duplicate model {model!r}"
            seen.add(model)
        if pol.hedge_after_ms is not None and pol.fallbacks == 0:
            yield (f"policies.{pname}.hedge_after_ms: a hedge starts the first fallback, and "
                   "fallbacks is 0")
    for i, rule in enumerate(cfg.rules):
        if rule.policy not in cfg.policies:
            yield f"rules[{i}].policy: unknown policy {rule.policy!r}"
    for key, matches in (("rules", [r.match for r in cfg.rules]),
                         ("task_shapes", [s.match for s in cfg.task_shapes])):
        for i, match in enumerate(matches):
            p = match.priority
            if p and p.min is not None and p.max is not None and p.min > p.max:
                yield f"{key}[{i}].match.priority: min {p.min} is above max {p.max}"
    if cfg.default_policy not in cfg.policies:
        yield f"default_policy: unknown policy {cfg.default_policy!r}"
    yield from _check_budgets(cfg, providers)
    yield from _check_paths(cfg)
    problem = remote_grpc_problem(cfg.server.listen, cfg.server)
    if problem:
        yield f"server.listen: {problem}"
    retry = [(n, p.retry) for n, p in cfg.policies.items()]
    for pname, r in retry:
        if r.base_backoff_s > r.max_backoff_s:
            yield (f"policies.{pname}.retry.base_backoff_s: {r.base_backoff_s:g} is above "
                   f"max_backoff_s {r.max_backoff_s:g}")
    if cfg.tiers.ev_min_samples > cfg.tiers.ev_window:
        yield (f"tiers.ev_min_samples: {cfg.tiers.ev_min_samples} is above ev_window "
               f"{cfg.tiers.ev_window}, so the EV percentile would never be known")
    yield from check_providers(cfg)
    yield from _check_admin(cfg)
    yield from _check_cache(cfg)
    breaker = cfg.health.breaker
    if breaker.cooldown_s > breaker.max_cooldown_s:
        yield (f"health.breaker.cooldown_s: {breaker.cooldown_s:g} is above max_cooldown_s "
               f"{breaker.max_cooldown_s:g}")
    for name, m in cfg.models.items():
        if m.output_per_mtok == 0 and m.input_per_mtok == 0 and m.origin == "hosted":
            yield f"models.{name}: a hosted model needs a price (origin: local for free models)"


def _check_budgets(cfg: RouterConfig, providers: set[str]) -> Iterator[str]:
    known = {"model": set(cfg.models), "provider": providers, "policy": set(cfg.policies)}
    seen: set[tuple[str, str]] = set()
    for i, b in enumerate(cfg.budgets):
        kind, _, name = b.scope.partition(":")
        if kind in known and "*" not in name and name not in known[kind]:
            yield f"budgets[{i}].scope: unknown {kind} {name!r}"
        period = b.period or ("task" if kind == "task" else "month")
        if (kind == "task") != (period == "task"):
            yield f"budgets[{i}].period: period 'task' goes with scope 'task' and only with it"
        if (b.scope, period) in seen:
            yield f"budgets[{i}]: duplicate budget for {b.scope}/{period}"
        seen.add((b.scope, period))


def _check_admin(cfg: RouterConfig) -> Iterator[str]:
    """`admin.listen` and its old name agree; a remote admin port has a token."""
    new = "listen" in cfg.admin.model_fields_set
    old = "admin_listen" in cfg.telemetry.model_fields_set
    if new and old and cfg.admin.listen != cfg.telemetry.admin_listen:
        yield (f"admin.listen: {cfg.admin.listen!r} differs from telemetry.admin_listen "
               f"{cfg.telemetry.admin_listen!r} (its old name); set only admin.listen")
        return
    problem = remote_admin_problem(cfg.admin_listen(), cfg.admin.token_file,
                                   allow_insecure=cfg.server.allow_insecure_remote)
    if problem:
        yield f"{'telemetry.admin_listen' if old and not new else 'admin.listen'}: {problem}"


def _check_cache(cfg: RouterConfig) -> Iterator[str]:
    c = cfg.cache
    if c.max_value_bytes > c.max_bytes:
        yield (f"cache.max_value_bytes: {c.max_value_bytes} is above max_bytes {c.max_bytes}, "
               "so such an entry could never be kept")
    if c.backend == "redis" and not cfg.fleet.enabled:
        yield ("cache.backend: redis shares the fleet's Redis; set fleet.redis_url or "
               "fleet.redis_url_env")


def _check_paths(cfg: RouterConfig) -> Iterator[str]:
    """The files the sidecar creates: not a directory, and a parent it can create or write."""
    files = [("store.path", cfg.store.path)]
    if cfg.store.url is not None and cfg.cache.backend == "sqlite":
        files.append(("cache.path", cfg.cache.path))
    if cfg.fleet.enabled:
        files.append(("fleet.outbox_path", cfg.fleet.outbox_path))
    for key, path in files:
        if path is not None:
            problem = file_path_problem(path)
            if problem:
                yield f"{key}: {problem}"


def file_path_problem(path: str) -> str | None:
    """Why a database file cannot be created or opened at `path`; None when it can be tried."""
    p = Path(path)
    if p.is_dir():
        return f"{path} is a directory (give the path of the database file)"
    parent = p.parent
    if parent.is_dir():
        return None if os.access(parent, os.W_OK) else f"directory {parent} is not writable"
    ancestor = parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        return f"cannot create directory {parent}: {ancestor} is not a directory"
    if not os.access(ancestor, os.W_OK):
        return f"cannot create directory {parent}: {ancestor} is not writable"
    return None
