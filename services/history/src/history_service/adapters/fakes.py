"""In-memory adapters implementing the same Protocols, for handler-level tests.

The fake store yields to the event loop around every call (like a network round trip), so
`asyncio.gather` over several writers really interleaves them; `hook` lets a test pause or
crash a writer at a chosen step.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable

from contracts.bus import CommandRejected, MessageCreated
from contracts.rest import Message
from history_service.adapters.store import Rows
from history_service.domain import Claim, RoomMeta, Unavailable

Hook = Callable[[str, tuple[object, ...]], Awaitable[None]]


class InMemoryMessageStore:
    """`MessageStore` over dicts: conditional puts are atomic, reads are consistent."""

    def __init__(self) -> None:
        self.messages: dict[str, dict[int, Message]] = {}
        self.claims: dict[tuple[str, str], Claim] = {}
        self.rooms: dict[str, RoomMeta] = {}
        self.calls: Counter[str] = Counter()
        self.hook: Hook | None = None
        self.down = False

    async def _step(self, op: str, *args: object) -> None:
        self.calls[op] += 1
        await asyncio.sleep(0)
        if self.hook is not None:
            await self.hook(op, args)
        if self.down:
            raise Unavailable("store is down")

    async def put_claim(self, claim: Claim) -> bool:
        await self._step("put_claim", claim)
        key = (claim.room_id, claim.message_id)
        if key in self.claims:
            return False
        self.claims[key] = claim
        return True

    async def get_claim(self, room_id: str, message_id: str) -> Claim | None:
        await self._step("get_claim", room_id, message_id)
        return self.claims.get((room_id, message_id))

    async def put_message(self, message: Message) -> bool:
        await self._step("put_message", message)
        room = self.messages.setdefault(message.roomId, {})
        if message.seq in room:
            return False
        room[message.seq] = message
        return True

    async def messages_after(
        self, room_id: str, after: int, limit: int | None = None, up_to: int | None = None
    ) -> Rows:
        await self._step("messages_after", room_id, after)
        room = self.messages.get(room_id, {})
        seqs = sorted(s for s in room if s > after and (up_to is None or s <= up_to))
        if limit is not None:
            seqs = seqs[:limit]
        return Rows([room[s] for s in seqs], 1)

    async def messages_before(self, room_id: str, before: int | None, limit: int) -> list[Message]:
        await self._step("messages_before", room_id, before)
        room = self.messages.get(room_id, {})
        seqs = sorted((s for s in room if before is None or s < before), reverse=True)
        return [room[s] for s in seqs[:limit]]

    async def tail(self, room_id: str) -> int:
        await self._step("tail", room_id)
        return max(self.messages.get(room_id, {}), default=0)

    async def get_room(self, room_id: str) -> RoomMeta | None:
        await self._step("get_room", room_id)
        return self.rooms.get(room_id)

    async def put_room(self, room: RoomMeta) -> None:
        await self._step("put_room", room)
        self.rooms[room.room_id] = room

    async def ping(self) -> None:
        await self._step("ping")


class FakeRoomDirectory:
    """`RoomDirectory` answering from a dict; `down` makes it not answer."""

    def __init__(self, rooms: dict[str, RoomMeta] | None = None) -> None:
        self.rooms = dict(rooms or {})
        self.down = False
        self.asked: list[str] = []

    async def get_room(self, room_id: str) -> RoomMeta | None:
        self.asked.append(room_id)
        if self.down:
            raise Unavailable("rooms did not answer")
        return self.rooms.get(room_id)


class RecordingPublisher:
    """`EventPublisher` that records (subject kind, event)."""

    def __init__(self) -> None:
        self.created: list[tuple[MessageCreated, bool]] = []
        self.rejections: list[CommandRejected] = []
        self.settled = 0

    async def message_created(self, event: MessageCreated, also_to_node: bool) -> None:
        self.created.append((event, also_to_node))

    async def rejected(self, event: CommandRejected) -> None:
        self.rejections.append(event)

    async def settle(self, ack: Callable[[], Awaitable[None]]) -> None:
        self.settled += 1
        await ack()
