"""Learned quality aggregated by the fleet: every sidecar's outcomes in one set of posteriors.

The evidence of a (task type, model) is additive (sums of y, 1 - y, y squared, successes,
failures, graded), decayed by `forget` per observation; a Lua script applies one observation to
the fleet's per-type and pooled sums atomically, with the same forgetting as a sidecar's own
book. Sidecars push what they observed and pull the sums back into their books, so the fleet
learns as one.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import redis.asyncio as aioredis

from routing_sidecar.core.learning import POOLED, QualityRow
from routing_sidecar.ports import QualityObservation as Observation

# KEYS: per-type evidence, pooled evidence. ARGV: forget, y, success (0/1), graded (0/1),
# ttl ms of the per-type key (refreshed by every observation).
OBSERVE = """
local f = tonumber(ARGV[1])
local y = tonumber(ARGV[2])
local s = tonumber(ARGV[3])
local g = tonumber(ARGV[4])
for i = 1, 2 do
  local k = KEYS[i]
  local v = redis.call('HMGET', k, 'a', 'b', 'q', 's', 'f', 'g')
  local a, b, q = tonumber(v[1]) or 0, tonumber(v[2]) or 0, tonumber(v[3]) or 0
  local ns, nf, ng = tonumber(v[4]) or 0, tonumber(v[5]) or 0, tonumber(v[6]) or 0
  redis.call('HSET', k, 'a', tostring(a * f + y), 'b', tostring(b * f + (1 - y)),
             'q', tostring(q * f + y * y), 's', tostring(ns * f + s),
             'f', tostring(nf * f + (1 - s)), 'g', tostring(ng * f + g))
end
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 1
"""
FIELDS = ("a", "b", "q", "s", "f", "g")


class SharedLearning:
    """Pushes a sidecar's observations to the fleet's sums and pulls the sums back."""

    def __init__(self, client: aioredis.Redis, *, prefix: str, forget: float,
                 ttl_s: float = 30 * 86_400.0) -> None:
        self._r = client
        self._base = f"{prefix}{{learn}}:"
        self.forget = forget
        self._ttl_ms = int(ttl_s * 1000)
        self._observe = client.register_script(OBSERVE)

    async def push(self, observations: Sequence[Observation]) -> None:
        """Fold each observation into the fleet's sums, in order, in one round trip."""
        if not observations:
            return
        pipe = self._r.pipeline(transaction=False)
        for o in observations:
            await self._observe(keys=[self._type_key(o.task_type, o.model),
                                      self._pool_key(o.model)],
                                args=[repr(self.forget), repr(o.y), int(o.success),
                                      int(o.graded), self._ttl_ms], client=pipe)
        await pipe.execute()

    async def pull(self, task_types: Iterable[str], models: Iterable[str]
                   ) -> tuple[list[QualityRow], list[QualityRow]]:
        """The fleet's evidence for every (task type, model) asked and each model's pool."""
        names = list(dict.fromkeys(models))
        pairs = [(t, m) for t in dict.fromkeys(task_types) for m in names]
        pipe = self._r.pipeline(transaction=False)
        for t, m in pairs:
            pipe.hmget(self._type_key(t, m), *FIELDS)
        for m in names:
            pipe.hmget(self._pool_key(m), *FIELDS)
        replies = await pipe.execute()
        rows = [row for (t, m), raw in zip(pairs, replies, strict=False)
                if (row := _row(t, m, raw)) is not None]
        pooled = [row for m, raw in zip(names, replies[len(pairs):], strict=True)
                  if (row := _row(POOLED, m, raw)) is not None]
        return rows, pooled

    def _type_key(self, task_type: str, model: str) -> str:
        return f"{self._base}q:{task_type}|{model}"

    def _pool_key(self, model: str) -> str:
        return f"{self._base}pool:{model}"


def _row(task_type: str, model: str, raw: Sequence[bytes | None]) -> QualityRow | None:
    if all(v is None for v in raw):
        return None
    a, b, q, s, f, g = (float(v) if v is not None else 0.0 for v in raw)
    return QualityRow(task_type, model, a, b, s, f, g, q)
