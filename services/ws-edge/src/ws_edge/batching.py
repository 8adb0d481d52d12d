"""Changes applied in the order they were asked, in batches, by one task.

Both the connection map (a node's connects and disconnects) and presence (a node's arrivals
and last checks) send their changes to Redis this way: a lone change costs one call as
before, and a crowd (a node's clients moving to this one, 20,000 sockets connecting or
leaving) one call per batch instead of one per socket. Why one home: the two differ only in
what a batch's call does and how its results come back (futures for the map, an announcement
per change for presence), not in how the changes are queued and ordered.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


class OrderedBatches(Generic[T]):
    """Items applied in the order they were put, at most `limit` per `apply` call, one call
    at a time: all those put while a call is out go together in the next one.

    `apply` should handle its own errors (it knows what a failure means for its items); one
    that escapes is logged and the next batch goes on. When the task is cancelled (the node
    stops, the loop shuts down), `abandon` gets the items of the batch in hand and every item
    still queued, so that nobody waits for good on a change never applied.
    """

    def __init__(
        self,
        apply: Callable[[list[T]], Awaitable[None]],
        limit: int,
        abandon: Callable[[list[T]], None] | None = None,
    ) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self._apply = apply
        self.limit = limit
        self._abandon = abandon
        self._items: deque[T] = deque()
        self._batch: list[T] = []  # the batch in hand (given to `abandon` if cancelled)
        self._task: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        """Items queued and not yet taken into a batch."""
        return len(self._items)

    @property
    def idle(self) -> bool:
        """Nothing queued and no call out."""
        return self._task is None and not self._items

    def put(self, item: T) -> None:
        self._items.append(item)
        if self._task is None:
            # a task, not a call now: the rest of this loop turn's items join the first batch
            self._task = asyncio.get_running_loop().create_task(self._run())
            self._task.add_done_callback(self._ended)

    def cancel(self) -> None:
        """Stop applying (the items left go to `abandon`)."""
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        while self._items:
            count = min(len(self._items), self.limit)
            self._batch = [self._items.popleft() for _ in range(count)]
            try:
                await self._apply(self._batch)
            except Exception:
                log.exception("a batch of %d changes failed", len(self._batch))
            self._batch = []
        # in the same step as the last look at the queue: an item put from now on starts a
        # new task (the done callback would only run a loop turn later)
        self._task = None

    def _ended(self, task: asyncio.Task[None]) -> None:
        """A cancelled task (also one cancelled before it ever ran, which skips the coroutine's
        own handlers: hence a callback, not `except`/`finally` in `_run`) gives what it leaves
        to `abandon`; the next `put` starts a new task."""
        if self._task is task:
            self._task = None
        if task.cancelled():
            left = [*self._batch, *self._items]
            self._batch = []
            self._items.clear()
            if self._abandon is not None and left:
                self._abandon(left)
