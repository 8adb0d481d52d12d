"""The only wiring: settings -> adapters -> handlers -> entrypoints, opened in the lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace

from fastapi import FastAPI, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from history_service.adapters.publisher import NatsPublisher
from history_service.adapters.rooms import NatsRoomDirectory
from history_service.adapters.store import DynamoMessageStore, MessageStore
from history_service.entrypoints import http as http_entry
from history_service.entrypoints.bus import (
    CreateMessageConsumer,
    PullOptions,
    RangeResponder,
    RoomCreatedConsumer,
)
from history_service.handlers import CreateMessageHandler, MessageWriter, RoomAccess
from history_service.settings import Settings
from infra.auth import TokenService
from infra.bus import connect_nats
from infra.http import (
    ReadinessCheck,
    health_router,
    install_common_middleware,
    install_docs,
    install_error_handlers,
)
from infra.store import open_dynamo

log = logging.getLogger(__name__)


def create_app(settings: Settings) -> FastAPI:
    """The history service's ASGI app; connections are opened by its lifespan, not here."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        nc = await connect_nats(settings, settings.service_name)
        try:
            async with open_dynamo(settings) as client:
                store = DynamoMessageStore(
                    client, settings.table("messages"), settings.table("history_meta")
                )
                publisher = NatsPublisher(nc)
                directory = NatsRoomDirectory(nc, settings.rooms_query_timeout_seconds)
                rooms = RoomAccess(store, directory, settings.room_cache_size)
                writer = MessageWriter(store, settings.tail_cache_size)
                handler = CreateMessageHandler(writer, rooms, publisher)
                options = PullOptions(
                    batch=settings.commands_batch,
                    ack_wait=settings.commands_ack_wait_seconds,
                    nak_delay=settings.nak_delay_seconds,
                )
                js = nc.jetstream(timeout=10)
                commands = CreateMessageConsumer(nc, js, handler, publisher, options)
                # room events keep a long ack_wait: one at a time, nothing to keep alive
                room_events = RoomCreatedConsumer(nc, js, rooms, replace(options, ack_wait=30.0))
                ranges = RangeResponder(nc, store)
                app.state.store = store
                app.state.rooms = rooms
                app.state.writer = writer
                app.state.nc = nc
                await ranges.start()
                await room_events.loop.start()
                await commands.loop.start()
                log.info("history ready")
                try:
                    yield
                finally:
                    await asyncio.gather(
                        commands.loop.stop(), room_events.loop.stop(), ranges.stop()
                    )
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(commands.drain(), 5)
        finally:
            # Everything to keep has been flushed and acked by now; drain() would wait on the
            # pull subscriptions' inboxes, so flush what is left and close.
            with contextlib.suppress(Exception):
                await nc.flush(timeout=2)
            with contextlib.suppress(Exception):
                await nc.close()

    app = FastAPI(
        title="chat history",
        version="1.0.0",
        description="Messages of rooms with a gap-free per-room `seq`; applies create_message "
        "commands from JetStream exactly once and publishes MessageCreated.",
        lifespan=lifespan,
        docs_url=None,  # install_docs: served without a CDN
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.tokens = TokenService.from_settings(settings)
    install_error_handlers(app)
    install_common_middleware(app, settings)
    install_docs(app)

    def checks() -> dict[str, ReadinessCheck]:
        async def store_ready() -> None:
            store: MessageStore | None = getattr(app.state, "store", None)
            if store is None:
                raise RuntimeError("not started")
            await store.ping()

        async def nats_ready() -> None:
            nc = getattr(app.state, "nc", None)
            if nc is None or not nc.is_connected:
                raise RuntimeError("not connected")

        return {"store": store_ready, "nats": nats_ready}

    app.include_router(health_router(checks))
    app.include_router(http_entry.router)

    @app.get("/metrics", include_in_schema=False)
    async def metrics(_: Request) -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app
