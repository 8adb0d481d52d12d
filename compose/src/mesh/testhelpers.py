"""Helpers for tests that start `make run` pieces: distinct free ports, port env, pid checks,
and `python -m mesh run` in the background (compose's tests and the bench smoke use it)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
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


class MeshProcess:
    """`python -m mesh run` in the background, its console collected line by line."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.lines: list[str] = []
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "mesh", "run"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, pattern: str, timeout: float = 90.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(pattern, self.text)
            if found:
                return found
            if self.popen.poll() is not None:
                self.reader.join(2)
                found = re.search(pattern, self.text)
                if found:
                    return found
                raise AssertionError(f"mesh exited ({self.popen.returncode}):\n{self.text}")
            time.sleep(0.05)
        raise AssertionError(f"no {pattern!r} within {timeout}s:\n{self.text}")

    def pids(self) -> dict[str, int]:
        """The last pid printed for every child."""
        found: dict[str, int] = {}
        for m in re.finditer(
            r"\] (\S+) (?:started|restarted \(restart \d+\)), pid (\d+)", self.text
        ):
            found[m.group(1)] = int(m.group(2))
        return found

    def terminate(self, timeout: float = 60.0) -> int:
        self.popen.send_signal(signal.SIGTERM)
        code = self.popen.wait(timeout)
        self.reader.join(5)
        return code
