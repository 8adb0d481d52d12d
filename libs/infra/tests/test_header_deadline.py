"""The request-header deadline (`infra.serve.HeaderDeadline`) under a real uvicorn: stalled
requests get 408 and are closed, complete ones are not timed (however slow the app), and a
stall behind a response still being written closes without cutting a 408 into it."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from infra.serve import header_deadline_protocol
from mesh.testing import uvicorn_on_free_port

DEADLINE = 0.5


async def _slow(request: Request) -> Response:
    await asyncio.sleep(DEADLINE * 3)  # longer than the deadline: only headers are timed
    return PlainTextResponse("slow")


async def _stream(request: Request) -> Response:
    async def chunks() -> AsyncIterator[bytes]:
        for n in range(6):
            yield f"chunk{n};".encode()
            await asyncio.sleep(DEADLINE / 2)

    return StreamingResponse(chunks())


def _server() -> contextlib.AbstractAsyncContextManager[int]:
    app = Starlette(routes=[Route("/slow", _slow), Route("/stream", _stream)])
    return uvicorn_on_free_port(app, http=header_deadline_protocol(DEADLINE))


async def _exchange(port: int, request: bytes) -> bytes:
    """What the server answers to `request` until it closes the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        return await _until_closed(reader)
    finally:
        writer.close()


async def _until_closed(reader: asyncio.StreamReader) -> bytes:
    return await asyncio.wait_for(reader.read(), DEADLINE + 5)


async def test_a_silent_or_partial_request_gets_408_json_and_is_closed() -> None:
    async with _server() as port:
        silent = await asyncio.open_connection("127.0.0.1", port)
        partial = await asyncio.open_connection("127.0.0.1", port)
        partial[1].write(b"GET /slow HTTP/1.1\r\nHost: x\r\nX-")
        try:
            for reader, _ in (silent, partial):
                head, _, body = (await _until_closed(reader)).partition(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 408 "), head
                assert b"content-type: application/json" in head
                assert json.loads(body)["error"]["code"] == "validation_error"
        finally:
            for _, writer in (silent, partial):
                writer.close()


async def test_complete_headers_are_not_timed_however_slow_the_answer() -> None:
    async with _server() as port:
        answer = await _exchange(
            port, b"GET /slow HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        assert answer.startswith(b"HTTP/1.1 200 "), answer
        assert answer.endswith(b"slow")


async def test_a_stall_behind_a_streamed_response_closes_without_a_408_in_it() -> None:
    async with _server() as port:
        # the second request is pipelined, and it stalls
        answer = await _exchange(
            port, b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\nGET /stream HTTP/1.1\r\nHo"
        )
        assert answer.startswith(b"HTTP/1.1 200 "), answer
        assert b"chunk0;" in answer
        assert b"408" not in answer  # closed, not answered inside the stream
