"""JetStream publishes that wait for the stream's acknowledgement, all answered on one inbox.

Why not nats-py's `js.publish`: it is a generic request, so every client message paid for a
token drawn from the OS's random source, an `asyncio.wait_for`, a callback closure and a
`PubAck` object built from the JSON reply; on the edge that path was the largest Python cost
of a client's `create_message` after the WebSocket itself (docs/performance.md). Here a
publish is a counter, a future and one deadline. What it tells the caller is the same: it
returns once the stream has stored the message, and raises when the stream refused it (full,
wrong subject: JetStream's error reply), when no stream listens on the subject (no
responders), or when no answer came within the timeout.
"""

from __future__ import annotations

import asyncio
import itertools

import orjson
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import Header
from nats.js.errors import APIError, NoStreamResponseError

NO_RESPONDERS = "503"


class StreamAcks:
    """Publishes to JetStream-captured subjects and waits for each one's stream ack."""

    def __init__(self, nc: NATS, timeout: float) -> None:
        self._nc = nc
        self._timeout = timeout
        self._prefix = ""  # set once the reply subscription is in place
        self._starting: asyncio.Future[None] | None = None
        self._waiting: dict[str, asyncio.Future[Msg]] = {}
        self._tokens = itertools.count(1)

    async def _start(self) -> None:
        # a unique inbox per client (nats-py's NUID); nats-py resubscribes after a reconnect
        prefix = f"{self._nc.new_inbox()}."
        await self._nc.subscribe(f"{prefix}*", cb=self._on_reply)
        self._prefix = prefix

    async def _ready(self) -> None:
        if self._starting is None:
            self._starting = asyncio.ensure_future(self._start())
        try:
            await asyncio.shield(self._starting)
        except Exception:
            self._starting = None  # let the next publish try again
            raise

    async def _on_reply(self, msg: Msg) -> None:
        future = self._waiting.get(msg.subject[len(self._prefix) :])
        if future is not None and not future.done():
            future.set_result(msg)

    async def publish(self, subject: str, payload: bytes) -> None:
        """Return once the stream stored `payload`; raise if it did not say so in time."""
        if not self._prefix:
            await self._ready()
        token = f"{next(self._tokens):x}"
        future: asyncio.Future[Msg] = asyncio.get_running_loop().create_future()
        self._waiting[token] = future
        try:
            await self._nc.publish(subject, payload, reply=self._prefix + token)
            try:
                async with asyncio.timeout(self._timeout):
                    reply = await future
            except TimeoutError:
                raise NatsTimeoutError from None
        finally:
            del self._waiting[token]
        if reply.headers and reply.headers.get(Header.STATUS) == NO_RESPONDERS:
            raise NoStreamResponseError
        answer = orjson.loads(reply.data)
        if "error" in answer:
            APIError.from_error(answer["error"])  # raises the error's own class (nats-py's API)
            raise APIError(description=str(answer["error"]))

    def waiting(self) -> int:
        """Publishes not answered yet."""
        return len(self._waiting)
