"""The Redis client against a real Redis: bursts beyond the pool wait instead of failing."""

from __future__ import annotations

import asyncio

from infra.cache import redis_client
from infra.settings import CommonSettings
from mesh.testing import Infra


async def test_a_burst_larger_than_the_pool_is_served_not_refused(infra: Infra) -> None:
    # 2,000 concurrent commands through 8 connections: a connect or disconnect storm on an
    # edge. redis-py's default pool raised "Too many connections" past 100 in use, which
    # lost connection-map unregisters during the benchmark's mass disconnects.
    settings = CommonSettings(redis_url=infra.redis_url, redis_max_connections=8)
    redis = redis_client(settings)
    try:
        key = "test:cache:burst"
        await redis.delete(key)
        await asyncio.gather(*(redis.hset(key, f"c{i}", "node") for i in range(2000)))
        assert await redis.hlen(key) == 2000
        await asyncio.gather(*(redis.hdel(key, f"c{i}") for i in range(2000)))
        assert await redis.hlen(key) == 0
        assert len(redis.connection_pool._in_use_connections) == 0
        assert len(redis.connection_pool._available_connections) <= 8
    finally:
        await redis.aclose()
