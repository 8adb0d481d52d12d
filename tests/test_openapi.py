"""Every service's OpenAPI document says what its answers are: the bearer scheme on every call
that needs a token, and no FastAPI 422 (invalid input is a 400 with the contract's body)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi import FastAPI

PUBLIC = {  # calls without a token (CONTRACT.md section 2)
    "POST /users",
    "GET /healthz",
    "GET /readyz",
    "GET /config",
    "GET /",
    "GET /metrics",
}


def _apps() -> dict[str, FastAPI]:
    from history_service.app import create_app as history
    from history_service.settings import Settings as HistorySettings
    from rooms_service.app import create_app as rooms
    from users_service.app import create_app as users
    from ws_edge.app import create_app as edge

    return {
        "users": users(),
        "rooms": rooms(),
        "history": history(HistorySettings()),
        "edge": edge(),
    }


@pytest.mark.parametrize("service", ["users", "rooms", "history", "edge"])
def test_token_calls_declare_the_bearer_scheme_and_no_422(service: str) -> None:
    """Each call of the service that is not public lists the bearer scheme; none lists 422."""
    doc: dict[str, Any] = _apps()[service].openapi()
    assert "HTTPBearer" in doc["components"]["securitySchemes"]
    unsecured = [
        f"{method.upper()} {path}"
        for path, item in doc["paths"].items()
        for method, operation in item.items()
        if not operation.get("security") and f"{method.upper()} {path}" not in PUBLIC
    ]
    assert unsecured == []
    assert '"422"' not in json.dumps(doc["paths"])
    assert "HTTPValidationError" not in doc["components"].get("schemas", {})


def test_paging_link_and_queued_answers_are_described() -> None:
    """History's page declares its `Link` header and its 503; the edge's HTTP send declares
    the 202 body (`{roomId, messageId}`)."""
    apps = _apps()
    history = apps["history"].openapi()["paths"]["/rooms/{room_id}/messages"]["get"]
    assert "Link" in history["responses"]["200"]["headers"]
    assert "503" in history["responses"]
    send = apps["edge"].openapi()["paths"]["/rooms/{room_id}/messages"]["post"]
    queued = send["responses"]["202"]["content"]["application/json"]["schema"]
    assert queued == {"$ref": "#/components/schemas/MessageQueued"}


def test_inputs_and_answers_have_their_schemas() -> None:
    """History's paging parameters are integers with their bounds, the message body states
    the content and id rules, `/events` refusals are JSON (not events), and `/config` has a
    schema."""
    apps = _apps()
    history = apps["history"].openapi()["paths"]["/rooms/{room_id}/messages"]["get"]
    params = {p["name"]: p["schema"] for p in history["parameters"]}
    assert params["limit"]["type"] == "integer"
    assert (params["limit"]["minimum"], params["limit"]["maximum"]) == (1, 200)
    assert params["before"]["type"] == params["after"]["type"] == "integer"
    edge = apps["edge"].openapi()
    body = edge["components"]["schemas"]["SendMessageRequest"]["properties"]
    assert (body["content"]["minLength"], body["content"]["maxLength"]) == (1, 4000)
    assert body["messageId"]["pattern"] == "^[A-Za-z0-9_.:\\-]{1,128}$"
    events = edge["paths"]["/events"]["get"]["responses"]
    for status in ("401", "429", "503"):
        assert list(events[status]["content"]) == ["application/json"], status
        ref = events[status]["content"]["application/json"]["schema"]["$ref"]
        assert ref.rsplit("/", 1)[-1] in edge["components"]["schemas"]
    assert list(events["200"]["content"]) == ["text/event-stream"]
    config = edge["paths"]["/config"]["get"]["responses"]["200"]["content"]["application/json"]
    assert config["schema"] == {"$ref": "#/components/schemas/ClientConfig"}
    users = apps["users"].openapi()["components"]["schemas"]["CreateUserRequest"]["properties"]
    assert users["name"]["minLength"] == 1
