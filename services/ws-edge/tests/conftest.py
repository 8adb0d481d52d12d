"""Shared pieces of the edge's unit tests."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from infra.auth import Claims
from ws_edge.connection import Connection
from ws_edge.domain.limits import AbuseMeter, TokenBucket

MakeConnection = Callable[..., tuple[Connection, list[str]]]


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
