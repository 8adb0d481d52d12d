"""Redis connections (the connection map and presence live there)."""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from infra.settings import CommonSettings


def redis_client(settings: CommonSettings) -> aioredis.Redis:
    """A pooled client that retries with backoff across a Redis restart.

    The pool blocks: redis-py's default pool refuses a command outright ("Too many
    connections") once 100 are in use, which a connect or disconnect storm of a few thousand
    clients reaches; the refused unregisters left ghost entries in the connection map.
    """
    pool = aioredis.BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=settings.redis_max_connections,
        timeout=settings.redis_pool_wait_seconds,
        decode_responses=True,
        socket_connect_timeout=3,
        socket_timeout=5,
        health_check_interval=10,
        retry=Retry(ExponentialBackoff(cap=2.0, base=0.05), retries=5),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
    )
    return aioredis.Redis.from_pool(pool)
