"""The presence sweep against a real Redis: users of dead nodes are announced offline once the
grace period has passed, checked in batches, and nobody with a live connection is."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import redis.asyncio as aioredis

from mesh.testing import Infra
from ws_edge import presence
from ws_edge.adapters.connmap import MEMBERS_KEY, RedisConnectionMap, conns_key, users_key
from ws_edge.presence import GONE_KEY, ONLINE_KEY, Presence

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cache(infra: Infra) -> Iterator[Infra]:
    """A private Redis (the presence keys are global to one deployment)."""
    with infra.fork() as fork:
        yield fork


class Announcements:
    """What a Presence would send on the bus (the part of the hub it uses), with this node's
    real connection map."""

    def __init__(self, connmap: RedisConnectionMap) -> None:
        self.connmap = connmap
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


async def _script_calls(redis: aioredis.Redis) -> int:
    """Script calls Redis has run since its statistics were last reset."""
    stats = await redis.info("commandstats")
    return sum(
        int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in ("evalsha", "eval")
    )


async def _settled(done: Callable[[], bool]) -> None:
    """Wait up to 20 s for `done` (the assertions after it say what was missing; 5 s was once
    too short on a machine loaded by other suites)."""
    for _ in range(400):
        await asyncio.sleep(0.05)
        if done():
            return


def _quiet(node: presence.Presence) -> bool:
    """Nothing left to do: no announcement task, no batch queued or out, no check pending."""
    return not node._tasks and node._changes.idle and not node._checks


def test_sweep_announces_users_of_dead_processes_in_batches(
    cache: Infra, monkeypatch: pytest.MonkeyPatch
) -> None:
    """1,000 users registered only by a process that died (no liveness), 10 more of it that
    have moved to a live process, 200 on a live process, 3 on the sweeping process itself; all
    announced online. The first sweep marks the 1,000 gone (grace period starts), the second,
    after the grace period, announces exactly those 1,000 offline. A sweep reads only the dead
    process's users (1,010, in batches of at most 64, one script call each), never those of
    live processes; once all of them are settled the dead process is forgotten."""
    monkeypatch.setattr(presence, "SWEEP_BATCH", 64)
    batches: list[int] = []
    checked: list[set[str]] = [set(), set()]  # the users each sweep checked
    check_batch = Presence._check_batch

    async def counted(self: Presence, users: str, user_ids: list[str]) -> None:
        batches.append(len(user_ids))
        checked[1 if sweeps else 0].update(user_ids)
        await check_batch(self, users, user_ids)

    monkeypatch.setattr(Presence, "_check_batch", counted)
    sweeps: list[int] = []

    async def run() -> dict[str, Any]:
        redis = aioredis.from_url(cache.redis_url, decode_responses=True)  # as infra.cache
        try:
            await redis.flushdb()
            dead_process = RedisConnectionMap(redis, "x", ttl_seconds=15)  # never beats
            live_process = RedisConnectionMap(redis, "y", ttl_seconds=15)
            sweeping = RedisConnectionMap(redis, "z", ttl_seconds=15)
            await live_process.heartbeat({})
            await sweeping.heartbeat({})
            dead = [f"user_dead_{i}" for i in range(1000)]
            moved = [f"user_moved_{i}" for i in range(10)]
            live = [f"user_live_{i}" for i in range(200)]
            local = [f"user_local_{i}" for i in range(3)]
            for user in dead + moved:
                await dead_process.register(user, f"c-{user}")
            for user in moved + live:
                await live_process.register(user, f"c2-{user}")
            for user in local:
                await sweeping.register(user, f"c3-{user}")
            await redis.sadd(ONLINE_KEY, *dead, *moved, *live, *local)
            hub = Announcements(sweeping)
            hub.by_user = {user: {"conn"} for user in local}
            sweeper = Presence(hub, redis, grace_seconds=0.2)  # type: ignore[arg-type]
            await redis.config_resetstat()
            await sweeper._sweep()
            first = list(hub.offline)
            sweeps.append(1)
            await asyncio.sleep(0.3)
            await sweeper._sweep()
            return {
                "first": first,
                "offline": hub.offline,
                "online": set(await redis.smembers(ONLINE_KEY)),
                "script_calls": await _script_calls(redis),
                "dead_users_left": await redis.scard(users_key(dead_process.member)),
                "members": set(await redis.smembers(MEMBERS_KEY)),
                "live_members": {live_process.member, sweeping.member},
            }
        finally:
            await redis.aclose()

    seen = asyncio.run(run())
    assert seen["first"] == []  # within the grace period: nobody yet
    # first sweep: all 1,010; second: the 1,000 still in their grace period (moved settled);
    # SSCAN may return a user twice while the sweep removes others (a second check is harmless)
    assert checked[0] == {f"user_dead_{i}" for i in range(1000)} | {
        f"user_moved_{i}" for i in range(10)
    }
    assert checked[1] == {f"user_dead_{i}" for i in range(1000)}
    assert sum(batches) < 2 * 2010
    assert max(batches) <= 64
    # one script call per batch (a call per user made one per user), plus the first's load
    assert seen["script_calls"] <= len(batches) + 2
    announced = sorted(s.split('"userId":"')[1].split('"')[0] for s in seen["offline"])
    assert announced == sorted(f"user_dead_{i}" for i in range(1000))
    assert seen["online"] == (
        {f"user_moved_{i}" for i in range(10)}
        | {f"user_live_{i}" for i in range(200)}
        | {f"user_local_{i}" for i in range(3)}
    )
    assert seen["dead_users_left"] == 0
    assert seen["members"] == seen["live_members"]  # the dead process is forgotten


def test_leaving_users_are_announced_with_the_rooms_the_node_knew(cache: Infra) -> None:
    """The last connection of a user closes on this node: after the grace period the offline
    change goes out with the rooms the node knew, without asking rooms for them (a crowd
    leaving at once made one rooms query each); a user whose rooms the node did not know is
    still looked up; one who shares no room is marked offline without an event (nobody to tell).
    Once a user's last check is made the node's process forgets them (a sweep after a crash
    of it need not check them), unless they connected to it again meanwhile."""

    async def run() -> tuple[Announcements, int, set[str], int]:
        redis = aioredis.from_url(cache.redis_url, decode_responses=True)  # as infra.cache
        try:
            await redis.flushdb()
            connmap = RedisConnectionMap(redis, "a", ttl_seconds=15)
            await connmap.heartbeat({})
            users = [f"user_leaving_{i}" for i in range(50)]
            everyone = [*users, "user_unknown_rooms", "user_without_rooms", "user_back"]
            for user in everyone:
                await connmap.register(user, f"c-{user}")
                await connmap.unregister(user, f"c-{user}")
            await redis.sadd(ONLINE_KEY, *everyone)
            hub = Announcements(connmap)
            node = Presence(hub, redis, grace_seconds=0.2)  # type: ignore[arg-type]
            for user in users:
                node.disconnected(user, {"room_b", "room_a"})
            node.disconnected("user_unknown_rooms")
            node.disconnected("user_without_rooms", set())
            node.disconnected("user_back", set())
            await connmap.register("user_back", "c-again")  # back before the grace period ends
            await redis.config_resetstat()
            await _settled(lambda: len(hub.offline) == 51 and _quiet(node))
            kept = {str(m) for m in await redis.smembers(users_key(connmap.member))}
            calls = await _script_calls(redis)
            return hub, await redis.sismember(ONLINE_KEY, "user_without_rooms"), kept, calls
        finally:
            await redis.aclose()

    hub, still_online, kept, calls = asyncio.run(run())
    # the 53 users' checks went to Redis together: at once, and after the grace period (a call
    # per check, and one more per forget, made 159; measured 260 with the retries of the time)
    assert calls <= 10
    assert hub.asked == ["user_unknown_rooms"]
    by_user = {json.loads(s)["userId"]: json.loads(s)["roomIds"] for s in hub.offline}
    assert len(hub.offline) == 51
    assert by_user["user_leaving_7"] == ["room_a", "room_b"]
    assert by_user["user_unknown_rooms"] == ["room_1"]
    assert "user_without_rooms" not in by_user
    assert still_online == 0  # its announced state changed all the same
    assert kept == {"user_back"}  # the others are forgotten by the node's process


def test_arriving_users_are_announced_with_the_rooms_the_hub_loaded(cache: Infra) -> None:
    """A user's first connection is announced online with the rooms the hub has just loaded
    for it, without a second rooms query per connect; a second connection of a user already
    online announces nothing; a caller that knows no rooms still has them looked up."""

    async def run() -> Announcements:
        redis = aioredis.from_url(cache.redis_url, decode_responses=True)  # as infra.cache
        try:
            await redis.flushdb()
            hub = Announcements(RedisConnectionMap(redis, "a", ttl_seconds=15))
            node = Presence(hub, redis, grace_seconds=5)  # type: ignore[arg-type]
            await redis.config_resetstat()
            for i in range(50):
                node.connected(f"user_arriving_{i}", {"room_b", "room_a"})
            node.connected("user_arriving_3", {"room_a", "room_b"})  # already online
            node.connected("user_rooms_unknown")
            node.connected("user_without_rooms", set())
            await _settled(lambda: len(hub.online) == 51 and _quiet(node))
            assert await _script_calls(redis) <= 3  # together (a pipeline each made 53)
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


def test_a_crowd_arriving_and_leaving_is_applied_in_order_in_few_calls(cache: Infra) -> None:
    """1,200 users arrive and 1,000 of them leave again in the same moment (a network blip):
    their arrivals and checks reach Redis in the order they happened, at most CHANGE_BATCH per
    call, so the 1,000 end announced offline after the grace period (none left online by a
    check applied before its arrival) and the 200 who stayed are online; a few calls, where a
    pipeline or script per change made more than 3,000."""

    async def run() -> tuple[Announcements, set[str], int]:
        # the services' pool: at most 64 connections, a command waits for one (infra.cache)
        pool = aioredis.BlockingConnectionPool.from_url(
            cache.redis_url, max_connections=64, timeout=20, decode_responses=True
        )
        redis = aioredis.Redis.from_pool(pool)
        try:
            await redis.flushdb()
            connmap = RedisConnectionMap(redis, "a", ttl_seconds=15)
            await connmap.heartbeat({})
            users = [f"user_crowd_{i}" for i in range(1200)]
            for user in users:
                await connmap.register(user, f"c-{user}")
            hub = Announcements(connmap)
            node = Presence(hub, redis, grace_seconds=0.3)  # type: ignore[arg-type]
            await redis.config_resetstat()
            for user in users:
                node.connected(user, {"room_a"})
            leaving = users[:1000]
            pipe = redis.pipeline(transaction=False)
            for user in leaving:
                pipe.hdel(conns_key(user), f"c-{user}")  # as the hub unregisters each
            await pipe.execute()
            for user in leaving:
                node.disconnected(user, {"room_a"})
            await _settled(lambda: len(hub.offline) == 1000 and _quiet(node))
            calls = await _script_calls(redis)
            return hub, {str(m) for m in await redis.smembers(ONLINE_KEY)}, calls
        finally:
            await redis.aclose()

    hub, online, calls = asyncio.run(run())
    assert len(hub.online) == 1200  # each arrival announced once
    assert sorted(json.loads(s)["userId"] for s in hub.offline) == sorted(
        f"user_crowd_{i}" for i in range(1000)
    )
    assert online == {f"user_crowd_{i}" for i in range(1000, 1200)}
    # 3,200 changes (arrivals, first and last checks) at most 500 a call: a few calls more
    # when the loop's timing splits a crowd (a pipeline or script per change made 3,000+)
    assert calls <= 50


def test_a_last_check_within_the_grace_period_looks_again(cache: Infra) -> None:
    """A user's grace period began later than this node's last check expected (another node
    saw them leave after this one did): the last check finds it still running and looks again,
    so the user is announced offline once it has passed instead of staying online for good."""

    async def run() -> tuple[Announcements, bool, set[str]]:
        redis = aioredis.from_url(cache.redis_url, decode_responses=True)  # as infra.cache
        try:
            await redis.flushdb()
            connmap = RedisConnectionMap(redis, "a", ttl_seconds=15)
            await connmap.heartbeat({})
            await connmap.register("user_late", "c-late")
            await connmap.unregister("user_late", "c-late")
            await redis.sadd(ONLINE_KEY, "user_late")
            hub = Announcements(connmap)
            node = Presence(hub, redis, grace_seconds=0.4)  # type: ignore[arg-type]
            node.disconnected("user_late", {"room_a"})
            await asyncio.sleep(0.3)
            # another node's check restarts the grace period shortly before this node's last
            # check (grace + 0.1 s after the disconnect) runs
            await redis.hset(GONE_KEY, "user_late", int(time.time() * 1000))
            await asyncio.sleep(0.3)
            early = list(hub.offline)
            await _settled(lambda: len(hub.offline) == 1 and _quiet(node))
            assert early == []  # the first last check found the grace period running
            online = bool(await redis.sismember(ONLINE_KEY, "user_late"))
            return hub, online, {str(m) for m in await redis.smembers(users_key(connmap.member))}
        finally:
            await redis.aclose()

    hub, online, kept = asyncio.run(run())
    assert [json.loads(s)["userId"] for s in hub.offline] == ["user_late"]
    assert not online
    assert kept == set()  # forgotten once settled
