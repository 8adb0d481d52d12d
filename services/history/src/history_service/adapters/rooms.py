"""Asking the rooms service about a room the read model does not know yet (read-after-write)."""

from __future__ import annotations

from typing import Protocol

from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from pydantic import ValidationError

from contracts import subjects
from contracts.bus import GetRoomQuery, GetRoomReply
from history_service.domain import RoomMeta, Unavailable


class RoomDirectory(Protocol):
    async def get_room(self, room_id: str) -> RoomMeta | None:
        """The room as its owner knows it; None if it does not exist; Unavailable if the
        owner did not answer (then nothing may be refused)."""


class NatsRoomDirectory:
    """`RoomDirectory` over the `chat.q.rooms.get` request/reply."""

    def __init__(self, nc: NATS, timeout: float) -> None:
        self._nc = nc
        self._timeout = timeout

    async def get_room(self, room_id: str) -> RoomMeta | None:
        query = GetRoomQuery(roomId=room_id).model_dump_json().encode()
        try:
            reply = await self._nc.request(subjects.GET_ROOM, query, timeout=self._timeout)
        except (NatsTimeoutError, NoRespondersError, TimeoutError) as exc:
            raise Unavailable(f"rooms did not answer: {type(exc).__name__}") from exc
        try:
            answer = GetRoomReply.model_validate_json(reply.data)
        except ValidationError as exc:
            raise Unavailable("rooms answered with an invalid reply") from exc
        if answer.room is None:
            return None
        room = answer.room
        return RoomMeta(room.id, tuple(p.id for p in room.participants), room.createdAt)
