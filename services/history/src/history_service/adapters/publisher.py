"""Publishing history's events and rejections on NATS."""

from __future__ import annotations

import logging
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

    async def flush(self) -> None:
        """Return once everything published so far has reached the bus."""


class NatsPublisher:
    """`EventPublisher` on core NATS (MessageCreated is not captured by a stream: see
    contracts.subjects.CAPTURED_EVENTS)."""

    def __init__(self, nc: NATS, flush_timeout: float = 5.0) -> None:
        self._nc = nc
        self._flush_timeout = flush_timeout

    async def message_created(self, event: MessageCreated, also_to_node: bool) -> None:
        headers = stamp(event) or None  # the command's correlation id goes on to the pushes
        payload = event.model_dump_json().encode()
        subject = subjects.message_created(event.message.roomId)
        await self._nc.publish(subject, payload, headers=headers)
        log.debug("published MessageCreated seq %d", event.message.seq)
        if also_to_node and event.origin is not None and event.origin.node:
            await self._nc.publish(subjects.node(event.origin.node), payload, headers=headers)

    async def rejected(self, event: CommandRejected) -> None:
        if event.origin.node:
            headers = stamp(event) or None
            await self._nc.publish(
                subjects.node(event.origin.node), event.model_dump_json().encode(), headers=headers
            )

    async def flush(self) -> None:
        await self._nc.flush(timeout=int(max(1, self._flush_timeout)))
