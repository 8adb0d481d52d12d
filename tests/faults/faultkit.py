"""The fault suite's toolkit: a throw-away mesh of real processes, a client that follows the
contract's client rules (reconnect with jittered backoff, `sync`, retry by `messageId`), and
the figures every scenario prints and checks.

Everything listens on 127.0.0.1 only; every process is started and stopped (or killed) by the
pid it was started with; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import shutil
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import websockets

from contracts import subjects
from infra.provision import ensure_streams, ensure_tables
from infra.settings import CommonSettings
from infra.store import open_dynamo_admin
from mesh import servers
from mesh.testing import Infra, ServiceLauncher, ServiceProcess

# Client pacing: the contract's client backs off from 0.5 s up to 15 s; the suite uses the same
# jittered doubling with smaller bounds so that a scenario stays short.
BACKOFF_FIRST = 0.2
BACKOFF_MAX = 2.0
MAX_CONNECT_ATTEMPTS = 200  # in a row, per client
RETRY_AFTER = 4.0  # an unacknowledged message is sent again (same messageId) after this
MAX_SEND_ATTEMPTS = 60

# The suite runs every service with the defaults (history's ack_wait among them: a command
# fetched by a killed history replica comes back after 5 s), logging at INFO.
SUITE_ENV = {"CHAT_LOG_LEVEL": "INFO"}


def now_iso() -> str:
    from datetime import UTC, datetime

    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def bounded(what: str, check: Callable[[], bool], limit: float, step: float = 0.05) -> None:
    """Wait until `check()` holds; AssertionError naming `what` after `limit` seconds."""
    deadline = time.monotonic() + limit
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {limit:.0f}s waiting for {what}")
        await asyncio.sleep(step)


# ------------------------------------------------------------------------------------------------
# the mesh


class FaultMesh:
    """NATS (one node or a 3-node JetStream cluster), Redis, dynalite and the services, as
    local processes on free ports with a temporary data folder; all stopped by pid."""

    def __init__(self, cluster: bool = False) -> None:
        self.cluster = cluster
        self.workdir = Path(tempfile.mkdtemp(prefix="chat-faults-"))
        self.infra = Infra("", "", "", "f_", "local", self.workdir)
        self.nats_nodes: list[servers.Proc] = []
        self.nats_args: list[dict[str, Any]] = []
        self.launcher = ServiceLauncher(self.infra)
        self.services: dict[str, ServiceProcess] = {}

    # --- servers --------------------------------------------------------------------------------

    def start_servers(self) -> None:
        logs = self.workdir / "logs"
        if self.cluster:
            client_ports = [servers.free_port() for _ in range(3)]
            route_ports = [servers.free_port() for _ in range(3)]
            routes = [f"nats-route://127.0.0.1:{p}" for p in route_ports]
            for i in range(3):
                self.nats_args.append(
                    {
                        "port": client_ports[i],
                        "data_dir": self.workdir / f"nats-{i + 1}",
                        "log_path": logs / f"nats-{i + 1}.log",
                        "server_name": f"n{i + 1}",
                        "cluster_port": route_ports[i],
                        "routes": routes,
                    }
                )
        else:
            self.nats_args.append(
                {
                    "port": servers.free_port(),
                    "data_dir": self.workdir / "nats",
                    "log_path": logs / "nats.log",
                }
            )
        for args in self.nats_args:
            self.nats_nodes.append(servers.start_nats(**args))
        self.infra.nats_url = ",".join(n.url for n in self.nats_nodes)
        for name in ("redis", "dynamo"):
            self.infra._start_local(name, servers.free_port())
        self.infra.redis_url = self.infra.procs["redis"].url
        self.infra.dynamo_url = self.infra.procs["dynamo"].url

    async def provision(self, limit: float = 60.0) -> None:
        settings = self.settings()
        async with open_dynamo_admin(settings) as client:
            await ensure_tables(client, settings.table_prefix)
        deadline = time.monotonic() + limit
        while True:  # a fresh cluster elects its JetStream meta leader first
            try:
                await ensure_streams(settings, replicas=3 if self.cluster else 1)
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.5)

    def settings(self) -> CommonSettings:
        return CommonSettings(
            nats_urls=self.infra.nats_url,
            redis_url=self.infra.redis_url,
            dynamo_url=self.infra.dynamo_url,
            table_prefix=self.infra.table_prefix,
            env="test",
        )

    def restart_nats_node(self, index: int) -> servers.Proc:
        """Start a (killed) NATS node again on the same ports and data folder."""
        node = servers.start_nats(**self.nats_args[index])
        self.nats_nodes[index] = node
        return node

    def redis(self) -> servers.Proc:
        return self.infra.procs["redis"]

    def dynamo(self) -> servers.Proc:
        return self.infra.procs["dynamo"]

    def start_server_again(self, name: str) -> servers.Proc:
        """Start `redis` or `dynamo` again (after a kill or stop) on its port and data."""
        return self.infra._start_local(name, self.infra.procs[name].port)

    # --- services -------------------------------------------------------------------------------

    def start_service(self, name: str, module: str, **env: str) -> ServiceProcess:
        proc = self.launcher.start(name, module, **SUITE_ENV, **env)
        self.services[name] = proc
        return proc

    async def up(self, history_replicas: int = 1) -> FaultMesh:
        """Servers, tables and streams, then users, rooms, history (xN) and edges a and b."""
        await asyncio.to_thread(self.start_servers)
        await self.provision()
        wanted = [("users", "users_service", {}), ("rooms", "rooms_service", {})]
        wanted += [
            ("history" if i == 0 else f"history-{i + 1}", "history_service", {})
            for i in range(history_replicas)
        ]
        wanted += [
            ("edge-a", "ws_edge", {"CHAT_NODE_ID": "a"}),
            ("edge-b", "ws_edge", {"CHAT_NODE_ID": "b"}),
        ]
        for name, module, env in wanted:
            await asyncio.to_thread(self.start_service, name, module, **env)
        return self

    @property
    def edges(self) -> list[str]:
        return [self.services["edge-a"].url, self.services["edge-b"].url]

    def stop(self) -> None:
        self.launcher.stop_all()
        for node in self.nats_nodes:
            node.stop()
        for proc in self.infra.procs.values():
            proc.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def log_tails(self) -> str:
        parts = []
        for name, proc in self.services.items():
            parts.append(f"--- {name}\n{proc.log_tail(15)}")
        return "\n".join(parts)

    async def commands_left(self) -> int:
        """Commands still waiting in CHAT_COMMANDS (work queue: removed once applied)."""
        import nats

        nc = await nats.connect(servers=self.settings().nats_servers, connect_timeout=3)
        try:
            info = await nc.jetstream(timeout=5).stream_info(subjects.COMMANDS_STREAM)
            return int(info.state.messages)
        finally:
            await nc.close()

    async def stream_leader(self, stream: str) -> str:
        """Server name of a stream's cluster leader (cluster mode)."""
        import nats

        nc = await nats.connect(servers=self.settings().nats_servers, connect_timeout=3)
        try:
            info = await nc.jetstream(timeout=5).stream_info(stream)
            return str(info.cluster.leader) if info.cluster else ""
        finally:
            await nc.close()


