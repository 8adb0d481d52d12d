"""The command consumer's per-room queues without NATS (stand-in messages that record their
ack or nak): stream order, claims made ahead, and what a failure sends back."""

from __future__ import annotations

import asyncio
import gc
import random
import types
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import REGISTRY

from contracts.bus import CreateMessageCommand, Origin
from history_service.adapters.fakes import (
    FakeRoomDirectory,
    InMemoryMessageStore,
    RecordingPublisher,
)
from history_service.domain import Claim, RoomMeta, Unavailable
from history_service.entrypoints.bus import CreateMessageConsumer, PullOptions
from history_service.handlers import CreateMessageHandler, MessageWriter, RoomAccess

ROOMS = ("r1", "r2", "r3")
Log = list[tuple[str, str, str]]


class StandInMsg:
    """What the consumer uses of a JetStream message; records acks and naks in one log."""

    def __init__(self, command: CreateMessageCommand, log: Log) -> None:
        self.data = command.model_dump_json().encode()
        self.subject = f"chat.cmd.create_message.{command.roomId}"
        self.headers = None
        self.command = command
        self.log = log
        self.on_nak: Callable[[], Awaitable[None]] | None = None

    async def ack(self) -> None:
        self.log.append(("ack", self.command.roomId, self.command.messageId))

    async def nak(self, delay: float = 0) -> None:
        self.log.append(("nak", self.command.roomId, self.command.messageId))
        if self.on_nak is not None:
            await self.on_nak()

    async def term(self) -> None:
        self.log.append(("term", self.command.roomId, self.command.messageId))

    async def in_progress(self) -> None:
        self.log.append(("wip", self.command.roomId, self.command.messageId))


def command(room: str, message_id: str, content: str = "hi") -> CreateMessageCommand:
    return CreateMessageCommand(
        userId="alice",
        roomId=room,
        messageId=message_id,
        content=content,
        createdAt="2024-06-16T12:34:56.789Z",
        origin=Origin(node="n", conn="c", requestId="q"),
    )


def build(
    store: InMemoryMessageStore, max_in_flight: int = 2048, ack_wait: float = 5.0
) -> tuple[CreateMessageConsumer, RecordingPublisher]:
    for room in ROOMS:
        store.rooms[room] = RoomMeta(room, ("alice",), "2024-06-16T12:36:00.000Z")
    publisher = RecordingPublisher()
    handler = CreateMessageHandler(
        MessageWriter(store), RoomAccess(store, FakeRoomDirectory(), 10), publisher
    )
    js: Any = types.SimpleNamespace(consumer_info=None)  # the pull loop is not started here
    consumer = CreateMessageConsumer(
        None,  # type: ignore[arg-type]
        js,
        handler,
        publisher,  # type: ignore[arg-type]
        PullOptions(ack_wait=ack_wait, nak_delay=0),
        max_in_flight,
    )
    return consumer, publisher


async def feed(consumer: CreateMessageConsumer, commands: list[CreateMessageCommand]) -> Log:
    log: Log = []
    for one in commands:
        await consumer.accept(StandInMsg(one, log))  # type: ignore[arg-type]
    await consumer.drain()
    return log


def slots_free(consumer: CreateMessageConsumer) -> int:
    return consumer._slots._value  # the in-flight bound's own count


def put_held_until(release: asyncio.Event, message_id: str) -> Callable[..., Awaitable[None]]:
    """A store hook that holds the put of `message_id` until `release` is set."""

    async def hook(op: str, args: tuple[object, ...]) -> None:
        first = args[0] if args else None
        if op == "put_message" and getattr(first, "messageId", None) == message_id:
            await release.wait()

    return hook


async def test_rooms_keep_their_order_with_claims_made_ahead() -> None:
    """Three rooms' commands interleaved, the store answering in random order: each room's
    messages are stored, announced and acked in stream order, with no scan."""
    store = InMemoryMessageStore()
    rng = random.Random(1)

    async def jitter(_: str, __: tuple[object, ...]) -> None:
        for _turn in range(rng.randint(0, 5)):
            await asyncio.sleep(0)

    store.hook = jitter
    consumer, publisher = build(store, max_in_flight=40)
    sent = [command(room, f"{room}m{i}") for i in range(60) for room in ROOMS]
    log = await feed(consumer, sent)
    for room in ROOMS:
        expected = [f"{room}m{i}" for i in range(60)]
        created = [e.message for e, _ in publisher.created if e.message.roomId == room]
        assert [m.messageId for m in created] == expected
        assert [m.seq for m in created] == list(range(1, 61))
        assert [(kind, mid) for kind, r, mid in log if r == room] == [("ack", m) for m in expected]
    assert slots_free(consumer) == 40
    assert store.calls["messages_after"] == 0


