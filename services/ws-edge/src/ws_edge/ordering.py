"""Per connection and room, one `create_message` in flight at a time.

Why: several history processes may pull from the same durable consumer, so two commands
published back to back could be stored by different processes in either order. Holding a
connection's next message for a room until the previous one is stored (its `message_created`
or rejection came back) keeps "messages sent on one connection get their seqs in the order
they were sent" true with any number of history replicas. The per-connection rate limit
(100 frames/s) is well within what this allows; other rooms and connections are unaffected.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable

from contracts.bus import CreateMessageCommand
from infra.metrics import WS_SEQUENCER_RELEASES, labelled

log = logging.getLogger(__name__)

Publish = Callable[[CreateMessageCommand], Awaitable[None]]
OnFailure = Callable[[CreateMessageCommand, Exception], None]


class RoomSequencer:
    """Queues a connection's messages per room behind the one in flight."""

    def __init__(
        self, publish: Publish, on_failure: OnFailure, timeout: float, max_queued: int
    ) -> None:
        self._publish = publish
        self._on_failure = on_failure
        self._timeout = timeout
        self._max_queued = max_queued
        self._inflight: dict[str, tuple[str, asyncio.TimerHandle]] = {}
        self._queued: dict[str, deque[CreateMessageCommand]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def queued(self, room_id: str) -> int:
        return len(self._queued.get(room_id, ()))

    async def submit(self, command: CreateMessageCommand) -> bool:
        """Publish now, or queue behind the room's message in flight; False when full."""
        room = command.roomId
        if room in self._inflight:
            queue = self._queued.setdefault(room, deque())
            if len(queue) >= self._max_queued:
                return False
            queue.append(command)
            return True
        self._reserve(command)
        await self._send(command)
        return True

    def _reserve(self, command: CreateMessageCommand) -> None:
        """Mark the command in flight at once (before any await): a frame arriving before its
        publish starts must queue behind it, not overtake it."""
        timer = asyncio.get_running_loop().call_later(
            self._timeout, self.resolved, command.roomId, command.messageId, "timeout"
        )
        self._inflight[command.roomId] = (command.messageId, timer)

    async def _send(self, command: CreateMessageCommand) -> None:
        try:
            await self._publish(command)
        except Exception as exc:
            # The stream may have stored it all the same (an ack lost), so the next message
            # still waits: for this one's message_created, or the timer. The client is told
            # to retry; its retry queues behind and is a harmless duplicate if it was stored.
            log.warning("publish of %s failed (%s): next waits", command.messageId, exc)
            labelled(WS_SEQUENCER_RELEASES, "publish_error").inc()
            raise

    def _clear(self, room_id: str) -> None:
        entry = self._inflight.pop(room_id, None)
        if entry is not None:
            entry[1].cancel()

    def resolved(self, room_id: str, message_id: str, cause: str = "stored") -> None:
        """The message in flight for this room was stored or refused, or timed out."""
        entry = self._inflight.get(room_id)
        if entry is None or entry[0] != message_id:
            return
        if cause != "stored":
            log.warning("%s not stored within %.0f s: next one let go", message_id, self._timeout)
        labelled(WS_SEQUENCER_RELEASES, cause).inc()
        self._clear(room_id)
        self._next(room_id)

    def _next(self, room_id: str) -> None:
        queue = self._queued.get(room_id)
        if not queue:
            self._queued.pop(room_id, None)
            return
        command = queue.popleft()
        self._reserve(command)  # in flight now, not when the task first runs
        task = asyncio.get_running_loop().create_task(self._send_queued(command))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send_queued(self, command: CreateMessageCommand) -> None:
        try:
            await self._send(command)
        except Exception as exc:
            self._on_failure(command, exc)

    def close(self) -> None:
        for _, timer in self._inflight.values():
            timer.cancel()
        self._inflight.clear()
        self._queued.clear()
        for task in self._tasks:
            task.cancel()
        with contextlib.suppress(Exception):
            self._tasks.clear()
