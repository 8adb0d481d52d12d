"""Helpers of the security tests: the tuned mesh, raw WebSocket clients, token forgery."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
import uuid
import warnings
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
import websockets
from chat_client import Mesh, WsClient, create_user, now_iso

from mesh.testing import TEST_SECRET, ServiceProcess


@dataclass
class SecureMesh:
    """The security package's mesh: processes (pids, logs) and contract addresses."""

    users: ServiceProcess
    rooms: ServiceProcess
    history: ServiceProcess
    edges: list[ServiceProcess]
    redis_url: str  # the mesh's own Redis (the launcher is isolated: Infra.fork)

    @property
    def mesh(self) -> Mesh:
        return Mesh(self.users.url, self.rooms.url, self.history.url, [e.url for e in self.edges])

    def ws_url(self, edge: int, token: str) -> str:
        return self.mesh.ws_url(edge, token)

    def alive(self) -> bool:
        procs = [self.users, self.rooms, self.history, *self.edges]
        return all(p.popen is not None and p.popen.poll() is None for p in procs)


def auth(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


async def user(mesh: Mesh, name: str) -> dict[str, Any]:
    return await create_user(mesh, name)


async def users(mesh: Mesh, *names: str) -> list[dict[str, Any]]:
    return [await create_user(mesh, name) for name in names]


async def connect(url: str, user_id: str, **kwargs: Any) -> WsClient:
    """A recording client (see chat_client.WsClient); kwargs go to websockets.connect."""
    kwargs.setdefault("max_size", 2**22)
    ws = await websockets.connect(url, open_timeout=10, **kwargs)
    client = WsClient(ws, user_id)
    client.reader = asyncio.create_task(client._read())
    return client


async def make_room(client: WsClient, participants: list[str]) -> dict[str, Any]:
    rid = uuid.uuid4().hex
    await client.send({"action": "create_room", "participants": participants, "requestId": rid})
    frame = await client.wait_for(
        lambda f: f.get("requestId") == rid and f.get("type") in ("room_created", "error")
    )
    assert frame["type"] == "room_created", frame
    room: dict[str, Any] = frame["room"]
    return room


async def roundtrip(client: WsClient, wait: float = 10.0) -> dict[str, Any]:
    """Send a `sync` and wait for its `synced`: the connection is alive and served."""
    rid = "probe-" + uuid.uuid4().hex[:8]
    await client.send({"action": "sync", "rooms": {}, "requestId": rid})
    return await client.wait_for(
        lambda f: f.get("requestId") == rid and f.get("type") == "synced", wait
    )


def message_frame(room_id: str, sender: str, content: str = "hi", **extra: Any) -> dict[str, Any]:
    return {
        "action": "create_message",
        "roomId": room_id,
        "messageId": str(uuid.uuid4()),
        "content": content,
        "senderId": sender,
        "createdAt": now_iso(),
        **extra,
    }


async def handshake_status(url: str, **kwargs: Any) -> tuple[int, dict[str, Any] | None]:
    """The HTTP status of a refused handshake and its JSON body (101 when accepted)."""
    try:
        ws = await websockets.connect(url, open_timeout=10, **kwargs)
    except websockets.InvalidStatus as exc:
        body = exc.response.body or b""
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            parsed = None
        return exc.response.status_code, parsed
    with contextlib.suppress(Exception):
        await ws.close()
    return 101, None


# --- tokens -------------------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims_for(user_id: str, ttl: int = 3600, **extra: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"sub": user_id, "iss": "chat", "iat": now, "exp": now + ttl, "jti": "x", **extra}


def _hs512(claims: dict[str, Any]) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PyJWT warns about the key length for SHA-512
        return jwt.encode(claims, TEST_SECRET, "HS512")


def hostile_tokens(valid: str, user_id: str) -> dict[str, str]:
    """Tokens an attacker could present; none may be accepted anywhere."""
    header, payload, signature = valid.split(".")
    unsigned_header = _b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    body = _b64(json.dumps(claims_for(user_id)).encode())
    return {
        "empty": "",
        "garbage": "not-a-token",
        "truncated": valid[: len(valid) - 5],
        "no_signature": f"{header}.{payload}.",
        "alg_none": f"{unsigned_header}.{body}.",
        "alg_none_upper": f"{_b64(json.dumps({'alg': 'None'}).encode())}.{body}.",
        "wrong_secret": jwt.encode(claims_for(user_id), "another-secret-" + "y" * 40, "HS256"),
        "hs512_same_secret": _hs512(claims_for(user_id)),
        "expired": jwt.encode(claims_for(user_id, ttl=-3600), TEST_SECRET, "HS256"),
        "wrong_issuer": jwt.encode(claims_for(user_id, iss="evil"), TEST_SECRET, "HS256"),
        "no_subject": jwt.encode(
            {k: v for k, v in claims_for(user_id).items() if k != "sub"}, TEST_SECRET, "HS256"
        ),
        "tampered_subject": f"{header}.{_b64(json.dumps(claims_for('user_other')).encode())}."
        + signature,
        "huge": "a" * 20_000,
    }


async def http_get(url: str, token: str | None = None, **kwargs: Any) -> httpx.Response:
    headers = auth(token) if token is not None else {}
    headers.update(kwargs.pop("headers", {}))
    async with httpx.AsyncClient(timeout=10) as http:
        return await http.get(url, headers=headers, **kwargs)
