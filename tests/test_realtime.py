"""The seed's realtime path across two edge nodes, with real NATS, Redis and store."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest
from chat_client import Mesh, WsClient, create_user, each_opening_gets_the_next_message

SEED_ROOM_KEYS = {"id", "participants", "createdAt"}
SEED_MESSAGE_KEYS = {"roomId", "messageId", "content", "senderId", "createdAt", "status"}


async def _room(client: WsClient, participants: list[str]) -> dict:  # type: ignore[type-arg]
    rid = uuid.uuid4().hex
    await client.send({"action": "create_room", "participants": participants, "requestId": rid})
    frame = await client.wait_for(
        lambda f: f.get("type") == "room_created" and f.get("requestId") == rid
    )
    return frame["room"]  # type: ignore[no-any-return]


async def _history(mesh: Mesh, token: str, room_id: str, **params: str) -> httpx.Response:
    async with httpx.AsyncClient() as http:
        return await http.get(
            f"{mesh.history}/rooms/{room_id}/messages",
            params=params,
            headers={"authorization": f"Bearer {token}"},
        )


async def test_room_and_messages_reach_every_connection_on_both_nodes(mesh: Mesh) -> None:
    """create_room on node a reaches A (a), B (b) and B (a); messages both ways, same seqs."""
    alice = await create_user(mesh, "Alice")
    bob = await create_user(mesh, "Bob")
    a = await WsClient.connect(mesh.ws_url(0, alice["token"]), alice["id"])
    b1 = await WsClient.connect(mesh.ws_url(1, bob["token"]), bob["id"])
    b2 = await WsClient.connect(mesh.ws_url(0, bob["token"]), bob["id"])
    try:
        room = await _room(a, [alice["id"], bob["id"]])
        assert set(room) == SEED_ROOM_KEYS
        assert {p["id"] for p in room["participants"]} == {alice["id"], bob["id"]}
        assert {p["name"] for p in room["participants"]} == {"Alice", "Bob"}
        for client in (b1, b2):
            frame = await client.wait_for(lambda f: f.get("type") == "room_created")
            assert frame["room"] == room
            assert "requestId" not in frame
        await a.send_message(room["id"], "Hello!", requestId="r1")
        await b1.wait_count(room["id"], 1)
        await b1.send_message(room["id"], "Hi!")
        for client in (a, b1, b2):
            await client.wait_count(room["id"], 2)
        seqs = {tuple(m["seq"] for m in c.messages(room["id"])) for c in (a, b1, b2)}
        assert seqs == {(1, 2)}
        mine = [f for f in a.of_type("message_created") if f.get("requestId") == "r1"]
        assert len(mine) == 1
        assert all("requestId" not in f for f in b1.of_type("message_created"))
        history = await _history(mesh, alice["token"], room["id"])
        assert history.status_code == 200
        stored = history.json()
        assert [m["content"] for m in stored] == ["Hello!", "Hi!"]
        assert stored == a.messages(room["id"])
        for m in stored:
            assert set(m) >= SEED_MESSAGE_KEYS
            assert m["status"] == "success"
    finally:
        for client in (a, b1, b2):
            await client.close()


async def test_retry_is_idempotent_and_conflict_refused(mesh: Mesh) -> None:
    """The same messageId three times is one message; other content under it is a conflict."""
    alice = await create_user(mesh, "Al")
    bob = await create_user(mesh, "Bo")
    a = await WsClient.connect(mesh.ws_url(0, alice["token"]), alice["id"])
    b = await WsClient.connect(mesh.ws_url(1, bob["token"]), bob["id"])
    try:
        room = await _room(a, [bob["id"]])
        await b.wait_for(lambda f: f.get("type") == "room_created")
        for attempt in range(3):
            await a.send_message(room["id"], "once", message_id="msg_003", requestId=f"t{attempt}")
        for attempt in range(3):
            await a.wait_for(lambda f, n=attempt: f.get("requestId") == f"t{n}")
        await a.send_message(room["id"], "other", message_id="msg_003", requestId="c")
        err = await a.wait_for(lambda f: f.get("type") == "error" and f.get("requestId") == "c")
        assert err["error"]["code"] == "conflict"
        assert err["messageId"] == "msg_003"
        await a.send_message(room["id"], "next")
        await b.wait_count(room["id"], 2)
        assert [m["seq"] for m in b.messages(room["id"])] == [1, 2]
        stored = (await _history(mesh, bob["token"], room["id"])).json()
        assert [m["messageId"] for m in stored].count("msg_003") == 1
        assert len(stored) == 2
    finally:
        await a.close()
        await b.close()


async def test_create_room_again_with_its_key_gives_the_same_room(mesh: Mesh) -> None:
    """create_room with an idempotencyKey, sent again on the same connection and after a
    reconnect to the other node, answers the first room (one room); other participants under
    it: conflict."""
    alice = await create_user(mesh, "Ada")
    bob = await create_user(mesh, "Ben")
    carol = await create_user(mesh, "Cy")
    frame = {"action": "create_room", "participants": [bob["id"]], "idempotencyKey": "k-1"}
    a = await WsClient.connect(mesh.ws_url(0, alice["token"]), alice["id"])
    b = await WsClient.connect(mesh.ws_url(1, bob["token"]), bob["id"])
    a2: WsClient | None = None
    try:
        await a.send({**frame, "requestId": "first"})
        first = await a.wait_for(lambda f: f.get("requestId") == "first")
        assert first["type"] == "room_created", first
        # the same connection sends it again (it did not see the answer in time): answered
        await a.send({**frame, "requestId": "same-connection"})
        same = await a.wait_for(lambda f: f.get("requestId") == "same-connection", within=10)
        assert same["type"] == "room_created", same
        assert same["room"] == first["room"]
        assert len([f for f in a.frames if f.get("requestId") == "first"]) == 1
        await a.close()  # the answer "was lost": the client comes back on the other node
        a2 = await WsClient.connect(mesh.ws_url(1, alice["token"]), alice["id"])
        await a2.send({**frame, "requestId": "again"})
        again = await a2.wait_for(lambda f: f.get("requestId") == "again")
        assert again["type"] == "room_created"
        assert again["room"] == first["room"]
        await a2.send({**frame, "participants": [carol["id"]], "requestId": "other"})
        other = await a2.wait_for(lambda f: f.get("requestId") == "other")
        assert other["type"] == "error", other
        assert other["error"]["code"] == "conflict", other
        async with httpx.AsyncClient() as http:
            listed = await http.get(
                f"{mesh.rooms}/rooms", headers={"authorization": f"Bearer {alice['token']}"}
            )
        assert [r["id"] for r in listed.json()] == [first["room"]["id"]]
        await b.wait_for(lambda f: f.get("type") == "room_created")
        await b.send({"action": "sync", "rooms": {}, "requestId": "s"})
        await b.wait_for(lambda f: f.get("type") == "synced")
        assert len(b.of_type("room_created")) == 1
    finally:
        for client in (a, b, a2):
            if client is not None:
                await client.close()  # closing twice is harmless


async def test_a_message_sent_as_a_socket_opens_reaches_it(mesh: Mesh) -> None:
    """A message stored once the handshake is answered reaches the new connection, also when
    the node has to subscribe the room's feed for it (nobody else of the room is there)."""
    alice = await create_user(mesh, "Early")
    bob = await create_user(mesh, "Opener")
    a = await WsClient.connect(mesh.ws_url(1, alice["token"]), alice["id"])
    try:
        room = await _room(a, [bob["id"]])

        async def open_bob() -> WsClient:
            return await WsClient.connect(mesh.ws_url(0, bob["token"]), bob["id"])

        await each_opening_gets_the_next_message(open_bob, a, room["id"])
    finally:
        await a.close()


