"""History against real NATS (JetStream), the real store (dynalite) and real processes."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import httpx
import nats
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from contracts import subjects
from contracts.bus import (
    CommandRejected,
    CreateMessageCommand,
    GetRoomQuery,
    GetRoomReply,
    HistoryRangeQuery,
    HistoryRangeReply,
    MessageCreated,
    Origin,
    RoomCreated,
)
from contracts.rest import Room, RoomParticipant
from infra.auth import TokenService
from mesh.testing import TEST_SECRET, Infra, ServiceLauncher, ServiceProcess, eventually

pytestmark = pytest.mark.integration

ENV = {"CHAT_COMMANDS_ACK_WAIT_SECONDS": "5", "CHAT_NAK_DELAY_SECONDS": "0.5"}
TOKENS = TokenService(TEST_SECRET, "chat", 3600, 30)
CREATED_AT = "2024-06-16T12:34:56.789+02:00"
KNOWN_ROOMS: dict[str, Room] = {}  # what the test's stand-in for rooms answers


def token(user_id: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS.issue(user_id)[0]}"}


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="module")
def procs(infra: Infra) -> Iterator[ServiceLauncher]:
    """A launcher for this module's history processes, all stopped afterwards."""
    launcher = ServiceLauncher(infra)
    try:
        yield launcher
    finally:
        launcher.stop_all()


@pytest.fixture(scope="module")
def history(procs: ServiceLauncher) -> ServiceProcess:
    """One history process for the module's tests."""
    return procs.start("history", "history_service", **ENV)


@pytest.fixture(scope="module")
async def nc(infra: Infra) -> AsyncIterator[NATS]:
    """A NATS client of the test itself, with a tiny `chat.q.rooms.get` responder standing in
    for rooms (a real NATS responder answering the rooms this module created)."""
    client = await nats.connect(infra.nats_url)

    async def rooms_answer(msg: Msg) -> None:
        query = GetRoomQuery.model_validate_json(msg.data)
        room = KNOWN_ROOMS.get(query.roomId)
        await msg.respond(GetRoomReply(room=room).model_dump_json().encode())

    sub = await client.subscribe(subjects.GET_ROOM, cb=rooms_answer)
    try:
        yield client
    finally:
        await sub.unsubscribe()
        await client.drain()


async def create_room(nc: NATS, *users: str) -> str:
    """Announce a room the way rooms does (RoomCreated, captured by CHAT_EVENTS)."""
    room_id = new_id("room")
    event = RoomCreated(
        room=Room(
            id=room_id,
            participants=[RoomParticipant(id=u, name=u.title()) for u in users],
            createdAt="2024-06-16T12:36:00.000Z",
        ),
        creatorId=users[0],
    )
    KNOWN_ROOMS[room_id] = event.room
    await nc.jetstream().publish(subjects.ROOM_CREATED, event.model_dump_json().encode())
    return room_id


def command(room_id: str, message_id: str, content: str, user: str = "alice") -> bytes:
    return (
        CreateMessageCommand(
            userId=user,
            roomId=room_id,
            messageId=message_id,
            content=content,
            createdAt=CREATED_AT,
            origin=Origin(node="test-node", conn="c1", requestId="r1"),
        )
        .model_dump_json()
        .encode()
    )


async def send(nc: NATS, room_id: str, message_id: str, content: str, user: str = "alice") -> None:
    await nc.jetstream().publish(
        subjects.create_message(room_id), command(room_id, message_id, content, user)
    )


async def range_of(nc: NATS, rooms: dict[str, int | None], limit: int = 500) -> HistoryRangeReply:
    query = HistoryRangeQuery(rooms=rooms, limit=limit).model_dump_json().encode()
    reply = await nc.request(subjects.HISTORY_RANGE, query, timeout=10)
    return HistoryRangeReply.model_validate_json(reply.data)


async def all_messages(nc: NATS, room_id: str) -> list[tuple[int, str]]:
    seen: list[tuple[int, str]] = []
    after = 0
    while True:
        reply = await range_of(nc, {room_id: after})
        part = reply.rooms[room_id]
        seen.extend((m.seq, m.messageId) for m in part.messages)
        if not part.truncated:
            return seen
        after = part.messages[-1].seq


