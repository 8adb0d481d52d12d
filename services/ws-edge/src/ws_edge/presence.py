"""Presence: who is online, from the Redis connection map, announced to users who share a room.

A user is online while a connection of theirs is registered on a live node (the connection map,
`adapters/connmap.py`). What has been *announced* is kept apart, so that reconnects and moves
between nodes do not flap:

- `chat:presence:online` (set): users announced online. A node registering a user's connection
  adds the user; only the node whose `SADD` added it announces `online` (once, whatever the node).
- `chat:presence:gone` (hash, user -> ms): when a user was first seen with no connection on a
  live node. A check (`_CHECK_LUA`, atomic in Redis) announces `offline` only once the user
  has had no connection anywhere for `presence_grace_seconds`; any connection clears it.
- Checks run when a node's last local connection of a user closes (at once, and again after the
  grace period), and in a sweep (one node at a time, under a short Redis lock) that catches users
  of crashed or stopped nodes, whose entries stop counting when the node's liveness key expires.
- A node's arrivals and checks are applied in the order they happened, many per Redis call
  (`CHANGES_SCRIPT`): a crowd arriving or leaving at once (a network blip, a load balancer
  moving clients) costs a few calls instead of three or four per user, which used to keep the
  node's event loop busy for seconds at the moment and again one grace period later.

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
from dataclasses import dataclass
from typing import TYPE_CHECKING

import redis.asyncio as aioredis
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from pydantic import ValidationError

from contracts import subjects
from contracts.bus import PresenceChanged
from contracts.ws import PresenceFrame
from ws_edge.adapters.connmap import ALIVE_LUA, FORGET_LUA, MEMBERS_KEY, conns_key, users_key
from ws_edge.batching import OrderedBatches

if TYPE_CHECKING:
    from ws_edge.hub import Hub

log = logging.getLogger(__name__)

ONLINE_KEY = "chat:presence:online"
GONE_KEY = "chat:presence:gone"
SWEEP_LOCK_KEY = "chat:presence:sweep"
SWEEP_BATCH = 500  # users checked per Redis round trip in a sweep
CHANGE_BATCH = 500  # a node's arrivals and checks applied per Redis round trip
# a last check that finds the user still within the grace period (their grace began later than
# this node thought: another node saw them leave, or the first check waited in a crowd) looks
# again after half a grace period, this many times at most
LAST_CHECK_RETRIES = 4

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

# A node's presence changes in the order they happened, in one call. KEYS: online set, gone
# hash, the process's users set, then each change's user's conns hash. ARGV: now ms, grace ms,
# the process's entry value (member), then each change's kind and user. Kinds: `a` arrived
# (result 1: newly online, announce it), `c` left (the check that starts the grace period), `l`
# last check, `L` last check after which, once settled, the process forgets the user (no
# connection of theirs is left on it). Returns each change's result (checks: as `check`).
CHANGES_SCRIPT = (
    _CHECK_LUA
    + FORGET_LUA
    + """
