"""WebSocket keepalive for every socket of a node from one timer, in rounds.

Why: uvicorn pings each socket from timers of its own: per ping a timer to send it, a random
payload, websockets' framing, and a second timer for the pong's deadline, cancelled and
rescheduled when the pong arrives. Each socket's timer fires on its own, so at 10,000 idle
sockets and a 20 s interval an edge woke 500 times a second for one ping each: most of what
holding idle connections cost (docs/performance.md, "Idle"). Here the sockets are dealt into
`slots` groups and one timer pings a group per tick with one prebuilt frame (a server's frames
are not masked, so one payload per round serves the whole group), which also brings the pongs
back together.

Same contract as uvicorn's: each socket is pinged once per interval, and one that has not
answered its ping by the next one is failed with 1011 "keepalive ping timeout" by uvicorn's
own `keepalive_timeout`. The pong is matched by uvicorn's `handle_pong` against
`pending_ping_payload`, as for its own pings. A socket this module cannot take over (another
server or protocol) keeps uvicorn's timers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from typing import Any, cast

from websockets.protocol import State

from infra.metrics import WS_KEEPALIVE_TIMEOUTS
from ws_edge.adapters.direct_ws import sansio_protocol

log = logging.getLogger(__name__)

_PING = 0x89  # FIN + opcode ping
# what a round reads and writes of uvicorn's protocol: an upgrade that renames any of them
# leaves the socket to uvicorn's own keepalive
_FIELDS = (
    "stop_keepalive",
    "keepalive_timeout",
    "pending_ping_payload",
    "ping_sent_at",
    "pong_timer",
    "ping_timer",
    "close_sent",
    "transport",
    "conn",
)


def ping_frame(payload: bytes) -> bytes:
    """One unmasked ping frame carrying `payload` (at most 125 bytes, RFC 6455 5.5)."""
    assert len(payload) <= 125
    return bytes((_PING, len(payload))) + payload


class Keepalive:
    """Pings one group of the node's sockets per tick; a socket is in exactly one group."""

    def __init__(self, interval: float, slots: int = 20) -> None:
        self.interval = interval
        self.slots: list[dict[Any, None]] = [{} for _ in range(max(1, slots))]
        self._next = 0  # the group the next socket joins (round robin: groups stay even)
        self._turn = 0  # the group the next tick pings
        self._task: asyncio.Task[None] | None = None
        self.pings = 0
        self.timeouts = 0

    def __len__(self) -> int:
        return sum(len(slot) for slot in self.slots)

    def watch(self, receive: object) -> object | None:
        """Take over the keepalive of the socket behind an ASGI `receive` (after the accept).
        Returns a handle for `unwatch`, or None when uvicorn keeps pinging it itself."""
        protocol = sansio_protocol(receive)
        if protocol is None or not all(hasattr(protocol, name) for name in _FIELDS):
            return None
        if protocol.ping_timer is None and protocol.pong_timer is None:
            return None  # uvicorn's keepalive is off (no interval): nothing to take over
        protocol.stop_keepalive()
        self.slots[self._next][protocol] = None
        self._next = (self._next + 1) % len(self.slots)
        return cast(object, protocol)

    def unwatch(self, handle: object | None) -> None:
        if handle is None:
            return
        for slot in self.slots:
            if handle in slot:
                del slot[handle]
                return

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="keepalive")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        tick = self.interval / len(self.slots)
        loop = asyncio.get_running_loop()
        due = loop.time() + tick
        while True:
            await asyncio.sleep(max(0.0, due - loop.time()))
            due += tick
            try:
                self.round(loop.time())
            except Exception:  # one bad socket must not end every socket's keepalive
                log.exception("keepalive round failed")

    def round(self, now: float) -> None:
        """Ping the next group: fail the sockets that left the previous ping unanswered."""
        slot = self.slots[self._turn]
        self._turn = (self._turn + 1) % len(self.slots)
        payload = os.urandom(4)
        frame = ping_frame(payload)
        for protocol in list(slot):
            if protocol.close_sent or protocol.transport.is_closing():
                del slot[protocol]  # closing or gone: uvicorn finishes it
                continue
            if protocol.pending_ping_payload is not None:
                del slot[protocol]
                self.timeouts += 1
                WS_KEEPALIVE_TIMEOUTS.inc()
                protocol.keepalive_timeout()  # 1011, as uvicorn's own pong deadline does
                continue
            if protocol.conn.state is not State.OPEN:
                continue
            protocol.pending_ping_payload = payload
            protocol.ping_sent_at = now
            protocol.transport.write(frame)
            self.pings += 1