async def test_paging_over_http(history: ServiceProcess, nc: NATS) -> None:
    """120 messages: default page 71-120, before=71 gives 21-70, after=100 gives 101-120."""
    room = await create_room(nc, "alice", "bob")
    created: list[MessageCreated] = []

    async def collect(msg: Msg) -> None:
        created.append(MessageCreated.model_validate_json(msg.data))

    sub = await nc.subscribe(subjects.message_created(room), cb=collect)
    for i in range(120):
        await send(nc, room, f"m{i:03d}", f"message {i}")
    await eventually(lambda: len({e.message.seq for e in created}) >= 120)
    await sub.unsubscribe()
    url = f"{history.url}/rooms/{room}/messages"
    async with httpx.AsyncClient(headers=token("bob"), timeout=10) as http:
        latest = await http.get(url)
        assert latest.status_code == 200
        body = latest.json()
        assert [m["seq"] for m in body] == list(range(71, 121))
        assert body[-1] == {
            "roomId": room,
            "messageId": "m119",
            "content": "message 119",
            "senderId": "alice",
            "createdAt": CREATED_AT,
            "status": "success",
            "seq": 120,
        }
        assert latest.headers["link"] == f'<{url}?before=71&limit=50>; rel="next"'
        older = await http.get(url, params={"before": 71})
        assert [m["seq"] for m in older.json()] == list(range(21, 71))
        assert older.headers["link"] == f'<{url}?before=21&limit=50>; rel="next"'
        oldest = await http.get(url, params={"before": 21})
        assert [m["seq"] for m in oldest.json()] == list(range(1, 21))
        assert "link" not in oldest.headers
        newer = await http.get(url, params={"after": 100})
        assert [m["seq"] for m in newer.json()] == list(range(101, 121))
        assert "link" not in newer.headers
        small = await http.get(url, params={"after": 10, "limit": 5})
        assert [m["seq"] for m in small.json()] == [11, 12, 13, 14, 15]
        assert small.headers["link"] == f'<{url}?after=15&limit=5>; rel="next"'
        for params, code in (
            ({"limit": 0}, "invalid_limit"),
            ({"limit": 201}, "invalid_limit"),
            ({"before": 5, "after": 3}, "invalid_cursor"),
            ({"before": -1}, "invalid_cursor"),
            ({"after": "x"}, "invalid_cursor"),
        ):
            bad = await http.get(url, params=params)
            assert bad.status_code == 400, params
            assert bad.json()["error"]["code"] == code
        unauthenticated = await http.get(url, headers={"Authorization": ""})
        assert unauthenticated.status_code == 401


async def test_access_is_checked(history: ServiceProcess, nc: NATS) -> None:
    """403 not_participant for an outsider, 404 unknown_room for a room nobody knows."""
    room = await create_room(nc, "alice", "bob")
    url = f"{history.url}/rooms/{room}/messages"
    async with httpx.AsyncClient(timeout=10) as http:
        await wait_for_room(http, url)
        outsider = await http.get(url, headers=token("mallory"))
        assert outsider.status_code == 403
        assert outsider.json()["error"]["code"] == "not_participant"
        unknown = await http.get(f"{history.url}/rooms/nope_{room}/messages", headers=token("bob"))
        assert unknown.status_code == 404
        assert unknown.json()["error"]["code"] == "unknown_room"
        # an id no room can have is refused the same way, without echoing what was sent
        garbage = await http.get(f"{history.url}/rooms/%00%ff/messages", headers=token("bob"))
        assert garbage.status_code == 404
        assert garbage.json()["error"] == {"code": "unknown_room", "message": "unknown room"}


