"""The port table of `make run`: which variable moves which port, and the check that they are free.

Standard library only: `compose/preflight.py` loads this file by path with the system python3
before anything is installed, and the supervisor (`python -m mesh run`) imports it as
`mesh.ports`, so both check exactly the same table.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass

DEFAULT_BIND_HOST = "127.0.0.1"
INFRA_HOST = "127.0.0.1"  # the embedded servers always listen on loopback only
NATS_CLUSTER_SIZE = 3

SERVERS = ("nats", "redis", "dynamo")
SERVICES = ("users", "history", "rooms", "edge-a", "edge-b")
ALL_PARTS = SERVERS + SERVICES
GROUPS: dict[str, tuple[str, ...]] = {
    "all": ALL_PARTS,
    "infra": SERVERS,
    "services": SERVICES,
    "edges": ("edge-a", "edge-b"),
}


@dataclass(frozen=True)
class PortSetting:
    """One configurable port: the environment variable that sets it and what listens there."""

    variable: str
    default: int
    label: str
    part: str  # the name of the process (or server) that listens on it

    @property
    def is_server(self) -> bool:
        return self.part in SERVERS


PORT_SETTINGS: tuple[PortSetting, ...] = (
    PortSetting("CHAT_USERS_PORT", 8001, "users HTTP", "users"),
    PortSetting("CHAT_HISTORY_PORT", 8002, "history HTTP", "history"),
    PortSetting("CHAT_ROOMS_PORT", 8003, "rooms HTTP", "rooms"),
    PortSetting("CHAT_EDGE_A_PORT", 8080, "ws-edge node a", "edge-a"),
    PortSetting("CHAT_EDGE_B_PORT", 8081, "ws-edge node b", "edge-b"),
    PortSetting("CHAT_NATS_PORT", 4222, "NATS", "nats"),
    PortSetting("CHAT_REDIS_PORT", 6379, "Redis", "redis"),
    PortSetting("CHAT_DYNAMO_PORT", 8000, "DynamoDB-compatible store", "dynamo"),
)
NATS_CLUSTER_PORT = PortSetting("CHAT_NATS_CLUSTER_PORT", 6222, "NATS cluster routes", "nats")


class PortConfigError(ValueError):
    """The port settings are invalid, or a port is taken: the message says what to change."""


@dataclass(frozen=True)
class PortUse:
    """A concrete port the runner will listen on, and the variable that moves it."""

    port: int
    label: str
    variable: str
    host: str
    part: str
    hint: str = ""  # extra words for derived ports (cluster nodes)

    def advice(self) -> str:
        return f"set {self.variable} to another port{self.hint}"


def truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def selected_parts(env: Mapping[str, str]) -> tuple[str, ...]:
    """The parts `CHAT_RUN_ONLY` selects (comma list of names or groups; empty means all)."""
    raw = env.get("CHAT_RUN_ONLY", "").strip()
    if not raw:
        return ALL_PARTS
    chosen: set[str] = set()
    for item in raw.split(","):
        name = item.strip().lower()
        if not name:
            continue
        if name in GROUPS:
            chosen.update(GROUPS[name])
        elif name in ALL_PARTS:
            chosen.add(name)
        else:
            valid = ", ".join(list(GROUPS) + list(ALL_PARTS))
            raise PortConfigError(f"CHAT_RUN_ONLY: unknown part {name!r} (valid: {valid})")
    if not chosen:
        raise PortConfigError("CHAT_RUN_ONLY selects nothing")
    return tuple(p for p in ALL_PARTS if p in chosen)


def parse_port(env: Mapping[str, str], setting: PortSetting) -> int:
    raw = env.get(setting.variable, "").strip()
    if not raw:
        return setting.default
    try:
        port = int(raw)
    except ValueError:
        raise PortConfigError(f"{setting.variable}={raw!r} is not a port number") from None
    if not 1 <= port <= 65535:
        raise PortConfigError(f"{setting.variable}={port} is outside 1..65535")
    return port


def bind_host(env: Mapping[str, str]) -> str:
    return env.get("CHAT_BIND_HOST", "").strip() or DEFAULT_BIND_HOST


def port_table(env: Mapping[str, str], parts: tuple[str, ...] | None = None) -> list[PortUse]:
    """Every port the runner needs for the selected parts, refusing duplicates and bad values."""
    if parts is None:
        parts = selected_parts(env)
    host = bind_host(env)
    cluster = truthy(env.get("CHAT_NATS_CLUSTER"))
    uses: list[PortUse] = []
    values = {s.variable: parse_port(env, s) for s in (*PORT_SETTINGS, NATS_CLUSTER_PORT)}
    for setting in PORT_SETTINGS:
        port = values[setting.variable]
        where = INFRA_HOST if setting.is_server else host
        if setting.part == "nats" and cluster:
            for i in range(NATS_CLUSTER_SIZE):
                uses.append(
                    PortUse(
                        port + i,
                        f"NATS node {i + 1}",
                        setting.variable,
                        where,
                        "nats",
                        f" (cluster nodes use {setting.variable} .. +{NATS_CLUSTER_SIZE - 1})",
                    )
                )
            base = values[NATS_CLUSTER_PORT.variable]
            for i in range(NATS_CLUSTER_SIZE):
                uses.append(
                    PortUse(
                        base + i,
                        f"NATS node {i + 1} routes",
                        NATS_CLUSTER_PORT.variable,
                        where,
                        "nats",
                        f" (routes use {NATS_CLUSTER_PORT.variable} .. +{NATS_CLUSTER_SIZE - 1})",
                    )
                )
        else:
            uses.append(PortUse(port, setting.label, setting.variable, where, setting.part))
    for use in uses:
        if use.port > 65535:
            raise PortConfigError(f"{use.label}: port {use.port} is above 65535: {use.advice()}")
    # Duplicates are refused across the whole table (even unselected parts): a partial run
    # started beside another one must not be configured to collide with it later.
    seen: dict[int, PortUse] = {}
    for use in uses:
        other = seen.get(use.port)
        if other is not None:
            raise PortConfigError(
                f"port {use.port} is configured twice: {other.label} ({other.variable}) and "
                f"{use.label} ({use.variable}): give each its own port"
            )
        seen[use.port] = use
    return [u for u in uses if u.part in parts]


def port_problem(port: int, host: str) -> str | None:
    """None when `port` can be bound on `host` now, else why not. The holder is not touched.

    Only a bind is tried (SO_REUSEADDR, as the servers themselves use, so a socket lingering in
    TIME_WAIT after a stop does not count): nothing connects to whoever holds the port.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return "in use"
            if exc.errno == errno.EACCES:
                return "not allowed (privileged port)"
            if exc.errno == errno.EADDRNOTAVAIL:
                return f"not available on host {host} (check CHAT_BIND_HOST)"
            return f"not usable ({exc.strerror or exc})"
    return None


def check_ports(uses: list[PortUse]) -> None:
    """Raise PortConfigError naming every port that cannot be bound and its variable (all of
    them at once: a second `make run` beside a first one would otherwise be refused one port
    at a time)."""
    problems = []
    for use in uses:
        problem = port_problem(use.port, use.host)
        if problem is not None:
            problems.append(f"port {use.port} ({use.label}) is {problem}: {use.advice()}")
    if len(problems) == 1:
        raise PortConfigError(problems[0])
    if problems:
        raise PortConfigError(f"{len(problems)} ports cannot be used:\n  " + "\n  ".join(problems))


def preflight(env: Mapping[str, str] | None = None) -> list[PortUse]:
    """Parse the table from the environment and check every selected port is free."""
    uses = port_table(os.environ if env is None else env)
    check_ports(uses)
    return uses
