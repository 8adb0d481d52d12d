"""Handler-level unit tests of the rooms service, with in-memory fakes."""

from __future__ import annotations

import itertools

import pytest

from contracts.bus import CreateRoomCommand, Origin, RoomCreated, UserCreated
from contracts.errors import ChatError, ErrorCode
from contracts.rest import User
from rooms_service import handlers
from rooms_service.adapters.fakes import FakePublisher, FakeRoomStore, FakeUserDirectory


class Crash(BaseException):
    """Stands for the process dying at that point (not an Exception: nothing catches it)."""


def make_deps(
    known: list[str] | None = None, remote: list[str] | None = None
) -> tuple[handlers.Deps, FakeRoomStore, FakePublisher, FakeUserDirectory]:
    store = FakeRoomStore()
    for uid in known or []:
        store.users[uid] = User(id=uid, name=f"name-{uid}")
    publisher = FakePublisher()
    users = FakeUserDirectory([User(id=u, name=f"name-{u}") for u in remote or []])
    counter = itertools.count(1)
    clock = itertools.count(1000)
    deps = handlers.Deps(
        store=store,
        publisher=publisher,
        users=users,
        max_participants=100,
        outbox_min_age_seconds=0,
        clock=lambda: float(next(clock)),
        new_room_id=lambda: f"room_{next(counter):04d}",
        now_iso=lambda: "2024-06-16T12:36:00.000Z",
    )
    return deps, store, publisher, users


def cmd(user: str, participants: list[str]) -> CreateRoomCommand:
    return CreateRoomCommand(userId=user, participants=participants)


async def test_create_room_dedupes_and_adds_caller() -> None:
    """The caller is added, duplicates dropped, names filled from the read model."""
    deps, store, publisher, _ = make_deps(known=["alice", "bob"])
    room = await handlers.create_room(deps, cmd("alice", ["bob", "bob"]))
    assert [(p.id, p.name) for p in room.participants] == [
        ("alice", "name-alice"),
        ("bob", "name-bob"),
    ]
    assert store.rooms[room.id][1] == "alice"
    assert store.outbox == {}
    assert [r for r, _ in publisher.published] == [room.id]
    event = RoomCreated.model_validate_json(publisher.published[0][1])
    assert event.creatorId == "alice"
    assert event.room == room


async def test_event_carries_the_commands_origin() -> None:
    """RoomCreated repeats the command's origin and correlation id."""
    deps, _, publisher, _ = make_deps(known=["alice", "bob"])
    origin = Origin(node="edge-a", conn="c1", requestId="r1")
    command = CreateRoomCommand(
        userId="alice", participants=["bob"], origin=origin, correlationId="corr"
    )
    await handlers.create_room(deps, command)
    event = RoomCreated.model_validate_json(publisher.published[0][1])
    assert event.origin == origin
    assert event.correlationId == "corr"


async def test_hundred_after_dedupe_is_accepted_and_101_refused() -> None:
    """The limit of 100 is counted after dedupe and with the caller."""
    ids = [f"u{i:03d}" for i in range(101)]
    deps, store, _, _ = make_deps(known=ids)
    room = await handlers.create_room(deps, cmd("u000", ids[1:100] * 2))
    assert len(room.participants) == 100
    with pytest.raises(ChatError) as info:
        await handlers.create_room(deps, cmd("u000", ids[1:]))
    assert info.value.code == ErrorCode.TOO_MANY_PARTICIPANTS
    assert len(store.rooms) == 1


async def test_unknown_user_refused_and_nothing_stored() -> None:
    """An id unknown to the read model and to users is refused; no room, no outbox, no event."""
    deps, store, publisher, users = make_deps(known=["alice", "bob"])
    with pytest.raises(ChatError) as info:
        await handlers.create_room(deps, cmd("alice", ["bob", "ghost", "ghost2"]))
    assert info.value.code == ErrorCode.UNKNOWN_USER
    assert info.value.status == 400
    assert "ghost" in info.value.message
    assert "ghost2" in info.value.message
    assert users.asked == [["ghost", "ghost2"]]
    assert store.rooms == {}
    assert store.members == {}
    assert store.outbox == {}
    assert publisher.published == []


