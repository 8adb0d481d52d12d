"""Shared pieces of the edge's unit tests."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket

from infra.auth import Claims
from mesh.servers import free_port
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

    @contextlib.asynccontextmanager
    async def serve(
        endpoint: Callable[[WebSocket], Awaitable[None]], **options: Any
    ) -> AsyncIterator[int]:
        port = free_port()
        config = uvicorn.Config(
            Starlette(routes=[WebSocketRoute("/ws", endpoint)]),
            host="127.0.0.1",
            port=port,
            ws="websockets-sansio",
            log_level="warning",
            lifespan="off",
            **options,
        )
        server = uvicorn.Server(config)
        task = asyncio.create_task(server.serve())
        try:
            for _ in range(250):
                if server.started:
                    break
                await asyncio.sleep(0.02)
            yield port
        finally:
            server.should_exit = True
            await asyncio.wait_for(task, 10)

    return serve
