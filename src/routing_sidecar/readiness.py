"""Whether the sidecar can decide anything; the gRPC health status follows it.

NOT_SERVING while the store refuses writes (a write failed; a probe write every second puts it
back once one works) or while every catalog model is behind an open circuit. Each change is
one log line giving the reason, so an operator sees why a probe failed.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from routing_sidecar.core.health import HealthBook
from routing_sidecar.core.health_types import BreakerStatus
from routing_sidecar.domain import ModelSpec
from routing_sidecar.errors import StorageError

log = logging.getLogger(__name__)

STORE, BREAKERS, REDIS = "store", "breakers", "redis"
# Store methods that write: one failing marks the store unwritable, one succeeding clears it.
WRITE_PREFIXES = ("record_", "save_")


class Readiness:
    """The reasons the sidecar cannot decide; `apply(serving)` is told when serving changes."""

    def __init__(self) -> None:
        self.reasons: dict[str, str] = {}
        self._apply: Callable[[bool], Awaitable[None]] | None = None

    @property
    def serving(self) -> bool:
        """True when nothing keeps the sidecar from deciding."""
        return not self.reasons

    async def attach(self, apply: Callable[[bool], Awaitable[None]]) -> None:
        """Report to `apply` from now on, starting with the present state."""
        self._apply = apply
        if not self.serving:
            await apply(False)

    async def update(self, key: str, reason: str | None) -> None:
        """Set or clear one reason; log and report when that changes anything."""
        before = self.serving
        if reason is None:
            if self.reasons.pop(key, None) is None:
                return
            log.info("readiness restored", extra={"cleared": key,
                                                   "serving": self.serving})
        else:
            if self.reasons.get(key) == reason:
                return
            self.reasons[key] = reason
            log.error("not serving: the sidecar cannot decide", extra={"reason": reason})
        if self.serving != before and self._apply is not None:
            await self._apply(self.serving)


class WatchedStore:
    """A store whose write results feed Readiness; every other use passes straight through."""

    def __init__(self, store: Any, readiness: Readiness) -> None:
        self._store = store
        self._readiness = readiness
        self._wrapped: dict[str, Callable[..., Awaitable[Any]]] = {}

    def __getattr__(self, name: str) -> Any:
        wrapped = self._wrapped.get(name)  # first: a write is looked up on every Route
        if wrapped is not None:
            return wrapped
        attr = getattr(self._store, name)
        if not name.startswith(WRITE_PREFIXES) or not inspect.iscoroutinefunction(attr):
            return attr
        wrapped = self._wrapped[name] = self._watch(name)
        return wrapped

    def _watch(self, name: str) -> Callable[..., Awaitable[Any]]:
        method = getattr(self._store, name)

        @functools.wraps(method)
        async def watched(*args: Any, **kwargs: Any) -> Any:
            try:
                result = await method(*args, **kwargs)
            except StorageError as exc:
                await self._readiness.update(STORE, f"the store refused a write ({exc.message})")
                raise
            if STORE in self._readiness.reasons:
                await self._readiness.update(STORE, None)
            return result

        return watched


def all_circuits_open(health: HealthBook, models: Iterable[ModelSpec], now: float) -> bool:
    """Whether every model is behind an open circuit, its own or its provider's."""
    seen = False
    for m in models:
        seen = True
        for key in (f"model:{m.name}", f"provider:{m.provider}"):
            if health.breaker(key, now).status is BreakerStatus.OPEN:
                break
        else:
            return False
    return seen


def breakers_reason(health: HealthBook, models: Iterable[ModelSpec], now: float) -> str | None:
    """The BREAKERS reason when every model's circuit is open, else None."""
    if all_circuits_open(health, models, now):
        return "every model's circuit is open (its own or its provider's)"
    return None


async def watch(readiness: Readiness, *, probe_store: Callable[[], Awaitable[None]],
                checks: Mapping[str, Callable[[], str | None]], interval_s: float) -> None:
    """Every `interval_s`: each check (key -> reason or None), and the store's probe write.

    The probe runs only while the store is marked unwritable, and clears it once a write works.
    """
    while True:
        await asyncio.sleep(interval_s)
        if STORE in readiness.reasons:
            try:
                await probe_store()
            except StorageError:
                pass  # still refused; the reason already says so
            else:
                await readiness.update(STORE, None)
        for key, check in checks.items():
            await readiness.update(key, check())
