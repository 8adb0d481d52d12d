"""Each `create_room` call of a connection gets exactly one answer with its requestId, whichever
comes first: the call's own reply, or the router's announcement of the room it created."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from contracts.bus import CreateRoomReply, Origin
from contracts.rest import Room, RoomParticipant
from contracts.ws import CreateRoomAction
from infra.auth import TokenService
from ws_edge.hub import Hub
from ws_edge.settings import Settings

ROOM = Room(
    id="room_1",
    participants=[RoomParticipant(id="u", name="U"), RoomParticipant(id="v", name="V")],
    createdAt="2026-12-06T07:00:00.000Z",
)


class Subscription:
    async def unsubscribe(self) -> None:
        return None


class Nats:
    """Flushes that take the given times, in call order (then 10 ms each)."""

    def __init__(self, delays: list[float] | None = None) -> None:
        self.delays = list(delays or [])

    async def flush(self, timeout: float) -> None:  # noqa: ASYNC109  (nats-py's signature)
        await asyncio.sleep(self.delays.pop(0) if self.delays else 0.01)


class Bus:
    """Answers create_room with ROOM once `release` is set."""

    def __init__(self, flushes: list[float] | None = None) -> None:
        self.nc = Nats(flushes)
        self.release = asyncio.Event()
        self.calls = 0

    async def create_room(self, command: Any) -> CreateRoomReply:
        self.calls += 1
        await self.release.wait()
        return CreateRoomReply(room=ROOM)

    async def subscribe(self, subject: str, handler: Any) -> Subscription:
        return Subscription()


def answers(sent: list[str], request_id: str) -> list[dict[str, Any]]:
    frames = [json.loads(text) for text in sent]
    return [f for f in frames if f["type"] == "room_created" and f.get("requestId") == request_id]


async def test_the_router_first_answers_the_call_once(make_connection: Any) -> None:
    """The router announces the new room (with this call's origin) while the call's own
    reply is being handled (its flush out, slower than the router's): one answer."""
    bus = Bus(flushes=[0.05, 0.001])  # the reply's flush, then the router's
    hub = Hub(Settings(), bus, None, TokenService("k" * 40, "chat", 60, 0))  # type: ignore[arg-type]
    conn, sent = make_connection(user_id="u")
    hub.conns[conn.id] = conn
    hub.by_user["u"] = {conn}
    action = CreateRoomAction(action="create_room", participants=["v"], requestId="first")
    call = asyncio.create_task(hub._create_room(conn, action))
    await asyncio.sleep(0)
    bus.release.set()  # the reply arrives; its join and flush run
    await asyncio.sleep(0.01)  # during the reply's flush, the router's comes and goes:
    origin = Origin(node=hub.node, conn=conn.id, requestId="first")
    await hub._announce_room(ROOM, ["u", "v"], origin)
    await call
    assert len(answers(sent, "first")) == 1


async def test_a_retry_in_flight_with_the_first_call_is_answered_too(
    make_connection: Any,
) -> None:
    """The same key sent again while the first call is still out (the client gave up
    waiting): the router's announcement answers the first call, the retry's reply answers
    the retry, each with its own requestId, once."""
    bus = Bus()
    hub = Hub(Settings(), bus, None, TokenService("k" * 40, "chat", 60, 0))  # type: ignore[arg-type]
    conn, sent = make_connection(user_id="u")
    hub.conns[conn.id] = conn
    hub.by_user["u"] = {conn}
    calls = [
        asyncio.create_task(
            hub._create_room(
                conn,
                CreateRoomAction(
                    action="create_room",
                    participants=["v"],
                    requestId=request_id,
                    idempotencyKey="k-1",
                ),
            )
        )
        for request_id in ("first", "retry")
    ]
    await asyncio.sleep(0)
    assert bus.calls == 2
    origin = Origin(node=hub.node, conn=conn.id, requestId="first")
    await hub._announce_room(ROOM, ["u", "v"], origin)
    bus.release.set()
    await asyncio.gather(*calls)
    assert len(answers(sent, "first")) == 1
    assert len(answers(sent, "retry")) == 1
    assert hub._creating == {}
