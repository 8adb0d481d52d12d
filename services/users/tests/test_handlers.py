"""Handler-level unit tests of the users service with the in-memory store and publisher."""

from __future__ import annotations

import asyncio
import time

import pytest

from contracts import subjects
from contracts.bus import GetUserQuery, GetUserReply, UserCreated
from contracts.errors import ChatError, ErrorCode
from contracts.rest import CreateUserRequest, User
from infra.auth import TokenService
from users_service import handlers
from users_service.adapters.fakes import FakePublisher, FakeUserStore
from users_service.domain import UserIdGenerator, decode_cursor, id_floor_of
from users_service.entrypoints.bus import EventRecovery, answer


@pytest.fixture
def store() -> FakeUserStore:
    """An empty in-memory users table."""
    return FakeUserStore()


@pytest.fixture
def publisher() -> FakePublisher:
    """A publisher that records events."""
    return FakePublisher()


@pytest.fixture
def tokens() -> TokenService:
    """A token service with a test secret."""
    return TokenService("unit-secret-" + "y" * 40, "chat", 3600, 30)


async def _create(
    store: FakeUserStore,
    publisher: FakePublisher,
    tokens: TokenService,
    name: str = "Alice",
    avatar: str | None = None,
    new_id: UserIdGenerator | None = None,
) -> User:
    request = CreateUserRequest.model_validate({"name": name, "avatar": avatar})
    created = await handlers.create_user(
        request, store=store, publisher=publisher, tokens=tokens, new_id=new_id or UserIdGenerator()
    )
    return User(id=created.id, name=created.name, avatar=created.avatar)


async def test_create_user_stores_publishes_and_issues_a_token(
    store: FakeUserStore, publisher: FakePublisher, tokens: TokenService
) -> None:
    """A new user is stored trimmed, announced once with its dedupe id, and gets a valid token."""
    request = CreateUserRequest.model_validate(
        {"name": "  Alice  ", "avatar": "https://example.com/avatar/alice.png"}
    )
    created = await handlers.create_user(
        request, store=store, publisher=publisher, tokens=tokens, new_id=UserIdGenerator()
    )
    assert created.name == "Alice"
    assert created.avatar == "https://example.com/avatar/alice.png"
    assert store.users[created.id].name == "Alice"
    assert tokens.verify(created.token).user_id == created.id
    [sent] = publisher.published
    assert sent.subject == subjects.USER_CREATED
    assert sent.msg_id == f"UserCreated:{created.id}"
    assert isinstance(sent.event, UserCreated)
    assert sent.event.user.id == created.id
    assert sent.event.schemaVersion == 1


async def test_create_user_without_avatar_has_none(
    store: FakeUserStore, publisher: FakePublisher, tokens: TokenService
) -> None:
    """A user created without avatar has none (the HTTP layer then omits it)."""
    user = await _create(store, publisher, tokens, name="Bob")
    assert user.avatar is None
    assert "avatar" not in user.model_dump(exclude_none=True)


async def test_create_user_answers_when_the_bus_is_down(
    store: FakeUserStore, tokens: TokenService
) -> None:
    """A failed publish after the write is logged; the user is still created and answered."""
    publisher = FakePublisher(fail=True)
    user = await _create(store, publisher, tokens)
    assert user.id in store.users
    assert publisher.published == []


async def test_create_user_retries_an_id_collision(
    store: FakeUserStore, publisher: FakePublisher, tokens: TokenService
) -> None:
    """A taken id (conditional put refused) is retried with a new id."""
    ids = iter(["user_taken", "user_fresh"])
    store.users["user_taken"] = User(id="user_taken", name="Old")
    request = CreateUserRequest.model_validate({"name": "New"})
    created = await handlers.create_user(
        request, store=store, publisher=publisher, tokens=tokens, new_id=lambda: next(ids)
    )
    assert created.id == "user_fresh"
    assert store.users["user_taken"].name == "Old"


async def test_create_user_gives_up_after_repeated_collisions(
    store: FakeUserStore, publisher: FakePublisher, tokens: TokenService
) -> None:
    """An id generator that only yields taken ids ends in a conflict, nothing published."""
    store.users["user_taken"] = User(id="user_taken", name="Old")
    request = CreateUserRequest.model_validate({"name": "New"})
    with pytest.raises(ChatError) as info:
        await handlers.create_user(
            request, store=store, publisher=publisher, tokens=tokens, new_id=lambda: "user_taken"
        )
    assert info.value.code == ErrorCode.CONFLICT
    assert publisher.published == []