async def wait_for_room(http: httpx.AsyncClient, url: str) -> None:
    """The room becomes readable (from RoomCreated or by asking the rooms responder)."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if (await http.get(url, headers=token("alice"))).status_code == 200:
            return
        await asyncio.sleep(0.1)
    raise AssertionError("room never became known")


async def test_retries_and_conflicts(history: ServiceProcess, nc: NATS) -> None:
    """A messageId sent three times is stored once; other content is a conflict to the node."""
    room = await create_room(nc, "alice", "bob")
    to_node: list[bytes] = []
    on_room: list[MessageCreated] = []

    async def node_cb(msg: Msg) -> None:
        to_node.append(msg.data)

    async def room_cb(msg: Msg) -> None:
        on_room.append(MessageCreated.model_validate_json(msg.data))

    sub_node = await nc.subscribe(subjects.node("test-node"), cb=node_cb)
    sub_room = await nc.subscribe(subjects.message_created(room), cb=room_cb)
    for _ in range(3):
        await send(nc, room, "dup", "same text")
    await send(nc, room, "dup", "other text")
    await send(nc, room, "after", "next one")
    await eventually(lambda: any(e.message.messageId == "after" for e in on_room))
    await eventually(lambda: len(to_node) >= 3)
    await sub_node.unsubscribe()
    await sub_room.unsubscribe()
    assert await all_messages(nc, room) == [(1, "dup"), (2, "after")]
    answers = [MessageCreated.model_validate_json(d) for d in to_node if b"MessageCreated" in d]
    assert [a.message.seq for a in answers] == [1, 1]
    assert answers[0].origin is not None
    assert answers[0].origin.requestId == "r1"
    rejections = [CommandRejected.model_validate_json(d) for d in to_node if b"Rejected" in d]
    assert [r.error.code for r in rejections] == ["conflict"]
    assert rejections[0].messageId == "dup"
    assert {e.message.seq for e in on_room} == {1, 2}


async def test_bad_commands_are_dropped_or_rejected(history: ServiceProcess, nc: NATS) -> None:
    """Garbage is dropped, a non-participant is rejected, and the room keeps working."""
    room = await create_room(nc, "alice")
    to_node: list[CommandRejected] = []

    async def node_cb(msg: Msg) -> None:
        with contextlib.suppress(ValueError):
            to_node.append(CommandRejected.model_validate_json(msg.data))

    sub = await nc.subscribe(subjects.node("test-node"), cb=node_cb)
    js = nc.jetstream()
    await js.publish(subjects.create_message(room), b"{not json")
    await js.publish(subjects.create_message(room), b'{"command": "CreateMessage"}')
    await send(nc, room, "x1", "from outside", user="mallory")
    await send(nc, room, "x2", "fine")
    await eventually(lambda: len(to_node) >= 1)
    assert to_node[0].error.code == "not_participant"
    reply = await range_of(nc, {room: 0})
    deadline = time.monotonic() + 15
    while not reply.rooms[room].messages and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        reply = await range_of(nc, {room: 0})
    assert [m.messageId for m in reply.rooms[room].messages] == ["x2"]
    await sub.unsubscribe()


async def test_history_range_query(history: ServiceProcess, nc: NATS) -> None:
    """HISTORY_RANGE pages per room, says truncated past the limit, and answers bad queries."""
    room = await create_room(nc, "alice")
    for i in range(12):
        await send(nc, room, f"r{i}", f"text {i}")
    await wait_for_range(nc, room, 12)
    reply = await range_of(nc, {room: 2, "empty_room": 0, "latest_only": None}, limit=5)
    assert reply.error is None
    part = reply.rooms[room]
    assert [m.seq for m in part.messages] == [3, 4, 5, 6, 7]
    assert part.truncated
    assert part.latest == 12
    assert reply.rooms["empty_room"].latest == 0
    assert reply.rooms["latest_only"].messages == []
    bad = await nc.request(subjects.HISTORY_RANGE, b'{"rooms": 5}', timeout=5)
    assert HistoryRangeReply.model_validate_json(bad.data).error is not None


async def wait_for_range(nc: NATS, room: str, count: int, within: float = 60) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if len(await all_messages(nc, room)) >= count:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"{room}: fewer than {count} messages stored")


def stored_count(proc: ServiceProcess) -> float:
    """Messages a history process has stored so far (its Prometheus counter)."""
    try:
        text = httpx.get(f"{proc.url}/metrics", timeout=2).text
    except httpx.HTTPError:
        return 0.0
    for line in text.splitlines():
        if line.startswith('history_messages_total{outcome="stored"}'):
            return float(line.split()[-1])
    return 0.0


async def test_two_replicas_one_killed(
    procs: ServiceLauncher, history: ServiceProcess, nc: NATS
) -> None:
    """Two history processes on one durable consumer, one killed -9 mid-stream: exactly once."""
    history.stop()
    first = procs.start("history-1", "history_service", **ENV)
    second = procs.start("history-2", "history_service", **ENV)
    rooms = [await create_room(nc, "alice", "bob") for _ in range(4)]
    sent: dict[str, set[str]] = {room: set() for room in rooms}
    total = 200

    async def burst(numbers: range) -> None:
        """Publish commands concurrently, every tenth twice (a client retry)."""
        publishes = []
        for i in numbers:
            room = rooms[i % len(rooms)]
            message_id = f"k{i:04d}"
            sent[room].add(message_id)
            publishes.append(send(nc, room, message_id, f"kill test {i}"))
            if i % 10 == 0:
                publishes.append(send(nc, room, message_id, f"kill test {i}"))
        await asyncio.gather(*publishes)

    await burst(range(0, 120))
    # kill the first replica while it is in the middle of its work (some stored, more in hand)
    for _ in range(3000):
        if stored_count(first) >= 5:
            break
        await asyncio.sleep(0.01)
    first.kill()
    await burst(range(120, total))
    for room in rooms:
        await wait_for_range(nc, room, len(sent[room]), within=90)
    for room in rooms:
        stored = await all_messages(nc, room)
        assert [seq for seq, _ in stored] == list(range(1, len(stored) + 1)), room
        ids = [message_id for _, message_id in stored]
        assert len(ids) == len(set(ids)), f"{room}: a messageId stored twice"
        assert set(ids) == sent[room], f"{room}: lost or foreign messages"
    assert sum(len(s) for s in sent.values()) == total
    assert second.popen is not None
    assert second.popen.poll() is None
