"""`/ws`: token checked at the handshake, then one read loop per connection."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from fastapi import APIRouter, FastAPI, WebSocket
from fastapi.responses import JSONResponse
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocketDisconnect, WebSocketState

from contracts.errors import ChatError, ErrorBody, ErrorCode
from contracts.ws import ErrorFrame
from infra.http import error_response
from ws_edge.adapters.direct_ws import (
    DirectWriter,
    abort_transport,
    meter_frames,
    release_handshake,
)
from ws_edge.adapters.keepalive import Keepalive
from ws_edge.connection import Connection, WriteFrame, new_connection_id
from ws_edge.domain.frames import error_frame, parse_client_frame
from ws_edge.domain.limits import AbuseMeter, TokenBucket, UserBuckets
from ws_edge.domain.origin import origin_allowed
from ws_edge.hub import Admission, Hub, encode
from ws_edge.settings import Settings

log = logging.getLogger(__name__)
router = APIRouter()


async def _deny(websocket: WebSocket, status: int, code: ErrorCode, message: str) -> None:
    """Refuse at the handshake with an HTTP status (401/403/429) and the JSON error body."""
    response = JSONResponse(ErrorBody.of(code, message).model_dump(), status_code=status)
    try:
        await websocket.send_denial_response(response)
    except RuntimeError:
        # server without the denial extension: close before accept (HTTP 403)
        await websocket.close(code=4401 if status == 401 else 1008)


@router.api_route("/ws", methods=["GET", "HEAD"], include_in_schema=False)
async def ws_over_plain_http() -> JSONResponse:
    """`/ws` asked without a WebSocket handshake: say what is missing (426), not a 404."""
    response = error_response(
        426,
        ErrorCode.UPGRADE_REQUIRED,
        "/ws is a WebSocket endpoint: open it with a WebSocket handshake "
        "(ws://HOST:PORT/ws?token=...), or use GET /events for server-sent events",
    )
    response.headers["upgrade"] = "websocket"
    return response


@router.websocket("/ws")
async def ws_endpoint(websocket: WebSocket) -> None:
    hub: Hub = websocket.app.state.hub
    settings: Settings = websocket.app.state.settings
    if hub.stopping:
        await _deny(websocket, 503, ErrorCode.UNAVAILABLE, "node going away")
        return
    origin = websocket.headers.get("origin")
    if not origin_allowed(origin, websocket.headers.get("host"), settings.ws_allowed_origin_list):
        await _deny(websocket, 403, ErrorCode.FORBIDDEN, "origin not allowed")
        return
    token = websocket.query_params.get("token") or ""
    try:
        claims = hub.tokens.verify(token)
    except ChatError as exc:
        await _deny(websocket, 401, exc.code, exc.message)
        return
    conn_id = new_connection_id()
    admission = await hub.admit(claims.user_id, conn_id, settings.max_connections_per_user)
    if admission is Admission.REFUSED:
        await _deny(websocket, 429, ErrorCode.RATE_LIMITED, "too many connections for this user")
        return
    now = time.monotonic()

    async def send_text(text: str) -> None:
        await websocket.send_text(text)

    async def close(code: int, reason: str) -> None:
        if websocket.application_state != WebSocketState.DISCONNECTED:
            try:
                await asyncio.wait_for(
                    websocket.close(code=code, reason=reason), settings.close_timeout_seconds
                )
            except TimeoutError:
                # a peer that does not read cannot even take the close frame: drop the socket
                abort_transport(websocket._receive)

    conn = Connection(
        claims,
        send_text,
        close,
        settings.send_queue_frames,
        TokenBucket(settings.rate_burst, settings.rate_per_second, now),
        AbuseMeter(settings.abuse_refusals, settings.abuse_window_seconds),
        conn_id=conn_id,
        held=True,
    )
    # Attached (rooms learnt, their feeds subscribed) before the handshake is answered: a
    # message stored once the client sees its socket open reaches it, and frames that arrive
    # meanwhile are held for it in order. Accepting first left a gap in which a message of
    # the user's rooms reached every other connection but not this one.
    refusal = await hub.attach_held(
        conn, hub.attach(conn, registered=admission is Admission.REGISTERED)
    )
    if refusal is not None:
        await _deny(websocket, *refusal)
        return
    try:
        await websocket.accept()
    except BaseException:
        conn.closed = True
        await hub.detach(conn)
        raise
    release_handshake(websocket)
    keepalive: Keepalive = websocket.app.state.keepalive
    pinged = keepalive.watch(websocket._receive)
    user_buckets: UserBuckets = websocket.app.state.user_buckets
    user_bucket = user_buckets.acquire(claims.user_id, time.monotonic())
    conn.open(_direct_writer(websocket, settings))
    meter_frames(websocket._receive, _FrameMeter(conn))
    try:
        await _read_loop(websocket, hub, conn, settings, user_bucket)
    except WebSocketDisconnect:
        pass
    except Exception:
        log.exception("connection failed")
        conn.close_soon(1011, "internal error")
    finally:
        keepalive.unwatch(pinged)
        user_buckets.release(claims.user_id)
        await hub.detach(conn)
        if conn.writer is not None and conn.close_code is None:
            conn.writer.cancel()
        if conn.closing is not None:
            # returning would end the socket before the close frame (4408/4429/...) is sent
            with contextlib.suppress(Exception):
                await asyncio.wait_for(
                    asyncio.shield(conn.closing), settings.close_timeout_seconds + 3
                )
        with contextlib.suppress(Exception):
            if conn.close_code is None:
                await websocket.close()


class DirectWsRoute:
    """ASGI wrapper of the edge app: `/ws` handshakes go to `ws_endpoint` at once.

    Why: through FastAPI, every open socket keeps its whole call chain suspended for its
    lifetime: the middleware frames (none of which acts on WebSockets), routing, and the
    `AsyncExitStack`s of dependency handling. At 10,000 sockets per node that is memory held for
    nothing; the endpoint does its own checks (origin, token, limits). Other paths, and `/ws`
    in tests that use the FastAPI app directly, take the normal route to the same endpoint.
    """

    def __init__(self, app: FastAPI) -> None:
        self.app = app  # also how the server's shutdown hook finds app.state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket" and scope["path"] == "/ws":
            scope["app"] = self.app  # `websocket.app.state` as under FastAPI
            await ws_endpoint(WebSocket(scope, receive, send))
            return
        await self.app(scope, receive, send)


def _direct_writer(websocket: WebSocket, settings: Settings) -> WriteFrame | None:
    """Frames straight to uvicorn's transport when possible (see adapters.direct_ws)."""
    if not settings.ws_direct_writes:
        return None
    writer = DirectWriter.attach(websocket._receive)
    return writer.write if writer is not None else None