async def test_create_user_store_outage_propagates(
    store: FakeUserStore, publisher: FakePublisher, tokens: TokenService
) -> None:
    """When the store is down nothing is published and the error reaches the caller."""
    store.fail = True
    with pytest.raises(ConnectionError):
        await _create(store, publisher, tokens)
    assert publisher.published == []


async def _all_pages(store: FakeUserStore, caller: str, limit: int) -> list[list[str]]:
    pages: list[list[str]] = []
    cursor: str | None = None
    while True:
        page = await handlers.list_users(store, caller, limit, cursor)
        pages.append([u.id for u in page.users])
        if page.next_cursor is None:
            return pages
        assert page.users, "a page with a next link is never empty"
        assert decode_cursor(page.next_cursor) == page.users[-1].id
        cursor = page.next_cursor


@pytest.mark.parametrize("limit", [1, 2, 3, 7])
async def test_list_users_pages_through_everyone_but_the_caller(
    store: FakeUserStore, publisher: FakePublisher, tokens: TokenService, limit: int
) -> None:
    """For every caller position, paging lists all others once, in creation order, full pages."""
    new_id = UserIdGenerator()
    users = [await _create(store, publisher, tokens, f"u{i}", new_id=new_id) for i in range(7)]
    for caller in users:
        pages = await _all_pages(store, caller.id, limit)
        flat = [uid for page in pages for uid in page]
        assert flat == [u.id for u in users if u.id != caller.id]
        assert all(len(page) == limit for page in pages[:-1])
        assert pages[-1] or len(pages) == 1


async def test_list_users_of_an_empty_table(store: FakeUserStore) -> None:
    """With no other user the answer is an empty last page."""
    page = await handlers.list_users(store, "user_me", 50, None)
    assert page.users == []
    assert page.next_cursor is None


async def test_list_users_refuses_bad_limit_and_cursor(store: FakeUserStore) -> None:
    """A limit outside 1..200 and a forged cursor are 400s with their codes."""
    with pytest.raises(ChatError) as info:
        await handlers.list_users(store, "user_me", 0, None)
    assert info.value.code == ErrorCode.INVALID_LIMIT
    with pytest.raises(ChatError) as info:
        await handlers.list_users(store, "user_me", 10, "bm9wZQ")
    assert info.value.code == ErrorCode.INVALID_CURSOR


async def test_get_user_found_and_not_found(
    store: FakeUserStore, publisher: FakePublisher, tokens: TokenService
) -> None:
    """A stored user is returned; an unknown or malformed id is not_found (404)."""
    user = await _create(store, publisher, tokens)
    assert await handlers.get_user(store, user.id) == user
    for missing in ("user_nobody", "x" * 5000, "a b"):
        with pytest.raises(ChatError) as info:
            await handlers.get_user(store, missing)
        assert info.value.code == ErrorCode.NOT_FOUND
        assert info.value.status == 404


def test_refresh_token_is_for_the_same_user(tokens: TokenService) -> None:
    """A refreshed token names the same subject and a later expiry."""
    _token, claims = tokens.issue("user_1", now=time.time() - 100)
    fresh = handlers.refresh_token(tokens, claims)
    fresh_claims = tokens.verify(fresh.token)
    assert fresh_claims.user_id == "user_1"
    assert fresh_claims.expires_at > claims.expires_at
    assert fresh.expiresAt == fresh_claims.expires_at_iso


async def test_get_users_batches_by_100_and_drops_unknown_ids(
    store: FakeUserStore, publisher: FakePublisher, tokens: TokenService
) -> None:
    """The bus query answers only existing users, in the asked order, in batches of 100."""
    new_id = UserIdGenerator()
    users = [await _create(store, publisher, tokens, f"u{i}", new_id=new_id) for i in range(150)]
    asked = [u.id for u in reversed(users)] + ["user_unknown", "bad id", users[0].id]
    reply = await handlers.get_users(store, GetUserQuery(userIds=asked, correlationId="c1"))
    assert [u.id for u in reply.users] == [u.id for u in reversed(users)]
    assert reply.correlationId == "c1"
    assert [len(call) for call in store.batch_calls] == [100, 51]


async def test_get_users_with_no_ids(store: FakeUserStore) -> None:
    """An empty question gets an empty answer without touching the store."""
    store.fail = True
    reply = await handlers.get_users(store, GetUserQuery(userIds=[]))
    assert reply.users == []


@pytest.mark.parametrize(
    "payload",
    [b"", b"not json", b"[]", b'{"userIds": "user_1"}', b'{"userIds": [1, 2]}', b"\xff\xfe"],
)
async def test_bus_answer_to_a_bad_payload_is_an_empty_list(
    store: FakeUserStore, payload: bytes
) -> None:
    """A malformed GET_USERS payload gets an empty user list, never an exception."""
    reply = GetUserReply.model_validate_json(await answer(store, payload))
    assert reply.users == []
    assert reply.schemaVersion == 1


