"""A client that never reads is cut off (4408, or dropped) while others chat; memory stays flat."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import socket
from pathlib import Path

import psutil
import redis.asyncio as aioredis
from security_helpers import SecureMesh, connect, make_room, message_frame, users

from conftest import EDGE
from mesh.testing import Infra

ROUND = 10  # messages per sender per round
MAX_ROUNDS = 60
# 3,990 characters of 4 bytes each in UTF-8: ~16 KB per frame sent (the contract counts characters)
BULK = "\U0001f600" * 3990
RSS_BOUND_KIB = 96 * 1024  # generous: the edge may grow this much at most during the run
# A round may not be quicker than the mesh's frame rates allow (per connection and per user;
# each sender is one of each), with a margin: on a quick machine, back-to-back rounds outran
# them and the edge refused sends (rate_limited).
FRAMES_PER_SECOND = min(
    float(EDGE["CHAT_RATE_PER_SECOND"]), float(EDGE["CHAT_USER_RATE_PER_SECOND"])
)
MIN_ROUND_SECONDS = 1.25 * ROUND / FRAMES_PER_SECOND


def raw_handshake(port: int, path: str) -> socket.socket:
    """A WebSocket handshake on a plain socket that will never read again (tiny receive
    window): unlike a client library, nothing drains it in the background."""
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    )
    return _never_reading(port, request.encode(), b"HTTP/1.1 101")


def _never_reading(port: int, request: bytes, status: bytes) -> socket.socket:
    """A plain socket with a tiny receive window that sends `request`, reads the answer's head
    byte by byte (checking its `status`) and nothing more."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    sock.sendall(request)
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)
        if not chunk:
            raise AssertionError("refused")
        head += chunk
    assert head.startswith(status), head[:80]
    return sock


def drained_to_end(sock: socket.socket) -> bytes:
    """Everything the server still sends, until it ends the connection (bounded)."""
    data = b""
    with contextlib.suppress(OSError):
        for _ in range(100_000):
            chunk = sock.recv(1 << 20)
            if not chunk:
                break
            data += chunk
    return data


def rss_kib(pid: int) -> int:
    """Resident set size of a process, from /proc/<pid>/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def test_never_reading_client_cut_off_memory_flat(secure: SecureMesh, infra: Infra) -> None:
    """A participant that never reads is disconnected; others get everything; edge RSS bounded."""
    alice, bob, sloth, watcher = await users(secure.mesh, "Alice", "Bob", "Sloth", "Watcher")
    edge = secure.edges[0]
    assert edge.popen is not None
    pid = edge.popen.pid
    a = await connect(secure.ws_url(0, alice["token"]), alice["id"])
    b = await connect(secure.ws_url(1, bob["token"]), bob["id"])
    w = await connect(secure.ws_url(0, watcher["token"]), watcher["id"])
    redis = aioredis.from_url(secure.redis_url)
    path = "/ws?" + secure.ws_url(0, sloth["token"]).split("?", 1)[1]
    slow = await asyncio.to_thread(raw_handshake, edge.port, path)
    try:
        room = await make_room(a, [bob["id"], sloth["id"], watcher["id"]])
        await w.wait_for(lambda f: f.get("type") == "room_created")
        before = rss_kib(pid)
        sent = 0
        cut_after: int | None = None
        at_cut = 0
        extra_rounds = 0
        rounds = 0
        while rounds < MAX_ROUNDS and extra_rounds < 10:
            rounds += 1
            round_started = asyncio.get_running_loop().time()
            for i in range(ROUND):
                await a.send(message_frame(room["id"], alice["id"], f"a{sent + i} " + BULK))
                await b.send(message_frame(room["id"], bob["id"], f"b{sent + i} " + BULK))
            sent += 2 * ROUND
            try:
                await w.wait_count(room["id"], sent, 60)
            except AssertionError as missing:
                # a refused send (rate limit, bus timeout) is never stored: name it, rather
                # than let it look like a message the watcher lost
                refused = a.of_type("error") + b.of_type("error")
                raise AssertionError(f"{missing}; senders refused: {refused[:3]}") from None
            elapsed = asyncio.get_running_loop().time() - round_started
            await asyncio.sleep(max(0.0, MIN_ROUND_SECONDS - elapsed))
            if cut_after is None and await redis.hlen(f"chat:conns:{sloth['id']}") == 0:
                cut_after = sent
                at_cut = rss_kib(pid)
            elif cut_after is not None:
                extra_rounds += 1
        if cut_after is None:
            # the queue overflowed but the close frame cannot reach a peer that does not read:
            # the socket is dropped after the close timeout; wait for that (bounded)
            for _ in range(300):  # at most 30 s
                if await redis.hlen(f"chat:conns:{sloth['id']}") == 0:
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("the non-reading client was never dropped")
            cut_after = sent
            at_cut = rss_kib(pid)
        after = rss_kib(pid)
        print(
            f"\nslow consumer: cut off after {cut_after} messages of ~16 KB; edge RSS "
            f"before {before} KiB, at cut-off {at_cut} KiB, "
            f"after {sent} messages {after} KiB (growth {after - before} KiB)"
        )
        assert cut_after is not None, f"slow client never cut off after {sent} messages"
        assert after - before < RSS_BOUND_KIB
        # everyone else got every message, in order
        assert [m["seq"] for m in w.messages(room["id"])] == list(range(1, sent + 1))
        # the slow client, reading at last, finds its stream ended by the server (the close
        # frame 4408 when it still fitted in the buffers, else a plain end: 1006 for a client)
        rest = await asyncio.to_thread(drained_to_end, slow)
        code = 4408 if b"\x88" in rest[-128:] and (4408).to_bytes(2, "big") in rest[-128:] else 1006
        print(f"slow client close code: {code}")
    finally:
        slow.close()
        for c in (a, b, w):
            await c.close()
        await redis.aclose()


def raw_event_stream(port: int, token: str) -> socket.socket:
    """`GET /events` on a plain socket that reads the answer's head and never reads again."""
    request = (
        f"GET /events?token={token} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        "Accept: text/event-stream\r\n\r\n"
    )
    return _never_reading(port, request.encode(), b"HTTP/1.1 200")


