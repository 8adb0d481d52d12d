"""A mesh with tightened limits for the security tests (one per package, stopped by pid)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # security_helpers (importlib mode)

from security_helpers import SecureMesh

from mesh.testing import Infra, ServiceLauncher

ALLOWED_ORIGIN = "https://allowed.example"

# Small, explicit limits so each one is reached quickly; the contract's defaults are covered by
# the unit tests of the settings.
HEADER_TIMEOUT_SECONDS = 2
COMMON = {
    "CHAT_CORS_ORIGINS": ALLOWED_ORIGIN,
    "CHAT_HEADER_TIMEOUT_SECONDS": str(HEADER_TIMEOUT_SECONDS),
    "CHAT_BODY_TIMEOUT_SECONDS": str(HEADER_TIMEOUT_SECONDS),
}
EDGE = {
    **COMMON,
    "CHAT_WS_ALLOWED_ORIGINS": ALLOWED_ORIGIN,
    "CHAT_SEND_QUEUE_FRAMES": "64",
    "CHAT_MAX_CONNECTIONS_PER_USER": "3",
    "CHAT_RATE_BURST": "200",
    "CHAT_RATE_PER_SECOND": "100",
    "CHAT_USER_RATE_BURST": "300",
    "CHAT_USER_RATE_PER_SECOND": "100",
    "CHAT_MAX_FRAME_BYTES": "65536",
    "CHAT_HARD_MAX_FRAME_BYTES": "262144",
}


@pytest.fixture(scope="package")
def secure(infra: Infra) -> Iterator[SecureMesh]:
    """users, rooms (at most 5 participants), history and two edges with tight limits."""
    launcher = ServiceLauncher(infra, isolated=True)
    try:
        users = launcher.start("sec-users", "users_service", **COMMON)
        rooms = launcher.start("sec-rooms", "rooms_service", CHAT_MAX_PARTICIPANTS="5", **COMMON)
        history = launcher.start("sec-history", "history_service", **COMMON)
        edge_a = launcher.start("sec-edge-a", "ws_edge", CHAT_NODE_ID="sa", **EDGE)
        edge_b = launcher.start("sec-edge-b", "ws_edge", CHAT_NODE_ID="sb", **EDGE)
        yield SecureMesh(users, rooms, history, [edge_a, edge_b], launcher.infra.redis_url)
    finally:
        launcher.stop_all()
