"""Browser tests: the whole mesh with CORS for the edge origins, and Debian's chromium (headless).

The edges get their ports before the services start, so the services can allow their origins
(as `make run` does); an edge can be restarted on the same port. The browser is the system's
/usr/bin/chromium (scripts/install-chromium.sh, run by `make test`), never a downloaded build.
"""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, async_playwright

sys.path.insert(0, str(Path(__file__).parent))  # web_mesh (importlib mode)

from web_mesh import SCREENSHOTS, WebMesh

from mesh import servers
from mesh.testing import Infra, ServiceLauncher, ServiceProcess

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="package")
def web(infra: Infra) -> Iterator[WebMesh]:
    """users, rooms, history and two edge nodes whose origins the services allow."""
    launcher = ServiceLauncher(infra, isolated=True)
    edge_ports = [servers.free_port(), servers.free_port()]
    origins = ",".join(
        f"http://{host}:{port}" for port in edge_ports for host in ("127.0.0.1", "localhost")
    )
    try:
        users = launcher.start("web-users", "users_service", CHAT_CORS_ORIGINS=origins)
        rooms = launcher.start("web-rooms", "rooms_service", CHAT_CORS_ORIGINS=origins)
        history = launcher.start("web-history", "history_service", CHAT_CORS_ORIGINS=origins)
        edges = []
        for node, port in zip(("wa", "wb"), edge_ports, strict=True):
            name = f"web-edge-{node}"
            env = launcher.infra.env(
                CHAT_PORT=str(port),
                CHAT_SERVICE_NAME=name,
                CHAT_NODE_ID=node,
                CHAT_CORS_ORIGINS=origins,
                CHAT_PUBLIC_USERS_URL=users.url,
                CHAT_PUBLIC_ROOMS_URL=rooms.url,
                CHAT_PUBLIC_HISTORY_URL=history.url,
                CHAT_PRESENCE_GRACE_SECONDS="2",
            )
            proc = ServiceProcess(
                name, "ws_edge", port, env, launcher.infra.workdir / "logs" / f"{name}-{port}.log"
            )
            launcher.started.append(proc)
            edges.append(proc.start())
        yield WebMesh(launcher, users.url, rooms.url, history.url, edges)
    finally:
        launcher.stop_all()


@pytest.fixture(scope="package")
async def browser() -> AsyncIterator[Browser]:
    """Debian's chromium, headless (skipped where it is not installed and this is not CI)."""
    if not os.access(CHROMIUM, os.X_OK):
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing: run scripts/install-chromium.sh")
        pytest.skip(f"{CHROMIUM} is missing: run scripts/install-chromium.sh")
    SCREENSHOTS.mkdir(exist_ok=True)
    async with async_playwright() as pw:
        launched = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            await launched.close()
