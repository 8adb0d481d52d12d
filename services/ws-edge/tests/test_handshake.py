"""The handshake is answered only once the connection is attached (its rooms' feeds live)."""

from __future__ import annotations

from typing import Any

import pytest
import websockets
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute

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


class RoomsDown:
    """The bus of a node whose rooms service does not answer."""

    async def user_rooms(self, user_id: str) -> list[str]:
        raise TimeoutError("rooms did not answer")


async def test_a_node_that_cannot_attach_refuses_the_handshake_with_503() -> None:
    """Without the user's rooms the node cannot deliver their messages: the handshake is
    refused (503 with the JSON error body) instead of opening a socket that would miss them,
    and nothing of the connection is left (admission, hub, connection map)."""
    settings = Settings()
    connmap = Map()
    tokens = TokenService("k" * 40, "chat", 3600, 0)
    hub = Hub(settings, RoomsDown(), connmap, tokens)  # type: ignore[arg-type]
    app: Any = Starlette(routes=[WebSocketRoute("/ws", ws_endpoint)])
    app.state.hub = hub
    app.state.settings = settings
    app.state.keepalive = Keepalive(settings.ping_interval_seconds)
    app.state.user_buckets = UserBuckets(settings.user_rate_burst, settings.user_rate_per_second)
    token, _ = tokens.issue("u1")
    async with uvicorn_on_free_port(app, ws="websockets-sansio") as port:
        with pytest.raises(websockets.InvalidStatus) as refused:
            await websockets.connect(f"ws://127.0.0.1:{port}/ws?token={token}", open_timeout=10)
    response = refused.value.response
    assert response.status_code == 503
    assert b'"code":"unavailable"' in response.body.replace(b" ", b"")
    assert hub.conns == {}
    assert hub.by_user == {}
    assert len(connmap.unregistered) == 1
    assert hub._admitted == {}  # the admission was given back
