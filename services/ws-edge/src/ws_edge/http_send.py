"""Sending a message over HTTP (`POST /rooms/{roomId}/messages` on the edge).

The same checks and the same `CreateMessageCommand` as the WS `create_message`, with an origin
naming this node and a one-off id instead of a connection. The call then waits (at most
`CHAT_HTTP_SEND_WAIT_SECONDS`) for the outcome: the stored message (`MessageCreated` on the
room's subject, or on this node's subject for a retry of a stored messageId) -> 201 with it;
a rejection (`CommandRejected` on this node's subject) -> its 4xx. No outcome in time -> 202:
the command is durably queued, the message arrives on the streams, and repeating the call with
the same messageId is safe (it answers 201 once the message is stored).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets

import orjson
from nats.aio.msg import Msg
from pydantic import ValidationError

from contracts import subjects
from contracts.bus import CommandRejected, CreateMessageCommand, MessageCreated, Origin
from contracts.common import check_not_in_future
from contracts.errors import ChatError, ErrorCode, ErrorDetail
from contracts.rest import Message, SendMessageRequest
from ws_edge.hub import Hub

log = logging.getLogger(__name__)

STATUS_OF: dict[str, int] = {
    ErrorCode.CONFLICT: 409,
    ErrorCode.UNKNOWN_ROOM: 404,
    ErrorCode.NOT_PARTICIPANT: 403,
    ErrorCode.SENDER_MISMATCH: 403,
    ErrorCode.UNAVAILABLE: 503,
}

Outcome = Message | ErrorDetail


class HttpSender:
    """Pending HTTP sends of this node, answered from the node subject or the room subject."""

    def __init__(self, hub: Hub, wait_seconds: float) -> None:
        self.hub = hub
        self.wait = wait_seconds
        self.waiters: dict[str, asyncio.Future[Outcome]] = {}
        hub.node_listeners.append(self._on_node_msg)

    def _on_node_msg(self, data: bytes) -> None:
        if not self.waiters:
            return
        try:
            raw = orjson.loads(data)
            origin = raw.get("origin") or {}
            future = self.waiters.get(str(origin.get("conn") or ""))
            if future is None or future.done():
                return
            if raw.get("event") == "CommandRejected":
                future.set_result(CommandRejected.model_validate(raw).error)
            elif raw.get("event") == "MessageCreated":
                future.set_result(MessageCreated.model_validate(raw).message)
        except (orjson.JSONDecodeError, AttributeError, ValidationError) as exc:
            log.warning("bad node message for an HTTP send: %s", exc)

    async def _check_member(self, user_id: str, room_id: str) -> None:
        if room_id in self.hub.user_rooms.get(user_id, ()):
            return
        # not cached for users without a connection here: ask rooms (no cache entry is made)
        if room_id in await self.hub.bus.user_rooms(user_id):
            return
        reply = await self.hub.bus.get_room(room_id)
        if reply.room is None:
            raise ChatError(ErrorCode.UNKNOWN_ROOM, "no such room", 404)
        raise ChatError(ErrorCode.NOT_PARTICIPANT, "you are not a participant of this room", 403)

    async def send(self, user_id: str, room_id: str, body: SendMessageRequest) -> Message | None:
        """The stored message, or None if it was queued but not stored within the wait."""
        if body.roomId is not None and body.roomId != room_id:
            # the WS action's shape sent to another room's URL: refused, never stored elsewhere
            raise ChatError(ErrorCode.INVALID_ROOM_ID, "roomId must be the room of the path")
        if body.senderId is not None and body.senderId != user_id:
            raise ChatError(ErrorCode.SENDER_MISMATCH, "senderId must be the caller", 403)
        try:
            check_not_in_future(body.createdAt)
        except ValueError as exc:
            raise ChatError(ErrorCode.INVALID_CREATED_AT, str(exc)) from None
        await self._check_member(user_id, room_id)
        key = "h" + secrets.token_hex(8)
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self.waiters[key] = future

        async def on_room_msg(msg: Msg) -> None:
            try:
                event = MessageCreated.model_validate_json(msg.data)
            except ValidationError:
                return
            if event.message.messageId == body.messageId and not future.done():
                future.set_result(event.message)

        sub = await self.hub.bus.subscribe(subjects.message_created(room_id), on_room_msg)
        try:
            await self.hub.bus.send_message(
                CreateMessageCommand(
                    userId=user_id,
                    roomId=room_id,
                    messageId=body.messageId,
                    content=body.content,
                    createdAt=body.createdAt,
                    origin=Origin(node=self.hub.node, conn=key),
                )
            )
            try:
                outcome = await asyncio.wait_for(asyncio.shield(future), self.wait)
            except TimeoutError:
                return None
        finally:
            self.waiters.pop(key, None)
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        if isinstance(outcome, ErrorDetail):
            try:
                code = ErrorCode(outcome.code)
            except ValueError:
                code = ErrorCode.VALIDATION_ERROR
            raise ChatError(code, outcome.message, STATUS_OF.get(code, 400))
        return outcome
