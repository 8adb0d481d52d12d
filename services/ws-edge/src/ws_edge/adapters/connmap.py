"""The Redis connection map: user -> {connection id: node}, with node liveness.

Keys (Redis 6.2 commands only):
- `chat:conns:<userId>`  hash, field = connection id, value = node id
- `chat:node:<nodeId>:alive`  string with a TTL, refreshed by the node's heartbeat; a dead
  node's entries stop counting once it expires (and are removed lazily)
- `chat:node:<nodeId>:epoch`  the node's registration epoch: when it is missing (Redis lost
  its data), the node re-registers every local connection
"""

from __future__ import annotations

import logging
import secrets
from typing import Protocol

import redis.asyncio as aioredis

log = logging.getLogger(__name__)


def _conns_key(user_id: str) -> str:
    return f"chat:conns:{user_id}"


def _alive_key(node: str) -> str:
    return f"chat:node:{node}:alive"


def _epoch_key(node: str) -> str:
    return f"chat:node:{node}:epoch"


class ConnectionMap(Protocol):
    async def register(self, user_id: str, conn_id: str) -> None: ...
    async def unregister(self, user_id: str, conn_id: str) -> None: ...
    async def heartbeat(self, local: dict[str, str]) -> None: ...
    async def nodes_of(self, user_ids: list[str]) -> dict[str, list[str]]: ...
    async def count(self, user_id: str) -> int: ...


class RedisConnectionMap:
    """ConnectionMap on Redis."""

    def __init__(self, redis: aioredis.Redis, node: str, ttl_seconds: int) -> None:
        self.redis = redis
        self.node = node
        self.ttl = ttl_seconds
        self.epoch = secrets.token_hex(8)

    async def register(self, user_id: str, conn_id: str) -> None:
        await self.redis.hset(_conns_key(user_id), conn_id, self.node)

    async def unregister(self, user_id: str, conn_id: str) -> None:
        await self.redis.hdel(_conns_key(user_id), conn_id)

    async def count(self, user_id: str) -> int:
        entries = await self.redis.hgetall(_conns_key(user_id))
        alive = await self._alive_nodes({str(n) for n in entries.values()})
        return sum(1 for node in entries.values() if str(node) in alive)

    async def heartbeat(self, local: dict[str, str]) -> None:
        """Refresh liveness; re-register local connections (conn -> user) if Redis lost them."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(_alive_key(self.node), "1", ex=self.ttl)
        pipe.get(_epoch_key(self.node))
        _, epoch = await pipe.execute()
        if epoch != self.epoch:
            if local:
                pipe = self.redis.pipeline(transaction=False)
                for conn_id, user_id in local.items():
                    pipe.hset(_conns_key(user_id), conn_id, self.node)
                await pipe.execute()
            await self.redis.set(_epoch_key(self.node), self.epoch)
            log.info("registered %d local connections in redis", len(local))

    async def _alive_nodes(self, nodes: set[str]) -> set[str]:
        if not nodes:
            return set()
        ordered = sorted(nodes)
        flags = await self.redis.mget([_alive_key(n) for n in ordered])
        return {n for n, flag in zip(ordered, flags, strict=True) if flag}

    async def nodes_of(self, user_ids: list[str]) -> dict[str, list[str]]:
        """Live node -> the given users with a connection there (one pipelined round trip)."""
        pipe = self.redis.pipeline(transaction=False)
        for user_id in user_ids:
            pipe.hgetall(_conns_key(user_id))
        results: list[dict[str, str]] = await pipe.execute()
        by_node: dict[str, set[str]] = {}
        for user_id, entries in zip(user_ids, results, strict=True):
            for node in entries.values():
                by_node.setdefault(node, set()).add(user_id)
        alive = await self._alive_nodes(set(by_node))
        dead = set(by_node) - alive
        if dead:
            await self._forget_dead(user_ids, results, dead)
        return {node: sorted(users) for node, users in by_node.items() if node in alive}

    async def _forget_dead(
        self, user_ids: list[str], results: list[dict[str, str]], dead: set[str]
    ) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for user_id, entries in zip(user_ids, results, strict=True):
            stale = [conn for conn, node in entries.items() if node in dead]
            if stale:
                pipe.hdel(_conns_key(user_id), *stale)
        await pipe.execute()

    async def leave(self, local: dict[str, str]) -> None:
        """Node shutdown: drop its entries and liveness."""
        pipe = self.redis.pipeline(transaction=False)
        for conn_id, user_id in local.items():
            pipe.hdel(_conns_key(user_id), conn_id)
        pipe.delete(_alive_key(self.node), _epoch_key(self.node))
        await pipe.execute()
