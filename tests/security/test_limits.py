"""Limits: frames, content, participants, connections, rates, pages and bodies, each with a code."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import redis.asyncio as aioredis
import websockets
from chat_client import WsClient
from security_helpers import (
    SecureMesh,
    auth,
    connect,
    handshake_status,
    http_get,
    make_room,
    message_frame,
    roundtrip,
    users,
)
from websockets.frames import Frame, Opcode

from conftest import ALLOWED_ORIGIN, HEADER_TIMEOUT_SECONDS
from mesh.testing import Infra


def _errors(client: WsClient, code: str) -> list[dict[str, object]]:
    return [f for f in client.of_type("error") if f["error"]["code"] == code]  # type: ignore[index]


async def test_frame_size_error_then_1009(secure: SecureMesh) -> None:
    """Over 64 KiB: `frame_too_large`, connection kept; over the hard limit: close 1009."""
    (alice,) = await users(secure.mesh, "Alice")
    client = await connect(secure.ws_url(0, alice["token"]), alice["id"])
    try:
        await client.ws.send(json.dumps({"action": "sync", "rooms": {}, "pad": "x" * 70_000}))
        await client.wait_for(lambda f: f.get("type") == "error")
        assert _errors(client, "frame_too_large")
        await roundtrip(client)
        await client.ws.send("x" * 300_000)
        await asyncio.wait_for(client.closed.wait(), 10)
        assert client.close_code == 1009
    finally:
        await client.close()


async def test_content_length_and_participants(secure: SecureMesh) -> None:
    """4,001 characters: `invalid_content`; more than the room limit (5 here): refused."""
    alice, *others = await users(secure.mesh, "Alice", "B", "C", "D", "E", "F")
    client = await connect(secure.ws_url(0, alice["token"]), alice["id"])
    try:
        room = await make_room(client, [u["id"] for u in others[:4]])
        assert len(room["participants"]) == 5
        await client.send(message_frame(room["id"], alice["id"], "é" * 4001, requestId="long"))
        err = await client.wait_for(lambda f: f.get("requestId") == "long")
        assert err["error"]["code"] == "invalid_content"
        await client.send(message_frame(room["id"], alice["id"], "é" * 4000, requestId="ok"))
        ok = await client.wait_for(lambda f: f.get("requestId") == "ok")
        assert ok["type"] == "message_created"
        ids = [u["id"] for u in others]
        await client.send({"action": "create_room", "participants": ids, "requestId": "big"})
        err = await client.wait_for(lambda f: f.get("requestId") == "big")
        assert err["error"]["code"] == "too_many_participants"
        async with httpx.AsyncClient(timeout=10) as http:
            r = await http.post(
                f"{secure.rooms.url}/rooms",
                json={"participants": ids},
                headers=auth(alice["token"]),
            )
        assert r.status_code == 400
        assert r.json()["error"]["code"] == "too_many_participants"
    finally:
        await client.close()


async def _count(redis: aioredis.Redis, user_id: str, want: int) -> None:
    for _ in range(100):
        if await redis.hlen(f"chat:conns:{user_id}") == want:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"connection map never reached {want}")


async def test_connections_per_user_across_nodes(secure: SecureMesh, infra: Infra) -> None:
    """3 connections (2 nodes) allowed; the 4th, on either node, is refused with 429 + JSON."""
    (alice,) = await users(secure.mesh, "Alice")
    redis = aioredis.from_url(secure.redis_url)
    clients = [await connect(secure.ws_url(i, alice["token"]), alice["id"]) for i in (0, 1, 0)]
    try:
        await _count(redis, alice["id"], 3)
        for edge in (0, 1):
            status, body = await handshake_status(secure.ws_url(edge, alice["token"]))
            assert status == 429
            assert body is not None
            assert body["error"]["code"] == "rate_limited"
        await clients.pop().close()
        await _count(redis, alice["id"], 2)
        clients.append(await connect(secure.ws_url(1, alice["token"]), alice["id"]))
        await roundtrip(clients[-1])
    finally:
        for c in clients:
            await c.close()
        await redis.aclose()


async def test_connection_limit_holds_under_a_burst_of_handshakes(secure: SecureMesh) -> None:
    """30 handshakes of one token at once, over both nodes: exactly 3 are accepted, the rest
    get 429, and the map holds 3 (the count and the registration are one step); once they
    close, 3 new ones are accepted again."""
    (mallory,) = await users(secure.mesh, "Mallory")
    redis = aioredis.from_url(secure.redis_url)
    opened: list[websockets.ClientConnection] = []

    async def attempt(edge: int) -> int:
        try:
            ws = await websockets.connect(
                secure.ws_url(edge, mallory["token"]), open_timeout=20, origin=ALLOWED_ORIGIN
            )
        except websockets.InvalidStatus as exc:
            return exc.response.status_code
        opened.append(ws)
        return 101

    try:
        statuses = await asyncio.gather(*(attempt(i % 2) for i in range(30)))
        assert sorted(statuses).count(101) == 3, statuses
        assert set(statuses) == {101, 429}
        await _count(redis, mallory["id"], 3)
        for ws in opened:
            await ws.close()
        await _count(redis, mallory["id"], 0)
        opened.clear()
        statuses = await asyncio.gather(*(attempt(i % 2) for i in range(6)))
        assert statuses.count(101) == 3, statuses
    finally:
        for ws in opened:
            await ws.close()
        await redis.aclose()


async def test_event_streams_count_against_the_same_limit(secure: SecureMesh) -> None:
    """10 `GET /events` of one token at once: 3 streams open, 7 get 429 with the JSON body;
    a WebSocket of that user is refused while they are open."""
    (mallory,) = await users(secure.mesh, "Mallory")
    opened: list[httpx.Response] = []
    async with httpx.AsyncClient(timeout=20) as http:

        async def attempt(edge: int) -> int:
            request = http.build_request(
                "GET", f"{secure.mesh.edges[edge]}/events", params={"token": mallory["token"]}
            )
            response = await http.send(request, stream=True)
            if response.status_code == 200:
                opened.append(response)
            else:
                body = json.loads(await response.aread())
                assert body["error"]["code"] == "rate_limited"
            return response.status_code

        try:
            statuses = await asyncio.gather(*(attempt(i % 2) for i in range(10)))
            assert statuses.count(200) == 3, statuses
            assert statuses.count(429) == 7, statuses
            status, _ = await handshake_status(
                secure.ws_url(0, mallory["token"]), origin=ALLOWED_ORIGIN
            )
            assert status == 429
        finally:
            for response in opened:
                await response.aclose()


async def _burst(client: WsClient, token: str, count: int, tag: str) -> None:
    for i in range(count):
        await client.send({"action": "refresh", "token": token, "requestId": f"{tag}{i}"})


def _answered(client: WsClient, tag: str) -> int:
    """Answers to a burst: its `refreshed` frames plus `rate_limited` refusals (no requestId:
    a refused frame is not parsed)."""
    ok = [f for f in client.frames if str(f.get("requestId", "")).startswith(tag)]
    return len(ok) + len(_errors(client, "rate_limited"))


async def _all_answered(client: WsClient, tag: str, count: int) -> None:
    for _ in range(300):
        if _answered(client, tag) >= count:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{_answered(client, tag)}/{count} answered")


async def test_rate_per_connection_refuses_never_drops(secure: SecureMesh) -> None:
    """Beyond the bucket (200, +100/s) frames get `rate_limited`; every frame is answered."""
    (alice,) = await users(secure.mesh, "Alice")
    client = await connect(secure.ws_url(0, alice["token"]), alice["id"])
    try:
        await _burst(client, alice["token"], 270, "r")
        await _all_answered(client, "r", 270)
        limited = _errors(client, "rate_limited")
        print(f"per connection: {len(limited)} of 270 frames rate_limited")
        assert limited
        assert not client.closed.is_set()
    finally:
        await client.close()


async def test_rate_per_user_across_connections(secure: SecureMesh) -> None:
    """Two connections of one user share the user's bucket (300): each under its own, both
    together over it."""
    (alice,) = await users(secure.mesh, "Alice")
    a1 = await connect(secure.ws_url(0, alice["token"]), alice["id"])
    a2 = await connect(secure.ws_url(0, alice["token"]), alice["id"])
    try:
        await asyncio.gather(
            _burst(a1, alice["token"], 190, "u"), _burst(a2, alice["token"], 190, "u")
        )
        await _all_answered(a1, "u", 190)
        await _all_answered(a2, "u", 190)
        limited = len(_errors(a1, "rate_limited")) + len(_errors(a2, "rate_limited"))
        print(f"per user: {limited} of 380 frames rate_limited")
        assert limited > 0
    finally:
        await a1.close()
        await a2.close()


@contextlib.asynccontextmanager
async def _abuser_beside(
    secure: SecureMesh, name: str, **connect_options: Any
) -> AsyncIterator[tuple[WsClient, WsClient]]:
    """A client of user `name` about to misbehave, and another user's client on the same edge
    (which must stay served); both closed at the end."""
    abuser, bystander = await users(secure.mesh, name, "Bystander")
    bad = await connect(secure.ws_url(0, abuser["token"]), abuser["id"], **connect_options)
    good = await connect(secure.ws_url(0, bystander["token"]), bystander["id"])
    try:
        yield bad, good
    finally:
        await bad.close()
        await good.close()


async def test_abusive_client_closed_4429_others_unaffected(secure: SecureMesh) -> None:
    """100 refused frames within 10 s close the connection with 4429; another client is fine."""
    async with _abuser_beside(secure, "Alice") as (bad, good):
        for _ in range(150):
            if bad.closed.is_set():
                break
            await bad.ws.send("{not json")
        await asyncio.wait_for(bad.closed.wait(), 10)
        assert bad.close_code == 4429
        assert _errors(bad, "invalid_json")
        await roundtrip(good)


async def test_room_creation_is_rate_limited_per_user(secure: SecureMesh) -> None:
    """A user creates at most 30 rooms at once (CHAT_ROOM_CREATE_BURST), then 429
    `rate_limited` over HTTP and the same code over WS; another user still creates rooms."""
    alice, bob, carol = await users(secure.mesh, "Creator", "Invited", "Other")
    url = f"{secure.rooms.url}/rooms"
    async with httpx.AsyncClient(timeout=10) as http:
        statuses = []
        for _ in range(35):
            r = await http.post(
                url, json={"participants": [bob["id"]]}, headers=auth(alice["token"])
            )
            statuses.append(r.status_code)
            if r.status_code == 429:
                assert r.json()["error"]["code"] == "rate_limited"
                break
        assert statuses[-1] == 429, statuses
        assert 25 <= statuses.count(201) <= 31, statuses  # the burst, and what refilled meanwhile
        other = await http.post(
            url, json={"participants": [bob["id"]]}, headers=auth(carol["token"])
        )
        assert other.status_code == 201, other.text
    ws = await connect(secure.ws_url(0, alice["token"]), alice["id"])
    try:
        await ws.send({"action": "create_room", "participants": [bob["id"]], "requestId": "over"})
        refused = await ws.wait_for(lambda f: f.get("requestId") == "over")
        assert refused["type"] == "error"
        assert refused["error"]["code"] == "rate_limited"
    finally:
        await ws.close()


async def test_a_sync_naming_rooms_not_yours_counts_each_as_a_refusal(secure: SecureMesh) -> None:
    """Each named room the caller is not in gets its `error` frame (the contract) and counts
    as a refused frame: one `sync` naming 1,000 such rooms closes the connection with 4429
    instead of being answered with 1,000 frames a time at the full frame rate."""
    async with _abuser_beside(secure, "Namer") as (bad, good):
        rooms = {f"room_not_yours_{n}": 0 for n in range(1000)}
        await bad.send({"action": "sync", "rooms": rooms, "requestId": "many"})
        await asyncio.wait_for(bad.closed.wait(), 10)
        assert bad.close_code == 4429
        assert _errors(bad, "not_participant")  # refused with the contract's error frames
        await roundtrip(good)
        assert secure.alive()


async def test_a_ping_flood_is_refused_and_closed_4429(secure: SecureMesh) -> None:
    """Pings and pongs are frames too: 5,000 pings sent at once take the connection's frame
    bucket (200), each one beyond it is refused with `rate_limited`, and the connection is
    closed with 4429 like any abusive client; the node keeps serving others."""
    async with _abuser_beside(secure, "Pinger", ping_interval=None) as (bad, good):
        ping = Frame(Opcode.PING, b"p").serialize(mask=True, extensions=[])
        transport = bad.ws.transport
        for _ in range(10):  # 10 writes of 500 pings: no wait for any pong
            transport.write(ping * 500)
            await asyncio.sleep(0)
        await asyncio.wait_for(bad.closed.wait(), 10)
        assert bad.close_code == 4429
        refused = _errors(bad, "rate_limited")
        assert refused  # refused with a code, not dropped silently
        assert len(refused) <= 100  # the abuse meter's threshold (CHAT_ABUSE_REFUSALS)
        await roundtrip(good)
        assert secure.alive()


async def test_a_message_in_endless_fragments_is_closed_4429(secure: SecureMesh) -> None:
    """Empty continuation frames never reach the size limit: a text message that never ends,
    in 5,000 empty fragments, takes the frame bucket and the socket is failed with 4429; the
    node keeps serving others."""
    async with _abuser_beside(secure, "Fragmenter", ping_interval=None) as (bad, good):
        first = Frame(Opcode.TEXT, b"{", fin=False).serialize(mask=True, extensions=[])
        more = Frame(Opcode.CONT, b"", fin=False).serialize(mask=True, extensions=[])
        transport = bad.ws.transport
        transport.write(first)
        for _ in range(10):
            if transport.is_closing():
                break
            transport.write(more * 500)
            await asyncio.sleep(0)
        await asyncio.wait_for(bad.closed.wait(), 10)
        assert bad.close_code == 4429
        # a message in a few fragments is read as one, as before
        await good.ws.send(['{"action":"sync",', '"rooms":{},', '"requestId":"in-fragments"}'])
        await good.wait_for(
            lambda f: f.get("type") == "synced" and f.get("requestId") == "in-fragments"
        )
        assert secure.alive()


async def _answer_and_close(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes the connection (bounded wait)."""
    return await asyncio.wait_for(reader.read(), HEADER_TIMEOUT_SECONDS + 8)


