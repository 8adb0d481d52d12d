"""HTTP routes: decode the contract model, call a handler, encode the answer."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response

from contracts.errors import ErrorBody
from contracts.rest import CreateUserRequest, TokenResponse, User, UserWithToken
from infra.auth import TokenService
from infra.http import ERROR_RESPONSES, CurrentClaims, CurrentUserId, link_header, require_json
from users_service import handlers
from users_service.adapters.publisher import EventPublisher
from users_service.adapters.store import UserStore
from users_service.domain import DEFAULT_LIMIT, MAX_CURSOR_LENGTH

# The seed's examples, as answered (POST /users adds the token).
SEED_USERS = [
    {"id": "user_123", "name": "Alice", "avatar": "https://example.com/avatar/alice.png"},
    {"id": "user_456", "name": "Bob", "avatar": "https://example.com/avatar/bob.png"},
]
SEED_CREATED = {**SEED_USERS[0], "token": "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.e30.sig"}
UNAUTHENTICATED_ERRORS = {k: v for k, v in ERROR_RESPONSES.items() if k != 401}

NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "No user with that id"}
}


async def get_store(request: Request) -> UserStore:
    store: UserStore = request.app.state.store
    return store


async def get_publisher(request: Request) -> EventPublisher:
    publisher: EventPublisher = request.app.state.publisher
    return publisher


async def get_tokens(request: Request) -> TokenService:
    tokens: TokenService = request.app.state.tokens
    return tokens


async def get_id_generator(request: Request) -> Callable[[], str]:
    new_id: Callable[[], str] = request.app.state.new_id
    return new_id


async def get_failure_hook(request: Request) -> Callable[[str], None] | None:
    """Where a failed UserCreated publish is reported (the app's EventRecovery), if running."""
    recovery = getattr(request.app.state, "recovery", None)
    if recovery is None:
        return None
    hook: Callable[[str], None] = recovery.note_failure
    return hook


Store = Annotated[UserStore, Depends(get_store)]
Publisher = Annotated[EventPublisher, Depends(get_publisher)]
Tokens = Annotated[TokenService, Depends(get_tokens)]
IdGenerator = Annotated[Callable[[], str], Depends(get_id_generator)]
FailureHook = Annotated[Callable[[str], None] | None, Depends(get_failure_hook)]


router = APIRouter(tags=["users"], strict_content_type=False)


@router.post(
    "/users",
    status_code=201,
    response_model=UserWithToken,
    response_model_exclude_none=True,
    summary="Create a user (the only unauthenticated call); answers it with a bearer token",
    responses={
        **UNAUTHENTICATED_ERRORS,
        201: {"content": {"application/json": {"example": SEED_CREATED}}},
    },
    dependencies=[Depends(require_json)],
)
async def create_user(
    body: CreateUserRequest,
    store: Store,
    publisher: Publisher,
    tokens: Tokens,
    new_id: IdGenerator,
    on_publish_failure: FailureHook,
) -> UserWithToken:
    return await handlers.create_user(
        body,
        store=store,
        publisher=publisher,
        tokens=tokens,
        new_id=new_id,
        on_publish_failure=on_publish_failure,
    )


@router.get(
    "/users",
    response_model=list[User],
    response_model_exclude_none=True,
    summary="Users the caller can create a room with (everyone but the caller), creation order",
    description="Paged: `limit` (1-200, default 50); when more users exist, the `Link` header "
    'holds `<url>; rel="next"` with an opaque `cursor` and the same `limit`.',
    responses={
        **ERROR_RESPONSES,
        200: {
            "headers": {"Link": {"description": 'next page: `<url>; rel="next"`'}},
            "content": {"application/json": {"example": SEED_USERS}},
        },
    },
)
async def list_users(
    request: Request,
    response: Response,
    store: Store,
    caller: CurrentUserId,
    limit: Annotated[int, Query(ge=1, le=200, description="page size")] = DEFAULT_LIMIT,
    cursor: Annotated[
        str | None,
        Query(max_length=MAX_CURSOR_LENGTH, description="opaque, from the previous Link"),
    ] = None,
) -> list[User]:
    page = await handlers.list_users(store, caller, limit, cursor)
    if page.next_cursor is not None:
        next_url = request.url.replace_query_params(limit=limit, cursor=page.next_cursor)
        response.headers["Link"] = link_header(str(next_url))
    return page.users


@router.get(
    "/users/{user_id}",
    response_model=User,
    response_model_exclude_none=True,
    summary="One user",
    responses={**ERROR_RESPONSES, **NOT_FOUND},
)
async def get_user(user_id: str, store: Store, _caller: CurrentUserId) -> User:
    return await handlers.get_user(store, user_id)


@router.post(
    "/token",
    response_model=TokenResponse,
    response_model_exclude_none=True,
    summary="A fresh token for the caller (send a valid, unexpired bearer token)",
    responses=ERROR_RESPONSES,
)
async def refresh_token(claims: CurrentClaims, tokens: Tokens) -> TokenResponse:
    return handlers.refresh_token(tokens, claims)