async def test_miss_is_asked_of_users_and_cached() -> None:
    """A user not yet in the read model is fetched from users once, then served locally."""
    deps, store, _, users = make_deps(known=["alice"], remote=["fresh"])
    room = await handlers.create_room(deps, cmd("alice", ["fresh"]))
    assert [p.name for p in room.participants] == ["name-alice", "name-fresh"]
    assert users.asked == [["fresh"]]
    assert "fresh" in store.users
    await handlers.create_room(deps, cmd("fresh", ["alice"]))
    assert users.asked == [["fresh"]]


async def test_users_silent_is_unavailable_not_unknown() -> None:
    """When users does not answer the refusal is 503 unavailable, and nothing is stored."""
    deps, store, _, users = make_deps(known=["alice"])
    users.available = False
    with pytest.raises(ChatError) as info:
        await handlers.create_room(deps, cmd("alice", ["bob"]))
    assert info.value.code == ErrorCode.UNAVAILABLE
    assert info.value.status == 503
    assert store.rooms == {}
    assert store.outbox == {}


async def test_user_created_events_feed_the_read_model() -> None:
    """UserCreated events make users known without asking the users service."""
    deps, _, _, users = make_deps(known=["alice"])
    await handlers.user_created(deps, [UserCreated(user=User(id="bob", name="Bob"))])
    room = await handlers.create_room(deps, cmd("alice", ["bob"]))
    assert room.participants[1].name == "Bob"
    assert users.asked == []


async def test_outbox_is_written_before_the_room() -> None:
    """The order of writes is outbox, room + memberships, (publish), outbox delete."""
    deps, store, _, _ = make_deps(known=["alice", "bob"])
    await handlers.create_room(deps, cmd("alice", ["bob"]))
    writes = [c for c in store.calls if c in ("put_outbox", "save_room", "delete_outbox")]
    assert writes == ["put_outbox", "save_room", "delete_outbox"]


async def test_relay_republishes_after_crash_between_write_and_publish() -> None:
    """A crash after the store write and before the publish: the relay publishes the event."""
    deps, store, publisher, _ = make_deps(known=["alice", "bob"])
    publisher.fail_next = Crash()
    with pytest.raises(Crash):
        await handlers.create_room(deps, cmd("alice", ["bob"]))
    assert publisher.published == []
    [room_id] = list(store.rooms)
    assert list(store.outbox) == [room_id]
    # a fresh process: the relay runs on start
    assert await handlers.relay_outbox(deps) == 1
    assert [r for r, _ in publisher.published] == [room_id]
    event = RoomCreated.model_validate_json(publisher.published[0][1])
    assert [p.id for p in event.room.participants] == ["alice", "bob"]
    assert store.outbox == {}
    assert await handlers.relay_outbox(deps) == 0
    assert len(publisher.published) == 1


async def test_relay_redoes_the_writes_after_crash_before_them() -> None:
    """A crash after the outbox write but before the room write: the relay stores and publishes."""
    deps, store, publisher, _ = make_deps(known=["alice", "bob"])
    store.fail_on["save_room"] = Crash()
    with pytest.raises(Crash):
        await handlers.create_room(deps, cmd("alice", ["bob"]))
    assert store.rooms == {}
    assert await handlers.relay_outbox(deps) == 1
    [room_id] = list(store.rooms)
    assert await handlers.list_rooms(deps, "bob") == [store.rooms[room_id][0]]
    assert [r for r, _ in publisher.published] == [room_id]
    assert store.outbox == {}


async def test_publish_failure_is_unavailable_and_kept_for_the_relay() -> None:
    """A bus failure answers 503 and leaves the outbox item until the relay succeeds."""
    deps, store, publisher, _ = make_deps(known=["alice", "bob"])
    publisher.fail_next = ConnectionError("bus down")
    with pytest.raises(ChatError) as info:
        await handlers.create_room(deps, cmd("alice", ["bob"]))
    assert info.value.code == ErrorCode.UNAVAILABLE
    assert len(store.outbox) == 1
    publisher.fail_next = ConnectionError("still down")
    assert await handlers.relay_outbox(deps) == 0
    assert len(store.outbox) == 1
    assert await handlers.relay_outbox(deps) == 1
    assert store.outbox == {}


