"""The real load balancer: Debian's nginx with the compose template, in front of a process mesh.

nginx comes from scripts/install-nginx.sh (the Makefile's test target runs it first). It is
rendered from compose/nginx/nginx.conf.template with free ports and a temp folder, runs as its
own process (`daemon off;`, own prefix, pid and logs) and is stopped by its pid.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from chat_client import WsClient, now_iso

from mesh import lb, servers
from mesh.testing import Infra, ServiceLauncher, ServiceProcess

# Short on purpose: a connection idle for longer than this would be cut by nginx, so the idle
# test below (15 s) only passes because the edges' pings (every 2 s) cross the LB.
IDLE_TIMEOUT_SECONDS = 6
PING_INTERVAL_SECONDS = 2


@dataclass
class Balanced:
    """A mesh of processes behind one nginx."""

    url: str
    launcher: ServiceLauncher
    edges: dict[str, ServiceProcess]
    nginx: servers.Proc

    @property
    def ws(self) -> str:
        return self.url.replace("http://", "ws://") + "/ws"


def _wait_http(url: str, proc: servers.Proc, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"nginx exited:\n{proc.log_tail()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1).status_code == 200:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nginx did not answer {url}:\n{proc.log_tail()}")


@pytest.fixture(scope="module")
def balanced(infra: Infra) -> Iterator[Balanced]:
    """Two replicas of every service, two edge nodes, and nginx in front of all of them."""
    nginx = lb.find_nginx()
    if nginx is None:
        pytest.fail("nginx is not installed: run scripts/install-nginx.sh (make test does)")
    launcher = ServiceLauncher(infra, isolated=True)
    workdir = Path(tempfile.mkdtemp(prefix="chat-lb-"))
    proc: servers.Proc | None = None
    try:
        users = [launcher.start(f"users-{i}", "users_service") for i in (1, 2)]
        rooms = [launcher.start(f"rooms-{i}", "rooms_service") for i in (1, 2)]
        history = [launcher.start(f"history-{i}", "history_service") for i in (1, 2)]
        ping = {"CHAT_PING_INTERVAL_SECONDS": str(PING_INTERVAL_SECONDS)}
        edge_a = launcher.start("edge-a", "ws_edge", CHAT_NODE_ID="a", **ping)
        edge_b = launcher.start("edge-b", "ws_edge", CHAT_NODE_ID="b", **ping)
        port = servers.free_port()
        values = lb.nginx_values(
            workdir,
            port,
            users=[f"127.0.0.1:{p.port}" for p in users],
            rooms=[f"127.0.0.1:{p.port}" for p in rooms],
            history=[f"127.0.0.1:{p.port}" for p in history],
            edges=[f"127.0.0.1:{edge_a.port}", f"127.0.0.1:{edge_b.port}"],
            idle_timeout=f"{IDLE_TIMEOUT_SECONDS}s",
            fail_timeout="5s",
        )
        # nginx started as root runs its workers as an unprivileged user: let them in
        workdir.chmod(0o755)
        (workdir / "temp").chmod(0o777)
        conf = workdir / "nginx.conf"
        conf.write_text(lb.render(lb.TEMPLATE.read_text(), values))
        log = workdir / "logs" / "nginx.out"
        popen = servers.spawn("nginx", lb.nginx_command(nginx, workdir, conf), log)
        proc = servers.Proc("nginx", popen, port, f"http://127.0.0.1:{port}", log)
        _wait_http(f"{proc.url}/lb/healthz", proc)
        yield Balanced(proc.url, launcher, {"a": edge_a, "b": edge_b}, proc)
    finally:
        if proc is not None:
            proc.stop()
        launcher.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)


async def _user(http: httpx.AsyncClient, name: str) -> dict[str, Any]:
    r = await http.post("/users", json={"name": name})
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


async def _connect(balanced: Balanced, user: dict[str, Any]) -> WsClient:
    return await WsClient.connect(f"{balanced.ws}?token={user['token']}", user["id"])


async def _room(client: WsClient, participants: list[str]) -> dict[str, Any]:
    rid = uuid.uuid4().hex[:12]
    await client.send({"action": "create_room", "participants": participants, "requestId": rid})
    frame = await client.wait_for(
        lambda f: f.get("type") == "room_created" and f.get("requestId") == rid
    )
    room: dict[str, Any] = frame["room"]
    return room


async def test_rest_flow_through_the_lb(balanced: Balanced) -> None:
    """Users, token, rooms and history over the LB's one address; errors keep the JSON shape."""
    async with httpx.AsyncClient(base_url=balanced.url, timeout=10) as http:
        alice = await _user(http, "Alice")
        bob = await _user(http, "Bob")
        auth = {"authorization": f"Bearer {alice['token']}"}
        listed = await http.get("/users", headers=auth)
        assert listed.status_code == 200
        assert bob["id"] in {u["id"] for u in listed.json()}
        assert listed.headers.get("x-request-id")
        one = await http.get(f"/users/{bob['id']}", headers=auth)
        assert one.json() == {k: v for k, v in bob.items() if k != "token"}
        assert (await http.post("/token", headers=auth)).status_code == 200
        created = await http.post("/rooms", json={"participants": [bob["id"]]}, headers=auth)
        assert created.status_code == 201, created.text
        room = created.json()
        rooms = await http.get("/rooms", headers=auth)
        assert room["id"] in {r["id"] for r in rooms.json()}
        history = await http.get(f"/rooms/{room['id']}/messages", headers=auth)
        assert history.status_code == 200
        assert history.json() == []
        # POST on the same path is the edges' HTTP variant of create_message
        body = {"messageId": "m-lb-1", "content": "via LB", "createdAt": now_iso()}
        sent = await http.post(f"/rooms/{room['id']}/messages", json=body, headers=auth)
        assert sent.status_code in (201, 202), sent.text
        for _ in range(100):
            history = await http.get(f"/rooms/{room['id']}/messages", headers=auth)
            if history.json():
                break
            await asyncio.sleep(0.05)
        assert [(m["content"], m["seq"]) for m in history.json()] == [("via LB", 1)]
        missing = await http.get("/rooms/room_missing/messages", headers=auth)
        assert missing.status_code in (403, 404)
        assert "error" in missing.json()
        unauthenticated = await http.get("/rooms")
        assert unauthenticated.status_code == 401
        assert unauthenticated.json()["error"]["code"]
        # the web client and its config come from the edges
        assert (await http.get("/")).status_code == 200
        assert (await http.get("/config")).json()["node"] in ("a", "b")
        assert (await http.get("/metrics")).status_code == 404  # scraped per replica only