def _established(pid: int, server_port: int, client_port: int) -> bool:
    """Whether the process still holds that TCP connection open (its side of it)."""
    return any(
        c.laddr
        and c.raddr
        and c.laddr.port == server_port
        and c.raddr.port == client_port
        and c.status == psutil.CONN_ESTABLISHED
        for c in psutil.Process(pid).net_connections(kind="tcp")
    )


async def test_never_reading_event_stream_cut_off_and_its_socket_dropped(
    secure: SecureMesh,
) -> None:
    """An SSE client that never reads is cut off (queue full) like a WebSocket one, and its
    socket does not outlive the close timeout: the stream's last write cannot wait on a peer
    that never reads (before, the socket stayed open for good, outside the user's limit)."""
    alice, sloth = await users(secure.mesh, "Talker", "SseSloth")
    edge = secure.edges[0]
    assert edge.popen is not None
    a = await connect(secure.ws_url(0, alice["token"]), alice["id"])
    redis = aioredis.from_url(secure.redis_url)
    slow = await asyncio.to_thread(raw_event_stream, edge.port, sloth["token"])
    client_port = slow.getsockname()[1]
    try:
        room = await make_room(a, [sloth["id"]])
        sent = 0
        for _ in range(MAX_ROUNDS):
            started = asyncio.get_running_loop().time()
            for i in range(ROUND):
                await a.send(message_frame(room["id"], alice["id"], f"a{sent + i} " + BULK))
            sent += ROUND
            await a.wait_count(room["id"], sent, 60)
            if await redis.hlen(f"chat:conns:{sloth['id']}") == 0:
                break
            elapsed = asyncio.get_running_loop().time() - started
            await asyncio.sleep(max(0.0, MIN_ROUND_SECONDS - elapsed))
        else:
            raise AssertionError("the non-reading event stream was never cut off")
        close_timeout = float(EDGE.get("CHAT_CLOSE_TIMEOUT_SECONDS", "5"))
        for _ in range(int((close_timeout + 10) * 10)):
            if not _established(edge.popen.pid, edge.port, client_port):
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError(f"the edge kept the stream's socket after {sent} messages")
        print(f"\nslow event stream: cut off after {sent} messages of ~16 KB, socket dropped")
        logged = edge.log_path.read_text(errors="replace")
        assert "without completing response" not in logged  # dropped, not left half-answered
        assert "event stream failed" not in logged
    finally:
        slow.close()
        await a.close()
        await redis.aclose()
