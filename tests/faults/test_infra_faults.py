"""The servers failing under traffic: a NATS cluster node, Redis, the store."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import time

import httpx
import pytest
from faultkit import (
    FaultMesh,
    at,
    bounded,
    connect_users,
    prepare,
    settle_and_count,
    shared_room,
    stream,
)

from contracts import subjects

pytestmark = [pytest.mark.faults, pytest.mark.timeout(240)]

COUNT = 150
INTERVAL = 0.03


async def test_kill_nats_node_of_cluster(fault_mesh: list[FaultMesh]) -> None:
    """kill -9 the CHAT_COMMANDS leader of a 3-node NATS cluster (R3 streams) under traffic."""
    mesh = await FaultMesh(cluster=True).up()
    fault_mesh.append(mesh)
    alice, carol, bob, dave = await connect_users(
        mesh, [("alice", 0), ("carol", 0), ("bob", 1), ("dave", 1)]
    )
    clients = [alice, carol, bob, dave]
    try:
        room = await shared_room(alice, [carol, bob, dave])
        leader = await mesh.stream_leader(subjects.COMMANDS_STREAM)
        index = int(leader.removeprefix("n")) - 1
        fault_at: list[float] = []

        async def fault() -> None:
            fault_at.append(time.monotonic())
            await asyncio.to_thread(mesh.nats_nodes[index].kill)
            await asyncio.sleep(3.0)  # what the runner does: start it again after a while
            await asyncio.to_thread(mesh.restart_nats_node, index)

        senders = [
            asyncio.create_task(stream(alice, room, COUNT, INTERVAL)),
            asyncio.create_task(stream(bob, room, COUNT, INTERVAL)),
        ]
        await at(1.5, fault)
        await asyncio.gather(*senders)
        figures = await settle_and_count(
            mesh,
            f"NATS node kill -9 (stream leader {leader} of 3)",
            room,
            [alice, bob],
            [alice, carol, bob, dave],
            fault_at[0],
        )
        figures.report_clean()
        assert figures.acknowledged == figures.sent == 2 * COUNT
    except BaseException:
        print(mesh.log_tails())
        raise
    finally:
        await asyncio.gather(*(c.stop() for c in clients))


@pytest.mark.parametrize("keep_data", [True, False], ids=["aof-kept", "data-lost"])
async def test_restart_redis_under_traffic(fault_mesh: list[FaultMesh], keep_data: bool) -> None:
    """kill -9 Redis and start it again (with its append-only file, or empty): messages flow
    on, room_created routing resumes within 5 s, a client that reconnects has everything."""
    mesh = await FaultMesh().up()
    fault_mesh.append(mesh)
    alice, carol, bob, dave = await connect_users(
        mesh, [("alice", 0), ("carol", 0), ("bob", 1), ("dave", 1)]
    )
    frank = await prepare(mesh, "frank", 1)  # connects while Redis is down
    clients = [alice, carol, bob, dave, frank]
    try:
        room = await shared_room(alice, [carol, bob, dave], also=[frank])
        redis = mesh.redis()
        fault_at: list[float] = []
        back_at: list[float] = []

        async def fault() -> None:
            fault_at.append(time.monotonic())
            await asyncio.to_thread(redis.kill)
            if not keep_data:
                shutil.rmtree(mesh.workdir / "redis", ignore_errors=True)
            frank.start()  # a new connection while Redis is down
            await asyncio.sleep(1.0)
            await asyncio.to_thread(mesh.start_server_again, "redis")
            back_at.append(time.monotonic())

        senders = [
            asyncio.create_task(stream(alice, room, COUNT, INTERVAL)),
            asyncio.create_task(stream(bob, room, COUNT, INTERVAL)),
        ]
        await at(1.5, fault)
        await asyncio.wait_for(frank.ready.wait(), 20)
        # room_created routing (the only path that reads the connection map) once Redis is back:
        # rooms of alice (node a) with dave and frank (node b), from when Redis answers again
        probes: list[str] = []
        resumed: float | None = None
        for _ in range(5):
            probe = await alice.create_room([dave.user_id, frank.user_id], limit=5)
            if probe is None:
                await asyncio.sleep(0.5)
                continue
            probes.append(probe)
            with contextlib.suppress(AssertionError):
                await bounded(
                    "probe room at dave and frank",
                    lambda p=probe: p in dave.rooms_announced and p in frank.rooms_announced,
                    6,
                )
                resumed = time.monotonic()
                break
        await asyncio.gather(*senders)
        # a recovered client: drops its socket, reconnects, syncs
        await carol.drop_connection()
        await bounded("carol back", lambda: carol.connection >= 2 and carol.ready.is_set(), 20)
        name = "Redis kill -9 + restart" + (" (append-only file kept)" if keep_data else " (empty)")
        figures = await settle_and_count(
            mesh, name, room, [alice, bob], [alice, carol, bob, dave, frank], fault_at[0]
        )
        # every probe room reaches dave and frank, once
        with contextlib.suppress(AssertionError):
            await bounded(
                "every probe room at dave and frank",
                lambda: all(
                    p in dave.rooms_announced and p in frank.rooms_announced for p in probes
                ),
                20,
            )
        for c in (dave, frank):
            for p in probes:
                figures.duplicated += max(0, c.rooms_announced[p] - 1)
                figures.lost += int(c.rooms_announced[p] == 0)
        delay = max(0.0, resumed - back_at[0]) if resumed is not None else float("inf")
        figures.recover_seconds = delay
        figures.notes.append(
            f"room_created routing resumed {delay:.1f}s after Redis was back "
            f"({len(probes)} probe rooms)"
        )
        figures.report_clean()
        assert delay <= 5.0, figures.line()
    except BaseException:
        print(mesh.log_tails())
        raise
    finally:
        await asyncio.gather(*(c.stop() for c in clients))


async def test_stop_and_restart_store_under_traffic(fault_mesh: list[FaultMesh]) -> None:
    """Stop dynalite for 3 s under traffic: commands wait in JetStream, applied once when back."""
    mesh = await FaultMesh().up()
    fault_mesh.append(mesh)
    alice, carol, bob, dave = await connect_users(
        mesh, [("alice", 0), ("carol", 0), ("bob", 1), ("dave", 1)]
    )
    clients = [alice, carol, bob, dave]
    try:
        room = await shared_room(alice, [carol, bob, dave])
        store = mesh.dynamo()
        fault_at: list[float] = []

        async def fault() -> None:
            fault_at.append(time.monotonic())
            await asyncio.to_thread(store.stop)
            await asyncio.sleep(3.0)
            await asyncio.to_thread(mesh.start_server_again, "dynamo")

        senders = [
            asyncio.create_task(stream(alice, room, COUNT, INTERVAL)),
            asyncio.create_task(stream(bob, room, COUNT, INTERVAL)),
        ]
        await at(1.5, fault)
        await asyncio.gather(*senders)
        figures = await settle_and_count(
            mesh,
            "store stop 3s + restart",
            room,
            [alice, bob],
            [alice, carol, bob, dave],
            fault_at[0],
        )
        figures.report_clean()
        assert figures.acknowledged == figures.sent == 2 * COUNT
    except BaseException:
        print(mesh.log_tails())
        raise
    finally:
        await asyncio.gather(*(c.stop() for c in clients))


async def test_a_frozen_store_gets_bounded_answers(fault_mesh: list[FaultMesh]) -> None:
    """The store stops answering (SIGSTOP, as a hung disk or host would) for about 20 s: each
    service's /readyz answers 503 naming the store within seconds, reads answer 503
    `unavailable` within the response timeout (10 s; before it, the store client's minute of
    retries), nothing logs an error, and every service is ready again once it is back."""
    mesh = await FaultMesh().up()
    fault_mesh.append(mesh)
    services = {name: mesh.services[name].url for name in ("users", "rooms", "history")}
    async with httpx.AsyncClient(timeout=60) as http:
        made = await http.post(f"{services['users']}/users", json={"name": "Frozen"})
        assert made.status_code == 201, made.text
        auth = {"authorization": f"Bearer {made.json()['token']}"}
        store = mesh.dynamo()
        os.kill(store.pid, signal.SIGSTOP)
        try:
            for name, url in services.items():
                started = time.monotonic()
                ready = await http.get(f"{url}/readyz")
                took = time.monotonic() - started
                assert ready.status_code == 503, (name, ready.text)
                assert "store" in ready.json()["failures"], (name, ready.text)
                assert took < 6, (name, took)
            for url in (f"{services['users']}/users", f"{services['rooms']}/rooms"):
                started = time.monotonic()
                answer = await http.get(url, headers=auth)
                took = time.monotonic() - started
                assert answer.status_code == 503, (url, answer.text)
                assert answer.json()["error"]["code"] == "unavailable"
                assert took < 15, (url, took)
        finally:
            os.kill(store.pid, signal.SIGCONT)
        deadline = time.monotonic() + 60
        waiting = dict(services)
        while waiting and time.monotonic() < deadline:
            for name, url in list(waiting.items()):
                with contextlib.suppress(httpx.HTTPError):
                    if (await http.get(f"{url}/readyz", timeout=5)).status_code == 200:
                        del waiting[name]
            await asyncio.sleep(0.5)
        assert not waiting, f"not ready again: {sorted(waiting)}"
        listed = await http.get(f"{services['users']}/users", headers=auth)
        assert listed.status_code == 200, listed.text
    for name in services:
        errors = [
            line
            for line in mesh.services[name].log_path.read_text().splitlines()
            if '"level": "error"' in line or "Traceback" in line
        ]
        assert not errors, (name, errors[:3])
