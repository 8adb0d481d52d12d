"""Per-connection rate limit (token bucket) and abuse detection (refusals in a window)."""

from __future__ import annotations

from collections import deque


class TokenBucket:
    """`capacity` frames at once, refilled at `rate` frames per second."""

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

    def __init__(self, limit: int, window: float) -> None:
        self.limit = limit
        self.window = window
        self.times: deque[float] = deque()

    def refuse(self, now: float) -> bool:
        """Record a refusal; True when the client is now abusive."""
        self.times.append(now)
        while self.times and now - self.times[0] > self.window:
            self.times.popleft()
        return len(self.times) >= self.limit
