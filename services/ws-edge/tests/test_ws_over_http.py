"""`/ws` asked over plain HTTP: a 426 naming what is missing, in the contract's error shape."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.testclient import TestClient

from ws_edge.entrypoints.ws import router


def test_plain_get_of_ws_is_426_upgrade_required() -> None:
    """A GET /ws without a WebSocket handshake (a browser tab, curl) is told to upgrade, with
    the JSON error body and an `Upgrade: websocket` header, not a 404."""
    app = FastAPI()
    app.include_router(router)
    with TestClient(app) as client:
        got = client.get("/ws?token=x")
    assert got.status_code == 426
    assert got.headers["upgrade"] == "websocket"
    assert got.json()["error"]["code"] == "upgrade_required"
    assert "WebSocket handshake" in got.json()["error"]["message"]