async def test_websocket_flow_through_the_lb(balanced: Balanced) -> None:
    """The seed's realtime flow over WS upgrades through the LB, checked against history."""
    async with httpx.AsyncClient(base_url=balanced.url, timeout=10) as http:
        alice = await _user(http, "Ann")
        bob = await _user(http, "Ben")
        a = await _connect(balanced, alice)
        b = await _connect(balanced, bob)
        try:
            room = await _room(a, [bob["id"]])
            await b.wait_for(lambda f: f.get("type") == "room_created")
            await a.send_message(room["id"], "Hello!")
            await b.wait_count(room["id"], 1)
            await b.send_message(room["id"], "Hi!")
            await a.wait_count(room["id"], 2)
            stored = await http.get(
                f"/rooms/{room['id']}/messages",
                headers={"authorization": f"Bearer {alice['token']}"},
            )
            assert stored.json() == a.messages(room["id"]) == b.messages(room["id"])
            assert [m["seq"] for m in stored.json()] == [1, 2]
        finally:
            await a.close()
            await b.close()


async def test_idle_websocket_survives_the_lb_timeout(balanced: Balanced) -> None:
    """A client that sends nothing (not even pings) for 15 s > the LB's 6 s idle timeout keeps
    its socket: the edge's pings cross nginx, and the socket still works afterwards."""
    async with httpx.AsyncClient(base_url=balanced.url, timeout=10) as http:
        alice = await _user(http, "Idle")
    url = f"{balanced.ws}?token={alice['token']}"
    async with websockets.connect(url, ping_interval=None, open_timeout=10) as ws:
        await asyncio.sleep(IDLE_TIMEOUT_SECONDS * 2.5)
        await ws.send(json.dumps({"action": "sync", "rooms": {}, "requestId": "after-idle"}))
        answer = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert answer["type"] == "synced"
        assert answer.get("requestId") == "after-idle"
        # and those pings were the node-wide keepalive's (uvicorn's own timers were taken over)
        async with httpx.AsyncClient(timeout=10) as http:
            scraped = [(await http.get(f"{e.url}/metrics")).text for e in balanced.edges.values()]
        pinged = [
            float(line.split()[-1])
            for text in scraped
            for line in text.splitlines()
            if line.startswith("chat_ws_keepalive_sockets ")
        ]
        assert len(pinged) == 2, pinged
        assert sum(pinged) >= 1, pinged


