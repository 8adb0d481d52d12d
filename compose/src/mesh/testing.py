"""pytest plugin: real NATS, Redis and store endpoints for integration tests, and service processes.

Endpoints are taken in this order:
1. test-only environment variables `CHAT_TEST_NATS_URL`, `CHAT_TEST_REDIS_URL`,
   `CHAT_TEST_DYNAMO_URL` (never the `CHAT_*` ones `make run` uses, so tests never write into a
   running mesh);
2. testcontainers, when a Docker engine is reachable;
3. the same binaries as local processes on free ports (what CI runs here).
Whatever the fixtures start they stop by pid. Each test session provisions its own tables under
a random prefix, so sessions pointed at shared servers never see each other's data.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import pytest

from mesh import servers

TEST_ENV_NATS = "CHAT_TEST_NATS_URL"
TEST_ENV_REDIS = "CHAT_TEST_REDIS_URL"
TEST_ENV_DYNAMO = "CHAT_TEST_DYNAMO_URL"


TEST_ENV_BACKEND = "CHAT_TEST_BACKEND"  # force one: env, testcontainers or local
BACKENDS = ("env", "testcontainers", "local")

# Images of the testcontainers backend (pinned tags; the same servers `make run` embeds, except
# DynamoDB Local for the store: it starts in seconds, where ScyllaDB Alternator takes a minute).
NATS_IMAGE = "nats:2.11-alpine"
REDIS_IMAGE = "redis:7.2-alpine"
DYNAMO_IMAGE = "amazon/dynamodb-local:2.5.2"


def docker_endpoints(env: Mapping[str, str], home: Path) -> list[str]:
    """Where a Docker engine may listen: DOCKER_HOST alone when set, else the usual sockets
    (system, rootless, Docker Desktop, colima)."""
    host = env.get("DOCKER_HOST", "").strip()
    if host:
        return [host]
    candidates = ["unix:///var/run/docker.sock"]
    runtime = env.get("XDG_RUNTIME_DIR")
    if runtime:
        candidates.append(f"unix://{runtime}/docker.sock")
    candidates.append(f"unix://{home}/.docker/run/docker.sock")
    candidates.append(f"unix://{home}/.colima/default/docker.sock")
    return candidates


def _ping(endpoint: str, timeout: float = 1.0) -> bool:
    """True when a Docker engine answers `GET /_ping` with OK at this endpoint."""
    request = b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n"
    try:
        if endpoint.startswith("tcp://"):
            hostport = endpoint.removeprefix("tcp://").split("/")[0]
            name, _, port = hostport.rpartition(":") if ":" in hostport else (hostport, "", "")
            with socket.create_connection((name, int(port or 2375)), timeout=timeout) as s:
                s.sendall(request)
                return b"OK" in s.recv(1024)
        if endpoint.startswith("unix://"):
            path = endpoint.removeprefix("unix://")
            if not os.path.exists(path):
                return False
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(timeout)
                s.connect(path)
                s.sendall(request)
                return b"OK" in s.recv(1024)
    except (OSError, ValueError):
        return False
    return False


def docker_reachable(env: Mapping[str, str] | None = None, home: Path | None = None) -> bool:
    """True when a Docker engine answers (then testcontainers is used)."""
    env = os.environ if env is None else env
    home = Path.home() if home is None else home
    return any(_ping(endpoint) for endpoint in docker_endpoints(env, home))


def choose_backend(env: Mapping[str, str], docker: bool) -> str:
    """Which source of servers the fixtures use: 'env', 'testcontainers' or 'local'.

    `CHAT_TEST_BACKEND` forces one (e.g. `local` on a laptop with Docker); otherwise the three
    CHAT_TEST_*_URL variables win, then a reachable Docker engine, then local processes.
    """
    forced = env.get(TEST_ENV_BACKEND, "").strip().lower()
    if forced:
        if forced not in BACKENDS:
            raise ValueError(f"{TEST_ENV_BACKEND}={forced!r}: use one of {', '.join(BACKENDS)}")
        return forced
    if all(env.get(k) for k in (TEST_ENV_NATS, TEST_ENV_REDIS, TEST_ENV_DYNAMO)):
        return "env"
    if docker:
        return "testcontainers"
    return "local"


@dataclass
class Infra:
    """Where the test servers are, and the local processes (if any) to stop or kill."""

    nats_url: str
    redis_url: str
    dynamo_url: str
    table_prefix: str
    backend: str
    workdir: Path
    procs: dict[str, servers.Proc] = field(default_factory=dict)

    def env(self, **extra: str) -> dict[str, str]:
        """Environment for a service process pointed at these servers."""
        base = {
            "CHAT_ENV": "test",
            "CHAT_NATS_URLS": self.nats_url,
            "CHAT_REDIS_URL": self.redis_url,
            "CHAT_DYNAMO_URL": self.dynamo_url,
            "CHAT_TABLE_PREFIX": self.table_prefix,
            "CHAT_JWT_SECRET": TEST_SECRET,
            "CHAT_LOG_LEVEL": "INFO",
        }
        base.update(extra)
        return base

    def fork(self) -> Infra:
        """A private bus and cache for one mesh: its own NATS (streams provisioned) and Redis
        as local processes, and its own table prefix on the shared store.

        Meshes started by different test modules would otherwise share queue groups, durable
        consumers and node ids on one NATS, and answer each other's requests. Stop the fork
        with `close()`.
        """
        from infra.provision import ensure_streams, ensure_tables
        from infra.settings import CommonSettings
        from infra.store import open_dynamo_admin

        workdir = Path(tempfile.mkdtemp(prefix="fork-", dir=self.workdir))
        child = Infra("", "", self.dynamo_url, f"f{secrets.token_hex(4)}_", "local", workdir)
        try:
            for name in ("nats", "redis"):
                child._start_local(name, servers.free_port())
            child.nats_url = child.procs["nats"].url
            child.redis_url = child.procs["redis"].url
            settings = CommonSettings(
                nats_urls=child.nats_url,
                redis_url=child.redis_url,
                dynamo_url=child.dynamo_url,
                table_prefix=child.table_prefix,
                env="test",
            )

            async def provision() -> None:
                async with open_dynamo_admin(settings) as client:
                    await ensure_tables(client, child.table_prefix)
                await ensure_streams(settings)

            asyncio.run(provision())
        except Exception:
            child.close()
            raise
        return child

    def close(self) -> None:
        """Stop the local servers this Infra started."""
        for proc in self.procs.values():
            proc.stop()

    def __enter__(self) -> Infra:
        return self

    def __exit__(self, *exc: object) -> None:
        """`with infra.fork() as fork:` stops the fork's servers however the block ends."""
        self.close()

    def restart_local(self, name: str) -> servers.Proc:
        """Restart a local server on the same port and data folder (fault tests)."""
        proc = self.procs[name]
        proc.stop()
        return self._start_local(name, proc.port)

    def _start_local(self, name: str, port: int) -> servers.Proc:
        logs = self.workdir / "logs"
        if name == "nats":
            proc = servers.start_nats(port, self.workdir / "nats", logs / "nats.log")
        elif name == "redis":
            proc = servers.start_redis(port, self.workdir / "redis", logs / "redis.log")
        else:
            proc = servers.start_dynalite(port, self.workdir / "dynamo", logs / "dynamo.log")
        self.procs[name] = proc
        return proc


