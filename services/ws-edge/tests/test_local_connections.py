"""The heartbeat's view of a node's connections."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from ws_edge.hub import LocalConnections


def test_local_connections_read_through_the_hub() -> None:
    """The heartbeat's view of this node's connections (id -> user) reads the hub's live map:
    nothing is copied per heartbeat, and a connection made since is in it."""
    conns: dict[str, Any] = {"c1": SimpleNamespace(user_id="u1")}
    view = LocalConnections(conns)
    conns["c2"] = SimpleNamespace(user_id="u2")
    assert dict(view.items()) == {"c1": "u1", "c2": "u2"}
    assert len(view) == 2
    assert view["c2"] == "u2"
    del conns["c1"]
    assert list(view) == ["c2"]
