"""`/ws` asked over plain HTTP: a 426 naming what is missing, in the contract's error shape."""

from __future__ import annotations

from fastapi.testclient import TestClient

from ws_edge.app import create_app
from ws_edge.settings import Settings


def test_plain_get_of_ws_is_426_upgrade_required() -> None:
    """On the edge's whole app (its lifespan not started: no NATS or Redis needed), GET and
    HEAD /ws without a WebSocket handshake (a browser tab, curl) are told to upgrade: 426 with
    `Upgrade: websocket`, the JSON error body and the usual security headers, not a 404."""
    client = TestClient(create_app(Settings()))
    got = client.get("/ws?token=x")
    assert got.status_code == 426
    assert got.headers["upgrade"] == "websocket"
    assert got.headers["x-content-type-options"] == "nosniff"
    assert got.json()["error"]["code"] == "upgrade_required"
    assert "WebSocket handshake" in got.json()["error"]["message"]
    head = client.head("/ws")
    assert head.status_code == 426
    assert head.headers["upgrade"] == "websocket"
