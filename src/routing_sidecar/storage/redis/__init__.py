"""Fleet back ends on Redis: the only place redis-py is imported."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import tzinfo
from typing import TYPE_CHECKING

from routing_sidecar.config_fleet import FleetConfig
from routing_sidecar.settings import RouterSettings

# redis-py loads in open_fleet, only for a config in fleet mode: a shorter start without it.
if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from routing_sidecar.storage.redis.health import SharedBreakers
    from routing_sidecar.storage.redis.learning import SharedLearning
    from routing_sidecar.storage.redis.ledger import RedisLedger

__all__ = ["Fleet", "open_fleet"]


@dataclass
class Fleet:
    """One sidecar's connection to its fleet: the pool and what shares through it."""

    client: aioredis.Redis
    ledger: RedisLedger
    breakers: SharedBreakers
    learning: SharedLearning

    async def close(self) -> None:
        """Close the connection pool."""
        await self.client.aclose()


def open_fleet(cfg: FleetConfig, settings: RouterSettings, tz: tzinfo, *, origin: str) -> Fleet:
    """A pooled client (timeouts, reconnects on the next call) and the shared books on it."""
    import redis.asyncio as aioredis  # noqa: PLC0415

    from routing_sidecar.storage.redis.health import SharedBreakers  # noqa: PLC0415
    from routing_sidecar.storage.redis.learning import SharedLearning  # noqa: PLC0415
    from routing_sidecar.storage.redis.ledger import RedisLedger  # noqa: PLC0415

    url = cfg.url()
    if url is None:
        raise ValueError("fleet: no Redis URL (redis_url, or the variable redis_url_env names)")
    # A burst beyond max_connections waits for a free connection (as long as a slow reply
    # may take) instead of failing at once and rejecting budgeted tasks as if Redis were down.
    pool = aioredis.BlockingConnectionPool.from_url(
        url, socket_timeout=cfg.socket_timeout_s, socket_connect_timeout=cfg.connect_timeout_s,
        max_connections=cfg.max_connections, timeout=cfg.socket_timeout_s,
        health_check_interval=30, retry_on_timeout=False)
    client = aioredis.Redis.from_pool(pool)  # the client owns the pool and closes it
    return Fleet(
        client,
        RedisLedger(client, settings.budgets, tz, prefix=cfg.key_prefix),
        SharedBreakers(client, prefix=cfg.key_prefix, origin=origin),
        SharedLearning(client, prefix=cfg.key_prefix, forget=settings.learning.forget),
    )