# ------------------------------------------------------------------------------------------------
# the client


@dataclass
class Outgoing:
    """A message this client sent; pending until its own `message_created` arrives."""

    room_id: str
    message_id: str
    content: str
    created_at: str
    first_sent: float
    last_sent: float = 0.0
    attempts: int = 0
    on_connection: int = 0
    acked_at: float | None = None
    seq: int | None = None


class ChatUser:
    """One user on one WebSocket at a time, following the contract's client rules."""

    def __init__(
        self, name: str, user: dict[str, Any], edges: list[str], edge: int, history_url: str
    ) -> None:
        self.name = name
        self.user_id: str = user["id"]
        self.token: str = user["token"]
        self.edges = edges
        self.edge = edge
        self.history_url = history_url
        self.held: dict[str, dict[int, dict[str, Any]]] = {}
        self.contiguous: dict[str, int] = {}
        self.redundant = 0  # a message this client already had, sent again (not a retry answer)
        self.inconsistent = 0  # a seq already held arrived with another message
        self.outgoing: dict[str, Outgoing] = {}
        self.errors: Counter[str] = Counter()
        self.rooms_announced: Counter[str] = Counter()  # room_created frames per room
        self.room_answers: dict[str, dict[str, Any]] = {}  # requestId -> room_created / error
        self.ws: Any = None
        self.connection = 0
        self.ready = asyncio.Event()
        self.ready_times: list[float] = []
        self.close_codes: list[int | None] = []
        self.presence: list[tuple[str, bool]] = []  # presence frames: (userId, online)
        self.connected_edges: list[int] = []
        self._named: set[str] = set()  # rooms named in the last sync sent
        self._stop = False
        self._task: asyncio.Task[None] | None = None
        self._retrier: asyncio.Task[None] | None = None

    # --- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"client-{self.name}")
        self._retrier = asyncio.create_task(self._retry_loop(), name=f"retry-{self.name}")

    async def stop(self) -> None:
        self._stop = True
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await self.ws.close()
        for task in (self._task, self._retrier):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await asyncio.wait_for(task, 5)

    async def drop_connection(self) -> None:
        """Close the socket from the client side (it reconnects and syncs, as after an outage)."""
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await self.ws.close()

    def ws_url(self) -> str:
        return self.edges[self.edge].replace("http://", "ws://") + f"/ws?token={self.token}"

    async def _run(self) -> None:
        delay = BACKOFF_FIRST
        failures = 0
        while not self._stop and failures < MAX_CONNECT_ATTEMPTS:
            try:
                ws = await websockets.connect(self.ws_url(), open_timeout=5, max_size=2**22)
            except (OSError, TimeoutError, websockets.exceptions.WebSocketException):
                failures += 1
                self.edge = (self.edge + 1) % len(self.edges)  # try another node
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(delay * 2, BACKOFF_MAX)
                continue
            failures, delay = 0, BACKOFF_FIRST
            self.ws = ws
            self.connection += 1
            self.connected_edges.append(self.edge)
            try:
                await self._send_sync()
                async for raw in ws:
                    await self._on_frame(json.loads(raw))
            except websockets.exceptions.ConnectionClosed:
                pass
            finally:
                self.ws = None
                self.ready.clear()
                self.close_codes.append(ws.close_code)
            if self._stop:
                return
            self.edge = (self.edge + 1) % len(self.edges)  # reconnect elsewhere
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))

    async def _send_sync(self) -> None:
        self._named = set(self.contiguous)
        await self.ws.send(json.dumps({"action": "sync", "rooms": dict(self.contiguous)}))

    async def _on_frame(self, frame: dict[str, Any]) -> None:
        kind = frame.get("type")
        if kind == "message_created":
            self._take(frame["message"], frame.get("requestId"))
        elif kind == "presence":
            self.presence.append((frame["userId"], frame["online"]))
        elif kind == "synced":
            unnamed = [r for r in frame.get("rooms", {}) if r not in self._named]
            for room_id in frame.get("rooms", {}):
                self.held.setdefault(room_id, {})
                self.contiguous.setdefault(room_id, 0)
            for room_id in frame.get("truncated") or []:
                await self._page_in(room_id)
            if unnamed:  # rooms created while away: ask for them too (from seq 0)
                await self._send_sync()
                return
            self.ready.set()
            self.ready_times.append(time.monotonic())
            await self._resend_pending()
        elif kind == "room_created":
            room = frame["room"]
            self.rooms_announced[room["id"]] += 1
            self.held.setdefault(room["id"], {})
            self.contiguous.setdefault(room["id"], 0)
            if frame.get("requestId"):
                self.room_answers[frame["requestId"]] = frame
        elif kind == "error":
            code = frame.get("error", {}).get("code", "?")
            self.errors[code] += 1
            mid = frame.get("messageId")
            if mid in self.outgoing:  # retried by the retry loop in about a second
                self.outgoing[mid].last_sent = time.monotonic() - RETRY_AFTER + 1.0
            if frame.get("requestId"):
                self.room_answers[frame["requestId"]] = frame

    def _take(self, message: dict[str, Any], request_id: str | None) -> None:
        room_id, seq, mid = message["roomId"], message["seq"], message["messageId"]
        held = self.held.setdefault(room_id, {})
        if seq in held:
            if held[seq]["messageId"] != mid:
                self.inconsistent += 1
            elif request_id != mid:  # the answer to our own retry is expected, not a double
                self.redundant += 1
        else:
            held[seq] = message
            top = self.contiguous.get(room_id, 0)
            while top + 1 in held:
                top += 1
            self.contiguous[room_id] = top
        out = self.outgoing.get(mid)
        if out is not None and message["senderId"] == self.user_id and out.acked_at is None:
            out.acked_at = time.monotonic()
            out.seq = seq

    async def _page_in(self, room_id: str) -> None:
        """`synced.truncated`: read the rest over HTTP with `?after=` (bounded pages)."""
        async with httpx.AsyncClient(timeout=10) as http:
            for _ in range(100):
                after = self.contiguous.get(room_id, 0)
                r = await http.get(
                    f"{self.history_url}/rooms/{room_id}/messages",
                    params={"after": str(after), "limit": "200"},
                    headers={"authorization": f"Bearer {self.token}"},
                )
                r.raise_for_status()
                page = r.json()
                for message in page:
                    self._take(message, None)
                if len(page) < 200:
                    return

    # --- sending --------------------------------------------------------------------------------

    async def _transmit(self, out: Outgoing) -> None:
        ws = self.ws
        if ws is None or not self.ready.is_set() or out.attempts >= MAX_SEND_ATTEMPTS:
            return
        out.attempts += 1
        out.last_sent = time.monotonic()
        out.on_connection = self.connection
        frame = {
            "action": "create_message",
            "roomId": out.room_id,
            "messageId": out.message_id,
            "content": out.content,
            "senderId": self.user_id,
            "createdAt": out.created_at,  # the same on every retry (same message)
            "requestId": out.message_id,
        }
        with contextlib.suppress(websockets.exceptions.ConnectionClosed):
            await ws.send(json.dumps(frame))

    async def send_message(self, room_id: str, content: str) -> Outgoing:
        """Send a new message (pending until acknowledged; retried with the same messageId)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.ready.wait(), 30)
        out = Outgoing(room_id, str(uuid.uuid4()), content, now_iso(), time.monotonic())
        self.outgoing[out.message_id] = out
        await self._transmit(out)
        return out

    def pending(self) -> list[Outgoing]:
        return [o for o in self.outgoing.values() if o.acked_at is None]

    async def _resend_pending(self) -> None:
        for out in self.pending():
            if out.attempts and out.on_connection != self.connection:
                await self._transmit(out)

    async def _retry_loop(self) -> None:
        while not self._stop:
            await asyncio.sleep(0.5)
            now = time.monotonic()
            for out in self.pending():
                if not out.attempts or now - out.last_sent > RETRY_AFTER:
                    await self._transmit(out)

    async def create_room(self, participants: list[str], limit: float = 10.0) -> str | None:
        """One create_room; the room id once acknowledged (room_created), else None."""
        request_id = uuid.uuid4().hex
        ws = self.ws
        if ws is None:
            return None
        frame = {"action": "create_room", "participants": participants, "requestId": request_id}
        try:
            await ws.send(json.dumps(frame))
        except websockets.exceptions.ConnectionClosed:
            return None
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            answer = self.room_answers.get(request_id)
            if answer is not None:
                return str(answer["room"]["id"]) if answer.get("type") == "room_created" else None
            await asyncio.sleep(0.02)
        return None


# ------------------------------------------------------------------------------------------------
# users, rooms, history


async def new_user(mesh: FaultMesh, name: str) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=10) as http:
        r = await http.post(f"{mesh.services['users'].url}/users", json={"name": name})
        assert r.status_code == 201, r.text
        body: dict[str, Any] = r.json()
        return body


async def prepare(mesh: FaultMesh, name: str, edge: int) -> ChatUser:
    """A new user and its client, not connected yet (`online` connects it)."""
    user = await new_user(mesh, name)
    return ChatUser(name, user, mesh.edges, edge, mesh.services["history"].url)


async def online(clients: list[ChatUser]) -> None:
    """Connect the clients; return once each has synced."""
    for client in clients:
        client.start()
    for client in clients:
        await asyncio.wait_for(client.ready.wait(), 20)


async def connect_users(mesh: FaultMesh, names_and_edges: list[tuple[str, int]]) -> list[ChatUser]:
    users = [await prepare(mesh, name, edge) for name, edge in names_and_edges]
    await online(users)
    return users


async def shared_room(
    creator: ChatUser, others: list[ChatUser], also: list[ChatUser] | None = None
) -> str:
    """A room of all of them (`also`: members not online); returns once every online member
    has heard of it."""
    ids = [o.user_id for o in [*others, *(also or [])]]
    room_id = await creator.create_room(ids, limit=15)
    assert room_id is not None, "room not created"
    everyone = [creator, *others]
    await bounded("room_created everywhere", lambda: all(room_id in c.held for c in everyone), 15)
    return room_id


async def stored_messages(mesh: FaultMesh, token: str, room_id: str) -> list[dict[str, Any]]:
    """Every stored message of a room, read from history over HTTP (`?after=` pages)."""
    messages: list[dict[str, Any]] = []
    async with httpx.AsyncClient(timeout=10) as http:
        for _ in range(1000):
            after = messages[-1]["seq"] if messages else 0
            r = await http.get(
                f"{mesh.services['history'].url}/rooms/{room_id}/messages",
                params={"after": str(after), "limit": "200"},
                headers={"authorization": f"Bearer {token}"},
            )
            assert r.status_code == 200, r.text
            page = r.json()
            messages.extend(page)
            if len(page) < 200:
                break
    return messages


async def stream(sender: ChatUser, room_id: str, count: int, interval: float) -> None:
    """Send `count` new messages, one every `interval` seconds (waiting while offline)."""
    for i in range(count):
        await sender.send_message(room_id, f"{sender.name} #{i}")
        await asyncio.sleep(interval)


async def at(delay: float, action: Callable[[], Awaitable[Any]]) -> Any:
    await asyncio.sleep(delay)
    return await action()


# ------------------------------------------------------------------------------------------------
# figures


@dataclass
class Figures:
    """What a scenario prints and checks."""

    scenario: str
    sent: int = 0
    acknowledged: int = 0
    stored: int = 0
    delivered: int = 0
    expected_deliveries: int = 0
    lost: int = 0
    duplicated: int = 0
    retries: int = 0
    reconnects: int = 0
    recover_seconds: float | None = None
    notes: list[str] = field(default_factory=list)

    def line(self) -> str:
        recover = "-" if self.recover_seconds is None else f"{self.recover_seconds:.1f}s"
        text = (
            f"[faults] {self.scenario}: sent={self.sent} acknowledged={self.acknowledged} "
            f"stored={self.stored} delivered={self.delivered}/{self.expected_deliveries} "
            f"lost={self.lost} duplicated={self.duplicated} retries={self.retries} "
            f"reconnects={self.reconnects} time_to_recover={recover}"
        )
        if self.notes:
            text += " (" + "; ".join(self.notes) + ")"
        return text

    def report_clean(self) -> None:
        """Print and record the figures, then check the suite's rule: nothing lost or doubled."""
        self.report()
        assert self.lost == 0, self.line()
        assert self.duplicated == 0, self.line()

    def report(self) -> None:
        line = self.line()
        print("\n" + line, flush=True)
        path = Path(__file__).resolve().parents[2] / "data" / "faults-figures.txt"
        with contextlib.suppress(OSError):
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a") as fh:
                fh.write(time.strftime("%Y-%m-%d %H:%M:%S ") + line + "\n")


