"""In-memory adapters on the same Protocols, for handler-level unit tests."""

from __future__ import annotations

from collections.abc import Sequence

from contracts.rest import Room, User
from rooms_service import domain
from rooms_service.adapters.store import KeyClaim, OutboxEntry
from rooms_service.adapters.users import UsersUnavailable


class FakeRoomStore:
    """`RoomStore` in dicts. `fail_on` names a method that raises `error` (one-shot crashes)."""

    def __init__(self) -> None:
        self.users: dict[str, User] = {}
        self.rooms: dict[str, tuple[Room, str]] = {}
        self.members: dict[str, dict[str, str]] = {}  # user id -> {sort key: room id}
        self.outbox: dict[str, OutboxEntry] = {}
        self.keys: dict[tuple[str, str], KeyClaim] = {}
        self.fail_on: dict[str, BaseException] = {}
        self.calls: list[str] = []

    def _step(self, name: str) -> None:
        self.calls.append(name)
        error = self.fail_on.pop(name, None)
        if error is not None:
            raise error

    async def get_users(self, user_ids: Sequence[str]) -> dict[str, str]:
        self._step("get_users")
        return {u: self.users[u].name for u in user_ids if u in self.users}

    async def put_users(self, users: Sequence[User]) -> None:
        self._step("put_users")
        for user in users:
            self.users[user.id] = user

    async def put_outbox(self, entry: OutboxEntry) -> None:
        self._step("put_outbox")
        self.outbox[entry.room_id] = entry

    async def list_outbox(self) -> list[OutboxEntry]:
        self._step("list_outbox")
        return sorted(self.outbox.values(), key=lambda e: e.room_id)

    async def delete_outbox(self, room_id: str) -> None:
        self._step("delete_outbox")
        self.outbox.pop(room_id, None)

    async def claim_key(self, claim: KeyClaim) -> KeyClaim | None:
        self._step("claim_key")
        first = self.keys.setdefault((claim.user_id, claim.key), claim)
        return None if first is claim else first

    async def key_used(self, user_id: str, key: str) -> bool:
        self._step("key_used")
        return (user_id, key) in self.keys

    async def save_room(self, room: Room, creator_id: str) -> None:
        self._step("save_room")
        self.rooms[room.id] = (room.model_copy(deep=True), creator_id)
        for p in room.participants:
            self.members.setdefault(p.id, {})[domain.member_sk(room.createdAt, room.id)] = room.id

    async def get_room(self, room_id: str) -> Room | None:
        self._step("get_room")
        found = self.rooms.get(room_id)
        return found[0].model_copy(deep=True) if found else None

    async def get_rooms(self, room_ids: Sequence[str]) -> list[Room]:
        self._step("get_rooms")
        return [self.rooms[r][0].model_copy(deep=True) for r in room_ids if r in self.rooms]

    async def room_ids_of_user(self, user_id: str) -> list[str]:
        self._step("room_ids_of_user")
        by_key = self.members.get(user_id, {})
        return [by_key[k] for k in sorted(by_key, reverse=True)]

    async def count_rooms(self, user_id: str, up_to: int) -> int:
        self._step("count_rooms")
        return min(len(self.members.get(user_id, {})), up_to)

    async def ping(self) -> None:
        self._step("ping")


class FakePublisher:
    """`EventPublisher` that records what it was given; `fail_next` raises once."""

    def __init__(self) -> None:
        self.published: list[tuple[str, str]] = []  # (room id, event JSON)
        self.fail_next: BaseException | None = None

    async def room_created(self, event_json: str, room_id: str) -> None:
        if self.fail_next is not None:
            error, self.fail_next = self.fail_next, None
            raise error
        self.published.append((room_id, event_json))


class FakeUserDirectory:
    """`UserDirectory` answering from a dict; `available=False` behaves like a silent service."""

    def __init__(self, users: Sequence[User] = (), available: bool = True) -> None:
        self.users = {u.id: u for u in users}
        self.available = available
        self.asked: list[list[str]] = []

    async def lookup(self, user_ids: Sequence[str]) -> list[User]:
        self.asked.append(list(user_ids))
        if not self.available:
            raise UsersUnavailable("fake users service is down")
        return [self.users[u] for u in user_ids if u in self.users]