async def test_a_claim_that_failed_ahead_is_made_again_at_its_turn() -> None:
    """The store fails for a moment while the room's first command is claimed: the claims
    made ahead at that moment fail, and each is made again at its turn (nothing is sent back
    for an outage that is over)."""
    store = InMemoryMessageStore()
    blip = False

    async def hook(op: str, args: tuple[object, ...]) -> None:
        nonlocal blip
        claim = args[0] if args else None
        if op != "put_claim" or not isinstance(claim, Claim):
            return
        if claim.message_id == "m0":
            blip = True
            for _turn in range(5):
                await asyncio.sleep(0)
            blip = False
        elif blip:
            raise Unavailable("a moment's outage")

    store.hook = hook
    consumer, _ = build(store)
    log = await feed(consumer, [command("r1", f"m{i}") for i in range(10)])
    assert [kind for kind, _, _ in log] == ["ack"] * 10
    assert [m.messageId for m in store.messages["r1"].values()] == [f"m{i}" for i in range(10)]
    assert slots_free(consumer) == 2048


async def test_a_reused_message_id_keeps_the_first_content_in_the_stream() -> None:
    """Two messages with one messageId in one room's queue (A, then B): A is stored and B is
    the conflict, whichever claim the store would have answered first."""
    store = InMemoryMessageStore()
    delayed = False

    async def slow_first_claim(op: str, args: tuple[object, ...]) -> None:
        nonlocal delayed
        claim = args[0] if args else None
        first_dup = isinstance(claim, Claim) and claim.message_id == "dup" and not delayed
        if op == "put_claim" and first_dup:
            delayed = True
            for _turn in range(3):
                await asyncio.sleep(0)

    store.hook = slow_first_claim
    consumer, publisher = build(store)
    sent = [command("r1", "m0"), command("r1", "dup", "A"), command("r1", "dup", "B")]
    log = await feed(consumer, sent)
    stored = [m.content for m in store.messages["r1"].values() if m.messageId == "dup"]
    assert stored == ["A"]
    assert [r.error.code for r in publisher.rejections] == ["conflict"]
    assert [kind for kind, _, _ in log] == ["ack", "ack", "ack"]  # a refusal is acked too


async def test_a_failing_room_sends_its_commands_back_in_order() -> None:
    """The store down: the room's first command and every one queued behind it are naked in
    stream order, the in-flight bound is whole again, and no task is left with an error
    nobody read."""
    store = InMemoryMessageStore()
    errors: list[object] = []
    loop = asyncio.get_running_loop()
    old_handler = loop.get_exception_handler()
    loop.set_exception_handler(
        lambda _, context: (
            errors.append(context) if isinstance(context.get("exception"), Unavailable) else None
        )
    )
    try:

        async def down(op: str, _: tuple[object, ...]) -> None:
            if op in ("put_message", "put_claim"):
                raise Unavailable("down")

        store.hook = down
        consumer, _ = build(store, max_in_flight=50)
        log = await feed(consumer, [command("r1", f"m{i}") for i in range(30)])
        assert log == [("nak", "r1", f"m{i}") for i in range(30)]
        assert slots_free(consumer) == 50
        for _turn in range(5):  # the claims made ahead finish on their own
            await asyncio.sleep(0)
        gc.collect()
        assert errors == []
    finally:
        loop.set_exception_handler(old_handler)


async def test_a_reused_message_id_arriving_while_the_first_is_claimed() -> None:
    """A command being claimed at its turn, alone in its room, and another with its messageId
    and other content arriving meanwhile: the first keeps the messageId."""
    store = InMemoryMessageStore()
    first_claim_out = asyncio.Event()
    let_it_land = asyncio.Event()

    async def hold_the_first_claim(op: str, args: tuple[object, ...]) -> None:
        claim = args[0] if args else None
        if op == "put_claim" and isinstance(claim, Claim) and not first_claim_out.is_set():
            first_claim_out.set()
            await let_it_land.wait()

    store.hook = hold_the_first_claim
    consumer, publisher = build(store)
    log: Log = []
    await consumer.accept(StandInMsg(command("r1", "dup", "A"), log))  # type: ignore[arg-type]
    await asyncio.wait_for(first_claim_out.wait(), 5)
    await consumer.accept(StandInMsg(command("r1", "dup", "B"), log))  # type: ignore[arg-type]
    for _turn in range(5):  # a claim made ahead for B would be out by now
        await asyncio.sleep(0)
    let_it_land.set()
    await consumer.drain()
    assert [m.content for m in store.messages["r1"].values()] == ["A"]
    assert [r.error.code for r in publisher.rejections] == ["conflict"]


async def test_nothing_is_claimed_for_a_room_while_its_queue_is_sent_back() -> None:
    """A command arriving while a failing room's queue is being naked is naked too, and no
    claim is made for it."""
    store = InMemoryMessageStore()

    async def puts_fail(op: str, _: tuple[object, ...]) -> None:
        if op == "put_message":
            raise Unavailable("down")

    store.hook = puts_fail
    consumer, _ = build(store)
    log: Log = []
    first = StandInMsg(command("r1", "m0"), log)

    async def another_arrives() -> None:
        first.on_nak = None
        late = StandInMsg(command("r1", "late"), log)
        await consumer.accept(late)  # type: ignore[arg-type]

    first.on_nak = another_arrives
    await consumer.accept(first)  # type: ignore[arg-type]
    for number in (1, 2):
        await consumer.accept(StandInMsg(command("r1", f"m{number}"), log))  # type: ignore[arg-type]
    await consumer.drain()
    assert log == [("nak", "r1", m) for m in ("m0", "m1", "m2", "late")]
    assert ("r1", "late") not in store.claims
    assert slots_free(consumer) == 2048


