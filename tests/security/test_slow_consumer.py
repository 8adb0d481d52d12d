"""A client that never reads is cut off (4408, or dropped) while others chat; memory stays flat."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from pathlib import Path

import redis.asyncio as aioredis
import websockets
from security_helpers import SecureMesh, connect, make_room, message_frame, users

from mesh.testing import Infra

ROUND = 10  # messages per sender per round
MAX_ROUNDS = 60
# 3,990 characters of 4 bytes each in UTF-8: ~16 KB per frame sent (the contract counts characters)
BULK = "\U0001f600" * 3990
RSS_BOUND_KIB = 96 * 1024  # generous: the edge may grow this much at most during the run


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
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a tiny window: stalls early
    sock.connect(("127.0.0.1", edge.port))
    slow = await websockets.connect(
        secure.ws_url(0, sloth["token"]), sock=sock, max_queue=1, max_size=2**22
    )
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
            for i in range(ROUND):
                await a.send(message_frame(room["id"], alice["id"], f"a{sent + i} " + BULK))
                await b.send(message_frame(room["id"], bob["id"], f"b{sent + i} " + BULK))
            sent += 2 * ROUND
            await w.wait_count(room["id"], sent, 60)
            if cut_after is None and await redis.hlen(f"chat:conns:{sloth['id']}") == 0:
                cut_after = sent
                at_cut = rss_kib(pid)
            elif cut_after is not None:
                extra_rounds += 1
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
        # the slow client, reading at last, finds its stream ended by the server
        with contextlib.suppress(Exception):
            async with asyncio.timeout(10):
                async for _ in slow:
                    pass
        print(f"slow client close code: {slow.close_code}")
        assert slow.close_code in (4408, 1006)
    finally:
        with contextlib.suppress(Exception):
            await slow.close()
        for c in (a, b, w):
            await c.close()
        await redis.aclose()