class _FrameMeter:
    """A ping, pong or message fragment from the client (handled below ASGI): it takes a token
    of the connection's frame bucket like any frame, and one beyond it is refused the same way
    (`rate_limited`, abuse meter)."""

    __slots__ = ("conn",)  # one per socket

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def __call__(self) -> bool:
        return not self.conn.closed and _take_frame(self.conn, time.monotonic())


def _take_frame(conn: Connection, now: float) -> bool:
    """One frame from the connection's bucket; a frame beyond it is refused (`rate_limited`)."""
    if conn.bucket.take(now):
        return True
    _refuse(conn, error_frame(ErrorCode.RATE_LIMITED, "too many frames; slow down"), now)
    return False


def _refuse(conn: Connection, frame: ErrorFrame, now: float) -> None:
    conn.refuse(encode(frame), now)


async def _await_reader(conn: Connection, patience: float) -> None:
    """Read no further frames while half the send queue holds answers the client has not read.

    Frames already received are handed over without a pause, so a burst would otherwise fill
    the queue with its own answers before the writer runs; a client that sends but does not
    read for `patience` seconds is too slow (4408).
    """
    await asyncio.sleep(0)  # let the writer run between frames
    if conn.queued() * 2 < conn.queue_size:
        return
    deadline = time.monotonic() + patience
    while conn.queued() * 2 >= conn.queue_size and not conn.closed:
        if time.monotonic() > deadline:
            conn.close_soon(4408, "too slow: answers not read")
            return
        await asyncio.sleep(0.01)


async def _read_loop(
    websocket: WebSocket, hub: Hub, conn: Connection, settings: Settings, user_bucket: TokenBucket
) -> None:
    while not conn.closed:
        await _await_reader(conn, settings.close_timeout_seconds)
        if conn.closed:
            return
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return
        now = time.monotonic()
        text = message.get("text")
        if text is None:
            _refuse(
                conn,
                error_frame(ErrorCode.VALIDATION_ERROR, "binary frames are not supported"),
                now,
            )
            continue
        if not _take_frame(conn, now):
            continue
        if not user_bucket.take(now):
            why = "too many frames from this user's connections; slow down"
            _refuse(conn, error_frame(ErrorCode.RATE_LIMITED, why), now)
            continue
        parsed = parse_client_frame(text, settings.max_frame_bytes)
        if isinstance(parsed, ErrorFrame):
            _refuse(conn, parsed, now)
            continue
        await hub.handle(conn, parsed)
