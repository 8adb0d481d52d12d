"""Changes applied in order, in batches, by one task (the connection map's and presence's)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from mesh.testing import eventually
from ws_edge.batching import OrderedBatches


class Calls:
    """An `apply` that records each batch and waits for the test to let each call finish."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.gate = asyncio.Event()
        self.fail_on: set[int] = set()

    async def __call__(self, batch: list[int]) -> None:
        self.batches.append(batch)
        await self.gate.wait()
        if self.fail_on & set(batch):
            raise RuntimeError("Redis said no")


async def test_one_turn_is_one_call_and_the_rest_waits_for_it() -> None:
    """Items put in one loop turn go in one call; those put while it is out go in the next."""
    calls = Calls()
    batches = OrderedBatches(calls, limit=100)
    for i in range(3):
        batches.put(i)
    await eventually(lambda: len(calls.batches) == 1)
    for i in range(3, 8):
        batches.put(i)
    await asyncio.sleep(0.01)
    assert calls.batches == [[0, 1, 2]]  # one call at a time
    assert len(batches) == 5
    calls.gate.set()
    await eventually(lambda: len(calls.batches) == 2 and not len(batches))
    assert calls.batches == [[0, 1, 2], [3, 4, 5, 6, 7]]


async def test_limit_splits_a_crowd_in_order() -> None:
    """A crowd larger than the limit goes in calls of at most `limit`, in the order put."""
    calls = Calls()
    calls.gate.set()
    batches = OrderedBatches(calls, limit=4)
    for i in range(10):
        batches.put(i)
    await eventually(lambda: sum(map(len, calls.batches)) == 10)
    assert calls.batches == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


async def test_a_failed_call_does_not_stop_the_next(caplog: pytest.LogCaptureFixture) -> None:
    """An error escaping `apply` is logged and the next batch is still applied."""
    calls = Calls()
    calls.fail_on = {1}
    batches = OrderedBatches(calls, limit=2)
    for i in range(4):
        batches.put(i)
    with caplog.at_level(logging.ERROR, logger="ws_edge.batching"):
        calls.gate.set()
        await eventually(lambda: len(calls.batches) == 2)
        await asyncio.sleep(0.01)
    assert calls.batches == [[0, 1], [2, 3]]
    assert "a batch of 2 changes failed" in caplog.text
    batches.put(4)  # and a later item starts a new task
    await eventually(lambda: len(calls.batches) == 3)
    assert calls.batches[-1] == [4]


async def test_cancel_hands_back_what_was_not_applied() -> None:
    """Cancelling gives `abandon` the batch in hand and every item still queued."""
    calls = Calls()
    abandoned: list[int] = []
    batches = OrderedBatches(calls, limit=2, abandon=abandoned.extend)
    for i in range(5):
        batches.put(i)
    await eventually(lambda: len(calls.batches) == 1)
    batches.cancel()
    await eventually(lambda: bool(abandoned))
    assert abandoned == [0, 1, 2, 3, 4]
    assert not len(batches)
    calls.gate.set()
    batches.put(9)  # usable again afterwards
    await eventually(lambda: calls.batches[-1] == [9])


def test_limit_must_be_positive() -> None:
    """A limit below 1 is refused."""

    async def apply(batch: list[int]) -> None:
        return None

    with pytest.raises(ValueError, match="limit"):
        OrderedBatches(apply, limit=0)


async def test_cancel_before_the_task_ran_still_hands_back() -> None:
    """A cancel in the same loop turn as the puts (the task never ran) abandons them all, and
    the helper starts afresh on the next put."""
    calls = Calls()
    calls.gate.set()
    abandoned: list[int] = []
    batches = OrderedBatches(calls, limit=10, abandon=abandoned.extend)
    batches.put(1)
    batches.put(2)
    batches.cancel()
    await eventually(lambda: batches.idle)
    assert abandoned == [1, 2]
    assert calls.batches == []
    batches.put(3)
    await eventually(lambda: calls.batches == [[3]] and batches.idle)


async def test_a_put_as_the_last_batch_ends_is_applied() -> None:
    """An item put right after the queue ran dry (before the task's end is noticed) gets a
    call of its own, not a place in a queue nobody reads."""
    done: list[list[int]] = []

    async def apply(batch: list[int]) -> None:
        done.append(batch)

    batches = OrderedBatches(apply, limit=10)
    for i in range(50):
        batches.put(i)
        await asyncio.sleep(0)  # every interleaving of puts with the task's last steps
    await eventually(lambda: batches.idle)
    assert [i for batch in done for i in batch] == list(range(50))
