"""The HTTP + SSE variant (GET /events, POST messages on the edge) and presence, on two nodes."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
from chat_client import Mesh, WsClient, create_user, each_opening_gets_the_next_message, now_iso
from sse_client import SseClient


async def _room_over_http(mesh: Mesh, token: str, participants: list[str]) -> dict[str, Any]:
    async with httpx.AsyncClient() as http:
        r = await http.post(
            f"{mesh.rooms}/rooms",
            json={"participants": participants},
            headers={"authorization": f"Bearer {token}"},
        )
    assert r.status_code == 201, r.text
    room: dict[str, Any] = r.json()
    return room


async def _post_message(
    mesh: Mesh,
    edge: int,
    token: str,
    room_id: str,
    content: str,
    message_id: str | None = None,
    created_at: str | None = None,
) -> httpx.Response:
    async with httpx.AsyncClient(timeout=15) as http:
        return await http.post(
            f"{mesh.edges[edge]}/rooms/{room_id}/messages",
            json={
                "messageId": message_id or str(uuid.uuid4()),
                "content": content,
                "createdAt": created_at or now_iso(),
            },
            headers={"authorization": f"Bearer {token}"},
        )


async def test_sse_client_and_ws_client_chat_in_one_room(mesh: Mesh) -> None:
    """An SSE+HTTP user on node b and a WS user on node a create a room and chat both ways."""
    alice = await create_user(mesh, "Alice")
    bob = await create_user(mesh, "Bob")
    ws = await WsClient.connect(mesh.ws_url(0, alice["token"]), alice["id"])
    sse = await SseClient(mesh.edges[1], bob["token"]).start()
    try:
        assert sse.status == 200
        await sse.wait_for(lambda f: f.get("type") == "synced")
        room = await _room_over_http(mesh, bob["token"], [alice["id"]])
        created = await sse.wait_for(lambda f: f.get("type") == "room_created")
        assert created["room"] == room
        await ws.wait_for(lambda f: f.get("type") == "room_created")
        first = await _post_message(mesh, 1, bob["token"], room["id"], "Hi from SSE")
        assert first.status_code == 201, first.text
        assert first.json()["seq"] == 1
        assert first.json()["status"] == "success"
        await ws.wait_count(room["id"], 1)
        await ws.send_message(room["id"], "Hi from WS")
        await sse.wait_count(room["id"], 2)
        assert [m["seq"] for m in sse.messages(room["id"])] == [1, 2]
        assert sse.events[-1].id is not None
        again = await _post_message(
            mesh,
            0,
            bob["token"],
            room["id"],
            "Hi from SSE",
            first.json()["messageId"],
            first.json()["createdAt"],
        )
        assert again.status_code == 201
        assert again.json() == first.json()
        other = await _post_message(
            mesh, 0, bob["token"], room["id"], "other text", first.json()["messageId"]
        )
        assert other.status_code == 409
        assert other.json()["error"]["code"] == "conflict"
        stranger = await create_user(mesh, "Eve")
        refused = await _post_message(mesh, 0, stranger["token"], room["id"], "let me in")
        assert refused.status_code == 403
        assert refused.json()["error"]["code"] == "not_participant"
        missing = await _post_message(mesh, 0, bob["token"], "room_nope", "anyone?")
        assert missing.status_code == 404
        # the WS action's shape (with its roomId) is accepted for the path's room only
        async with httpx.AsyncClient(timeout=15) as http:
            answers = [
                await http.post(
                    f"{mesh.edges[0]}/rooms/{room['id']}/messages",
                    json={
                        "roomId": room_id,
                        "messageId": str(uuid.uuid4()),
                        "content": f"for {room_id}",
                        "createdAt": now_iso(),
                    },
                    headers={"authorization": f"Bearer {bob['token']}"},
                )
                for room_id in ("room_elsewhere", room["id"])
            ]
        assert answers[0].status_code == 400, answers[0].text
        assert answers[0].json()["error"]["code"] == "invalid_room_id"
        assert answers[1].status_code == 201, answers[1].text
        assert answers[1].json()["seq"] == 3  # the refused one took no seq
    finally:
        await sse.close()
        await ws.close()


async def test_a_message_sent_as_a_stream_opens_reaches_it(mesh: Mesh) -> None:
    """A fresh stream (no position) that the client sees open gets every message stored from
    then on, also when its node has to subscribe the room's feed for it."""
    alice = await create_user(mesh, "Quick")
    bob = await create_user(mesh, "Listener")
    ws = await WsClient.connect(mesh.ws_url(1, alice["token"]), alice["id"])
    try:
        room = await _room_over_http(mesh, alice["token"], [bob["id"]])

        async def open_bob() -> SseClient:
            sse = await SseClient(mesh.edges[0], bob["token"]).start()
            assert sse.status == 200
            return sse

        await each_opening_gets_the_next_message(open_bob, ws, room["id"])
    finally:
        await ws.close()


