"""The Redis connection map: user -> {connection id: node}, with node liveness.

Keys (Redis 6.2 commands only):
- `chat:conns:<userId>`  hash, field = connection id, value = `<nodeId>~<incarnation>`: the
  node id and a random id of the node's process (its incarnation)
- `chat:node:<nodeId>~<incarnation>:alive`  string with a TTL, refreshed by the process's
  heartbeat; a dead node's entries stop counting once it expires (and are removed lazily).
  Why per incarnation: a node that crashes and is restarted at once (same node id) keeps its
  id's liveness alive, so entries keyed by the id alone would stay live for good: its former
  connections would count against their users' limits and show them online forever. Keyed
  by the incarnation, a crashed process is a dead node like any other.
- `chat:node:<nodeId>~<incarnation>:users`  set: the users that process registered (a user
  leaves it once the process's last check of them is done); `chat:members`  set: every process
  that registered anyone. The presence sweep reads the users of dead processes only, so its
  cost follows the users of crashed or stopped nodes, not everyone online
- `chat:node:<nodeId>:epoch`  the node's registration epoch: when it is missing (Redis lost
  its data), the node re-registers every local connection
- `chat:map:warming`  set (TTL: two and a half heartbeat intervals) by the first node that sees
  Redis restarted (its `run_id` changed): until every node's next heartbeat has re-registered
  its connections the map may be incomplete, so routing waits (the RoomCreated is redelivered)

A restart is noticed by the `run_id` (every restart, with or without its data), a lost map also
by the missing epoch; either way the node re-registers all its local connections.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import redis.asyncio as aioredis

from ws_edge.batching import OrderedBatches

log = logging.getLogger(__name__)


def conns_key(user_id: str) -> str:
    return f"chat:conns:{user_id}"


def _alive_key(member: str) -> str:
    return f"chat:node:{member}:alive"


# `_alive_key` for the scripts that read an entry's liveness (here and in presence)
ALIVE_LUA = """
local function alive(member)
  return redis.call('EXISTS', 'chat:node:' .. member .. ':alive') == 1
end
"""


MEMBERS_KEY = "chat:members"


def users_key(member: str) -> str:
    return f"chat:node:{member}:users"


def node_of(member: str) -> str:
    """The node id of a map entry's value (`<nodeId>~<incarnation>`; node ids have no `~`)."""
    return member.split("~", 1)[0]


def _epoch_key(node: str) -> str:
    return f"chat:node:{node}:epoch"


WARMING_KEY = "chat:map:warming"


# Connects and disconnects of this process, in the order they happened, in one call. KEYS[1]:
# the process's users set, KEYS[2]: the members set, then each change's user's conns hash.
# ARGV[1]: the entry value (node~incarnation), then per change: kind, connection id, user id,
# limit. `r` reserve: counts the user's connections on live nodes and registers this one only if
# that count is under the limit, in one atomic step (concurrent handshakes of one user, on any
# nodes or in one call, cannot all pass a count taken before any of them registered): 1
# registered, 0 refused. `u` unregister: the entry's HDEL (1 removed, 0 absent).
MAP_CHANGES_SCRIPT = (
    ALIVE_LUA
    + """
local member, results, seen = ARGV[1], {}, {}
for i = 3, #KEYS do
  local at = 4 * i - 10
  local kind, conn, user = ARGV[at], ARGV[at + 1], ARGV[at + 2]
  local result
  if kind == 'r' then
    local live = 0
    local entries = redis.call('HGETALL', KEYS[i])
    for j = 2, #entries, 2 do
      local entry = entries[j]
      if seen[entry] == nil then
        seen[entry] = alive(entry)
      end
      if seen[entry] then
        live = live + 1
      end
    end
    if live >= tonumber(ARGV[at + 3]) then
      result = 0
    else
      redis.call('HSET', KEYS[i], conn, member)
      redis.call('SADD', KEYS[1], user)
      redis.call('SADD', KEYS[2], member)
      result = 1
    end
  else
    result = redis.call('HDEL', KEYS[i], conn)
  end
  results[#results + 1] = result
end
return results
"""
)
MAP_CHANGE_BATCH = 500  # connects and disconnects applied per Redis call, at most


