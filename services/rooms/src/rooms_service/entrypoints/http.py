"""HTTP: `POST /rooms` and `GET /rooms` (bearer token; its subject is the caller)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Request, status

from contracts.bus import CreateRoomCommand
from contracts.common import Identifier
from contracts.errors import ErrorBody
from contracts.rest import CreateRoomRequest, Room
from infra.http import ERROR_RESPONSES, CurrentUserId, require_json
from rooms_service import handlers


async def get_deps(request: Request) -> handlers.Deps:
    deps: handlers.Deps = request.app.state.deps
    return deps


DepsDep = Annotated[handlers.Deps, Depends(get_deps)]

_UNAVAILABLE: dict[int | str, dict[str, Any]] = {
    503: {"model": ErrorBody, "description": "users service, store or bus unreachable; retry"}
}

SEED_ROOM = {
    "id": "room_456",
    "participants": [{"id": "user_123", "name": "Alice"}, {"id": "user_456", "name": "Bob"}],
    "createdAt": "2024-06-16T12:36:00.000Z",
}


router = APIRouter(prefix="/rooms", tags=["rooms"], strict_content_type=False)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    summary="Create a room",
    description=(
        "Creates a room with the given participants plus the caller (duplicates dropped, at "
        "most 100 in all). Every participant must be an existing user (`unknown_user` names "
        "the others, and no room is created). Same effect as the WS `create_room` action: "
        "`RoomCreated` is published and every online participant receives `room_created`. "
        "With an `Idempotency-Key`, sending the same request again (say after a timeout) "
        "answers the room the first one created instead of creating another; the same key "
        "with other participants is a 409 `conflict`. By default a user creates at most 30 "
        "rooms at once, then one every 2 s (`CHAT_ROOM_CREATE_BURST`, "
        "`CHAT_ROOM_CREATE_PER_SECOND`): beyond that, 429 `rate_limited`. A user is in at "
        "most 1,000 rooms (`CHAT_MAX_ROOMS_PER_USER`): a room with a participant already in "
        "that many is refused with 409 `too_many_rooms`, naming them."
    ),
    responses={
        **ERROR_RESPONSES,
        **_UNAVAILABLE,
        409: {
            "model": ErrorBody,
            "description": "Idempotency-Key already used for other participants (`conflict`), "
            "or a participant is already in the most rooms a user can be in (`too_many_rooms`)",
        },
        429: {"model": ErrorBody, "description": "too many rooms created; slow down"},
        201: {"content": {"application/json": {"example": SEED_ROOM}}},
    },
    dependencies=[Depends(require_json)],
)
async def create_room(
    body: CreateRoomRequest,
    user_id: CurrentUserId,
    deps: DepsDep,
    idempotency_key: Annotated[
        Identifier | None,
        Header(
            alias="Idempotency-Key",
            description="The client's key for this creation (1-128 characters from letters, "
            "digits and _-.:, e.g. a UUID), kept per caller",
        ),
    ] = None,
) -> Room:
    command = CreateRoomCommand(
        userId=user_id, participants=list(body.participants), idempotencyKey=idempotency_key
    )
    return await handlers.create_room(deps, command)


@router.get(
    "",
    summary="The caller's rooms",
    description="Every room the caller is a participant of, newest first (by `createdAt`).",
    responses={
        401: ERROR_RESPONSES[401],
        **_UNAVAILABLE,
        200: {"content": {"application/json": {"example": [SEED_ROOM]}}},
    },
)
async def list_rooms(user_id: CurrentUserId, deps: DepsDep) -> list[Room]:
    return await handlers.list_rooms(deps, user_id)
