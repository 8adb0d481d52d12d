"""history and rooms killed (-9) under traffic: commands wait in JetStream, nothing is lost."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from faultkit import (
    ChatUser,
    FaultMesh,
    Figures,
    at,
    bounded,
    connect_users,
    settle_and_count,
    shared_room,
    stream,
)

pytestmark = [pytest.mark.faults, pytest.mark.timeout(240)]

COUNT = 150
INTERVAL = 0.03


@pytest.mark.parametrize("replicas", [1, 2])
async def test_kill_history_mid_stream(fault_mesh: list[FaultMesh], replicas: int) -> None:
    """kill -9 history while two senders stream: stored once each, seq gap-free, all delivered."""
    mesh = await FaultMesh().up(history_replicas=replicas)
    fault_mesh.append(mesh)
    alice, carol, bob, dave = await connect_users(
        mesh, [("alice", 0), ("carol", 0), ("bob", 1), ("dave", 1)]
    )
    clients = [alice, carol, bob, dave]
    try:
        room = await shared_room(alice, [carol, bob, dave])
        # one replica: kill it and start it again; two: kill one, the other carries on
        victim = mesh.services["history" if replicas == 1 else "history-2"]
        fault_at: list[float] = []

        async def fault() -> None:
            fault_at.append(time.monotonic())
            await asyncio.to_thread(victim.kill)
            if replicas == 1:
                await asyncio.sleep(1.0)
                await asyncio.to_thread(victim.start)

        senders = [
            asyncio.create_task(stream(alice, room, COUNT, INTERVAL)),
            asyncio.create_task(stream(bob, room, COUNT, INTERVAL)),
        ]
        await at(1.5, fault)
        await asyncio.gather(*senders)
        name = "history kill -9" + (" (1 of 2 replicas)" if replicas == 2 else "")
        figures = await settle_and_count(
            mesh, name, room, [alice, bob], [alice, carol, bob, dave], fault_at[0]
        )
        figures.report_clean()
        assert figures.acknowledged == figures.sent == 2 * COUNT
    except BaseException:
        print(mesh.log_tails())
        raise
    finally:
        await asyncio.gather(*(c.stop() for c in clients))


async def _rooms_of(mesh: FaultMesh, client: ChatUser) -> list[str]:
    async with httpx.AsyncClient(timeout=10) as http:
        r = await http.get(
            f"{mesh.services['rooms'].url}/rooms",
            headers={"authorization": f"Bearer {client.token}"},
        )
        assert r.status_code == 200, r.text
        return [room["id"] for room in r.json()]


ROOMS_PER_CREATOR = 25


async def test_kill_rooms_during_creation_bursts(fault_mesh: list[FaultMesh]) -> None:
    """kill -9 rooms during bursts of create_room: every acknowledged room exists once and every
    online participant hears of every room exactly once."""
    mesh = await FaultMesh().up()
    fault_mesh.append(mesh)
    clients = await connect_users(mesh, [("c1", 0), ("c2", 1), ("c3", 0), ("p1", 0), ("p2", 1)])
    creators, (p1, p2) = clients[:3], clients[3:]
    attempts: dict[str, int] = {}
    acked: dict[str, list[str]] = {}
    try:
        rooms = mesh.services["rooms"]
        fault_at: list[float] = []
        acked_after: list[float] = []  # acknowledgements of create_rooms sent after the kill

        async def fault() -> None:
            fault_at.append(time.monotonic())
            await asyncio.to_thread(rooms.kill)
            await asyncio.sleep(1.0)
            await asyncio.to_thread(rooms.start)

        async def burst(creator: ChatUser) -> None:
            acked[creator.name] = []
            attempts[creator.name] = 0
            delay = 0.2
            while len(acked[creator.name]) < ROOMS_PER_CREATOR and attempts[creator.name] < 200:
                attempts[creator.name] += 1
                started = time.monotonic()
                room_id = await creator.create_room([p1.user_id, p2.user_id], limit=8)
                if room_id is None:  # not acknowledged: back off, then a new create_room
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 2.0)
                    continue
                delay = 0.2
                acked[creator.name].append(room_id)
                if fault_at and started >= fault_at[0]:
                    acked_after.append(time.monotonic())
                await asyncio.sleep(0.02)

        bursts = [asyncio.create_task(burst(c)) for c in creators]
        await at(1.0, fault)
        await asyncio.gather(*bursts)
        all_acked = [r for rs in acked.values() for r in rs]
        figures = Figures("rooms kill -9 during create_room bursts")
        figures.sent = sum(attempts.values())
        figures.acknowledged = len(all_acked)
        figures.reconnects = sum(c.connection - 1 for c in clients)
        figures.retries = figures.sent - figures.acknowledged
        # what exists: each participant's GET /rooms, once the outbox relay has had its turn
        await asyncio.sleep(4)
        listed = {c.name: await _rooms_of(mesh, c) for c in clients}
        existing = set(listed["p1"])
        figures.stored = len(existing)
        for c in creators:
            mine = listed[c.name]
            figures.duplicated += len(mine) - len(set(mine))
            figures.lost += len(set(acked[c.name]) - set(mine))
        for name in ("p1", "p2"):
            figures.duplicated += len(listed[name]) - len(set(listed[name]))
            figures.lost += len(set(all_acked) - set(listed[name]))
        # room_created: every online participant, every existing room of theirs, exactly once
        expected = {c.name: set(listed[c.name]) for c in clients}
        await bounded(
            "room_created for every existing room",
            lambda: all(set(c.rooms_announced) >= expected[c.name] for c in clients),
            20,
        )
        for c in clients:
            for room_id in expected[c.name]:
                count = c.rooms_announced[room_id]
                figures.expected_deliveries += 1
                figures.delivered += int(count >= 1)
                figures.lost += int(count == 0)
                figures.duplicated += max(0, count - 1)
        orphans = len(existing - set(all_acked))
        figures.notes.append(f"{orphans} rooms created but not acknowledged (creator retried)")
        if acked_after:
            figures.recover_seconds = min(acked_after) - fault_at[0]
        figures.notes.append("rooms relaunched 1.0s after the kill")
        figures.report_clean()
        assert figures.acknowledged == 3 * ROOMS_PER_CREATOR
    except BaseException:
        print(mesh.log_tails())
        raise
    finally:
        await asyncio.gather(*(c.stop() for c in clients))
