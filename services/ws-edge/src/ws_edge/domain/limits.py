"""Per-connection rate limit (token bucket) and abuse detection (refusals in a window)."""

from __future__ import annotations

from collections import OrderedDict, deque


class TokenBucket:
    """`capacity` frames at once, refilled at `rate` frames per second."""

    __slots__ = ("capacity", "rate", "tokens", "updated")  # one or two per socket

    def __init__(self, capacity: int, rate: float, now: float) -> None:
        self.capacity = float(capacity)
        self.rate = rate
        self.tokens = float(capacity)
        self.updated = now

    def take(self, now: float) -> bool:
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


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


class RecentBuckets:
    """Token buckets for callers without a connection (HTTP sends), kept for the most recent
    `max_users` users (least recently used dropped), so a rate holds across requests and
    memory stays bounded."""

    def __init__(self, capacity: int, rate: float, max_users: int = 100_000) -> None:
        self.capacity = capacity
        self.rate = rate
        self.max_users = max_users
        self.buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def take(self, user_id: str, now: float) -> bool:
        bucket = self.buckets.get(user_id)
        if bucket is None:
            bucket = self.buckets[user_id] = TokenBucket(self.capacity, self.rate, now)
            if len(self.buckets) > self.max_users:
                self.buckets.popitem(last=False)
        else:
            self.buckets.move_to_end(user_id)
        return bucket.take(now)
