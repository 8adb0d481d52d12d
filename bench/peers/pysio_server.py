"""The python-socketio peer of `make bench`: one node of two behind the same Redis.

`AsyncServer` + `AsyncRedisManager` under uvicorn (uvloop, httptools, permessage-deflate off:
python-socketio's best configuration). Chat semantics only: `join` a room (acked), `chat` is
emitted to every member of the message's room, the sender included, on every node.
Usage: python pysio_server.py PORT REDIS_URL
"""

from __future__ import annotations

import sys
from typing import Any

import socketio  # type: ignore[import-untyped]
import uvicorn


def build(redis_url: str) -> socketio.ASGIApp:
    sio = socketio.AsyncServer(
        async_mode="asgi",
        client_manager=socketio.AsyncRedisManager(redis_url),
        transports=["websocket"],
        cors_allowed_origins="*",
    )

    @sio.on("join")  # type: ignore[untyped-decorator]
    async def join(sid: str, room: Any) -> bool:
        await sio.enter_room(sid, str(room))
        return True

    @sio.on("chat")  # type: ignore[untyped-decorator]
    async def chat(sid: str, msg: Any) -> None:
        if isinstance(msg, dict) and isinstance(msg.get("room"), str):
            await sio.emit("chat", msg, room=msg["room"])

    return socketio.ASGIApp(sio)


def main() -> None:
    port, redis_url = int(sys.argv[1]), sys.argv[2]
    uvicorn.run(
        build(redis_url),
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        ws="websockets-sansio",
        ws_per_message_deflate=False,
        access_log=False,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
