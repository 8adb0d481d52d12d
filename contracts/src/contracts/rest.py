"""REST bodies (users, rooms, history) exactly as the seed and CONTRACT.md section 3 show them."""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field

from contracts.common import (
    AvatarUrl,
    Identifier,
    MessageContent,
    ParticipantList,
    PositiveSeq,
    Timestamp,
    UserName,
    WireModel,
)


class CreateUserRequest(WireModel):
    """`POST /users` body."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"name": "Alice", "avatar": "https://example.com/avatar/alice.png"}]
        }
    )

    name: UserName
    avatar: AvatarUrl | None = None


class User(WireModel):
    """The seed's user; `avatar` is absent from answers when not set."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "user_123",
                    "name": "Alice",
                    "avatar": "https://example.com/avatar/alice.png",
                }
            ]
        }
    )

    id: str
    name: str
    avatar: str | None = None


class UserWithToken(User):
    """`POST /users` answer: the user plus a bearer token."""

    token: str


class TokenResponse(WireModel):
    """`POST /token` answer."""

    token: str
    expiresAt: str | None = None


class RoomParticipant(WireModel):
    """A participant as rooms show them: id and name."""

    id: str
    name: str


class Room(WireModel):
    """The seed's room."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "room_456",
                    "participants": [
                        {"id": "user_123", "name": "Alice"},
                        {"id": "user_456", "name": "Bob"},
                    ],
                    "createdAt": "2024-06-16T12:36:00.000Z",
                }
            ]
        }
    )

    id: str
    participants: list[RoomParticipant]
    createdAt: str


class CreateRoomRequest(WireModel):
    """`POST /rooms` body (the same as the WS `create_room` action without `action`)."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"participants": ["user_456"]}]})

    participants: ParticipantList


class Message(WireModel):
    """The seed's message plus the server-assigned per-room `seq`."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "roomId": "room_456",
                    "messageId": "msg_001",
                    "content": "Hello!",
                    "senderId": "user_123",
                    "createdAt": "2024-06-16T12:34:56.789Z",
                    "status": "success",
                    "seq": 1,
                }
            ]
        }
    )

    roomId: str
    messageId: str
    content: str
    senderId: str
    createdAt: str
    status: Literal["success"] = "success"
    seq: PositiveSeq


class SendMessageRequest(WireModel):
    """`POST /rooms/{room_id}/messages` body: the WS `create_message` fields over HTTP."""

    messageId: Identifier
    content: MessageContent
    createdAt: Timestamp
    senderId: Identifier | None = Field(default=None, description="if given, must be the caller")
    roomId: str | None = Field(
        default=None, max_length=128, description="if given, must be the room of the path"
    )


class MessageQueued(WireModel):
    """`POST /rooms/{room_id}/messages` 202: durably queued, not stored within the wait (it will
    be; the same messageId sent again answers the stored message)."""

    roomId: str
    messageId: str


class PresenceEntry(WireModel):
    """One user's presence in `GET /presence` (ws-edge): the `presence` frame without `type`."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"userId": "user_123", "online": True}]}
    )

    userId: str
    online: bool


class ClientConfig(WireModel):
    """`GET /config` (ws-edge): what the web client needs to know about the deployment."""

    usersUrl: str = Field(description="public base URL of users (sign-up, tokens, people)")
    roomsUrl: str = Field(description="public base URL of rooms")
    historyUrl: str = Field(description="public base URL of history (message pages)")
    node: str = Field(description="this edge node's id")
    requestTimeoutMs: int = Field(description="how long the page waits for an answer")
