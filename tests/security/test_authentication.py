"""Authentication: every HTTP call and every WebSocket handshake needs a valid, pinned token."""

from __future__ import annotations

import httpx
from security_helpers import (
    SecureMesh,
    auth,
    connect,
    handshake_status,
    hostile_tokens,
    roundtrip,
    user,
)

AUTH_CODES = {"unauthorized", "token_expired"}


def _protected(secure: SecureMesh, room_id: str, user_id: str) -> list[tuple[str, str]]:
    return [
        ("GET", f"{secure.users.url}/users"),
        ("GET", f"{secure.users.url}/users/{user_id}"),
        ("POST", f"{secure.users.url}/token"),
        ("GET", f"{secure.rooms.url}/rooms"),
        ("POST", f"{secure.rooms.url}/rooms"),
        ("GET", f"{secure.history.url}/rooms/{room_id}/messages"),
    ]


async def test_hostile_tokens_refused_by_every_http_service(secure: SecureMesh) -> None:
    """Forged, unsigned (alg none), re-algorithmed, expired, truncated tokens: 401 everywhere."""
    mesh = secure.mesh
    alice = await user(mesh, "Alice")
    tokens = hostile_tokens(alice["token"], alice["id"])
    async with httpx.AsyncClient(timeout=10) as http:
        for method, url in _protected(secure, "room_x", alice["id"]):
            for kind, token in tokens.items():
                if not token:
                    continue  # an empty value is the "no header" case below
                r = await http.request(method, url, headers=auth(token), json={"participants": []})
                assert r.status_code == 401, (method, url, kind, r.status_code, r.text)
                assert r.json()["error"]["code"] in AUTH_CODES, (kind, r.text)
            for headers in (
                {},
                {"authorization": f"Basic {alice['token']}"},
                {"authorization": "Bearer"},
            ):
                r = await http.request(method, url, headers=headers, json={"participants": []})
                assert r.status_code == 401, (method, url, headers, r.text)
            good = await http.request(
                method, url, headers=auth(alice["token"]), json={"participants": []}
            )
            assert good.status_code not in (401, 500, 502, 503), (url, good.text)


async def test_hostile_tokens_refused_at_ws_handshake_on_both_nodes(secure: SecureMesh) -> None:
    """Each hostile token gets HTTP 401 with the JSON error body at the handshake."""
    mesh = secure.mesh
    alice = await user(mesh, "Alice")
    for edge in (0, 1):
        for kind, token in hostile_tokens(alice["token"], alice["id"]).items():
            status, body = await handshake_status(secure.ws_url(edge, token))
            if kind == "huge" and status == 414:
                continue  # the request line is refused before the app sees it
            assert status == 401, (edge, kind, status)
            assert body is not None, kind
            assert body["error"]["code"] in AUTH_CODES, (kind, body)
        base = mesh.edges[edge].replace("http://", "ws://")
        status, _ = await handshake_status(f"{base}/ws")
        assert status == 401


async def test_refresh_with_hostile_tokens_keeps_identity(secure: SecureMesh) -> None:
    """`refresh` with a forged or foreign token is an error frame; the connection stays itself."""
    mesh = secure.mesh
    alice = await user(mesh, "Alice")
    mallory = await user(mesh, "Mallory")
    client = await connect(secure.ws_url(0, alice["token"]), alice["id"])
    try:
        candidates = {**hostile_tokens(alice["token"], alice["id"]), "foreign": mallory["token"]}
        candidates.pop("empty")
        candidates["huge"] = candidates["huge"][:4000]
        for kind, token in candidates.items():
            await client.send({"action": "refresh", "token": token, "requestId": kind})
            frame = await client.wait_for(lambda f, k=kind: f.get("requestId") == k)
            assert frame["type"] == "error", (kind, frame)
        synced = await roundtrip(client)
        assert synced["type"] == "synced"
        assert not client.closed.is_set()
    finally:
        await client.close()
