"""In-memory adapters on the same Protocols as the real ones (for handler-level unit tests)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from contracts.bus import Envelope
from contracts.rest import User
from users_service.adapters.store import UserAlreadyExistsError


class FakeUserStore:
    """`UserStore` in a dict; `fail` makes every call raise (a store outage)."""

    def __init__(self) -> None:
        self.users: dict[str, User] = {}
        self.created_at: dict[str, str] = {}
        self.fail = False
        self.batch_calls: list[list[str]] = []

    def _check(self) -> None:
        if self.fail:
            raise ConnectionError("store unavailable")

    async def add(self, user: User, created_at: str) -> None:
        self._check()
        if user.id in self.users:
            raise UserAlreadyExistsError(user.id)
        self.users[user.id] = user.model_copy()
        self.created_at[user.id] = created_at

    async def get(self, user_id: str) -> User | None:
        self._check()
        user = self.users.get(user_id)
        return user.model_copy() if user else None

    async def get_many(self, user_ids: Sequence[str]) -> list[User]:
        self._check()
        unique = list(dict.fromkeys(user_ids))
        for start in range(0, len(unique), 100):
            self.batch_calls.append(unique[start : start + 100])
        return [self.users[u].model_copy() for u in unique if u in self.users]

    async def list_after(self, after: str | None, count: int) -> list[User]:
        self._check()
        ids = sorted(i for i in self.users if after is None or i > after)
        return [self.users[i].model_copy() for i in ids[:count]]

    async def ping(self) -> None:
        self._check()


@dataclass
class Published:
    subject: str
    event: Envelope
    msg_id: str


@dataclass
class FakePublisher:
    """`EventPublisher` that records what it was given; `fail` makes it raise (bus down)."""

    published: list[Published] = field(default_factory=list)
    fail: bool = False

    async def publish(self, subject: str, event: Envelope, msg_id: str) -> None:
        if self.fail:
            raise TimeoutError("no ack from the bus")
        self.published.append(Published(subject, event, msg_id))
