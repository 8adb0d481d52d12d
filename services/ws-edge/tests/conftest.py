"""Shared pieces of the edge's unit tests."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket

from infra.auth import Claims
from mesh.testing import uvicorn_on_free_port
from ws_edge.connection import Connection
from ws_edge.domain.limits import AbuseMeter, TokenBucket

MakeConnection = Callable[..., tuple[Connection, list[str]]]
ServeWs = Callable[..., AbstractAsyncContextManager[int]]


@pytest.fixture
def make_connection() -> MakeConnection:
    """A connection of user `u` (or `user_id`) of class `cls` whose written frames land in
    the returned list; closing does nothing."""

    def make(
        cls: type[Connection] = Connection, user_id: str = "u"
    ) -> tuple[Connection, list[str]]:
        sent: list[str] = []

        async def send(text: str) -> None:
            sent.append(text)

        async def close(code: int, reason: str) -> None:
            return None

        claims = Claims(user_id, 1e12, "t")
        return cls(claims, send, close, 16, TokenBucket(10, 1, 0), AbuseMeter(10, 1)), sent

    return make


@pytest.fixture
def serve_ws() -> ServeWs:
    """`async with serve_ws(endpoint, **uvicorn_options) as port`: `endpoint` served at `/ws`
    by a real uvicorn with the edge's WebSocket protocol (websockets-sansio) on a free port."""

    def serve(
        endpoint: Callable[[WebSocket], Awaitable[None]], **options: Any
    ) -> AbstractAsyncContextManager[int]:
        app = Starlette(routes=[WebSocketRoute("/ws", endpoint)])
        return uvicorn_on_free_port(app, ws="websockets-sansio", **options)

    return serve
