"""Pure rules of the history service (no I/O): command checks, claim hashes, paging math."""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Generic, TypeVar

from pydantic import TypeAdapter, ValidationError

from contracts.bus import CreateMessageCommand
from contracts.common import Identifier, MessageContent, Timestamp, check_not_in_future
from contracts.errors import ChatError, ErrorCode
from contracts.rest import Message

DEFAULT_PAGE_LIMIT = 50
MAX_PAGE_LIMIT = 200
MAX_SEQ = 2**53

_IDENTIFIER: TypeAdapter[str] = TypeAdapter(Identifier)
_CONTENT: TypeAdapter[str] = TypeAdapter(MessageContent)
_TIMESTAMP: TypeAdapter[str] = TypeAdapter(Timestamp)


class Unavailable(Exception):
    """A dependency (store, rooms) did not answer: the work is retried later, never refused."""


@dataclass(frozen=True)
class RoomMeta:
    """History's read model of a room: who may read and write it."""

    room_id: str
    participants: tuple[str, ...]
    created_at: str

    def has(self, user_id: str) -> bool:
        return user_id in self.participants


@dataclass(frozen=True)
class Claim:
    """The claim of a messageId in a room: its content hash and a tail seq `t0` seen before it."""

    room_id: str
    message_id: str
    hash: str
    t0: int


@dataclass(frozen=True)
class StoreOutcome:
    """What storing a message did: the stored message, whether it was already stored, and the
    number of store round trips it took."""

    message: Message
    duplicate: bool
    round_trips: int


def claim_hash(sender_id: str, content: str) -> str:
    """Hash of what makes a message the same message: its sender and content. The contract
    makes the same messageId with other content or from another sender a `conflict`, and any
    other resend (another `createdAt` included) gets the stored message back."""
    # an object, where the older form is a list: the two can never be the same text
    blob = json.dumps({"v": 2, "s": sender_id, "c": content}, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def legacy_claim_hash(sender_id: str, content: str, created_at: str) -> str:
    """The hash claims were made with before (sender, content and createdAt): a resend of a
    message claimed then is still recognised when it keeps its createdAt."""
    blob = json.dumps([sender_id, content, created_at], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def same_message(stored_hash: str, sender_id: str, content: str, created_at: str) -> bool:
    """Whether a claim's hash is this message's (a resend), in either form."""
    return stored_hash in (
        claim_hash(sender_id, content),
        legacy_claim_hash(sender_id, content, created_at),
    )


def check_command(command: CreateMessageCommand, now: datetime | None = None) -> None:
    """Field rules of a create_message command beyond its schema; ChatError (400) if broken."""
    checks: tuple[tuple[TypeAdapter[str], str, ErrorCode, str], ...] = (
        (_IDENTIFIER, command.roomId, ErrorCode.INVALID_ROOM_ID, "roomId"),
        (_IDENTIFIER, command.messageId, ErrorCode.INVALID_MESSAGE_ID, "messageId"),
        (_IDENTIFIER, command.userId, ErrorCode.VALIDATION_ERROR, "userId"),
        (_CONTENT, command.content, ErrorCode.INVALID_CONTENT, "content"),
        (_TIMESTAMP, command.createdAt, ErrorCode.INVALID_CREATED_AT, "createdAt"),
    )
    for adapter, value, code, name in checks:
        try:
            adapter.validate_python(value)
        except ValidationError as exc:
            detail = exc.errors()[0].get("msg", "invalid") if exc.errors() else "invalid"
            raise ChatError(code, f"{name}: {str(detail).removeprefix('Value error, ')}") from exc
    try:
        check_not_in_future(command.createdAt, now)
    except ValueError as exc:
        raise ChatError(ErrorCode.INVALID_CREATED_AT, str(exc)) from exc


def message_of(command: CreateMessageCommand, seq: int) -> Message:
    """The stored message for a command at a seq (fields exactly as sent)."""
    return Message(
        roomId=command.roomId,
        messageId=command.messageId,
        content=command.content,
        senderId=command.userId,
        createdAt=command.createdAt,
        seq=seq,
    )


# --- paging -----------------------------------------------------------------------------------


class Direction(Enum):
    OLDER = "before"  # the latest page, or the page just older than a seq
    NEWER = "after"  # the page just newer than a seq


@dataclass(frozen=True)
class PageRequest:
    """A validated `GET /rooms/{id}/messages` query."""

    limit: int
    direction: Direction
    cursor: int | None  # None: the latest page (direction OLDER)

    @property
    def fetch(self) -> int:
        """How many rows to read: one more than the page, to know whether more lie beyond."""
        return self.limit + 1


def _count(raw: str) -> int | None:
    """The non-negative integer written in `raw` (ASCII digits, at most 20), else None."""
    text = raw.strip()
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 20 else None


def _parse_int(raw: str, code: ErrorCode, name: str) -> int:
    value = _count(raw)
    if value is None:
        raise ChatError(code, f"{name} must be a non-negative integer of at most 20 digits")
    return value


def parse_page(limit: str | None, before: str | None, after: str | None) -> PageRequest:
    """Check the paging parameters (each problem a 400 with the contract's code)."""
    size = DEFAULT_PAGE_LIMIT
    if limit is not None:
        size = _count(limit) or 0
        if not 1 <= size <= MAX_PAGE_LIMIT:  # one message for every bad limit
            raise ChatError(
                ErrorCode.INVALID_LIMIT, f"limit must be an integer from 1 to {MAX_PAGE_LIMIT}"
            )
    if before is not None and after is not None:
        raise ChatError(ErrorCode.INVALID_CURSOR, "give either before or after, not both")
    if after is not None:
        return PageRequest(size, Direction.NEWER, _bounded(after, "after"))
    if before is not None:
        return PageRequest(size, Direction.OLDER, _bounded(before, "before"))
    return PageRequest(size, Direction.OLDER, None)


def _bounded(raw: str, name: str) -> int:
    value = _parse_int(raw, ErrorCode.INVALID_CURSOR, name)
    if value > MAX_SEQ:
        raise ChatError(ErrorCode.INVALID_CURSOR, f"{name} is out of range")
    return value


@dataclass(frozen=True)
class Page:
    """One page, oldest first, and the cursor of the next page in the same direction (if any)."""

    messages: list[Message]
    next_cursor: tuple[str, int] | None  # ("before" | "after", seq)


def make_page(request: PageRequest, rows: list[Message]) -> Page:
    """Turn up to `limit + 1` rows read in the request's direction into a page.

    Rows come newest first for OLDER (a descending query) and oldest first for NEWER. The extra
    row only tells that more exist beyond the page; it is never returned.
    """
    more = len(rows) > request.limit
    kept = rows[: request.limit]
    if request.direction is Direction.OLDER:
        kept.reverse()
        cursor = ("before", kept[0].seq) if more and kept else None
    else:
        cursor = ("after", kept[-1].seq) if more and kept else None
    return Page(kept, cursor)


# --- bounded caches ---------------------------------------------------------------------------

K = TypeVar("K")
V = TypeVar("V")


class BoundedCache(Generic[K, V]):
    """A small LRU map (per-process caches are bounded like everything else)."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._items: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self._size:
            self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)
