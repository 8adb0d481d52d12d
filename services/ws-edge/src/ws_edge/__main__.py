"""`python -m ws_edge`: one edge node on CHAT_PORT."""

from __future__ import annotations

import uvicorn

from infra.logs import setup_logging
from infra.serve import tune_gc, uvicorn_options
from ws_edge.adapters.direct_ws import EdgeWebSocketProtocol
from ws_edge.app import create_app
from ws_edge.entrypoints.ws import DirectWsRoute
from ws_edge.settings import Settings


class EdgeServer(uvicorn.Server):
    """On SIGTERM/SIGINT, close clients with 1001 (reconnect elsewhere) before uvicorn's 1012."""

    async def shutdown(self, sockets: list | None = None) -> None:  # type: ignore[type-arg]
        app = self.config.loaded_app
        hub = None
        with_state = getattr(app, "app", app)
        while with_state is not None and hub is None:
            hub = getattr(getattr(with_state, "state", None), "hub", None)
            with_state = getattr(with_state, "app", None)
        if hub is not None:
            await hub.going_away()
        await super().shutdown(sockets)


def main() -> None:
    settings = Settings()
    setup_logging(f"ws-edge-{settings.node_id}", settings.log_level)
    app = DirectWsRoute(create_app(settings))
    tune_gc()
    config = uvicorn.Config(
        app,
        **uvicorn_options(settings),
        ws=EdgeWebSocketProtocol,  # uvicorn's websockets-sansio, control frames metered
        ws_max_size=settings.hard_max_frame_bytes,
        ws_ping_interval=settings.ping_interval_seconds,
        ws_ping_timeout=settings.ping_interval_seconds,
        ws_per_message_deflate=False,
    )
    EdgeServer(config).run()


if __name__ == "__main__":
    main()
