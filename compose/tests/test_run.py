"""mesh.run: configuration, the secret file, clear startup errors, a real `python -m mesh run`."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from mesh import ports, run, servers
from mesh.testhelpers import MeshProcess, free_run, pid_alive, port_env


def test_secret_is_created_once_and_reused(tmp_path: Path) -> None:
    """The JWT secret file is made once with mode 600 and read back on every later start."""
    first = run.load_or_create_secret(tmp_path)
    path = tmp_path / run.SECRET_FILE
    assert len(first) >= 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert run.load_or_create_secret(tmp_path) == first
    path.chmod(0o644)
    assert run.load_or_create_secret(tmp_path) == first
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert list(tmp_path.iterdir()) == [path]  # no temporary files left behind


def test_empty_secret_file_is_replaced(tmp_path: Path) -> None:
    """An empty secret file (an interrupted first start) gets a fresh secret."""
    (tmp_path / run.SECRET_FILE).write_text("")
    assert len(run.load_or_create_secret(tmp_path)) >= 32


def test_service_environment(tmp_path: Path) -> None:
    """Services get the runner's addresses, their own port and name; user CHAT_* settings win."""
    env = {
        "CHAT_DATA_DIR": str(tmp_path),
        "CHAT_TOKEN_TTL_SECONDS": "120",
        "CHAT_PORT": "1",  # per-process: never taken from the caller
        "CHAT_NODE_ID": "zzz",
        "CHAT_TABLE_PREFIX": "mine_",
    }
    cfg = run.Config.from_env(env)
    users = cfg.service_env("users", "s3cret")
    assert users["CHAT_ENV"] == "development"
    assert users["CHAT_PORT"] == "8001"
    assert users["CHAT_HOST"] == "127.0.0.1"
    assert users["CHAT_SERVICE_NAME"] == "users"
    assert users["CHAT_NATS_URLS"] == "nats://127.0.0.1:4222"
    assert users["CHAT_REDIS_URL"] == "redis://127.0.0.1:6379/0"
    assert users["CHAT_DYNAMO_URL"] == "http://127.0.0.1:8000"
    assert users["CHAT_JWT_SECRET"] == "s3cret"
    assert users["CHAT_TABLE_PREFIX"] == "mine_"
    assert users["CHAT_TOKEN_TTL_SECONDS"] == "120"
    assert "CHAT_NODE_ID" not in users
    assert set(users["CHAT_CORS_ORIGINS"].split(",")) == {
        "http://127.0.0.1:8080",
        "http://localhost:8080",
        "http://127.0.0.1:8081",
        "http://localhost:8081",
    }
    edge_b = cfg.service_env("edge-b", "s3cret")
    assert edge_b["CHAT_NODE_ID"] == "b"
    assert edge_b["CHAT_PORT"] == "8081"
    assert edge_b["CHAT_PUBLIC_USERS_URL"] == "http://127.0.0.1:8001"
    assert edge_b["CHAT_PUBLIC_ROOMS_URL"] == "http://127.0.0.1:8003"
    assert edge_b["CHAT_PUBLIC_HISTORY_URL"] == "http://127.0.0.1:8002"


def test_cluster_mode_gives_three_nats_urls(tmp_path: Path) -> None:
    """With CHAT_NATS_CLUSTER=1 services get three NATS URLs and three nats nodes are started."""
    cfg = run.Config.from_env({"CHAT_NATS_CLUSTER": "1", "CHAT_DATA_DIR": str(tmp_path)})
    assert cfg.nats_urls.split(",") == [f"nats://127.0.0.1:{p}" for p in (4222, 4223, 4224)]
    names = [s.name for s in run.server_specs(cfg)]
    assert names == ["nats-1", "nats-2", "nats-3", "redis", "dynamo"]


