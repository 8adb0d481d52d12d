"""The three stacks of `make bench`, each two nodes behind one Redis, on free loopback ports.

Every process is started in its own process group and stopped by its pid (mesh.servers), never
by name.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from mesh import servers
from mesh.testing import TEST_SECRET, Infra, ServiceLauncher, ServiceProcess

BENCH = Path(__file__).resolve().parent
NODE_PEER = BENCH / "peers" / "node"
PYSIO_PEER = BENCH / "peers" / "pysio_server.py"
SIO_PATH = "/socket.io/?EIO=4&transport=websocket"


class Stack:
    """A running stack: its edge WebSocket URLs and every server process (name -> pid)."""

    name = ""
    proto = ""  # the load generator's adapter: "mesh" or "sio"
    python_processes: tuple[str, ...] = ()  # names profiled with py-spy

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.pids: dict[str, int] = {}
        self.edge_urls: list[str] = []
        self._procs: list[servers.Proc] = []

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        for proc in reversed(self._procs):
            proc.stop(timeout=10)
        self._procs.clear()

    def edge_names(self) -> list[str]:
        return [n for n in self.pids if n.startswith("edge")]

    def _server(self, proc: servers.Proc) -> servers.Proc:
        self._procs.append(proc)
        self.pids[proc.name] = proc.pid
        return proc

    def _spawn(self, name: str, argv: list[str], port: int, cwd: Path | None = None) -> None:
        log = self.workdir / "logs" / f"{name}.log"
        popen = servers.spawn(name, argv, log, cwd=cwd)
        proc = self._server(servers.Proc(name, popen, port, f"http://127.0.0.1:{port}", log))
        servers.wait_for_port(proc, timeout=60)

    def _redis(self) -> str:
        proc = servers.start_redis(
            servers.free_port(), self.workdir / "redis", self.workdir / "logs" / "redis.log"
        )
        proc.name = "redis"
        self._server(proc)
        return proc.url


class PysioStack(Stack):
    """python-socketio AsyncServer + AsyncRedisManager under uvicorn, two nodes."""

    name = "python-socketio"
    proto = "sio"
    python_processes = ("edge-a", "edge-b")

    def start(self) -> None:
        redis_url = self._redis()
        for node in ("a", "b"):
            port = servers.free_port()
            argv = [sys.executable, str(PYSIO_PEER), str(port), redis_url]
            self._spawn(f"edge-{node}", argv, port)
            self.edge_urls.append(f"ws://127.0.0.1:{port}{SIO_PATH}")


class NodeStack(Stack):
    """Node socket.io + @socket.io/redis-adapter, two nodes."""

    name = "node-socketio"
    proto = "sio"

    def start(self) -> None:
        redis_url = self._redis()
        node = shutil.which("node")
        if node is None:
            raise RuntimeError("node not found on PATH")
        for name in ("a", "b"):
            port = servers.free_port()
            popen = servers.spawn(
                f"edge-{name}",
                [node, str(NODE_PEER / "server.js")],
                self.workdir / "logs" / f"edge-{name}.log",
                env={"BENCH_PORT": str(port), "BENCH_REDIS_URL": redis_url},
                cwd=NODE_PEER,
            )
            log = self.workdir / "logs" / f"edge-{name}.log"
            proc = self._server(servers.Proc(f"edge-{name}", popen, port, "", log))
            servers.wait_for_port(proc, timeout=60)
            self.edge_urls.append(f"ws://127.0.0.1:{port}{SIO_PATH}")


class MeshStack(Stack):
    """This project: NATS (JetStream), Redis, dynalite, users, rooms, history, two edge nodes."""

    name = "chat-mesh"
    proto = "mesh"
    python_processes = ("users", "rooms", "history", "edge-a", "edge-b")
    # diagnostic (`--store-in-memory`): dynalite without its LevelDB on disk, to show what the
    # store's disk path costs; `make run` and the default bench keep the store on disk
    store_in_memory = False
    skipped_scenarios: tuple[str, ...] = ()

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        if self.store_in_memory:
            self.name = "chat-mesh (store in memory)"
        self.infra: Infra | None = None
        self.services: dict[str, ServiceProcess] = {}
        self._launcher: ServiceLauncher | None = None
        self._secret = TEST_SECRET

    @property
    def users_url(self) -> str:
        return self.services["users"].url

    @property
    def rooms_url(self) -> str:
        return self.services["rooms"].url

    @property
    def history_url(self) -> str:
        return self.services["history"].url

    def start(self) -> None:
        from infra.provision import provision
        from infra.settings import CommonSettings

        logs = self.workdir / "logs"
        nats = self._server(
            servers.start_nats(servers.free_port(), self.workdir / "nats", logs / "nats.log")
        )
        redis_url = self._redis()
        store_dir = None if self.store_in_memory else self.workdir / "dynamo"
        dyn = servers.start_dynalite(servers.free_port(), store_dir, logs / "dyn.log")
        dyn.name = "dynalite"
        self._server(dyn)
        prefix = "bench_"
        self.infra = Infra(nats.url, redis_url, dyn.url, prefix, "local", self.workdir)
        settings = CommonSettings(
            nats_urls=nats.url,
            redis_url=redis_url,
            dynamo_url=dyn.url,
            table_prefix=prefix,
            env="test",
        )
        asyncio.run(provision(settings))
        self._launcher = ServiceLauncher(self.infra)
        env = {"CHAT_ENV": "development", "CHAT_LOG_LEVEL": "WARNING"}
        for name, module, extra in (
            ("users", "users_service", {}),
            ("rooms", "rooms_service", {}),
            ("history", "history_service", {}),
            ("edge-a", "ws_edge", {"CHAT_NODE_ID": "a"}),
            ("edge-b", "ws_edge", {"CHAT_NODE_ID": "b"}),
        ):
            svc = self._launcher.start(name, module, **env, **extra)
            self.services[name] = svc
            assert svc.popen is not None
            self.pids[name] = svc.popen.pid
        self.edge_urls = [
            self.services[n].url.replace("http://", "ws://") + "/ws?token="
            for n in ("edge-a", "edge-b")
        ]

    def stop(self) -> None:
        # SIGTERM every service first so their graceful shutdowns overlap, then wait for each
        for svc in self.services.values():
            if svc.popen is not None and svc.popen.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(svc.popen.pid, signal.SIGTERM)
        if self._launcher is not None:
            self._launcher.stop_all()
            self._launcher = None
        super().stop()

    def mint_token(self, user_id: str) -> str:
        """A valid bearer token for any user id (the idle scenario needs no user records)."""
        from infra.auth import TokenService

        token, _ = TokenService(self._secret, "chat", 24 * 3600, 30).issue(user_id)
        return token

    async def create_users(self, count: int, tag: str) -> list[dict[str, Any]]:
        """`count` users through POST /users (each with its token)."""
        sem = asyncio.Semaphore(32)
        async with httpx.AsyncClient(timeout=30) as http:

            async def one(i: int) -> dict[str, Any]:
                async with sem:
                    r = await http.post(f"{self.users_url}/users", json={"name": f"{tag}-{i}"})
                    r.raise_for_status()
                    body: dict[str, Any] = r.json()
                    return body

            return list(await asyncio.gather(*(one(i) for i in range(count))))

    async def create_rooms(self, groups: list[list[dict[str, Any]]]) -> list[str]:
        """One room per group of users (created by its first member); the room ids."""
        sem = asyncio.Semaphore(16)
        async with httpx.AsyncClient(timeout=30) as http:

            async def one(group: list[dict[str, Any]]) -> str:
                async with sem:
                    r = await http.post(
                        f"{self.rooms_url}/rooms",
                        json={"participants": [u["id"] for u in group]},
                        headers={"authorization": f"Bearer {group[0]['token']}"},
                    )
                    r.raise_for_status()
                    room_id: str = r.json()["id"]
                    return room_id

            return list(await asyncio.gather(*(one(g) for g in groups)))


class RunningMeshStack(MeshStack):
    """The mesh that `make run` is running on this machine, found with the same `CHAT_*` port
    and data-folder settings (so run both from the same environment). Driven and measured like
    the mesh the bench starts, never started or stopped here: the figures then include
    whatever `make run` adds (its supervisor, its data folder, its log settings). Its users,
    rooms and messages stay in that store. `ingest` and `hops` are skipped: they need a table
    of their own in the store (and `hops` a stream in JetStream)."""

    name = "chat-mesh (make run)"
    skipped_scenarios = ("ingest", "hops")

    def start(self) -> None:
        from mesh.run import SECRET_FILE, Config

        config = Config.from_env(os.environ)
        self._urls = {p: config.http_url(p) for p in ("users", "rooms", "history")}
        listening = _listening_pids()
        for part, port in config.port_of.items():
            name = "dynalite" if part == "dynamo" else part
            if port not in listening:
                raise RuntimeError(
                    f"nothing listens on port {port} ({part}): is `make run` running, "
                    "with the same CHAT_* settings as here?"
                )
            self.pids[name] = listening[port]
        for url in self._urls.values():
            wait_http(f"{url}/healthz", timeout=10)
        self._secret = (config.data_dir / SECRET_FILE).read_text().strip()
        self.infra = Infra(
            config.nats_urls,
            config.redis_url,
            config.dynamo_url,
            config.table_prefix,
            "make run",
            self.workdir,
        )
        self.edge_urls = [
            config.http_url(e).replace("http://", "ws://") + "/ws?token="
            for e in ("edge-a", "edge-b")
        ]

    def stop(self) -> None:
        """Nothing: the processes are `make run`'s."""

    @property
    def users_url(self) -> str:
        return self._urls["users"]

    @property
    def rooms_url(self) -> str:
        return self._urls["rooms"]

    @property
    def history_url(self) -> str:
        return self._urls["history"]


def _listening_pids() -> dict[int, int]:
    """Local TCP port -> pid of the process listening on it."""
    import psutil

    found: dict[int, int] = {}
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.pid is not None and conn.laddr:
            found.setdefault(conn.laddr.port, conn.pid)
    return found


STACKS: dict[str, type[Stack]] = {
    "mesh": MeshStack,
    "running": RunningMeshStack,
    "pysio": PysioStack,
    "node": NodeStack,
}


def wait_http(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer in {timeout}s")
