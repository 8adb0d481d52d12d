"""Settings refuse default secrets outside development; the HTTP plumbing keeps the error shape."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import BaseModel, ValidationError

from contracts.rest import CreateUserRequest
from infra.auth import TokenService
from infra.http import CurrentUserId, install_common_middleware, install_error_handlers
from infra.settings import DEV_JWT_SECRET, CommonSettings


def test_production_requires_a_real_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    """CHAT_ENV=production without a strong CHAT_JWT_SECRET refuses to start."""
    monkeypatch.setenv("CHAT_ENV", "production")
    monkeypatch.delenv("CHAT_JWT_SECRET", raising=False)
    with pytest.raises(ValidationError):
        CommonSettings()
    monkeypatch.setenv("CHAT_JWT_SECRET", DEV_JWT_SECRET)
    with pytest.raises(ValidationError):
        CommonSettings()
    monkeypatch.setenv("CHAT_JWT_SECRET", "short")
    with pytest.raises(ValidationError):
        CommonSettings()
    monkeypatch.setenv("CHAT_JWT_SECRET", "z" * 40)
    assert CommonSettings().jwt_secret == "z" * 40


def test_development_gets_the_dev_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    """Development mode without a secret uses the well-known development one."""
    monkeypatch.delenv("CHAT_JWT_SECRET", raising=False)
    monkeypatch.setenv("CHAT_ENV", "development")
    assert CommonSettings().jwt_secret == DEV_JWT_SECRET


class Echo(BaseModel):
    ok: bool


def _app() -> FastAPI:
    app = FastAPI()
    app.state.tokens = TokenService("k" * 40, "chat", 60, 0)
    install_error_handlers(app)
    settings = CommonSettings(max_body_bytes=1024, cors_origins="http://allowed.example")
    install_common_middleware(app, settings)

    @app.post("/users")
    async def create(body: CreateUserRequest) -> Echo:
        return Echo(ok=bool(body.name))

    @app.get("/me")
    async def me(user: CurrentUserId) -> dict[str, str]:
        return {"id": user}

    return app


def test_error_shapes() -> None:
    """Bad JSON (also bytes that are not UTF-8), arrays, wrong types, unknown routes, missing
    tokens: 4xx in the JSON shape."""
    client = TestClient(_app())
    cases = [
        (
            client.post("/users", content=b"{bad", headers={"content-type": "application/json"}),
            400,
            "invalid_json",
        ),
        (
            client.post(
                "/users", content=b"\xff\xfe", headers={"content-type": "application/json"}
            ),
            400,
            "invalid_json",
        ),
        (client.post("/users", json=[1, 2]), 400, "validation_error"),
        (client.post("/users"), 400, "validation_error"),
        (client.post("/users", json={"name": 5}), 400, "invalid_name"),
        (
            client.post("/users", json={"name": "a", "avatar": "javascript:x"}),
            400,
            "invalid_avatar",
        ),
        (
            client.post(
                "/users", content=b"x" * 2000, headers={"content-type": "application/json"}
            ),
            413,
            "payload_too_large",
        ),
        (client.get("/nope"), 404, "not_found"),
        (client.get("/me"), 401, "unauthorized"),
        (client.get("/me", headers={"authorization": "Bearer junk"}), 401, "unauthorized"),
        (client.put("/users", json={}), 405, "method_not_allowed"),
    ]
    for response, status, code in cases:
        assert response.status_code == status, response.text
        assert response.json()["error"]["code"] == code
        assert response.json()["error"]["message"]
    assert cases[0][0].headers["x-content-type-options"] == "nosniff"
    assert cases[3][0].json()["error"]["message"] == "request body required: a JSON object"


def test_streamed_body_over_limit() -> None:
    """A chunked body over the limit is refused with 413 even without Content-Length."""
    client = TestClient(_app())

    def chunks():  # type: ignore[no-untyped-def]
        for _ in range(10):
            yield b"x" * 200

    response = client.post("/users", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"


def test_cors_only_for_allowed_origins() -> None:
    """CORS headers are given to configured origins only."""
    client = TestClient(_app())
    ok = client.options(
        "/users",
        headers={"origin": "http://allowed.example", "access-control-request-method": "POST"},
    )
    assert ok.headers.get("access-control-allow-origin") == "http://allowed.example"
    bad = client.options(
        "/users", headers={"origin": "http://evil.example", "access-control-request-method": "POST"}
    )
    assert "access-control-allow-origin" not in bad.headers
    assert bad.status_code == 403  # refused in the contract's error shape, not plain text
    assert bad.json()["error"]["code"] == "forbidden"
    bad_header = client.options(
        "/users",
        headers={
            "origin": "http://allowed.example",
            "access-control-request-method": "POST",
            "access-control-request-headers": "x-not-allowed",
        },
    )
    assert bad_header.status_code == 403
    assert bad_header.json()["error"]["code"] == "forbidden"
    assert "CHAT_CORS_ORIGINS" not in bad_header.json()["error"]["message"]  # not the origin
    assert bad_header.headers["access-control-allow-origin"] == "http://allowed.example"
    assert "CHAT_CORS_ORIGINS" in bad.json()["error"]["message"]
