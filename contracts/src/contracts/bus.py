"""Bus events, commands and queries between services (NATS), each with a schema version.

Subjects, streams and consumers are named in `contracts.subjects`.
"""

from __future__ import annotations

from typing import Final, Literal

from pydantic import Field

from contracts.common import Identifier, WireModel
from contracts.errors import ErrorDetail
from contracts.rest import Message, Room, User

SCHEMA_VERSION: Final = 1


class Origin(WireModel):
    """Where a command came from, so an answer or rejection can reach that one connection."""

    node: str | None = None
    conn: str | None = None
    requestId: str | None = None


class Envelope(WireModel):
    """Fields every bus payload carries."""

    schemaVersion: Literal[1] = SCHEMA_VERSION
    correlationId: str | None = None


# --- events (past tense; published after the owner's durable write) ------------------------------


class UserCreated(Envelope):
    """A user was stored by the users service."""

    event: Literal["UserCreated"] = "UserCreated"
    user: User


class RoomCreated(Envelope):
    """A room and its memberships were stored by the rooms service."""

    event: Literal["RoomCreated"] = "RoomCreated"
    room: Room
    creatorId: str
    origin: Origin | None = None


class MessageCreated(Envelope):
    """A message was durably stored by history with its per-room `seq`.

    Published on `chat.evt.message_created.<roomId>` (every time a command for it is applied,
    also a retry: edges drop seqs they already delivered), and, when the command was a retry
    of an already stored messageId, also on the origin node's subject so that the retrying
    connection gets its answer.
    """

    event: Literal["MessageCreated"] = "MessageCreated"
    message: Message
    origin: Origin | None = None


# --- commands (imperative) ---------------------------------------------------------------------


class CreateRoomCommand(Envelope):
    """Request/reply to rooms: create a room for `userId` (the token's subject)."""

    command: Literal["CreateRoom"] = "CreateRoom"
    userId: str
    participants: list[str] = Field(max_length=1000)
    origin: Origin | None = None
    # The client's key for this creation (HTTP `Idempotency-Key`, WS `idempotencyKey`): the same
    # caller and key give the same room again instead of a second one.
    idempotencyKey: Identifier | None = None


class CreateRoomReply(Envelope):
    """Answer to `CreateRoomCommand`: the room or an error."""

    room: Room | None = None
    error: ErrorDetail | None = None


class CreateMessageCommand(Envelope):
    """Durable (JetStream) command to history: store this message once and announce it."""

    command: Literal["CreateMessage"] = "CreateMessage"
    userId: str
    roomId: str
    messageId: str
    content: str
    createdAt: str
    origin: Origin | None = None


class CommandRejected(Envelope):
    """Sent to the origin node's subject when a command cannot be applied."""

    event: Literal["CommandRejected"] = "CommandRejected"
    origin: Origin
    error: ErrorDetail
    roomId: str | None = None
    messageId: str | None = None


# --- queries (request/reply, read-after-write for lagging read models) ---------------------------


class GetUserQuery(Envelope):
    """Ask users for some users by id (rooms uses it on a miss of its read model)."""

    userIds: list[str] = Field(max_length=1000)


class GetUserReply(Envelope):
    users: list[User]


class GetRoomQuery(Envelope):
    """Ask rooms for a room (history and the edge use it on a miss)."""

    roomId: str


class GetRoomReply(Envelope):
    room: Room | None = None


class UserRoomsQuery(Envelope):
    """Ask rooms for the ids of every room a user is in."""

    userId: str


class UserRoomsReply(Envelope):
    roomIds: list[str]


class HistoryRangeQuery(Envelope):
    """Ask history for the messages of some rooms after a seq (sync and gap fill).

    `rooms` maps a room id to the last seq already seen (messages with a higher seq are
    returned, at most `limit` per room, oldest first) or to null (only the latest seq).
    """

    rooms: dict[str, int | None]
    limit: int = Field(default=500, ge=0, le=500)
    upTo: dict[str, int] | None = None


class RoomRange(WireModel):
    messages: list[Message]
    latest: int
    truncated: bool = False


class HistoryRangeReply(Envelope):
    rooms: dict[str, RoomRange]
    error: ErrorDetail | None = None


class DeliverToUsers(Envelope):
    """Sent on a node's subject: push `frame` to these users' local connections."""

    event: Literal["DeliverToUsers"] = "DeliverToUsers"
    userIds: list[str]
    frame: dict[str, object]
    subscribeRoom: str | None = None
    origin: Origin | None = None


class PresenceChanged(Envelope):
    """A user came online (first connection anywhere) or went offline (none for a while).

    Core NATS on `chat.presence.changed`; `roomIds` are the user's rooms, so that each edge node
    finds the local connections that share one without asking anyone.
    """

    event: Literal["PresenceChanged"] = "PresenceChanged"
    userId: str
    online: bool
    roomIds: list[str] = Field(default_factory=list)