async def test_a_claim_failing_while_its_command_waits_for_it_is_not_made_twice() -> None:
    """The store failing now (a claim made ahead fails while its command already waits for
    it): the command goes back at once, its claim not tried again."""
    store = InMemoryMessageStore()
    tries: list[str] = []

    async def slow_then_down(op: str, args: tuple[object, ...]) -> None:
        claim = args[0] if args else None
        if op == "put_claim" and isinstance(claim, Claim):
            tries.append(claim.message_id)
            for _turn in range(10):
                await asyncio.sleep(0)
            raise Unavailable("down")

    store.hook = slow_then_down
    consumer, _ = build(store)
    log = await feed(consumer, [command("r1", f"m{i}") for i in range(3)])
    assert log == [("nak", "r1", f"m{i}") for i in range(3)]
    assert tries.count("m0") == 1


async def test_a_conflict_sent_back_with_its_room_is_counted_once() -> None:
    """A conflicting command claimed ahead, then sent back with its room's queue and delivered
    again: it is refused once and counted once (when it is told, at its turn)."""
    store = InMemoryMessageStore()
    consumer, publisher = build(store)
    await feed(consumer, [command("r1", "dup", "A")])
    down = True

    async def puts_fail_late(op: str, _: tuple[object, ...]) -> None:
        if op == "put_message" and down:
            for _turn in range(10):  # the claim made ahead for the next command lands first
                await asyncio.sleep(0)
            raise Unavailable("down")

    store.hook = puts_fail_late
    before = conflicts_counted()
    sent = [command("r1", "m1"), command("r1", "dup", "B")]
    assert await feed(consumer, sent) == [("nak", "r1", "m1"), ("nak", "r1", "dup")]
    assert publisher.rejections == []
    down = False
    assert await feed(consumer, sent) == [("ack", "r1", "m1"), ("ack", "r1", "dup")]
    assert [r.error.code for r in publisher.rejections] == ["conflict"]
    assert conflicts_counted() - before == 1
    assert [m.content for m in store.messages["r1"].values()] == ["A", "hi"]


def conflicts_counted() -> float:
    return REGISTRY.get_sample_value("history_messages_total", {"outcome": "conflict"}) or 0.0


async def test_commands_held_long_are_reported_in_progress() -> None:
    """A command held past half of ack_wait (its put slow, and the one queued behind it) is
    reported in progress until it is acked; one handled at once never is, and nothing is
    reported once the queue is empty."""
    store = InMemoryMessageStore()
    release = asyncio.Event()
    store.hook = put_held_until(release, "slow")
    consumer, _ = build(store, ack_wait=0.2)
    log: Log = []
    await consumer.accept(StandInMsg(command("r2", "quick"), log))  # type: ignore[arg-type]
    await consumer.accept(StandInMsg(command("r1", "slow"), log))  # type: ignore[arg-type]
    await consumer.accept(StandInMsg(command("r1", "behind"), log))  # type: ignore[arg-type]
    await asyncio.sleep(0.6)  # three times ack_wait
    release.set()
    await consumer.drain()
    wip = [mid for kind, _, mid in log if kind == "wip"]
    assert wip.count("slow") >= 2
    assert wip.count("behind") >= 2
    assert "quick" not in wip
    acks = [mid for kind, _, mid in log if kind == "ack"]
    assert acks == ["quick", "slow", "behind"]
    last_ack = max(i for i, (kind, _, _) in enumerate(log) if kind == "ack")
    assert all(kind != "wip" for kind, _, _ in log[last_ack:])
    assert consumer._held == {}


async def test_a_command_waiting_for_a_slot_is_kept_alive_too() -> None:
    """With every slot taken by a slow command, one that waits for a slot (other room) is
    reported in progress while it waits, then stored and acked."""
    store = InMemoryMessageStore()
    release = asyncio.Event()
    store.hook = put_held_until(release, "slow")
    consumer, _ = build(store, max_in_flight=1, ack_wait=0.2)
    log: Log = []
    await consumer.accept(StandInMsg(command("r1", "slow"), log))  # type: ignore[arg-type]
    waiting = asyncio.create_task(
        consumer.accept(StandInMsg(command("r2", "waiting"), log))  # type: ignore[arg-type]
    )
    await asyncio.sleep(0.6)
    assert not waiting.done()  # still waiting for the slot
    release.set()
    await waiting
    await consumer.drain()
    wip = [mid for kind, _, mid in log if kind == "wip"]
    assert wip.count("waiting") >= 2
    assert [mid for kind, _, mid in log if kind == "ack"] == ["slow", "waiting"]
    assert consumer._held == {}
