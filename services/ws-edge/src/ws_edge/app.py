"""Wiring of an edge node: the only place connections and adapters are built."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from infra.auth import TokenService
from infra.bus import close_nats, connect_nats
from infra.cache import redis_client
from infra.http import (
    health_router,
    install_common_middleware,
    install_docs,
    install_error_handlers,
)
from infra.metrics import (
    WS_CONNECTIONS,
    WS_KEEPALIVE_SOCKETS,
    WS_QUEUE_FRAMES,
    WS_QUEUE_MAX,
)
from ws_edge.adapters.bus import EdgeBus
from ws_edge.adapters.connmap import RedisConnectionMap
from ws_edge.adapters.keepalive import Keepalive
from ws_edge.domain.limits import RecentBuckets, UserBuckets
from ws_edge.entrypoints import http as http_routes
from ws_edge.entrypoints import rest as rest_routes
from ws_edge.entrypoints import sse as sse_routes
from ws_edge.entrypoints import ws as ws_routes
from ws_edge.http_send import HttpSender
from ws_edge.hub import Hub
from ws_edge.presence import Presence
from ws_edge.settings import Settings


def watch_hub(hub: Hub) -> None:
    """The node's gauges are read from the hub at scrape time (nothing to keep in step)."""
    WS_CONNECTIONS.set_function(lambda: len(hub.conns))
    WS_QUEUE_FRAMES.set_function(lambda: sum(c.queued() for c in hub.conns.values()))
    WS_QUEUE_MAX.set_function(lambda: max((c.queued() for c in hub.conns.values()), default=0))


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    tokens = TokenService.from_settings(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async def catch_up() -> None:
            hub: Hub | None = getattr(app.state, "hub", None)
            if hub is not None:
                hub.catch_up_soon()

        nc = await connect_nats(settings, f"ws-edge-{settings.node_id}", catch_up)
        redis = redis_client(settings)
        hub = Hub(
            settings,
            EdgeBus(nc, settings.bus_timeout_seconds),
            RedisConnectionMap(redis, settings.node_id, settings.node_ttl_seconds),
            tokens,
        )
        app.state.hub = hub
        watch_hub(hub)
        app.state.nc = nc
        app.state.redis = redis
        hub.presence = Presence(hub, redis, settings.presence_grace_seconds)
        app.state.http_sender = HttpSender(hub, settings.http_send_wait_seconds)
        await hub.start()
        await hub.presence.start()
        app.state.keepalive.start()
        try:
            yield
        finally:
            await app.state.keepalive.stop()
            await hub.going_away()
            await hub.presence.stop()
            await hub.stop()
            await close_nats(nc)
            await redis.aclose()

    app = FastAPI(
        title=f"chat ws-edge ({settings.node_id})",
        lifespan=lifespan,
        docs_url=None,  # install_docs: served without a CDN
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.tokens = tokens
    app.state.keepalive = keepalive = Keepalive(settings.ping_interval_seconds)
    WS_KEEPALIVE_SOCKETS.set_function(lambda: len(keepalive))
    app.state.user_buckets = UserBuckets(settings.user_rate_burst, settings.user_rate_per_second)
    app.state.http_buckets = RecentBuckets(settings.user_rate_burst, settings.user_rate_per_second)
    install_error_handlers(app)
    install_common_middleware(app, settings)
    install_docs(app)

    async def nats_ready() -> None:
        if not app.state.nc.is_connected:
            raise ConnectionError("nats not connected")

    async def redis_ready() -> None:
        await app.state.redis.ping()

    app.include_router(health_router(lambda: {"nats": nats_ready, "redis": redis_ready}))
    app.include_router(http_routes.router)
    app.include_router(ws_routes.router)
    app.include_router(sse_routes.router)
    app.include_router(rest_routes.router)
    return app
