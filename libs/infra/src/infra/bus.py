"""NATS connections: reconnect forever with backoff, several server URLs, logged state changes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from infra.logs import correlation_id
from infra.settings import CommonSettings

log = logging.getLogger(__name__)

CORRELATION_HEADER = "X-Correlation-Id"


def stamp(payload: object) -> dict[str, str]:
    """Carry the current correlation id on a bus payload: fills its `correlationId` (every
    contracts.bus model has one) when empty, and returns the NATS headers carrying it too."""
    cid = getattr(payload, "correlationId", None) or correlation_id.get()
    if cid is None:
        return {}
    if hasattr(payload, "correlationId") and payload.correlationId is None:
        payload.correlationId = cid
    return {CORRELATION_HEADER: cid}


def adopt(payload: object, headers: dict[str, str] | None = None) -> str | None:
    """Make a received payload's correlation id (or its header's) the current one."""
    cid = getattr(payload, "correlationId", None) or (headers or {}).get(CORRELATION_HEADER)
    if cid:
        correlation_id.set(str(cid)[:64])
    return cid


async def connect_nats(
    settings: CommonSettings,
    name: str,
    on_reconnected: Callable[[], Awaitable[None]] | None = None,
) -> NATS:
    """Connect to the configured NATS servers; the client keeps reconnecting on its own.

    `on_reconnected` runs after each reconnect (e.g. to catch up on what core NATS subjects
    carried while this client was away)."""

    async def on_error(exc: Exception) -> None:
        log.warning("nats error: %s", exc)

    nc = NATS()

    async def on_disconnect() -> None:
        if nc.is_closed:  # our own close (shutdown): nothing is wrong
            log.info("nats connection closed")
        else:
            log.warning("nats disconnected")

    async def on_reconnect() -> None:
        log.info("nats reconnected")
        if on_reconnected is not None:
            try:
                await on_reconnected()
            except Exception as exc:
                log.warning("after-reconnect hook failed: %s", exc)

    await nc.connect(
        servers=settings.nats_servers,
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,  # type: ignore[arg-type]  # seconds; typed int, used as float
        connect_timeout=3,
        allow_reconnect=True,
        error_cb=on_error,
        disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect,
        pending_size=64 * 1024 * 1024,
    )
    return nc


async def close_nats(nc: NATS, wait_seconds: float = 2.0) -> None:
    """Drain (flush what is pending), but never wait long: a pull consumer's outstanding
    fetch can keep `drain` busy for its whole 30 s default."""
    if nc.is_closed:
        return
    try:
        await asyncio.wait_for(nc.drain(), wait_seconds)
    except Exception:
        log.info("nats drain did not finish in %.1fs: closing", wait_seconds)
    if not nc.is_closed:
        with contextlib.suppress(Exception):
            await nc.close()


class ContinuousPull:
    """Keeps pull requests open on a durable JetStream consumer and hands each message to
    `on_message` the moment it arrives (what the newer clients call "consume").

    Why not `PullSubscription.fetch(n)`: when nothing is waiting, nats-py's fetch becomes a
    lingering request for the whole batch and returns only once `n` messages arrived or the
    timeout passed, so at moderate rates every message waited up to that timeout. Here up to
    `batch` messages are requested; when fewer than half are still owed, more are requested.
    Expired requests (status 408) and server-side refusals (409) are accounted for; idle
    heartbeats prove the requests are alive, and if neither messages nor heartbeats come for
    a while (a reconnect drops pending requests) the requests are issued anew.
    """

    def __init__(
        self,
        nc: NATS,
        stream: str,
        durable: str,
        on_message: Callable[[Msg], Awaitable[None]],
        batch: int = 256,
        expires_seconds: float = 30.0,
        heartbeat_seconds: float = 2.0,
    ) -> None:
        self._nc = nc
        self._next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self._on_message = on_message
        self._batch = batch
        self._expires = expires_seconds
        self._heartbeat = heartbeat_seconds
        self._owed = 0
        self._last_seen = 0.0
        self._inbox = ""
        self._sub: Subscription | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._stopping = False

    async def start(self) -> None:
        self._inbox = self._nc.new_inbox()
        self._sub = await self._nc.subscribe(
            self._inbox, cb=self._received, pending_msgs_limit=self._batch * 4
        )
        self._last_seen = asyncio.get_running_loop().time()
        await self._request()
        self._watchdog = asyncio.create_task(self._watch(), name=f"pull:{self._next_subject}")

    async def stop(self) -> None:
        self._stopping = True
        if self._watchdog is not None:
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._watchdog
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()

    async def _request(self) -> None:
        want = self._batch - self._owed
        if want <= 0 or self._stopping or not self._nc.is_connected:
            return
        request = {
            "batch": want,
            "expires": int(self._expires * 1e9),
            "idle_heartbeat": int(self._heartbeat * 1e9),
        }
        self._owed += want
        try:
            await self._nc.publish(self._next_subject, json.dumps(request).encode(), self._inbox)
        except Exception as exc:
            self._owed -= want
            log.warning("pull request failed: %s", exc)

    async def _received(self, msg: Msg) -> None:
        self._last_seen = asyncio.get_running_loop().time()
        status = (msg.headers or {}).get("Status") if msg.headers else None
        if status is None and msg.reply:
            self._owed = max(0, self._owed - 1)
            try:
                await self._on_message(msg)
            except Exception:
                log.exception("handling a pulled message failed (it will be redelivered)")
        elif status in ("408", "409"):
            # the request ended with this many messages never delivered
            pending = (msg.headers or {}).get("Nats-Pending-Messages")
            self._owed = max(0, self._owed - int(pending)) if pending else 0
        # status 100 (idle heartbeat) and 404 only prove the request is alive
        if self._owed <= self._batch // 2:
            await self._request()

    async def _watch(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self._heartbeat)
            silent = asyncio.get_running_loop().time() - self._last_seen
            if silent > self._heartbeat * 3:
                # requests were lost (e.g. across a reconnect): ask again
                self._owed = 0
                self._last_seen = asyncio.get_running_loop().time()
                await self._request()
