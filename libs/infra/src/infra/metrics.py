"""Prometheus metrics shared by every service: `/metrics`, HTTP and error counters, command
latency, WebSocket and JetStream gauges, and the correlation id of each HTTP request.

One process is one scrape target (Prometheus adds `job`/`instance`), so no metric carries a
service label. Labels are bounded: routes are the matched route templates, codes the contract's
error codes, actions and frame types the contract's names.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from infra.logs import correlation_id, new_correlation_id

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

HTTP_REQUESTS = Counter(
    "chat_http_requests_total", "HTTP requests answered", ["method", "route", "status"]
)
HTTP_LATENCY = Histogram(
    "chat_http_request_duration_seconds",
    "HTTP request latency",
    ["method", "route"],
    buckets=LATENCY_BUCKETS,
)
ERRORS = Counter(
    "chat_errors_total", "Errors answered to clients (HTTP bodies and WS error frames)", ["code"]
)
COMMAND_LATENCY = Histogram(
    "chat_command_duration_seconds",
    "Time to handle a command or client action (edge: until accepted; history/rooms: applied)",
    ["command"],
    buckets=LATENCY_BUCKETS,
)
WS_CONNECTIONS = Gauge("chat_ws_connections", "Open WebSocket connections on this node")
WS_FRAMES_IN = Counter("chat_ws_frames_in_total", "Client frames handled, by action", ["action"])
WS_FRAMES_OUT = Counter("chat_ws_frames_out_total", "Frames queued to clients, by type", ["type"])
WS_QUEUE_FRAMES = Gauge("chat_ws_send_queue_frames", "Frames waiting in all send queues")
WS_QUEUE_MAX = Gauge("chat_ws_send_queue_max_frames", "Longest send queue of one connection")
WS_KEEPALIVE_SOCKETS = Gauge(
    "chat_ws_keepalive_sockets", "WebSockets pinged by the node-wide keepalive (not uvicorn's)"
)
WS_KEEPALIVE_TIMEOUTS = Counter(
    "chat_ws_keepalive_timeouts_total", "WebSockets closed (1011) for not answering a ping"
)
# how a connection's create_message in flight ended: `stored` (or refused) lets the next one
# go in order; `timeout` lets it go without knowing (order not assured with several history
# replicas); `publish_error` counts failed publishes, which hold the next one until either
WS_SEQUENCER_RELEASES = Counter(
    "chat_ws_sequencer_releases_total",
    "create_message in flight of a connection and room: how it ended, by cause",
    ["cause"],
)
CONSUMER_PENDING = Gauge(
    "chat_jetstream_consumer_pending",
    "Messages of the stream not yet delivered to this durable consumer (its lag)",
    ["stream", "consumer"],
)
CONSUMER_ACK_PENDING = Gauge(
    "chat_jetstream_consumer_ack_pending",
    "Messages delivered to this durable consumer and not yet acknowledged",
    ["stream", "consumer"],
)
CONSUMER_REDELIVERED = Gauge(
    "chat_jetstream_consumer_redelivered",
    "Messages of this consumer delivered more than once (outstanding)",
    ["stream", "consumer"],
)


_CHILDREN: dict[tuple[object, tuple[str, ...]], Any] = {}


def labelled(metric: Any, *values: str) -> Any:
    """`metric.labels(*values)`, looked up once per label set. Why: `labels()` takes a lock and
    builds its key on every call, and the edge and history call it several times per message;
    label values here are bounded (see the module docstring), so the cache is too."""
    key = (metric, values)
    child = _CHILDREN.get(key)
    if child is None:
        child = _CHILDREN[key] = metric.labels(*values)
    return child


def count_error(code: str) -> None:
    labelled(ERRORS, str(code)).inc()


def frame_type(text: str) -> str:
    """The `type` of an encoded server frame without parsing it (it is the first field)."""
    if text.startswith('{"type":"'):
        end = text.find('"', 9)
        if 9 < end < 40:
            return text[9:end]
    return "other"


def error_code(text: str) -> str:
    """The `error.code` of an encoded error frame (cheap scan; 'unknown' if absent)."""
    start = text.find('"code":"')
    if start < 0:
        return "unknown"
    end = text.find('"', start + 8)
    return text[start + 8 : end] if 0 < end - start < 60 else "unknown"


def count_frame_out(text: str) -> None:
    kind = frame_type(text)
    labelled(WS_FRAMES_OUT, kind).inc()
    if kind == "error":
        count_error(error_code(text))


class MetricsMiddleware:
    """Counts and times HTTP requests by route template; gives each request a correlation id
    (the client's or the LB's `X-Request-Id`, else a new one), echoed as `X-Request-Id`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "websocket":
                token = correlation_id.set(_header(scope, b"x-request-id") or new_correlation_id())
                try:
                    await self.app(scope, receive, send)
                finally:
                    correlation_id.reset(token)
                return
            await self.app(scope, receive, send)
            return
        cid = _header(scope, b"x-request-id") or new_correlation_id()
        token = correlation_id.set(cid)
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", cid.encode("latin-1", "replace")))
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            correlation_id.reset(token)
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            if path != "/metrics":
                method = scope.get("method", "GET")
                HTTP_REQUESTS.labels(method, path, str(status)).inc()
                HTTP_LATENCY.labels(method, path).observe(time.perf_counter() - started)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            text: str = value.decode("latin-1")[:64]
            return text if text.isprintable() and text.strip() else None
    return None


def install_metrics(app: FastAPI) -> None:
    """`GET /metrics` (Prometheus text format) and the HTTP middleware, on any service app."""
    app.add_middleware(MetricsMiddleware)

    @app.get("/metrics", include_in_schema=False)
    async def metrics(_: Request) -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


class ConsumerLagPoller:
    """Polls `consumer_info` of some durable consumers every `interval` seconds into the
    JetStream gauges (num_pending is the consumer's lag behind its stream)."""

    def __init__(
        self,
        consumer_info: Callable[[str, str], object],
        consumers: Iterable[tuple[str, str]],
        interval: float = 5.0,
    ) -> None:
        self._info = consumer_info
        self._consumers = list(consumers)
        self._interval = interval
        self._task: asyncio.Task[None] | None = None

    async def poll_once(self) -> None:
        for stream, durable in self._consumers:
            try:
                info = await self._info(stream, durable)  # type: ignore[misc]
            except Exception as exc:
                log.debug("consumer_info %s/%s failed: %s", stream, durable, exc)
                continue
            CONSUMER_PENDING.labels(stream, durable).set(getattr(info, "num_pending", 0) or 0)
            CONSUMER_ACK_PENDING.labels(stream, durable).set(
                getattr(info, "num_ack_pending", 0) or 0
            )
            CONSUMER_REDELIVERED.labels(stream, durable).set(
                getattr(info, "num_redelivered", 0) or 0
            )

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="consumer-lag")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    async def _run(self) -> None:
        while True:
            await self.poll_once()
            await asyncio.sleep(self._interval)
