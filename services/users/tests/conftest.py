"""Fixtures of the users service's integration tests: the app in-process on real servers."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import nats
import pytest
from fastapi import FastAPI
from nats.aio.client import Client as NATS

from infra.auth import TokenService
from mesh.testing import TEST_SECRET, Infra
from users_service.app import create_app
from users_service.settings import Settings


@pytest.fixture(scope="module")
def users_settings(infra: Infra) -> Settings:
    """Settings pointing the users service at the session's NATS and store."""
    return Settings(
        env="test",
        nats_urls=infra.nats_url,
        redis_url=infra.redis_url,
        dynamo_url=infra.dynamo_url,
        table_prefix=infra.table_prefix,
        jwt_secret=TEST_SECRET,
    )


@pytest.fixture(scope="module")
async def users_app(users_settings: Settings) -> AsyncIterator[FastAPI]:
    """The users app with its lifespan running (connections open, bus responder started)."""
    app = create_app(users_settings)
    async with app.router.lifespan_context(app):
        yield app


@pytest.fixture(scope="module")
async def client(users_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client talking to the in-process app."""
    transport = httpx.ASGITransport(app=users_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://users.test") as http:
        yield http


@pytest.fixture(scope="module")
def tokens(users_settings: Settings) -> TokenService:
    """The same token service the app uses (same secret and issuer)."""
    return TokenService.from_settings(users_settings)


@pytest.fixture
async def nc(infra: Infra) -> AsyncIterator[NATS]:
    """A plain NATS client on the session's server."""
    conn = await nats.connect(infra.nats_url)
    try:
        yield conn
    finally:
        await conn.drain()
