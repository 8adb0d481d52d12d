"""GET /config: what the web client is told (service addresses, node, request timeout)."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from ws_edge.entrypoints.http import router
from ws_edge.settings import Settings


def config_of(settings: Settings) -> dict[str, object]:
    app = FastAPI()
    app.state.settings = settings
    app.include_router(router)
    with TestClient(app) as client:
        response = client.get("/config")
    assert response.status_code == 200
    body: dict[str, object] = response.json()
    return body


def test_config_names_the_services_and_the_request_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """CHAT_WEB_REQUEST_TIMEOUT_SECONDS reaches the page in milliseconds (default 15 s)."""
    assert config_of(Settings())["requestTimeoutMs"] == 15_000
    monkeypatch.setenv("CHAT_WEB_REQUEST_TIMEOUT_SECONDS", "2.5")
    monkeypatch.setenv("CHAT_NODE_ID", "n7")
    monkeypatch.setenv("CHAT_PUBLIC_ROOMS_URL", "https://rooms.example")
    config = config_of(Settings())
    assert config["requestTimeoutMs"] == 2_500
    assert config["node"] == "n7"
    assert config["roomsUrl"] == "https://rooms.example"


def test_request_timeout_must_be_positive_and_bounded() -> None:
    """Zero or more than five minutes is refused at start."""
    for bad in (0, -1, 301):
        with pytest.raises(ValueError, match="web_request_timeout_seconds"):
            Settings(web_request_timeout_seconds=bad)


def test_the_page_answers_head_as_get() -> None:
    """HEAD / (uptime checks, link previews) is 200 with the page's headers, not 405."""
    app = FastAPI()
    app.state.settings = Settings()
    app.include_router(router)
    with TestClient(app) as client:
        got, head = client.get("/"), client.head("/")
    assert got.status_code == head.status_code == 200
    assert head.headers["content-type"] == got.headers["content-type"]
    assert head.headers["content-security-policy"] == got.headers["content-security-policy"]
    assert head.content == b""