async def test_concurrent_senders_agree_on_order(mesh: Mesh) -> None:
    """Four users on two nodes send 25 each at once: all get seq 1..100 once, history order."""
    users = [await create_user(mesh, f"U{i}") for i in range(4)]
    clients = [
        await WsClient.connect(mesh.ws_url(i % 2, u["token"]), u["id"]) for i, u in enumerate(users)
    ]
    try:
        room = await _room(clients[0], [u["id"] for u in users])
        for c in clients[1:]:
            await c.wait_for(lambda f: f.get("type") == "room_created")

        async def burst(c: WsClient) -> None:
            for n in range(25):
                await c.send_message(room["id"], f"{c.user_id} #{n}")

        await asyncio.gather(*(burst(c) for c in clients))
        for c in clients:
            await c.wait_count(room["id"], 100, within=60)
        stored = (await _history(mesh, users[0]["token"], room["id"], limit="200")).json()
        assert [m["seq"] for m in stored] == list(range(1, 101))
        for c in clients:
            got = c.messages(room["id"])
            assert [m["seq"] for m in got] == list(range(1, 101))
            assert [m["messageId"] for m in got] == [m["messageId"] for m in stored]
        for c in clients:  # each sender's own messages kept their sending order
            own = [m["content"] for m in stored if m["senderId"] == c.user_id]
            assert own == [f"{c.user_id} #{n}" for n in range(25)]
    finally:
        for c in clients:
            await c.close()


