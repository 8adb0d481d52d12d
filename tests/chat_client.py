"""A small test client speaking only the contract (HTTP + WS frames), as a real client would."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import httpx
import websockets
from websockets.asyncio.client import ClientConnection


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class Mesh:
    users: str
    rooms: str
    history: str
    edges: list[str]

    def ws_url(self, edge: int, token: str) -> str:
        return self.edges[edge].replace("http://", "ws://") + f"/ws?token={token}"


async def create_user(mesh: Mesh, name: str) -> dict[str, Any]:
    async with httpx.AsyncClient() as http:
        r = await http.post(f"{mesh.users}/users", json={"name": name})
        assert r.status_code == 201, r.text
        body: dict[str, Any] = r.json()
        return body


@dataclass
class WsClient:
    """One WebSocket connection that records every frame it receives."""

    ws: ClientConnection
    user_id: str
    frames: list[dict[str, Any]] = field(default_factory=list)
    reader: asyncio.Task[None] | None = None
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    close_code: int | None = None

    @classmethod
    async def connect(cls, url: str, user_id: str) -> WsClient:
        ws = await websockets.connect(url, max_size=2**22, open_timeout=10)
        client = cls(ws, user_id)
        client.reader = asyncio.create_task(client._read())
        return client

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                self.frames.append(json.loads(raw))
        except websockets.ConnectionClosed:
            pass
        finally:
            self.close_code = self.ws.close_code
            self.closed.set()

    async def send(self, frame: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(frame))

    async def send_message(
        self, room_id: str, content: str, message_id: str | None = None, **extra: Any
    ) -> str:
        mid = message_id or str(uuid.uuid4())
        await self.send(
            {
                "action": "create_message",
                "roomId": room_id,
                "messageId": mid,
                "content": content,
                "senderId": self.user_id,
                "createdAt": now_iso(),
                **extra,
            }
        )
        return mid

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [f for f in self.frames if f.get("type") == kind]

    def messages(self, room_id: str | None = None) -> list[dict[str, Any]]:
        return [
            f["message"]
            for f in self.of_type("message_created")
            if room_id is None or f["message"]["roomId"] == room_id
        ]

    async def wait_for(self, predicate: Any, within: float = 15.0) -> dict[str, Any]:
        """The first received frame matching `predicate`; fails after `within` seconds."""
        deadline = asyncio.get_running_loop().time() + within
        while True:
            for frame in self.frames:
                if predicate(frame):
                    return frame
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"no matching frame in {within}s; got {self.frames[-5:]}")
            await asyncio.sleep(0.02)

    async def wait_count(self, room_id: str, count: int, within: float = 30.0) -> None:
        deadline = asyncio.get_running_loop().time() + within
        while len(self.messages(room_id)) < count:
            if asyncio.get_running_loop().time() > deadline:
                got = [m["seq"] for m in self.messages(room_id)]
                raise AssertionError(f"{self.user_id}: {len(got)}/{count} messages: {got[-20:]}")
            await asyncio.sleep(0.02)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.ws.close()
        if self.reader is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.reader, 5)


class Receiver(Protocol):
    async def wait_for(self, predicate: Any, within: float = 15.0) -> dict[str, Any]: ...

    async def close(self) -> None: ...


async def each_opening_gets_the_next_message(
    open_receiver: Callable[[], Awaitable[Receiver]],
    sender: WsClient,
    room_id: str,
    attempts: int = 20,
) -> None:
    """`attempts` times: open a receiver (its node has to subscribe the room anew when it is
    the room's only member there), send a message into the room as soon as it is open, and
    check that the receiver gets it (the n-th message has seq n)."""
    for attempt in range(attempts):
        receiver = await open_receiver()
        try:
            content = f"as it opens {attempt}"
            await sender.send_message(room_id, content)
            got = await receiver.wait_for(
                lambda f, c=content: (
                    f.get("type") == "message_created" and f["message"]["content"] == c
                ),
                within=10,
            )
            assert got["message"]["seq"] == attempt + 1
        finally:
            await receiver.close()
