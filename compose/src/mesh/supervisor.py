"""Keep a set of child processes running: restart with exponential backoff, stop by process group.

Generic (nothing here knows about chat): `mesh.run` describes the servers and services as
`ChildSpec`s. Each child runs in its own session / process group, its output appended to its
own log file; it is stopped by its pid (SIGTERM to the group, SIGKILL after a timeout), never by
name.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from mesh.servers import child_setup

Say = Callable[[str], None]
LOG_ROTATE_BYTES = 20 * 1024 * 1024  # at a (re)start, a bigger log is moved to <name>.log.1
PR_SET_PDEATHSIG = 1


def _die_with_parent_hook() -> Callable[[], None] | None:
    """A preexec hook: the child gets SIGTERM if the supervisor dies (even by SIGKILL).

    Linux only (prctl PR_SET_PDEATHSIG); elsewhere None. Orphans would otherwise keep the
    ports and make the next `make run` fail its port check.
    """
    if not sys.platform.startswith("linux"):
        return None
    name = ctypes.util.find_library("c")
    if not name:
        return None
    libc = ctypes.CDLL(name, use_errno=True)
    prctl = libc.prctl
    parent = os.getpid()

    def hook() -> None:
        prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:  # the supervisor died before the prctl
            os._exit(1)

    return hook


def _child_hook(env: Mapping[str, str]) -> Callable[[], None] | None:
    """The child's preexec hook: die with the supervisor, then the process setup every
    started server gets (`mesh.servers.child_setup`: the scheduling policy)."""
    hooks = [h for h in (_die_with_parent_hook(), child_setup(env)) if h is not None]
    if not hooks:
        return None

    def hook() -> None:
        for each in hooks:
            each()

    return hook


def rotate_log(path: Path, limit: int = LOG_ROTATE_BYTES) -> None:
    """Move a log over `limit` bytes to `<path>.1` (one generation kept)."""
    try:
        if path.stat().st_size > limit:
            os.replace(path, path.with_name(path.name + ".1"))
    except OSError:
        pass


@dataclass
class Backoff:
    """Restart delays: `initial`, doubling up to `cap`; back to `initial` after a long run."""

    initial: float = 0.5
    factor: float = 2.0
    cap: float = 10.0
    reset_after: float = 30.0
    _next: float = field(default=-1.0, repr=False)

    def next_delay(self, uptime: float) -> float:
        """The delay before the next start, given how long the process that exited had run."""
        if self._next < 0 or uptime >= self.reset_after:
            self._next = self.initial
        delay = self._next
        self._next = min(self._next * self.factor, self.cap)
        return delay


@dataclass
class ChildSpec:
    """How to start one child and how to tell that it answers."""

    name: str
    argv: Callable[[], list[str]]  # called at every (re)start (may write a config file)
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    kind: str = "server"  # "server" or "service" (servers are stopped last)
    port: int | None = None  # ready when this port accepts connections ...
    ready_url: str | None = None  # ... or when this URL answers 200
    cwd: Path | None = None


_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy


def http_ok(url: str, timeout: float = 1.0) -> bool:
    """True when GET `url` answers 200."""
    try:
        with _DIRECT.open(url, timeout=timeout) as resp:
            return int(resp.status) == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.3)
        return s.connect_ex((host, port)) == 0


def signal_group(pid: int, sig: signal.Signals) -> None:
    """Signal the process group led by `pid` (our children lead their own)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


