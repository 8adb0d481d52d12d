"""The node-wide keepalive against the real uvicorn protocol the edge runs on: a socket that
answers is pinged every interval and stays; one that does not is failed with 1011; a socket
uvicorn does not ping (keepalive off) is left alone; sockets are dealt evenly over the groups."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field

import pytest
from starlette.websockets import WebSocket
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri

from ws_edge.adapters.keepalive import Keepalive, ping_frame

# the `serve_ws` fixture (conftest.py)
ServeWs = Callable[..., AbstractAsyncContextManager[int]]

INTERVAL = 0.6
SLOTS = 3


@dataclass
class Served:
    keepalive: Keepalive
    port: int
    watched: list[object | None] = field(default_factory=list)
    ended: list[int] = field(default_factory=list)  # disconnect codes seen by the endpoint


@contextlib.asynccontextmanager
async def _serve(
    serve_ws: ServeWs, ping_interval: float | None = INTERVAL
) -> AsyncIterator[Served]:
    keepalive = Keepalive(INTERVAL, SLOTS)
    watched: list[object | None] = []
    ended: list[int] = []

    async def endpoint(websocket: WebSocket) -> None:
        await websocket.accept()
        handle = keepalive.watch(websocket._receive)  # as ws_endpoint does
        watched.append(handle)
        try:
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    ended.append(int(message.get("code", 0)))
                    return
        finally:
            keepalive.unwatch(handle)

    options = {"ws_ping_interval": ping_interval, "ws_ping_timeout": ping_interval}
    async with serve_ws(endpoint, ws_per_message_deflate=False, **options) as port:
        keepalive.start()
        try:
            yield Served(keepalive, port, watched, ended)
        finally:
            await keepalive.stop()


class RawClient:
    """A WebSocket client that shows every control frame and answers pings only when told."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.protocol = ClientProtocol(parse_uri("ws://127.0.0.1/ws"))
        self.answer = True
        self.pings: list[bytes] = []
        self.close_code: int | None = None
        self.eof = False

    @classmethod
    async def connect(cls, port: int) -> RawClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        client = cls(reader, writer)
        client.protocol.send_request(client.protocol.connect())
        writer.write(b"".join(client.protocol.data_to_send()))
        while True:
            client.protocol.receive_data(await asyncio.wait_for(reader.read(65536), 5))
            events = client.protocol.events_received()
            if any(isinstance(e, Response) for e in events):
                assert client.protocol.handshake_exc is None
                return client

    async def read_for(self, seconds: float) -> None:
        """Take frames for `seconds` (or until the server has closed the TCP connection)."""
        deadline = asyncio.get_running_loop().time() + seconds
        while not self.eof:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                return
            try:
                data = await asyncio.wait_for(self.reader.read(65536), left)
            except TimeoutError:
                return
            if not data:
                self.eof = True
                self.protocol.receive_eof()
            else:
                self.protocol.receive_data(data)
            for event in self.protocol.events_received():
                assert isinstance(event, Frame)
                if event.opcode is Opcode.PING:
                    self.pings.append(bytes(event.data))
                elif event.opcode is Opcode.CLOSE and self.protocol.close_rcvd is not None:
                    self.close_code = self.protocol.close_rcvd.code
            out = b"".join(self.protocol.data_to_send())  # pongs (and the close's echo)
            if out and (self.answer or self.close_code is not None) and not self.eof:
                self.writer.write(out)

    def close(self) -> None:
        self.writer.close()


def test_ping_frame_is_one_unmasked_final_ping() -> None:
    assert ping_frame(b"abcd") == b"\x89\x04abcd"
    with pytest.raises(AssertionError):
        ping_frame(b"x" * 126)


async def test_a_socket_that_answers_is_pinged_every_interval_and_stays(serve_ws: ServeWs) -> None:
    async with _serve(serve_ws) as served:
        client = await RawClient.connect(served.port)
        try:
            await client.read_for(INTERVAL * 4.5)
            assert served.watched
            assert served.watched[0] is not None
            assert 3 <= len(client.pings) <= 6, client.pings  # once per interval
            assert client.close_code is None
            assert not client.eof
            assert served.keepalive.timeouts == 0
            assert len(served.keepalive) == 1
        finally:
            client.close()
        for _ in range(100):
            if served.ended:
                break
            await asyncio.sleep(0.02)
        assert len(served.keepalive) == 0  # unwatched when the socket ended


async def test_a_socket_that_stops_answering_is_failed_with_1011(serve_ws: ServeWs) -> None:
    async with _serve(serve_ws) as served:
        client = await RawClient.connect(served.port)
        try:
            await client.read_for(INTERVAL * 2)
            answered = len(client.pings)
            assert answered >= 1
            assert client.close_code is None
            client.answer = False
            # the next ping goes unanswered; the round after it fails the socket
            await client.read_for(INTERVAL * 4)
            assert client.close_code == 1011
            assert client.eof  # and the server dropped the connection
            assert served.keepalive.timeouts == 1
            for _ in range(100):
                if served.ended:
                    break
                await asyncio.sleep(0.02)
            assert served.ended  # the app was told, as for uvicorn's own timeout
            assert len(served.keepalive) == 0
        finally:
            client.close()


async def test_nothing_is_taken_over_when_uvicorn_does_not_ping(serve_ws: ServeWs) -> None:
    async with _serve(serve_ws, ping_interval=None) as served:
        client = await RawClient.connect(served.port)
        try:
            await client.read_for(INTERVAL * 2.5)
            assert served.watched == [None]
            assert client.pings == []
            assert client.close_code is None
            assert len(served.keepalive) == 0
        finally:
            client.close()


async def test_sockets_are_dealt_evenly_over_the_groups(serve_ws: ServeWs) -> None:
    async with _serve(serve_ws) as served:
        clients = [await RawClient.connect(served.port) for _ in range(3 * SLOTS + 1)]
        try:
            for _ in range(100):
                if len(served.watched) == len(clients):
                    break
                await asyncio.sleep(0.02)
            sizes = sorted(len(slot) for slot in served.keepalive.slots)
            assert sizes == [3] * (SLOTS - 1) + [4]
            await asyncio.gather(*(c.read_for(INTERVAL * 2.5) for c in clients))
            assert all(1 <= len(c.pings) <= 4 for c in clients)
            assert all(c.close_code is None for c in clients)
        finally:
            for c in clients:
                c.close()
