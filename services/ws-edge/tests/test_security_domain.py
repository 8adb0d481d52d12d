"""Origin check and per-user rate buckets of the edge (pure logic, no sockets)."""

from __future__ import annotations

from ws_edge.domain.limits import UserBuckets
from ws_edge.domain.origin import origin_allowed
from ws_edge.settings import Settings


def test_no_origin_header_is_a_non_browser_client() -> None:
    """A handshake without Origin is allowed (curl, native apps, server-side clients)."""
    assert origin_allowed(None, "127.0.0.1:8080", [])


def test_own_origin_allowed_others_refused() -> None:
    """The node's own origin (its web client) passes; another site or `null` does not."""
    assert origin_allowed("http://127.0.0.1:8080", "127.0.0.1:8080", [])
    assert origin_allowed("HTTP://127.0.0.1:8080/", "127.0.0.1:8080", [])
    assert not origin_allowed("http://evil.example", "127.0.0.1:8080", [])
    assert not origin_allowed("null", "127.0.0.1:8080", [])
    assert not origin_allowed("http://127.0.0.1:8081", "127.0.0.1:8080", [])
    assert not origin_allowed("file://", None, [])


def test_listed_origins_and_wildcard() -> None:
    """Configured origins (CHAT_WS_ALLOWED_ORIGINS) pass, `*` allows any."""
    settings = Settings(ws_allowed_origins=" https://chat.example/ ,https://b.example")
    allowed = settings.ws_allowed_origin_list
    assert allowed == ["https://chat.example", "https://b.example"]
    assert origin_allowed("https://chat.example", "edge:8080", allowed)
    assert not origin_allowed("https://chat.example.evil", "edge:8080", allowed)
    assert origin_allowed("https://anything.example", "edge:8080", ["*"])


def test_user_bucket_shared_and_released() -> None:
    """Connections of one user share a bucket; it is dropped with the last connection."""
    buckets = UserBuckets(capacity=3, rate=1.0)
    first = buckets.acquire("u", 0.0)
    second = buckets.acquire("u", 0.0)
    assert first is second
    assert [first.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert buckets.acquire("v", 0.0) is not first
    buckets.release("u")
    assert "u" in buckets.buckets
    buckets.release("u")
    assert "u" not in buckets.buckets
    assert buckets.acquire("u", 0.0).take(0.0)


def test_recent_buckets_hold_a_rate_across_requests_and_stay_bounded() -> None:
    """HTTP senders share one bucket per user across requests; old users are dropped."""
    from ws_edge.domain.limits import RecentBuckets

    buckets = RecentBuckets(capacity=3, rate=1.0, max_users=2)
    assert [buckets.take("u", 0.0) for _ in range(4)] == [True, True, True, False]
    assert buckets.take("u", 1.01)
    buckets.take("v", 1.0)
    buckets.take("w", 1.0)
    assert list(buckets.buckets) == ["v", "w"]
