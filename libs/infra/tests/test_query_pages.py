"""`infra.store.query_pages`: one paging loop for every service's Query (a page can end short
of its Limit at the store's 1 MB, so the loop follows LastEvaluatedKey)."""

from __future__ import annotations

from typing import Any

from infra.store import query_pages


class Pager:
    """Answers queries over items 0..n-1, at most `page` items per answer, honouring Limit
    and ExclusiveStartKey like the store."""

    def __init__(self, n: int, page: int) -> None:
        self.n, self.page = n, page
        self.calls: list[dict[str, Any]] = []

    async def query(self, **request: Any) -> dict[str, Any]:
        self.calls.append(request)
        start = request.get("ExclusiveStartKey", {"i": -1})["i"] + 1
        count = min(self.page, request.get("Limit", self.n), self.n - start)
        answer: dict[str, Any] = {"Items": list(range(start, start + count)), "Count": count}
        if start + count < self.n:
            answer["LastEvaluatedKey"] = {"i": start + count - 1}
        return answer


async def items(pager: Pager, **kwargs: Any) -> list[int]:
    return [i async for page in query_pages(pager.query, {"T": 1}, **kwargs) for i in page["Items"]]


async def test_reads_every_page_without_a_bound() -> None:
    """Without `wanted`, pages are followed to the end and the request is passed on whole."""
    pager = Pager(7, 3)
    assert await items(pager) == list(range(7))
    assert len(pager.calls) == 3
    assert all(c["T"] == 1 and "Limit" not in c for c in pager.calls)


async def test_asks_only_for_what_is_still_wanted_and_stops_there() -> None:
    """With `wanted`, each page's Limit is what is still wanted, and reading stops once that
    many came; `start` resumes after a key; the first page is always read."""
    pager = Pager(10, 3)
    assert await items(pager, wanted=5) == [0, 1, 2, 3, 4]
    assert [c["Limit"] for c in pager.calls] == [5, 2]
    pager = Pager(10, 3)
    assert await items(pager, wanted=2, start={"i": 6}) == [7, 8]
    assert pager.calls[0]["ExclusiveStartKey"] == {"i": 6}
    pager = Pager(0, 3)
    assert await items(pager, wanted=4) == []
    assert len(pager.calls) == 1