async def test_requests_that_never_finish_get_408_and_are_closed(secure: SecureMesh) -> None:
    """A socket that sends nothing, one that stops in the middle of its headers, a kept-alive
    one whose next request stalls, and a body that stops short of its length: each is
    answered 408 with the JSON error body and closed after its deadline, on an API service and
    on an edge; others are served."""
    for proc in (secure.users, secure.edges[0]):
        silent = await asyncio.open_connection("127.0.0.1", proc.port)
        partial = await asyncio.open_connection("127.0.0.1", proc.port)
        partial[1].write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        kept = await asyncio.open_connection("127.0.0.1", proc.port)
        kept[1].write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        first = await asyncio.wait_for(kept[0].readuntil(b"\r\n\r\n"), 5)
        assert first.startswith(b"HTTP/1.1 200"), first
        kept[1].write(b"GET /healthz HTTP/1.1\r\nHo")  # the next request stalls
        trickle = await asyncio.open_connection("127.0.0.1", proc.port)
        trickle[1].write(  # a body that trickles: 10 of the 100 bytes declared
            b"POST /users HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 100\r\n\r\n{"name": "'
        )
        try:
            stalled = (silent, partial, trickle)
            answers = await asyncio.gather(*(_answer_and_close(r) for r, _ in stalled))
            later = await _answer_and_close(kept[0])
            for answer in answers:
                head, _, body = answer.partition(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 408"), answer
                assert json.loads(body)["error"]["code"] == "validation_error"
            assert b"HTTP/1.1 408" in later, later
            # and a request line with headers over CHAT_MAX_HEADER_BYTES (64 KiB) is refused
            big = await asyncio.open_connection("127.0.0.1", proc.port)
            big[1].write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"z" * 70_000)
            refused = await _answer_and_close(big[0])
            big[1].close()
            assert refused.startswith(b"HTTP/1.1 431"), refused[:80]
            async with httpx.AsyncClient() as http:
                assert (await http.get(f"{proc.url}/healthz")).status_code == 200
        finally:
            for _, writer in (silent, partial, kept, trickle):
                writer.close()
    assert secure.alive()


