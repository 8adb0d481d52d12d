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
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from mesh import servers

TEST_ENV_NATS = "CHAT_TEST_NATS_URL"
TEST_ENV_REDIS = "CHAT_TEST_REDIS_URL"
TEST_ENV_DYNAMO = "CHAT_TEST_DYNAMO_URL"


def docker_reachable() -> bool:
    """True when a Docker engine answers (then testcontainers is used)."""
    host = os.environ.get("DOCKER_HOST", "")
    if host.startswith("tcp://"):
        hostport = host.removeprefix("tcp://").split("/")[0]
        name, _, port = hostport.partition(":")
        try:
            with socket.create_connection((name, int(port or 2375)), timeout=1):
                return True
        except OSError:
            return False
    path = host.removeprefix("unix://") if host.startswith("unix://") else "/var/run/docker.sock"
    if not os.path.exists(path):
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(1)
            s.connect(path)
            s.sendall(b"GET /_ping HTTP/1.0\r\n\r\n")
            return b"OK" in s.recv(256)
    except OSError:
        return False


def choose_backend(env: dict[str, str], docker: bool) -> str:
    """Which source of servers the fixtures use: 'env', 'testcontainers' or 'local'."""
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
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.waiting_utils import wait_for_logs
    from testcontainers.redis import RedisContainer

    nats = DockerContainer("nats:2.11").with_command("-js").with_exposed_ports(4222)
    stack.enter_context(nats)
    wait_for_logs(nats, "Server is ready", timeout=60)
    redis = RedisContainer("redis:6.2")
    stack.enter_context(redis)
    dyn = DockerContainer("amazon/dynamodb-local:2.5.2").with_exposed_ports(8000)
    stack.enter_context(dyn)
    wait_for_logs(dyn, "CorsParams", timeout=60)
    nats_url = f"nats://{nats.get_container_host_ip()}:{nats.get_exposed_port(4222)}"
    redis_url = f"redis://{redis.get_container_host_ip()}:{redis.get_exposed_port(6379)}/0"
    dyn_url = f"http://{dyn.get_container_host_ip()}:{dyn.get_exposed_port(8000)}"
    return nats_url, redis_url, dyn_url


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


class ServiceLauncher:
    """Starts service processes against the session's infrastructure; stops them all after."""

    def __init__(self, infra: Infra) -> None:
        self.infra = infra
        self.started: list[ServiceProcess] = []

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
        for proc in reversed(self.started):
            proc.stop()


@pytest.fixture
def launcher(infra: Infra) -> Iterator[ServiceLauncher]:
    """Start services as processes for one test; all are stopped afterwards."""
    result = ServiceLauncher(infra)
    try:
        yield result
    finally:
        result.stop_all()
