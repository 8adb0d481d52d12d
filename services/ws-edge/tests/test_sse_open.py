"""Opening an event stream reads the user's rooms once."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from contracts.bus import HistoryRangeQuery, HistoryRangeReply, RoomRange
from infra.auth import TokenService
from ws_edge.connection import Connection
from ws_edge.hub import Hub
from ws_edge.settings import Settings
from ws_edge.sse import SseConnection, open_stream

# the `make_connection` fixture (conftest.py)
MakeConnection = Callable[..., tuple[Connection, list[str]]]


class FakeBus:
    """The part of EdgeBus a stream's opening uses, counting the rooms queries."""

    def __init__(self, rooms: list[str]) -> None:
        self.rooms = rooms
        self.asked: list[str] = []
        self.subscribed: list[str] = []
        self.nc = SimpleNamespace(flush=self.flush)

    async def user_rooms(self, user_id: str) -> list[str]:
        self.asked.append(user_id)
        return list(self.rooms)

    async def subscribe(self, subject: str, handler: Any) -> object:
        self.subscribed.append(subject)
        return SimpleNamespace()

    async def flush(self, timeout: float) -> None:  # noqa: ASYNC109 (nats-py's signature)
        return None

    async def history(self, query: HistoryRangeQuery) -> HistoryRangeReply:
        return HistoryRangeReply(rooms={r: RoomRange(messages=[], latest=0) for r in query.rooms})


async def test_a_new_stream_asks_rooms_once(make_connection: MakeConnection) -> None:
    """The stream reads the user's rooms (to hold their frames until replayed) and the hub
    takes that list instead of asking rooms again; both rooms' feeds are subscribed and the
    stream ends its opening with `synced`."""
    bus = FakeBus(["r1", "r2"])
    hub = Hub(Settings(), bus, SimpleNamespace(), TokenService("k" * 40, "chat", 3600, 0))  # type: ignore[arg-type]
    made, sent = make_connection(SseConnection)
    assert isinstance(made, SseConnection)
    conn = made
    try:
        await open_stream(hub, conn, None, registered=True)
        assert bus.asked == ["u"]
        assert sorted(bus.subscribed) == [
            "chat.evt.message_created.r1",
            "chat.evt.message_created.r2",
        ]
        assert hub.user_rooms["u"] == {"r1", "r2"}
        for _ in range(100):  # the connection's writer writes the events
            if any("event: synced" in text for text in sent):
                break
            await asyncio.sleep(0.01)
        assert any("event: synced" in text for text in sent), sent
    finally:
        if conn.expiry is not None:
            conn.expiry.cancel()
        if conn.writer is not None:
            conn.writer.cancel()
