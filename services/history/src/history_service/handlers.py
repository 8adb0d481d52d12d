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
own -- and writes in one of two ways:
  (a) the first attempt of the writer that created the claim, at slot t0 + 1 without a scan.
      If some other writer had already stored m at slot X, then X > t0, and because there is
      no gap slot t0 + 1 exists too (X = t0 + 1 or X was written after it); the conditional
      put fails. So (a) succeeds only if m is stored nowhere yet.
  (b) every other attempt: a strongly consistent query of slots (s, T] where s = t0 at first
      and then the end of the previous scan of this same loop, checked to be contiguous (all
      slots s+1..T seen; a slot not seen stops the scan there, so T is the last contiguous
      one). Slots are immutable, so slots seen in an earlier scan need no re-reading: all of
      (t0, T] have been seen. If m is among them the writer returns that stored message.
      Otherwise it puts at T + 1.
Suppose m ended up in two slots X < Y. The writer of Y stored it by (a) or (b). Under (a)
slot Y = t0 + 1 <= X, impossible. Under (b) it saw every slot in (t0, Y - 1], which
contains X (t0 < X < Y), with its final content m, so it would have returned instead of
writing. Contradiction. Redeliveries, concurrent replicas and crashes only add writers of the
same kind, so the argument covers them; the claim's hash check turns a reused messageId with
other content into `conflict`.

Progress: a failed put at T + 1 means slot T + 1 now exists, so the next scan sees a longer
prefix; each loop iteration is due to some other writer's success.

Round trips (measured by `WriterStats` and the `history_store_round_trips_per_message`
histogram): a new message with a warm tail cache costs 2 (claim put + message put); the first
message of a room in a process adds one tail read (3). A stale cache (another replica wrote
meanwhile) adds a failed put + one scan per lost race (4). A retry of a stored message costs 3
(failed claim put, claim read, scan from t0).
"""

from __future__ import annotations

import asyncio
import logging
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
    is_identifier,
    make_page,
    message_of,
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


class MessageWriter:
    """Stores a message exactly once at the next gap-free seq of its room (see module doc)."""

    def __init__(self, store: MessageStore, tail_cache_size: int = 100_000) -> None:
        self._store = store
        self._tails: BoundedCache[str, int] = BoundedCache(tail_cache_size)
        self.stats = WriterStats()

    def cached_tail(self, room_id: str) -> int:
        return self._tails.get(room_id) or 0

    def _saw(self, room_id: str, seq: int) -> None:
        """Remember that slot `seq` exists (the cache only grows: invariant T)."""
        if seq > self.cached_tail(room_id):
            self._tails.put(room_id, seq)

    async def store(self, command: CreateMessageCommand) -> StoreOutcome:
        """Store the command's message (or find it stored); ChatError `conflict` if the
        messageId is taken by other content; Unavailable if the store does not answer."""
        room, message_id = command.roomId, command.messageId
        digest = claim_hash(command.userId, command.content, command.createdAt)
        trips = 0

        cached = self._tails.get(room)
        if cached is None:
            # First message of this room in this process: read the tail, so that the claim's
            # t0 is recent (a retry scans only from t0) and the first put usually wins.
            trips += 1
            cached = await self._store.tail(room)
            self._saw(room, cached)
        t0 = cached
        trips += 1
        if await self._store.put_claim(Claim(room, message_id, digest, t0)):
            # (a) fresh claim: first attempt at t0 + 1 without a scan.
            trips += 1
            message = message_of(command, t0 + 1)
            if await self._store.put_message(message):
                self._saw(room, message.seq)
                return self._finish(StoreOutcome(message, False, trips))
            self.stats.lost_races += 1
        else:
            trips += 1
            claim = await self._store.get_claim(room, message_id)
            if claim is None:  # claims are never deleted: only a broken store does this
                raise Unavailable("claim exists but cannot be read")
            if claim.hash != digest:
                ROUND_TRIPS.inc(trips)
                labelled(MESSAGES, "conflict").inc()
                raise ChatError(
                    ErrorCode.CONFLICT,
                    f"messageId {message_id} is already used by another message",
                    409,
                )
            t0 = claim.t0
        # (b) scan (t0, T] contiguously, return m if seen, else put at T + 1; repeat on a race.
        scanned = t0
        for _ in range(MAX_WRITE_ATTEMPTS):
            rows = await self._store.messages_after(room, scanned)
            trips += rows.round_trips
            expected = scanned + 1
            for stored in rows.messages:
                if stored.seq != expected:
                    break  # not contiguous (should not happen): stop at the last seen slot
                if stored.messageId == message_id:
                    self._saw(room, stored.seq)
                    return self._finish(StoreOutcome(stored, True, trips))
                expected += 1
            scanned = expected - 1
            self._saw(room, scanned)
            trips += 1
            message = message_of(command, scanned + 1)
            if await self._store.put_message(message):
                self._saw(room, message.seq)
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

    async def handle(self, command: CreateMessageCommand) -> Applied | Refused:
        """Apply one command. Unavailable propagates: the caller retries later (nak)."""
        try:
            check_command(command)
            room = await self.rooms.room(command.roomId)
            if room is None:
                raise ChatError(ErrorCode.UNKNOWN_ROOM, f"unknown room {command.roomId}", 404)
            if not room.has(command.userId):
                raise ChatError(ErrorCode.NOT_PARTICIPANT, "sender is not a participant", 403)
            outcome = await self.writer.store(command)
        except ChatError as exc:
            return await self._refuse(command, exc)
        event = MessageCreated(
            message=outcome.message, origin=command.origin, correlationId=command.correlationId
        )
        await self.publisher.message_created(event, also_to_node=outcome.duplicate)
        return Applied(outcome)

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
