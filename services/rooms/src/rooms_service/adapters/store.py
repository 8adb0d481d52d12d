"""The rooms table: rooms, memberships, users known from UserCreated, and the RoomCreated outbox.

Items (table `settings.table("rooms")`, pk/sk strings):

| item | pk | sk | attributes |
|---|---|---|---|
| room | `room#<roomId>` | `meta` | id, participants [{id,name}], createdAt, creatorId |
| membership | `member#<userId>` | `<createdAt>#<roomId>` | roomId |
| known user | `user#<userId>` | `profile` | id, name, avatar? |
| outbox | `outbox` | `<roomId>` | event (RoomCreated JSON), writtenAt (epoch s) |
| creation key | `key#<userId>` | `<key>` | roomId, createdAt, participants (ids in order) |

Only single-item writes, batch writes, batch gets and queries: runs on DynamoDB, Alternator and
dynalite alike. Every write is an idempotent put, so the outbox relay may repeat any of them;
the creation key is the one conditional put (the first creation under a key wins). Keys are
kept for good, like the rooms they name (the store has no TTL to expire them with).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from botocore.exceptions import ClientError

from contracts.rest import Room, RoomParticipant, User
from infra.store import (
    DynamoDBClient,
    from_item,
    if_absent,
    is_conditional_failure,
    key_conditions,
    query_pages,
    to_item,
)
from rooms_service import domain

BATCH_WRITE_MAX = 25
BATCH_GET_MAX = 100
_UNPROCESSED_RETRIES = 8


@dataclass(frozen=True)
class OutboxEntry:
    """A RoomCreated event that may not have been published yet."""

    room_id: str
    event: str  # the RoomCreated JSON, exactly as it is published
    written_at: float  # epoch seconds


@dataclass(frozen=True)
class KeyClaim:
    """A room creation under a caller's idempotency key: the room it makes, decided up front."""

    user_id: str
    key: str
    room_id: str
    created_at: str
    participants: tuple[str, ...]  # normalized ids, in the room's order


class StoreUnavailable(Exception):
    """The store did not take a batch even after retries."""


class RoomStore(Protocol):
    """What the handlers need from the rooms table."""

    async def get_users(self, user_ids: Sequence[str]) -> dict[str, str]:
        """Names of the known users among `user_ids` (id -> name); unknown ids are absent."""
        ...

    async def put_users(self, users: Sequence[User]) -> None: ...

    async def put_outbox(self, entry: OutboxEntry) -> None: ...

    async def list_outbox(self) -> list[OutboxEntry]: ...

    async def delete_outbox(self, room_id: str) -> None: ...

    async def claim_key(self, claim: KeyClaim) -> KeyClaim | None:
        """Record `claim` unless its caller already used the key: None when recorded, else the
        claim made first (read strongly consistent)."""
        ...

    async def key_used(self, user_id: str, key: str) -> bool:
        """Whether the caller has recorded a creation under `key` (read strongly consistent)."""
        ...

    async def save_room(self, room: Room, creator_id: str) -> None:
        """Put the room item and one membership item per participant (idempotent)."""
        ...

    async def get_room(self, room_id: str) -> Room | None: ...

    async def get_rooms(self, room_ids: Sequence[str]) -> list[Room]:
        """The rooms among `room_ids` that exist, in the order asked."""
        ...

    async def room_ids_of_user(self, user_id: str) -> list[str]:
        """Every room id of the user, newest first."""
        ...

    async def count_rooms(self, user_id: str, up_to: int) -> int:
        """How many rooms the user is in, counted up to `up_to` (reads no further)."""
        ...

    async def ping(self) -> None: ...


def _room_item(room: Room, creator_id: str) -> dict[str, Any]:
    return {
        "pk": domain.room_pk(room.id),
        "sk": domain.ROOM_SK,
        "id": room.id,
        "participants": [{"id": p.id, "name": p.name} for p in room.participants],
        "createdAt": room.createdAt,
        "creatorId": creator_id,
    }


def _room_of(item: dict[str, Any]) -> Room:
    return Room(
        id=item["id"],
        participants=[RoomParticipant(id=p["id"], name=p["name"]) for p in item["participants"]],
        createdAt=item["createdAt"],
    )


