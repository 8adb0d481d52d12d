"""`python -m mesh run` (what `make run` starts): the whole mesh in the foreground, supervised.

1. checks every configured port (the same table as compose/preflight.py, mesh.ports);
2. prepares the data folder (CHAT_DATA_DIR, default <repo>/data): nats/, redis/, dynamo/,
   logs/ and the development JWT secret (created once, mode 600, reused on every start);
3. starts NATS (JetStream), Redis and dynalite, waits until they answer, provisions the tables
   and streams (idempotent);
4. starts users, rooms, history and two ws-edge nodes (a, b) as `python -m <module>` processes
   and waits until each answers GET /readyz;
5. prints every URL, then supervises: whatever exits is restarted with exponential backoff on
   the same port and data folder;
6. on SIGINT/SIGTERM stops the services, then the servers (by process group), and exits 0.

`CHAT_RUN_ONLY` limits what is started (see docs/running.md).
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib
import importlib.util
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TextIO

from mesh import ports, servers
from mesh.supervisor import Backoff, ChildSpec, Supervisor, port_open

SERVICE_MODULES: dict[str, str] = {
    "users": "users_service",
    "rooms": "rooms_service",
    "history": "history_service",
    "edge-a": "ws_edge",
    "edge-b": "ws_edge",
}
# Per-process settings: never taken from the user's environment (they differ per process).
PER_PROCESS = ("CHAT_PORT", "CHAT_SERVICE_NAME", "CHAT_NODE_ID", "CHAT_HOST")
SECRET_FILE = "jwt-secret"
LOCK_FILE = ".mesh.lock"


class RunError(RuntimeError):
    """Startup failed: the message says what and what to do."""


def out(message: str, stream: TextIO | None = None) -> None:
    """One console line, prefixed and timestamped."""
    stream = stream or sys.stdout
    # A closed console (e.g. piped into `head`) must never stop the supervision or the stop.
    with contextlib.suppress(OSError, ValueError):
        stream.write(f"{time.strftime('%H:%M:%S')} [mesh] {message}\n")
        stream.flush()


# --------------------------------------------------------------------------------------------
# configuration


@dataclass
class Config:
    """Everything `make run` derives from the environment."""

    env: dict[str, str]
    parts: tuple[str, ...]
    port_of: dict[str, int]
    bind_host: str
    data_dir: Path
    cluster: bool
    cluster_port: int
    table_prefix: str
    ready_timeout: float
    stop_timeout: float
    sync_always: bool
    nats_env: dict[str, str] = field(default_factory=dict)  # servers.nats_env: GOMAXPROCS
    backoff: Callable[[], Backoff] = field(default=Backoff)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Config:
        parts = ports.selected_parts(env)
        ports.port_table(env, parts)  # validates values and duplicates
        port_of = {s.part: ports.parse_port(env, s) for s in ports.PORT_SETTINGS}
        data = env.get("CHAT_DATA_DIR", "").strip()
        servers.batch_scheduling(env)  # a bad CHAT_SCHED_BATCH stops us before anything starts
        return cls(
            env=dict(env),
            parts=parts,
            port_of=port_of,
            bind_host=ports.bind_host(env),
            data_dir=Path(data).expanduser().resolve() if data else servers.REPO_ROOT / "data",
            cluster=ports.truthy(env.get("CHAT_NATS_CLUSTER")),
            cluster_port=ports.parse_port(env, ports.NATS_CLUSTER_PORT),
            table_prefix=env.get("CHAT_TABLE_PREFIX", "chat_"),
            ready_timeout=_seconds(env, "CHAT_READY_TIMEOUT", 60.0),
            stop_timeout=_seconds(env, "CHAT_STOP_TIMEOUT", 10.0),
            sync_always=ports.truthy(env.get("CHAT_NATS_SYNC_ALWAYS")),
            nats_env=servers.nats_env(env),
        )

    @property
    def public_host(self) -> str:
        """The host in printed URLs (loopback when binding every interface)."""
        return "127.0.0.1" if self.bind_host in ("0.0.0.0", "::", "") else self.bind_host

    @property
    def nats_ports(self) -> list[int]:
        n = ports.NATS_CLUSTER_SIZE if self.cluster else 1
        return [self.port_of["nats"] + i for i in range(n)]

    @property
    def nats_urls(self) -> str:
        return ",".join(f"nats://127.0.0.1:{p}" for p in self.nats_ports)

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.port_of['redis']}/0"

    @property
    def dynamo_url(self) -> str:
        return f"http://127.0.0.1:{self.port_of['dynamo']}"

    def http_url(self, part: str) -> str:
        return f"http://{self.public_host}:{self.port_of[part]}"

    @property
    def servers(self) -> list[str]:
        return [p for p in self.parts if p in ports.SERVERS]

    @property
    def services(self) -> list[str]:
        return [p for p in self.parts if p in ports.SERVICES]

    @property
    def logs(self) -> Path:
        return self.data_dir / "logs"

    def cors_origins(self) -> str:
        hosts = ["127.0.0.1", "localhost"]
        if self.public_host not in hosts:
            hosts.append(self.public_host)
        return ",".join(
            f"http://{h}:{self.port_of[e]}" for e in ("edge-a", "edge-b") for h in hosts
        )

    def user_overrides(self) -> dict[str, str]:
        """The caller's own CHAT_* settings (they win over the runner's defaults)."""
        return {k: v for k, v in self.env.items() if k.startswith("CHAT_") and k not in PER_PROCESS}

    def common_env(self, secret: str) -> dict[str, str]:
        """What every service process gets before its own settings."""
        base = {
            "CHAT_ENV": "development",
            "CHAT_HOST": self.bind_host,
            "CHAT_NATS_URLS": self.nats_urls,
            "CHAT_REDIS_URL": self.redis_url,
            "CHAT_DYNAMO_URL": self.dynamo_url,
            "CHAT_JWT_SECRET": secret,
            "CHAT_TABLE_PREFIX": self.table_prefix,
            "CHAT_CORS_ORIGINS": self.cors_origins(),
            "CHAT_PUBLIC_USERS_URL": self.http_url("users"),
            "CHAT_PUBLIC_ROOMS_URL": self.http_url("rooms"),
            "CHAT_PUBLIC_HISTORY_URL": self.http_url("history"),
            "PYTHONUNBUFFERED": "1",
        }
        return {**base, **self.user_overrides()}

    def service_env(self, part: str, secret: str) -> dict[str, str]:
        env = self.common_env(secret)
        env["CHAT_PORT"] = str(self.port_of[part])
        env["CHAT_HOST"] = self.bind_host
        if part.startswith("edge-"):
            env["CHAT_SERVICE_NAME"] = "ws-edge"
            env["CHAT_NODE_ID"] = part.removeprefix("edge-")
        else:
            env["CHAT_SERVICE_NAME"] = part
            env.pop("CHAT_NODE_ID", None)
        return env


def _seconds(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ports.PortConfigError(f"{name}={raw!r} is not a number of seconds") from None
    if value <= 0:
        raise ports.PortConfigError(f"{name} must be more than 0 seconds")
    return value


# --------------------------------------------------------------------------------------------
# data folder


def ensure_data_dir(data_dir: Path) -> None:
    for sub in ("nats", "redis", "dynamo", "logs"):
        (data_dir / sub).mkdir(parents=True, exist_ok=True)


def load_or_create_secret(data_dir: Path) -> str:
    """The development JWT signing secret: generated once (mode 600), then reused."""
    from infra.settings import new_secret

    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / SECRET_FILE
    for _ in range(3):
        try:
            secret = path.read_text().strip()
        except FileNotFoundError:
            secret = ""
        else:
            if os.stat(path).st_mode & 0o077:
                os.chmod(path, 0o600)
            if secret:
                return secret
            path.unlink(missing_ok=True)  # empty (an interrupted write): make a new one
        # Write a private temporary file, then link it into place: never a half-written
        # secret, and of two racing starts exactly one secret wins.
        tmp = data_dir / f".{SECRET_FILE}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, (new_secret() + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
    raise RunError(f"cannot create the JWT secret file {path}")


@contextlib.contextmanager
def data_dir_lock(data_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on the data folder: two runners never share one store."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = path.read_text().strip() or "?"
            raise RunError(
                f"the data folder {data_dir} is used by another `make run` (pid {holder}): "
                "stop it, or set CHAT_DATA_DIR to another folder"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)


# --------------------------------------------------------------------------------------------
# what to start


def module_problem(module: str) -> str | None:
    """None when `python -m module` can start, else a short reason."""
    try:
        spec = importlib.util.find_spec(f"{module}.__main__")
    except Exception as exc:  # the package itself fails to import
        return f"importing {module} fails: {type(exc).__name__}: {exc}"
    if spec is None:
        return f"{module} has no __main__ module (is the service written yet?)"
    return None


def server_specs(cfg: Config) -> list[ChildSpec]:
    logs = cfg.logs
    specs: list[ChildSpec] = []
    if "nats" in cfg.parts:
        if cfg.cluster:
            n = ports.NATS_CLUSTER_SIZE
            routes = [f"nats-route://127.0.0.1:{cfg.cluster_port + i}" for i in range(n)]
            for i in range(n):
                specs.append(
                    ChildSpec(
                        name=f"nats-{i + 1}",
                        argv=_nats_argv(cfg, i, routes),
                        log_path=logs / f"nats-{i + 1}.log",
                        env=cfg.nats_env,
                        port=cfg.nats_ports[i],
                    )
                )
        else:
            specs.append(
                ChildSpec(
                    "nats",
                    _nats_argv(cfg, None, []),
                    logs / "nats.log",
                    env=cfg.nats_env,
                    port=cfg.nats_ports[0],
                )
            )
    if "redis" in cfg.parts:
        specs.append(
            ChildSpec(
                "redis",
                _call(servers.redis_command, cfg.port_of["redis"], cfg.data_dir / "redis"),
                logs / "redis.log",
                port=cfg.port_of["redis"],
            )
        )
    if "dynamo" in cfg.parts:
        specs.append(
            ChildSpec(
                "dynamo",
                _call(servers.dynalite_command, cfg.port_of["dynamo"], cfg.data_dir / "dynamo"),
                logs / "dynamo.log",
                port=cfg.port_of["dynamo"],
            )
        )
    return specs


def _call(
    build: Callable[[int, Path], list[str]], port: int, path: Path
) -> Callable[[], list[str]]:
    """An argv factory with its arguments bound now (not late, as a loop's lambda would be)."""
    return lambda: build(port, path)


def _nats_argv(cfg: Config, index: int | None, routes: list[str]) -> Callable[[], list[str]]:
    def argv() -> list[str]:
        if index is None:
            return servers.nats_command(
                cfg.nats_ports[0], cfg.data_dir / "nats", sync_always=cfg.sync_always
            )
        return servers.nats_command(
            cfg.nats_ports[index],
            cfg.data_dir / "nats-cluster" / f"n{index + 1}",
            server_name=f"chat-nats-{index + 1}",
            cluster_port=cfg.cluster_port + index,
            routes=routes,
            sync_always=cfg.sync_always,
        )

    return argv


def settings_problems(cfg: Config, secret: str) -> list[str]:
    """Each service's settings as its process will read them, checked before anything starts:
    one line per setting that would stop a service (`CHAT_X=value: why (services)`), so that
    a bad value is named at once instead of after servers and provisioning time out on it."""
    from pydantic import ValidationError

    found: dict[str, list[str]] = {}
    for part in cfg.services:
        module = importlib.import_module(f"{SERVICE_MODULES[part]}.settings")
        with _environ(cfg.service_env(part, secret)):
            try:
                module.Settings()
            except ValidationError as exc:
                for error in exc.errors():
                    field = str(error["loc"][0]) if error["loc"] else ""
                    shown = f"CHAT_{field.upper()}" if field else "settings"
                    if field and "secret" not in field:  # a secret's value is never printed
                        shown += f"={error['input']!r}"
                    found.setdefault(f"{shown}: {error['msg']}", []).append(part)
    return [f"{line} ({', '.join(parts)})" for line, parts in found.items()]


@contextlib.contextmanager
def _environ(env: Mapping[str, str]) -> Iterator[None]:
    """os.environ as a service process gets it (the runner's own CHAT_* replaced by `env`),
    for the block. Called before any thread of the runner starts."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update({k: v for k, v in saved.items() if not k.upper().startswith("CHAT_")})
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def service_specs(cfg: Config, secret: str) -> list[ChildSpec]:
    specs = []
    for part in cfg.services:
        module = SERVICE_MODULES[part]
        port = cfg.port_of[part]
        specs.append(
            ChildSpec(
                name=part,
                argv=_module_argv(module),
                log_path=cfg.logs / f"{part}.log",
                env=cfg.service_env(part, secret),
                kind="service",
                port=port,
                ready_url=f"http://{cfg.public_host}:{port}/readyz",
                cwd=servers.REPO_ROOT,
            )
        )
    return specs


def _module_argv(module: str) -> Callable[[], list[str]]:
    return lambda: [sys.executable, "-m", module]


# --------------------------------------------------------------------------------------------
# running


class StopRequested(Exception):
    """SIGINT/SIGTERM arrived during startup."""


class Runner:
    """One `make run`: start, supervise, stop."""

    def __init__(self, cfg: Config, say: Callable[[str], None] = out) -> None:
        self.cfg = cfg
        self.say = say
        self.stop_event = threading.Event()
        self.sup: Supervisor | None = None
        self.signals = 0
        self.hurry = threading.Event()  # a second signal: kill what is still stopping
        self.signal_name = ""

    # signals ---------------------------------------------------------------------------------
    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # Only flags here: printing from a signal handler can re-enter a stdout write.
        self.signals += 1
        if self.signals == 1:
            self.signal_name = signal.Signals(signum).name
        else:
            self.hurry.set()
        self.stop_event.set()

    def install_signals(self) -> None:
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)

    def _sleep(self, seconds: float) -> None:
        if self.stop_event.wait(seconds):
            raise StopRequested

    # phases ----------------------------------------------------------------------------------
    def run(self) -> int:
        cfg = self.cfg
        try:
            ports.check_ports(ports.port_table(cfg.env, cfg.parts))
            problems = {p: why for p in cfg.services if (why := module_problem(SERVICE_MODULES[p]))}
            if problems:
                lines = "\n".join(f"  {p}: {why}" for p, why in problems.items())
                have = [p for p in cfg.parts if p not in problems]
                raise RunError(
                    "cannot start these services:\n"
                    f"{lines}\n"
                    "run the rest with e.g. CHAT_RUN_ONLY=" + ",".join(have or ["infra"])
                )
        except (ports.PortConfigError, RunError) as exc:
            self.say(f"error: {exc}")
            return 1
        lock = data_dir_lock(cfg.data_dir) if cfg.servers else contextlib.nullcontext()
        try:
            with lock:
                return self._run_locked()
        except RunError as exc:
            self.say(f"error: {exc}")
            return 1

    def _run_locked(self) -> int:
        cfg = self.cfg
        ensure_data_dir(cfg.data_dir)
        secret = cfg.env.get("CHAT_JWT_SECRET") or load_or_create_secret(cfg.data_dir)
        problems = settings_problems(cfg, secret)
        if problems:
            raise RunError("invalid settings:\n" + "\n".join(f"  {p}" for p in problems))
        specs = server_specs(cfg) + service_specs(cfg, secret)
        self.sup = Supervisor(specs, self.say, backoff=cfg.backoff)
        code = 1
        try:
            self.say(f"data folder {cfg.data_dir} (logs in {cfg.logs})")
            self._start_servers()
            self._provision()
            self._start_services()
            self._print_urls()
            self._supervise()
            code = 0
        except StopRequested:
            code = 0
        except RunError as exc:
            self.say(f"error: {exc}")
            code = 1
        finally:
            self._stop()
        return code

    def _start_servers(self) -> None:
        assert self.sup is not None
        names = [s.name for s in server_specs(self.cfg)]
        if not names:
            return
        self.sup.start(names)
        deadline = time.monotonic() + 30
        while not self.sup.ready(names):
            exited = self.sup.tick()
            for name in exited:  # a server that dies at startup will not get better
                raise RunError(
                    f"{name} exited at startup (its output is above; the whole log is "
                    f"{self.sup[name].spec.log_path})"
                )
            for name in names:
                child = self.sup[name]
                if child.popen is None and child.crashes:
                    raise RunError(f"{name} could not be started (see above)")
            if time.monotonic() > deadline:
                waiting = [n for n in names if not self.sup[n].ready]
                raise RunError(f"not listening after 30s: {', '.join(waiting)}")
            self._sleep(0.05)
        self.say("servers are up: " + ", ".join(names))

    def _provision(self) -> None:
        cfg = self.cfg
        if not {"nats", "dynamo"} <= set(cfg.parts):
            self.say("provisioning skipped (NATS and the store are not both started here)")
            return
        replicas = ports.NATS_CLUSTER_SIZE if cfg.cluster else 1
        env = {
            **os.environ,
            "CHAT_NATS_URLS": cfg.nats_urls,
            "CHAT_DYNAMO_URL": cfg.dynamo_url,
            "CHAT_REDIS_URL": cfg.redis_url,
            "CHAT_TABLE_PREFIX": cfg.table_prefix,
            "CHAT_ENV": cfg.env.get("CHAT_ENV", "development"),
        }
        argv = [sys.executable, "-m", "infra.provision", "--replicas", str(replicas)]
        log_path = cfg.logs / "provision.log"
        deadline = time.monotonic() + cfg.ready_timeout
        attempt = 0
        while True:
            attempt += 1
            popen = servers.spawn("provision", argv, log_path, env=env)
            try:
                while popen.poll() is None:
                    if time.monotonic() > deadline + 30:
                        servers.stop_process(popen, 2)
                        break
                    self._sleep(0.1)
            except StopRequested:
                servers.stop_process(popen, 2)
                raise
            if popen.returncode == 0:
                self.say(
                    f"tables ({cfg.table_prefix}*) and streams provisioned (replicas {replicas})"
                )
                return
            if time.monotonic() > deadline:
                tail = _tail(log_path, 25)
                raise RunError(f"provisioning failed ({attempt} attempts):\n" + _indent(tail))
            if self.sup is not None:
                self.sup.tick()  # keep the servers supervised meanwhile
            self._sleep(min(0.5 * attempt, 3.0))

    def _start_services(self) -> None:
        assert self.sup is not None
        names = self.cfg.services
        if not names:
            return
        self.sup.start(names)
        deadline = time.monotonic() + self.cfg.ready_timeout
        while not self.sup.ready(names):
            for name in self.sup.tick():
                child = self.sup[name]
                if name in names and not child.ready:
                    output = child.log_tail(40)
                    if "ModuleNotFoundError" in output or "ImportError" in output:
                        raise RunError(
                            f"{name} ({SERVICE_MODULES[name]}) cannot be imported; its log "
                            f"({child.spec.log_path}):\n" + _indent(child.log_tail(25))
                        )
            if time.monotonic() > deadline:
                lines = []
                for name in names:
                    child = self.sup[name]
                    if not child.ready:
                        lines.append(
                            f"{name} did not answer GET {child.spec.ready_url} within "
                            f"{self.cfg.ready_timeout:.0f}s; the end of {child.spec.log_path}:\n"
                            + _indent(child.log_tail(25))
                        )
                raise RunError("\n".join(lines))
            self._sleep(0.1)

    def _print_urls(self) -> None:
        cfg = self.cfg
        rows: list[tuple[str, str]] = []
        labels = {
            "users": "users (HTTP)",
            "history": "history (HTTP)",
            "rooms": "rooms (HTTP)",
            "edge-a": "ws-edge node a (WS, SSE, web client)",
            "edge-b": "ws-edge node b",
        }
        for part in ("users", "history", "rooms", "edge-a", "edge-b"):
            if part in cfg.parts:
                rows.append((labels[part], cfg.http_url(part)))
        if "nats" in cfg.parts:
            rows.append(("NATS", cfg.nats_urls.replace(",", ", ")))
        if "redis" in cfg.parts:
            rows.append(("Redis", f"redis://127.0.0.1:{cfg.port_of['redis']}"))
        if "dynamo" in cfg.parts:
            rows.append(("DynamoDB-compatible store", cfg.dynamo_url))
        width = max(len(label) for label, _ in rows)
        lines = [f"  {label.ljust(width)}  {url}" for label, url in rows]
        for edge in ("edge-a", "edge-b"):
            if edge in cfg.parts:
                base = cfg.http_url(edge)
                ws = base.replace("http://", "ws://")
                lines.append(
                    f"  node {edge[-1]}: web client {base}/  WS {ws}/ws?token=...  "
                    f"SSE {base}/events"
                )
        self.say("the chat mesh is running:\n" + "\n".join(lines) + f"\n  logs: {cfg.logs}")
        self.say("Ctrl-C to stop")

    def _supervise(self) -> None:
        assert self.sup is not None
        while not self.stop_event.wait(0.2):
            self.sup.tick()

    def _stop(self) -> None:
        if self.signal_name:
            self.say(
                f"{self.signal_name}: stopping (services first, then servers; "
                "again to kill at once)"
            )
        if self.sup is None:
            return
        self.sup.stop_all(self.cfg.stop_timeout, self.hurry)
        held = [
            p
            for p in (
                *self.cfg.nats_ports,
                *(self.cfg.port_of[x] for x in self.cfg.parts if x != "nats"),
            )
            if port_open(p)
        ]
        if held:
            self.say(f"warning: still in use after the stop: {held}")
        else:
            self.say("stopped")


def _tail(path: Path, lines: int) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _indent(text: str) -> str:
    return "\n".join(f"    | {line}" for line in text.splitlines()) or "    | (empty)"


def main(env: Mapping[str, str] | None = None) -> int:
    try:
        cfg = Config.from_env(os.environ if env is None else env)
    except (ports.PortConfigError, ValueError) as exc:
        out(f"error: {exc}")
        return 1
    runner = Runner(cfg)
    runner.install_signals()
    return runner.run()


def provision_main() -> int:
    """`python -m mesh provision`: provision against the ports `make run` uses."""
    cfg = Config.from_env(os.environ)
    env = {
        **os.environ,
        "CHAT_NATS_URLS": cfg.nats_urls,
        "CHAT_DYNAMO_URL": cfg.dynamo_url,
        "CHAT_TABLE_PREFIX": cfg.table_prefix,
    }
    replicas = ports.NATS_CLUSTER_SIZE if cfg.cluster else 1
    argv = [sys.executable, "-m", "infra.provision", "--replicas", str(replicas)]
    return subprocess.call(argv, env=env)
