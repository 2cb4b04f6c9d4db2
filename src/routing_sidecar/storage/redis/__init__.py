"""Fleet back ends on Redis (redis-py asyncio with hiredis): the only place redis is imported."""

from routing_sidecar.storage.redis.cache import RedisCache

__all__ = ["RedisCache"]