async def test_page_sizes_and_body_size(secure: SecureMesh) -> None:
    """`limit` outside 1..200 is 400 `invalid_limit`; bodies over 64 KiB are 413 with JSON."""
    mesh = secure.mesh
    (alice,) = await users(mesh, "Alice")
    client = await connect(secure.ws_url(0, alice["token"]), alice["id"])
    room = await make_room(client, [])
    await client.close()
    for url in (f"{mesh.history}/rooms/{room['id']}/messages", f"{mesh.users}/users"):
        for limit in ("0", "201", "-1", "99999999999999999999"):
            r = await http_get(url, alice["token"], params={"limit": limit})
            assert r.status_code == 400, (url, limit, r.text)
            assert r.json()["error"]["code"] in ("invalid_limit", "validation_error")
    big = json.dumps({"name": "x" * 70_000})

    async def chunks() -> object:
        for _ in range(20):
            yield b" " * 4096
        yield b'{"name": "x"}'

    async with httpx.AsyncClient(timeout=10) as http:
        for url in (f"{mesh.users}/users", f"{mesh.rooms}/rooms"):
            r = await http.post(
                url,
                content=big,
                headers={"content-type": "application/json", **auth(alice["token"])},
            )
            assert r.status_code == 413, r.text
            assert r.json()["error"]["code"] == "payload_too_large"
            streamed = await http.post(url, content=chunks(), headers=auth(alice["token"]))
            assert streamed.status_code == 413, streamed.text