async def test_relay_leaves_young_items_to_their_request() -> None:
    """Outbox items younger than the minimum age are not touched by the relay."""
    deps, store, publisher, _ = make_deps(known=["alice", "bob"])
    publisher.fail_next = Crash()
    with pytest.raises(Crash):
        await handlers.create_room(deps, cmd("alice", ["bob"]))
    assert await handlers.relay_outbox(deps, min_age_seconds=3600) == 0
    assert len(store.outbox) == 1


async def test_list_rooms_newest_first_and_only_own() -> None:
    """GET /rooms lists the caller's rooms newest first and nobody else's."""
    deps, _, _, _ = make_deps(known=["alice", "bob", "carol"])
    times = iter(["2024-01-01T00:00:00.000Z", "2024-01-02T00:00:00.000Z"])
    deps.now_iso = lambda: next(times)
    first = await handlers.create_room(deps, cmd("alice", ["bob"]))
    second = await handlers.create_room(deps, cmd("alice", ["carol"]))
    assert [r.id for r in await handlers.list_rooms(deps, "alice")] == [second.id, first.id]
    assert [r.id for r in await handlers.list_rooms(deps, "bob")] == [first.id]
    assert await handlers.list_rooms(deps, "dave") == []
    assert await handlers.user_room_ids(deps, "carol") == [second.id]


async def test_get_room_by_id_or_none() -> None:
    """GetRoom answers the room, or None for unknown and malformed ids."""
    deps, _, _, _ = make_deps(known=["alice"])
    room = await handlers.create_room(deps, cmd("alice", []))
    assert await handlers.get_room(deps, room.id) == room
    assert await handlers.get_room(deps, "room_missing") is None
    assert await handlers.get_room(deps, "chat.>") is None


def keyed(user: str, participants: list[str], key: str) -> CreateRoomCommand:
    return CreateRoomCommand(userId=user, participants=participants, idempotencyKey=key)


async def test_same_key_gives_the_same_room_once() -> None:
    """A repeated creation under one key answers the first room; nothing is written twice."""
    deps, store, publisher, _ = make_deps(known=["alice", "bob"])
    first = await handlers.create_room(deps, keyed("alice", ["bob"], "k-1"))
    again = await handlers.create_room(deps, keyed("alice", ["bob", "alice"], "k-1"))
    assert again == first
    assert list(store.rooms) == [first.id]
    assert [r for r, _ in publisher.published] == [first.id]
    assert store.calls.count("save_room") == 1


async def test_key_with_other_participants_is_a_conflict() -> None:
    """The same key with other participants is refused (409 conflict), no room made."""
    deps, store, _, _ = make_deps(known=["alice", "bob", "carol"])
    await handlers.create_room(deps, keyed("alice", ["bob"], "k-1"))
    with pytest.raises(ChatError) as refused:
        await handlers.create_room(deps, keyed("alice", ["carol"], "k-1"))
    assert (refused.value.code, refused.value.status) == (ErrorCode.CONFLICT, 409)
    assert len(store.rooms) == 1


async def test_keys_belong_to_their_caller() -> None:
    """Two callers using the same key get two rooms; no key means a new room every time."""
    deps, store, _, _ = make_deps(known=["alice", "bob"])
    by_alice = await handlers.create_room(deps, keyed("alice", ["bob"], "same"))
    by_bob = await handlers.create_room(deps, keyed("bob", ["alice"], "same"))
    assert by_alice.id != by_bob.id
    await handlers.create_room(deps, cmd("alice", ["bob"]))
    await handlers.create_room(deps, cmd("alice", ["bob"]))
    assert len(store.rooms) == 4


async def test_retry_finishes_a_creation_cut_short() -> None:
    """A crash after the key was recorded: the retry makes that room (same id and time), once."""
    deps, store, publisher, _ = make_deps(known=["alice", "bob"])
    store.fail_on["put_outbox"] = Crash()
    with pytest.raises(Crash):
        await handlers.create_room(deps, keyed("alice", ["bob"], "k-1"))
    assert store.rooms == {}
    deps.now_iso = lambda: "2024-06-16T12:40:00.000Z"  # the retry comes later
    room = await handlers.create_room(deps, keyed("alice", ["bob", "alice"], "k-1"))
    assert room.id == store.keys[("alice", "k-1")].room_id
    assert room.createdAt == "2024-06-16T12:36:00.000Z"
    assert [p.id for p in room.participants] == ["alice", "bob"]  # as the first try had them
    assert list(store.rooms) == [room.id]
    assert [r for r, _ in publisher.published] == [room.id]


