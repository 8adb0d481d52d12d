"""Publishing history's events and rejections on NATS."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

from nats.aio.client import Client as NATS

from contracts import subjects
from contracts.bus import CommandRejected, MessageCreated
from infra.bus import stamp

log = logging.getLogger(__name__)


class EventPublisher(Protocol):
    async def message_created(self, event: MessageCreated, also_to_node: bool) -> None:
        """Announce a stored message on its room's subject (and the origin node's subject)."""

    async def rejected(self, event: CommandRejected) -> None:
        """Tell the origin node that a command was refused."""

    async def settle(self, ack: Callable[[], Awaitable[None]]) -> None:
        """Run `ack` (the command's acknowledgement) only where the server cannot read it
        before the events just published for that command."""


class NatsPublisher:
    """`EventPublisher` on core NATS (MessageCreated is not captured by a stream: see
    contracts.subjects.CAPTURED_EVENTS).

    Why `settle` needs no PING/PONG: nats-py queues what is published in the connection's
    outgoing buffer and a flusher task writes the whole buffer at once. The command's ack is
    published on the same connection as its events; while the events still wait in the buffer
    the ack joins them and goes out in the same write, after them. TCP hands the server a
    prefix of that stream even when the connection breaks (and a buffer not yet written is
    sent whole after a reconnect), so the server never reads the ack without the events: the
    guarantee a flush gave, without its round trip (a wake-up of the server and of history per
    message). Only when the buffer was written in between (the client waited for a full
    buffer) does `settle` flush first.
    """

    def __init__(self, nc: NATS, flush_timeout: float = 5.0) -> None:
        self._nc = nc
        self._flush_timeout = flush_timeout
        self._buffer: object | None = None  # nats-py's outgoing buffer the last event went to
        self.flushes = 0  # settles that needed a round trip (the buffer had been written)

    def _publishing(self) -> None:
        """Before a command's first publish: the buffer its events are appended to (nats-py
        replaces the list each time it writes one, so the same list means nothing was written)."""
        self._buffer = getattr(self._nc, "_pending", None)

    def _still_buffered(self) -> bool:
        """True when nothing was written since the last command's first event was published."""
        buffer = getattr(self._nc, "_pending", None)
        return buffer is not None and buffer is self._buffer

    async def message_created(self, event: MessageCreated, also_to_node: bool) -> None:
        # the command's correlation id goes on to the pushes in the payload; no NATS header
        # on this per-message subject, which every edge would otherwise parse per message
        stamp(event)
        payload = event.model_dump_json().encode()
        subject = subjects.message_created(event.message.roomId)
        self._publishing()
        await self._nc.publish(subject, payload)
        log.debug("published MessageCreated seq %d", event.message.seq)
        if also_to_node and event.origin is not None and event.origin.node:
            await self._nc.publish(subjects.node(event.origin.node), payload)

    async def rejected(self, event: CommandRejected) -> None:
        if event.origin.node:
            headers = stamp(event) or None
            self._publishing()
            await self._nc.publish(
                subjects.node(event.origin.node), event.model_dump_json().encode(), headers=headers
            )

    async def settle(self, ack: Callable[[], Awaitable[None]]) -> None:
        if not self._still_buffered():
            self.flushes += 1
            await self._nc.flush(timeout=int(max(1, self._flush_timeout)))
        await ack()