async def test_sse_resume_on_another_node_delivers_each_frame_once(mesh: Mesh) -> None:
    """Last-Event-ID on the other node replays missed messages and a new room, once each."""
    alice = await create_user(mesh, "Al")
    bob = await create_user(mesh, "Bo")
    ws = await WsClient.connect(mesh.ws_url(0, alice["token"]), alice["id"])
    sse = await SseClient(mesh.edges[0], bob["token"]).start()
    try:
        room = await _room_over_http(mesh, alice["token"], [bob["id"]])
        await sse.wait_for(lambda f: f.get("type") == "room_created")
        for i in range(3):
            await ws.send_message(room["id"], f"live {i}")
        await sse.wait_count(room["id"], 3)
        position = sse.last_event_id
        assert position is not None
        await sse.close()
        for i in range(4):
            await ws.send_message(room["id"], f"missed {i}")
        await ws.wait_count(room["id"], 7)
        room2 = await _room_over_http(mesh, alice["token"], [bob["id"]])
        await ws.send_message(room2["id"], "in the new room")
        await ws.wait_count(room2["id"], 1)
        resumed = await SseClient(mesh.edges[1], bob["token"], last_event_id=position).start()
        try:
            synced = await resumed.wait_for(lambda f: f.get("type") == "synced")
            assert synced["rooms"][room["id"]] == 7
            assert synced["rooms"][room2["id"]] == 1
            assert [m["seq"] for m in resumed.messages(room["id"])] == [4, 5, 6, 7]
            assert [m["content"] for m in resumed.messages(room2["id"])] == ["in the new room"]
            assert [f["room"]["id"] for f in resumed.of_type("room_created")] == [room2["id"]]
            await ws.send_message(room["id"], "after the resume")
            await resumed.wait_count(room["id"], 5)
            assert [m["seq"] for m in resumed.messages(room["id"])] == [4, 5, 6, 7, 8]
            # resuming from the latest position replays nothing
            again = await SseClient(
                mesh.edges[0], bob["token"], last_event_id=resumed.last_event_id
            ).start()
            try:
                await again.wait_for(lambda f: f.get("type") == "synced")
                assert again.of_type("message_created") == []
                assert again.of_type("room_created") == []
            finally:
                await again.close()
        finally:
            await resumed.close()
    finally:
        await ws.close()


async def test_sse_refuses_a_bad_token(mesh: Mesh) -> None:
    """GET /events with a bad token is a 401 with the JSON error body."""
    async with httpx.AsyncClient() as http:
        r = await http.get(f"{mesh.edges[0]}/events", params={"token": "nope"})
    assert r.status_code == 401
    assert r.json()["error"]["code"] in {"unauthorized", "token_invalid", "invalid_token"}


async def test_presence_frames_debounced_and_http_query(mesh: Mesh) -> None:
    """Bob coming online is announced once; a quick reconnect elsewhere is not an offline."""
    alice = await create_user(mesh, "Ann")
    bob = await create_user(mesh, "Ben")
    a = await WsClient.connect(mesh.ws_url(0, alice["token"]), alice["id"])
    try:
        room = await _room_over_http(mesh, alice["token"], [bob["id"]])
        await a.wait_for(lambda f: f.get("type") == "room_created")
        b1 = await WsClient.connect(mesh.ws_url(1, bob["token"]), bob["id"])
        await a.wait_for(lambda f: f.get("type") == "presence" and f["userId"] == bob["id"])
        assert a.of_type("presence")[-1] == {
            "type": "presence",
            "userId": bob["id"],
            "online": True,
        }
        async with httpx.AsyncClient() as http:
            r = await http.get(
                f"{mesh.edges[1]}/presence",
                params={"users": f"{alice['id']},{bob['id']},user_nobody"},
                headers={"authorization": f"Bearer {bob['token']}"},
            )
        assert r.status_code == 200
        assert r.json() == [
            {"userId": alice["id"], "online": True},
            {"userId": bob["id"], "online": True},
            {"userId": "user_nobody", "online": False},
        ]
        await b1.close()
        b2 = await WsClient.connect(mesh.ws_url(0, bob["token"]), bob["id"])
        await asyncio.sleep(6.5)
        assert [f["online"] for f in a.of_type("presence")] == [True]
        await b2.close()
        await a.wait_for(lambda f: f.get("type") == "presence" and f["online"] is False, within=20)
        assert [f["online"] for f in a.of_type("presence")] == [True, False]
        assert room["id"]
    finally:
        await a.close()