async def test_reconnect_on_other_node_and_sync(mesh: Mesh) -> None:
    """B leaves, A sends 10, B reconnects on the other node and syncs: exactly those 10."""
    alice = await create_user(mesh, "A")
    bob = await create_user(mesh, "B")
    a = await WsClient.connect(mesh.ws_url(0, alice["token"]), alice["id"])
    b = await WsClient.connect(mesh.ws_url(0, bob["token"]), bob["id"])
    try:
        room = await _room(a, [bob["id"]])
        await b.wait_for(lambda f: f.get("type") == "room_created")
        await a.send_message(room["id"], "before")
        await b.wait_count(room["id"], 1)
        last_seen = b.messages(room["id"])[-1]["seq"]
        await b.close()
        for n in range(10):
            await a.send_message(room["id"], f"while away {n}")
        await a.wait_count(room["id"], 11)
        b2 = await WsClient.connect(mesh.ws_url(1, bob["token"]), bob["id"])
        await b2.send({"action": "sync", "rooms": {room["id"]: last_seen}, "requestId": "s"})
        synced = await b2.wait_for(lambda f: f.get("type") == "synced")
        got = b2.messages(room["id"])
        assert [m["seq"] for m in got] == list(range(2, 12))
        assert synced["rooms"][room["id"]] == 11
        assert synced["requestId"] == "s"
        assert b2.frames.index(synced) > max(
            i for i, f in enumerate(b2.frames) if f.get("type") == "message_created"
        )
        await b2.close()
    finally:
        await a.close()


async def test_outsider_and_impersonation_refused(mesh: Mesh) -> None:
    """Non-participants cannot post or sync a room; senderId must be the caller."""
    alice = await create_user(mesh, "Owner")
    eve = await create_user(mesh, "Eve")
    a = await WsClient.connect(mesh.ws_url(0, alice["token"]), alice["id"])
    e = await WsClient.connect(mesh.ws_url(1, eve["token"]), eve["id"])
    try:
        room = await _room(a, [])
        await e.send_message(room["id"], "let me in", requestId="x1")
        err = await e.wait_for(lambda f: f.get("requestId") == "x1")
        assert err["error"]["code"] == "not_participant"
        await a.send_message(room["id"], "as eve", requestId="x2", senderId=eve["id"])
        err = await a.wait_for(lambda f: f.get("requestId") == "x2")
        assert err["error"]["code"] == "sender_mismatch"
        await e.send({"action": "sync", "rooms": {room["id"]: 0}, "requestId": "x3"})
        synced = await e.wait_for(lambda f: f.get("type") == "synced")
        assert room["id"] not in synced["rooms"]
        assert any(f.get("type") == "error" and f.get("roomId") == room["id"] for f in e.frames)
        resp = await _history(mesh, eve["token"], room["id"])
        assert resp.status_code == 403
        await e.send_message("room_doesnotexist", "?", requestId="x4")
        err = await e.wait_for(lambda f: f.get("requestId") == "x4")
        assert err["error"]["code"] == "unknown_room"
    finally:
        await a.close()
        await e.close()


