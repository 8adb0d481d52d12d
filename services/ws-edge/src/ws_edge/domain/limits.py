"""Per-connection rate limit (token bucket) and abuse detection (refusals in a window).

`TokenBucket` and `RecentBuckets` live in `infra.limits` (the rooms service limits room
creation per user with them too) and are re-exported here for the edge's modules.
"""

from __future__ import annotations

from collections import deque

from infra.limits import RecentBuckets, TokenBucket

__all__ = ["AbuseMeter", "RecentBuckets", "TokenBucket", "UserBuckets"]


class AbuseMeter:
    """Counts refused frames; `abusive` once `limit` fall within `window` seconds."""

    __slots__ = ("limit", "times", "window")

    def __init__(self, limit: int, window: float) -> None:
        self.limit = limit
        self.window = window
        # made on the first refusal: an empty deque is about 0.75 KB, on every idle socket
        self.times: deque[float] | None = None

    def refuse(self, now: float) -> bool:
        """Record a refusal; True when the client is now abusive."""
        times = self.times
        if times is None:
            times = self.times = deque()
        times.append(now)
        while times and now - times[0] > self.window:
            times.popleft()
        return len(times) >= self.limit


class UserBuckets:
    """One token bucket per user, shared by that user's connections on this node.

    A bucket lives while the user has a connection here (reference counted), so memory is
    bounded by the connected users.
    """

    def __init__(self, capacity: int, rate: float) -> None:
        self.capacity = capacity
        self.rate = rate
        self.buckets: dict[str, TokenBucket] = {}
        self.refs: dict[str, int] = {}

    def acquire(self, user_id: str, now: float) -> TokenBucket:
        bucket = self.buckets.get(user_id)
        if bucket is None:
            bucket = self.buckets[user_id] = TokenBucket(self.capacity, self.rate, now)
        self.refs[user_id] = self.refs.get(user_id, 0) + 1
        return bucket

    def release(self, user_id: str) -> None:
        left = self.refs.get(user_id, 0) - 1
        if left > 0:
            self.refs[user_id] = left
            return
        self.refs.pop(user_id, None)
        self.buckets.pop(user_id, None)
