"""Rate limits shared by services: a token bucket, and one bucket per recent caller.

Why here: the edge limits frames and HTTP sends per connection and per user, and the rooms
service limits room creation per user; both need the same buckets (one home, `libs/infra`).
"""

from __future__ import annotations

from collections import OrderedDict


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