async def test_sse_streams_through_the_lb_without_buffering(balanced: Balanced) -> None:
    """GET /events through the LB delivers each frame as it happens (skipped without SSE)."""
    async with httpx.AsyncClient(base_url=balanced.url, timeout=10) as http:
        alice = await _user(http, "Sse")
        bob = await _user(http, "Sid")
        headers = {"accept": "text/event-stream"}
        async with http.stream(
            "GET", "/events", params={"token": alice["token"]}, headers=headers
        ) as stream:
            if stream.status_code == 404:
                pytest.skip("GET /events is not served by ws-edge yet")
            assert stream.status_code == 200
            assert stream.headers["content-type"].startswith("text/event-stream")
            lines = stream.aiter_lines()
            await asyncio.sleep(0.5)  # the stream is registered before the room is created
            auth = {"authorization": f"Bearer {alice['token']}"}
            created = await http.post("/rooms", json={"participants": [bob["id"]]}, headers=auth)
            assert created.status_code == 201
            started = time.monotonic()

            async def until_room_created() -> None:
                async for line in lines:
                    if line.strip() == "event: room_created":
                        return

            # one small event, no padding: it arrives only if nothing buffers the stream
            await asyncio.wait_for(until_room_created(), 5)
            assert time.monotonic() - started < 5


async def _reconnect(balanced: Balanced, user: dict[str, Any]) -> WsClient:
    """Reconnect through the LB with backoff (for up to 20 s), as a client does after a 1001."""
    deadline = time.monotonic() + 20
    delay = 0.2
    while True:
        try:
            return await _connect(balanced, user)
        except (OSError, websockets.InvalidHandshake, TimeoutError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2)