class DynamoRoomStore:
    """`RoomStore` on DynamoDB (or any compatible store)."""

    def __init__(self, client: DynamoDBClient, table: str) -> None:
        self._client = client
        self._table = table

    # --- batches ---------------------------------------------------------------------------------

    async def _batch_put(self, items: Sequence[dict[str, Any]]) -> None:
        for start in range(0, len(items), BATCH_WRITE_MAX):
            chunk = items[start : start + BATCH_WRITE_MAX]
            requests: list[Any] = [{"PutRequest": {"Item": to_item(item)}} for item in chunk]
            for attempt in range(_UNPROCESSED_RETRIES):
                answer = await self._client.batch_write_item(RequestItems={self._table: requests})
                requests = list(answer.get("UnprocessedItems", {}).get(self._table, []))
                if not requests:
                    break
                await asyncio.sleep(min(0.05 * 2**attempt, 1.0))
            else:
                raise StoreUnavailable("store did not accept a batch write")

    async def _batch_get(self, keys: Sequence[tuple[str, str]]) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        unique = list(dict.fromkeys(keys))
        for start in range(0, len(unique), BATCH_GET_MAX):
            request: Any = {
                "Keys": [
                    {"pk": {"S": pk}, "sk": {"S": sk}}
                    for pk, sk in unique[start : start + BATCH_GET_MAX]
                ],
                "ConsistentRead": True,
            }
            for attempt in range(_UNPROCESSED_RETRIES):
                answer = await self._client.batch_get_item(RequestItems={self._table: request})
                found.extend(from_item(i) for i in answer.get("Responses", {}).get(self._table, []))
                pending: Any = answer.get("UnprocessedKeys", {}).get(self._table)
                if not pending or not pending.get("Keys"):
                    break
                request = pending
                await asyncio.sleep(min(0.05 * 2**attempt, 1.0))
            else:
                raise StoreUnavailable("store did not answer a batch read")
        return found

    async def _query_all(self, pk: str, newest_first: bool = False) -> list[dict[str, Any]]:
        request = {
            "TableName": self._table,
            **key_conditions(("pk", pk)),
            "ConsistentRead": True,
            "ScanIndexForward": not newest_first,
        }
        return [
            from_item(i)
            async for page in query_pages(self._client.query, request)
            for i in page.get("Items", [])
        ]

    # --- users read model -----------------------------------------------------------------------

    async def get_users(self, user_ids: Sequence[str]) -> dict[str, str]:
        items = await self._batch_get([(domain.user_pk(u), domain.USER_SK) for u in user_ids])
        return {str(i["id"]): str(i["name"]) for i in items}

    async def put_users(self, users: Sequence[User]) -> None:
        unique = {u.id: u for u in users}
        await self._batch_put(
            [
                {
                    "pk": domain.user_pk(u.id),
                    "sk": domain.USER_SK,
                    "id": u.id,
                    "name": u.name,
                    "avatar": u.avatar,
                }
                for u in unique.values()
            ]
        )

    # --- outbox ---------------------------------------------------------------------------------

    async def put_outbox(self, entry: OutboxEntry) -> None:
        await self._client.put_item(
            TableName=self._table,
            Item=to_item(
                {
                    "pk": domain.OUTBOX_PK,
                    "sk": entry.room_id,
                    "event": entry.event,
                    "writtenAt": entry.written_at,
                }
            ),
        )

    async def list_outbox(self) -> list[OutboxEntry]:
        return [
            OutboxEntry(
                room_id=str(i["sk"]), event=str(i["event"]), written_at=float(i["writtenAt"])
            )
            for i in await self._query_all(domain.OUTBOX_PK)
        ]

    async def delete_outbox(self, room_id: str) -> None:
        await self._client.delete_item(
            TableName=self._table,
            Key={"pk": {"S": domain.OUTBOX_PK}, "sk": {"S": room_id}},
        )

    # --- creation keys --------------------------------------------------------------------------

    async def claim_key(self, claim: KeyClaim) -> KeyClaim | None:
        key = {"pk": domain.key_pk(claim.user_id), "sk": claim.key}
        item = {
            **key,
            "roomId": claim.room_id,
            "createdAt": claim.created_at,
            "participants": list(claim.participants),
        }
        try:
            await self._client.put_item(
                TableName=self._table, Item=to_item(item), **if_absent("pk")
            )
            return None
        except ClientError as exc:
            if not is_conditional_failure(exc):
                raise
        answer = await self._client.get_item(
            TableName=self._table, Key=to_item(key), ConsistentRead=True
        )
        found = answer.get("Item")
        if not found:  # keys are never deleted: only a broken store does this
            raise StoreUnavailable("a creation key exists but cannot be read")
        values = from_item(found)
        return KeyClaim(
            claim.user_id,
            claim.key,
            str(values["roomId"]),
            str(values["createdAt"]),
            tuple(str(p) for p in values["participants"]),
        )

    async def key_used(self, user_id: str, key: str) -> bool:
        found = await self._client.get_item(
            TableName=self._table,
            Key=to_item({"pk": domain.key_pk(user_id), "sk": key}),
            ConsistentRead=True,
            ProjectionExpression="pk",
        )
        return "Item" in found

    # --- rooms ----------------------------------------------------------------------------------

    async def save_room(self, room: Room, creator_id: str) -> None:
        items = [_room_item(room, creator_id)]
        items.extend(
            {
                "pk": domain.member_pk(p.id),
                "sk": domain.member_sk(room.createdAt, room.id),
                "roomId": room.id,
            }
            for p in room.participants
        )
        await self._batch_put(items)

    async def get_room(self, room_id: str) -> Room | None:
        answer = await self._client.get_item(
            TableName=self._table,
            Key={"pk": {"S": domain.room_pk(room_id)}, "sk": {"S": domain.ROOM_SK}},
            ConsistentRead=True,
        )
        item = answer.get("Item")
        return _room_of(from_item(item)) if item else None

    async def get_rooms(self, room_ids: Sequence[str]) -> list[Room]:
        items = await self._batch_get([(domain.room_pk(r), domain.ROOM_SK) for r in room_ids])
        by_id = {str(i["id"]): _room_of(i) for i in items}
        return [by_id[r] for r in dict.fromkeys(room_ids) if r in by_id]

    async def room_ids_of_user(self, user_id: str) -> list[str]:
        items = await self._query_all(domain.member_pk(user_id), newest_first=True)
        return [domain.room_id_of_member_sk(str(i["sk"])) for i in items]

    async def count_rooms(self, user_id: str, up_to: int) -> int:
        request = {
            "TableName": self._table,
            **key_conditions(("pk", domain.member_pk(user_id))),
            "ConsistentRead": True,
            "Select": "COUNT",
        }
        pages = query_pages(self._client.query, request, wanted=up_to)
        return sum([int(page.get("Count", 0)) async for page in pages])

    async def ping(self) -> None:
        await self._client.describe_table(TableName=self._table)
