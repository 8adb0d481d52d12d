"""Frames written straight to a WebSocket's transport, built once per message.

Why: a server-to-client frame is not masked (RFC 6455 5.1), so the bytes of one
`message_created` are the same for every socket that receives it. Building them once and
handing them to each socket's transport skips, per recipient, the ASGI `send` chain (five
middlewares deep), the UTF-8 encoding and framing in `websockets`, and a task switch to the
connection's writer. The profile of an edge during fan-out showed that path as its largest
Python cost per frame.

Only used where it is safe: uvicorn's `websockets-sansio` protocol, an open connection with no
extension negotiated (permessage-deflate is off on the edge), not paused for flow control, no
close frame sent. Anything else returns False and the caller falls back to the queued ASGI
send, which keeps its order because direct writes only happen while that queue is empty.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable
from typing import Any

from starlette.websockets import WebSocket
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.frames import Frame
from websockets.protocol import State

log = logging.getLogger(__name__)

_OPCODE_TEXT_FIN = 0x81
_PROTOCOL_FIELDS = ("disconnected", "close_sent", "writable", "transport")


def text_frame(payload: bytes) -> bytes:
    """One final, unmasked text frame carrying `payload` (already UTF-8)."""
    n = len(payload)
    if n < 126:
        return bytes((_OPCODE_TEXT_FIN, n)) + payload
    if n < 1 << 16:
        return struct.pack("!BBH", _OPCODE_TEXT_FIN, 126, n) + payload
    return struct.pack("!BBQ", _OPCODE_TEXT_FIN, 127, n) + payload


def server_protocol(receive: object) -> Any:
    """The server's protocol object behind an ASGI `receive` (uvicorn passes one of its bound
    methods), or None. The one place that reaches past ASGI: direct writes, the handshake
    release and aborting a stuck socket all start here, so a server change is handled once."""
    return getattr(receive, "__self__", None)


def abort_transport(receive: object) -> bool:
    """Drop the connection behind an ASGI `receive` (WebSocket or HTTP) at once, discarding
    unsent data: for a peer that does not read, which cannot take a close or a stream's end."""
    transport = getattr(server_protocol(receive), "transport", None)
    abort = getattr(transport, "abort", None)
    if not callable(abort):
        log.warning("cannot abort a stuck connection on this server")
        return False
    abort()
    return True


def sansio_protocol(receive: object) -> Any:
    """uvicorn's `websockets-sansio` protocol (or the edge's subclass of it) behind `receive`,
    or None for any other."""
    protocol = server_protocol(receive)
    return protocol if isinstance(protocol, WebSocketsSansIOProtocol) else None


def release_handshake(websocket: WebSocket) -> None:
    """Drop what only the handshake needed, once the socket is accepted: the request and
    response uvicorn's protocol keeps, and from the ASGI scope the request headers, the query
    string (it holds the token) and starlette's parsed copies of them.

    Why: all of it lives as long as the socket and nothing reads it once the connection is open
    (uvicorn 0.55 uses its copies only while answering the handshake; the connection keeps the
    token's claims): about 2.7 KB per idle socket in uvicorn's protocol and 1.5 KB in the scope
    (bench idle: 23.5 -> 22.0 KB per connection for the latter).
    """
    protocol = sansio_protocol(websocket._receive)
    if protocol is not None and getattr(protocol, "handshake_complete", False):
        for name in ("request", "response"):
            if hasattr(protocol, name):
                setattr(protocol, name, None)
    scope = websocket.scope
    scope["headers"] = []
    scope["query_string"] = b""
    for cached in ("_headers", "_query_params"):
        websocket.__dict__.pop(cached, None)


class EdgeWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's `websockets-sansio` protocol, whose peer's pings, pongs and message fragments
    take the connection's frame budget (`meter`, set by the app after the accept).

    Why: uvicorn answers control frames below ASGI, so the per-connection frame limits never
    saw them: one client flooding pings kept an edge's core busy (measured: 100% of a core,
    about 500,000 pings a second) without a single refusal. A control frame the meter refuses
    is not handled (the parser has queued a ping's pong already: it goes out with the next
    write; the refusal is what counts), and once this side's close frame is out a refused one
    stops reading from the peer (uvicorn's close timer then drops the socket). A subclass,
    given to uvicorn as the edge's WebSocket protocol, rather than handlers set on each
    socket: those closures measured 1.2 KB more per idle socket (bench idle, 21.6 vs 20.5 KB).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.meter: Callable[[], bool] | None = None

    def _admit(self) -> bool:
        meter = self.meter
        if meter is None or meter():
            return True
        if self.close_sent:
            self.transport.pause_reading()
        return False

    def handle_ping(self) -> None:
        if self._admit():
            super().handle_ping()

    def handle_pong(self, event: Frame) -> None:
        if self._admit():
            super().handle_pong(event)

    def handle_cont(self, event: Frame) -> None:
        # each fragment of a message takes a token too: empty fragments never reach the size
        # limit, so a message that never ends kept a core busy and its fragment list growing
        # (measured: 580,000 empty fragments a second). A fragment cannot be refused without
        # breaking its message, so a message in more fragments than the budget holds is
        # abusive: the socket is failed with 4429 at once.
        if self._admit():
            super().handle_cont(event)
        elif not self.close_sent:
            self.frames = []
            self.conn.fail(4429, "abusive: a message in too many fragments")
            self.transport.write(b"".join(self.conn.data_to_send()))
            self.close_sent = True
            self.transport.close()


def meter_frames(receive: object, meter: Callable[[], bool]) -> bool:
    """Meter the pings, pongs and message fragments of the socket behind `receive` (see
    EdgeWebSocketProtocol); False when another protocol serves it (they are then unmetered)."""
    protocol = server_protocol(receive)
    if not isinstance(protocol, EdgeWebSocketProtocol):
        return False
    protocol.meter = meter
    return True


class DirectWriter:
    """Writes prebuilt frames to one uvicorn `websockets-sansio` connection's transport."""

    __slots__ = ("_protocol",)

    def __init__(self, protocol: Any) -> None:
        self._protocol = protocol

    @classmethod
    def attach(cls, receive: object) -> DirectWriter | None:
        """The writer for the protocol behind an ASGI `receive`, or None if it is not one we
        know how to write to safely (another server or protocol, an extension negotiated)."""
        protocol = sansio_protocol(receive)
        if protocol is None:
            return None
        conn = getattr(protocol, "conn", None)
        if conn is None or getattr(conn, "extensions", None) or not hasattr(conn, "state"):
            return None
        # what `write` reads: a uvicorn upgrade that renames any of them turns the fast path off
        if not all(hasattr(protocol, name) for name in _PROTOCOL_FIELDS):
            log.warning("uvicorn's WebSocket protocol changed: frames go through ASGI send")
            return None
        return cls(protocol)

    def write(self, frame: bytes) -> bool:
        """Write now if the connection can take it without buffering beyond flow control."""
        p = self._protocol
        if p.disconnected or p.close_sent or not p.writable.is_set():
            return False
        if p.conn.state is not State.OPEN or p.transport.is_closing():
            return False
        p.transport.write(frame)
        return True