class Child:
    """One supervised process: its current popen, restart schedule and readiness."""

    def __init__(self, spec: ChildSpec, backoff: Backoff) -> None:
        self.spec = spec
        self.backoff = backoff
        self.popen: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.restart_at: float | None = None
        self.starts = 0
        self.crashes = 0
        self.ready = False
        self.last_probe = 0.0
        self.log_offset = 0
        self.last_delay: float | None = None
        self.delays: list[float] = []  # every restart delay used (for the tests and the log)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen is not None else None

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def start(self, now: float) -> None:
        """Spawn the process (non-blocking); its output is appended to its log."""
        spec = self.spec
        spec.log_path.parent.mkdir(parents=True, exist_ok=True)
        rotate_log(spec.log_path)
        argv = spec.argv()
        with open(spec.log_path, "ab") as log:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            log.write(f"\n===== {stamp} mesh: starting {spec.name}: {' '.join(argv)}\n".encode())
            log.flush()
            self.log_offset = log.tell()
            env = {**os.environ, **spec.env}
            self.popen = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=str(spec.cwd) if spec.cwd else None,
                start_new_session=True,  # own process group: stopped by pid with its children
                preexec_fn=_child_hook(env),  # system calls only
            )
        self.started_at = now
        self.restart_at = None
        self.starts += 1
        self.ready = False
        self.last_probe = 0.0

    def probe(self) -> bool:
        """True when the child answers (port open or readiness URL 200)."""
        if not self.alive():
            return False
        if self.spec.ready_url is not None:
            return http_ok(self.spec.ready_url)
        if self.spec.port is not None:
            return port_open(self.spec.port)
        return True

    def output_since_start(self, lines: int = 20) -> str:
        """The last `lines` lines this run of the child wrote to its log."""
        try:
            with open(self.spec.log_path, "rb") as f:
                f.seek(self.log_offset)
                text = f.read().decode(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.spec.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


class Supervisor:
    """Starts children, restarts the ones that exit, stops them all (services before servers)."""

    def __init__(
        self,
        specs: Iterable[ChildSpec],
        say: Say,
        backoff: Callable[[], Backoff] = Backoff,
        probe_interval: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.children = {spec.name: Child(spec, backoff()) for spec in specs}
        self.say = say
        self.probe_interval = probe_interval
        self.clock = clock
        self.stopping = False

    def __getitem__(self, name: str) -> Child:
        return self.children[name]

    def start(self, names: Iterable[str] | None = None) -> None:
        """Start the named children (all when None); a failed spawn is retried with backoff."""
        for name in names if names is not None else list(self.children):
            child = self.children[name]
            self._spawn(child, self.clock())

    def _spawn(self, child: Child, now: float) -> None:
        try:
            child.start(now)
        except Exception as exc:  # binary missing, bad cwd, ...: retry like a crash
            child.popen = None
            child.crashes += 1
            delay = child.backoff.next_delay(0.0)
            child.delays.append(delay)
            child.restart_at = now + delay
            self.say(f"{child.name}: could not start ({exc}); retrying in {delay:.1f}s")
            return
        what = f"restarted (restart {child.starts - 1})" if child.starts > 1 else "started"
        self.say(f"{child.name} {what}, pid {child.pid}, log {child.spec.log_path}")

    def tick(self) -> list[str]:
        """One supervision step: reap, schedule and perform restarts, probe readiness.

        Returns the names of children that exited since the last tick.
        """
        if self.stopping:
            return []
        now = self.clock()
        exited: list[str] = []
        for child in self.children.values():
            popen = child.popen
            if popen is not None and child.restart_at is None:
                code = popen.poll()
                if code is not None:
                    exited.append(child.name)
                    self._on_exit(child, code, now)
            if child.restart_at is not None and now >= child.restart_at:
                self._spawn(child, now)
            elif (
                not child.ready and child.alive() and now - child.last_probe >= self.probe_interval
            ):
                child.last_probe = now
                if child.probe():
                    child.ready = True
                    if child.starts > 1:
                        self.say(f"{child.name} is answering again")
        return exited

    def _on_exit(self, child: Child, code: int, now: float) -> None:
        assert child.popen is not None
        # Leftovers of its process group (if any) would hold the port: clear them by group id.
        signal_group(child.popen.pid, signal.SIGKILL)
        uptime = now - child.started_at
        child.crashes += 1
        child.ready = False
        delay = child.backoff.next_delay(uptime)
        child.delays.append(delay)
        child.last_delay = delay
        child.restart_at = now + delay
        how = f"signal {-code}" if code < 0 else f"code {code}"
        self.say(
            f"{child.name} exited unexpectedly ({how}) after {uptime:.1f}s; "
            f"restarting in {delay:.1f}s (log {child.spec.log_path})"
        )
        tail = child.output_since_start(15)
        for line in tail.splitlines():
            self.say(f"  {child.name} | {line}")

    def ready(self, names: Iterable[str]) -> bool:
        return all(self.children[n].ready for n in names)

    def stop_all(self, timeout: float = 10.0, hurry: threading.Event | None = None) -> None:
        """Stop services, then servers: SIGTERM each group, SIGKILL what outlives `timeout`.

        Setting `hurry` (a second Ctrl-C) kills what is left at once.
        """
        self.stopping = True
        services = [c for c in self.children.values() if c.spec.kind == "service"]
        servers = [c for c in self.children.values() if c.spec.kind != "service"]
        for group in (services, servers):
            stop_children(group, timeout, self.say, hurry)


def stop_children(
    children: list[Child], timeout: float, say: Say, hurry: threading.Event | None = None
) -> None:
    """SIGTERM every child's group at once, wait up to `timeout`, then SIGKILL the rest."""
    running = []
    for child in children:
        child.restart_at = None
        if child.alive():
            assert child.popen is not None
            signal_group(child.popen.pid, signal.SIGTERM)
            running.append(child)
    deadline = time.monotonic() + timeout
    while running:
        for child in list(running):
            assert child.popen is not None
            if child.popen.poll() is not None:
                running.remove(child)
                say(f"{child.name} stopped")
        if not running:
            break
        hurried = hurry is not None and hurry.is_set()
        if hurried or time.monotonic() >= deadline:
            for child in running:
                assert child.popen is not None
                why = "hurried" if hurried else f"did not stop in {timeout:.0f}s"
                say(f"{child.name} (pid {child.popen.pid}) {why}: killing it")
                signal_group(child.popen.pid, signal.SIGKILL)
            for child in running:
                assert child.popen is not None
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.popen.wait(5)
                say(f"{child.name} stopped")
            break
        time.sleep(0.05)
