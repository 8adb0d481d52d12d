"""The request-header deadline and size limit (`infra.serve.HeaderDeadline`) under a real
uvicorn: stalled requests get 408 and are closed, complete ones are not timed (however slow the
app), a stall behind a response still being written closes without cutting a 408 into it;
request line and headers over the limit get 431, at once or accumulated, while many small
pipelined requests in one write are all answered."""

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
MAX_HEADER_BYTES = 8192


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
    return uvicorn_on_free_port(app, http=header_deadline_protocol(DEADLINE, MAX_HEADER_BYTES))


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


async def test_headers_over_the_limit_get_431_json_and_are_closed() -> None:
    async with _server() as port:
        fits = await _exchange(
            port,
            b"GET /slow HTTP/1.1\r\nHost: x\r\nX-A: " + b"a" * 6000 + b"\r\n"
            b"Connection: close\r\n\r\n",
        )
        assert fits.startswith(b"HTTP/1.1 200 "), fits[:100]
        at_once = await _exchange(
            port, b"GET /slow HTTP/1.1\r\nHost: x\r\nX-A: " + b"a" * 20_000 + b"\r\n\r\n"
        )
        long_url = await _exchange(port, b"GET /" + b"u" * 20_000 + b" HTTP/1.1\r\n")
        for answer in (at_once, long_url):
            head, _, body = answer.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 431 "), head
            assert json.loads(body)["error"]["code"] == "validation_error"
        # header lines that never end, a few at a time: refused once they add up (the client
        # may see a reset instead of the answer: it was still writing when the server closed)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        answer = b""
        try:
            writer.write(b"GET /slow HTTP/1.1\r\nHost: x\r\n")
            with contextlib.suppress(ConnectionError):
                for n in range(100):
                    if reader.at_eof():
                        break
                    writer.write(b"X-%d: " % n + b"b" * 1000 + b"\r\n")
                    await writer.drain()
                    await asyncio.sleep(0.005)
                answer = await _until_closed(reader)
        finally:
            writer.close()
        assert answer == b"" or answer.startswith(b"HTTP/1.1 431 "), answer[:100]


async def test_many_small_pipelined_requests_in_one_write_are_all_answered() -> None:
    request = b"GET /missing HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"p" * 200 + b"\r\n\r\n"
    count = 4 * MAX_HEADER_BYTES // len(request)  # more bytes than the limit, all complete
    last = b"GET /missing HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    async with _server() as port:
        answer = await _exchange(port, request * count + last)
    assert answer.count(b"HTTP/1.1 404 ") == count + 1
    assert b" 431 " not in answer
