"""NATS connections: reconnect forever with backoff, several server URLs, logged state changes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import nats
from nats.aio.client import Client as NATS

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

    async def on_disconnect() -> None:
        log.warning("nats disconnected")

    async def on_reconnect() -> None:
        log.info("nats reconnected")
        if on_reconnected is not None:
            try:
                await on_reconnected()
            except Exception as exc:
                log.warning("after-reconnect hook failed: %s", exc)

    return await nats.connect(
        servers=settings.nats_servers,
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        connect_timeout=3,
        allow_reconnect=True,
        error_cb=on_error,
        disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect,
        pending_size=64 * 1024 * 1024,
    )


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
