"""Helpers for tests that start `make run` pieces: distinct free ports, port env, pid checks."""

from __future__ import annotations

import os
from pathlib import Path

from mesh import ports, servers


def free_ports(count: int) -> list[int]:
    """`count` distinct free ports (each from servers.free_port)."""
    found: list[int] = []
    while len(found) < count:
        port = servers.free_port()
        if port not in found:
            found.append(port)
    return found


def port_env(**extra: str) -> dict[str, str]:
    """An environment with every CHAT_*_PORT on a free port and nothing else of CHAT_*."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHAT_")}
    settings = [*ports.PORT_SETTINGS, ports.NATS_CLUSTER_PORT]
    for setting, port in zip(settings, free_ports(len(settings)), strict=True):
        env[setting.variable] = str(port)
    env.update(extra)
    return env


def pid_alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def free_run(count: int, avoid: set[int]) -> int:
    """A first port of `count` consecutive free ports, none of them in `avoid`."""
    for _ in range(200):
        base = servers.free_port()
        run = range(base, base + count)
        if (
            base + count <= 65535
            and not avoid & set(run)
            and all(ports.port_problem(p, "127.0.0.1") is None for p in run)
        ):
            return base
    raise RuntimeError(f"no {count} consecutive free ports found")
