"""The AsyncAPI 3.0 document of the mesh, generated from this package (never written by hand).

    python -m contracts.asyncapi > docs/asyncapi.json      (or `make asyncapi`)

Schemas are the pydantic models' JSON schemas (validation mode), channel addresses come from
`contracts.subjects`, so the document changes exactly when the code does;
tests/ops/test_asyncapi.py regenerates it and fails when the committed file differs.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from contracts import bus, subjects, ws
from contracts.common import REQUEST_ID_MAX

Action = Literal["send", "receive"]
REF = "#/components/schemas/{model}"


@dataclass(frozen=True)
class Op:
    """One side of a channel: who sends or receives what (and the reply, for request/reply)."""

    action: Action
    who: str
    summary: str
    messages: tuple[type[BaseModel], ...] = ()  # default: every message of the channel
    reply: type[BaseModel] | None = None
    bindings: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Channel:
    name: str
    address: str
    description: str
    messages: tuple[type[BaseModel], ...]
    ops: tuple[Op, ...]
    parameters: dict[str, str] = field(default_factory=dict)
    servers: tuple[str, ...] = ("nats",)


def _param(prefix: str, name: str) -> str:
    return f"{prefix}.{{{name}}}"


def _queue(group: str) -> dict[str, Any]:
    return {"nats": {"queue": group, "bindingVersion": "0.1.0"}}


CLIENT_ACTIONS: tuple[type[BaseModel], ...] = tuple(
    get_args(get_args(ws.ClientAction)[0])  # Annotated[Union[...], Field] -> the union's members
)
SERVER_FRAMES: tuple[type[BaseModel], ...] = tuple(get_args(get_args(ws.ServerFrame)[0]))

CHANNELS: tuple[Channel, ...] = (
    Channel(
        "createRoom",
        subjects.CREATE_ROOM,
        "Command (core NATS request/reply, queue group `rooms`): create a room for the token's "
        "user. The reply carries the room or an error.",
        (bus.CreateRoomCommand, bus.CreateRoomReply),
        (
            Op("send", "ws-edge", "Ask rooms to create a room", (bus.CreateRoomCommand,)),
            Op(
                "receive",
                "rooms",
                "Create the room, store memberships, publish RoomCreated",
                (bus.CreateRoomCommand,),
                reply=bus.CreateRoomReply,
                bindings=_queue(subjects.Q_ROOMS),
            ),
        ),
    ),
    Channel(
        "createMessage",
        _param(subjects.CREATE_MESSAGE_PREFIX, "roomId"),
        f"Durable command in JetStream stream `{subjects.COMMANDS_STREAM}` (work queue), "
        f"consumed by the durable pull consumer `{subjects.HISTORY_COMMANDS_CONSUMER}`; "
        "`Nats-Msg-Id` de-duplicates retries, the store's conditional write decides.",
        (bus.CreateMessageCommand,),
        (
            Op("send", "ws-edge", "Hand a message to history (JetStream publish, acked)"),
            Op("receive", "history", "Store once with the next per-room seq, announce it"),
        ),
        {"roomId": "Room id"},
    ),
    Channel(
        "userCreated",
        subjects.USER_CREATED,
        f"Event, captured by stream `{subjects.EVENTS_STREAM}`; rooms keeps its read model of "
        f"users with the durable consumer `{subjects.ROOMS_USERS_CONSUMER}`.",
        (bus.UserCreated,),
        (
            Op("send", "users", "A user was stored"),
            Op("receive", "rooms", "Update the users read model"),
        ),
    ),
    Channel(
        "roomCreated",
        subjects.ROOM_CREATED,
        f"Event, captured by stream `{subjects.EVENTS_STREAM}`; history keeps room participants "
        f"(durable `{subjects.HISTORY_ROOMS_CONSUMER}`), the edges route `room_created` frames "
        f"(durable `{subjects.EDGE_ROOM_ROUTER_CONSUMER}`, one edge per event).",
        (bus.RoomCreated,),
        (
            Op("send", "rooms", "A room and its memberships were stored"),
            Op("receive", "history", "Update the participants read model"),
            Op("receive", "ws-edge", "Route room_created to the nodes holding a participant"),
        ),
    ),
    Channel(
        "messageCreated",
        _param(subjects.MESSAGE_CREATED_PREFIX, "roomId"),
        "Event on core NATS (not captured by a stream: the store is the record), published "
        "after the durable store write. An edge node subscribes to a room's subject only "
        "while it holds a connection of one of its participants.",
        (bus.MessageCreated,),
        (
            Op("send", "history", "A message was stored with its seq"),
            Op("receive", "ws-edge", "Push message_created to local participants"),
        ),
        {"roomId": "Room id"},
    ),
    Channel(
        "presenceChanged",
        subjects.PRESENCE_CHANGED,
        "Core NATS (not captured): a user came online or went offline; every edge node "
        "pushes `presence` frames to its local connections sharing a room with them.",
        (bus.PresenceChanged,),
        (
            Op("send", "ws-edge", "Announce a user's presence change"),
            Op("receive", "ws-edge", "Push presence frames"),
        ),
    ),
    Channel(
        "edgeNode",
        _param(subjects.NODE_PREFIX, "nodeId"),
        "Core NATS, one subject per edge node: command rejections and answers for that node's "
        "connections, user-targeted frames routed with the Redis connection map.",
        (bus.CommandRejected, bus.MessageCreated, bus.DeliverToUsers),
        (
            Op("send", "history", "Rejections and retry answers", (bus.CommandRejected,)),
            Op("send", "rooms", "Rejections", (bus.CommandRejected,)),
            Op("send", "ws-edge", "Frames for users on that node", (bus.DeliverToUsers,)),
            Op("receive", "ws-edge", "Deliver to local connections"),
        ),
        {"nodeId": "Edge node id (CHAT_NODE_ID)"},
    ),
    Channel(
        "getUsers",
        subjects.GET_USERS,
        "Query (request/reply, queue group `users`): read-after-write for rooms' read model.",
        (bus.GetUserQuery, bus.GetUserReply),
        (
            Op("send", "rooms", "Ask for users missing from the read model", (bus.GetUserQuery,)),
            Op(
                "receive",
                "users",
                "Answer with the users found",
                (bus.GetUserQuery,),
                reply=bus.GetUserReply,
                bindings=_queue(subjects.Q_USERS),
            ),
        ),
    ),
    Channel(
        "getRoom",
        subjects.GET_ROOM,
        "Query (request/reply, queue group `rooms`): one room, for history and the edges.",
        (bus.GetRoomQuery, bus.GetRoomReply),
        (
            Op(
                "send", "history", "Ask for a room missing from the read model", (bus.GetRoomQuery,)
            ),
            Op("send", "ws-edge", "Tell unknown rooms from foreign ones", (bus.GetRoomQuery,)),
            Op(
                "receive",
                "rooms",
                "Answer with the room or null",
                (bus.GetRoomQuery,),
                reply=bus.GetRoomReply,
                bindings=_queue(subjects.Q_ROOMS),
            ),
        ),
    ),
    Channel(
        "userRooms",
        subjects.USER_ROOMS,
        "Query (request/reply, queue group `rooms`): the ids of a user's rooms.",
        (bus.UserRoomsQuery, bus.UserRoomsReply),
        (
            Op("send", "ws-edge", "Learn a connection's rooms", (bus.UserRoomsQuery,)),
            Op(
                "receive",
                "rooms",
                "Answer with the room ids",
                (bus.UserRoomsQuery,),
                reply=bus.UserRoomsReply,
                bindings=_queue(subjects.Q_ROOMS),
            ),
        ),
    ),
    Channel(
        "historyRange",
        subjects.HISTORY_RANGE,
        "Query (request/reply, queue group `history`): messages after a seq per room (sync, "
        "gap fill), at most `limit` per room.",
        (bus.HistoryRangeQuery, bus.HistoryRangeReply),
        (
            Op("send", "ws-edge", "Read a gap or a sync replay", (bus.HistoryRangeQuery,)),
            Op(
                "receive",
                "history",
                "Answer with the messages",
                (bus.HistoryRangeQuery,),
                reply=bus.HistoryRangeReply,
                bindings=_queue(subjects.Q_HISTORY),
            ),
        ),
    ),
    Channel(
        "websocket",
        "/ws",
        "The client WebSocket on every edge node: `ws://HOST:PORT/ws?token=<token>`. A bad "
        "token is refused at the handshake (HTTP 401). Client actions may carry `requestId` "
        f"(at most {REQUEST_ID_MAX} characters), echoed on that connection's answers only. "
        "Server close codes: "
        + ", ".join(
            f"{value} {name.lower().replace('_', ' ')}"
            for name, value in vars(ws.CloseCode).items()
            if isinstance(value, int)
        )
        + ".",
        CLIENT_ACTIONS + SERVER_FRAMES,
        (
            Op("send", "client", "Client actions", CLIENT_ACTIONS),
            Op("receive", "client", "Server frames", SERVER_FRAMES),
        ),
        servers=("edge",),
    ),
    Channel(
        "events",
        "/events",
        "Server-sent events on every edge node (`Accept: text/event-stream`, `?token=`): the "
        "same server frames as the WebSocket, `event:` = the frame's type, `data:` = its JSON, "
        "`id:` = a position valid on any node (resume with `Last-Event-ID`).",
        SERVER_FRAMES,
        (Op("receive", "client", "Server frames as SSE events"),),
        servers=("edgeHttp",),
    ),
)


def _operation_id(channel: Channel, op: Op) -> str:
    who = op.who.replace("-", "")
    return f"{who}{op.action.capitalize()}{channel.name[0].upper()}{channel.name[1:]}"


def build() -> dict[str, Any]:
    """The whole document as a JSON-ready dict (deterministic: same code, same bytes)."""
    models: dict[str, type[BaseModel]] = {}
    for channel in CHANNELS:
        for model in channel.messages:
            models[model.__name__] = model
    for name in dir(bus):  # every bus model is documented, also one a channel forgot
        candidate = getattr(bus, name)
        is_model = isinstance(candidate, type) and issubclass(candidate, bus.Envelope)
        if is_model and candidate is not bus.Envelope:
            models.setdefault(candidate.__name__, candidate)
    _, top = models_json_schema(
        [(models[n], "validation") for n in sorted(models)], ref_template=REF
    )
    schemas: dict[str, Any] = dict(sorted(top.get("$defs", {}).items()))

    messages: dict[str, Any] = {}
    for name in sorted(models):
        model = models[name]
        doc = (model.__doc__ or name).strip().splitlines()[0]
        messages[name] = {
            "name": name,
            "title": name,
            "summary": doc,
            "contentType": "application/json",
            "payload": {"$ref": REF.format(model=name)},
        }

    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    for channel in CHANNELS:
        entry: dict[str, Any] = {
            "address": channel.address,
            "description": channel.description,
            "servers": [{"$ref": f"#/servers/{s}"} for s in channel.servers],
            "messages": {
                m.__name__: {"$ref": f"#/components/messages/{m.__name__}"}
                for m in channel.messages
            },
        }
        if channel.parameters:
            entry["parameters"] = {
                k: {"description": v} for k, v in sorted(channel.parameters.items())
            }
        channels[channel.name] = entry
        for op in channel.ops:
            chosen = op.messages or channel.messages
            operation: dict[str, Any] = {
                "action": op.action,
                "channel": {"$ref": f"#/channels/{channel.name}"},
                "summary": f"{op.who}: {op.summary}",
                "messages": [
                    {"$ref": f"#/channels/{channel.name}/messages/{m.__name__}"} for m in chosen
                ],
            }
            if op.reply is not None:
                operation["reply"] = {
                    "channel": {"$ref": f"#/channels/{channel.name}"},
                    "messages": [
                        {"$ref": f"#/channels/{channel.name}/messages/{op.reply.__name__}"}
                    ],
                }
            if op.bindings:
                operation["bindings"] = op.bindings
            operations[_operation_id(channel, op)] = operation

    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "chat mesh: bus events, commands, queries and client frames",
            "version": str(bus.SCHEMA_VERSION),
            "description": (
                "Generated by `python -m contracts.asyncapi` from the contracts package "
                "(pydantic models and contracts.subjects). Every bus payload carries "
                "`schemaVersion` and an optional `correlationId` (the client's requestId or "
                "a generated id, logged by every service that handles it). JetStream streams: "
                f"`{subjects.COMMANDS_STREAM}` ({subjects.CREATE_MESSAGE_ALL}, work queue) and "
                f"`{subjects.EVENTS_STREAM}` ({', '.join(subjects.CAPTURED_EVENTS)})."
            ),
        },
        "defaultContentType": "application/json",
        "servers": {
            "nats": {
                "host": "127.0.0.1:4222",
                "protocol": "nats",
                "description": "NATS with JetStream (CHAT_NATS_URLS; a 3-node cluster in compose)",
            },
            "edge": {
                "host": "127.0.0.1:8080",
                "protocol": "ws",
                "description": "A ws-edge node (node b: 8081; behind the LB in compose)",
            },
            "edgeHttp": {
                "host": "127.0.0.1:8080",
                "protocol": "http",
                "description": "A ws-edge node's HTTP side (SSE)",
            },
        },
        "channels": channels,
        "operations": operations,
        "components": {
            "schemas": _require_constants(schemas | _model_schemas(models, top)),
            "messages": messages,
        },
    }


def _require_constants(schemas: dict[str, Any]) -> dict[str, Any]:
    """Mark the fields that name a payload's kind (`type`, `event`, `command`,
    `schemaVersion`: one constant each) as required. The models give them defaults so that
    code can build a frame without spelling them, which validation-mode schemas show as
    optional; every sender puts them on the wire, and readers dispatch on them."""
    for schema in schemas.values():
        properties = schema.get("properties", {})
        constants = [name for name, prop in properties.items() if "const" in prop]
        missing = [name for name in constants if name not in schema.get("required", [])]
        if missing:
            schema["required"] = [*schema.get("required", []), *missing]
    return schemas


def _model_schemas(models: dict[str, type[BaseModel]], top: dict[str, Any]) -> dict[str, Any]:
    """Every model's own schema (models_json_schema puts referenced ones in $defs only)."""
    out: dict[str, Any] = {}
    for name in sorted(models):
        if name not in top.get("$defs", {}):
            out[name] = models[name].model_json_schema(ref_template=REF)
    return out


def render() -> str:
    return json.dumps(build(), indent=2, sort_keys=False, ensure_ascii=False) + "\n"


def main() -> None:
    sys.stdout.write(render())


if __name__ == "__main__":
    main()
