"""HTTP routes of the edge: the web client page, its config, health."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

router = APIRouter()

PLACEHOLDER = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>chat edge</title></head>
<body><main><h1>chat edge node</h1>
<p>WebSocket endpoint: <code>/ws?token=&lt;token&gt;</code>.
Service addresses: <a href="/config">/config</a>.</p>
</main></body></html>"""


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def index() -> HTMLResponse:
    return HTMLResponse(PLACEHOLDER)


@router.get("/config", summary="Addresses of the services, for the web client")
async def config(request: Request) -> dict[str, str]:
    settings = request.app.state.settings
    return {
        "usersUrl": settings.public_users_url,
        "roomsUrl": settings.public_rooms_url,
        "historyUrl": settings.public_history_url,
        "node": settings.node_id,
    }
