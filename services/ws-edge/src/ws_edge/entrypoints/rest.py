"""HTTP calls of the edge for clients without WebSocket: send a message, ask who is online."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

from contracts.errors import ChatError, ErrorBody, ErrorCode
from contracts.rest import Message, MessageQueued, PresenceEntry, SendMessageRequest
from infra.http import ERROR_RESPONSES, CurrentUserId
from ws_edge.domain.limits import RecentBuckets
from ws_edge.http_send import HttpSender
from ws_edge.presence import Presence

router = APIRouter(tags=["http variant"], strict_content_type=False)

MAX_PRESENCE_USERS = 200


@router.post(
    "/rooms/{room_id}/messages",
    status_code=201,
    response_model=Message,
    summary="Send a message (the WS `create_message` over HTTP)",
    description=(
        "Body: `messageId` (client-generated, the idempotency key), `content`, `createdAt`, "
        "optional `senderId` (must be the caller) and `roomId` (must be the path's room, "
        "else 400 `invalid_room_id`). Same checks and effect as the WS action: "
        "every online participant receives `message_created`. Answers **201** with the stored "
        "message (with `seq`) once history has stored it; **202** `{roomId, messageId}` when it "
        "is durably queued but not stored within 5 s (it will be: watch the stream, or repeat "
        "the call with the same messageId, which never creates a second message). 409 "
        "`conflict`: that messageId holds other content or another sender's message."
    ),
    responses={
        **ERROR_RESPONSES,
        202: {"model": MessageQueued, "description": "queued, not yet stored"},
        403: {"model": ErrorBody, "description": "`not_participant` or `sender_mismatch`"},
        404: {"model": ErrorBody, "description": "`unknown_room`"},
        409: {"model": ErrorBody, "description": "`conflict`"},
        429: {"model": ErrorBody, "description": "`rate_limited` (the per-user token bucket)"},
        503: {"model": ErrorBody, "description": "a service did not answer; retry"},
    },
)
async def send_message(
    room_id: str, body: SendMessageRequest, request: Request, user_id: CurrentUserId
) -> Message | JSONResponse:
    sender: HttpSender = request.app.state.http_sender
    buckets: RecentBuckets = request.app.state.http_buckets
    if not buckets.take(user_id, time.monotonic()):
        raise ChatError(ErrorCode.RATE_LIMITED, "too many messages; slow down", 429)
    try:
        stored = await sender.send(user_id, room_id, body)
    except TimeoutError:
        raise ChatError(
            ErrorCode.UNAVAILABLE, "a service did not answer in time; retry", 503
        ) from None
    if stored is None:
        queued = MessageQueued(roomId=room_id, messageId=body.messageId)
        return JSONResponse(queued.model_dump(), status_code=202)
    return stored


@router.get(
    "/presence",
    response_model=list[PresenceEntry],
    summary="Who is online, for a set of users",
    description=(
        "`?users=<id>,<id>,...` (1-200 ids, also as repeated `users=`). Answers each user's "
        "presence as announced by `presence` frames: online from their first connection on any "
        "edge node until they have had none anywhere for a few seconds."
    ),
    responses=ERROR_RESPONSES,
)
async def presence(
    request: Request,
    _user_id: CurrentUserId,
    users: Annotated[
        list[str], Query(description="user ids: repeated `users=`, or comma separated in one")
    ],
) -> list[PresenceEntry]:
    ids: list[str] = []
    for part in users:
        ids.extend(u.strip() for u in part.split(",") if u.strip())
    ids = list(dict.fromkeys(ids))
    if not 1 <= len(ids) <= MAX_PRESENCE_USERS:
        raise ChatError(
            ErrorCode.VALIDATION_ERROR, f"users: give 1 to {MAX_PRESENCE_USERS} user ids"
        )
    for user_id in ids:
        if len(user_id) > 128:
            raise ChatError(ErrorCode.VALIDATION_ERROR, "users: an id is too long")
    state: Presence = request.app.state.hub.presence
    online = await state.online(ids)
    return [PresenceEntry(userId=u, online=online[u]) for u in ids]
