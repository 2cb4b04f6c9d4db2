"""Operator actions behind the admin API: policy edits, model pauses, breaker resets.

A policy edit replaces one policy of the config file's and re-validates the whole config
exactly as a file is validated (the same messages, naming the path); it is stored as a config
version with the edit beside it, then applied to the running sidecar in one step. Edits are
replayed over the file at start, so they survive a restart; reverting one goes back to the
file's policy (or removes a policy the file does not have).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from routing_sidecar.config import RouterConfig, config_hash, validate_config
from routing_sidecar.core.health import BreakerState, HealthBook
from routing_sidecar.errors import ConfigError, FailedPrecondition, NotFound, StorageError
from routing_sidecar.ports import AdminStore, Clock, PauseRecord, PolicyAction, PolicyChange
from routing_sidecar.service.pauses import ModelPauses
from routing_sidecar.service.routing import RoutingService

log = logging.getLogger(__name__)

POLICY_SOURCE = "POST /api/routing/policies"
RECENT_CHANGES = 50

ApplyConfig = Callable[[RouterConfig], Awaitable[None]]


def compose(file_cfg: RouterConfig, overrides: Mapping[str, object],
            source: str = POLICY_SOURCE) -> RouterConfig:
    """The file's config with some policies replaced (or added), validated as a file is."""
    raw: dict[str, Any] = file_cfg.model_dump(mode="json", exclude_unset=True)
    raw["policies"] = {**raw.get("policies", {}), **overrides}
    return validate_config(raw, source)


class PolicyEditor:
    """Policy edits over the config file: validated, stored, applied, replayed at start."""

    def __init__(self, store: AdminStore, clock: Clock, apply: ApplyConfig,
                 file_cfg: RouterConfig) -> None:
        self._store = store
        self._clock = clock
        self._apply = apply
        self._lock = asyncio.Lock()  # one edit at a time: each composes on the last
        self.file_cfg = file_cfg
        self.overrides: dict[str, dict[str, Any]] = {}
        self.latest: dict[str, PolicyChange] = {}  # the edit behind each overridden policy
        self.changes: list[PolicyChange] = []

    def with_overrides(self, file_cfg: RouterConfig) -> RouterConfig:
        """A (re)loaded config file with the API's edits on top; ConfigError if they don't fit."""
        cfg = compose(file_cfg, self.overrides, "policy edits over the config file")
        self.file_cfg = file_cfg
        return cfg

    async def restore(self) -> RouterConfig | None:
        """Replay stored edits; the config they make, or None when there are none (or they fail)."""
        for change in await self._store.policy_changes():
            self._note(change)
        if not self.overrides:
            return None
        try:
            return self.with_overrides(self.file_cfg)
        except ConfigError as exc:
            log.error("policy edits no longer fit the config file; serving the file's policies",
                      extra={"problems": exc.problems})
            self.overrides.clear()
            self.latest.clear()
            return None

    async def follow(self) -> RouterConfig | None:
        """Apply edits other sidecars stored since this one last looked; the config, or None.

        For sidecars sharing one store (PostgreSQL): an edit made through any of them reaches
        the others at their next look.
        """
        async with self._lock:
            seen = self.changes[-1].version if self.changes else 0
            fresh = [c for c in await self._store.policy_changes() if c.version > seen]
            if not fresh:
                return None
            for change in fresh:
                self._note(change)
            try:
                cfg = self.with_overrides(self.file_cfg)
            except ConfigError as exc:
                log.error("policy edits from the store do not fit this config file; kept the "
                          "running policies", extra={"problems": exc.problems})
                return None
            await self._apply(cfg)
            log.info("policy edits taken from the store", extra={
                "policies": sorted({c.policy for c in fresh})})
            return cfg

    async def set(self, name: str, policy: object) -> tuple[PolicyChange, RouterConfig]:
        """Create or replace one policy; ConfigError (nothing stored) when the result is invalid."""
        async with self._lock:
            cfg = compose(self.file_cfg, {**self.overrides, name: policy})
            stored = cfg.policies[name].model_dump(mode="json", exclude_unset=True)
            return await self._commit(name, "set", json.dumps(stored, sort_keys=True), cfg)

    async def revert(self, name: str) -> tuple[PolicyChange, RouterConfig]:
        """Undo the API's edits of one policy: back to the file's, or gone if the file has none."""
        async with self._lock:
            if name not in self.overrides:
                raise NotFound(f"name: policy {name!r} has no edit made through the API")
            rest = {k: v for k, v in self.overrides.items() if k != name}
            try:
                cfg = compose(self.file_cfg, rest)
            except ConfigError as exc:
                raise FailedPrecondition(
                    f"name: reverting {name!r} would leave an invalid config: "
                    + "; ".join(exc.problems)) from None
            return await self._commit(name, "revert", "", cfg)

    async def _commit(self, name: str, action: PolicyAction, policy_json: str,
                      cfg: RouterConfig) -> tuple[PolicyChange, RouterConfig]:
        digest = config_hash(cfg)
        change = PolicyChange(name, action, policy_json, digest, self._clock.now())
        version = await self._store.record_policy_change(change, cfg.model_dump_json())
        change = PolicyChange(name, action, policy_json, digest, change.changed_at, version)
        await self._apply(cfg)
        self._note(change)
        return change, cfg

    def _note(self, change: PolicyChange) -> None:
        if change.action == "set":
            self.overrides[change.policy] = json.loads(change.policy_json)
            self.latest[change.policy] = change
        else:
            self.overrides.pop(change.policy, None)
            self.latest.pop(change.policy, None)
        self.changes = [*self.changes[-(RECENT_CHANGES - 1):], change]


