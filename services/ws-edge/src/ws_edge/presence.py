"""Presence: who is online, from the Redis connection map, announced to users who share a room.

A user is online while a connection of theirs is registered on a live node (the connection map,
`adapters/connmap.py`). What has been *announced* is kept apart, so that reconnects and moves
between nodes do not flap:

- `chat:presence:online` (set): users announced online. A node registering a user's connection
  adds the user; only the node whose `SADD` added it announces `online` (once, whatever the node).
- `chat:presence:gone` (hash, user -> ms): when a user was first seen with no connection on a
  live node. A check (`OFFLINE_SCRIPT`, atomic in Redis) announces `offline` only once the user
  has had no connection anywhere for `presence_grace_seconds`; any connection clears it.
- Checks run when a node's last local connection of a user closes (at once, and again after the
  grace period), and in a sweep (one node at a time, under a short Redis lock) that catches users
  of crashed or stopped nodes, whose entries stop counting when the node's liveness key expires.

Changes travel as `PresenceChanged` on core NATS (`chat.presence.changed`) with the user's room
ids; every edge node pushes a `presence` frame to its local connections in those rooms (it finds
them through its per-room feeds: no participant lists are read). Redis 6.2 commands only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Collection
from typing import TYPE_CHECKING

import redis.asyncio as aioredis
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from pydantic import ValidationError

from contracts import subjects
from contracts.bus import PresenceChanged
from contracts.ws import PresenceFrame
from ws_edge.adapters.connmap import ALIVE_LUA, MEMBERS_KEY, conns_key, users_key

if TYPE_CHECKING:
    from ws_edge.hub import Hub

log = logging.getLogger(__name__)

ONLINE_KEY = "chat:presence:online"
GONE_KEY = "chat:presence:gone"
SWEEP_LOCK_KEY = "chat:presence:sweep"
SWEEP_BATCH = 500  # users checked per Redis round trip in a sweep

# The offline check of one user, shared by the scripts below. Returns 1 when the user is now
# offline (removed from the online set: announce it), 0 when online or never announced, -1 when
# gone but still within the grace period.
_CHECK_LUA = (
    ALIVE_LUA
    + """
local function check(conns, online, gone, user, now, grace)
  for _, member in ipairs(redis.call('HVALS', conns)) do
    if alive(member) then
      redis.call('HDEL', gone, user)
      return 0
    end
  end
  if redis.call('SISMEMBER', online, user) == 0 then
    redis.call('HDEL', gone, user)
    return 0
  end
  local since = redis.call('HGET', gone, user)
  if not since then
    redis.call('HSET', gone, user, now)
    return -1
  end
  if now - tonumber(since) >= grace then
    redis.call('SREM', online, user)
    redis.call('HDEL', gone, user)
    return 1
  end
  return -1
end
"""
)

# KEYS: conns hash of the user, online set, gone hash. ARGV: user, now ms, grace ms.
OFFLINE_SCRIPT = (
    _CHECK_LUA
    + "return check(KEYS[1], KEYS[2], KEYS[3], ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]))"
)

# A sweep's batch of a dead process's users in one call. KEYS: online set, gone hash, the
# process's users set, then each user's conns hash. ARGV: now ms, grace ms, then the users (in
# the order of their keys). A user whose check is settled (online elsewhere, or now offline)
# leaves the process's users set; one still within the grace period stays for the next sweep.
# Returns the users now offline. Why one call per batch: a call per user cost the sweeping
# node a command's worth of client work per user every grace period.
SWEEP_SCRIPT = (
    _CHECK_LUA
    + """
