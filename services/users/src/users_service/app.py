"""The only wiring of the users service: settings -> adapters -> routes and subscribers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from infra.auth import TokenService
from infra.bus import close_nats, connect_nats
from infra.http import (
    ReadinessCheck,
    health_router,
    install_common_middleware,
    install_docs,
    install_error_handlers,
)
from infra.store import open_dynamo
from users_service.adapters.publisher import JetStreamPublisher
from users_service.adapters.store import DynamoUserStore
from users_service.domain import UserIdGenerator
from users_service.entrypoints import http
from users_service.entrypoints.bus import EventRecovery, UsersQueryResponder
from users_service.settings import Settings

DESCRIPTION = """\
Users of the chat: `POST /users` creates one and answers it with a bearer token (the only
unauthenticated call); `GET /users` lists the users the caller can create a room with, paged in
creation order (`limit`, `Link: <...>; rel="next"`); `POST /token` renews a token.

Every error is `{"error": {"code", "message"}}` with a 4xx status for bad input.
On the bus: publishes `UserCreated` on `chat.evt.user_created` (stream `CHAT_EVENTS`) and
answers `GetUserQuery` on `chat.q.users.get` (queue group `users`).
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; connections are opened by its lifespan, never here."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with open_dynamo(settings) as dynamo:
            store = DynamoUserStore(dynamo, settings.users_table)
            nc = await connect_nats(settings, f"{settings.service_name}")
            responder = UsersQueryResponder(nc, store, settings.bus_max_concurrency)
            publisher = JetStreamPublisher(
                nc.jetstream(timeout=settings.publish_timeout_seconds),
                settings.publish_timeout_seconds,
            )
            recovery = EventRecovery(
                store,
                publisher,
                settings.republish_window_seconds,
                settings.republish_max_users,
            )
            try:
                app.state.store = store
                app.state.nats = nc
                app.state.publisher = publisher
                app.state.recovery = recovery
                await responder.start()
                recovery.start()
                yield
            finally:
                await recovery.stop()
                await responder.stop()
                await close_nats(nc)

    app = FastAPI(
        title="chat users",
        version="1.0.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # install_docs: served without a CDN
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.tokens = TokenService.from_settings(settings)
    app.state.new_id = UserIdGenerator()

    install_error_handlers(app)
    install_common_middleware(app, settings)
    install_docs(app)

    def checks() -> dict[str, ReadinessCheck]:
        async def store_check() -> None:
            await app.state.store.ping()

        async def nats_check() -> None:
            if not app.state.nats.is_connected:
                raise ConnectionError("not connected to NATS")

        return {"store": store_check, "nats": nats_check}

    app.include_router(health_router(checks))
    app.include_router(http.router)
    return app
