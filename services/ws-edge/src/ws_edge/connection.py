"""One live client connection: identity, frames written at once or, when they have to wait,
through a bounded send queue drained by a writer task (both created on the first wait: an idle
socket holds neither)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from contracts.errors import ErrorCode
from infra.auth import Claims
from infra.metrics import count_frame_out
from ws_edge.adapters.direct_ws import text_frame
from ws_edge.domain.delivery import SentSet
from ws_edge.domain.limits import AbuseMeter, TokenBucket

log = logging.getLogger(__name__)

SendText = Callable[[str], Awaitable[None]]
Close = Callable[[int, str], Awaitable[None]]
# writes a prebuilt WebSocket frame at once; False when it cannot (then the queue is used)
WriteFrame = Callable[[bytes], bool]


@dataclass
class RoomView:
    """What this connection has been sent of one room, and frames held during its sync."""

    sent: SentSet = field(default_factory=SentSet)
    syncing: bool = False
    held: list[tuple[int, str]] = field(default_factory=list)


def new_connection_id() -> str:
    return "c" + secrets.token_hex(8)


class Connection:
    """A client's socket as the hub sees it. `push` never blocks: a full queue disconnects."""

    def __init__(
        self,
        claims: Claims,
        send_text: SendText,
        close: Close,
        queue_size: int,
        bucket: TokenBucket,
        abuse: AbuseMeter,
        write_frame: WriteFrame | None = None,
        conn_id: str | None = None,
        held: bool = False,
    ) -> None:
        self.id = conn_id or new_connection_id()
        self.claims = claims
        self.user_id = claims.user_id
        self._send_text = send_text
        self._close = close
        self._write_frame = write_frame
        # frames for a socket not open yet (attached before its handshake is answered), sent
        # in order by `open`
        self._held: list[tuple[str, bytes | None]] | None = [] if held else None
        self.held_close: tuple[int, str] | None = None  # a close asked for while held
        self._writing = False  # the writer holds a frame it has taken from the queue
        self.queue_size = queue_size
        self._queue: asyncio.Queue[str | None] | None = None
        self.bucket = bucket
        self.abuse = abuse
        self.rooms: dict[str, RoomView] = {}
        self.announced_rooms: set[str] = set()
        self.closed = False
        self.close_code: int | None = None
        self.writer: asyncio.Task[None] | None = None
        self.expiry: asyncio.TimerHandle | None = None
        self.closing: asyncio.Task[None] | None = None  # a server close in progress
        self.opened = time.monotonic()

    def view(self, room_id: str) -> RoomView:
        view = self.rooms.get(room_id)
        if view is None:
            view = self.rooms[room_id] = RoomView()
        return view

    def queued(self) -> int:
        """Frames waiting for the socket."""
        return self._queue.qsize() if self._queue is not None else 0

    def _enqueue(self, item: str | None) -> None:
        """Queue behind what waits (QueueFull when full); the writer starts on first use."""
        if self._queue is None:
            self._queue = asyncio.Queue(maxsize=self.queue_size)
            self.writer = asyncio.create_task(self._write_loop(), name=f"writer-{self.id}")
        self._queue.put_nowait(item)

    def push(self, text: str, wire: bytes | None = None) -> bool:
        """Send a frame: written at once when nothing is waiting before it, else queued.

        `wire` is the text's WebSocket frame when the caller built it once for many sockets.
        A client whose queue is full is too slow and is disconnected (4408).
        """
        return self._deliver(text, wire)

    def _deliver(self, text: str, wire: bytes | None) -> bool:
        # `push` as this class does it: subclasses that encode frames (SSE) override `push`,
        # and frames held before the socket opened are already encoded
        if self.closed:
            return False
        if self._held is not None:
            if len(self._held) >= self.queue_size:
                self.close_soon(4408, "too slow: send queue full")
                return False
            self._held.append((text, wire))
            return True
        write = self._write_frame
        if (
            write is not None
            and not self._writing
            and (self._queue is None or self._queue.empty())
            and write(wire if wire is not None else text_frame(text.encode()))
        ):
            count_frame_out(text)
            return True
        try:
            self._enqueue(text)
            count_frame_out(text)
            return True
        except asyncio.QueueFull:
            log.warning(
                "send queue full, disconnecting slow client", extra={"user_id": self.user_id}
            )
            self.close_soon(4408, "too slow: send queue full")
            return False

    def open(self, write_frame: WriteFrame | None) -> None:
        """The socket is open (handshake answered): frames held until now go out, in order,
        then every frame as usual (`write_frame`: the direct path, as in the constructor)."""
        held, self._held = self._held, None
        self._write_frame = write_frame
        if self.held_close is not None:  # closed before it opened: the close goes out now
            self.closing = asyncio.get_running_loop().create_task(self._do_close(*self.held_close))
            return
        for text, wire in held or ():
            self._deliver(text, wire)

    def refuse(self, text: str, now: float | None = None) -> None:
        """Send an `error` frame that refuses (part of) what the client sent, and count it:
        a client with too many refusals in the window is abusive and is closed (4429)."""
        self.push(text)
        if self.abuse.refuse(time.monotonic() if now is None else now):
            self.close_soon(4429, "abusive: too many refused frames")

    def refusal(self) -> tuple[int, ErrorCode, str]:
        """For a connection closed before it opened: the HTTP answer that refuses it instead
        (401 when its token expired meanwhile, else 503: reconnect, maybe elsewhere)."""
        code, reason = self.held_close or (1011, "closed")
        if code == 4401:
            return 401, ErrorCode.TOKEN_EXPIRED, reason
        return 503, ErrorCode.UNAVAILABLE, f"{reason}; reconnect"

    def close_soon(self, code: int, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        if self._held is not None:
            # the socket is not open yet: nothing can be sent on it. The endpoint refuses the
            # handshake instead (`held_close` says why), or `open` closes it once it is open.
            self.close_code = code
            self.held_close = (code, reason)
            return
        self.close_code = code
        self.closing = asyncio.get_running_loop().create_task(self._do_close(code, reason))

    async def _do_close(self, code: int, reason: str) -> None:
        if self.writer is not None and code != 4408:
            # let queued frames go out first (bounded) so nothing already sent is cut short
            with contextlib.suppress(asyncio.QueueFull):
                self._enqueue(None)
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError, Exception):
                await asyncio.wait_for(asyncio.shield(self.writer), 2.0)
        if self.writer is not None:
            self.writer.cancel()
        with contextlib.suppress(Exception):
            await self._close(code, reason)

    async def _write_loop(self) -> None:
        try:
            while True:
                assert self._queue is not None  # created with this task
                text = await self._queue.get()
                if text is None:
                    return
                self._writing = True
                await self._send_text(text)
                self._writing = False
        except asyncio.CancelledError:
            raise
        except Exception:
            # the socket is gone; the read loop notices and cleans up
            self.closed = True
