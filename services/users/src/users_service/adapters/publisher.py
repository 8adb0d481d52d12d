"""Publishing events on the bus (JetStream, so the CHAT_EVENTS stream acknowledges them)."""

from __future__ import annotations

from typing import Protocol

from nats.js.client import JetStreamContext

from contracts.bus import Envelope


class EventPublisher(Protocol):
    """Publish one event; raise if the bus did not acknowledge it."""

    async def publish(self, subject: str, event: Envelope, msg_id: str) -> None:
        """`msg_id` is the dedupe key (the same event published twice is stored once)."""


class JetStreamPublisher:
    """`EventPublisher` on JetStream: waits for the stream's ack, `Nats-Msg-Id` for dedupe."""

    def __init__(self, js: JetStreamContext, timeout: float) -> None:
        self._js = js
        self._timeout = timeout

    async def publish(self, subject: str, event: Envelope, msg_id: str) -> None:
        await self._js.publish(
            subject,
            event.model_dump_json(exclude_none=True).encode(),
            timeout=self._timeout,
            headers={"Nats-Msg-Id": msg_id},
        )
