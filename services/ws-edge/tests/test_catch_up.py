"""After a bus reconnect the node reads what its rooms got meanwhile, even if they went quiet."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from contracts.bus import HistoryRangeQuery, HistoryRangeReply, RoomRange
from contracts.rest import Message
from infra.auth import TokenService
from ws_edge.connection import Connection
from ws_edge.domain.delivery import RoomOrder
from ws_edge.hub import Hub, RoomFeed
from ws_edge.settings import Settings

# the `make_connection` fixture (conftest.py)
MakeConnection = Callable[..., tuple[Connection, list[str]]]


def _msg(seq: int) -> Message:
    return Message(
        roomId="room_q",
        messageId=f"m{seq}",
        content="x",
        senderId="u",
        createdAt="2024-01-01T00:00:00Z",
        seq=seq,
    )


class FakeBus:
    """Answers history range queries from a list, like history does."""

    def __init__(self, stored: list[Message]) -> None:
        self.stored = stored
        self.queries: list[HistoryRangeQuery] = []

    async def history(self, query: HistoryRangeQuery) -> HistoryRangeReply:
        self.queries.append(query)
        rooms = {}
        for room, after in query.rooms.items():
            newer = [m for m in self.stored if m.roomId == room and m.seq > (after or 0)]
            rooms[room] = RoomRange(messages=newer, latest=max(m.seq for m in self.stored))
        return HistoryRangeReply(rooms=rooms)


async def test_catch_up_releases_missed_messages_in_order(make_connection: MakeConnection) -> None:
    """A feed at seq 2 whose room got 3 and 4 during an outage gets them, in order, once."""
    bus = FakeBus([_msg(1), _msg(2), _msg(3), _msg(4)])
    tokens = TokenService("k" * 40, "chat", 3600, 0)
    hub = Hub(Settings(), bus, None, tokens)  # type: ignore[arg-type]
    conn, sent = make_connection()
    feed = RoomFeed("room_q", RoomOrder(delivered=2))
    feed.members.add(conn)
    conn.view("room_q").sent.add_range(1, 2)
    hub.feeds["room_q"] = feed
    await hub._catch_up()
    for _ in range(200):  # the connection's writer sends them
        if len(sent) >= 2:
            break
        await asyncio.sleep(0.01)
    frames: list[dict[str, Any]] = [json.loads(text) for text in sent]
    assert [f["message"]["seq"] for f in frames] == [3, 4]
    assert feed.order.delivered == 4
    assert bus.queries[0].rooms == {"room_q": 2}
    await hub._catch_up()
    await asyncio.sleep(0.05)
    assert len(sent) == 2
    assert conn.queued() == 0
    if conn.writer is not None:
        conn.writer.cancel()
