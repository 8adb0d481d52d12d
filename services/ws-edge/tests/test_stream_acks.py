"""StreamAcks against a real NATS: a publish returns only once the stream stored it, and
every way the stream can fail to store it is raised (the edge turns it into an error frame)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from nats.aio.client import Client as NATS
from nats.js.api import DiscardPolicy, StreamConfig
from nats.js.errors import APIError, NoStreamResponseError

from infra.bus import close_nats, connect_nats
from infra.settings import CommonSettings
from mesh.testing import Infra
from ws_edge.adapters.stream_acks import StreamAcks

pytestmark = pytest.mark.integration


def with_stream(
    infra: Infra, test: Callable[[NATS, StreamAcks, str], Awaitable[Any]], **config: Any
) -> Any:
    """Run `test(nc, acks, subject prefix)` with a stream of its own capturing `<prefix>.>`."""

    async def run() -> Any:
        name = f"T_ACKS_{uuid.uuid4().hex[:8]}"
        prefix = f"t.acks.{name.lower()}"
        nc = await connect_nats(CommonSettings(nats_urls=infra.nats_url), "test-stream-acks")
        js = nc.jetstream(timeout=5)
        await js.add_stream(StreamConfig(name=name, subjects=[f"{prefix}.>"], **config))
        try:
            return await test(nc, StreamAcks(nc, timeout=2.0), prefix)
        finally:
            await js.delete_stream(name)
            await close_nats(nc)

    return asyncio.run(run())


def test_each_publish_returns_once_stored(infra: Infra) -> None:
    """200 concurrent publishes: each returns, the stream holds all 200 with their payloads in
    order of their publishes, and no publish is left waiting."""

    async def test(nc: NATS, acks: StreamAcks, prefix: str) -> dict[str, Any]:
        await asyncio.gather(*(acks.publish(f"{prefix}.r{i % 7}", b"%d" % i) for i in range(200)))
        js = nc.jetstream(timeout=5)
        name = await js.find_stream_name_by_subject(f"{prefix}.x")
        info = await js.stream_info(name)
        payloads = [(await js.get_msg(name, seq=s)).data for s in (1, 200)]
        return {"messages": info.state.messages, "ends": payloads, "waiting": acks.waiting()}

    seen = with_stream(infra, test)
    assert seen["messages"] == 200
    assert seen["ends"] == [b"0", b"199"]
    assert seen["waiting"] == 0


def test_a_full_stream_refuses(infra: Infra) -> None:
    """A stream that discards new messages when full answers with an error: raised."""

    async def test(nc: NATS, acks: StreamAcks, prefix: str) -> tuple[int, Exception | None]:
        stored = 0
        for i in range(10):
            try:
                await acks.publish(f"{prefix}.r", b"%d" % i)
            except APIError as exc:
                return stored, exc
            stored += 1
        return stored, None

    stored, refused = with_stream(infra, test, max_msgs=3, discard=DiscardPolicy.NEW)
    assert stored == 3
    assert isinstance(refused, APIError)
    assert refused.code is not None
    assert refused.code >= 400


def test_no_stream_on_the_subject_is_raised_at_once(infra: Infra) -> None:
    """Nothing listens on the subject (no stream captures it): NATS says so, raised without
    waiting for the timeout."""

    async def test(nc: NATS, acks: StreamAcks, prefix: str) -> tuple[type[Exception], float]:
        started = asyncio.get_running_loop().time()
        with pytest.raises(NoStreamResponseError) as raised:
            await acks.publish("t.acks.nobody.listens", b"x")
        return raised.type, asyncio.get_running_loop().time() - started

    kind, took = with_stream(infra, test)
    assert kind is NoStreamResponseError
    assert took < 2.0  # the timeout is 2 s; a no-responders answer comes back at once


def test_no_answer_times_out(infra: Infra) -> None:
    """A subscriber that never answers (not a stream): the publish gives up after the timeout
    with a TimeoutError, and nothing is left waiting."""

    async def test(nc: NATS, acks: StreamAcks, prefix: str) -> int:
        silent = await nc.subscribe("t.acks.silent")
        try:
            quiet = StreamAcks(nc, timeout=0.3)
            with pytest.raises(TimeoutError):
                await quiet.publish("t.acks.silent", b"x")
            return quiet.waiting()
        finally:
            await silent.unsubscribe()

    assert with_stream(infra, test) == 0