async def test_cors_and_security_headers(secure: SecureMesh) -> None:
    """CORS answers only configured origins; every service sends the security headers."""
    for proc in (secure.users, secure.rooms, secure.history, *secure.edges):
        async with httpx.AsyncClient(timeout=10) as http:
            for origin, allowed in ((ALLOWED_ORIGIN, True), ("https://evil.example", False)):
                r = await http.options(
                    f"{proc.url}/healthz",
                    headers={"origin": origin, "access-control-request-method": "GET"},
                )
                got = r.headers.get("access-control-allow-origin")
                assert (got == origin) is allowed, (proc.name, origin, got)
            r = await http.get(f"{proc.url}/healthz")
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["x-frame-options"] == "DENY"
        assert "frame-ancestors 'none'" in r.headers["content-security-policy"]


async def test_websocket_origin_check(secure: SecureMesh) -> None:
    """No Origin, the node's own and configured origins open; another site's gets 403 + JSON."""
    (alice,) = await users(secure.mesh, "Alice")
    url = secure.ws_url(0, alice["token"])
    own = secure.edges[0].url
    for origin, expected in ((None, 101), (own, 101), (ALLOWED_ORIGIN, 101)):
        extra = {"origin": origin} if origin else {}
        status, _ = await handshake_status(url, **extra)
        assert status == expected, origin
    for origin in ("https://evil.example", "null", secure.edges[1].url):
        status, body = await handshake_status(url, origin=origin)
        assert status == 403, origin
        assert body is not None
        assert body["error"]["code"] == "forbidden"
