"""Tokens never reach a log line: every service's log of the session is scanned (runs last)."""

from __future__ import annotations

import re

import httpx
from security_helpers import SecureMesh, auth, connect, handshake_status, roundtrip, users

from mesh.testing import Infra

JWT = re.compile(r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
TOKEN_QUERY = re.compile(r"token=(?!\[redacted\])[A-Za-z0-9_.-]{8,}", re.IGNORECASE)


async def test_no_token_in_any_log(secure: SecureMesh, infra: Infra) -> None:
    """After WS handshakes (good and bad), refreshes and bearer calls, no log holds a token."""
    alice, bob = await users(secure.mesh, "Alice", "Bob")
    tokens = [alice["token"], bob["token"]]
    for edge in (0, 1):
        client = await connect(secure.ws_url(edge, alice["token"]), alice["id"])
        await client.send({"action": "refresh", "token": bob["token"], "requestId": "x"})
        await client.send({"action": "refresh", "token": alice["token"], "requestId": "y"})
        await roundtrip(client)
        await client.close()
        await handshake_status(secure.ws_url(edge, alice["token"] + "tampered"))
    async with httpx.AsyncClient(timeout=10) as http:
        fresh = await http.post(f"{secure.users.url}/token", headers=auth(alice["token"]))
        tokens.append(fresh.json()["token"])
        for url in (f"{secure.rooms.url}/rooms", f"{secure.history.url}/rooms/r/messages"):
            await http.get(url, headers=auth(alice["token"]))
            await http.get(url, params={"token": alice["token"]})
        await http.get(f"{secure.edges[0].url}/events", params={"token": "bad" + alice["token"]})
    logs = sorted(infra.workdir.rglob("*.log"))  # forked meshes log in subfolders
    assert logs
    scanned = 0
    # uvicorn logs every handshake with its query: the lines are there, the token is not
    assert any("token=[redacted]" in p.read_text(errors="replace") for p in logs)
    for path in logs:
        text = path.read_text(errors="replace")
        scanned += text.count("\n")
        for token in tokens:
            assert token not in text, path.name
            assert token.split(".")[2] not in text, path.name  # not even the signature
        assert not JWT.search(text), (path.name, JWT.search(text))
        assert not TOKEN_QUERY.search(text), (path.name, TOKEN_QUERY.search(text))
    print(f"\nscanned {len(logs)} log files, {scanned} lines: no token")
