"""Frames written straight to the transport: byte-exact framing, order kept with the queue,
and attachment to the real uvicorn protocol the edge runs on."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager

import pytest
import websockets
from starlette.websockets import WebSocket
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from infra.auth import Claims
from ws_edge.adapters.direct_ws import (
    DirectWriter,
    release_handshake,
    text_frame,
)
from ws_edge.connection import Connection
from ws_edge.domain.limits import AbuseMeter, TokenBucket

# the `serve_ws` fixture (conftest.py)
ServeWs = Callable[..., AbstractAsyncContextManager[int]]


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_text_frame_parses_as_one_final_unmasked_text_frame(size: int) -> None:
    payload = ("é" * (size // 2) + "a" * (size % 2)).encode()
    reader = StreamReader()
    reader.feed_data(text_frame(payload))
    reader.feed_eof()
    parser = Frame.parse(reader.read_exact, mask=False)
    try:
        next(parser)
        raise AssertionError("frame incomplete")
    except StopIteration as done:
        frame = done.value
    assert frame.opcode is Opcode.TEXT
    assert frame.fin
    assert frame.data == payload


def _connection(write: object, sent: list[str]) -> Connection:
    async def send_text(text: str) -> None:
        await asyncio.sleep(0.001)
        sent.append("queued:" + text)

    async def close(code: int, reason: str) -> None:
        return None

    claims = Claims(user_id="u1", expires_at=2**31, token_id="t1")
    return Connection(
        claims,
        send_text,
        close,
        16,
        TokenBucket(10, 10, 0),
        AbuseMeter(10, 10),
        write,  # type: ignore[arg-type]
    )


async def test_direct_writes_never_overtake_queued_frames() -> None:
    sent: list[str] = []
    accept = {"now": True}

    def write(frame: bytes) -> bool:
        if not accept["now"]:
            return False
        sent.append("direct:" + frame[2:].decode())
        return True

    conn = _connection(write, sent)
    conn.push("a")
    conn.push("b", text_frame(b"b"))
    accept["now"] = False  # flow control: the transport is paused
    conn.push("c")
    accept["now"] = True
    await asyncio.sleep(0)  # the writer takes c: the queue is empty, c not yet written
    assert conn.queued() == 0
    assert sent == ["direct:a", "direct:b"]
    conn.push("d")  # must not overtake c
    conn.push("e")
    for _ in range(100):
        if len(sent) == 5:
            break
        await asyncio.sleep(0.01)
    conn.push("f")  # queue drained, writer idle: direct again
    assert sent == ["direct:a", "direct:b", "queued:c", "queued:d", "queued:e", "direct:f"]
    assert conn.writer is not None
    conn.writer.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await conn.writer


async def test_frames_for_a_socket_not_open_yet_wait_for_it_in_order() -> None:
    """A connection attached before its handshake is answered holds its frames (nothing is
    written to a socket not open yet) and sends them, in order and before any later frame,
    once it is open; more than its queue holds is a slow client (4408), and a close while
    held is not sent until the socket is open (the endpoint refuses the handshake instead)."""
    sent: list[str] = []

    def write(frame: bytes) -> bool:
        sent.append("direct:" + frame[2:].decode())
        return True

    closed: list[int] = []

    async def close(code: int, reason: str) -> None:
        closed.append(code)

    async def send_text(text: str) -> None:
        sent.append("queued:" + text)

    claims = Claims(user_id="u1", expires_at=2**31, token_id="t1")
    conn = Connection(
        claims, send_text, close, 4, TokenBucket(10, 10, 0), AbuseMeter(10, 10), held=True
    )
    assert conn.push("a")
    assert conn.push("b", text_frame(b"b"))
    assert sent == []
    conn.open(write)  # type: ignore[arg-type]
    conn.push("c")
    assert sent == ["direct:a", "direct:b", "direct:c"]

    slow = Connection(
        claims, send_text, close, 2, TokenBucket(10, 10, 0), AbuseMeter(10, 10), held=True
    )
    assert slow.push("1")
    assert slow.push("2")
    assert not slow.push("3")
    assert slow.closed
    assert slow.close_code == 4408
    assert slow.closing is None  # nothing is sent on a socket not open: refused instead
    status, code, _ = slow.refusal()
    assert (status, code) == (503, "unavailable")
    slow.open(None)  # it opened all the same (the close came as it was accepted): closed now
    assert slow.closing is not None
    await slow.closing
    assert closed == [4408]


def _endpoint(attached: list[bool]) -> Callable[[WebSocket], Awaitable[None]]:
    async def endpoint(websocket: WebSocket) -> None:
        assert websocket.query_params["token"] == "secret-token"  # what ws_endpoint reads
        assert websocket.headers["host"]
        await websocket.accept()
        release_handshake(websocket)
        protocol = websocket._receive.__self__  # type: ignore[attr-defined]
        attached.append(protocol.request is None and protocol.response is None)
        # nothing of the handshake's headers or token is left, parsed or raw
        kept = repr(websocket.scope) + repr(vars(websocket)) + repr(vars(protocol))
        attached.append("secret-token" not in kept and not websocket.headers)
        writer = DirectWriter.attach(websocket._receive)
        attached.append(writer is not None)
        if writer is None:
            await websocket.send_text(json.dumps({"n": 0}))
        else:
            for n in range(3):
                assert writer.write(text_frame(json.dumps({"n": n}).encode()))
            await websocket.send_text(json.dumps({"n": 3}))  # the ASGI path, after them
        with contextlib.suppress(Exception):
            await websocket.receive()

    return endpoint


async def test_attaches_to_the_edges_uvicorn_protocol_and_frames_arrive_in_order(
    serve_ws: ServeWs,
) -> None:
    attached: list[bool] = []
    async with serve_ws(_endpoint(attached), ws_per_message_deflate=False) as port:
        url = f"ws://127.0.0.1:{port}/ws?token=secret-token"
        async with websockets.connect(url, compression=None) as ws:
            got = [json.loads(await asyncio.wait_for(ws.recv(), 5))["n"] for _ in range(4)]
    assert attached == [True, True, True]  # handshake released and shed, writer attached
    assert got == [0, 1, 2, 3]


async def test_not_attached_when_permessage_deflate_was_negotiated(serve_ws: ServeWs) -> None:
    attached: list[bool] = []
    async with serve_ws(_endpoint(attached), ws_per_message_deflate=True) as port:
        url = f"ws://127.0.0.1:{port}/ws?token=secret-token"
        async with websockets.connect(url) as ws:
            got = json.loads(await asyncio.wait_for(ws.recv(), 5))
    assert attached == [True, True, False]
    assert got == {"n": 0}