TEST_SECRET = "test-secret-" + "x" * 40


def _start_testcontainers(stack: contextlib.ExitStack) -> tuple[str, str, str]:
    """NATS (JetStream), Redis and DynamoDB Local in containers; removed when `stack` closes
    (and by testcontainers' reaper if this process dies). Returns their URLs."""
    from testcontainers.community.nats import NatsContainer
    from testcontainers.community.redis import RedisContainer
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.wait_strategies import LogMessageWaitStrategy

    nats = NatsContainer(NATS_IMAGE, jetstream=True)  # waits for "Server is ready"
    stack.enter_context(nats)
    redis = RedisContainer(REDIS_IMAGE)  # waits until it answers PING
    stack.enter_context(redis)
    store = (
        DockerContainer(DYNAMO_IMAGE)
        .with_command("-jar DynamoDBLocal.jar -inMemory -sharedDb")
        .with_exposed_ports(8000)
        .waiting_for(LogMessageWaitStrategy("CorsParams").with_startup_timeout(60))
    )
    stack.enter_context(store)
    nats_url: str = nats.nats_uri()
    redis_url = f"redis://{redis.get_container_host_ip()}:{redis.get_exposed_port(6379)}/0"
    dyn_url = f"http://{store.get_container_host_ip()}:{store.get_exposed_port(8000)}"
    return nats_url, redis_url, dyn_url


