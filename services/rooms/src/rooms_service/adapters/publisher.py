"""Publishing RoomCreated on JetStream (captured by the CHAT_EVENTS stream)."""

from __future__ import annotations

from typing import Protocol

from nats.js.client import JetStreamContext

from contracts import subjects
from contracts.bus import RoomCreated


class EventPublisher(Protocol):
    """Publishes the rooms service's events; returns once the bus acknowledged them."""

    async def room_created(self, event_json: str, room_id: str) -> None: ...


class JetStreamPublisher:
    """JetStream publish with `Nats-Msg-Id` = room id, so a re-publish is deduplicated."""

    def __init__(self, js: JetStreamContext, timeout: float) -> None:
        self._js = js
        self._timeout = timeout

    async def room_created(self, event_json: str, room_id: str) -> None:
        await self._js.publish(
            subjects.ROOM_CREATED,
            event_json.encode(),
            timeout=self._timeout,
            stream=subjects.EVENTS_STREAM,
            headers={"Nats-Msg-Id": room_id},
        )


def encode_event(event: RoomCreated) -> str:
    return event.model_dump_json(exclude_none=True)