# forget(users set of the process, the user's conns hash, user id, entry value of the process):
# the user leaves the process's users set unless the process registered them again meanwhile
# (checked here, in Redis, so that a reconnect racing with it keeps its place). Called by the
# presence changes script (`ws_edge/presence.py`) once the process's last check of the user
# is made, in the same call as that check.
FORGET_LUA = """
local function forget(users, conns, user, member)
  for _, entry in ipairs(redis.call('HVALS', conns)) do
    if entry == member then
      return 0
    end
  end
  return redis.call('SREM', users, user)
end
"""


class MapNotReady(RuntimeError):
    """The map may be incomplete (Redis restarted, not every node re-registered yet)."""


class ConnectionMap(Protocol):
    async def register(self, user_id: str, conn_id: str) -> None: ...
    async def unregister(self, user_id: str, conn_id: str) -> None: ...
    async def heartbeat(self, local: Mapping[str, str]) -> None: ...
    async def nodes_of(self, user_ids: list[str]) -> dict[str, list[str]]: ...
    async def reserve(self, user_id: str, conn_id: str, limit: int) -> bool: ...
    async def dead_members(self) -> list[str]: ...


@dataclass(slots=True)
class _Change:
    """A reserve (`r`) or unregister (`u`) of this process, waiting for the next changes call."""

    kind: str
    user_id: str
    conn_id: str
    limit: int
    done: asyncio.Future[int]


def _abandon(changes: list[_Change]) -> None:
    """The loop is shutting down: nobody may wait for good on a change never answered."""
    for change in changes:
        change.done.cancel()


