"""Run an ASGI app with uvicorn (uvloop, httptools) on the settings' host and port, with the
garbage collector tuned for a server (`tune_gc`)."""

from __future__ import annotations

import gc
import os

import uvicorn
from starlette.types import ASGIApp

from infra.logs import setup_logging
from infra.settings import CommonSettings

# Young-generation threshold 10,000 instead of 700 (then every 10th collection of the older
# ones, as by default). Why: a full collection walks every tracked object, and an edge holding
# 20,000 sockets has about a million (some 90 per socket); while sockets keep arriving the heap
# grows by a quarter again and again, and Python collects it all each time: 14-15 full
# collections of up to 1.1 s each while 20,000 connected, every socket on the node stalled
# meanwhile. With this threshold: one, of 0.2-0.4 s (docs/performance.md, Idle).
GC_THRESHOLDS = (10_000, 10, 10)


def tune_gc() -> None:
    """Freeze what start-up made (modules, classes, the app: never garbage, never walked again)
    and collect the young generation less often. `CHAT_GC_TUNING=0` keeps Python's defaults."""
    if os.environ.get("CHAT_GC_TUNING", "1") == "0":
        return
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def serve(app: ASGIApp, settings: CommonSettings, **extra: object) -> None:
    setup_logging(settings.service_name, settings.log_level)
    tune_gc()
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
