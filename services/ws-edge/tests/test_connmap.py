"""The connection map against a real Redis: entries belong to a node's process (incarnation),
routing merges a node's live processes, and the per-user limit counts live entries only."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable, Iterator
from types import SimpleNamespace
from typing import Any, TypeVar

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from infra.cache import redis_client
from infra.settings import CommonSettings
from mesh.testing import Infra
from ws_edge.adapters.connmap import RedisConnectionMap, node_of

pytestmark = pytest.mark.integration
T = TypeVar("T")


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


def _client(url: str) -> aioredis.Redis:
    """The edge's own Redis client (blocking pool, retries), as in production."""
    return redis_client(CommonSettings(redis_url=url, env="test"))


class Counted:
    """Counts the commands a Redis client sends (each one a round trip to Redis)."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self.calls: list[str] = []
        send = redis.execute_command

        async def counted(*args: Any, **options: Any) -> Any:
            self.calls.append(str(args[0]))
            return await send(*args, **options)

        redis.execute_command = counted  # type: ignore[method-assign]


def _against(url: str, scenario: Callable[[aioredis.Redis], Awaitable[T]]) -> T:
    """Run `scenario` with the edge's client on an emptied Redis at `url`."""

    async def run() -> T:
        redis = _client(url)
        try:
            await redis.flushdb()
            return await scenario(redis)
        finally:
            await redis.aclose()

    return asyncio.run(run())


def test_a_crowd_connecting_and_leaving_costs_a_few_calls(cache: Infra) -> None:
    """400 users connect at once (and one of them 10 times more, to a limit of 3), then all
    leave: every distinct user is admitted, exactly 3 of the 11 handshakes of the busy user
    are, nothing is left in the map afterwards, and each crowd took at most 10 Redis calls
    (one script or HDEL call per socket before)."""
    users = [f"u{i}" for i in range(400)]

    async def crowd(redis: aioredis.Redis) -> SimpleNamespace:
        cmap = RedisConnectionMap(redis, "a", ttl_seconds=15)
        await cmap.heartbeat({})
        counted = Counted(redis)
        seen = SimpleNamespace()
        seen.admitted = await asyncio.gather(
            *(cmap.reserve(u, f"c-{u}", 3) for u in users),
            *(cmap.reserve("u7", f"c-u7-{i}", 3) for i in range(10)),
        )
        seen.on_connect = list(counted.calls)
        seen.held = await redis.hlen("chat:conns:u7")
        counted.calls.clear()
        await asyncio.gather(
            *(cmap.unregister(u, f"c-{u}") for u in users),
            *(cmap.unregister("u7", f"c-u7-{i}") for i in range(10)),
        )
        seen.on_leave = list(counted.calls)
        seen.left = await redis.keys("chat:conns:*")
        return seen

    seen = _against(cache.redis_url, crowd)
    assert all(seen.admitted[:400])
    assert sum(seen.admitted[400:]) == 2  # u7's own connection is one of its 3
    assert seen.held == 3
    assert seen.left == []
    for calls in (seen.on_connect, seen.on_leave):
        assert 1 <= len(calls) <= 10, calls


def test_connects_and_disconnects_apply_in_the_order_asked(cache: Infra) -> None:
    """A reserve and an unregister of one connection asked in the same moment apply in that
    order (the entry is gone), the other way round the entry stays; a reserve whose caller
    gave up is still undone by the unregister asked after it."""

    async def in_order(redis: aioredis.Redis) -> tuple[list[dict[str, str]], bool]:
        cmap = RedisConnectionMap(redis, "a", ttl_seconds=15)
        await cmap.heartbeat({})
        await asyncio.gather(cmap.reserve("u1", "c1", 3), cmap.unregister("u1", "c1"))
        await asyncio.gather(cmap.unregister("u2", "c2"), cmap.reserve("u2", "c2", 3))
        abandoned = asyncio.create_task(cmap.reserve("u3", "c3", 3))
        await asyncio.sleep(0)
        abandoned.cancel()
        await cmap.unregister("u3", "c3")
        return [await redis.hgetall(f"chat:conns:u{i}") for i in (1, 2, 3)], abandoned.cancelled()

    (u1, u2, u3), abandoned = _against(cache.redis_url, in_order)
    assert u1 == {}
    assert list(u2) == ["c2"]
    assert u3 == {}
    assert abandoned is True  # the caller had really given up before Redis answered


def test_every_waiting_change_fails_when_redis_does_not_answer() -> None:
    """With Redis unreachable, each of several connects and disconnects asked at once gets
    the error (the hub then admits by its own count), and none waits for good."""

    async def run(port: int) -> list[BaseException | bool | None]:
        redis = _client(f"redis://127.0.0.1:{port}")
        try:
            cmap = RedisConnectionMap(redis, "a", ttl_seconds=15)
            changes = [cmap.reserve(f"u{i}", f"c{i}", 3) for i in range(5)]
            changes.append(cmap.unregister("u9", "c9"))
            return await asyncio.wait_for(asyncio.gather(*changes, return_exceptions=True), 30)
        finally:
            await redis.aclose()

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    results = asyncio.run(run(port))
    assert len(results) == 6
    assert all(isinstance(r, RedisConnectionError) for r in results), results