async def test_bad_token_refused_at_handshake(mesh: Mesh) -> None:
    """A missing or forged token gets HTTP 401 at the handshake."""
    import websockets

    for token in ("", "forged.token.value"):
        with pytest.raises(websockets.InvalidStatus) as refused:
            await websockets.connect(mesh.ws_url(0, token), open_timeout=5)
        assert refused.value.response.status_code == 401


def _short_lived_token(user_id: str, seconds_left: float) -> str:
    """A token the edge accepts now but whose expiry (plus the default 30 s leeway) is near."""
    import time

    from infra.auth import TokenService
    from mesh.testing import TEST_SECRET

    ttl = 60
    issued = time.time() - ttl - 30 + seconds_left
    return TokenService(TEST_SECRET, "chat", ttl, 30).issue(user_id, now=issued)[0]


async def test_expired_connection_closed_with_4401_unless_refreshed(mesh: Mesh) -> None:
    """An open connection whose token expires is closed with 4401; `refresh` keeps it open."""
    user = await create_user(mesh, "Shorty")
    other = await create_user(mesh, "Other")
    expiring = await WsClient.connect(mesh.ws_url(0, _short_lived_token(user["id"], 2)), user["id"])
    refreshed = await WsClient.connect(
        mesh.ws_url(1, _short_lived_token(user["id"], 2)), user["id"]
    )
    try:
        await refreshed.send({"action": "refresh", "token": other["token"], "requestId": "bad"})
        err = await refreshed.wait_for(lambda f: f.get("requestId") == "bad")
        assert err["type"] == "error"
        await refreshed.send({"action": "refresh", "token": "garbage", "requestId": "bad2"})
        err = await refreshed.wait_for(lambda f: f.get("requestId") == "bad2")
        assert err["error"]["code"] == "unauthorized"
        await refreshed.send({"action": "refresh", "token": user["token"], "requestId": "ok"})
        ok = await refreshed.wait_for(lambda f: f.get("requestId") == "ok")
        assert ok["type"] == "refreshed"
        assert ok["expiresAt"].endswith("Z")
        await asyncio.wait_for(expiring.closed.wait(), 15)
        assert expiring.close_code == 4401
        await asyncio.sleep(1.5)
        assert not refreshed.closed.is_set()
        await refreshed.send({"action": "sync", "rooms": {}, "requestId": "still"})
        await refreshed.wait_for(lambda f: f.get("requestId") == "still")
    finally:
        await expiring.close()
        await refreshed.close()


async def test_order_per_connection_with_two_history_replicas(
    mesh_procs: tuple[Mesh, object],
) -> None:
    """With two history processes, each connection's messages keep their sending order."""
    mesh, launcher = mesh_procs
    second = launcher.start("history-2", "history_service")  # type: ignore[attr-defined]
    try:
        users = [await create_user(mesh, f"R{i}") for i in range(3)]
        clients = [
            await WsClient.connect(mesh.ws_url(i % 2, u["token"]), u["id"])
            for i, u in enumerate(users)
        ]
        room = await _room(clients[0], [u["id"] for u in users])
        for c in clients[1:]:
            await c.wait_for(lambda f: f.get("type") == "room_created")

        async def burst(c: WsClient) -> None:
            for n in range(30):
                await c.send_message(room["id"], f"{c.user_id} #{n}")

        await asyncio.gather(*(burst(c) for c in clients))
        for c in clients:
            await c.wait_count(room["id"], 90, within=60)
        got = clients[0].messages(room["id"])
        assert [m["seq"] for m in got] == list(range(1, 91))
        for c in clients:
            own = [m["content"] for m in got if m["senderId"] == c.user_id]
            assert own == [f"{c.user_id} #{n}" for n in range(30)]
        for c in clients:
            await c.close()
    finally:
        second.stop()
