"""`count_rooms` over the store's paged Query answers (the client stands in for the store's
paging, which a local table only shows past 1 MB of items)."""

from __future__ import annotations

from typing import Any

from rooms_service.adapters.store import DynamoRoomStore


class PagedClient:
    """Answers `Select=COUNT` queries from `items` memberships, `page` at most per answer
    (as a store pages at its size limit), honouring `Limit` and `ExclusiveStartKey`."""

    def __init__(self, items: int, page: int) -> None:
        self.items = items
        self.page = page
        self.calls: list[dict[str, Any]] = []

    async def query(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(kwargs)
        assert kwargs["Select"] == "COUNT"
        assert kwargs["ConsistentRead"] is True
        start = int(kwargs.get("ExclusiveStartKey", {}).get("n", 0))
        count = min(self.page, kwargs["Limit"], self.items - start)
        answer: dict[str, Any] = {"Count": count}
        if start + count < self.items:
            answer["LastEvaluatedKey"] = {"n": start + count}
        return answer


async def test_counts_across_pages_and_stops_at_the_bound() -> None:
    """Pages are added up; reading stops once the bound is reached (never past it)."""
    for items, page, up_to, expected, calls in (
        (7, 3, 100, 7, 3),  # three pages, all counted
        (7, 3, 5, 5, 2),  # the bound is reached within the second page
        (0, 3, 5, 0, 1),
        (5, 10, 5, 5, 1),  # exactly the bound: one page, not read further
    ):
        client = PagedClient(items, page)
        store = DynamoRoomStore(client, "t")  # type: ignore[arg-type]
        assert await store.count_rooms("u1", up_to) == expected, (items, page, up_to)
        assert len(client.calls) == calls, (items, page, up_to)
        assert all(0 < c["Limit"] <= up_to for c in client.calls)
