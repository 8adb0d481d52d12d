"""Which seqs a connection has been sent per room, and per-room ordering on a node (no I/O).

A connection is sent each message at most once: `SentSet` keeps the seqs already sent as
merged intervals. `RoomOrder` puts a room's live events back in seq order on a node and says
which seqs are missing (to be read from history before anything newer goes out).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from contracts.rest import Message


@dataclass
class SentSet:
    """Merged, sorted, inclusive intervals of seqs already sent to one connection."""

    spans: list[tuple[int, int]] = field(default_factory=list)

    def __contains__(self, seq: int) -> bool:
        spans = self.spans
        if not spans or seq > spans[-1][1]:  # the usual case: a seq newer than all sent
            return False
        return any(lo <= seq <= hi for lo, hi in spans)

    @property
    def highest(self) -> int:
        return self.spans[-1][1] if self.spans else 0

    def add(self, seq: int) -> None:
        self.add_range(seq, seq)

    def add_range(self, lo: int, hi: int) -> None:
        spans = self.spans
        if spans and spans[-1][0] <= lo <= spans[-1][1] + 1:  # the usual case: extends the last
            if hi > spans[-1][1]:
                spans[-1] = (spans[-1][0], hi)
            return
        spans = [*spans, (lo, hi)]
        spans.sort()
        merged: list[tuple[int, int]] = []
        for a, b in spans:
            if merged and a <= merged[-1][1] + 1:
                merged[-1] = (merged[-1][0], max(merged[-1][1], b))
            else:
                merged.append((a, b))
        self.spans = merged


@dataclass
class RoomOrder:
    """Per-room ordering of live events on one node.

    `delivered` is the highest seq released in order (None: not known yet, the first event
    is taken as is; 0 for a room known to be new). Events beyond `delivered + 1` wait in
    `pending` until the gap is filled from history.
    """

    delivered: int | None = None
    pending: dict[int, Message] = field(default_factory=dict)

    def offer(self, message: Message) -> list[Message]:
        """Messages now releasable in order (possibly none; duplicates are dropped)."""
        seq = message.seq
        if self.delivered is not None and seq <= self.delivered:
            return []
        if self.delivered is None or seq == self.delivered + 1:
            self.delivered = seq
            return [message, *self._drain()]
        self.pending[seq] = message
        return []

    def gap(self) -> tuple[int, int] | None:
        """(after, up_to): the missing seqs before the oldest pending event, if any."""
        if not self.pending or self.delivered is None:
            return None
        first = min(self.pending)
        if first <= self.delivered + 1:
            return None
        return self.delivered, first - 1

    def fill(self, messages: list[Message]) -> list[Message]:
        """Take messages read from history for the gap; return what is now releasable."""
        for message in messages:
            if self.delivered is None or message.seq > self.delivered:
                self.pending.setdefault(message.seq, message)
        if self.delivered is None:
            return []
        return self._drain()

    def _drain(self) -> list[Message]:
        out: list[Message] = []
        assert self.delivered is not None
        while self.delivered + 1 in self.pending:
            self.delivered += 1
            out.append(self.pending.pop(self.delivered))
        for stale in [s for s in self.pending if s <= self.delivered]:
            del self.pending[stale]
        return out
