"""One create_message in flight per connection and room; the next waits for it."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import REGISTRY

from contracts.bus import CreateMessageCommand
from ws_edge.ordering import Publish, RoomSequencer


def _releases(cause: str) -> float:
    value = REGISTRY.get_sample_value("chat_ws_sequencer_releases_total", {"cause": cause})
    return value or 0.0


def _cmd(room: str, mid: str) -> CreateMessageCommand:
    return CreateMessageCommand(
        userId="u", roomId=room, messageId=mid, content="x", createdAt="2024-01-01T00:00:00Z"
    )


def _recorder() -> tuple[list[str], Publish]:
    """A publish that records the messageIds it was given, in order."""
    sent: list[str] = []

    async def publish(command: CreateMessageCommand) -> None:
        sent.append(command.messageId)

    return sent, publish


async def test_next_message_waits_for_previous() -> None:
    """A room's second message is published only after the first one is resolved."""
    sent, publish = _recorder()
    seq = RoomSequencer(publish, lambda c, e: None, timeout=30, max_queued=5)
    assert await seq.submit(_cmd("r", "m1"))
    assert await seq.submit(_cmd("r", "m2"))
    assert await seq.submit(_cmd("other", "o1"))
    assert sent == ["m1", "o1"]
    seq.resolved("r", "not-the-one")
    await asyncio.sleep(0)
    assert sent == ["m1", "o1"]
    seq.resolved("r", "m1")
    await asyncio.sleep(0.01)
    assert sent == ["m1", "o1", "m2"]
    seq.close()


async def test_frame_arriving_right_after_a_release_queues_behind() -> None:
    """Between a release and the queued message's publish, a new frame must not overtake it
    (found by tests/test_realtime.py under CPU load: one sender's #8 stored before its #2)."""
    sent, publish = _recorder()
    seq = RoomSequencer(publish, lambda c, e: None, timeout=30, max_queued=5)
    assert await seq.submit(_cmd("r", "m1"))
    assert await seq.submit(_cmd("r", "m2"))
    seq.resolved("r", "m1")  # m2's publish is scheduled, not yet started
    assert await seq.submit(_cmd("r", "m3"))  # arrives in that window
    await asyncio.sleep(0.01)
    assert sent == ["m1", "m2"]  # m3 waits for m2
    seq.resolved("r", "m2")
    await asyncio.sleep(0.01)
    assert sent == ["m1", "m2", "m3"]
    seq.close()


async def test_queue_is_bounded_and_timeout_releases() -> None:
    """A full queue refuses; an unanswered message releases the next after the timeout."""
    sent: list[str] = []

    async def publish(command: CreateMessageCommand) -> None:
        sent.append(command.messageId)

    timeouts = _releases("timeout")
    seq = RoomSequencer(publish, lambda c, e: None, timeout=0.05, max_queued=1)
    assert await seq.submit(_cmd("r", "a"))
    assert await seq.submit(_cmd("r", "b"))
    assert not await seq.submit(_cmd("r", "c"))
    await asyncio.sleep(0.2)
    assert sent == ["a", "b"]
    assert _releases("timeout") >= timeouts + 1  # counted: order may not hold past it
    seq.close()


async def test_publish_failure_reported_and_queue_continues() -> None:
    """A queued message whose publish fails is reported; later ones go out once it turns up
    stored (its publish may have reached the stream) or after the timeout, never before."""
    sent: list[str] = []
    failures: list[str] = []

    async def publish(command: CreateMessageCommand) -> None:
        if command.messageId == "bad":
            raise ConnectionError("bus down")
        sent.append(command.messageId)

    errors, stored = _releases("publish_error"), _releases("stored")
    seq = RoomSequencer(publish, lambda c, e: failures.append(c.messageId), 30, 5)
    await seq.submit(_cmd("r", "a"))
    await seq.submit(_cmd("r", "bad"))
    await seq.submit(_cmd("r", "c"))
    seq.resolved("r", "a")
    await asyncio.sleep(0.05)
    assert failures == ["bad"]
    assert sent == ["a"]  # c waits: "bad" may still be stored from the stream
    seq.resolved("r", "bad")  # its message_created came
    await asyncio.sleep(0.05)
    assert sent == ["a", "c"]
    assert _releases("publish_error") == errors + 1
    assert _releases("stored") == stored + 2

    timeouts = _releases("timeout")
    quick = RoomSequencer(publish, lambda c, e: failures.append(c.messageId), 0.05, 5)
    with pytest.raises(ConnectionError):  # sent at once: the caller sees the failure
        await quick.submit(_cmd("q", "bad"))
    await quick.submit(_cmd("q", "d"))
    await asyncio.sleep(0.2)  # never stored: the timer lets the next one go
    assert sent == ["a", "c", "d"]
    assert _releases("timeout") >= timeouts + 1
    quick.close()
    seq.close()