async def eventually(check: Callable[[], bool | Awaitable[bool]], within: float = 30.0) -> None:
    """Wait until `check()` (plain or async) is true, polling every 50 ms; AssertionError after
    `within` seconds. A generous bound on an event, never a timing assertion."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        result = check()
        if await result if inspect.isawaitable(result) else result:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"condition not reached within {within} s")


@contextlib.asynccontextmanager
async def uvicorn_on_free_port(app: object, **options: object) -> AsyncIterator[int]:
    """`app` served by a real uvicorn on a free loopback port for the block, which gets the
    port; `options` go to `uvicorn.Config` (protocols, timeouts). Stopped when the block ends."""
    import uvicorn

    port = servers.free_port()
    settings: dict[str, object] = {"log_level": "warning", "lifespan": "off", **options}
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, **settings))  # type: ignore[arg-type]
    task = asyncio.create_task(server.serve())
    try:
        for _ in range(250):
            if server.started:
                break
            await asyncio.sleep(0.02)
        yield port
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


@pytest.fixture(scope="session")
def infra() -> Iterator[Infra]:
    """Real NATS (JetStream), Redis and store for this test session, provisioned."""
    from infra.provision import provision
    from infra.settings import CommonSettings

    workdir = Path(tempfile.mkdtemp(prefix="chat-test-"))
    prefix = f"t{secrets.token_hex(4)}_"
    backend = choose_backend(dict(os.environ), docker_reachable())
    with contextlib.ExitStack() as stack:
        result = Infra("", "", "", prefix, backend, workdir)
        if backend == "env":
            result.nats_url = os.environ[TEST_ENV_NATS]
            result.redis_url = os.environ[TEST_ENV_REDIS]
            result.dynamo_url = os.environ[TEST_ENV_DYNAMO]
        elif backend == "testcontainers":
            result.nats_url, result.redis_url, result.dynamo_url = _start_testcontainers(stack)
        else:
            try:
                for name in ("nats", "redis", "dynamo"):
                    result._start_local(name, servers.free_port())
            except Exception:
                for proc in result.procs.values():
                    proc.stop()
                raise
            result.nats_url = result.procs["nats"].url
            result.redis_url = result.procs["redis"].url
            result.dynamo_url = result.procs["dynamo"].url
        try:
            settings = CommonSettings(
                nats_urls=result.nats_url,
                redis_url=result.redis_url,
                dynamo_url=result.dynamo_url,
                table_prefix=prefix,
                env="test",
            )
            asyncio.run(provision(settings))
            yield result
        finally:
            for proc in result.procs.values():
                proc.stop()
            if os.environ.get("CHAT_TEST_KEEP_WORKDIR"):  # to read the processes' logs later
                print(f"\ntest workdir kept: {workdir}")
            else:
                shutil.rmtree(workdir, ignore_errors=True)


@dataclass
class ServiceProcess:
    """A service started as its own process (`python -m <module>`) on a free port."""

    name: str
    module: str
    port: int
    env: dict[str, str]
    log_path: Path
    popen: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> ServiceProcess:
        self.popen = servers.spawn(
            self.name, [sys.executable, "-m", self.module], self.log_path, env=self.env
        )
        deadline = time.monotonic() + timeout
        import httpx

        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.name} not ready in {timeout}s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.popen is not None:
            servers.stop_process(self.popen)

    def kill(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, 9)
            self.popen.wait(5)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def trouble(self, lines: int = 15, width: int = 400) -> str:
        """The last warnings and errors of its log (JSON lines), and whether it has exited."""
        try:
            logged = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            logged = []
        bad = [line[:width] for line in logged if any(f'"level": "{lv}"' in line for lv in TROUBLE)]
        status = "running"
        if self.popen is not None and self.popen.poll() is not None:
            status = f"exited with {self.popen.returncode}"
        return "\n".join([f"{self.name} on port {self.port}: {status}", *bad[-lines:]])


TROUBLE = ("warning", "error", "critical")


class ServiceLauncher:
    """Starts service processes against the session's infrastructure; stops them all after."""

    # launchers not yet stopped: a failing test's report shows their processes' trouble
    live: ClassVar[list[ServiceLauncher]] = []

    def __init__(self, infra: Infra, isolated: bool = False) -> None:
        # isolated: the mesh gets its own NATS and Redis (see Infra.fork)
        self.infra = infra.fork() if isolated else infra
        self._forked = isolated
        self.started: list[ServiceProcess] = []
        ServiceLauncher.live.append(self)

    def start(self, name: str, module: str, **env: str) -> ServiceProcess:
        port = servers.free_port()
        proc = ServiceProcess(
            name=name,
            module=module,
            port=port,
            env=self.infra.env(CHAT_PORT=str(port), CHAT_SERVICE_NAME=name, **env),
            log_path=self.infra.workdir / "logs" / f"{name}-{port}.log",
        )
        self.started.append(proc)
        return proc.start()

    def stop_all(self) -> None:
        with contextlib.suppress(ValueError):
            ServiceLauncher.live.remove(self)
        for proc in reversed(self.started):
            proc.stop()
        if self._forked:
            self.infra.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A failing test's report carries the warnings and errors its service processes logged.

    A flaky failure on CI is often only understood from the services' side (a 503, a timeout
    to NATS, a crash), and the workdir with the logs is gone by the time anyone reads it.
    """
    report = yield
    if report.failed and report.when in ("setup", "call"):
        for launcher in ServiceLauncher.live:
            for proc in launcher.started:
                report.sections.append((f"trouble logged by {proc.name}", proc.trouble()))
    return report


@pytest.fixture
def launcher(infra: Infra) -> Iterator[ServiceLauncher]:
    """Start services as processes for one test; all are stopped afterwards."""
    result = ServiceLauncher(infra)
    try:
        yield result
    finally:
        result.stop_all()
