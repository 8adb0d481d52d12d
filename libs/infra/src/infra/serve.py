"""Run an ASGI app with uvicorn (uvloop, httptools) on the settings' host and port."""

from __future__ import annotations

import uvicorn
from starlette.types import ASGIApp

from infra.logs import setup_logging
from infra.settings import CommonSettings


def serve(app: ASGIApp, settings: CommonSettings, **extra: object) -> None:
    setup_logging(settings.service_name, settings.log_level)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_config=None,
        lifespan="on",
        timeout_graceful_shutdown=5,
        **extra,  # type: ignore[arg-type]
    )
    uvicorn.Server(config).run()
