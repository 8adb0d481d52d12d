"""`/metrics` on every service shows the traffic a scripted client just made; the client's
requestId is the correlation id in the logs from the edge through history to the pushes."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from chat_client import Mesh, WsClient, create_user

from mesh.testing import Infra, ServiceLauncher, ServiceProcess


@dataclass
class Traced:
    mesh: Mesh
    procs: dict[str, ServiceProcess]


@pytest.fixture(scope="module")
def traced(infra: Infra) -> Iterator[Traced]:
    """The mesh with DEBUG logs (per-message lines carry the correlation id)."""
    launcher = ServiceLauncher(infra, isolated=True)
    debug = {"CHAT_LOG_LEVEL": "DEBUG"}
    try:
        procs = {
            "users": launcher.start("users", "users_service"),
            "rooms": launcher.start("rooms", "rooms_service"),
            "history": launcher.start("history", "history_service", **debug),
            "edge-a": launcher.start("edge-a", "ws_edge", CHAT_NODE_ID="a", **debug),
            "edge-b": launcher.start("edge-b", "ws_edge", CHAT_NODE_ID="b", **debug),
        }
        mesh = Mesh(
            procs["users"].url,
            procs["rooms"].url,
            procs["history"].url,
            [procs["edge-a"].url, procs["edge-b"].url],
        )
        yield Traced(mesh, procs)
    finally:
        launcher.stop_all()


def _value(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels`."""
    total = 0.0
    found = False
    for line in text.splitlines():
        match = re.match(r"^(\w+)(?:\{(.*)\})? (\S+)$", line)
        if not match or match.group(1) != name:
            continue
        have = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            total += float(match.group(3))
            found = True
    assert found, f"no sample {name}{labels}"
    return total


def _log_lines(proc: ServiceProcess) -> list[dict[str, object]]:
    lines = []
    for raw in proc.log_path.read_text(errors="replace").splitlines():
        if raw.startswith("{"):
            try:
                lines.append(json.loads(raw))
            except ValueError:
                continue
    return lines


async def test_metrics_show_the_traffic_just_made(traced: Traced) -> None:
    """Users, rooms, history and both edges count what a client did a moment ago."""
    mesh = traced.mesh
    alice = await create_user(mesh, "Mia")
    bob = await create_user(mesh, "Max")
    a = await WsClient.connect(mesh.ws_url(0, alice["token"]), alice["id"])
    b = await WsClient.connect(mesh.ws_url(1, bob["token"]), bob["id"])
    try:
        await a.send({"action": "create_room", "participants": [bob["id"]], "requestId": "r1"})
        room = (await a.wait_for(lambda f: f.get("type") == "room_created"))["room"]
        for i in range(3):
            await a.send_message(room["id"], f"m{i}")
        await b.wait_count(room["id"], 3)
        await a.send({"action": "nope"})
        await a.wait_for(lambda f: f.get("type") == "error")
        async with httpx.AsyncClient() as http:
            bad = await http.post(f"{mesh.users}/users", json={"name": ""})
            assert bad.status_code == 400
            scraped = {
                name: (await http.get(f"{proc.url}/metrics")).text
                for name, proc in traced.procs.items()
            }
        users = scraped["users"]
        assert _value(users, "chat_http_requests_total", route="/users", status="201") >= 2
        assert _value(users, "chat_errors_total") >= 1
        assert _value(users, "chat_http_request_duration_seconds_count", route="/users") >= 3
        edge_a, edge_b = scraped["edge-a"], scraped["edge-b"]
        assert _value(edge_a, "chat_ws_frames_in_total", action="create_message") >= 3
        assert _value(edge_a, "chat_ws_connections") >= 1
        assert _value(edge_a, "chat_errors_total") >= 1  # the unknown action
        assert _value(edge_a, "chat_ws_send_queue_frames") >= 0
        # the sockets' pings come from the node-wide keepalive, not uvicorn's per-socket timers
        assert _value(edge_a, "chat_ws_keepalive_sockets") >= 1
        assert _value(edge_a, "chat_ws_keepalive_timeouts_total") == 0
        assert _value(edge_b, "chat_ws_frames_out_total", type="message_created") >= 3
        assert _value(edge_a, "chat_command_duration_seconds_count", command="create_room") >= 1
        history = scraped["history"]
        assert _value(history, "chat_command_duration_seconds_count", command="create_message") >= 3
        deadline = time.monotonic() + 10
        while True:  # the lag gauges are polled every few seconds
            try:
                pending = _value(
                    history, "chat_jetstream_consumer_pending", consumer="history-create-message"
                )
                break
            except AssertionError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.5)
                async with httpx.AsyncClient() as http:
                    history = (await http.get(f"{traced.procs['history'].url}/metrics")).text
        assert pending >= 0
        assert "history_messages_total" in history  # history's own metrics are still there
        assert "chat_http_requests_total" in scraped["rooms"]
    finally:
        await a.close()
        await b.close()


async def test_correlation_id_follows_a_message_through_the_mesh(traced: Traced) -> None:
    """A create_message's requestId is the correlation_id of history's store-write line and of
    the push lines on both edges; HTTP answers echo X-Request-Id."""
    mesh = traced.mesh
    alice = await create_user(mesh, "Cid")
    bob = await create_user(mesh, "Cal")
    a = await WsClient.connect(mesh.ws_url(0, alice["token"]), alice["id"])
    b = await WsClient.connect(mesh.ws_url(1, bob["token"]), bob["id"])
    try:
        await a.send({"action": "create_room", "participants": [bob["id"]], "requestId": "c0"})
        room = (await a.wait_for(lambda f: f.get("type") == "room_created"))["room"]
        await b.wait_for(lambda f: f.get("type") == "room_created")
        await a.send_message(room["id"], "traced", requestId="corr-trace-42")
        await b.wait_count(room["id"], 1)
        deadline = time.monotonic() + 5
        wanted = {
            "history": "create_message stored",
            "edge-a": "push message_created",
            "edge-b": "push message_created",
        }
        missing = dict(wanted)
        while missing and time.monotonic() < deadline:
            for name, text in list(missing.items()):
                for line in _log_lines(traced.procs[name]):
                    if line.get("correlation_id") == "corr-trace-42" and text in str(
                        line.get("msg")
                    ):
                        missing.pop(name)
                        break
            await asyncio.sleep(0.1)
        assert not missing, f"no line with the correlation id in {sorted(missing)}"
        async with httpx.AsyncClient() as http:
            answer = await http.get(f"{mesh.users}/healthz", headers={"x-request-id": "rid-7"})
            assert answer.headers["x-request-id"] == "rid-7"
            generated = await http.get(f"{mesh.users}/healthz")
            assert generated.headers["x-request-id"]
    finally:
        await a.close()
        await b.close()