class RedisConnectionMap:
    """ConnectionMap on Redis.

    Reserves (connects) and unregisters (disconnects) go to Redis in the order they were asked,
    all those asked while a call is out together in the next (MAP_CHANGES_SCRIPT, up to
    MAP_CHANGE_BATCH): a lone connect costs one call as before, a crowd (a node's clients moving
    to this one, the benchmark's 20,000 sockets) a call per batch instead of one per socket.
    Why: one script or HDEL call per socket was about a tenth of an edge's CPU in a connect
    storm, on a machine where the storm is bound by CPU.
    """

    def __init__(self, redis: aioredis.Redis, node: str, ttl_seconds: int) -> None:
        self.redis = redis
        self.node = node
        # what this process writes as its entries' value, and whose liveness it keeps
        self.member = f"{node}~{secrets.token_hex(6)}"
        self.ttl = ttl_seconds
        self.epoch = secrets.token_hex(8)
        # heartbeat often: a Redis restart is noticed and repaired within about a second
        self.interval = min(1.0, ttl_seconds / 3)
        self.run_id: str | None = None
        self._changes_script = redis.register_script(MAP_CHANGES_SCRIPT)
        self._changes = OrderedBatches(self._apply, MAP_CHANGE_BATCH, _abandon)

    async def register(self, user_id: str, conn_id: str) -> None:
        pipe = self.redis.pipeline(transaction=False)
        self._add(pipe, user_id, conn_id)
        await pipe.execute()

    def _add(self, pipe: Any, user_id: str, conn_id: str) -> None:
        """Queue one registration: the entry, and the user in this process's users set."""
        pipe.hset(conns_key(user_id), conn_id, self.member)
        pipe.sadd(users_key(self.member), user_id)
        pipe.sadd(MEMBERS_KEY, self.member)

    async def unregister(self, user_id: str, conn_id: str) -> None:
        await self._change("u", user_id, conn_id, 0)

    async def reserve(self, user_id: str, conn_id: str, limit: int) -> bool:
        """Register `conn_id` if the user has fewer than `limit` connections on live nodes
        (MAP_CHANGES_SCRIPT: counted and registered atomically); False when at the limit.

        If the caller is cancelled, the reserve may still be applied: an unregister asked
        afterwards is applied after it."""
        return await self._change("r", user_id, conn_id, limit) == 1

    async def _change(self, kind: str, user_id: str, conn_id: str, limit: int) -> int:
        done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._changes.put(_Change(kind, user_id, conn_id, limit, done))
        return await done

    async def _apply(self, batch: list[_Change]) -> None:
        """One MAP_CHANGES_SCRIPT call for `batch`; a failed call fails the changes it carried
        (their callers decide what to do)."""
        args: list[str | int] = [self.member]
        for change in batch:
            args += (change.kind, change.conn_id, change.user_id, change.limit)
        try:
            results = await self._changes_script(
                keys=[users_key(self.member), MEMBERS_KEY] + [conns_key(c.user_id) for c in batch],
                args=args,
            )
            for change, result in zip(batch, results, strict=True):
                if not change.done.done():  # a cancelled caller's result is not wanted
                    change.done.set_result(int(result))
        except Exception as exc:  # the call, or an answer that does not fit the batch
            for change in batch:
                if not change.done.done():
                    change.done.set_exception(exc)

    async def heartbeat(self, local: Mapping[str, str]) -> None:
        """Refresh liveness; re-register local connections (conn -> user) if Redis lost them.

        `local` is read only when re-registering (a view is enough: no copy every second)."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(_alive_key(self.member), "1", ex=self.ttl)
        pipe.get(_epoch_key(self.node))
        pipe.info("server")
        _, epoch, info = await pipe.execute()
        run_id = str(info.get("run_id", "")) if isinstance(info, dict) else ""
        restarted = self.run_id is not None and run_id != self.run_id
        self.run_id = run_id
        if restarted:
            log.warning("redis restarted: re-registering local connections")
            warm_ms = int((2 * self.interval + 0.5) * 1000)
            await self.redis.set(WARMING_KEY, "1", px=warm_ms, nx=True)
        if epoch != self.epoch or restarted:
            if local:
                pipe = self.redis.pipeline(transaction=False)
                for conn_id, user_id in local.items():
                    self._add(pipe, user_id, conn_id)
                await pipe.execute()
            await self.redis.set(_epoch_key(self.node), self.epoch)
            log.info("registered %d local connections in redis", len(local))

    async def dead_members(self) -> list[str]:
        """The processes that registered someone and whose liveness has expired (or that left)."""
        raw = await self.redis.smembers(MEMBERS_KEY)
        members = sorted(str(m) for m in raw)  # the client decodes (infra.cache)
        alive = await self._alive_nodes(set(members))
        return [m for m in members if m not in alive]

    async def _alive_nodes(self, nodes: set[str]) -> set[str]:
        if not nodes:
            return set()
        ordered = sorted(nodes)
        flags = await self.redis.mget([_alive_key(n) for n in ordered])
        return {n for n, flag in zip(ordered, flags, strict=True) if flag}

    async def nodes_of(self, user_ids: list[str]) -> dict[str, list[str]]:
        """Live node -> the given users with a connection there (one pipelined round trip).

        MapNotReady while the map may be incomplete after a Redis restart (this node's epoch
        is not registered, or another node saw the restart and has not re-registered yet)."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.get(_epoch_key(self.node))
        pipe.exists(WARMING_KEY)
        for user_id in user_ids:
            pipe.hgetall(conns_key(user_id))
        epoch, warming, *results = await pipe.execute()
        if epoch != self.epoch or warming:
            raise MapNotReady("connection map is being rebuilt after a Redis restart")
        by_member: dict[str, set[str]] = {}
        for user_id, entries in zip(user_ids, results, strict=True):
            for member in entries.values():
                by_member.setdefault(member, set()).add(user_id)
        alive = await self._alive_nodes(set(by_member))
        dead = set(by_member) - alive
        if dead:
            await self._forget_dead(user_ids, results, dead)
        by_node: dict[str, set[str]] = {}
        for member in alive:
            by_node.setdefault(node_of(member), set()).update(by_member[member])
        return {node: sorted(users) for node, users in by_node.items()}

    async def _forget_dead(
        self, user_ids: list[str], results: list[dict[str, str]], dead: set[str]
    ) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for user_id, entries in zip(user_ids, results, strict=True):
            stale = [conn for conn, node in entries.items() if node in dead]
            if stale:
                pipe.hdel(conns_key(user_id), *stale)
        await pipe.execute()

    async def leave(self, local: dict[str, str]) -> None:
        """Node shutdown: drop its entries and liveness."""
        pipe = self.redis.pipeline(transaction=False)
        for conn_id, user_id in local.items():
            pipe.hdel(conns_key(user_id), conn_id)
        pipe.delete(_alive_key(self.member), _epoch_key(self.node))
        await pipe.execute()