async def test_refused_creation_does_not_use_up_the_key() -> None:
    """An unknown participant is refused before the key is recorded: fixing it may reuse it."""
    deps, store, _, _ = make_deps(known=["alice", "bob"])
    with pytest.raises(ChatError):
        await handlers.create_room(deps, keyed("alice", ["nobody"], "k-1"))
    assert store.keys == {}
    room = await handlers.create_room(deps, keyed("alice", ["bob"], "k-1"))
    assert [p.id for p in room.participants] == ["alice", "bob"]


async def test_room_creation_is_rate_limited_per_creator() -> None:
    """Past their burst a creator is refused with `rate_limited` (429) before anything is
    read or written; another creator is not affected."""
    from infra.limits import RecentBuckets

    deps, store, publisher, _ = make_deps(known=["alice", "bob", "carol"])
    deps.creations = RecentBuckets(3, 0.001)
    for _ in range(3):
        await handlers.create_room(deps, cmd("alice", ["bob"]))
    with pytest.raises(ChatError) as refused:
        await handlers.create_room(deps, cmd("alice", ["carol"]))
    assert refused.value.code == ErrorCode.RATE_LIMITED
    assert refused.value.status == 429
    assert len(store.rooms) == 3
    assert len(publisher.published) == 3
    assert store.outbox == {}
    room = await handlers.create_room(deps, cmd("bob", ["carol"]))
    assert room.id in store.rooms


async def test_a_user_in_the_most_rooms_is_put_in_no_other() -> None:
    """With a user in as many rooms as one may be in, a new room with them is refused with
    `too_many_rooms` (409) naming them, before anything is written; others are not affected."""
    deps, store, publisher, _ = make_deps(known=["alice", "bob", "carol", "dave"])
    deps.max_rooms_per_user = 2
    await handlers.create_room(deps, cmd("alice", ["bob"]))
    await handlers.create_room(deps, cmd("carol", ["bob"]))
    for caller, others in (("alice", ["bob"]), ("dave", ["carol", "bob"])):
        with pytest.raises(ChatError) as refused:
            await handlers.create_room(deps, keyed(caller, others, f"key-{caller}"))
        assert (refused.value.code, refused.value.status) == (ErrorCode.TOO_MANY_ROOMS, 409)
        assert "bob" in refused.value.message
        assert "carol" not in refused.value.message
    assert len(store.rooms) == len(publisher.published) == 2
    assert store.outbox == {}
    assert store.keys == {}
    room = await handlers.create_room(deps, keyed("dave", ["carol"], "key-dave"))
    assert [p.id for p in room.participants] == ["dave", "carol"]
    with pytest.raises(ChatError) as refused:  # now carol is full too
        await handlers.create_room(deps, cmd("alice", ["carol"]))
    assert refused.value.code == ErrorCode.TOO_MANY_ROOMS


async def test_a_retry_of_the_room_that_filled_the_count_is_answered() -> None:
    """The room that brought a user to the bound is answered again to a retry under its key,
    also when the first try was cut short after its writes."""
    deps, store, publisher, _ = make_deps(known=["alice", "bob"])
    deps.max_rooms_per_user = 1
    publisher.fail_next = Crash()  # stored, then the process died before it published
    with pytest.raises(Crash):
        await handlers.create_room(deps, keyed("alice", ["bob"], "k-1"))
    assert len(store.rooms) == 1
    room = await handlers.create_room(deps, keyed("alice", ["bob"], "k-1"))
    assert list(store.rooms) == [room.id]
    assert await handlers.create_room(deps, keyed("alice", ["bob"], "k-1")) == room
    with pytest.raises(ChatError) as refused:
        await handlers.create_room(deps, keyed("alice", ["bob"], "k-2"))
    assert refused.value.code == ErrorCode.TOO_MANY_ROOMS
