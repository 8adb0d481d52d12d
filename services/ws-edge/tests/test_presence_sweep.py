"""The presence sweep against a real Redis: users of dead nodes are announced offline once the
grace period has passed, checked in batches, and nobody with a live connection is."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import redis.asyncio as aioredis

from mesh.testing import Infra
from ws_edge import presence
from ws_edge.presence import ONLINE_KEY, Presence

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cache(infra: Infra) -> Iterator[Infra]:
    """A private Redis (the presence keys are global to one deployment)."""
    with infra.fork() as fork:
        yield fork


class Announcements:
    """What a Presence would send on the bus (the part of the hub it uses in a sweep)."""

    def __init__(self) -> None:
        self.offline: list[str] = []
        self.online: list[str] = []
        self.asked: list[str] = []  # user_rooms queries (each one a rooms query and a store read)
        self.by_user: dict[str, Any] = {}
        self.bus = SimpleNamespace(user_rooms=self.user_rooms, nc=SimpleNamespace(publish=self.pub))

    async def user_rooms(self, user_id: str) -> list[str]:
        self.asked.append(user_id)
        return ["room_1"]

    async def pub(self, subject: str, payload: bytes) -> None:
        if b'"online":false' in payload:
            self.offline.append(payload.decode())
        else:
            self.online.append(payload.decode())


def test_sweep_announces_users_of_dead_nodes_in_batches(
    cache: Infra, monkeypatch: pytest.MonkeyPatch
) -> None:
    """1,203 announced users: 1,000 whose only connection is on a node with no liveness key,
    200 with a connection on a live node, 3 connected on the sweeping node itself. The first
    sweep marks the 1,000 gone (grace period starts), the second, after the grace period,
    announces exactly those 1,000 offline; each sweep checks the 1,200 not connected here in
    batches of at most 64, one script call each; the live ones stay online."""
    monkeypatch.setattr(presence, "SWEEP_BATCH", 64)
    batches: list[int] = []
    check_batch = Presence._check_batch

    async def counted(self: Presence, user_ids: list[str]) -> None:
        batches.append(len(user_ids))
        await check_batch(self, user_ids)

    monkeypatch.setattr(Presence, "_check_batch", counted)

    async def run() -> dict[str, Any]:
        redis = aioredis.from_url(cache.redis_url)
        try:
            await redis.flushdb()
            dead = [f"user_dead_{i}" for i in range(1000)]
            live = [f"user_live_{i}" for i in range(200)]
            local = [f"user_local_{i}" for i in range(3)]
            await redis.sadd(ONLINE_KEY, *dead, *live, *local)
            await redis.set("chat:node:alive-node:alive", "1")
            for user in dead:
                await redis.hset(f"chat:conns:{user}", "conn-x", "dead-node")
            for user in live:
                await redis.hset(f"chat:conns:{user}", "conn-y", "alive-node")
            hub = Announcements()
            hub.by_user = {user: {"conn"} for user in local}
            sweeper = Presence(hub, redis, grace_seconds=0.2)  # type: ignore[arg-type]
            await redis.config_resetstat()
            await sweeper._sweep()
            first = list(hub.offline)
            await asyncio.sleep(0.3)
            await sweeper._sweep()
            stats = await redis.info("commandstats")
            still_online = {m.decode() for m in await redis.smembers(ONLINE_KEY)}
            return {
                "first": first,
                "offline": hub.offline,
                "online": still_online,
                "script_calls": sum(
                    int(stats.get(f"cmdstat_{name}", {}).get("calls", 0))
                    for name in ("evalsha", "eval")
                ),
            }
        finally:
            await redis.aclose()

    seen = asyncio.run(run())
    assert seen["first"] == []  # within the grace period: nobody yet
    assert sum(batches) == 2 * 1200
    assert max(batches) <= 64
    assert len(batches) <= 2 * (1200 // 64 + 1)
    # one script call per batch (a call per user made 2,400), plus the first call's load
    assert seen["script_calls"] <= len(batches) + 2
    announced = sorted(s.split('"userId":"')[1].split('"')[0] for s in seen["offline"])
    assert announced == sorted(f"user_dead_{i}" for i in range(1000))
    assert seen["online"] == {f"user_live_{i}" for i in range(200)} | {
        f"user_local_{i}" for i in range(3)
    }


def test_leaving_users_are_announced_with_the_rooms_the_node_knew(cache: Infra) -> None:
    """The last connection of a user closes on this node: after the grace period the offline
    change goes out with the rooms the node knew, without asking rooms for them (a crowd
    leaving at once made one rooms query each); a user whose rooms the node did not know is
    still looked up; one who shares no room is marked offline without an event (nobody to tell)."""

    async def run() -> tuple[Announcements, int]:
        redis = aioredis.from_url(cache.redis_url)
        try:
            await redis.flushdb()
            users = [f"user_leaving_{i}" for i in range(50)]
            await redis.sadd(ONLINE_KEY, *users, "user_unknown_rooms", "user_without_rooms")
            hub = Announcements()
            node = Presence(hub, redis, grace_seconds=0.2)  # type: ignore[arg-type]
            for user in users:
                node.disconnected(user, {"room_b", "room_a"})
            node.disconnected("user_unknown_rooms")
            node.disconnected("user_without_rooms", set())
            for _ in range(100):
                await asyncio.sleep(0.05)
                if len(hub.offline) == 51 and not node._tasks:
                    break
            return hub, await redis.sismember(ONLINE_KEY, "user_without_rooms")
        finally:
            await redis.aclose()

    hub, still_online = asyncio.run(run())
    assert hub.asked == ["user_unknown_rooms"]
    by_user = {json.loads(s)["userId"]: json.loads(s)["roomIds"] for s in hub.offline}
    assert len(hub.offline) == 51
    assert by_user["user_leaving_7"] == ["room_a", "room_b"]
    assert by_user["user_unknown_rooms"] == ["room_1"]
    assert "user_without_rooms" not in by_user
    assert still_online == 0  # its announced state changed all the same


def test_arriving_users_are_announced_with_the_rooms_the_hub_loaded(cache: Infra) -> None:
    """A user's first connection is announced online with the rooms the hub has just loaded
    for it, without a second rooms query per connect; a second connection of a user already
    online announces nothing; a caller that knows no rooms still has them looked up."""

    async def run() -> Announcements:
        redis = aioredis.from_url(cache.redis_url)
        try:
            await redis.flushdb()
            hub = Announcements()
            node = Presence(hub, redis, grace_seconds=5)  # type: ignore[arg-type]
            for i in range(50):
                node.connected(f"user_arriving_{i}", {"room_b", "room_a"})
            node.connected("user_arriving_3", {"room_a", "room_b"})  # already online
            node.connected("user_rooms_unknown")
            node.connected("user_without_rooms", set())
            for _ in range(100):
                await asyncio.sleep(0.05)
                if len(hub.online) == 51 and not node._tasks:
                    break
            return hub
        finally:
            await redis.aclose()

    hub = asyncio.run(run())
    assert hub.asked == ["user_rooms_unknown"]
    by_user = {json.loads(s)["userId"]: json.loads(s)["roomIds"] for s in hub.online}
    assert len(hub.online) == 51
    assert by_user["user_arriving_3"] == ["room_a", "room_b"]
    assert by_user["user_rooms_unknown"] == ["room_1"]
    assert "user_without_rooms" not in by_user
