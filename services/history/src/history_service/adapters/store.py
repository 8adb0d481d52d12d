"""The history tables behind a small interface, and their DynamoDB implementation.

`messages`: pk=roomId (S), sk=seq (N): the only truth of order. `history_meta`: pk (S), sk (S):
claims (`claim#<roomId>`, messageId) and the rooms read model (`room#<roomId>`, `meta`).
Only single-item (conditional) writes, single-item reads and queries are used: no transactions,
so the same code runs on AWS DynamoDB, ScyllaDB Alternator and dynalite.
"""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from botocore.exceptions import BotoCoreError, ClientError

from contracts.rest import Message
from history_service.domain import Claim, RoomMeta, Unavailable
from infra.store import (
    DynamoDBClient,
    from_item,
    if_absent,
    is_conditional_failure,
    key_conditions,
    query_pages,
    to_item,
)

T = TypeVar("T")


@dataclass(frozen=True)
class Rows:
    """Messages read by a query, and how many store round trips (pages) the query took."""

    messages: list[Message]
    round_trips: int


class MessageStore(Protocol):
    """What history needs from its store. Every call is one round trip unless it says so."""

    async def put_claim(self, claim: Claim) -> bool:
        """Create the claim unless one exists for (room, messageId); True when created."""

    async def get_claim(self, room_id: str, message_id: str) -> Claim | None:
        """The claim of a messageId (strongly consistent)."""

    async def put_message(self, message: Message) -> bool:
        """Store the message at its seq unless that seq is taken; True when stored."""

    async def messages_after(
        self, room_id: str, after: int, limit: int | None = None, up_to: int | None = None
    ) -> Rows:
        """Messages with after < seq (<= up_to), oldest first, at most `limit` (None: all,
        paging through the store); strongly consistent."""

    async def messages_before(self, room_id: str, before: int | None, limit: int) -> list[Message]:
        """Up to `limit` messages with seq < before (None: the newest), newest first."""

    async def tail(self, room_id: str) -> int:
        """The highest stored seq of a room, 0 if none (strongly consistent)."""

    async def get_room(self, room_id: str) -> RoomMeta | None:
        """The read model's room, if known."""

    async def put_room(self, room: RoomMeta) -> None:
        """Record a room in the read model (idempotent: rooms never change)."""

    async def ping(self) -> None:
        """Raise when the store is not reachable."""


def _message(item: dict[str, Any]) -> Message:
    values = from_item(item)
    return Message(
        roomId=str(values["pk"]),
        messageId=str(values["messageId"]),
        content=str(values["content"]),
        senderId=str(values["senderId"]),
        createdAt=str(values["createdAt"]),
        seq=int(values["sk"]),
    )


class DynamoMessageStore:
    """`MessageStore` on DynamoDB (aiobotocore); any store failure surfaces as `Unavailable`."""

    def __init__(self, client: DynamoDBClient, messages_table: str, meta_table: str) -> None:
        self._db = client
        self._messages = messages_table
        self._meta = meta_table

    async def _call(self, call: Awaitable[T]) -> T:
        try:
            return await call
        except ClientError as exc:
            if is_conditional_failure(exc):
                raise
            raise Unavailable(f"store: {exc}") from exc
        except (BotoCoreError, OSError, TimeoutError) as exc:
            raise Unavailable(f"store: {type(exc).__name__}: {exc}") from exc

    async def _query(self, **request: Any) -> Any:
        return await self._call(self._db.query(**request))

    async def _put_if_absent(self, table: str, item: dict[str, Any]) -> bool:
        try:
            await self._call(
                self._db.put_item(
                    TableName=table,
                    Item=to_item(item),
                    **if_absent("pk"),
                )
            )
        except ClientError as exc:
            if is_conditional_failure(exc):
                return False
            raise Unavailable(f"store: {exc}") from exc
        return True

    async def put_claim(self, claim: Claim) -> bool:
        item = {
            "pk": f"claim#{claim.room_id}",
            "sk": claim.message_id,
            "hash": claim.hash,
            "t0": claim.t0,
        }
        return await self._put_if_absent(self._meta, item)

    async def get_claim(self, room_id: str, message_id: str) -> Claim | None:
        answer = await self._call(
            self._db.get_item(
                TableName=self._meta,
                Key=to_item({"pk": f"claim#{room_id}", "sk": message_id}),
                ConsistentRead=True,
            )
        )
        raw = answer.get("Item")
        if not raw:
            return None
        values = from_item(dict(raw))
        return Claim(room_id, message_id, str(values["hash"]), int(values["t0"]))

    async def put_message(self, message: Message) -> bool:
        item = {
            "pk": message.roomId,
            "sk": message.seq,
            "messageId": message.messageId,
            "content": message.content,
            "senderId": message.senderId,
            "createdAt": message.createdAt,
        }
        return await self._put_if_absent(self._messages, item)

    async def messages_after(
        self, room_id: str, after: int, limit: int | None = None, up_to: int | None = None
    ) -> Rows:
        if up_to is None:
            keys = key_conditions(("pk", room_id), ("sk", "GT", (after,)))
        else:
            if up_to <= after:
                return Rows([], 0)
            keys = key_conditions(("pk", room_id), ("sk", "BETWEEN", (after + 1, up_to)))
        request = {
            "TableName": self._messages,
            **keys,
            "ConsistentRead": True,
            "ScanIndexForward": True,
        }
        found: list[Message] = []
        trips = 0
        async for page in query_pages(self._query, request, wanted=limit):
            trips += 1
            found.extend(_message(dict(item)) for item in page.get("Items", []))
        if limit is not None:
            found = found[:limit]
        return Rows(found, trips)

    async def messages_before(self, room_id: str, before: int | None, limit: int) -> list[Message]:
        keys = key_conditions(("pk", room_id))
        if before is not None:
            if before <= 1:
                return []
            keys = key_conditions(("pk", room_id), ("sk", "LT", (before,)))
        page = await self._call(
            self._db.query(
                TableName=self._messages,
                **keys,
                ConsistentRead=True,
                ScanIndexForward=False,
                Limit=limit,
            )
        )
        return [_message(dict(item)) for item in page.get("Items", [])][:limit]

    async def tail(self, room_id: str) -> int:
        page = await self._call(
            self._db.query(
                TableName=self._messages,
                **key_conditions(("pk", room_id)),
                AttributesToGet=["sk"],
                ConsistentRead=True,
                ScanIndexForward=False,
                Limit=1,
            )
        )
        items = page.get("Items", [])
        return int(from_item(dict(items[0]))["sk"]) if items else 0

    async def get_room(self, room_id: str) -> RoomMeta | None:
        answer = await self._call(
            self._db.get_item(
                TableName=self._meta,
                Key=to_item({"pk": f"room#{room_id}", "sk": "meta"}),
                ConsistentRead=True,
            )
        )
        raw = answer.get("Item")
        if not raw:
            return None
        values = from_item(dict(raw))
        participants = tuple(str(p) for p in values.get("participants", []))
        return RoomMeta(room_id, participants, str(values.get("createdAt", "")))

    async def put_room(self, room: RoomMeta) -> None:
        item = {
            "pk": f"room#{room.room_id}",
            "sk": "meta",
            "participants": list(room.participants),
            "createdAt": room.created_at,
        }
        await self._call(self._db.put_item(TableName=self._meta, Item=to_item(item)))

    async def ping(self) -> None:
        await self._call(
            self._db.query(
                TableName=self._meta,
                **key_conditions(("pk", "ping")),
                Limit=1,
            )
        )
