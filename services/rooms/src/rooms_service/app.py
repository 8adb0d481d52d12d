"""The only wiring of the rooms service: `create_app(settings)`.

The lifespan opens the store client and the NATS connection, builds the adapters, starts the
bus entrypoints (request/reply + the UserCreated consumer) and the outbox relay, and closes all
of it on the way out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from fastapi import FastAPI
from nats.aio.client import Client as NATS

from infra.auth import TokenService
from infra.bus import close_nats, connect_nats
from infra.http import (
    ReadinessCheck,
    health_router,
    install_common_middleware,
    install_docs,
    install_error_handlers,
)
from infra.limits import RecentBuckets
from infra.store import open_dynamo
from rooms_service import handlers
from rooms_service.adapters.publisher import JetStreamPublisher
from rooms_service.adapters.store import DynamoRoomStore
from rooms_service.adapters.users import NatsUserDirectory
from rooms_service.entrypoints import http
from rooms_service.entrypoints.bus import BusEntrypoints
from rooms_service.settings import Settings

log = logging.getLogger(__name__)

DESCRIPTION = """\
Rooms and memberships of the chat mesh.

- `POST /rooms` creates a room (the caller is always a participant; duplicates are dropped; at
  most 100 participants; every id must be an existing user) and publishes `RoomCreated` on
  `chat.evt.room_created`, so every online participant receives `room_created`.
- `GET /rooms` lists the caller's rooms, newest first.

Every call needs `Authorization: Bearer <token>` (from `POST /users` of the users service).
Errors are `{"error": {"code", "message"}}`. The same create_room command is served on NATS
(`chat.cmd.create_room`), see the AsyncAPI document.
"""


async def relay_loop(deps: handlers.Deps, interval: float) -> None:
    """Run the outbox relay on start and then every `interval` seconds, forever."""
    while True:
        try:
            await handlers.relay_outbox(deps)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("outbox relay run failed: %s", exc)
        await asyncio.sleep(interval)


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task


def create_app(settings: Settings | None = None) -> FastAPI:
    """The FastAPI app of the rooms service; nothing is opened until the lifespan starts."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            client = await stack.enter_async_context(open_dynamo(settings))
            store = DynamoRoomStore(client, settings.table("rooms"))
            nc = await connect_nats(settings, f"{settings.service_name}-{os.getpid()}")
            stack.push_async_callback(close_nats, nc)
            deps = handlers.Deps(
                store=store,
                publisher=JetStreamPublisher(nc.jetstream(), settings.publish_timeout_seconds),
                users=NatsUserDirectory(nc, settings.users_query_timeout_seconds),
                max_participants=settings.max_participants,
                outbox_min_age_seconds=settings.outbox_min_age_seconds,
                creations=RecentBuckets(
                    settings.room_create_burst, settings.room_create_per_second
                ),
                max_rooms_per_user=settings.max_rooms_per_user,
            )
            app.state.deps = deps
            app.state.nc = nc
            bus = BusEntrypoints(nc, deps, settings.bus_concurrency)
            await bus.start()
            stack.push_async_callback(bus.stop)
            relay = asyncio.create_task(
                relay_loop(deps, settings.outbox_interval_seconds), name="outbox-relay"
            )
            stack.push_async_callback(_cancel, relay)
            log.info("rooms ready on %s:%s", settings.host, settings.port)
            yield

    app = FastAPI(
        title="chat rooms",
        version="1.0.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # install_docs: served without a CDN
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.tokens = TokenService(
        settings.jwt_secret,
        settings.jwt_issuer,
        settings.token_ttl_seconds,
        settings.token_leeway_seconds,
    )
    install_error_handlers(app)
    install_common_middleware(app, settings)
    install_docs(app)

    def checks() -> dict[str, ReadinessCheck]:
        async def store() -> None:
            deps: handlers.Deps | None = getattr(app.state, "deps", None)
            if deps is None:
                raise RuntimeError("not started")
            await deps.store.ping()  # bounded by the health router

        async def nats() -> None:
            nc: NATS | None = getattr(app.state, "nc", None)
            if nc is None or not nc.is_connected:
                raise RuntimeError("not connected")
            await nc.flush(timeout=2)

        return {"store": store, "nats": nats}

    app.include_router(health_router(checks))
    app.include_router(http.router)
    return app
