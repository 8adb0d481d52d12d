"""Handlers: one per command, event and query; dependencies (adapters) are passed in.

The heart is `MessageWriter.store`, the exactly-once, gap-free per-room seq assignment.

Why there is never a gap and never a duplicate
==============================================
Store facts relied on (all hold on DynamoDB, Alternator and dynalite): a conditional put of one
item is atomic; a strongly consistent read sees every write acknowledged before it started.
Items are only ever created by conditional puts (`attribute_not_exists`), never updated or
deleted, so a message slot (room, seq) and a claim (room, messageId), once written, keep
their content forever.

Invariant T (tail values): every tail value a writer uses -- read from the store, taken from a
scan, or held in the per-process cache -- is 0 or the seq of a slot that was observed to exist
at some moment; since slots are never deleted, that slot exists from then on.

No gap. A writer puts a message only at `tail + 1` where `tail` satisfies T. So slot k+1 is
written only once slot k exists, and by induction slots 1..n all exist whenever slot n does.
A crash anywhere cannot make a hole: a single-item put either happened or not, and a claim
without a message occupies no seq.

No duplicate. Let m be a messageId. Every writer of m first puts the claim of m (or finds it
already there), so the claim exists before any slot holds m. The claim records `t0`, a tail
value read before the claim was created, hence t0 <= the real tail at claim creation, so every
slot holding m has seq > t0. Every writer works with the claim's t0 -- the stored one, not its
own -- and writes in one of three ways:
  (a) a first attempt at slot t0 + 1 without a scan, by a writer whose cached tail is t0
      (usually the one that has just created the claim). If some other writer had already
      stored m at slot X, then X > t0, and because there is no gap slot t0 + 1 exists too
      (X = t0 + 1 or X was written after it); the conditional put fails. So (a) succeeds only
      if m is stored nowhere yet.
  (b) a strongly consistent query of slots (s, T] where s is the end of what the writer has
      already seen from t0 on (t0 itself at first, then the end of its previous scan or of
      the slots it knew in (c)), checked to be contiguous (all slots s+1..T seen; a slot not
      seen stops the scan there, so T is the last contiguous one). Slots are immutable, so
      slots seen before need no re-reading: all of (t0, T] have been seen. If m is among them
      the writer returns that stored message. Otherwise it puts at T + 1.
  (c) like (b), with slots this process has already seen in place of a query: a process
      remembers, per room, the newest run of contiguous slots whose messageIds it saw (its
      own successful puts and its scans; slots are immutable, so that is their final
      content). If those cover (t0, T] where T is its cached tail and m is not among them,
      it puts at T + 1 without a query; if m is among them, it scans as in (b). (a) is the
      case T = t0. This is what lets a room's queued commands make their claims while an
      earlier one is placed: their t0 is then older than the tail, by slots this process
      wrote itself.
Suppose m ended up in two slots X < Y. The writer of Y stored it by (a), (b) or (c). Under
(a) slot Y = t0 + 1 <= X, impossible. Under (b) or (c) it saw every slot in (t0, Y - 1],
which contains X (t0 < X < Y), with its final content m, so it would have returned (or
scanned) instead of writing. Contradiction. Redeliveries, concurrent replicas and crashes
only add writers of the same kind, so the argument covers them; the claim's hash check turns
a reused messageId with other content into `conflict`.

Progress: a failed put at T + 1 means slot T + 1 now exists, so the next scan sees a longer
prefix; each loop iteration is due to some other writer's success.

Round trips (measured by `WriterStats` and the `history_store_round_trips_per_message`
histogram): a new message with a warm tail cache costs 2 (claim put + message put), also when
its claim was made ahead; the first message of a room in a process adds one tail read (3). A
stale cache (another replica wrote meanwhile) adds a failed put + one scan per lost race (4).
A retry of a stored message costs 3 (failed claim put, claim read, scan from t0), or 4 when
its t0 is this process's cached tail (a put at t0 + 1 that fails first).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass, field

from prometheus_client import Counter, Histogram

from contracts.bus import (
    CommandRejected,
    CreateMessageCommand,
    HistoryRangeQuery,
    HistoryRangeReply,
    MessageCreated,
    RoomCreated,
    RoomRange,
)
from contracts.common import is_identifier
from contracts.errors import ChatError, ErrorCode, ErrorDetail
from history_service.adapters.publisher import EventPublisher
from history_service.adapters.rooms import RoomDirectory
from history_service.adapters.store import MessageStore
from history_service.domain import (
    BoundedCache,
    Claim,
    Direction,
    Page,
    PageRequest,
    RoomMeta,
    StoreOutcome,
    Unavailable,
    check_command,
    claim_hash,
    make_page,
    message_of,
    same_message,
)
from infra.metrics import labelled

log = logging.getLogger(__name__)

ROUND_TRIPS = Counter("history_store_round_trips_total", "Store round trips made to store messages")
MESSAGES = Counter("history_messages_total", "create_message commands applied", ["outcome"])
TRIPS_PER_MESSAGE = Histogram(
    "history_store_round_trips_per_message",
    "Store round trips needed to store one message (seq assignment)",
    buckets=(1, 2, 3, 4, 5, 6, 8, 10, 15, 20, 50),
)

MAX_WRITE_ATTEMPTS = 10_000  # lost races in a row before giving up (nak, retried later)


@dataclass
class WriterStats:
    """Per-writer counts (the Prometheus metrics aggregate them per process)."""

    messages: int = 0
    duplicates: int = 0
    round_trips: int = 0
    lost_races: int = 0
    per_message: list[int] = field(default_factory=list)

    def record(self, outcome: StoreOutcome) -> None:
        self.messages += 1
        self.duplicates += int(outcome.duplicate)
        self.round_trips += outcome.round_trips
        if len(self.per_message) < 10_000:
            self.per_message.append(outcome.round_trips)


@dataclass(frozen=True)
class Claimed:
    """The claim step's result: the claim's t0 (the stored one when the claim existed), the
    store round trips it took, and whether the messageId is taken by other content (told, and
    counted, by `place` at the command's turn: a claim made ahead may be sent back with its
    room's queue and made again)."""

    t0: int
    round_trips: int
    conflict: bool = False


# Per room, the newest slots whose messageIds this process has seen: twice the look-ahead, so
# a claim made 16 commands ahead is still covered with as many other writers' slots between.
# At most about 15 MB (4,096 rooms x 32 ids of 36 characters); a room without a window just
# scans (case (b)), so the bounds cost round trips, never correctness.
KNOWN_SLOTS = 32
KNOWN_ROOMS = 4_096


@dataclass
class _Known:
    """Slots (end - len(ids), end] of a room, seen with their final content (they are
    immutable), oldest first."""

    end: int
    ids: deque[str] = field(default_factory=lambda: deque(maxlen=KNOWN_SLOTS))

    def covers(self, t0: int, tail: int) -> bool:
        return self.end == tail and self.end - len(self.ids) <= t0 <= tail

    def since(self, t0: int) -> list[str]:
        count = self.end - t0
        return list(self.ids)[len(self.ids) - count :] if count else []


class MessageWriter:
    """Stores a message exactly once at the next gap-free seq of its room (see module doc).

    `store` is `claim` then `place`. The two halves are apart so that a room's queued commands
    can make their claims while an earlier command of the room is being placed (the consumer
    does that); `place` calls of one room are made one after the other.
    """

    def __init__(self, store: MessageStore, tail_cache_size: int = 100_000) -> None:
        self._store = store
        self._tails: BoundedCache[str, int] = BoundedCache(tail_cache_size)
        self._known: BoundedCache[str, _Known] = BoundedCache(min(tail_cache_size, KNOWN_ROOMS))
        self.stats = WriterStats()

    def cached_tail(self, room_id: str) -> int:
        return self._tails.get(room_id) or 0

    def _saw(self, room_id: str, seq: int) -> None:
        """Remember that slot `seq` exists (a room's cached tail only grows while cached; an
        evicted room starts again from a tail read: invariant T either way)."""
        if seq > self.cached_tail(room_id):
            self._tails.put(room_id, seq)

    def _saw_message(self, room_id: str, seq: int, message_id: str) -> None:
        """Remember that slot `seq` exists and holds `message_id` (for good: slots are
        immutable). Slots are remembered only as a contiguous run ending at the newest."""
        known = self._known.get(room_id)
        if known is not None and seq == known.end + 1:
            known.ids.append(message_id)
            known.end = seq
        elif known is None or seq > known.end:
            fresh = _Known(seq)
            fresh.ids.append(message_id)
            self._known.put(room_id, fresh)
        self._saw(room_id, seq)

    def _seen_since(self, room_id: str, t0: int, tail: int) -> list[str] | None:
        """The messageIds of slots (t0, tail] when this process has seen them all, else None."""
        if tail == t0:
            return []
        known = self._known.get(room_id)
        return known.since(t0) if known is not None and known.covers(t0, tail) else None

    async def store(self, command: CreateMessageCommand) -> StoreOutcome:
        """Store the command's message (or find it stored); ChatError `conflict` if the
        messageId is taken by other content; Unavailable if the store does not answer."""
        return await self.place(command, await self.claim(command))

    async def claim(self, command: CreateMessageCommand) -> Claimed:
        """Create the claim of the command's messageId, or find it (same content: a retry;
        other content: a conflict, raised by `place`)."""
        room, message_id = command.roomId, command.messageId
        digest = claim_hash(command.userId, command.content)
        trips = 0
        cached = self._tails.get(room)
        if cached is None:
            # First message of this room in this process: read the tail, so that the claim's
            # t0 is recent (a retry scans only from t0) and the first put usually wins.
            trips += 1
            cached = await self._store.tail(room)
            self._saw(room, cached)
        trips += 1
        if await self._store.put_claim(Claim(room, message_id, digest, cached)):
            return Claimed(cached, trips)
        trips += 1
        claim = await self._store.get_claim(room, message_id)
        if claim is None:  # claims are never deleted: only a broken store does this
            raise Unavailable("claim exists but cannot be read")
        same = same_message(claim.hash, command.userId, command.content, command.createdAt)
        return Claimed(claim.t0, trips, conflict=not same)

    async def place(self, command: CreateMessageCommand, claimed: Claimed) -> StoreOutcome:
        """Put the claimed message at the room's next seq, or find it already stored;
        ChatError `conflict` if the claim found the messageId taken by other content."""
        room, message_id = command.roomId, command.messageId
        trips = claimed.round_trips
        if claimed.conflict:
            ROUND_TRIPS.inc(trips)
            labelled(MESSAGES, "conflict").inc()
            taken = f"messageId {message_id} is already used by another message"
            raise ChatError(ErrorCode.CONFLICT, taken, 409)
        t0 = claimed.t0
        scanned = t0
        tail = self.cached_tail(room)
        seen = self._seen_since(room, t0, tail)
        if seen is not None and message_id not in seen:
            # (a) and (c): every slot of (t0, tail] is known, and none holds m.
            trips += 1
            message = message_of(command, tail + 1)
            if await self._store.put_message(message):
                self._saw_message(room, message.seq, message_id)
                return self._finish(StoreOutcome(message, False, trips))
            self.stats.lost_races += 1
            scanned = tail
        # (b) scan (s, T] contiguously, return m if seen, else put at T + 1; repeat on a race.
        for _ in range(MAX_WRITE_ATTEMPTS):
            rows = await self._store.messages_after(room, scanned)
            trips += rows.round_trips
            expected = scanned + 1
            for stored in rows.messages:
                if stored.seq != expected:
                    break  # not contiguous (should not happen): stop at the last seen slot
                self._saw_message(room, stored.seq, stored.messageId)
                if stored.messageId == message_id:
                    return self._finish(StoreOutcome(stored, True, trips))
                expected += 1
            scanned = expected - 1
            self._saw(room, scanned)
            trips += 1
            message = message_of(command, scanned + 1)
            if await self._store.put_message(message):
                self._saw_message(room, message.seq, message_id)
                return self._finish(StoreOutcome(message, False, trips))
            self.stats.lost_races += 1
        ROUND_TRIPS.inc(trips)
        raise Unavailable(f"room {room}: too many lost races")

    def _finish(self, outcome: StoreOutcome) -> StoreOutcome:
        self.stats.record(outcome)
        ROUND_TRIPS.inc(outcome.round_trips)
        TRIPS_PER_MESSAGE.observe(outcome.round_trips)
        labelled(MESSAGES, "duplicate" if outcome.duplicate else "stored").inc()
        return outcome


class RoomAccess:
    """The rooms read model: cache -> table -> ask rooms (and remember the answer).

    Rooms never change their participants, so a known room is cached for good; an unknown one
    is never cached (it may be created a moment later).
    """

    def __init__(self, store: MessageStore, directory: RoomDirectory, cache_size: int) -> None:
        self._store = store
        self._directory = directory
        self._cache: BoundedCache[str, RoomMeta] = BoundedCache(cache_size)

    async def room(self, room_id: str) -> RoomMeta | None:
        """The room, or None when its owner says it does not exist (Unavailable: no answer)."""
        cached = self._cache.get(room_id)
        if cached is not None:
            return cached
        meta = await self._store.get_room(room_id)
        if meta is None:
            meta = await self._directory.get_room(room_id)
            if meta is None:
                return None
            await self._store.put_room(meta)
        self._cache.put(room_id, meta)
        return meta

    async def record(self, meta: RoomMeta) -> None:
        await self._store.put_room(meta)
        self._cache.put(meta.room_id, meta)


@dataclass(frozen=True)
class Applied:
    """A command's effect: the stored message (duplicate: it was stored before)."""

    outcome: StoreOutcome


@dataclass(frozen=True)
class Refused:
    """A command refused for good (it is acknowledged; the origin node is told)."""

    rejection: CommandRejected | None
    error: ErrorDetail


class CreateMessageHandler:
    """create_message: check, authorize, store exactly once, announce."""

    def __init__(self, writer: MessageWriter, rooms: RoomAccess, publisher: EventPublisher) -> None:
        self.writer = writer
        self.rooms = rooms
        self.publisher = publisher

    async def prepare(self, command: CreateMessageCommand) -> Claimed:
        """Check, authorize and claim: what may run ahead of the room's earlier commands.
        A refusal is a ChatError here and is told only by `handle`, in the room's order."""
        check_command(command)
        room = await self.rooms.room(command.roomId)
        if room is None:
            raise ChatError(ErrorCode.UNKNOWN_ROOM, f"unknown room {command.roomId}", 404)
        if not room.has(command.userId):
            raise ChatError(ErrorCode.NOT_PARTICIPANT, "sender is not a participant", 403)
        return await self.writer.claim(command)

    async def handle(
        self, command: CreateMessageCommand, prepared: asyncio.Future[Claimed] | None = None
    ) -> Applied | Refused:
        """Apply one command (`prepared`: its `prepare`, already started). Unavailable
        propagates: the caller retries later (nak)."""
        try:
            claimed = await self._prepared(command, prepared)
            outcome = await self.writer.place(command, claimed)
        except ChatError as exc:
            return await self._refuse(command, exc)
        event = MessageCreated(
            message=outcome.message, origin=command.origin, correlationId=command.correlationId
        )
        await self.publisher.message_created(event, also_to_node=outcome.duplicate)
        return Applied(outcome)

    async def _prepared(
        self, command: CreateMessageCommand, prepared: asyncio.Future[Claimed] | None
    ) -> Claimed:
        if prepared is None:
            return await self.prepare(command)
        finished = prepared.done() and not prepared.cancelled()
        if finished and isinstance(prepared.exception(), Unavailable):
            # made ahead, it met an outage that may be over by its turn: once more now (a claim
            # is idempotent: a retry finds its own claim and goes on from its t0). One that
            # fails while its command waits for it meets a current outage: that propagates.
            return await self.prepare(command)
        return await prepared

    async def _refuse(self, command: CreateMessageCommand, exc: ChatError) -> Refused:
        error = ErrorDetail(code=str(exc.code), message=exc.message)
        rejection = None
        if command.origin is not None and command.origin.node:
            rejection = CommandRejected(
                origin=command.origin,
                error=error,
                roomId=command.roomId,
                messageId=command.messageId,
                correlationId=command.correlationId,
            )
            await self.publisher.rejected(rejection)
        log.info(
            "create_message refused: %s",
            error.code,
            extra={"room_id": command.roomId, "user_id": command.userId},
        )
        return Refused(rejection, error)


async def apply_room_created(rooms: RoomAccess, event: RoomCreated) -> None:
    """RoomCreated -> the read model (idempotent)."""
    room = event.room
    await rooms.record(RoomMeta(room.id, tuple(p.id for p in room.participants), room.createdAt))


async def list_messages(
    store: MessageStore, rooms: RoomAccess, user_id: str, room_id: str, page: PageRequest
) -> Page:
    """`GET /rooms/{id}/messages`: one page for a participant (404 unknown, 403 not in it)."""
    if not is_identifier(room_id):  # not echoed: it may hold anything a URL can
        raise ChatError(ErrorCode.UNKNOWN_ROOM, "unknown room", 404)
    room = await rooms.room(room_id)
    if room is None:
        raise ChatError(ErrorCode.UNKNOWN_ROOM, f"unknown room {room_id}", 404)
    if not room.has(user_id):
        raise ChatError(ErrorCode.NOT_PARTICIPANT, "you are not a participant of this room", 403)
    if page.direction is Direction.NEWER:
        after = page.cursor or 0
        rows = (await store.messages_after(room_id, after, limit=page.fetch)).messages
    else:
        rows = await store.messages_before(room_id, page.cursor, page.fetch)
    return make_page(page, rows)


RANGE_CONCURRENCY = 32


async def history_range(store: MessageStore, query: HistoryRangeQuery) -> HistoryRangeReply:
    """Messages after a seq per room (at most `limit`, oldest first) and each room's latest."""
    gate = asyncio.Semaphore(RANGE_CONCURRENCY)
    up_to = query.upTo or {}

    async def one(room_id: str, after: int | None) -> RoomRange:
        async with gate:
            if after is None:
                return RoomRange(messages=[], latest=await store.tail(room_id))
            bound = up_to.get(room_id)
            rows = await store.messages_after(
                room_id, max(after, 0), limit=query.limit + 1, up_to=bound
            )
            messages = rows.messages[: query.limit]
            truncated = len(rows.messages) > query.limit
            if messages and not truncated and bound is None:
                latest = messages[-1].seq
            else:
                latest = await store.tail(room_id)
            return RoomRange(messages=messages, latest=latest, truncated=truncated)

    names = list(query.rooms)
    results = await asyncio.gather(*(one(r, query.rooms[r]) for r in names))
    return HistoryRangeReply(rooms=dict(zip(names, results, strict=True)))