def test_nats_runs_go_on_one_thread_unless_told(tmp_path: Path) -> None:
    """nats-server gets GOMAXPROCS from CHAT_NATS_PROCS (1 by default, why: servers.nats_env);
    a value that is not a thread count stops `make run` before anything starts."""
    awake = {"GODEBUG": servers.SYSMON_AWAKE}
    cfg = run.Config.from_env({"CHAT_DATA_DIR": str(tmp_path)})
    nats = [s for s in run.server_specs(cfg) if s.name.startswith("nats")]
    assert [s.env for s in nats] == [{"GOMAXPROCS": "1", **awake}]
    cfg = run.Config.from_env(
        {"CHAT_DATA_DIR": str(tmp_path), "CHAT_NATS_CLUSTER": "1", "CHAT_NATS_PROCS": "2"}
    )
    nats = [s for s in run.server_specs(cfg) if s.name.startswith("nats")]
    assert [s.env for s in nats] == [{"GOMAXPROCS": "2", **awake}] * 3
    for bad in ("0", "two", "-1", "99999"):
        with pytest.raises(ValueError, match="CHAT_NATS_PROCS"):
            run.Config.from_env({"CHAT_DATA_DIR": str(tmp_path), "CHAT_NATS_PROCS": bad})
    result = subprocess.run(
        [sys.executable, "-m", "mesh", "run"],
        env={**port_env(CHAT_DATA_DIR=str(tmp_path)), "CHAT_NATS_PROCS": "many"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "CHAT_NATS_PROCS must be a whole number" in result.stdout


def test_nats_keeps_go_sysmon_awake_unless_told() -> None:
    """GODEBUG gets the longest schedtrace interval (why: servers.nats_env), after the caller's
    own GODEBUG settings; a schedtrace the caller chose, or CHAT_NATS_SYSMON_AWAKE=0, wins."""
    assert servers.nats_env({})["GODEBUG"] == "schedtrace=2147483647"
    mine = servers.nats_env({"GODEBUG": "madvdontneed=1"})
    assert mine["GODEBUG"] == "madvdontneed=1,schedtrace=2147483647"
    assert "GODEBUG" not in servers.nats_env({"GODEBUG": "schedtrace=1000"})
    assert "GODEBUG" not in servers.nats_env({"CHAT_NATS_SYSMON_AWAKE": "0"})
    with pytest.raises(ValueError, match="CHAT_NATS_SYSMON_AWAKE"):
        servers.nats_env({"CHAT_NATS_SYSMON_AWAKE": "yes"})


def test_sched_batch_setting(tmp_path: Path) -> None:
    """CHAT_SCHED_BATCH is 1 by default, 0 turns it off, anything else stops `make run`."""
    assert servers.batch_scheduling({}) is True
    assert servers.batch_scheduling({"CHAT_SCHED_BATCH": "0"}) is False
    assert servers.child_setup({"CHAT_SCHED_BATCH": "0"}) is None
    with pytest.raises(ValueError, match="CHAT_SCHED_BATCH"):
        run.Config.from_env({"CHAT_DATA_DIR": str(tmp_path), "CHAT_SCHED_BATCH": "yes"})


def test_started_nats_server_has_its_environment(tmp_path: Path) -> None:
    """The nats-server that tests, the bench and the runner start runs with nats_env's
    settings and under SCHED_BATCH (read back from the live process) and serves clients."""
    proc = servers.start_nats(servers.free_port(), tmp_path / "nats", tmp_path / "nats.log")
    try:
        environ = Path(f"/proc/{proc.pid}/environ").read_bytes().split(b"\0")
        assert b"GOMAXPROCS=1" in environ
        assert b"GODEBUG=schedtrace=2147483647" in environ
        tasks = list(Path(f"/proc/{proc.pid}/task").iterdir())
        assert len(tasks) > 1  # Go's threads, made after the policy was set, inherit it
        assert {os.sched_getscheduler(int(t.name)) for t in tasks} == {os.SCHED_BATCH}
        with socket.create_connection(("127.0.0.1", proc.port), timeout=10) as conn:
            assert conn.recv(4096).startswith(b"INFO ")
    finally:
        proc.stop()


def test_missing_service_module_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A service whose module does not exist stops the start at once, naming it."""
    monkeypatch.setitem(run.SERVICE_MODULES, "users", "no_such_chat_module")
    env = port_env(CHAT_DATA_DIR=str(tmp_path), CHAT_RUN_ONLY="users")
    lines: list[str] = []
    code = run.Runner(run.Config.from_env(env), lines.append).run()
    assert code == 1
    assert "no_such_chat_module" in "\n".join(lines)
    assert "CHAT_RUN_ONLY" in "\n".join(lines)


def mesh_run_once(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`python -m mesh run` with `env` that is expected to stop by itself (a refused start)."""
    return subprocess.run(
        [sys.executable, "-m", "mesh", "run"], env=env, capture_output=True, text=True, timeout=60
    )


def test_a_bad_setting_is_named_before_anything_starts(tmp_path: Path) -> None:
    """A value a service would refuse stops `python -m mesh run` at once (no server is
    started, no provisioning waited for), naming the variable, its value and the services;
    a secret's value is never printed."""

    def start(**settings: str) -> subprocess.CompletedProcess[str]:
        env = port_env(CHAT_DATA_DIR=str(tmp_path), **settings)
        result = mesh_run_once(env)
        assert result.returncode == 1
        assert "invalid settings" in result.stdout
        assert "servers are up" not in result.stdout
        assert all_closed(env) == []
        return result

    ttl = start(CHAT_TOKEN_TTL_SECONDS="30").stdout
    assert "CHAT_TOKEN_TTL_SECONDS='30': Input should be greater than or equal to 60" in ttl
    assert all(part in ttl for part in ("users", "rooms", "history", "edge-a", "edge-b"))
    weak = start(CHAT_ENV="production", CHAT_JWT_SECRET="short-secret-value")
    assert "CHAT_JWT_SECRET" in weak.stdout
    assert "short-secret-value" not in weak.stdout + weak.stderr


def test_run_refuses_a_held_port(tmp_path: Path) -> None:
    """`python -m mesh run` exits 1 naming the variable when a port is taken."""
    env = port_env(CHAT_DATA_DIR=str(tmp_path), CHAT_RUN_ONLY="infra")
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", int(env["CHAT_REDIS_PORT"])))
        holder.listen()
        result = mesh_run_once(env)
    assert result.returncode == 1
    assert "set CHAT_REDIS_PORT to another port" in result.stdout


@pytest.fixture
def mesh_env(tmp_path: Path) -> dict[str, str]:
    """Free ports and a temporary data folder for one `python -m mesh run`."""
    return port_env(CHAT_DATA_DIR=str(tmp_path / "data"), CHAT_READY_TIMEOUT="90")


def infra_ports(env: dict[str, str]) -> list[int]:
    return [int(env[v]) for v in ("CHAT_NATS_PORT", "CHAT_REDIS_PORT", "CHAT_DYNAMO_PORT")]


def all_closed(env: dict[str, str]) -> list[int]:
    """The configured ports that still cannot be bound (empty when all are free)."""
    uses = ports.port_table(env, ports.ALL_PARTS)
    return [u.port for u in uses if ports.port_problem(u.port, u.host) is not None]


@pytest.mark.integration
def test_infra_run_restart_and_clean_stop(mesh_env: dict[str, str]) -> None:
    """Infra only: servers up and provisioned, a killed one returns, SIGTERM leaves nothing."""
    import redis

    env = {**mesh_env, "CHAT_RUN_ONLY": "infra"}
    mesh = MeshProcess(env)
    try:
        mesh.wait_for("Ctrl-C to stop")
        assert "provisioned" in mesh.text
        for port in infra_ports(env):
            assert ports.port_problem(port, "127.0.0.1") == "in use"
        first = mesh.pids()
        assert set(first) == {"nats", "redis", "dynamo"}
        environ = Path(f"/proc/{first['nats']}/environ").read_bytes().split(b"\0")
        assert b"GOMAXPROCS=1" in environ  # the setting reaches the running nats-server
        client = redis.Redis(port=int(env["CHAT_REDIS_PORT"]))
        client.set("survives", "yes")
        os.kill(first["redis"], signal.SIGKILL)
        mesh.wait_for(r"redis restarted \(restart 1\), pid \d+", timeout=15)
        mesh.wait_for("redis is answering again", timeout=15)
        assert client.get("survives") == b"yes"  # same data folder (append-only file)
        second = mesh.pids()
        assert second["redis"] != first["redis"]
        secret = (Path(env["CHAT_DATA_DIR"]) / run.SECRET_FILE).read_text()
    finally:
        code = mesh.terminate()
    assert code == 0, mesh.text
    assert all_closed(env) == []
    for pid in [*first.values(), *second.values()]:
        assert not pid_alive(pid), f"pid {pid} still running"

    # A second start on the same data folder keeps the secret and the data.
    again = MeshProcess(env)
    try:
        again.wait_for("Ctrl-C to stop")
        assert redis.Redis(port=int(env["CHAT_REDIS_PORT"])).get("survives") == b"yes"
        assert (Path(env["CHAT_DATA_DIR"]) / run.SECRET_FILE).read_text() == secret
        pids = again.pids()
    finally:
        assert again.terminate() == 0, again.text
    assert all_closed(env) == []
    assert not any(pid_alive(p) for p in pids.values())


def services_importable() -> bool:
    return all(run.module_problem(m) is None for m in set(run.SERVICE_MODULES.values()))


@pytest.mark.integration
@pytest.mark.skipif(not services_importable(), reason="not every service module exists yet")
def test_whole_mesh_starts_answers_and_stops(mesh_env: dict[str, str]) -> None:
    """The full mesh: every service answers /readyz, a killed service returns, SIGTERM ends all."""
    import httpx

    mesh = MeshProcess(mesh_env)
    try:
        mesh.wait_for("Ctrl-C to stop", timeout=150)
        for var in ("CHAT_USERS_PORT", "CHAT_HISTORY_PORT", "CHAT_ROOMS_PORT"):
            assert f"http://127.0.0.1:{mesh_env[var]}" in mesh.text
        for var in ("CHAT_EDGE_A_PORT", "CHAT_EDGE_B_PORT"):
            url = f"http://127.0.0.1:{mesh_env[var]}/readyz"
            assert httpx.get(url, timeout=5).status_code == 200
        first = mesh.pids()
        os.kill(first["users"], signal.SIGKILL)
        mesh.wait_for("users is answering again", timeout=30)
        users = f"http://127.0.0.1:{mesh_env['CHAT_USERS_PORT']}"
        assert httpx.get(f"{users}/readyz", timeout=5).status_code == 200
        pids = mesh.pids()
    finally:
        code = mesh.terminate()
    assert code == 0, mesh.text
    assert all_closed(mesh_env) == []
    assert not any(pid_alive(p) for p in [*first.values(), *pids.values()])


@pytest.mark.integration
def test_nats_cluster_mode(mesh_env: dict[str, str]) -> None:
    """CHAT_NATS_CLUSTER=1: three routed nodes, streams with 3 replicas, a killed node returns."""
    import asyncio

    import nats

    env = {**mesh_env, "CHAT_RUN_ONLY": "nats,dynamo", "CHAT_NATS_CLUSTER": "1"}
    taken = {int(v) for k, v in env.items() if k.startswith("CHAT_") and k.endswith("_PORT")}
    base = free_run(3, taken)
    env["CHAT_NATS_PORT"] = str(base)
    env["CHAT_NATS_CLUSTER_PORT"] = str(free_run(3, taken | {base, base + 1, base + 2}))
    mesh = MeshProcess(env)
    try:
        mesh.wait_for("Ctrl-C to stop")
        assert "provisioned (replicas 3)" in mesh.text
        urls = [f"nats://127.0.0.1:{base + i}" for i in range(3)]

        async def replicas() -> list[int]:
            nc = await nats.connect(servers=urls)
            try:
                js = nc.jetstream()
                infos = [await js.stream_info(name) for name in ("CHAT_COMMANDS", "CHAT_EVENTS")]
                return [info.config.num_replicas or 0 for info in infos]
            finally:
                await nc.close()

        assert asyncio.run(replicas()) == [3, 3]
        first = mesh.pids()
        os.kill(first["nats-2"], signal.SIGKILL)
        mesh.wait_for("nats-2 is answering again", timeout=20)
        pids = mesh.pids()
    finally:
        code = mesh.terminate()
    assert code == 0, mesh.text
    assert all_closed(env) == []
    for port in (base + 1, base + 2):
        assert ports.port_problem(port, "127.0.0.1") is None
    assert not any(pid_alive(p) for p in [*first.values(), *pids.values()])
