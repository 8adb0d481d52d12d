"""HTTP: `GET /rooms/{room_id}/messages` (paged history for a participant)."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Request, Response
from pydantic import WithJsonSchema

from contracts.errors import ErrorBody
from contracts.rest import Message
from history_service.adapters.store import MessageStore
from history_service.domain import DEFAULT_PAGE_LIMIT, MAX_PAGE_LIMIT, MAX_SEQ, parse_page
from history_service.handlers import RoomAccess, list_messages
from infra.http import ERROR_RESPONSES, CurrentUserId, link_header

router = APIRouter(tags=["history"])

# The parameters are read as text and parsed by `parse_page`, so that every bad value is a 400
# with the contract's code; OpenAPI still says what they are.
_Limit = Annotated[
    str | None, WithJsonSchema({"type": "integer", "minimum": 1, "maximum": MAX_PAGE_LIMIT})
]
_Cursor = Annotated[
    str | None, WithJsonSchema({"type": "integer", "minimum": 0, "maximum": MAX_SEQ})
]


def _store(request: Request) -> MessageStore:
    store: MessageStore = request.app.state.store
    return store


def _rooms(request: Request) -> RoomAccess:
    rooms: RoomAccess = request.app.state.rooms
    return rooms


@router.get(
    "/rooms/{room_id}/messages",
    summary="A page of a room's messages, oldest first",
    response_model=list[Message],
    responses={
        **ERROR_RESPONSES,
        403: {"model": ErrorBody, "description": "not a participant (`not_participant`)"},
        404: {"model": ErrorBody, "description": "unknown room (`unknown_room`)"},
        200: {
            "description": 'Messages oldest first. `Link: <url>; rel="next"` when more lie '
            "beyond the page in the same direction (older, or newer with `after`).",
            "headers": {"Link": {"description": 'next page: `<url>; rel="next"`'}},
        },
        503: {"model": ErrorBody, "description": "the store or rooms did not answer; retry"},
    },
)
async def get_messages(
    room_id: str,
    request: Request,
    response: Response,
    user_id: CurrentUserId,
    limit: Annotated[_Limit, Query(description=f"page size, default {DEFAULT_PAGE_LIMIT}")] = None,
    before: Annotated[_Cursor, Query(description="seq: the page just older")] = None,
    after: Annotated[
        _Cursor, Query(description="seq: the page just newer (not with before)")
    ] = None,
) -> list[Message]:
    page_request = parse_page(limit, before, after)
    page = await list_messages(_store(request), _rooms(request), user_id, room_id, page_request)
    if page.next_cursor is not None:
        name, seq = page.next_cursor
        query = urlencode({name: seq, "limit": page_request.limit})
        response.headers["Link"] = link_header(str(request.url.replace(query=query)))
    return page.messages
