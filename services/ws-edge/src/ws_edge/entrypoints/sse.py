"""`GET /events`: the same server frames as `/ws`, as server-sent events (CONTRACT.md section 6).

Authorization as on `/ws`: `Authorization: Bearer <token>` or `?token=` (EventSource cannot set
headers). Resume with the `Last-Event-ID` header (browsers send it on their own) or
`?lastEventId=`. A comment heartbeat goes out every `CHAT_SSE_HEARTBEAT_SECONDS` (15 s).
When the server ends a stream (token expired, too slow, node going away) it writes a comment
`: closed <code> <reason>` with the WebSocket close code first; the client reconnects with its
last event id (after refreshing its token for 4401).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Security
from fastapi.security import HTTPAuthorizationCredentials
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from contracts.errors import ChatError, ErrorBody, ErrorCode
from infra.auth import Claims, bearer_token
from infra.http import bearer_scheme
from ws_edge.adapters.direct_ws import abort_transport
from ws_edge.domain.limits import AbuseMeter, TokenBucket
from ws_edge.domain.position import Spans, decode_position
from ws_edge.hub import Admission, Hub
from ws_edge.settings import Settings
from ws_edge.sse import SseConnection, open_stream

log = logging.getLogger(__name__)
router = APIRouter(tags=["events"])

RETRY_MS = 2000


class EventStream(Response):
    """A streaming answer driven by a hub connection (its writer task writes the events)."""

    media_type = "text/event-stream"

    def __init__(
        self, hub: Hub, settings: Settings, claims: Claims, position: dict[str, Spans] | None
    ) -> None:
        super().__init__(
            status_code=200,
            headers={"cache-control": "no-store", "x-accel-buffering": "no"},
            media_type=self.media_type,
        )
        # a stream has no length: drop the `content-length: 0` of an empty Response
        self.raw_headers = [(k, v) for k, v in self.raw_headers if k != b"content-length"]
        self.hub = hub
        self.settings = settings
        self.claims = claims
        self.position = position

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        ended = asyncio.Event()

        async def write(text: str) -> None:
            await send({"type": "http.response.body", "body": text.encode(), "more_body": True})

        async def close(code: int, reason: str) -> None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(write(f": closed {code} {reason}\n\n"), 1.0)
            ended.set()

        settings = self.settings
        # A fresh stream (no position) starts "now": it is brought to the live edge before
        # the answer starts, so every message stored once the client sees the stream open
        # reaches it (frames meanwhile are held for it in order). A resume is defined by its
        # position instead, and its replay may be long (it needs the stream flowing).
        fresh = self.position is None
        conn = SseConnection(
            self.claims,
            write,
            close,
            settings.send_queue_frames,
            TokenBucket(settings.rate_burst, settings.rate_per_second, time.monotonic()),
            AbuseMeter(settings.abuse_refusals, settings.abuse_window_seconds),
            held=True,  # nothing is written before the answer starts (`open` below)
        )
        # the user's connection limit, taken here where the stream's end is sure to give it
        # back (see Hub.admit: counted and registered in one step)
        hub = self.hub
        admission = await hub.admit(conn.user_id, conn.id, settings.max_connections_per_user)
        if admission is Admission.REFUSED:
            refused = _error(429, ErrorCode.RATE_LIMITED, "too many connections for this user")
            await refused(scope, receive, send)
            return
        registered = admission is Admission.REGISTERED
        conn.push_comment(f"stream of {conn.user_id}\nretry: {RETRY_MS}")
        if fresh:
            refusal = await hub.attach_held(conn, open_stream(hub, conn, None, registered))
            if refusal is not None:
                await _error(*refusal)(scope, receive, send)
                return
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        except BaseException:
            conn.closed = True
            await hub.detach(conn)
            raise
        conn.open(None)

        async def watch_disconnect() -> None:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    ended.set()
                    return

        async def heartbeat() -> None:
            while not conn.closed:
                await asyncio.sleep(settings.sse_heartbeat_seconds)
                conn.push_comment("heartbeat")

        helpers = [asyncio.create_task(watch_disconnect()), asyncio.create_task(heartbeat())]
        try:
            if not fresh:
                await open_stream(hub, conn, self.position, registered)
            await ended.wait()
        except TimeoutError:
            # a service did not answer while the stream was opened (overload): the client
            # reconnects with its last event id; not a fault of this code, so no traceback
            log.warning("event stream ended: a service did not answer in time")
        except Exception:
            log.exception("event stream failed")
        finally:
            for task in helpers:
                task.cancel()
            await hub.detach(conn)
            if conn.writer is not None:
                conn.writer.cancel()
            end = {"type": "http.response.body", "body": b"", "more_body": False}
            try:
                await asyncio.wait_for(send(end), settings.close_timeout_seconds)
            except TimeoutError:
                # a peer that does not read cannot take the stream's end either (it was cut
                # off for that): drop the socket, as a WebSocket's stuck close is
                abort_transport(receive)
                await asyncio.sleep(0)  # the server sees the loss before this answer returns
            except Exception:
                log.debug("event stream ended by the peer")


def _error(status: int, code: ErrorCode | str, message: str) -> Response:
    return Response(
        ErrorBody.of(code, message).model_dump_json(),
        status_code=status,
        media_type="application/json",
    )


def _json_error(description: str) -> dict[str, Any]:
    """A refusal is JSON, not an event: spelled out, since a `model` here would be listed under
    the route's own media type (text/event-stream)."""
    schema = {"$ref": "#/components/schemas/ErrorBody"}  # the edge's other routes define it
    return {"description": description, "content": {"application/json": {"schema": schema}}}


@router.get(
    "/events",
    summary="Server-sent events: the WebSocket's server frames, resumable with Last-Event-ID",
    description=(
        "`Accept: text/event-stream`. Token as `Authorization: Bearer` or `?token=`. Each frame "
        "is one event: `event:` its type, `data:` its JSON; frames that move the position "
        "(`message_created`, `room_created`, `synced`) carry `id:`, an opaque position valid on "
        "any edge node. Reconnecting with `Last-Event-ID` (or `?lastEventId=`) replays every "
        "message after it exactly once (from history), then `synced`. Comment heartbeats every "
        "15 s."
    ),
    response_class=EventStream,
    status_code=200,  # EventStream has no default status: OpenAPI generation needs one
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "the event stream"},
        401: _json_error("missing, invalid or expired token"),
        429: _json_error("too many connections for this user"),
        503: _json_error("node going away: connect to another"),
    },
)
async def events(
    request: Request,
    _scheme: Annotated[HTTPAuthorizationCredentials | None, Security(bearer_scheme)] = None,
    token: Annotated[
        str | None, Query(description="the token, for clients that cannot set headers")
    ] = None,
    last_event_id: Annotated[
        str | None,
        Header(alias="Last-Event-ID", description="resume after this event (browsers send it)"),
    ] = None,
    last_event_id_query: Annotated[
        str | None, Query(alias="lastEventId", description="the same, as a query parameter")
    ] = None,
) -> Response:
    hub: Hub = request.app.state.hub
    settings: Settings = request.app.state.settings
    if hub.stopping:
        return _error(503, ErrorCode.UNAVAILABLE, "node going away")
    given = bearer_token(request.headers.get("authorization")) or token or ""
    try:
        claims = hub.tokens.verify(given)
    except ChatError as exc:
        return _error(401, exc.code, exc.message)
    last = last_event_id or last_event_id_query
    position = decode_position(last) if last else None
    if last and position is None:
        log.info("ignoring a Last-Event-ID that is not a position of ours")
    return EventStream(hub, settings, claims, position)