class Operator:
    """Pauses models and resets breakers, persisting pauses so they survive a restart."""

    def __init__(self, store: AdminStore, clock: Clock, routing: RoutingService,
                 health: Callable[[], HealthBook]) -> None:
        self._store = store
        self._clock = clock
        self._routing = routing
        self._health = health
        self.pauses = ModelPauses()

    async def restore(self) -> None:
        """Load the stored pauses into routing."""
        self.pauses = ModelPauses(await self._store.load_pauses())
        self._routing.set_paused(self.pauses.reasons())

    async def follow(self) -> bool:
        """Take up pauses other sidecars stored or lifted; True when routing changed."""
        pauses = ModelPauses(await self._store.load_pauses())
        if pauses.reasons() == self.pauses.reasons():
            return False
        self.pauses = pauses
        self._routing.set_paused(pauses.reasons())
        log.info("model pauses taken from the store", extra={"paused": sorted(pauses.paused)})
        return True

    def _known(self, model: str) -> None:
        if model not in self._routing.catalog.models:
            raise NotFound(f"name: unknown model {model!r}")

    async def pause(self, model: str, reason: str = "") -> PauseRecord:
        """Take a catalog model out of routing until resumed."""
        self._known(model)
        pause = PauseRecord(model, self._clock.now(), reason)
        await self._store.set_pause(pause)
        self.pauses.set(pause)
        self._routing.set_paused(self.pauses.reasons())
        log.warning("model paused", extra={"model": model})
        return pause

    async def resume(self, model: str) -> bool:
        """Put a model back into routing; False when it was not paused."""
        if model not in self.pauses.paused:
            self._known(model)
            return False
        await self._store.clear_pause(model)
        self.pauses.clear(model)
        self._routing.set_paused(self.pauses.reasons())
        log.warning("model resumed", extra={"model": model})
        return True

    def reset_breaker(self, scope: str, name: str) -> tuple[bool, BreakerState]:
        """Close a model's or provider's breaker by hand; (whether it had state, the breaker)."""
        catalog = self._routing.catalog
        known = catalog.models if scope == "model" else catalog.providers()
        if name not in known:
            raise NotFound(f"name: unknown {scope} {name!r}")
        health = self._health()
        key = f"{scope}:{name}"
        reset = health.reset_breaker(key)
        if reset:
            log.warning("breaker reset by an operator", extra={"breaker": key})
        return reset, health.breaker(key, self._clock.now())


async def follow_edits(operator: Operator, policies: PolicyEditor, interval_s: float) -> None:
    """Every `interval_s`, until cancelled: the pauses and policy edits other sidecars stored."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            await operator.follow()
            await policies.follow()
        except StorageError as exc:
            log.warning("could not read admin edits from the store; retrying",
                        extra={"error": exc.message})
        except Exception:  # the loop must go on: the next look tries again
            log.exception("taking up admin edits from the store failed; retrying")
