"""WebSocket frames: client actions (discriminated on `action`), server frames (on `type`)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import ConfigDict, Field, TypeAdapter

from contracts.common import (
    Identifier,
    MessageContent,
    ParticipantList,
    RequestId,
    Seq,
    Timestamp,
    WireModel,
)
from contracts.errors import ErrorDetail
from contracts.rest import Message, Room

# --- client -> server -------------------------------------------------------------------------


class CreateRoomAction(WireModel):
    """`{"action":"create_room","participants":[...]}`."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"action": "create_room", "participants": ["user_123", "user_456"]}]
        }
    )

    action: Literal["create_room"]
    participants: ParticipantList
    requestId: RequestId | None = None
    # Optional: sending the same key again (say after a reconnect) gives the room it created
    # instead of a second room; the same key with other participants is a `conflict`.
    idempotencyKey: Identifier | None = None


class CreateMessageAction(WireModel):
    """`{"action":"create_message","roomId","messageId","content","senderId","createdAt"}`."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "action": "create_message",
                    "roomId": "room_456",
                    "messageId": "msg_003",
                    "content": "How are you?",
                    "senderId": "user_123",
                    "createdAt": "2024-06-16T12:36:10.000Z",
                }
            ]
        }
    )

    action: Literal["create_message"]
    roomId: Identifier
    messageId: Identifier
    content: MessageContent
    senderId: Identifier
    createdAt: Timestamp
    requestId: RequestId | None = None


MAX_SYNC_ROOMS = 1000


class SyncAction(WireModel):
    """`{"action":"sync","rooms":{"<roomId>": <last seq seen>}}`."""

    action: Literal["sync"]
    rooms: Annotated[
        dict[Identifier, Seq],
        # a key outside the id rule is refused, as the schema's patternProperties alone
        # would not say
        Field(max_length=MAX_SYNC_ROOMS, json_schema_extra={"additionalProperties": False}),
    ]
    requestId: RequestId | None = None


class RefreshAction(WireModel):
    """`{"action":"refresh","token":"..."}`: replace the connection's token before it expires."""

    action: Literal["refresh"]
    token: Annotated[str, Field(min_length=1, max_length=4096)]
    requestId: RequestId | None = None


ClientAction = Annotated[
    CreateRoomAction | CreateMessageAction | SyncAction | RefreshAction,
    Field(discriminator="action"),
]
CLIENT_ACTIONS: TypeAdapter[ClientAction] = TypeAdapter(ClientAction)
ACTION_NAMES = ("create_room", "create_message", "sync", "refresh")

# --- server -> client -------------------------------------------------------------------------


class RoomCreatedFrame(WireModel):
    """`{"type":"room_created","room":{...}}`."""

    type: Literal["room_created"] = "room_created"
    room: Room
    requestId: str | None = None


class MessageCreatedFrame(WireModel):
    """`{"type":"message_created","message":{...}}`."""

    type: Literal["message_created"] = "message_created"
    message: Message
    requestId: str | None = None


class SyncedFrame(WireModel):
    """`{"type":"synced","rooms":{"<roomId>": <latest seq>}, "truncated"?: [...]}`."""

    type: Literal["synced"] = "synced"
    rooms: dict[str, int]
    truncated: list[str] | None = None
    requestId: str | None = None


class RefreshedFrame(WireModel):
    """`{"type":"refreshed","expiresAt":"..."}`."""

    type: Literal["refreshed"] = "refreshed"
    expiresAt: str
    requestId: str | None = None


class ErrorFrame(WireModel):
    """`{"type":"error","error":{"code","message"},"requestId"?,"messageId"?}`."""

    type: Literal["error"] = "error"
    error: ErrorDetail
    requestId: str | None = None
    messageId: str | None = None
    roomId: str | None = None


class PresenceFrame(WireModel):
    """`{"type":"presence","userId","online"}`: someone who shares a room came or went."""

    type: Literal["presence"] = "presence"
    userId: str
    online: bool


ServerFrame = Annotated[
    RoomCreatedFrame
    | MessageCreatedFrame
    | SyncedFrame
    | RefreshedFrame
    | ErrorFrame
    | PresenceFrame,
    Field(discriminator="type"),
]
SERVER_FRAMES: TypeAdapter[ServerFrame] = TypeAdapter(ServerFrame)


class CloseCode:
    """Server-initiated WebSocket close codes (documented in README / AsyncAPI)."""

    GOING_AWAY = 1001  # the node is shutting down: reconnect elsewhere and `sync`
    INVALID_UTF8 = 1007
    TOO_BIG = 1009
    TOKEN_INVALID = 4401  # token invalid or expired
    TOO_SLOW = 4408  # send queue stayed full
    ABUSIVE = 4429  # too many refused frames
