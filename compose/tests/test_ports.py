"""The port table, its duplicate check, and compose/preflight.py against a held port."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from mesh import ports, servers
from mesh.testhelpers import port_env

PREFLIGHT = Path(__file__).resolve().parents[1] / "preflight.py"


def test_defaults_match_the_contract() -> None:
    """Without settings the table holds the contract's default ports."""
    table = {u.variable: u.port for u in ports.port_table({})}
    assert table == {
        "CHAT_USERS_PORT": 8001,
        "CHAT_HISTORY_PORT": 8002,
        "CHAT_ROOMS_PORT": 8003,
        "CHAT_EDGE_A_PORT": 8080,
        "CHAT_EDGE_B_PORT": 8081,
        "CHAT_NATS_PORT": 4222,
        "CHAT_REDIS_PORT": 6379,
        "CHAT_DYNAMO_PORT": 8000,
    }


def test_variables_move_ports_and_bind_host() -> None:
    """Each variable moves its port; services listen on CHAT_BIND_HOST, servers on loopback."""
    env = {"CHAT_USERS_PORT": " 9001 ", "CHAT_BIND_HOST": "0.0.0.0"}
    table = {u.part: u for u in ports.port_table(env)}
    assert table["users"].port == 9001
    assert table["users"].host == "0.0.0.0"
    assert table["nats"].host == "127.0.0.1"


@pytest.mark.parametrize("value", ["abc", "0", "70000", "-5"])
def test_bad_port_values_name_the_variable(value: str) -> None:
    """A value that is not a port is refused, naming its variable."""
    with pytest.raises(ports.PortConfigError, match="CHAT_REDIS_PORT"):
        ports.port_table({"CHAT_REDIS_PORT": value})


def test_duplicate_ports_are_refused() -> None:
    """Two settings on one port are refused, naming both variables."""
    with pytest.raises(ports.PortConfigError) as info:
        ports.port_table({"CHAT_ROOMS_PORT": "8001"})
    assert "CHAT_USERS_PORT" in str(info.value)
    assert "CHAT_ROOMS_PORT" in str(info.value)


def test_cluster_ports_are_derived_and_checked_for_duplicates() -> None:
    """Cluster mode uses CHAT_NATS_PORT..+2 and CHAT_NATS_CLUSTER_PORT..+2."""
    table = ports.port_table({"CHAT_NATS_CLUSTER": "1"}, ("nats",))
    assert sorted(u.port for u in table) == [4222, 4223, 4224, 6222, 6223, 6224]
    with pytest.raises(ports.PortConfigError, match="CHAT_NATS_PORT"):
        ports.port_table({"CHAT_NATS_CLUSTER": "1", "CHAT_NATS_PORT": "7999"})


def test_run_only_selects_parts_and_groups() -> None:
    """CHAT_RUN_ONLY takes names and groups; unknown names are refused."""
    assert ports.selected_parts({}) == ports.ALL_PARTS
    assert ports.selected_parts({"CHAT_RUN_ONLY": "infra"}) == ports.SERVERS
    assert ports.selected_parts({"CHAT_RUN_ONLY": "users, edges"}) == ("users", "edge-a", "edge-b")
    with pytest.raises(ports.PortConfigError, match="CHAT_RUN_ONLY"):
        ports.selected_parts({"CHAT_RUN_ONLY": "mongo"})
    only_infra = ports.port_table({"CHAT_RUN_ONLY": "infra"})
    assert {u.part for u in only_infra} == set(ports.SERVERS)


def test_held_port_is_reported_and_holder_keeps_working() -> None:
    """preflight exits non-zero naming the variable; the test's listener still accepts."""
    env = port_env()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        env["CHAT_USERS_PORT"] = str(port)
        result = subprocess.run(
            [sys.executable, str(PREFLIGHT)], env=env, capture_output=True, text=True, timeout=30
        )
        assert result.returncode != 0
        assert f"port {port} (users HTTP) is in use" in result.stderr
        assert "set CHAT_USERS_PORT to another port" in result.stderr
        with socket.create_connection(("127.0.0.1", port), timeout=2) as client:
            conn, _ = holder.accept()
            client.sendall(b"still here")
            assert conn.recv(16) == b"still here"
            conn.close()


def test_every_held_port_is_reported_at_once() -> None:
    """With two configured ports taken, preflight names both (and both variables) in one go."""
    env = port_env()
    with socket.socket() as first, socket.socket() as second:
        held = []
        for holder in (first, second):
            holder.bind(("127.0.0.1", 0))
            holder.listen()
            held.append(holder.getsockname()[1])
        env["CHAT_USERS_PORT"], env["CHAT_ROOMS_PORT"] = (str(p) for p in held)
        result = subprocess.run(
            [sys.executable, str(PREFLIGHT)], env=env, capture_output=True, text=True, timeout=30
        )
    assert result.returncode != 0
    assert "2 ports cannot be used" in result.stderr
    assert f"port {held[0]} (users HTTP) is in use" in result.stderr
    assert f"port {held[1]} (rooms HTTP) is in use" in result.stderr
    assert "CHAT_USERS_PORT" in result.stderr
    assert "CHAT_ROOMS_PORT" in result.stderr


def test_preflight_passes_on_free_ports() -> None:
    """preflight exits 0 when every configured port is free."""
    result = subprocess.run(
        [sys.executable, str(PREFLIGHT)], env=port_env(), capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr


def test_preflight_refuses_duplicates() -> None:
    """preflight exits non-zero when two variables name one port."""
    env = port_env()
    env["CHAT_EDGE_B_PORT"] = env["CHAT_EDGE_A_PORT"]
    result = subprocess.run(
        [sys.executable, str(PREFLIGHT)], env=env, capture_output=True, text=True, timeout=30
    )
    assert result.returncode != 0
    assert "configured twice" in result.stderr
    assert "CHAT_EDGE_B_PORT" in result.stderr


def test_free_port_skips_ports_browsers_refuse(monkeypatch: pytest.MonkeyPatch) -> None:
    """A port Chromium refuses (10080, net::ERR_UNSAFE_PORT: the browser tests once drew it
    for a service) is never handed out; the next candidate is."""
    drawn = iter([10080, 10081])
    monkeypatch.setattr(servers.random, "randrange", lambda _low, _high: next(drawn))
    monkeypatch.setattr(servers, "_ephemeral_range", lambda: (32768, 60999))
    assert servers.free_port() == 10081