async def settle_and_count(
    mesh: FaultMesh,
    scenario: str,
    room_id: str,
    senders: list[ChatUser],
    receivers: list[ChatUser],
    fault_at: float | None,
    ack_timeout: float = 90.0,
    delivery_timeout: float = 30.0,
) -> Figures:
    """Wait (bounded) until every sent message is acknowledged, every command applied and every
    receiver has every stored message; then count. Receivers are not told to sync: what they
    hold is what live delivery (plus their own reconnects) gave them."""
    figures = Figures(scenario)
    sent = {m: o for s in senders for m, o in s.outgoing.items() if o.room_id == room_id}
    with contextlib.suppress(AssertionError):
        await bounded(
            "every sent message acknowledged",
            lambda: all(o.acked_at is not None for o in sent.values()),
            ack_timeout,
            0.1,
        )
    left = -1
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            left = await mesh.commands_left()
            if left == 0:
                break
        await asyncio.sleep(0.5)
    if left != 0:
        figures.notes.append(f"{left} commands still in CHAT_COMMANDS")
    stored = await stored_messages(mesh, senders[0].token, room_id)
    by_seq = {m["seq"]: m for m in stored}
    with contextlib.suppress(AssertionError):
        await bounded(
            "every receiver has every stored message",
            lambda: all(set(by_seq) <= set(r.held.get(room_id, {})) for r in receivers),
            delivery_timeout,
            0.1,
        )
    stored_ids = [m["messageId"] for m in stored]
    figures.sent = len(sent)
    figures.acknowledged = sum(1 for o in sent.values() if o.acked_at is not None)
    figures.stored = len(stored)
    figures.retries = sum(max(0, o.attempts - 1) for o in sent.values())
    figures.reconnects = sum(max(0, c.connection - 1) for c in {*senders, *receivers})
    # stored: every sent id exactly once, seqs 1..n, nothing else
    missing_ids = set(sent) - set(stored_ids)
    extra_ids = set(stored_ids) - set(sent)
    doubled_ids = len(stored_ids) - len(set(stored_ids))
    seq_faults = 0 if [m["seq"] for m in stored] == list(range(1, len(stored) + 1)) else 1
    figures.lost = len(missing_ids)
    figures.duplicated = doubled_ids + len(extra_ids) + seq_faults
    if missing_ids:
        figures.notes.append(f"not stored: {sorted(missing_ids)[:3]}")
    if seq_faults:
        figures.notes.append("stored seqs are not 1..n")
    for o in sent.values():
        if o.acked_at is not None and by_seq.get(o.seq or -1, {}).get("messageId") != o.message_id:
            figures.duplicated += 1
            figures.notes.append(f"{o.message_id} acknowledged with seq {o.seq} not its own")
    # delivered: each receiver holds exactly the stored messages, each once
    for r in receivers:
        held = r.held.get(room_id, {})
        figures.expected_deliveries += len(stored)
        got = [s for s in by_seq if s in held and held[s]["messageId"] == by_seq[s]["messageId"]]
        figures.delivered += len(got)
        missing = len(stored) - len(got)
        figures.lost += missing
        figures.duplicated += r.redundant + r.inconsistent
        if missing:
            gaps = sorted(set(by_seq) - set(held))[:5]
            figures.notes.append(f"{r.name} misses {missing} (seqs {gaps}...)")
        if r.redundant or r.inconsistent:
            figures.notes.append(f"{r.name} got {r.redundant + r.inconsistent} again")
    if fault_at is not None:
        after = [
            o.acked_at for o in sent.values() if o.acked_at is not None and o.first_sent >= fault_at
        ]
        if after:
            figures.recover_seconds = min(after) - fault_at
    return figures
