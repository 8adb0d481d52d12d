"""The handshake is answered only once the connection is attached (its rooms' feeds live)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import websockets

from infra.auth import TokenService
from mesh.testing import uvicorn_on_free_port
from ws_edge.adapters.keepalive import Keepalive
from ws_edge.domain.limits import UserBuckets
from ws_edge.entrypoints.ws import ws_endpoint
from ws_edge.hub import Hub
from ws_edge.settings import Settings


class Map:
    """A connection map that admits everyone and remembers what it was told to forget."""

    def __init__(self) -> None:
        self.unregistered: list[str] = []

    async def reserve(self, user_id: str, conn_id: str, limit: int) -> bool:
        return True

    async def unregister(self, user_id: str, conn_id: str) -> None:
        self.unregistered.append(conn_id)

    async def leave(self, conns: dict[str, str]) -> None:
        return None


class Rooms:
    """The bus as the handshake uses it: the user's rooms (none), after `delay` seconds, or
    an error when rooms does not answer."""

    def __init__(self, delay: float = 0.0, down: bool = False) -> None:
        self.delay = delay
        self.down = down
        self.asked = asyncio.Event()

    async def user_rooms(self, user_id: str) -> list[str]:
        self.asked.set()
        await asyncio.sleep(self.delay)
        if self.down:
            raise TimeoutError("rooms did not answer")
        return []


@asynccontextmanager
async def edge(bus: Rooms, tokens: TokenService) -> AsyncIterator[tuple[Hub, Map, int]]:
    """`ws_endpoint` served by a real uvicorn with a hub over `bus` and an admitting map."""
    from starlette.applications import Starlette
    from starlette.routing import WebSocketRoute

    settings = Settings()
    connmap = Map()
    hub = Hub(settings, bus, connmap, tokens)  # type: ignore[arg-type]
    app: Any = Starlette(routes=[WebSocketRoute("/ws", ws_endpoint)])
    app.state.hub = hub
    app.state.settings = settings
    app.state.keepalive = Keepalive(settings.ping_interval_seconds)
    app.state.user_buckets = UserBuckets(settings.user_rate_burst, settings.user_rate_per_second)
    async with uvicorn_on_free_port(app, ws="websockets-sansio") as port:
        yield hub, connmap, port


def assert_nothing_left(hub: Hub, connmap: Map, unregistered: int = 1) -> None:
    assert hub.conns == {}
    assert hub.by_user == {}
    assert len(connmap.unregistered) == unregistered
    assert hub._admitted == {}  # the admission was given back


async def test_a_node_that_cannot_attach_refuses_the_handshake_with_503() -> None:
    """Without the user's rooms the node cannot deliver their messages: the handshake is
    refused (503 with the JSON error body) instead of opening a socket that would miss them,
    and nothing of the connection is left (admission, hub, connection map)."""
    tokens = TokenService("k" * 40, "chat", 3600, 0)
    token, _ = tokens.issue("u1")
    async with edge(Rooms(down=True), tokens) as (hub, connmap, port):
        with pytest.raises(websockets.InvalidStatus) as refused:
            await websockets.connect(f"ws://127.0.0.1:{port}/ws?token={token}", open_timeout=10)
    response = refused.value.response
    assert response.status_code == 503
    assert b'"code":"unavailable"' in response.body.replace(b" ", b"")
    assert_nothing_left(hub, connmap)


async def test_a_node_going_away_during_the_handshake_refuses_it_with_503() -> None:
    """A close asked for while the connection is attached but not yet open (here the node
    going away) is not sent on a socket that is not open: the handshake is refused with 503
    naming the reason (not uvicorn's bare 403), and nothing is left."""
    tokens = TokenService("k" * 40, "chat", 3600, 0)
    token, _ = tokens.issue("u1")
    bus = Rooms(delay=0.5)
    async with edge(bus, tokens) as (hub, connmap, port):
        url = f"ws://127.0.0.1:{port}/ws?token={token}"

        async def connect() -> object:
            return await websockets.connect(url, open_timeout=10)

        connecting = asyncio.create_task(connect())
        await asyncio.wait_for(bus.asked.wait(), 10)
        await hub.going_away()
        with pytest.raises(websockets.InvalidStatus) as refused:
            await connecting
    response = refused.value.response
    assert response.status_code == 503
    assert b"node going away" in response.body
    assert_nothing_left(hub, connmap, unregistered=0)  # a node going away leaves the map whole


async def test_a_token_expiring_while_attaching_closes_the_socket_with_4401() -> None:
    """A token valid at the handshake that expires before the socket opens: the socket is
    closed with 4401 as soon as it is open (the contract's refusal after accept)."""
    tokens = TokenService("k" * 40, "chat", 3600, 0)
    token, _ = tokens.issue("u1", now=time.time() - 3600 + 1.5)  # 0.5-1.5 s left
    async with edge(Rooms(delay=2.0), tokens) as (_, _, port):
        ws = await websockets.connect(f"ws://127.0.0.1:{port}/ws?token={token}", open_timeout=10)
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 10)
        assert ws.close_code == 4401


class CountingRooms(Rooms):
    """Counts the user's-rooms queries; answers history's range query with nothing."""

    def __init__(self) -> None:
        super().__init__()
        self.queries = 0

    async def user_rooms(self, user_id: str) -> list[str]:
        self.queries += 1
        return await super().user_rooms(user_id)

    async def history(self, query: object) -> object:
        from contracts.bus import HistoryRangeReply

        return HistoryRangeReply(rooms={})


async def test_a_sync_right_after_connecting_does_not_ask_rooms_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A reconnecting client syncs right after its connect has read the user's rooms: that
    sync uses the list just read (one rooms query, not two); a sync after the list has aged
    (SYNC_ROOMS_FRESH_SECONDS) asks again, as the safety net for a lost `room_created`."""
    import json

    from ws_edge import hub as hub_module

    tokens = TokenService("k" * 40, "chat", 3600, 0)
    token, _ = tokens.issue("u1")
    bus = CountingRooms()
    async with edge(bus, tokens) as (_hub, _connmap, port):
        url = f"ws://127.0.0.1:{port}/ws?token={token}"
        async with websockets.connect(url, open_timeout=10) as ws:

            async def synced() -> dict[str, Any]:
                await ws.send(json.dumps({"action": "sync", "rooms": {}}))
                frame: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), 10))
                return frame

            assert (await synced())["type"] == "synced"
            assert bus.queries == 1
            monkeypatch.setattr(hub_module, "SYNC_ROOMS_FRESH_SECONDS", 0.0)
            assert (await synced())["type"] == "synced"
            assert bus.queries == 2
