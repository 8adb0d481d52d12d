"""A connection's admission under the per-user limit when the connection map does not answer."""

from __future__ import annotations

from infra.auth import TokenService
from ws_edge.hub import Admission, Hub
from ws_edge.settings import Settings


class DownMap:
    """A connection map whose Redis does not answer."""

    async def reserve(self, user_id: str, conn_id: str, limit: int) -> bool:
        raise ConnectionError("redis down")


async def test_admission_falls_back_to_this_nodes_count() -> None:
    """With the map down, this node's own count admits up to the limit and refuses beyond it;
    a released admission frees its slot."""
    connmap = DownMap()
    hub = Hub(Settings(), None, connmap, TokenService("k" * 40, "chat", 3600, 0))  # type: ignore[arg-type]
    got = [await hub.admit("u", f"c{i}", 2) for i in range(3)]
    assert got == [Admission.LOCAL, Admission.LOCAL, Admission.REFUSED]
    assert await hub.admit("v", "c9", 2) is Admission.LOCAL  # per user
    hub.release("u")
    assert await hub.admit("u", "c3", 2) is Admission.LOCAL
    hub.release("u")
    assert await hub.admit("u", "c4", 2) is Admission.LOCAL
    assert await hub.admit("u", "c5", 2) is Admission.REFUSED
