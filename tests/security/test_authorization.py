"""Authorization: only participants post, read, sync or receive a room; no one acts as another."""

from __future__ import annotations

import asyncio
import re

import httpx
from security_helpers import (
    SecureMesh,
    auth,
    connect,
    http_get,
    make_room,
    message_frame,
    roundtrip,
    users,
)


async def test_outsider_on_both_nodes_never_receives_a_rooms_frames(secure: SecureMesh) -> None:
    """An outsider connected to both nodes gets no room_created or message_created of the room."""
    mesh = secure.mesh
    alice, bob, eve = await users(mesh, "Alice", "Bob", "Eve")
    a = await connect(secure.ws_url(0, alice["token"]), alice["id"])
    b = await connect(secure.ws_url(1, bob["token"]), bob["id"])
    eves = [await connect(secure.ws_url(i, eve["token"]), eve["id"]) for i in (0, 1)]
    try:
        room = await make_room(a, [bob["id"]])
        for i in range(10):
            await a.send(message_frame(room["id"], alice["id"], f"secret {i}"))
            await b.send(message_frame(room["id"], bob["id"], f"reply {i}"))
        await a.wait_count(room["id"], 20)
        await b.wait_count(room["id"], 20)
        for e in eves:
            await roundtrip(e)  # anything routed to eve's node before this is already here
        await asyncio.sleep(0.5)
        for e in eves:
            leaked = [f for f in e.frames if room["id"] in str(f)]
            assert leaked == [], leaked
            assert e.of_type("message_created") == []
            assert e.of_type("room_created") == []
    finally:
        for c in (a, b, *eves):
            await c.close()


async def test_outsider_cannot_post_read_or_sync(secure: SecureMesh) -> None:
    """Posting, history (every paging form) and sync of another's room are refused."""
    mesh = secure.mesh
    alice, eve = await users(mesh, "Alice", "Eve")
    a = await connect(secure.ws_url(0, alice["token"]), alice["id"])
    e = await connect(secure.ws_url(1, eve["token"]), eve["id"])
    try:
        room = await make_room(a, [])
        await a.send(message_frame(room["id"], alice["id"], "private"))
        await a.wait_count(room["id"], 1)
        await e.send(message_frame(room["id"], eve["id"], "let me in", requestId="post"))
        err = await e.wait_for(lambda f: f.get("requestId") == "post")
        assert err["error"]["code"] == "not_participant"
        for params in ({}, {"after": "0"}, {"before": "5"}, {"limit": "200"}):
            r = await http_get(
                f"{mesh.history}/rooms/{room['id']}/messages", eve["token"], params=params
            )
            assert r.status_code == 403, (params, r.text)
            assert r.json()["error"]["code"] == "not_participant"
            assert "private" not in r.text
        await e.send({"action": "sync", "rooms": {room["id"]: 0}, "requestId": "sync"})
        synced = await e.wait_for(lambda f: f.get("type") == "synced")
        assert room["id"] not in synced["rooms"]
        assert e.messages(room["id"]) == []
        rooms = await http_get(f"{mesh.rooms}/rooms", eve["token"])
        assert room["id"] not in rooms.text
        # the room is untouched: only alice's message is in it
        mine = await http_get(f"{mesh.history}/rooms/{room['id']}/messages", alice["token"])
        assert [m["content"] for m in mine.json()] == ["private"]
    finally:
        await a.close()
        await e.close()


async def test_sender_must_be_the_caller(secure: SecureMesh) -> None:
    """A senderId other than the token's subject is refused, also inside one's own room."""
    mesh = secure.mesh
    alice, bob = await users(mesh, "Alice", "Bob")
    a = await connect(secure.ws_url(0, alice["token"]), alice["id"])
    b = await connect(secure.ws_url(1, bob["token"]), bob["id"])
    try:
        room = await make_room(a, [bob["id"]])
        await a.send(message_frame(room["id"], bob["id"], "I am Bob", requestId="forge"))
        err = await a.wait_for(lambda f: f.get("requestId") == "forge")
        assert err["error"]["code"] == "sender_mismatch"
        await roundtrip(b)
        assert b.messages(room["id"]) == []
        history = await http_get(f"{mesh.history}/rooms/{room['id']}/messages", bob["token"])
        assert history.json() == []
    finally:
        await a.close()
        await b.close()


async def test_participants_list_grants_nothing_and_room_ids_unguessable(
    secure: SecureMesh,
) -> None:
    """Room ids carry 128 random bits; a body naming other users never acts as them."""
    mesh = secure.mesh
    alice, bob = await users(mesh, "Alice", "Bob")
    ids = []
    async with httpx.AsyncClient(timeout=10) as http:
        for _ in range(5):
            r = await http.post(
                f"{mesh.rooms}/rooms",
                json={"participants": [bob["id"]]},
                headers=auth(bob["token"]),
            )
            assert r.status_code == 201, r.text
            ids.append(r.json()["id"])
        # alice was never named: none of bob's rooms is hers
        listed = (await http.get(f"{mesh.rooms}/rooms", headers=auth(alice["token"]))).json()
        assert not {room["id"] for room in listed} & set(ids)
    assert len(set(ids)) == len(ids)
    for room_id in ids:
        assert re.fullmatch(r"room_[A-Za-z0-9_-]{22}", room_id), room_id  # 16 random bytes