async def test_edge_node_stopped_behind_the_lb(balanced: Balanced) -> None:
    """Edge a stops: its clients get 1001, reconnect through the LB (to b), sync, and have
    every message exactly once; then a comes back."""
    async with httpx.AsyncClient(base_url=balanced.url, timeout=10) as http:
        alice = await _user(http, "Ava")
        bob = await _user(http, "Bea")
    users = {alice["id"]: alice, bob["id"]: bob}
    # least_conn spreads these four over both nodes
    clients = [await _connect(balanced, u) for u in (alice, alice, bob, bob)]
    room = await _room(clients[0], [bob["id"]])
    try:
        for client in clients:
            await client.wait_for(lambda f: f.get("type") == "room_created")
        await clients[0].send_message(room["id"], "before")
        for client in clients:
            await client.wait_count(room["id"], 1)

        edge_a = balanced.edges["a"]
        await asyncio.to_thread(edge_a.stop)
        for client in clients:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(client.closed.wait(), 0.5)
        gone = [c for c in clients if c.closed.is_set()]
        alive = [c for c in clients if not c.closed.is_set()]
        assert gone, "no connection was on node a"
        assert alive, "no connection was on node b"
        assert {c.close_code for c in gone} == {1001}

        # the conversation goes on while they are away
        for text in ("while-1", "while-2", "while-3"):
            await alive[0].send_message(room["id"], text)
        for client in alive:
            await client.wait_count(room["id"], 4)

        for old in gone:
            last = max(m["seq"] for m in old.messages(room["id"]))
            new = await _reconnect(balanced, users[old.user_id])
            clients.append(new)
            await new.send({"action": "sync", "rooms": {room["id"]: last}, "requestId": "s"})
            synced = await new.wait_for(lambda f: f.get("type") == "synced")
            assert synced["rooms"][room["id"]] == 4
            replayed = [m["seq"] for m in new.messages(room["id"])]
            assert replayed == [2, 3, 4]  # exactly the missed ones, once, in order
            assert [m["content"] for m in new.messages(room["id"])] == [
                "while-1",
                "while-2",
                "while-3",
            ]
        # the LB keeps serving REST meanwhile
        async with httpx.AsyncClient(base_url=balanced.url, timeout=10) as http:
            auth = {"authorization": f"Bearer {alice['token']}"}
            stored = await http.get(f"/rooms/{room['id']}/messages", headers=auth)
            assert [m["seq"] for m in stored.json()] == [1, 2, 3, 4]
    finally:
        for client in clients:
            await client.close()
        await asyncio.to_thread(balanced.edges["a"].start)
    async with httpx.AsyncClient(timeout=5) as http:
        assert (await http.get(f"{balanced.edges['a'].url}/readyz")).status_code == 200


def test_nginx_runs_as_its_own_process(balanced: Balanced) -> None:
    """nginx is this test's child (own pid file in its temp prefix), stopped by that pid."""
    pid_file = Path(balanced.nginx.log_path).parent.parent / "nginx.pid"
    assert int(pid_file.read_text().strip()) == balanced.nginx.pid
    assert os.getpgid(balanced.nginx.pid) == balanced.nginx.pid


async def test_sign_ups_are_limited_per_address(balanced: Balanced) -> None:
    """`POST /users` beyond the LB's per-address burst gets 429 `rate_limited` in the contract's
    JSON shape, without reaching users; other calls from that address are not counted.

    From 127.0.0.2, an address of its own: the module's other tests sign up from 127.0.0.1."""
    transport = httpx.AsyncHTTPTransport(local_address="127.0.0.2")
    async with httpx.AsyncClient(base_url=balanced.url, timeout=10, transport=transport) as http:
        answers = [(await http.post("/users", json={"name": f"su{i}"})) for i in range(40)]
        created = [r for r in answers if r.status_code == 201]
        refused = [r for r in answers if r.status_code == 429]
        # the burst of 30 (lb.nginx_values) and the one the rate allows; the rest refused
        assert (len(created), len(refused)) == (31, 9), [r.status_code for r in answers]
        assert all(r.headers.get("x-request-id") for r in created)  # the server's headers
        for r in refused:
            assert r.headers["content-type"].startswith("application/json")
            assert r.json()["error"]["code"] == "rate_limited"
            assert r.headers["retry-after"] == "60"
            assert r.headers["x-request-id"]
        # not counted: reads and token refreshes from the same address
        token = created[0].json()["token"]
        auth = {"authorization": f"Bearer {token}"}
        for _ in range(40):
            assert (await http.get("/users", headers=auth)).status_code == 200
        assert (await http.post("/token", headers=auth)).status_code == 200
        # a refused sign-up never reached users: exactly the created ones are listed
        names: list[str] = []
        url: str | None = "/users?limit=200"
        while url:
            page = await http.get(url, headers=auth)
            assert page.status_code == 200, page.text
            names += [u["name"] for u in page.json()]
            url = page.links.get("next", {}).get("url")
        signed_up = {n for n in names if n.startswith("su")} | {created[0].json()["name"]}
        assert signed_up == {r.json()["name"] for r in created}
