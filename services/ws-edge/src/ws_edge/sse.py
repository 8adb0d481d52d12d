"""Server-sent events: a hub `Connection` whose frames are written as SSE events.

The stream is fed exactly like a WebSocket (per-room feeds, user-targeted frames, presence);
only the encoding differs: `event: <type>`, `data: <frame JSON>` and, on frames that move the
client's position (`message_created`, `room_created`, `synced`), `id: <position>` computed when
the frame is queued, i.e. covering exactly the frames queued up to and including it
(`domain/position.py`). Opening a stream:

- without `Last-Event-ID`: the client starts now; every room's latest seq is its baseline,
  read before the answer starts (entrypoints/sse.py), so the stream the client sees open
  misses nothing stored after that;
- with one: every seq the position does not cover is replayed from history (the same
  `HistoryRangeQuery` the WS `sync` uses, paged until complete, with backpressure), rooms it
  does not name get `room_created` first; live frames of those rooms wait until the replay is
  out. So a resume on any node delivers every frame after the position exactly once.

Either way the stream then says `synced` (every room of the caller and its latest seq).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson

from contracts.bus import GetRoomReply, HistoryRangeQuery
from contracts.ws import MessageCreatedFrame, RoomCreatedFrame, SyncedFrame
from ws_edge.connection import Connection
from ws_edge.domain.position import Spans, encode_position, resume_after
from ws_edge.hub import Hub, encode

log = logging.getLogger(__name__)

REPLAY_PAGE = 500
ROOM_LOOKUPS = 16  # rooms asked about at once when a resume announces rooms
POSITION_FRAMES = ("message_created", "room_created", "synced")


def sse_event(kind: str, data: str, event_id: str | None = None) -> str:
    """One SSE event (data lines split on newlines, which compact JSON never has)."""
    lines = [f"event: {kind}"]
    if event_id is not None:
        lines.append(f"id: {event_id}")
    lines.extend(f"data: {line}" for line in data.split("\n"))
    return "\n".join(lines) + "\n\n"


class SseConnection(Connection):
    """A Connection that queues SSE events; `known` are the rooms its position covers."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.known: set[str] = set()
        self._last_id: str | None = None

    def position(self) -> dict[str, Spans]:
        out: dict[str, Spans] = {}
        for room_id in self.known:
            view = self.rooms.get(room_id)
            out[room_id] = list(view.sent.spans) if view is not None else []
        return out

    def push(self, text: str, wire: bytes | None = None) -> bool:
        try:
            frame = orjson.loads(text)
            kind = str(frame.get("type", "message"))
        except (orjson.JSONDecodeError, AttributeError):
            return super().push(sse_event("message", text))
        event_id = None
        if kind in POSITION_FRAMES:
            if kind == "message_created":
                self.known.add(str(frame["message"]["roomId"]))
            elif kind == "room_created":
                self.known.add(str(frame["room"]["id"]))
            else:
                self.known.update(str(r) for r in frame.get("rooms", {}))
            current = encode_position(self.position())
            if current != self._last_id:
                event_id = self._last_id = current
        return super().push(sse_event(kind, text, event_id))

    def push_comment(self, comment: str) -> bool:
        """A comment line (heartbeat): ignored by clients, keeps proxies from timing out."""
        return super().push(f": {comment}\n\n")


async def _room_space(conn: Connection) -> None:
    """Backpressure for replays: wait while the send queue is more than half full."""
    while conn.queued() > conn.queue_size // 2 and not conn.closed:  # noqa: ASYNC110
        await asyncio.sleep(0.01)


async def open_stream(
    hub: Hub, conn: SseConnection, position: dict[str, Spans] | None, registered: bool = False
) -> None:
    """Attach the stream to the hub and bring it to the live edge (see the module docstring);
    `registered`: the connection map has it already (`Hub.admit`)."""
    rooms = set(await hub.bus.user_rooms(conn.user_id))
    for room_id in rooms:
        view = conn.view(room_id)
        view.syncing = True
        for lo, hi in (position or {}).get(room_id, []):
            view.sent.add_range(lo, hi)
    await hub.attach(conn, registered=registered, rooms_read=rooms)
    joined = set(conn.rooms) - rooms
    for room_id in joined:
        conn.view(room_id).syncing = True
    rooms |= joined
    latest: dict[str, int] = {}
    try:
        if position is None:
            conn.known.update(rooms)
            reply = await hub.bus.history(
                HistoryRangeQuery(rooms=dict.fromkeys(rooms), limit=REPLAY_PAGE)
            )
            for room_id in rooms:
                got = reply.rooms.get(room_id)
                last = got.latest if got is not None else 0
                if last > 0:
                    conn.view(room_id).sent.add_range(1, last)
                latest[room_id] = last
            conn.announced_rooms.update(rooms)
        else:
            # rooms the position does not name are announced first; asked of rooms a few at a
            # time (one after another took seconds for a user in thousands of rooms) and sent
            # in order, with the replay's backpressure
            missing = [r for r in sorted(rooms - set(position)) if r not in conn.announced_rooms]
            gate = asyncio.Semaphore(ROOM_LOOKUPS)

            async def look_up(room_id: str) -> GetRoomReply:
                async with gate:
                    return await hub.bus.get_room(room_id)

            found = await asyncio.gather(*(look_up(r) for r in missing))
            for room_id, got_room in zip(missing, found, strict=True):
                if got_room.room is not None:
                    await _room_space(conn)
                    conn.announced_rooms.add(room_id)
                    conn.push(encode(RoomCreatedFrame(room=got_room.room)))
            conn.announced_rooms.update(rooms)
            conn.known.update(rooms)
            latest = await _replay(hub, conn, rooms)
    finally:
        for room_id in rooms:
            hub._end_sync(conn, room_id)
    for room_id in rooms:
        latest[room_id] = max(latest.get(room_id, 0), conn.view(room_id).sent.highest)
    conn.push(encode(SyncedFrame(rooms=latest)))


async def _replay(hub: Hub, conn: SseConnection, rooms: set[str]) -> dict[str, int]:
    """Every seq of `rooms` not yet sent, in seq order, paged until complete."""
    latest: dict[str, int] = {}
    cursor: dict[str, int | None] = {r: resume_after(conn.view(r).sent.spans) for r in rooms}
    while cursor and not conn.closed:
        reply = await hub.bus.history(HistoryRangeQuery(rooms=cursor, limit=REPLAY_PAGE))
        following: dict[str, int | None] = {}
        for room_id in cursor:
            got = reply.rooms.get(room_id)
            if got is None:
                continue
            latest[room_id] = got.latest
            view = conn.view(room_id)
            for message in got.messages:
                if message.seq in view.sent:
                    continue
                await _room_space(conn)
                view.sent.add(message.seq)
                conn.push(encode(MessageCreatedFrame(message=message)))
            if got.truncated and got.messages:
                following[room_id] = got.messages[-1].seq
        cursor = following
    return latest
