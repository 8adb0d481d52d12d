"""`/ws`: token checked at the handshake, then one read loop per connection."""

from __future__ import annotations

import contextlib
import logging
import time

from fastapi import APIRouter, WebSocket
from fastapi.responses import JSONResponse
from starlette.websockets import WebSocketDisconnect, WebSocketState

from contracts.errors import ChatError, ErrorBody, ErrorCode
from contracts.ws import ErrorFrame
from ws_edge.connection import Connection
from ws_edge.domain.frames import error_frame, parse_client_frame
from ws_edge.domain.limits import AbuseMeter, TokenBucket
from ws_edge.hub import Hub, encode
from ws_edge.settings import Settings

log = logging.getLogger(__name__)
router = APIRouter()


async def _deny(websocket: WebSocket, status: int, code: ErrorCode, message: str) -> None:
    """Refuse at the handshake with an HTTP status (401/429) and the JSON error body."""
    response = JSONResponse(ErrorBody.of(code, message).model_dump(), status_code=status)
    try:
        await websocket.send_denial_response(response)
    except RuntimeError:
        # server without the denial extension: close before accept (HTTP 403)
        await websocket.close(code=4401 if status == 401 else 1008)


@router.websocket("/ws")
async def ws_endpoint(websocket: WebSocket) -> None:
    hub: Hub = websocket.app.state.hub
    settings: Settings = websocket.app.state.settings
    if hub.stopping:
        await _deny(websocket, 503, ErrorCode.UNAVAILABLE, "node going away")
        return
    token = websocket.query_params.get("token") or ""
    try:
        claims = hub.tokens.verify(token)
    except ChatError as exc:
        await _deny(websocket, 401, exc.code, exc.message)
        return
    local = len(hub.by_user.get(claims.user_id, ()))
    if local >= settings.max_connections_per_user:
        await _deny(websocket, 429, ErrorCode.RATE_LIMITED, "too many connections for this user")
        return
    await websocket.accept()
    now = time.monotonic()

    async def send_text(text: str) -> None:
        await websocket.send_text(text)

    async def close(code: int, reason: str) -> None:
        if websocket.application_state != WebSocketState.DISCONNECTED:
            await websocket.close(code=code, reason=reason)

    conn = Connection(
        claims,
        send_text,
        close,
        settings.send_queue_frames,
        TokenBucket(settings.rate_burst, settings.rate_per_second, now),
        AbuseMeter(settings.abuse_refusals, settings.abuse_window_seconds),
    )
    conn.start()
    try:
        await hub.attach(conn)
        await _read_loop(websocket, hub, conn, settings)
    except WebSocketDisconnect:
        pass
    except Exception:
        log.exception("connection failed")
        conn.close_soon(1011, "internal error")
    finally:
        await hub.detach(conn)
        if conn.writer is not None and conn.close_code is None:
            conn.writer.cancel()
        with contextlib.suppress(Exception):
            if conn.close_code is None:
                await websocket.close()


def _refuse(conn: Connection, frame: ErrorFrame, now: float) -> None:
    conn.push(encode(frame))
    if conn.abuse.refuse(now):
        conn.close_soon(4429, "abusive: too many refused frames")


async def _read_loop(websocket: WebSocket, hub: Hub, conn: Connection, settings: Settings) -> None:
    while not conn.closed:
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
        if not conn.bucket.take(now):
            _refuse(conn, error_frame(ErrorCode.RATE_LIMITED, "too many frames; slow down"), now)
            continue
        parsed = parse_client_frame(text, settings.max_frame_bytes)
        if isinstance(parsed, ErrorFrame):
            _refuse(conn, parsed, now)
            continue
        await hub.handle(conn, parsed)
