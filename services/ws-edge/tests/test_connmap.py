"""The connection map against a real Redis: entries belong to a node's process (incarnation),
routing merges a node's live processes, and the per-user limit counts live entries only."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from mesh.testing import Infra
from ws_edge.adapters.connmap import RedisConnectionMap, node_of

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cache(infra: Infra) -> Iterator[Infra]:
    """A private Redis (the map's keys are global to one deployment)."""
    with infra.fork() as fork:
        yield fork


def test_a_crashed_process_is_a_dead_node_even_when_its_id_lives_on(cache: Infra) -> None:
    """Node a's first process registers u1 and dies without leaving (no heartbeat any more);
    a second process of node a (same id) registers u2 and beats, as does node b with u3.
    Routing finds u2 on a and u3 on b, not u1; the dead process's entry is forgotten; u1's
    limit counts no dead entry. While the old process's liveness has not expired yet, both
    processes route to node a once, with both users."""

    async def run() -> dict[str, Any]:
        redis = aioredis.from_url(cache.redis_url, decode_responses=True)  # as infra.cache
        try:
            await redis.flushdb()
            old_a = RedisConnectionMap(redis, "a", ttl_seconds=15)
            new_a = RedisConnectionMap(redis, "a", ttl_seconds=15)
            b = RedisConnectionMap(redis, "b", ttl_seconds=15)
            await old_a.register("u1", "c1")
            await new_a.heartbeat({})
            await b.heartbeat({})
            await new_a.register("u2", "c2")
            await b.register("u3", "c3")
            routed = await new_a.nodes_of(["u1", "u2", "u3"])
            left = await redis.hgetall("chat:conns:u1")
            # u1 reconnects to a limit of 1: the dead process's entry must not count
            admitted = await new_a.reserve("u1", "c4", 1)
            refused = await new_a.reserve("u1", "c5", 1)
            # right after a crash its liveness has not expired yet: both processes count
            await redis.set(f"chat:node:{old_a.member}:alive", "1", ex=15)
            await old_a.register("u1", "c1")
            both = await new_a.nodes_of(["u1", "u2"])
            return {
                "members": {old_a.member, new_a.member},
                "routed": routed,
                "left": left,
                "admitted": admitted,
                "refused": refused,
                "both": both,
            }
        finally:
            await redis.aclose()

    seen = asyncio.run(run())
    assert len(seen["members"]) == 2
    assert {node_of(m) for m in seen["members"]} == {"a"}
    assert seen["routed"] == {"a": ["u2"], "b": ["u3"]}
    assert seen["left"] == {}  # forgotten while routing
    assert seen["admitted"] is True
    assert seen["refused"] is False
    assert seen["both"] == {"a": ["u1", "u2"]}
