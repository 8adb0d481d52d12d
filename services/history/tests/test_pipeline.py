"""The command pipeline's shared flush: one round trip serves everyone waiting together."""

from __future__ import annotations

import asyncio

import pytest

from history_service.entrypoints.bus import CoalescedFlush


async def test_concurrent_callers_share_flushes() -> None:
    """Ten concurrent callers need at most two flushes; a later caller gets a flush of its own."""
    calls = 0
    gate = asyncio.Event()

    async def flush() -> None:
        nonlocal calls
        calls += 1
        await gate.wait()

    shared = CoalescedFlush(flush)
    waiters = [asyncio.create_task(shared()) for _ in range(10)]
    await asyncio.sleep(0.01)
    gate.set()
    await asyncio.gather(*waiters)
    assert 1 <= calls <= 2
    before = calls
    await shared()
    assert calls == before + 1


async def test_caller_arriving_during_a_flush_waits_for_the_next() -> None:
    """A publish made while a flush is under way is covered only by a flush started after it."""
    order: list[str] = []
    release = asyncio.Event()

    async def flush() -> None:
        order.append("start")
        await release.wait()
        order.append("end")

    shared = CoalescedFlush(flush)
    first = asyncio.create_task(shared())
    await asyncio.sleep(0.01)
    second = asyncio.create_task(shared())  # arrives mid-flush
    await asyncio.sleep(0.01)
    release.set()
    await first
    assert not second.done() or order.count("start") == 2
    await second
    assert order == ["start", "end", "start", "end"]


async def test_flush_failure_reaches_every_waiter() -> None:
    """When the flush fails, each waiter sees the error (and naks its command)."""

    async def flush() -> None:
        raise ConnectionError("bus down")

    shared = CoalescedFlush(flush)
    results = await asyncio.gather(shared(), shared(), return_exceptions=True)
    assert all(isinstance(r, ConnectionError) for r in results)
    with pytest.raises(ConnectionError):
        await shared()
