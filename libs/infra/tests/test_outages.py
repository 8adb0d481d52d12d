"""A dependency that stops answering: bounded answers (503), bounded readiness, no tracebacks."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from botocore.exceptions import ClientError
from fastapi import FastAPI
from fastapi.responses import StreamingResponse

from infra.http import (
    health_router,
    install_common_middleware,
    install_error_handlers,
    is_outage,
)
from infra.settings import CommonSettings
from mesh.testing import uvicorn_on_free_port


def _app(response_timeout: float) -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)
    settings = CommonSettings(max_body_bytes=1024, response_timeout_seconds=response_timeout)
    install_common_middleware(app, settings)

    @app.get("/hangs")
    async def hangs() -> dict[str, str]:
        await asyncio.sleep(30)  # a store that stopped answering
        return {"never": "here"}

    @app.get("/stream")
    async def stream() -> StreamingResponse:
        async def chunks() -> AsyncIterator[bytes]:
            for n in range(4):
                yield f"chunk {n}\n".encode()
                await asyncio.sleep(0.3)

        return StreamingResponse(chunks(), media_type="text/plain")

    @app.get("/store-gone")
    async def store_gone() -> dict[str, str]:
        error = {"Error": {"Code": "ConnectionError", "Message": "no answer within 10 s"}}
        raise ClientError(error, "GetItem")  # type: ignore[arg-type]

    async def frozen() -> None:
        await asyncio.sleep(30)

    async def fine() -> None:
        return None

    checks = {"store": frozen, "cache": frozen, "search": frozen, "bus": fine}
    app.include_router(health_router(lambda: checks, timeout=1.0))
    return app


async def _timed_get(port: int, path: str) -> tuple[httpx.Response, float]:
    """GET `path` of the app served on `port`, and how long its answer took."""
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
        started = time.monotonic()
        answer = await http.get(path)
        return answer, time.monotonic() - started


async def test_a_request_not_answered_in_time_gets_503_and_streams_are_not_cut(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An answer not started within the response timeout is a 503 `unavailable` at once;
    an answer that has started (a stream) runs past it; an outage is one warning line."""
    caplog.set_level(logging.INFO)
    async with uvicorn_on_free_port(_app(response_timeout=0.5)) as port:
        slow, took = await _timed_get(port, "/hangs")
        streamed, _ = await _timed_get(port, "/stream")
        gone, _ = await _timed_get(port, "/store-gone")
    assert slow.status_code == 503
    assert slow.json()["error"]["code"] == "unavailable"
    assert took < 5
    assert streamed.status_code == 200
    assert streamed.text == "".join(f"chunk {n}\n" for n in range(4))  # 1.2 s: not cut
    assert gone.status_code == 503
    assert gone.json()["error"]["code"] == "unavailable"
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert any("did not answer" in r.getMessage() for r in caplog.records)


async def test_readiness_answers_in_bounded_time_naming_what_hangs() -> None:
    """/readyz with three dependencies that hang answers 503 after about one check's timeout
    (1 s: the checks run at once, not one after another) naming each; the one that answers is
    not reported."""
    async with uvicorn_on_free_port(_app(response_timeout=10)) as port:
        ready, took = await _timed_get(port, "/readyz")
    assert ready.status_code == 503
    hung = "no answer within 1 s"
    assert ready.json()["failures"] == {"store": hung, "cache": hung, "search": hung}
    assert took < 2.5  # one after another: 3 s


def test_what_counts_as_an_outage() -> None:
    """Timeouts, connection errors, throttling and the store's 5xx are outages; a request the
    store refuses as malformed is a bug."""

    def client_error(code: str, status: int) -> ClientError:
        answer = {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}
        return ClientError(answer, "PutItem")  # type: ignore[arg-type]

    assert is_outage(TimeoutError())
    assert is_outage(ConnectionRefusedError())
    assert is_outage(client_error("ConnectionError", 0))
    assert is_outage(client_error("ProvisionedThroughputExceededException", 400))
    assert is_outage(client_error("InternalFailure", 500))
    assert not is_outage(client_error("ValidationException", 400))
    assert not is_outage(ValueError())
