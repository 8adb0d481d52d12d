"""HTTP routes of the edge: the web client page, its config, health."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from contracts.errors import ChatError, ErrorCode
from contracts.rest import ClientConfig

router = APIRouter()

STATIC = Path(__file__).resolve().parent.parent / "static"
STATIC_FILES = {
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
}
# the page talks to the services named by /config (other ports) and to this node's WebSocket
PAGE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' https: http: data:; "
    "connect-src 'self' http: https: ws: wss:; frame-ancestors 'none'; base-uri 'none'; "
    "form-action 'self'"
)


@cache
def _static(name: str) -> bytes:
    return (STATIC / name).read_bytes()


# HEAD too: uptime checks and link previews ask for the page that way (uvicorn sends no body)
@router.api_route(
    "/", methods=["GET", "HEAD"], response_class=HTMLResponse, include_in_schema=False
)
async def index() -> HTMLResponse:
    """The web client (static/index.html, plain HTML/CSS/JS: no build step)."""
    return HTMLResponse(_static("index.html"), headers={"content-security-policy": PAGE_CSP})


@router.get("/static/{name}", include_in_schema=False)
async def static_file(name: str) -> Response:
    media_type = STATIC_FILES.get(name)
    if media_type is None:
        raise ChatError(ErrorCode.NOT_FOUND, "no such file", 404)
    return Response(_static(name), media_type=media_type)


@router.get("/config", summary="Addresses of the services, for the web client")
async def config(request: Request) -> ClientConfig:
    settings = request.app.state.settings
    return ClientConfig(
        usersUrl=settings.public_users_url,
        roomsUrl=settings.public_rooms_url,
        historyUrl=settings.public_history_url,
        node=settings.node_id,
        requestTimeoutMs=round(settings.web_request_timeout_seconds * 1000),
    )
