"""A small SSE test client (httpx streaming), speaking only the contract: `GET /events`."""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass
class SseEvent:
    event: str
    data: dict[str, Any]
    id: str | None


@dataclass
class SseClient:
    """One event stream; records every event and the last event id seen."""

    url: str
    token: str
    last_event_id: str | None = None
    events: list[SseEvent] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    status: int | None = None
    reader: asyncio.Task[None] | None = None
    opened: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self) -> SseClient:
        self.reader = asyncio.create_task(self._run())
        await asyncio.wait_for(self.opened.wait(), 10)
        return self

    async def _run(self) -> None:
        headers = {"accept": "text/event-stream", "authorization": f"Bearer {self.token}"}
        if self.last_event_id:
            headers["last-event-id"] = self.last_event_id
        timeout = httpx.Timeout(10, read=None)
        try:
            async with (
                httpx.AsyncClient(timeout=timeout) as http,
                http.stream("GET", f"{self.url}/events", headers=headers) as response,
            ):
                self.status = response.status_code
                self.opened.set()
                if response.status_code != 200:
                    return
                kind, data, event_id = "message", [], None
                async for line in response.aiter_lines():
                    if line == "":
                        if data:
                            self.events.append(
                                SseEvent(kind, json.loads("\n".join(data)), event_id)
                            )
                            if event_id is not None:
                                self.last_event_id = event_id
                        kind, data, event_id = "message", [], None
                    elif line.startswith(":"):
                        self.comments.append(line[1:].strip())
                    else:
                        name, _, value = line.partition(":")
                        value = value.removeprefix(" ")
                        if name == "event":
                            kind = value
                        elif name == "data":
                            data.append(value)
                        elif name == "id":
                            event_id = value
        except (httpx.HTTPError, asyncio.CancelledError):
            pass
        finally:
            self.opened.set()

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [e.data for e in self.events if e.event == kind]

    def messages(self, room_id: str) -> list[dict[str, Any]]:
        return [
            f["message"]
            for f in self.of_type("message_created")
            if f["message"]["roomId"] == room_id
        ]

    async def wait_for(self, predicate: Any, within: float = 15.0) -> dict[str, Any]:
        deadline = asyncio.get_running_loop().time() + within
        while True:
            for event in self.events:
                if predicate(event.data):
                    return event.data
            if asyncio.get_running_loop().time() > deadline:
                got = [e.data for e in self.events[-5:]]
                raise AssertionError(f"no matching event in {within}s; got {got}")
            await asyncio.sleep(0.02)

    async def wait_count(self, room_id: str, count: int, within: float = 15.0) -> None:
        deadline = asyncio.get_running_loop().time() + within
        while len(self.messages(room_id)) < count:
            if asyncio.get_running_loop().time() > deadline:
                got = [m["seq"] for m in self.messages(room_id)]
                raise AssertionError(f"{len(got)}/{count} messages: {got}")
            await asyncio.sleep(0.02)

    async def close(self) -> None:
        if self.reader is not None:
            self.reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.reader
