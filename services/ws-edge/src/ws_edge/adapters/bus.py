"""The edge's view of the bus: commands and queries out, per-room and per-node subscriptions in."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from pydantic import BaseModel

from contracts import subjects
from contracts.bus import (
    CreateMessageCommand,
    CreateRoomCommand,
    CreateRoomReply,
    GetRoomQuery,
    GetRoomReply,
    HistoryRangeQuery,
    HistoryRangeReply,
    UserRoomsQuery,
    UserRoomsReply,
)
from infra.bus import stamp
from ws_edge.adapters.stream_acks import StreamAcks

R = TypeVar("R", bound=BaseModel)
Handler = Callable[[Msg], Awaitable[None]]


class EdgeBus:
    """Typed requests/publishes over one NATS connection."""

    def __init__(self, nc: NATS, timeout: float) -> None:
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream(timeout=timeout)
        self.timeout = timeout
        self.stream_acks = StreamAcks(nc, timeout)

    async def _request(self, subject: str, query: BaseModel, reply: type[R]) -> R:
        headers = stamp(query)  # the correlation id rides in the payload and the headers
        msg = await self.nc.request(
            subject, query.model_dump_json().encode(), timeout=self.timeout, headers=headers or None
        )
        return reply.model_validate_json(msg.data)

    async def create_room(self, command: CreateRoomCommand) -> CreateRoomReply:
        return await self._request(subjects.CREATE_ROOM, command, CreateRoomReply)

    async def user_rooms(self, user_id: str) -> list[str]:
        reply = await self._request(
            subjects.USER_ROOMS, UserRoomsQuery(userId=user_id), UserRoomsReply
        )
        return reply.roomIds

    async def get_room(self, room_id: str) -> GetRoomReply:
        return await self._request(subjects.GET_ROOM, GetRoomQuery(roomId=room_id), GetRoomReply)

    async def history(self, query: HistoryRangeQuery) -> HistoryRangeReply:
        return await self._request(subjects.HISTORY_RANGE, query, HistoryRangeReply)

    async def send_message(self, command: CreateMessageCommand) -> None:
        """Durably hand the command to history (JetStream ack = stored in the stream).

        The correlation id rides in the payload only: no NATS header on this per-message
        subject, which history would otherwise parse for every command."""
        stamp(command)
        await self.stream_acks.publish(
            subjects.create_message(command.roomId), command.model_dump_json().encode()
        )

    async def subscribe(self, subject: str, handler: Handler) -> Subscription:
        return await self.nc.subscribe(subject, cb=handler, pending_msgs_limit=100_000)
