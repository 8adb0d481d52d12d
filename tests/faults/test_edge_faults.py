"""Edge nodes failing under traffic: kill -9 and SIGTERM, clients move to the other node."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis.asyncio as aioredis
from faultkit import (
    ChatUser,
    FaultMesh,
    at,
    bounded,
    connect_users,
    new_user,
    online,
    prepare,
    settle_and_count,
    shared_room,
    stream,
)

pytestmark = [pytest.mark.faults, pytest.mark.timeout(240)]

COUNT = 150  # messages per sender
INTERVAL = 0.03


async def _edge_fault(fault_mesh: list[FaultMesh], graceful: bool) -> None:
    mesh = await FaultMesh().up()
    fault_mesh.append(mesh)
    # senders and receivers on both nodes: alice, carol on a; bob, dave on b
    alice, carol, bob, dave = await connect_users(
        mesh, [("alice", 0), ("carol", 0), ("bob", 1), ("dave", 1)]
    )
    erin = await prepare(mesh, "erin", 0)  # joins later, on the relaunched node a
    clients = [alice, carol, bob, dave, erin]
    try:
        room = await shared_room(alice, [carol, bob, dave], also=[erin])
        edge_a = mesh.services["edge-a"]
        fault_at: list[float] = []

        async def fault() -> None:
            fault_at.append(time.monotonic())
            await asyncio.to_thread(edge_a.stop if graceful else edge_a.kill)

        senders = [
            asyncio.create_task(stream(alice, room, COUNT, INTERVAL)),
            asyncio.create_task(stream(bob, room, COUNT, INTERVAL)),
        ]
        await at(1.5, fault)
        moved = [alice, carol]
        await bounded(
            "clients of node a reconnected to b and synced",
            lambda: all(c.connection >= 2 and c.ready.is_set() for c in moved),
            30,
        )
        recovered = max(c.ready_times[-1] for c in moved) - fault_at[0]
        await asyncio.gather(*senders)
        if graceful:
            codes = {c.close_codes[0] for c in moved}
            assert codes == {1001}, f"close codes of node a's clients: {codes}"
        # the node comes back (what the runner does) and serves again: a late member joins it
        await asyncio.to_thread(edge_a.start)
        await online([erin])
        assert erin.connected_edges == [0]
        await stream(erin, room, 10, INTERVAL)
        figures = await settle_and_count(
            mesh,
            "edge SIGTERM" if graceful else "edge kill -9",
            room,
            [alice, bob, erin],
            [alice, carol, bob, dave, erin],
            fault_at[0],
        )
        figures.recover_seconds = recovered
        figures.notes.append(f"clients moved in {recovered:.1f}s; relaunched node a served erin")
        figures.report_clean()
        assert figures.acknowledged == figures.sent == 2 * COUNT + 10
    except BaseException:
        print(mesh.log_tails())
        raise
    finally:
        await asyncio.gather(*(c.stop() for c in clients))


async def test_kill_edge_node_under_traffic(fault_mesh: list[FaultMesh]) -> None:
    """kill -9 node a while two senders stream: everyone ends with every message exactly once."""
    await _edge_fault(fault_mesh, graceful=False)


async def test_sigterm_edge_node_under_traffic(fault_mesh: list[FaultMesh]) -> None:
    """SIGTERM node a: its clients get 1001, move to b, sync; nothing lost or doubled."""
    await _edge_fault(fault_mesh, graceful=True)


@pytest.mark.parametrize("restart", [False, True], ids=["killed", "killed-and-restarted"])
async def test_users_of_a_killed_node_are_announced_offline(
    fault_mesh: list[FaultMesh], restart: bool
) -> None:
    """kill -9 node a while alice is connected only there (her client knows no other node):
    nothing on node a can say she left, so the sweep on node b finds her without a connection
    on a live node once a's liveness key expires, and after the grace period announces her
    offline to bob, who shares a room with her; carol, on node b, stays online; her former
    connection no longer counts in the map. With `restart`, node a is started again at once
    under the same node id (as a supervisor does): the new process's liveness must not keep
    the old process's connections alive (the map's entries name the process, not the id)."""
    mesh = await FaultMesh().up()
    fault_mesh.append(mesh)
    alice_user = await new_user(mesh, "alice")
    alice = ChatUser("alice", alice_user, mesh.edges[:1], 0, mesh.services["history"].url)
    bob, carol = [await prepare(mesh, name, 1) for name in ("bob", "carol")]
    clients = [alice, bob, carol]
    try:
        await online(clients)
        await shared_room(bob, [alice, carol])
        await asyncio.to_thread(mesh.services["edge-a"].kill)
        killed = time.monotonic()
        if restart:
            await asyncio.to_thread(mesh.start_service, "edge-a", "ws_edge", CHAT_NODE_ID="a")
        # node TTL (15 s) + a sweep interval and the grace period (5 s each), with margin
        await bounded(
            "alice announced offline to bob",
            lambda: (alice.user_id, False) in bob.presence,
            60,
        )
        print(
            f"[faults] alice announced offline {time.monotonic() - killed:.1f}s after kill -9"
            + (" and an immediate restart of her node" if restart else "")
        )
        redis = aioredis.from_url(mesh.infra.redis_url)
        try:
            entries = await redis.hgetall(f"chat:conns:{alice.user_id}")
            live = [
                m for m in entries.values() if await redis.exists(f"chat:node:{m.decode()}:alive")
            ]
            assert live == [], entries
        finally:
            await redis.aclose()
        assert (carol.user_id, False) not in bob.presence
        assert (bob.user_id, False) not in carol.presence
    except BaseException:
        print(mesh.log_tails())
        raise
    finally:
        await asyncio.gather(*(c.stop() for c in clients))
