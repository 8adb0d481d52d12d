"""Cross-service tests: the whole mesh (users, rooms, history, two edge nodes) as processes."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # the shared test client (importlib mode)

from chat_client import Mesh

from mesh.testing import Infra, ServiceLauncher


@pytest.fixture(scope="module")
def mesh_procs(infra: Infra) -> Iterator[tuple[Mesh, ServiceLauncher]]:
    """Every service of the mesh started once per test module, stopped by pid afterwards."""
    launcher = ServiceLauncher(infra, isolated=True)
    try:
        users = launcher.start("users", "users_service")
        rooms = launcher.start("rooms", "rooms_service")
        history = launcher.start("history", "history_service")
        edge_a = launcher.start("edge-a", "ws_edge", CHAT_NODE_ID="a")
        edge_b = launcher.start("edge-b", "ws_edge", CHAT_NODE_ID="b")
        yield Mesh(users.url, rooms.url, history.url, [edge_a.url, edge_b.url]), launcher
    finally:
        launcher.stop_all()


@pytest.fixture
def mesh(mesh_procs: tuple[Mesh, ServiceLauncher]) -> Mesh:
    """Addresses of the running mesh."""
    return mesh_procs[0]
