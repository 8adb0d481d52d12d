"""Run an ASGI app with uvicorn (uvloop, httptools) on the settings' host and port, with the
garbage collector tuned for a server (`tune_gc`) and a deadline and a size limit for request
headers (`header_deadline_protocol`). Every service serves through here (the edge builds its
own server for its shutdown hook, with the same pieces)."""

from __future__ import annotations

import asyncio
import gc
import os
from http import HTTPStatus
from typing import Any

import uvicorn
from starlette.types import ASGIApp
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from contracts.errors import ErrorBody, ErrorCode
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


class HeaderDeadline(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline and a size limit for each request's headers.

    Why: uvicorn waits without limit for a request that never arrives or never completes (its
    keep-alive timeout starts only after a response), so sockets that send nothing, or a few
    header bytes now and then, stayed open for good: enough of them exhaust the process's file
    descriptors and no client can connect (Node's HTTP server has `headersTimeout` for this;
    nginx `client_header_timeout`). The deadline runs from the connection's start, and from
    the first byte of each later request on a kept-alive connection, to the end of the
    headers; it then answers 408 with the JSON error body and closes. Bodies, responses and
    upgraded WebSockets are not timed by it. Request line and headers over `max_header_bytes`
    get 431 the same way.
    """

    header_timeout = 15.0  # both set per server by `header_deadline_protocol`
    max_header_bytes = 64 * 1024
    _deadline: asyncio.TimerHandle | None = None
    # bytes of the current request's line and headers received so far; the parser and
    # uvicorn keep all of them until the headers end (a URL or header list without end grew a
    # service by gigabytes), so past `max_header_bytes` the request is refused. Counted at the
    # start of each chunk that begins in a request's head (the first request of a chunk is
    # exact; requests pipelined after it in the same chunk are bounded by the chunk's size).
    _header_bytes = 0
    _in_headers = True

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._in_headers:
            end = data.find(b"\r\n\r\n")
            self._header_bytes += len(data) if end < 0 else end + 4
            if self._header_bytes > self.max_header_bytes:
                self._refuse(431, f"request line and headers over {self.max_header_bytes} bytes")
                return
        super().data_received(data)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        self._in_headers = False
        self._header_bytes = 0
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_headers = True  # what comes next is another request's head

    def _arm(self) -> None:
        if self._deadline is None:
            self._deadline = self.loop.call_later(self.header_timeout, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        self._refuse(408, f"request headers not received within {self.header_timeout:g} s")

    def _refuse(self, status: int, message: str) -> None:
        """Answer `status` with the JSON error body and close (only close when a response of
        an earlier, pipelined request is still being written: an answer would cut into it)."""
        self._disarm()
        if self.transport.is_closing():
            return
        if self.cycle is None or self.cycle.response_complete:
            body = ErrorBody.of(ErrorCode.VALIDATION_ERROR, message).model_dump_json().encode()
            head = (
                f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
                "content-type: application/json\r\n"
                f"content-length: {len(body)}\r\n"
                "connection: close\r\n\r\n"
            )
            self.transport.write(head.encode() + body)
        self.transport.close()


def header_deadline_protocol(timeout: float, max_bytes: int = 64 * 1024) -> type[HttpToolsProtocol]:
    """`HeaderDeadline` with `timeout` seconds and `max_bytes` of request line and headers
    (uvicorn takes a protocol class, not options)."""
    protocol: type[HttpToolsProtocol] = type(
        "HeaderDeadline",
        (HeaderDeadline,),
        {"header_timeout": timeout, "max_header_bytes": max_bytes},
    )
    return protocol


def uvicorn_options(settings: CommonSettings) -> dict[str, Any]:
    """What every service's uvicorn runs with (the edge adds its WebSocket options)."""
    return {
        "host": settings.host,
        "port": settings.port,
        "loop": "uvloop",
        "http": header_deadline_protocol(
            settings.header_timeout_seconds, settings.max_header_bytes
        ),
        "access_log": False,
        "log_config": None,
        "lifespan": "on",
        "timeout_graceful_shutdown": 5,
    }


def serve(app: ASGIApp, settings: CommonSettings, **extra: object) -> None:
    setup_logging(settings.service_name, settings.log_level)
    tune_gc()
    config = uvicorn.Config(
        app,
        **uvicorn_options(settings),
        **extra,  # type: ignore[arg-type]
    )
    uvicorn.Server(config).run()
