"""One handler per command/query of the users service; adapters are passed in."""

from __future__ import annotations

import logging
from collections.abc import Callable

from contracts import subjects
from contracts.bus import GetUserQuery, GetUserReply, UserCreated
from contracts.common import utc_now_iso
from contracts.errors import ChatError, ErrorCode
from contracts.rest import CreateUserRequest, TokenResponse, User, UserWithToken
from infra.auth import Claims, TokenService
from users_service.adapters.publisher import EventPublisher
from users_service.adapters.store import UserAlreadyExistsError, UserStore
from users_service.domain import (
    DEFAULT_LIMIT,
    UsersPage,
    check_limit,
    decode_cursor,
    is_lookup_id,
    page_without,
)

log = logging.getLogger(__name__)

_CREATE_ATTEMPTS = 3


def user_created_msg_id(user_id: str) -> str:
    """The JetStream dedupe key of a user's UserCreated (the same on every re-publish)."""
    return f"UserCreated:{user_id}"


async def create_user(
    request: CreateUserRequest,
    *,
    store: UserStore,
    publisher: EventPublisher,
    tokens: TokenService,
    new_id: Callable[[], str],
    on_publish_failure: Callable[[str], None] | None = None,
) -> UserWithToken:
    """Store a new user (conditional put), announce UserCreated, answer the user and a token."""
    user: User | None = None
    for _ in range(_CREATE_ATTEMPTS):
        candidate = User(id=new_id(), name=request.name.strip(), avatar=request.avatar)
        try:
            await store.add(candidate, utc_now_iso())
        except UserAlreadyExistsError:
            log.warning("generated user id %s already taken, trying another", candidate.id)
            continue
        user = candidate
        break
    if user is None:
        raise ChatError(ErrorCode.CONFLICT, "could not allocate a user id, retry", 409)

    # The write above is the truth; the event only feeds the rooms service's read model. If the
    # bus does not acknowledge it we still answer 201: rooms asks us (GET_USERS) on a miss of
    # its read model, so the new user is usable at once either way (read-after-write holds).
    # Failing the request instead would leave a stored user the client never heard of.
    # The event is not lost either: `on_publish_failure` has it re-published from the store
    # (`republish_since`), and every start re-publishes the users of the last minutes, which
    # covers a crash between the write and the publish (same Nats-Msg-Id; consumers are
    # idempotent).
    try:
        await publish_user_created(publisher, user)
    except Exception:
        log.exception("UserCreated for %s not published (rooms will ask on a miss)", user.id)
        if on_publish_failure is not None:
            on_publish_failure(user.id)

    token, _claims = tokens.issue(user.id)
    return UserWithToken(id=user.id, name=user.name, avatar=user.avatar, token=token)


async def publish_user_created(publisher: EventPublisher, user: User) -> None:
    """Announce a stored user (the same dedupe id every time, so re-publishing is harmless)."""
    msg_id = user_created_msg_id(user.id)
    event = UserCreated(user=user, correlationId=msg_id)
    await publisher.publish(subjects.USER_CREATED, event, msg_id)


async def republish_since(
    store: UserStore, publisher: EventPublisher, floor: str, max_users: int | None = None
) -> int:
    """Re-publish UserCreated for every stored user with an id above `floor` (oldest first).

    Returns how many were published; raises on the first failure (the caller retries later).
    """
    count = 0
    after = floor
    while max_users is None or count < max_users:
        batch = 100 if max_users is None else min(100, max_users - count)
        users = await store.list_after(after, batch)
        for user in users:
            await publish_user_created(publisher, user)
            count += 1
        if len(users) < batch:
            break
        after = users[-1].id
    return count


async def list_users(
    store: UserStore,
    caller_id: str,
    limit: int = DEFAULT_LIMIT,
    cursor: str | None = None,
) -> UsersPage:
    """A page of users in creation order, without the caller, and the next page's cursor."""
    check_limit(limit)
    after = decode_cursor(cursor) if cursor is not None else None
    # One more than the page shows whether a next page exists; one more again covers the
    # caller, who may be among them and is dropped.
    candidates = await store.list_after(after, limit + 2)
    return page_without(candidates, caller_id, limit)


async def get_user(store: UserStore, user_id: str) -> User:
    """The user with that id, else ChatError not_found (404)."""
    user = await store.get(user_id) if is_lookup_id(user_id) else None
    if user is None:
        raise ChatError(ErrorCode.NOT_FOUND, "no such user", 404)
    return user


def refresh_token(tokens: TokenService, claims: Claims) -> TokenResponse:
    """A fresh token for the subject of a valid token."""
    token, fresh = tokens.issue(claims.user_id)
    return TokenResponse(token=token, expiresAt=fresh.expires_at_iso)


async def get_users(store: UserStore, query: GetUserQuery) -> GetUserReply:
    """The users among the asked ids that exist (bus query; unknown ids are simply absent)."""
    ids = [uid for uid in dict.fromkeys(query.userIds) if is_lookup_id(uid)]
    users = await store.get_many(ids) if ids else []
    order = {uid: i for i, uid in enumerate(ids)}
    users.sort(key=lambda u: order.get(u.id, len(order)))
    return GetUserReply(users=users, correlationId=query.correlationId)
