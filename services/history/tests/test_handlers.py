"""Handler-level tests with the in-memory fakes: exactly-once, gap-free seqs, rooms, queries."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from contracts.bus import CreateMessageCommand, HistoryRangeQuery, Origin, RoomCreated
from contracts.errors import ChatError, ErrorCode
from contracts.rest import Message, Room, RoomParticipant
from history_service import handlers
from history_service.adapters.fakes import (
    FakeRoomDirectory,
    Hook,
    InMemoryMessageStore,
    RecordingPublisher,
)
from history_service.domain import (
    BoundedCache,
    Claim,
    Direction,
    PageRequest,
    RoomMeta,
    Unavailable,
    legacy_claim_hash,
)
from history_service.handlers import (
    Applied,
    CreateMessageHandler,
    MessageWriter,
    Refused,
    RoomAccess,
    apply_room_created,
    history_range,
    list_messages,
)

ROOM = RoomMeta("r1", ("alice", "bob"), "2024-06-16T12:36:00.000Z")


class Crash(Exception):
    """A simulated process crash at a chosen step."""


def command(message_id: str, content: str = "hi", **changes: object) -> CreateMessageCommand:
    values: dict[str, object] = {
        "userId": "alice",
        "roomId": "r1",
        "messageId": message_id,
        "content": content,
        "createdAt": "2024-06-16T12:34:56.789Z",
        "origin": Origin(node="node-a", conn="c1", requestId="q1"),
    }
    values.update(changes)
    return CreateMessageCommand(**values)  # type: ignore[arg-type]


def build(
    store: InMemoryMessageStore | None = None,
) -> tuple[CreateMessageHandler, InMemoryMessageStore, RecordingPublisher, FakeRoomDirectory]:
    store = store or InMemoryMessageStore()
    store.rooms.setdefault(ROOM.room_id, ROOM)
    directory = FakeRoomDirectory()
    publisher = RecordingPublisher()
    handler = CreateMessageHandler(
        MessageWriter(store), RoomAccess(store, directory, 100), publisher
    )
    return handler, store, publisher, directory


async def random_turns(rng: random.Random, most: int) -> None:
    """Let other tasks run 0 to `most` times: a random interleaving, the same for a seed."""
    for _turn in range(rng.randint(0, most)):
        await asyncio.sleep(0)


def jitter(rng: random.Random, most: int) -> Hook:
    """A store hook that interleaves every store call at random."""

    async def hook(_: str, __: tuple[object, ...]) -> None:
        await random_turns(rng, most)

    return hook


def seqs_of(store: InMemoryMessageStore, room: str = "r1") -> list[int]:
    return sorted(store.messages.get(room, {}))


def assert_exactly_once(store: InMemoryMessageStore, ids: set[str], room: str = "r1") -> None:
    stored = store.messages.get(room, {})
    assert sorted(stored) == list(range(1, len(stored) + 1)), "seqs are not 1..n"
    stored_ids = [m.messageId for m in stored.values()]
    assert len(stored_ids) == len(set(stored_ids)), "a messageId is stored twice"
    assert set(stored_ids) == ids, "a message is missing"


async def test_seqs_are_one_to_n() -> None:
    """Messages of a room get seq 1, 2, ..., n in the order they are handled."""
    handler, store, publisher, _ = build()
    for i in range(10):
        result = await handler.handle(command(f"m{i}"))
        assert isinstance(result, Applied)
        assert result.outcome.message.seq == i + 1
    assert seqs_of(store) == list(range(1, 11))
    assert [e.message.seq for e, _ in publisher.created] == list(range(1, 11))
    assert all(not to_node for _, to_node in publisher.created)


async def test_round_trips_per_message() -> None:
    """Warm cache: 2 round trips; first in a room: 3; stale cache: 4; a retry: 3."""
    store = InMemoryMessageStore()
    handler, _, _, _ = build(store)
    other, _, _, _ = build(store)
    first = await handler.handle(command("m0"))
    assert isinstance(first, Applied)
    assert first.outcome.round_trips == 3  # tail read, claim, put
    for i in range(1, 6):
        result = await handler.handle(command(f"m{i}"))
        assert isinstance(result, Applied)
        assert result.outcome.round_trips == 2  # claim, put
    assert handler.writer.stats.per_message == [3, 2, 2, 2, 2, 2]
    await other.handle(command("elsewhere"))  # handler's cache is now stale
    stale = await handler.handle(command("m6"))
    assert isinstance(stale, Applied)
    assert stale.outcome.round_trips == 4  # claim, lost put, scan, put
    retry = await handler.handle(command("m6"))
    assert isinstance(retry, Applied)
    assert retry.outcome.duplicate
    assert retry.outcome.round_trips == 3  # claim refused, claim read, scan


async def test_retry_returns_the_stored_message() -> None:
    """The same messageId again stores nothing new and answers the stored message to the node."""
    handler, store, publisher, _ = build()
    first = await handler.handle(command("m1"))
    await handler.handle(command("m2"))
    again = await handler.handle(command("m1"))
    assert isinstance(first, Applied)
    assert isinstance(again, Applied)
    assert again.outcome.duplicate
    assert again.outcome.message == first.outcome.message
    assert seqs_of(store) == [1, 2]
    event, to_node = publisher.created[-1]
    assert to_node
    assert event.message.seq == 1
    assert event.origin is not None
    assert event.origin.node == "node-a"


async def test_other_content_is_a_conflict() -> None:
    """The same messageId with other content is refused with `conflict` on the origin node."""
    handler, store, publisher, _ = build()
    await handler.handle(command("m1"))
    result = await handler.handle(command("m1", content="something else"))
    assert isinstance(result, Refused)
    assert result.error.code == ErrorCode.CONFLICT
    assert publisher.rejections[-1].error.code == ErrorCode.CONFLICT
    assert publisher.rejections[-1].messageId == "m1"
    assert seqs_of(store) == [1]


async def test_other_sender_is_a_conflict() -> None:
    """The same messageId from another sender is a conflict too."""
    handler, _, _, _ = build()
    await handler.handle(command("m1"))
    result = await handler.handle(command("m1", userId="bob"))
    assert isinstance(result, Refused)
    assert result.error.code == ErrorCode.CONFLICT


async def test_resend_with_another_created_at_gets_the_stored_message() -> None:
    """The same messageId, sender and content with another createdAt is a resend: nothing new
    is stored and the stored message (its first createdAt) is answered, not a conflict."""
    handler, store, publisher, _ = build()
    first = await handler.handle(command("m1"))
    again = await handler.handle(command("m1", createdAt="2024-06-16T12:40:00.000Z"))
    assert isinstance(first, Applied)
    assert isinstance(again, Applied)
    assert again.outcome.duplicate
    assert again.outcome.message == first.outcome.message
    assert again.outcome.message.createdAt == "2024-06-16T12:34:56.789Z"
    assert publisher.rejections == []
    assert seqs_of(store) == [1]


async def test_a_claim_made_with_the_older_hash_is_still_recognised() -> None:
    """A message claimed (and stored) with the older hash, which had createdAt in it: its
    resend with the same createdAt is recognised, other content is still a conflict."""
    handler, store, _, _ = build()
    original = command("m1")
    stored = await handler.handle(original)
    assert isinstance(stored, Applied)
    claim = store.claims[("r1", "m1")]
    store.claims[("r1", "m1")] = Claim(
        "r1", "m1", legacy_claim_hash("alice", "hi", original.createdAt), claim.t0
    )
    fresh, _, _, _ = build(store)  # another process: nothing cached
    again = await fresh.handle(command("m1"))
    assert isinstance(again, Applied)
    assert again.outcome.duplicate
    assert again.outcome.message.seq == 1
    refused = await fresh.handle(command("m1", content="other"))
    assert isinstance(refused, Refused)
    assert refused.error.code == ErrorCode.CONFLICT


async def test_crash_between_claim_and_write_then_redelivery() -> None:
    """A crash after the claim and before the message write; the redelivery stores it once."""
    handler, store, _, _ = build()
    await handler.handle(command("m1"))
    crashed = False

    async def crash_once(op: str, _: tuple[object, ...]) -> None:
        nonlocal crashed
        if op == "put_message" and not crashed:
            crashed = True
            raise Crash

    store.hook = crash_once
    with pytest.raises(Crash):
        await handler.handle(command("m2"))
    store.hook = None
    assert ("r1", "m2") in store.claims
    # a fresh process (cold cache) gets the redelivery
    fresh, _, _, _ = build(store)
    result = await fresh.handle(command("m2"))
    assert isinstance(result, Applied)
    assert result.outcome.message.seq == 2
    assert_exactly_once(store, {"m1", "m2"})


async def test_crash_after_write_then_redelivery_republishes() -> None:
    """A crash after the write (before publish/ack): the redelivery republishes, stores nothing."""
    handler, store, publisher, _ = build()

    async def crash_after_put(op: str, args: tuple[object, ...]) -> None:
        if op == "messages_after":  # never reached on the fresh path
            raise AssertionError("unexpected scan")

    store.hook = crash_after_put
    original = store.put_message

    async def put_then_crash(message):  # type: ignore[no-untyped-def]
        await original(message)
        raise Crash

    store.put_message = put_then_crash  # type: ignore[method-assign]
    with pytest.raises(Crash):
        await handler.handle(command("m1"))
    store.put_message = original  # type: ignore[method-assign]
    store.hook = None
    assert publisher.created == []
    result = await handler.handle(command("m1"))
    assert isinstance(result, Applied)
    assert result.outcome.duplicate
    assert result.outcome.message.seq == 1
    assert len(publisher.created) == 1
    assert_exactly_once(store, {"m1"})


async def test_concurrent_writers_on_one_room() -> None:
    """Two handlers sharing a store, interleaved at random, give gap-free seqs, no duplicates."""
    store = InMemoryMessageStore()
    a, _, _, _ = build(store)
    b, _, _, _ = build(store)
    rng = random.Random(7)

    store.hook = jitter(rng, 3)
    ids = [f"m{i}" for i in range(60)]

    async def run(handler: CreateMessageHandler, mine: list[str]) -> None:
        for message_id in mine:
            await handler.handle(command(message_id))

    # every message is sent to both writers (as redeliveries to two replicas would do)
    shuffled = ids[:]
    rng.shuffle(shuffled)
    await asyncio.gather(run(a, ids), run(b, shuffled))
    assert_exactly_once(store, set(ids))
    assert a.writer.stats.lost_races + b.writer.stats.lost_races > 0


async def test_claims_made_ahead_are_placed_without_a_scan() -> None:
    """Claims made before the room's earlier messages are placed (the consumer's look-ahead):
    each message still costs one claim and one put, with no scan and no lost race."""
    handler, store, publisher, _ = build()
    await handler.handle(command("m0"))  # the tail is cached: 1
    commands = [command(f"m{i}") for i in range(1, 11)]
    claims = [asyncio.ensure_future(handler.prepare(c)) for c in commands]
    await asyncio.gather(*claims)  # every claim exists before any of these is placed
    assert {store.claims[("r1", c.messageId)].t0 for c in commands} == {1}
    for sent, claimed in zip(commands, claims, strict=True):
        result = await handler.handle(sent, claimed)
        assert isinstance(result, Applied)
        assert not result.outcome.duplicate
        assert result.outcome.round_trips == 2  # its claim, its put
    assert_exactly_once(store, {f"m{i}" for i in range(11)})
    assert [e.message.messageId for e, _ in publisher.created] == [f"m{i}" for i in range(11)]
    assert store.calls["messages_after"] == 0
    assert handler.writer.stats.lost_races == 0


async def test_a_claim_made_ahead_finds_its_message_stored() -> None:
    """A command and its redelivery, both claimed ahead: the second finds the first's slot
    among the slots it knows and returns the stored message."""
    handler, store, publisher, _ = build()
    await handler.handle(command("m0"))
    first = asyncio.ensure_future(handler.prepare(command("m1")))
    again = asyncio.ensure_future(handler.prepare(command("m1")))
    await asyncio.gather(first, again)
    stored = await handler.handle(command("m1"), first)
    repeated = await handler.handle(command("m1"), again)
    assert isinstance(stored, Applied)
    assert isinstance(repeated, Applied)
    assert repeated.outcome.duplicate
    assert repeated.outcome.message == stored.outcome.message
    assert publisher.created[-1][1]  # the duplicate is answered to its origin node too
    assert_exactly_once(store, {"m0", "m1"})


async def test_claims_made_ahead_with_another_writer_between() -> None:
    """Another process stores a message between this one's claims and puts: the first put
    loses, the scan reads that slot, and the next message goes after both without a scan."""
    store = InMemoryMessageStore()
    a, _, _, _ = build(store)
    b, _, _, _ = build(store)
    await a.handle(command("m0"))
    claims = [asyncio.ensure_future(a.prepare(command(m))) for m in ("m1", "m2")]
    await asyncio.gather(*claims)
    await b.handle(command("x"))  # slot 2
    r1 = await a.handle(command("m1"), claims[0])
    scans = store.calls["messages_after"]
    r2 = await a.handle(command("m2"), claims[1])
    assert isinstance(r1, Applied)
    assert isinstance(r2, Applied)
    assert r1.outcome.message.seq == 3
    assert r2.outcome.message.seq == 4
    assert r2.outcome.round_trips == 2
    assert store.calls["messages_after"] == scans
    assert_exactly_once(store, {"m0", "x", "m1", "m2"})


@pytest.mark.parametrize("seed", range(16))
async def test_concurrent_writers_claiming_ahead(seed: int) -> None:
    """Two processes that claim ahead in random batches, every message sent to both, at random
    interleavings (and a few redelivered within a batch): gap-free seqs, each message once."""
    store = InMemoryMessageStore()
    a, _, _, _ = build(store)
    b, _, _, _ = build(store)
    rng = random.Random(seed)

    store.hook = jitter(rng, 4)
    ids = [f"m{i}" for i in range(50)]

    async def run(handler: CreateMessageHandler, mine: list[str]) -> None:
        at = 0
        while at < len(mine):
            batch = mine[at : at + rng.randint(1, 8)]
            at += len(batch)
            if rng.random() < 0.3:
                batch.append(rng.choice(batch))  # a redelivery queued behind its original
            claims = [asyncio.ensure_future(handler.prepare(command(m))) for m in batch]
            for message_id, claimed in zip(batch, claims, strict=True):
                result = await handler.handle(command(message_id), claimed)
                assert isinstance(result, Applied)

    shuffled = ids[:]
    rng.shuffle(shuffled)
    await asyncio.gather(run(a, ids), run(b, shuffled))
    assert_exactly_once(store, set(ids))


async def test_forced_interleaving_same_message() -> None:
    """Writer B scans while writer A holds a fresh claim; whoever writes, m is stored once."""
    store = InMemoryMessageStore()
    a, _, _, _ = build(store)
    b, _, _, _ = build(store)
    await a.handle(command("m0"))  # a's cache: tail 1
    claimed = asyncio.Event()
    b_written = asyncio.Event()

    async def choreography(op: str, args: tuple[object, ...]) -> None:
        task = asyncio.current_task()
        name = task.get_name() if task else ""
        if name == "A" and op == "put_message":
            claimed.set()
            await b_written.wait()  # A tries its put only after B stored m
        if name == "B" and op == "get_claim":
            await claimed.wait()

    store.hook = choreography

    async def b_then_signal() -> None:
        await b.handle(command("m1"))
        b_written.set()

    result_a, _ = await asyncio.gather(
        asyncio.create_task(a.handle(command("m1")), name="A"),
        asyncio.create_task(b_then_signal(), name="B"),
    )
    assert_exactly_once(store, {"m0", "m1"})
    assert isinstance(result_a, Applied)
    assert result_a.outcome.duplicate  # A's fresh put lost and its scan found B's write
    assert result_a.outcome.message.seq == 2


async def test_stale_cache_is_safe() -> None:
    """A writer whose cached tail is far behind still writes at the real tail + 1."""
    store = InMemoryMessageStore()
    a, _, _, _ = build(store)
    b, _, _, _ = build(store)
    await a.handle(command("m0"))
    for i in range(1, 30):
        await b.handle(command(f"m{i}"))
    result = await a.handle(command("late"))
    assert isinstance(result, Applied)
    assert result.outcome.message.seq == 31
    assert_exactly_once(store, {f"m{i}" for i in range(30)} | {"late"})


async def test_store_down_propagates_unavailable() -> None:
    """A store outage is Unavailable (the command is retried), never a rejection."""
    handler, store, publisher, _ = build()
    store.down = True
    with pytest.raises(Unavailable):
        await handler.handle(command("m1"))
    assert publisher.rejections == []
    store.down = False
    assert isinstance(await handler.handle(command("m1")), Applied)


async def test_unknown_room_asks_rooms_first() -> None:
    """A room missing from the read model is asked of rooms; unknown there is `unknown_room`."""
    handler, store, publisher, directory = build()
    result = await handler.handle(command("m1", roomId="nope"))
    assert isinstance(result, Refused)
    assert result.error.code == ErrorCode.UNKNOWN_ROOM
    assert directory.asked == ["nope"]
    assert publisher.rejections[-1].origin.node == "node-a"
    directory.rooms["late"] = RoomMeta("late", ("alice",), "t")
    assert isinstance(await handler.handle(command("m1", roomId="late")), Applied)
    assert "late" in store.rooms


async def test_rooms_not_answering_is_unavailable() -> None:
    """When rooms does not answer, the command is postponed, not refused."""
    handler, _, publisher, directory = build()
    directory.down = True
    with pytest.raises(Unavailable):
        await handler.handle(command("m1", roomId="other"))
    assert publisher.rejections == []


async def test_not_participant_and_bad_time_are_refused() -> None:
    """A sender outside the room and a createdAt far ahead are refused with their codes."""
    handler, store, publisher, _ = build()
    outsider = await handler.handle(command("m1", userId="mallory"))
    assert isinstance(outsider, Refused)
    assert outsider.error.code == ErrorCode.NOT_PARTICIPANT
    future = await handler.handle(command("m2", createdAt="2999-01-01T00:00:00Z"))
    assert isinstance(future, Refused)
    assert future.error.code == ErrorCode.INVALID_CREATED_AT
    assert store.messages == {}
    assert len(publisher.rejections) == 2


async def test_rejection_without_origin_node_is_not_published() -> None:
    """A refused command without an origin node is only acknowledged."""
    handler, _, publisher, _ = build()
    result = await handler.handle(command("m1", userId="mallory", origin=None))
    assert isinstance(result, Refused)
    assert result.rejection is None
    assert publisher.rejections == []


async def test_room_created_feeds_the_read_model() -> None:
    """RoomCreated records the participants (twice is harmless)."""
    store = InMemoryMessageStore()
    rooms = RoomAccess(store, FakeRoomDirectory(), 10)
    event = RoomCreated(
        room=Room(
            id="r9",
            participants=[RoomParticipant(id="a", name="A"), RoomParticipant(id="b", name="B")],
            createdAt="2024-06-16T12:36:00.000Z",
        ),
        creatorId="a",
    )
    await apply_room_created(rooms, event)
    await apply_room_created(rooms, event)
    assert store.rooms["r9"].participants == ("a", "b")


async def test_history_range() -> None:
    """Range answers messages after a seq, truncated past the limit, and latest-only rooms."""
    handler, store, _, _ = build()
    for i in range(12):
        await handler.handle(command(f"m{i}"))
    reply = await history_range(
        store, HistoryRangeQuery(rooms={"r1": 3, "empty": 0, "latest": None}, limit=5)
    )
    r1 = reply.rooms["r1"]
    assert [m.seq for m in r1.messages] == [4, 5, 6, 7, 8]
    assert r1.truncated
    assert r1.latest == 12
    assert reply.rooms["empty"].latest == 0
    assert reply.rooms["empty"].messages == []
    assert not reply.rooms["empty"].truncated
    assert reply.rooms["latest"].messages == []
    whole = await history_range(store, HistoryRangeQuery(rooms={"r1": 10, "x": None}))
    assert [m.seq for m in whole.rooms["r1"].messages] == [11, 12]
    assert not whole.rooms["r1"].truncated
    bounded = await history_range(store, HistoryRangeQuery(rooms={"r1": 2}, upTo={"r1": 4}))
    assert [m.seq for m in bounded.rooms["r1"].messages] == [3, 4]
    assert bounded.rooms["r1"].latest == 12


async def test_list_messages_paging_and_access() -> None:
    """Paging over 120 messages, and 403/404 for outsiders and unknown rooms."""
    handler, store, _, _ = build()
    for i in range(120):
        await handler.handle(command(f"m{i}"))
    rooms = handler.rooms
    latest = await list_messages(store, rooms, "bob", "r1", PageRequest(50, Direction.OLDER, None))
    assert [m.seq for m in latest.messages] == list(range(71, 121))
    assert latest.next_cursor == ("before", 71)
    older = await list_messages(store, rooms, "bob", "r1", PageRequest(50, Direction.OLDER, 71))
    assert [m.seq for m in older.messages] == list(range(21, 71))
    oldest = await list_messages(store, rooms, "bob", "r1", PageRequest(50, Direction.OLDER, 21))
    assert [m.seq for m in oldest.messages] == list(range(1, 21))
    assert oldest.next_cursor is None
    newer = await list_messages(store, rooms, "bob", "r1", PageRequest(50, Direction.NEWER, 100))
    assert [m.seq for m in newer.messages] == list(range(101, 121))
    assert newer.next_cursor is None
    with pytest.raises(ChatError) as forbidden:
        await list_messages(store, rooms, "mallory", "r1", PageRequest(5, Direction.OLDER, None))
    assert forbidden.value.status == 403
    with pytest.raises(ChatError) as unknown:
        await list_messages(store, rooms, "bob", "zzz", PageRequest(5, Direction.OLDER, None))
    assert unknown.value.status == 404
    assert unknown.value.code == ErrorCode.UNKNOWN_ROOM


class AmbiguousStore(InMemoryMessageStore):
    """Sometimes answers a write with Unavailable after making it (a lost answer)."""

    def __init__(self, rng: random.Random, chance: float) -> None:
        super().__init__()
        self.rng = rng
        self.chance = chance

    async def put_claim(self, claim: Claim) -> bool:
        created = await super().put_claim(claim)
        if self.rng.random() < self.chance:
            raise Unavailable("the claim was written, its answer lost")
        return created

    async def put_message(self, message: Message) -> bool:
        stored = await super().put_message(message)
        if self.rng.random() < self.chance:
            raise Unavailable("the message was written, its answer lost")
        return stored


@pytest.mark.parametrize("seed", range(24))
async def test_three_writers_with_faults_and_evictions(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three processes on three rooms claim ahead in random batches with redeliveries of old
    messages; writes fail before or after their effect; each process's tail cache and slot
    window are evicted at random, apart from each other, and the window holds 3 slots: every
    message is stored once, seqs 1..n."""
    monkeypatch.setattr(handlers, "KNOWN_SLOTS", 3)
    rng = random.Random(seed)
    store = AmbiguousStore(rng, 0.03)
    rooms = ["r1", "r2", "r3"]
    for room in rooms:
        store.rooms[room] = RoomMeta(room, ("alice",), ROOM.created_at)
    writers = [MessageWriter(store, rng.choice([1, 2, 3, 100])) for _ in range(3)]
    processes = [
        CreateMessageHandler(w, RoomAccess(store, FakeRoomDirectory(), 100), RecordingPublisher())
        for w in writers
    ]

    async def chaos(_: str, __: tuple[object, ...]) -> None:
        await random_turns(rng, 3)
        if rng.random() < 0.08:
            writer = rng.choice(writers)
            caches: list[BoundedCache[str, Any]] = [writer._tails, writer._known]
            rng.choice(caches)._items.pop(rng.choice(rooms), None)
        if rng.random() < 0.03:
            raise Unavailable("the store did not answer")

    store.hook = chaos
    ids = {room: [f"{room}m{i}" for i in range(40)] for room in rooms}
    confirmed: set[str] = set()

    async def run(process: CreateMessageHandler) -> None:
        while len(confirmed) < 120:
            room = rng.choice(rooms)
            todo = [m for m in ids[room] if m not in confirmed]
            if not todo:
                await asyncio.sleep(0)
                continue
            batch = todo[: rng.randint(1, 10)]
            if rng.random() < 0.5:
                batch += rng.sample(ids[room], rng.randint(1, 3))  # redeliveries, old or not
            rng.shuffle(batch)
            made = [process.prepare(command(m, roomId=room)) for m in batch]
            claims = [asyncio.ensure_future(claim) for claim in made]
            for at, (message_id, claimed) in enumerate(zip(batch, claims, strict=True)):
                try:
                    result = await process.handle(command(message_id, roomId=room), claimed)
                except Unavailable:  # sent back: the rest of the batch with it
                    for later in claims[at + 1 :]:
                        await asyncio.wait([later])
                        if not later.cancelled():
                            later.exception()
                    break
                assert isinstance(result, Applied)
                confirmed.add(message_id)

    await asyncio.wait_for(asyncio.gather(*(run(p) for p in processes)), 60)
    for room in rooms:
        assert_exactly_once(store, set(ids[room]), room)