async def test_bus_answer_encodes_users_without_null_avatars(
    store: FakeUserStore, publisher: FakePublisher, tokens: TokenService
) -> None:
    """The encoded reply carries the users and omits unset avatars."""
    user = await _create(store, publisher, tokens, "Bob")
    data = await answer(store, GetUserQuery(userIds=[user.id]).model_dump_json().encode())
    assert b"avatar" not in data
    assert GetUserReply.model_validate_json(data).users == [user]


async def test_failed_publish_is_reported_to_the_recovery_hook(
    store: FakeUserStore, tokens: TokenService
) -> None:
    """When the bus refuses UserCreated, the failure hook gets the user id."""
    failed: list[str] = []
    request = CreateUserRequest.model_validate({"name": "Alice"})
    created = await handlers.create_user(
        request,
        store=store,
        publisher=FakePublisher(fail=True),
        tokens=tokens,
        new_id=UserIdGenerator(),
        on_publish_failure=failed.append,
    )
    assert failed == [created.id]


async def test_republish_since_announces_users_above_the_floor(
    store: FakeUserStore, publisher: FakePublisher, tokens: TokenService
) -> None:
    """Every user after the floor is re-announced in creation order, with the same dedupe id."""
    clock = iter(range(1_000, 1_000_000, 1_000))
    new_id = UserIdGenerator(clock_ms=lambda: next(clock))
    users = [await _create(store, publisher, tokens, f"u{i}", new_id=new_id) for i in range(250)]
    publisher.published.clear()
    count = await handlers.republish_since(store, publisher, id_floor_of(users[10].id))
    assert count == 240
    assert [p.msg_id for p in publisher.published] == [f"UserCreated:{u.id}" for u in users[10:]]
    publisher.published.clear()
    assert await handlers.republish_since(store, publisher, id_floor_of(users[0].id), 5) == 5


async def test_recovery_on_start_announces_only_recent_users(
    store: FakeUserStore, publisher: FakePublisher, tokens: TokenService
) -> None:
    """The start-up pass re-announces the users created within the window, not older ones."""
    now = 10_000_000
    times = iter([now - 700_000, now - 500_000, now - 1_000])
    new_id = UserIdGenerator(clock_ms=lambda: next(times))
    old, recent1, recent2 = [
        await _create(store, publisher, tokens, n, new_id=new_id) for n in ("a", "b", "c")
    ]
    publisher.published.clear()
    recovery = EventRecovery(store, publisher, 600, 100, clock_ms=lambda: now)
    assert recovery.pending
    await recovery.run_once()
    assert not recovery.pending
    assert [p.msg_id for p in publisher.published] == [
        f"UserCreated:{recent1.id}",
        f"UserCreated:{recent2.id}",
    ]
    assert old.id not in {p.msg_id.split(":")[1] for p in publisher.published}


async def test_recovery_after_a_failed_publish_retries_until_the_bus_answers(
    store: FakeUserStore, tokens: TokenService
) -> None:
    """A failed publish is re-sent by the recovery pass once the bus is back."""
    publisher = FakePublisher(fail=True)
    recovery = EventRecovery(store, publisher, 0, 100)
    assert not recovery.pending
    request = CreateUserRequest.model_validate({"name": "Alice"})
    created = await handlers.create_user(
        request,
        store=store,
        publisher=publisher,
        tokens=tokens,
        new_id=UserIdGenerator(),
        on_publish_failure=recovery.note_failure,
    )
    assert recovery.pending
    with pytest.raises(TimeoutError):
        await recovery.run_once()
    assert recovery.pending
    publisher.fail = False
    await recovery.run_once()
    assert not recovery.pending
    assert [p.msg_id for p in publisher.published] == [f"UserCreated:{created.id}"]


async def test_recovery_task_runs_in_the_background(
    store: FakeUserStore, tokens: TokenService
) -> None:
    """The started recovery task wakes on a failure and re-publishes without being awaited."""
    publisher = FakePublisher(fail=True)
    recovery = EventRecovery(store, publisher, 0, 100, retry_seconds=0.01)
    recovery.start()
    try:
        user = await _create(store, publisher, tokens)
        publisher.fail = False
        recovery.note_failure(user.id)
        for _ in range(200):
            if publisher.published:
                break
            await asyncio.sleep(0.01)
        assert [p.msg_id for p in publisher.published] == [f"UserCreated:{user.id}"]
    finally:
        await recovery.stop()
