"""Breakers shared by the fleet: one sidecar opens a circuit, every sidecar keeps off the model.

Each change a sidecar's HealthBook makes (opened until T, or closed) is written to a hash of
the open breakers, so a sidecar that starts later picks them up, and published on a channel,
so the running ones follow within a millisecond or two. The sidecar that opened a breaker
sends its half-open probe; the others wait for its verdict (or for the probe timeout).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Iterable

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from routing_sidecar.core.health import BreakerChange
from routing_sidecar.waiting import stop_task

log = logging.getLogger(__name__)
Apply = Callable[[BreakerChange], None]


def _encode(change: BreakerChange, origin: str) -> str:
    return json.dumps({"scope": change.scope, "name": change.name, "opened": change.opened,
                       "open_until": change.open_until, "trips": change.trips,
                       "origin": origin}, separators=(",", ":"))


def _decode(raw: bytes | str) -> tuple[BreakerChange, str]:
    d = json.loads(raw)
    return (BreakerChange(str(d["scope"]), str(d["name"]), bool(d["opened"]),
                          float(d["open_until"]), int(d["trips"])), str(d.get("origin", "")))


class SharedBreakers:
    """Publishes this sidecar's breaker changes and applies everyone else's."""

    def __init__(self, client: aioredis.Redis, *, prefix: str, origin: str) -> None:
        self._r = client
        self._origin = origin  # this sidecar: its own messages are not applied twice
        self._channel = f"{prefix}breakers"
        self._hash = f"{prefix}{{health}}:breakers"
        self._task: asyncio.Task[None] | None = None
        self._pubsub: aioredis.client.PubSub | None = None
        self.received = 0  # changes applied from other sidecars (for metrics and tests)

    async def start(self, apply: Apply) -> None:
        """Subscribe, then apply the breakers already open in the fleet."""
        self._pubsub = self._r.pubsub(ignore_subscribe_messages=True)
        await self._pubsub.subscribe(self._channel)
        for raw in (await self._r.hgetall(self._hash)).values():
            change, origin = _decode(raw)
            if origin != self._origin:
                apply(change)
        self._task = asyncio.create_task(self._listen(apply), name="shared-breakers")

    async def publish(self, changes: Iterable[BreakerChange]) -> None:
        """Tell the fleet; an opened breaker is also kept in the hash until it closes."""
        items = list(changes)
        if not items:
            return
        pipe = self._r.pipeline(transaction=False)
        for c in items:
            field = f"{c.scope}:{c.name}"
            message = _encode(c, self._origin)
            if c.opened:
                pipe.hset(self._hash, field, message)
            else:
                pipe.hdel(self._hash, field)
            pipe.publish(self._channel, message)
        await pipe.execute()

    async def _listen(self, apply: Apply) -> None:
        assert self._pubsub is not None
        while True:
            try:
                message = await self._pubsub.get_message(timeout=1.0)
            except RedisError:
                log.warning("breaker channel lost; resubscribing", exc_info=True)
                await asyncio.sleep(0.5)
                with contextlib.suppress(RedisError):
                    await self._pubsub.subscribe(self._channel)
                continue
            if message is None or message.get("type") != "message":
                continue
            try:
                change, origin = _decode(message["data"])
            except (ValueError, KeyError, TypeError):
                log.warning("unreadable breaker message ignored")
                continue
            if origin != self._origin:
                apply(change)
                self.received += 1

    async def stop(self) -> None:
        """Unsubscribe and stop listening."""
        await stop_task(self._task)
        if self._pubsub is not None:
            with contextlib.suppress(RedisError):
                await self._pubsub.aclose()  # type: ignore[no-untyped-call]