local now, grace, member, results = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3], {}
for i = 4, #KEYS do
  local kind, user = ARGV[2 * i - 4], ARGV[2 * i - 3]
  local result
  if kind == 'a' then
    result = redis.call('SADD', KEYS[1], user)
    redis.call('HDEL', KEYS[2], user)
  else
    result = check(KEYS[i], KEYS[1], KEYS[2], user, now, grace)
    if kind == 'L' and result ~= -1 then
      forget(KEYS[3], KEYS[i], user, member)
    end
  end
  results[#results + 1] = result
end
return results
"""
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


@dataclass(slots=True)
class _Change:
    """One arrival or check of a user on this node, waiting for the next changes call."""

    kind: str  # "a" arrived, "c" left, "l" last check
    user_id: str
    rooms: list[str] | None  # announced with the change (None: asked from rooms)
    attempt: int = 0  # last checks: how many found the grace period still running


class Presence:
    """One node's part in presence: announce its users' changes, deliver everyone's."""

    def __init__(self, hub: Hub, redis: aioredis.Redis, grace_seconds: float) -> None:
        self.hub = hub
        self.redis = redis
        self.grace = grace_seconds
        self._changes_script = redis.register_script(CHANGES_SCRIPT)
        self._sweep_script = redis.register_script(SWEEP_SCRIPT)
        self._changes = OrderedBatches(self._apply, CHANGE_BATCH)
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
        self._changes.cancel()
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
        self._queue(_Change("a", user_id, None if rooms is None else sorted(rooms)))

    def disconnected(self, user_id: str, rooms: Collection[str] | None = None) -> None:
        """This node's last connection of `user_id` closed: check now and after the grace.

        `rooms`: the user's rooms as this node knew them, announced with the offline change
        instead of asking rooms for them again. Why: when a crowd leaves at once (a node's
        clients moving away, the benchmark's 20,000 idle sockets) each announcement was a rooms
        query and a store read, all due together one grace period later."""
        if self.stopping:
            return
        known = None if rooms is None else sorted(rooms)
        self._queue(_Change("c", user_id, known))
        self._last_check_later(_Change("l", user_id, known), self.grace + 0.1)

    # --- internals ----------------------------------------------------------------------------

    def _spawn(self, coro: object) -> None:
        assert asyncio.iscoroutine(coro)
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _last_check_later(self, change: _Change, delay: float) -> None:
        """Queue the user's last check after `delay` (replacing a pending one: a connection
        of theirs cancels it)."""
        old = self._checks.pop(change.user_id, None)
        if old is not None:
            old.cancel()

        def due() -> None:
            self._checks.pop(change.user_id, None)
            self._queue(change)

        self._checks[change.user_id] = asyncio.get_running_loop().call_later(delay, due)

    def _queue(self, change: _Change) -> None:
        """Queue a change; the changes queued meanwhile go to Redis together, in order."""
        if not self.stopping:
            self._changes.put(change)

    async def _apply(self, batch: list[_Change]) -> None:
        """Apply a batch of changes (one Redis call), then announce what each did, in order."""
        for change, result in zip(batch, await self._call(batch), strict=True):
            await self._applied(change, result)

    async def _call(self, batch: list[_Change]) -> list[int]:
        """CHANGES_SCRIPT for `batch`; when Redis fails, results that change nothing (a last
        check then looks again later)."""
        member = self.hub.connmap.member
        try:
            args: list[str | int] = [int(time.time() * 1000), int(self.grace * 1000), member]
            for change in batch:
                kind = change.kind
                if kind == "l" and change.user_id not in self.hub.by_user:
                    kind = "L"  # none of theirs left here: a sweep of this process need not check
                args += (kind, change.user_id)
            results = await self._changes_script(
                keys=[ONLINE_KEY, GONE_KEY, users_key(member)]
                + [conns_key(c.user_id) for c in batch],
                args=args,
            )
            return [int(r) for r in results]
        except Exception as exc:
            log.warning("presence: %d changes failed: %s", len(batch), exc)
            return [-1 if c.kind == "l" else 0 for c in batch]

    async def _applied(self, change: _Change, result: int) -> None:
        """Announce what a change did; a last check that found the grace period running (or
        failed) looks again later, unless a newer check of the user is pending."""
        if result == 1:
            online = change.kind == "a"
            if change.rooms is None:
                self._spawn(self._announce(change.user_id, online))  # a rooms query: not inline
            else:
                await self._announce(change.user_id, online, change.rooms)
        elif (
            result == -1
            and change.kind == "l"
            and change.attempt < LAST_CHECK_RETRIES
            and change.user_id not in self._checks
        ):
            retry = _Change("l", change.user_id, change.rooms, change.attempt + 1)
            self._last_check_later(retry, self.grace / 2 + 0.1)

    async def _announce(self, user_id: str, online: bool, rooms: list[str] | None = None) -> None:
        try:
            if rooms is None:
                rooms = await self.hub.bus.user_rooms(user_id)
            if not rooms:
                return  # shares no room: nobody is told (GET /presence reads Redis, not events)
            event = PresenceChanged(userId=user_id, online=online, roomIds=rooms)
            payload = event.model_dump_json().encode()
            await self.hub.bus.nc.publish(subjects.PRESENCE_CHANGED, payload)
        except Exception as exc:
            state = "online" if online else "offline"
            log.warning("presence (%s) not announced for %s: %s", state, user_id, exc)

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
                batch.append(str(raw))  # the client decodes (infra.cache: decode_responses)
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
            await self._announce(str(raw), online=False)