local now, grace, offline = tonumber(ARGV[1]), tonumber(ARGV[2]), {}
for i = 4, #KEYS do
  local user = ARGV[i - 1]
  local result = check(KEYS[i], KEYS[1], KEYS[2], user, now, grace)
  if result ~= -1 then
    redis.call('SREM', KEYS[3], user)
  end
  if result == 1 then
    offline[#offline + 1] = user
  end
end
return offline
"""
)


class Presence:
    """One node's part in presence: announce its users' changes, deliver everyone's."""

    def __init__(self, hub: Hub, redis: aioredis.Redis, grace_seconds: float) -> None:
        self.hub = hub
        self.redis = redis
        self.grace = grace_seconds
        self._script = redis.register_script(OFFLINE_SCRIPT)
        self._sweep_script = redis.register_script(SWEEP_SCRIPT)
        self._sub: Subscription | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._checks: dict[str, asyncio.TimerHandle] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self.stopping = False

    async def start(self) -> None:
        self._sub = await self.hub.bus.subscribe(subjects.PRESENCE_CHANGED, self._on_changed)
        self._sweeper = asyncio.create_task(self._sweep_loop(), name="presence-sweep")

    async def stop(self) -> None:
        self.stopping = True
        for handle in self._checks.values():
            handle.cancel()
        self._checks.clear()
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self._sweeper, 2)
        for task in list(self._tasks):
            task.cancel()
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()

    # --- queries ------------------------------------------------------------------------------

    async def online(self, user_ids: list[str]) -> dict[str, bool]:
        """Announced state of each user (what `presence` frames said last)."""
        if not user_ids:
            return {}
        pipe = self.redis.pipeline(transaction=False)
        for user_id in user_ids:
            pipe.sismember(ONLINE_KEY, user_id)
        flags = await pipe.execute()
        return {u: bool(f) for u, f in zip(user_ids, flags, strict=True)}

    # --- hooks from the hub -------------------------------------------------------------------

    def connected(self, user_id: str, rooms: Collection[str] | None = None) -> None:
        """A connection of `user_id` was registered on this node.

        `rooms`: the user's rooms as the hub has just loaded them for the connection, announced
        with the online change instead of asking rooms for them again (one rooms query and one
        store read less per connect; None asks)."""
        handle = self._checks.pop(user_id, None)
        if handle is not None:
            handle.cancel()
        self._spawn(self._came(user_id, None if rooms is None else sorted(rooms)))

    def disconnected(self, user_id: str, rooms: Collection[str] | None = None) -> None:
        """This node's last connection of `user_id` closed: check now and after the grace.

        `rooms`: the user's rooms as this node knew them, announced with the offline change
        instead of asking rooms for them again. Why: when a crowd leaves at once (a node's
        clients moving away, the benchmark's 20,000 idle sockets) each announcement was a rooms
        query and a store read, all due together one grace period later."""
        if self.stopping:
            return
        known = None if rooms is None else sorted(rooms)
        self._spawn(self._check(user_id, rooms=known))
        old = self._checks.pop(user_id, None)
        if old is not None:
            old.cancel()
        loop = asyncio.get_running_loop()
        self._checks[user_id] = loop.call_later(
            self.grace + 0.1, lambda: self._spawn(self._check(user_id, final=True, rooms=known))
        )

    # --- internals ----------------------------------------------------------------------------

    def _spawn(self, coro: object) -> None:
        assert asyncio.iscoroutine(coro)
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _came(self, user_id: str, rooms: list[str] | None = None) -> None:
        try:
            pipe = self.redis.pipeline(transaction=False)
            pipe.sadd(ONLINE_KEY, user_id)
            pipe.hdel(GONE_KEY, user_id)
            added, _ = await pipe.execute()
            if added:
                await self._announce(user_id, online=True, rooms=rooms)
        except Exception as exc:
            log.warning("presence (online) failed for %s: %s", user_id, exc)

    async def _check(
        self, user_id: str, final: bool = False, rooms: list[str] | None = None
    ) -> None:
        if final:
            self._checks.pop(user_id, None)
        try:
            if await self._run_script(user_id) == 1:
                await self._announce(user_id, online=False, rooms=rooms)
            if final and user_id not in self.hub.by_user:
                # settled here: a sweep of this process (after a crash) need not check them
                await self.hub.connmap.forget(user_id)
        except Exception as exc:
            log.warning("presence (offline check) failed for %s: %s", user_id, exc)

    async def _run_script(self, user_id: str) -> int:
        """OFFLINE_SCRIPT for one user, with the KEYS and ARGV it reads."""
        result = await self._script(
            keys=[conns_key(user_id), ONLINE_KEY, GONE_KEY],
            args=[user_id, int(time.time() * 1000), int(self.grace * 1000)],
        )
        return int(result)

    async def _announce(self, user_id: str, online: bool, rooms: list[str] | None = None) -> None:
        if rooms is None:
            rooms = await self.hub.bus.user_rooms(user_id)
        if not rooms:
            return  # shares no room: nobody is told (GET /presence reads Redis, not events)
        event = PresenceChanged(userId=user_id, online=online, roomIds=rooms)
        await self.hub.bus.nc.publish(subjects.PRESENCE_CHANGED, event.model_dump_json().encode())

    async def _on_changed(self, msg: Msg) -> None:
        try:
            event = PresenceChanged.model_validate_json(msg.data)
        except ValidationError:
            log.warning("undecodable PresenceChanged")
            return
        text = PresenceFrame(userId=event.userId, online=event.online).model_dump_json()
        sent: set[str] = set()
        for room_id in event.roomIds:
            feed = self.hub.feeds.get(room_id)
            if feed is None:
                continue
            for conn in list(feed.members):
                if conn.user_id != event.userId and conn.id not in sent:
                    sent.add(conn.id)
                    conn.push(text)

    async def _sweep_loop(self) -> None:
        """Users of dead or stopped nodes: checked by one node at a time, every grace period."""
        interval = max(1.0, self.grace)
        while not self.stopping:
            await asyncio.sleep(interval)
            try:
                got = await self.redis.set(
                    SWEEP_LOCK_KEY, self.hub.node, nx=True, px=int(interval * 900)
                )
                if got:
                    await self._sweep()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("presence sweep failed: %s", exc)

    async def _sweep(self) -> None:
        """Check the users of every dead process (crashed, or stopped with users still in its
        grace period), SWEEP_BATCH per script call; forget a process once all its users are
        settled.

        Why only those: a user whose connections are all on live processes is online, and a
        user who left a live process is checked by that process itself (at once and after the
        grace period). Checking everyone announced online cost Redis a check per online user
        every grace period (2,000 a second at 20,000 users online). SSCAN may return a user
        twice while the script removes others from the set: a second check changes nothing."""
        for member in await self.hub.connmap.dead_members():
            users = users_key(member)
            batch: list[str] = []
            async for raw in self.redis.sscan_iter(users, count=SWEEP_BATCH):
                batch.append(raw.decode() if isinstance(raw, bytes) else str(raw))
                if len(batch) >= SWEEP_BATCH:
                    await self._check_batch(users, batch)
                    batch = []
            if batch:
                await self._check_batch(users, batch)
            if not await self.redis.exists(users):  # every user settled: nothing left of it
                await self.redis.srem(MEMBERS_KEY, member)

    async def _check_batch(self, users: str, user_ids: list[str]) -> None:
        """The offline check of each user of the users set `users`, in one Redis call;
        announces those now offline."""
        now_ms = int(time.time() * 1000)
        offline = await self._sweep_script(
            keys=[ONLINE_KEY, GONE_KEY, users, *(conns_key(u) for u in user_ids)],
            args=[now_ms, int(self.grace * 1000), *user_ids],
        )
        for raw in offline:
            await self._announce(raw.decode() if isinstance(raw, bytes) else str(raw), online=False)
