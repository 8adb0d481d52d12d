"""Integration tests of the rooms service against real NATS (JetStream) and the store.

rooms runs as its own process (`python -m rooms_service`) started by the `launcher` fixture.
Users reach it the two real ways: UserCreated events on `chat.evt.user_created` (captured by
CHAT_EVENTS, read by rooms' durable consumer) and a small NATS responder on `chat.q.users.get`
standing in for the users service (read-after-write on a read-model miss).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx
import nats
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from contracts import subjects
from contracts.bus import (
    CreateRoomCommand,
    CreateRoomReply,
    GetRoomQuery,
    GetRoomReply,
    GetUserQuery,
    GetUserReply,
    Origin,
    RoomCreated,
    UserCreated,
    UserRoomsQuery,
    UserRoomsReply,
)
from contracts.rest import Room, User
from infra.auth import TokenService
from mesh.testing import TEST_SECRET, Infra, ServiceLauncher, ServiceProcess, eventually
from rooms_service import handlers
from rooms_service.adapters.fakes import FakePublisher, FakeRoomStore, FakeUserDirectory
from rooms_service.entrypoints.bus import BusEntrypoints

pytestmark = pytest.mark.integration

TOKENS = TokenService(TEST_SECRET, "chat", 3600, 30)


def uid(label: str) -> str:
    return f"u_{label}_{secrets.token_hex(6)}"


def auth(user_id: str) -> dict[str, str]:
    token, _ = TOKENS.issue(user_id)
    return {"Authorization": f"Bearer {token}"}


@dataclass
class UsersResponder:
    """Stands in for the users service on `chat.q.users.get`."""

    known: dict[str, User] = field(default_factory=dict)
    asked: list[list[str]] = field(default_factory=list)
    silent: bool = False

    async def handle(self, msg: Msg) -> None:
        query = GetUserQuery.model_validate_json(msg.data)
        self.asked.append(query.userIds)
        if self.silent:
            return
        users = [self.known[u] for u in query.userIds if u in self.known]
        await msg.respond(GetUserReply(users=users).model_dump_json().encode())


@dataclass
class Bus:
    nc: NATS
    users: UsersResponder

    async def create_users(self, *names: str) -> list[User]:
        """Users as the users service would make them: answerable and announced."""
        made = []
        js = self.nc.jetstream()
        for name in names:
            user = User(id=uid(name.lower()), name=name)
            self.users.known[user.id] = user
            await js.publish(
                subjects.USER_CREATED,
                UserCreated(user=user).model_dump_json().encode(),
                headers={"Nats-Msg-Id": f"user:{user.id}"},
            )
            made.append(user)
        return made

    async def request(self, subject: str, body: str) -> bytes:
        msg = await self.nc.request(subject, body.encode(), timeout=5.0)
        return bytes(msg.data)

    async def room_created_events(self) -> list[RoomCreated]:
        """Every RoomCreated captured by the CHAT_EVENTS stream (ephemeral pull consumer)."""
        js = self.nc.jetstream()
        sub = await js.pull_subscribe(subjects.ROOM_CREATED, stream=subjects.EVENTS_STREAM)
        events: list[RoomCreated] = []
        try:
            while True:
                try:
                    batch = await sub.fetch(500, timeout=1.0)
                except TimeoutError:  # nats' own TimeoutError is one too
                    break
                for msg in batch:
                    events.append(RoomCreated.model_validate_json(msg.data))
                    await msg.ack()
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        return events


@pytest.fixture
async def bus(infra: Infra) -> AsyncIterator[Bus]:
    """A NATS client for the test and a users responder on `chat.q.users.get`."""
    nc = await nats.connect(infra.nats_url)
    responder = UsersResponder()
    sub = await nc.subscribe(subjects.GET_USERS, queue=subjects.Q_USERS, cb=responder.handle)
    try:
        yield Bus(nc, responder)
    finally:
        await sub.unsubscribe()
        await nc.drain()


async def start_rooms(launcher: ServiceLauncher, **env: str) -> ServiceProcess:
    return await asyncio.to_thread(launcher.start, "rooms", "rooms_service", **env)


@pytest.fixture
async def rooms(launcher: ServiceLauncher) -> ServiceProcess:
    """The rooms service as a process, ready (`/readyz` 200)."""
    return await start_rooms(launcher)


async def post_room(
    client: httpx.AsyncClient, caller: str, participants: list[str]
) -> httpx.Response:
    return await client.post("/rooms", json={"participants": participants}, headers=auth(caller))


async def rooms_of(client: httpx.AsyncClient, user_id: str) -> list[Room]:
    resp = await client.get("/rooms", headers=auth(user_id))
    assert resp.status_code == 200, resp.text
    return [Room.model_validate(r) for r in resp.json()]


async def wait_for_event(queue: asyncio.Queue[RoomCreated], room_id: str) -> RoomCreated:
    async with asyncio.timeout(10):
        while True:
            event = await queue.get()
            if event.room.id == room_id:
                return event


async def subscribe_room_created(nc: NATS) -> asyncio.Queue[RoomCreated]:
    queue: asyncio.Queue[RoomCreated] = asyncio.Queue()

    async def on_event(msg: Msg) -> None:
        await queue.put(RoomCreated.model_validate_json(msg.data))

    await nc.subscribe(subjects.ROOM_CREATED, cb=on_event)
    await nc.flush()
    return queue


async def test_create_room_by_nats_command(bus: Bus, rooms: ServiceProcess) -> None:
    """create_room over NATS: reply with the room, RoomCreated with names, queries see it."""
    alice, bob = await bus.create_users("Alice", "Bob")
    events = await subscribe_room_created(bus.nc)
    origin = Origin(node="edge-a", conn="c1", requestId="r1")
    command = CreateRoomCommand(userId=alice.id, participants=[bob.id, bob.id], origin=origin)
    raw = await bus.request(subjects.CREATE_ROOM, command.model_dump_json())
    reply = CreateRoomReply.model_validate_json(raw)
    assert reply.error is None, reply.error
    assert reply.room is not None
    room = reply.room
    assert room.id.startswith("room_")
    assert [(p.id, p.name) for p in room.participants] == [(alice.id, "Alice"), (bob.id, "Bob")]

    event = await wait_for_event(events, room.id)
    assert event.room == room
    assert event.creatorId == alice.id
    assert event.origin == origin

    got = GetRoomReply.model_validate_json(
        await bus.request(subjects.GET_ROOM, GetRoomQuery(roomId=room.id).model_dump_json())
    )
    assert got.room == room
    missing = GetRoomReply.model_validate_json(
        await bus.request(subjects.GET_ROOM, GetRoomQuery(roomId="room_nope").model_dump_json())
    )
    assert missing.room is None
    of_bob = UserRoomsReply.model_validate_json(
        await bus.request(subjects.USER_ROOMS, UserRoomsQuery(userId=bob.id).model_dump_json())
    )
    assert of_bob.roomIds == [room.id]


async def test_create_room_by_post(bus: Bus, rooms: ServiceProcess) -> None:
    """POST /rooms: 201 room, RoomCreated on NATS, GET /rooms for participants only."""
    alice, bob, carol, outsider = await bus.create_users("Alice", "Bob", "Carol", "Eve")
    events = await subscribe_room_created(bus.nc)
    async with httpx.AsyncClient(base_url=rooms.url, timeout=10) as client:
        resp = await post_room(client, bob.id, [alice.id, carol.id, alice.id])
        assert resp.status_code == 201, resp.text
        room = Room.model_validate(resp.json())
        assert [p.id for p in room.participants] == [bob.id, alice.id, carol.id]
        assert [p.name for p in room.participants] == ["Bob", "Alice", "Carol"]

        event = await wait_for_event(events, room.id)
        assert event.room == room
        assert event.creatorId == bob.id
        assert event.schemaVersion == 1

        for member in (alice, bob, carol):
            assert await rooms_of(client, member.id) == [room]
        assert await rooms_of(client, outsider.id) == []

        second = await post_room(client, alice.id, [outsider.id])
        assert second.status_code == 201
        listed = [r.id for r in await rooms_of(client, alice.id)]
        assert listed == [second.json()["id"], room.id]  # newest first


async def test_unknown_participant_is_refused(bus: Bus, rooms: ServiceProcess) -> None:
    """An id nobody knows: 400 unknown_user naming it (HTTP and NATS), and no room is made."""
    (alice,) = await bus.create_users("Alice")
    ghost = uid("ghost")
    async with httpx.AsyncClient(base_url=rooms.url, timeout=10) as client:
        resp = await post_room(client, alice.id, [ghost])
        assert resp.status_code == 400
        assert resp.json()["error"]["code"] == "unknown_user"
        assert ghost in resp.json()["error"]["message"]
        assert await rooms_of(client, alice.id) == []
    command = CreateRoomCommand(userId=alice.id, participants=[ghost])
    reply = CreateRoomReply.model_validate_json(
        await bus.request(subjects.CREATE_ROOM, command.model_dump_json())
    )
    assert reply.room is None
    assert reply.error is not None
    assert reply.error.code == "unknown_user"


async def test_too_many_participants(bus: Bus, rooms: ServiceProcess) -> None:
    """101 participants after adding the caller: 400 too_many_participants."""
    (alice,) = await bus.create_users("Alice")
    others = [uid(f"p{i}") for i in range(100)]
    async with httpx.AsyncClient(base_url=rooms.url, timeout=10) as client:
        resp = await post_room(client, alice.id, others)
        assert resp.status_code == 400
        assert resp.json()["error"]["code"] == "too_many_participants"
        assert await rooms_of(client, alice.id) == []


async def test_user_created_a_moment_ago_is_accepted(bus: Bus, rooms: ServiceProcess) -> None:
    """A user only users knows yet (no UserCreated seen) is asked for and accepted."""
    (alice,) = await bus.create_users("Alice")
    fresh = User(id=uid("fresh"), name="Fresh")
    bus.users.known[fresh.id] = fresh  # answerable, never announced
    async with httpx.AsyncClient(base_url=rooms.url, timeout=10) as client:
        resp = await post_room(client, alice.id, [fresh.id])
        assert resp.status_code == 201, resp.text
        assert resp.json()["participants"][1] == {"id": fresh.id, "name": "Fresh"}
        assert any(fresh.id in asked for asked in bus.users.asked)
        assert [r.id for r in await rooms_of(client, fresh.id)] == [resp.json()["id"]]


async def test_user_created_events_feed_the_read_model(bus: Bus, rooms: ServiceProcess) -> None:
    """A user only announced by UserCreated (users never asked) becomes usable."""
    (alice,) = await bus.create_users("Alice")
    (announced,) = await bus.create_users("Announced")
    del bus.users.known[announced.id]  # the responder no longer knows it: only the event does
    async with httpx.AsyncClient(base_url=rooms.url, timeout=10) as client:
        async with asyncio.timeout(15):
            while True:
                resp = await post_room(client, alice.id, [announced.id])
                if resp.status_code == 201:
                    break
                assert resp.json()["error"]["code"] == "unknown_user"
                await asyncio.sleep(0.2)
        assert resp.json()["participants"][1] == {"id": announced.id, "name": "Announced"}


async def test_sigterm_stops_it_cleanly(bus: Bus, launcher: ServiceLauncher) -> None:
    """After its UserCreated consumer has fetched, SIGTERM ends it with nothing logged as an
    error and without waiting out the bus drain's bound (the consumer's inbox goes first)."""
    rooms = await start_rooms(launcher)
    (alice,) = await bus.create_users("Alice")
    (announced,) = await bus.create_users("Announced")
    del bus.users.known[announced.id]  # usable only once the consumer has applied the event
    async with httpx.AsyncClient(base_url=rooms.url, timeout=10) as client:

        async def applied() -> bool:
            return (await post_room(client, alice.id, [announced.id])).status_code == 201

        await eventually(applied, within=15)
    await asyncio.sleep(0.5)  # a fetch is outstanding again
    await asyncio.to_thread(rooms.stop)
    logged = rooms.log_path.read_text().splitlines()
    assert any("Application shutdown complete" in line for line in logged), rooms.log_tail()
    assert [line for line in logged if '"level": "error"' in line] == []
    assert not [line for line in logged if "nats drain did not finish" in line]


async def test_user_created_refused_by_the_store_comes_back_soon(infra: Infra) -> None:
    """A UserCreated the store refuses twice is nak'd and applied about 1.5 s later (not after
    the 30 s ack wait), on the consumer's one inbox; stop() leaves no subscription behind
    (nats-py's drain would wait on a leftover one's queue)."""
    with await asyncio.to_thread(infra.fork) as fork:  # a durable consumer of its own
        nc = await nats.connect(fork.nats_url)
        store = FakeRoomStore()
        deps = handlers.Deps(store=store, publisher=FakePublisher(), users=FakeUserDirectory())
        bus = BusEntrypoints(nc, deps)
        try:
            await bus.start()
            store.fail_on["put_users"] = RuntimeError("store down (1)")
            user = User(id=uid("alice"), name="Alice")
            await nc.jetstream().publish(
                subjects.USER_CREATED, UserCreated(user=user).model_dump_json().encode()
            )
            await eventually(lambda: store.calls.count("put_users") == 1, within=15)
            store.fail_on["put_users"] = RuntimeError("store down (2)")
            await eventually(lambda: user.id in store.users, within=15)
            assert store.calls.count("put_users") == 3  # two failures, then applied
            running = len(nc._subs)  # nats-py shows a connection's subscriptions nowhere else
            await bus.stop()
            # three request/reply subscriptions and the consumer's one inbox went with it
            assert running - len(nc._subs) == 4
            await asyncio.wait_for(nc.drain(), 2)
        finally:
            await bus.stop()
            if not nc.is_closed:
                await nc.close()


async def test_users_silent_is_503_not_unknown(bus: Bus, rooms: ServiceProcess) -> None:
    """When users does not answer a miss, the answer is 503 unavailable."""
    (alice,) = await bus.create_users("Alice")
    bus.users.silent = True
    async with httpx.AsyncClient(base_url=rooms.url, timeout=10) as client:
        resp = await post_room(client, alice.id, [uid("maybe")])
        assert resp.status_code == 503
        assert resp.json()["error"]["code"] == "unavailable"


async def test_bad_input_is_4xx(bus: Bus, rooms: ServiceProcess) -> None:
    """No token 401, bad bodies 400, undecodable commands get validation_error, never a crash."""
    (alice,) = await bus.create_users("Alice")
    async with httpx.AsyncClient(base_url=rooms.url, timeout=10) as client:
        resp = await client.get("/rooms")
        assert resp.status_code == 401
        assert resp.json()["error"]["code"] == "unauthorized"
        bad = {"Authorization": "Bearer not-a-token"}
        resp = await client.post("/rooms", json={"participants": ["x"]}, headers=bad)
        assert resp.status_code == 401
        assert resp.json()["error"]["code"] == "unauthorized"
        for body in ({}, {"participants": "x"}, {"participants": [1]}, {"participants": ["a b"]}):
            resp = await client.post("/rooms", json=body, headers=auth(alice.id))
            assert resp.status_code == 400, (body, resp.text)
            assert set(resp.json()["error"]) == {"code", "message"}
        resp = await client.post(
            "/rooms",
            content=b"{nope",
            headers={**auth(alice.id), "content-type": "application/json"},
        )
        assert resp.status_code == 400
        assert resp.json()["error"]["code"] == "invalid_json"
        plain = {**auth(alice.id), "content-type": "text/plain"}
        resp = await client.post("/rooms", content=b'{"participants": []}', headers=plain)
        assert resp.status_code == 400
        no_type = await client.post(
            "/rooms", content=b'{"participants": []}', headers=auth(alice.id)
        )
        assert no_type.status_code == 201, no_type.text
    for payload in (b"not json", b"{}", json.dumps({"userId": 5}).encode()):
        msg = await bus.nc.request(subjects.CREATE_ROOM, payload, timeout=5)
        reply = CreateRoomReply.model_validate_json(msg.data)
        assert reply.error is not None
        assert reply.error.code == "validation_error"
    msg = await bus.nc.request(subjects.GET_ROOM, b"[]", timeout=5)
    assert json.loads(msg.data)["error"]["code"] == "validation_error"
    async with httpx.AsyncClient(base_url=rooms.url, timeout=10) as client:
        assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/readyz")).status_code == 200
        spec = (await client.get("/openapi.json")).json()
        assert spec["info"]["title"] == "chat rooms"
        assert "422" not in json.dumps(spec["paths"])


async def test_kill_during_burst_loses_no_room_and_no_event(
    bus: Bus, launcher: ServiceLauncher
) -> None:
    """kill -9 during a burst of POST /rooms: every 201 room listed once, and announced."""
    alice, *others = await bus.create_users("Alice", "Bob", "Carol", "Dave", "Erin")
    # one creator makes rooms as fast as she can here: lift her rate limit (its own test is
    # in tests/security/test_limits.py)
    first = await start_rooms(launcher, CHAT_ROOM_CREATE_BURST="100000")
    created: list[Room] = []
    stop = asyncio.Event()
    enough = asyncio.Event()

    async def worker(client: httpx.AsyncClient, n: int) -> None:
        i = 0
        while not stop.is_set():
            i += 1
            chosen = [others[(n + i) % len(others)].id, others[(n + 2 * i) % len(others)].id]
            try:
                resp = await post_room(client, alice.id, chosen)
            except httpx.HTTPError:
                return
            if resp.status_code == 201:
                created.append(Room.model_validate(resp.json()))
                if len(created) >= 40:
                    enough.set()
            else:
                return

    async with httpx.AsyncClient(base_url=first.url, timeout=10) as client:
        workers = [asyncio.create_task(worker(client, n)) for n in range(16)]
        async with asyncio.timeout(20):
            await enough.wait()
        first.kill()
        stop.set()
        await asyncio.gather(*workers)
    assert len(created) >= 40

    # a new process: its outbox relay finishes what the killed one left half done
    second = await start_rooms(
        launcher, CHAT_OUTBOX_INTERVAL_SECONDS="0.5", CHAT_OUTBOX_MIN_AGE_SECONDS="0"
    )
    async with httpx.AsyncClient(base_url=second.url, timeout=10) as client:
        async with asyncio.timeout(30):
            while True:
                listed = await rooms_of(client, alice.id)
                events = [e for e in await bus.room_created_events() if e.creatorId == alice.id]
                announced = {e.room.id for e in events}
                if {r.id for r in listed} <= announced:
                    break
                await asyncio.sleep(0.5)

        ids = [r.id for r in listed]
        assert len(ids) == len(set(ids)), "a room is listed twice"
        for room in created:
            assert ids.count(room.id) == 1, room.id
            assert room.id in announced, room.id
            for member in room.participants:
                assert room.id in [r.id for r in await rooms_of(client, member.id)]
        by_id = {r.id: r for r in listed}
        for event in events:
            assert event.room == by_id[event.room.id]
        # JetStream deduplicated re-publishes by Nats-Msg-Id: one event per room
        assert len(events) == len(announced)


async def test_idempotency_key_makes_one_room(bus: Bus, launcher: ServiceLauncher) -> None:
    """POSTs with one Idempotency-Key (even at once) make one room; other participants 409."""
    rooms = await start_rooms(launcher, CHAT_CORS_ORIGINS="http://127.0.0.1:8080")
    alice, bob, carol = await bus.create_users("Alice", "Bob", "Carol")
    key = {"Idempotency-Key": "9b1deb4d-3b7d-4bad-9bdd-2b0d7b3dcb6d"}
    async with httpx.AsyncClient(base_url=rooms.url, timeout=10) as client:

        async def post(participants: list[str]) -> httpx.Response:
            body = {"participants": participants}
            return await client.post("/rooms", json=body, headers={**auth(alice.id), **key})

        answers = await asyncio.gather(*(post([bob.id]) for _ in range(5)))
        assert [a.status_code for a in answers] == [201] * 5, [a.text for a in answers]
        assert len({a.json()["id"] for a in answers}) == 1
        room = Room.model_validate(answers[0].json())
        assert all(Room.model_validate(a.json()) == room for a in answers)
        again = await post([bob.id, alice.id])  # the same people in another order
        assert again.status_code == 201
        assert Room.model_validate(again.json()) == room
        assert await rooms_of(client, alice.id) == [room]
        assert await rooms_of(client, bob.id) == [room]

        other = await post([carol.id])
        assert other.status_code == 409, other.text
        assert other.json()["error"]["code"] == "conflict"
        assert await rooms_of(client, carol.id) == []

        # keys are the caller's own: bob's same key makes bob's room
        by_bob = await client.post(
            "/rooms", json={"participants": [alice.id]}, headers={**auth(bob.id), **key}
        )
        assert by_bob.status_code == 201
        assert by_bob.json()["id"] != room.id

        for bad in ("a b", "x" * 129, ""):
            resp = await client.post(
                "/rooms",
                json={"participants": [bob.id]},
                headers={**auth(alice.id), "Idempotency-Key": bad},
            )
            assert resp.status_code == 400, (bad, resp.text)
            assert resp.json()["error"]["code"] == "validation_error"
            assert "Idempotency-Key" in resp.json()["error"]["message"]
        preflight = await client.options(
            "/rooms",
            headers={
                "Origin": "http://127.0.0.1:8080",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization,content-type,idempotency-key",
            },
        )
        assert preflight.status_code == 200, preflight.text
        allowed = preflight.headers["access-control-allow-headers"].lower()
        assert "idempotency-key" in allowed

    # the NATS command (WS create_room) takes the same key
    command = CreateRoomCommand(
        userId=alice.id, participants=[bob.id], idempotencyKey=key["Idempotency-Key"]
    )
    reply = CreateRoomReply.model_validate_json(
        await bus.request(subjects.CREATE_ROOM, command.model_dump_json())
    )
    assert reply.room == room


async def test_a_user_is_in_at_most_the_configured_rooms(
    bus: Bus, launcher: ServiceLauncher
) -> None:
    """CHAT_MAX_ROOMS_PER_USER=3: a fourth room with bob is refused (HTTP 409 and the NATS
    command alike, `too_many_rooms` naming bob, nothing created); a retry of the third room
    under its key is still answered; rooms without bob are made."""
    rooms = await start_rooms(launcher, CHAT_MAX_ROOMS_PER_USER="3")
    alice, bob, carol = await bus.create_users("Alice", "Bob", "Carol")
    key = {"Idempotency-Key": "third-room"}
    async with httpx.AsyncClient(base_url=rooms.url, timeout=10) as client:
        made = [await post_room(client, alice.id, [bob.id]) for _ in range(2)]
        made.append(
            await client.post(
                "/rooms", json={"participants": [bob.id]}, headers={**auth(carol.id), **key}
            )
        )
        assert [r.status_code for r in made] == [201] * 3, [r.text for r in made]
        refused = await post_room(client, alice.id, [bob.id])
        assert refused.status_code == 409, refused.text
        assert refused.json()["error"]["code"] == "too_many_rooms"
        assert bob.id in refused.json()["error"]["message"]
        assert alice.id not in refused.json()["error"]["message"]
        again = await client.post(
            "/rooms", json={"participants": [bob.id]}, headers={**auth(carol.id), **key}
        )
        assert again.status_code == 201, again.text
        assert again.json()["id"] == made[2].json()["id"]
        assert len(await rooms_of(client, bob.id)) == 3
        assert (await post_room(client, alice.id, [carol.id])).status_code == 201
    command = CreateRoomCommand(userId=carol.id, participants=[bob.id, alice.id])
    reply = CreateRoomReply.model_validate_json(
        await bus.request(subjects.CREATE_ROOM, command.model_dump_json())
    )
    assert reply.room is None
    assert reply.error is not None
    assert reply.error.code == "too_many_rooms"
    assert bob.id in reply.error.message
