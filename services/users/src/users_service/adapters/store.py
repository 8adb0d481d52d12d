"""The users table: `pk="users"`, `sk=<user id>` (ids sort by creation time).

One partition holds every user so that a strongly consistent Query lists them in creation
order and a user is listed as soon as its conditional put returned.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, Protocol

from contracts.rest import User
from infra.store import (
    DynamoDBClient,
    from_item,
    if_absent,
    is_conditional_failure,
    key_conditions,
    query_pages,
    to_item,
)
from users_service.domain import BATCH_GET_MAX

PARTITION = "users"
_BATCH_RETRIES = 8


class UserAlreadyExistsError(Exception):
    """The conditional put found another user with that id (never expected with generated
    ids); finding the very item being written (a retried put) is not this error."""


class UserStore(Protocol):
    """What the handlers need from the users table."""

    async def add(self, user: User, created_at: str) -> None:
        """Store a new user; UserAlreadyExistsError if the id is taken."""

    async def get(self, user_id: str) -> User | None:
        """The user with that id (strongly consistent), or None."""

    async def get_many(self, user_ids: Sequence[str]) -> list[User]:
        """The users among these ids that exist (any order); unknown ids are absent."""

    async def list_after(self, after: str | None, count: int) -> list[User]:
        """Up to `count` users in id (creation) order with an id greater than `after`."""

    async def ping(self) -> None:
        """Raise if the store is not reachable."""


def _user_of(item: dict[str, Any]) -> User:
    values = from_item(item)
    return User(id=values["sk"], name=values["name"], avatar=values.get("avatar"))


class DynamoUserStore:
    """`UserStore` on DynamoDB (or Alternator, or dynalite): conditional put, Query, BatchGet."""

    def __init__(self, client: DynamoDBClient, table: str) -> None:
        self._client = client
        self._table = table

    async def add(self, user: User, created_at: str) -> None:
        item = to_item(
            {
                "pk": PARTITION,
                "sk": user.id,
                "name": user.name,
                "avatar": user.avatar,
                "createdAt": created_at,
            }
        )
        try:
            await self._client.put_item(
                TableName=self._table,
                Item=item,
                **if_absent("sk"),
            )
        except Exception as exc:
            if not is_conditional_failure(exc):
                raise
            # The client retries a put whose answer was lost; if the first attempt was
            # applied, the item found is ours: that is success, not a taken id (which would
            # make the caller store the user again under a new id: an orphan user).
            stored = await self._client.get_item(
                TableName=self._table, Key={"pk": item["pk"], "sk": item["sk"]}, ConsistentRead=True
            )
            if stored.get("Item") != item:
                raise UserAlreadyExistsError(user.id) from exc

    async def get(self, user_id: str) -> User | None:
        answer = await self._client.get_item(
            TableName=self._table,
            Key={"pk": {"S": PARTITION}, "sk": {"S": user_id}},
            ConsistentRead=True,
        )
        item = answer.get("Item")
        return _user_of(item) if item else None

    async def get_many(self, user_ids: Sequence[str]) -> list[User]:
        unique = list(dict.fromkeys(user_ids))
        found: list[User] = []
        for start in range(0, len(unique), BATCH_GET_MAX):
            chunk = unique[start : start + BATCH_GET_MAX]
            keys: list[dict[str, Any]] = [
                {"pk": {"S": PARTITION}, "sk": {"S": uid}} for uid in chunk
            ]
            for attempt in range(_BATCH_RETRIES):
                answer = await self._client.batch_get_item(
                    RequestItems={self._table: {"Keys": keys, "ConsistentRead": True}}
                )
                found.extend(_user_of(i) for i in answer.get("Responses", {}).get(self._table, []))
                unprocessed = answer.get("UnprocessedKeys", {}).get(self._table)
                if not unprocessed or not unprocessed.get("Keys"):
                    break
                keys = list(unprocessed["Keys"])
                await asyncio.sleep(min(0.05 * 2**attempt, 1.0))
            else:
                raise RuntimeError("store kept keys unprocessed: throttled")
        return found

    async def list_after(self, after: str | None, count: int) -> list[User]:
        request = {
            "TableName": self._table,
            **key_conditions(("pk", PARTITION)),
            "ConsistentRead": True,
            "ScanIndexForward": True,
        }
        start = {"pk": {"S": PARTITION}, "sk": {"S": after}} if after is not None else None
        pages = query_pages(self._client.query, request, wanted=count, start=start)
        users = [_user_of(i) async for page in pages for i in page.get("Items", [])]
        return users[:count]

    async def ping(self) -> None:
        await self._client.get_item(
            TableName=self._table,
            Key={"pk": {"S": PARTITION}, "sk": {"S": "~ping"}},
        )
