"""The command pipeline on real NATS: a command's ack leaves in the same write as its event,
after it (no PING/PONG per message), and falls back to a flush when the buffer was written."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator

import nats
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from contracts import subjects
from contracts.bus import CreateMessageCommand, MessageCreated, Origin
from contracts.rest import Message
from history_service.adapters.fakes import FakeRoomDirectory, InMemoryMessageStore
from history_service.adapters.publisher import NatsPublisher
from history_service.domain import RoomMeta, message_of
from history_service.entrypoints.bus import CreateMessageConsumer, PullOptions
from history_service.handlers import CreateMessageHandler, MessageWriter, RoomAccess
from mesh.testing import Infra, eventually

pytestmark = pytest.mark.integration

ROOM = RoomMeta("room_pipeline", ("alice", "bob"), "2024-06-16T12:36:00.000Z")


class WriteRecorder:
    """Every write nats-py makes to its socket, as (write number, operation, subject)."""

    def __init__(self, nc: NATS) -> None:
        self.writes: list[bytes] = []
        transport = nc._transport
        assert transport is not None
        write, writelines = transport.write, transport.writelines

        def record_write(data: bytes) -> None:
            self.writes.append(bytes(data))
            write(data)

        def record_writelines(lines: list[bytes]) -> None:
            self.writes.append(b"".join(lines))
            writelines(lines)

        transport.write = record_write  # type: ignore[method-assign]
        transport.writelines = record_writelines  # type: ignore[method-assign]

    def ops(self) -> Iterator[tuple[int, str, str]]:
        """Parse the protocol of each write: PUB/HPUB with their subjects, PING."""
        for number, data in enumerate(self.writes):
            at = 0
            while at < len(data):
                if data.startswith(b"PING\r\n", at):
                    yield number, "PING", ""
                    at += 6
                    continue
                end = data.index(b"\r\n", at)
                words = data[at:end].split()
                at = end + 2
                if words[0] in (b"PUB", b"HPUB"):  # subject [reply] [header size] total size
                    yield number, words[0].decode(), words[1].decode()
                    at += int(words[-1]) + 2
                # else SUB, UNSUB, CONNECT...: one line


@pytest.fixture(scope="module")
def bus(infra: Infra) -> Iterator[Infra]:
    """A private NATS with the streams provisioned (the durable consumer is this test's own)."""
    with infra.fork() as fork:
        yield fork


@pytest.fixture
async def nc(bus: Infra) -> AsyncIterator[NATS]:
    client = await nats.connect(bus.nats_url)
    try:
        yield client
    finally:
        await client.close()


def command(number: int) -> CreateMessageCommand:
    return CreateMessageCommand(
        userId="alice",
        roomId=ROOM.room_id,
        messageId=f"m{number:03d}",
        content=f"message {number}",
        createdAt="2024-06-16T12:34:56.789Z",
        origin=Origin(node="node-a", conn="c1", requestId=f"q{number}"),
    )


def real_consumer(
    nc: NATS, store: InMemoryMessageStore, batch: int, ack_wait: float = 5
) -> tuple[CreateMessageConsumer, NatsPublisher]:
    """history's command consumer on real NATS, over an in-memory store."""
    publisher = NatsPublisher(nc)
    handler = CreateMessageHandler(
        MessageWriter(store), RoomAccess(store, FakeRoomDirectory(), 10), publisher
    )
    options = PullOptions(batch=batch, ack_wait=ack_wait, nak_delay=0.2)
    js = nc.jetstream(timeout=10)
    return CreateMessageConsumer(nc, js, handler, publisher, options), publisher


async def announced(client: NATS, room_id: str) -> list[Message]:
    """The messages announced in a room from now on, as they arrive."""
    events: list[Message] = []

    async def on_event(msg: Msg) -> None:
        events.append(MessageCreated.model_validate_json(msg.data).message)

    await client.subscribe(subjects.message_created(room_id), cb=on_event)
    return events


async def test_each_ack_leaves_in_the_write_of_its_event(nc: NATS, bus: Infra) -> None:
    """Commands through JetStream to the real consumer: every MessageCreated and its command's
    ack share one socket write, the event first, and no PING is sent for them."""
    store = InMemoryMessageStore()
    store.rooms[ROOM.room_id] = ROOM
    consumer, publisher = real_consumer(nc, store, batch=8)
    js = nc.jetstream(timeout=10)
    recorder = WriteRecorder(nc)
    sender = await nats.connect(bus.nats_url)
    events: list[Message] = []

    async def on_event(msg: Msg) -> None:
        events.append(MessageCreated.model_validate_json(msg.data).message)

    await sender.subscribe(subjects.message_created(ROOM.room_id), cb=on_event)
    stream_seq: dict[str, int] = {}
    try:
        await consumer.loop.start()
        sender_js = sender.jetstream(timeout=10)
        for number in range(30):
            sent = command(number)
            ack = await sender_js.publish(
                subjects.create_message(ROOM.room_id), sent.model_dump_json().encode()
            )
            stream_seq[sent.messageId] = ack.seq

        async def all_acked() -> bool:
            info = await js.consumer_info(
                subjects.COMMANDS_STREAM, subjects.HISTORY_COMMANDS_CONSUMER
            )
            return len(events) == 30 and info.num_ack_pending == 0 and info.num_pending == 0

        await eventually(all_acked, within=20)
    finally:
        await consumer.loop.stop()
        await sender.close()

    assert [m.seq for m in events] == list(range(1, 31))
    assert publisher.flushes == 0
    ops = list(recorder.ops())
    assert not [op for op in ops if op[1] == "PING"]
    # event k is the k-th MessageCreated; its command's ack is the PUB to $JS.ACK... whose
    # stream sequence is the command's
    created = [(i, n) for i, (n, kind, s) in enumerate(ops) if s.startswith("chat.evt.")]
    assert len(created) == 30
    for message, (position, write) in zip(events, created, strict=True):
        acks = [
            (i, n)
            for i, (n, kind, s) in enumerate(ops)
            if s.startswith("$JS.ACK.") and s.split(".")[5] == str(stream_seq[message.messageId])
        ]
        assert len(acks) == 1, message.messageId
        ack_position, ack_write = acks[0]
        assert ack_write == write, message.messageId  # the same write...
        assert ack_position > position, message.messageId  # ...the event first


async def test_written_buffer_falls_back_to_a_flush(nc: NATS) -> None:
    """When the event's buffer was already written, settle waits for a PING/PONG first."""
    publisher = NatsPublisher(nc)
    recorder = WriteRecorder(nc)
    acked: list[str] = []

    async def ack() -> None:
        await nc.publish("test.ack", b"")
        acked.append("ack")

    message = command(1)
    event = MessageCreated(message=message_of(message, 1), origin=message.origin)
    await publisher.message_created(event, also_to_node=False)
    await publisher.settle(ack)  # still buffered: no flush
    assert publisher.flushes == 0
    assert acked == ["ack"]
    await publisher.message_created(event, also_to_node=False)
    await asyncio.sleep(0.05)  # the flusher writes the buffer
    await publisher.settle(ack)
    assert publisher.flushes == 1
    assert acked == ["ack", "ack"]
    await asyncio.sleep(0.05)  # (not nc.flush(): nats-py writes its PING ahead of the buffer)
    kinds = list(recorder.ops())
    first_event, first_ack = kinds[0], kinds[1]
    assert first_event[2].startswith("chat.evt.")
    assert first_ack[2] == "test.ack"
    assert first_event[0] == first_ack[0]  # one write
    second_event, ping, second_ack = kinds[2:5]
    assert second_event[2].startswith("chat.evt.")
    assert ping[1] == "PING"
    assert second_ack[2] == "test.ack"
    assert second_event[0] < ping[0] < second_ack[0]


async def test_event_written_by_a_full_buffer_is_flushed_before_the_ack(bus: Infra) -> None:
    """An event that itself overflowed nats-py's buffer is written before settle runs: settle
    sees that and waits for a PING/PONG before the ack."""
    small = await nats.connect(bus.nats_url, pending_size=64)  # any event overflows it
    try:
        publisher = NatsPublisher(small)
        acked: list[str] = []

        async def ack() -> None:
            acked.append("ack")

        message = command(2)
        event = MessageCreated(message=message_of(message, 2), origin=message.origin)
        await publisher.message_created(event, also_to_node=True)
        await publisher.settle(ack)
        assert publisher.flushes == 1
        assert acked == ["ack"]
    finally:
        await small.close()


async def test_queued_commands_of_a_room_claim_while_the_first_is_placed(
    nc: NATS, bus: Infra
) -> None:
    """A room's commands queued behind a slow put make their claims meanwhile (the consumer's
    look-ahead), and are still stored and announced in stream order, with no scan."""
    room = RoomMeta("room_lookahead", ("alice", "bob"), "2024-06-16T12:36:00.000Z")
    store = InMemoryMessageStore()
    store.rooms[room.room_id] = room
    claims_when_released: list[int] = []
    enough_claims = asyncio.Event()

    async def hold_the_first_put(op: str, args: tuple[object, ...]) -> None:
        if op == "put_claim" and store.calls["put_claim"] >= 6:
            enough_claims.set()
        first = args[0] if args else None
        if op == "put_message" and isinstance(first, Message) and first.seq == 1:
            with contextlib.suppress(TimeoutError):  # without the look-ahead: none come
                await asyncio.wait_for(enough_claims.wait(), 10)
            claims_when_released.append(store.calls["put_claim"])

    store.hook = hold_the_first_put
    consumer, _ = real_consumer(nc, store, batch=16)
    sender = await nats.connect(bus.nats_url)
    events = await announced(sender, room.room_id)
    sent = [command(n).model_copy(update={"roomId": room.room_id}) for n in range(12)]
    try:
        sender_js = sender.jetstream(timeout=10)
        for one in sent:  # all in the stream before the consumer starts: they queue up
            await sender_js.publish(
                subjects.create_message(room.room_id), one.model_dump_json().encode()
            )
        await consumer.loop.start()
        await eventually(lambda: len(events) == len(sent), within=20)
    finally:
        await consumer.loop.stop()
        await sender.close()

    assert len(claims_when_released) == 1
    assert claims_when_released[0] >= 6  # the first put was held until 5 more were claimed
    assert [m.seq for m in events] == list(range(1, 13))
    assert [m.messageId for m in events] == [c.messageId for c in sent]
    assert store.calls["messages_after"] == 0  # every claim made ahead was placed without a scan
    assert consumer.handler.writer.stats.lost_races == 0


async def test_a_command_held_past_ack_wait_is_not_delivered_twice(nc: NATS, bus: Infra) -> None:
    """A put held for three times ack_wait: the command and the one queued behind it are
    reported in progress, so JetStream delivers neither again (one event each, in order)."""
    room = RoomMeta("room_wip", ("alice", "bob"), "2024-06-16T12:36:00.000Z")
    store = InMemoryMessageStore()
    store.rooms[room.room_id] = room

    async def hold_the_first_put(op: str, args: tuple[object, ...]) -> None:
        first = args[0] if args else None
        if op == "put_message" and isinstance(first, Message) and first.seq == 1:
            await asyncio.sleep(6.0)

    store.hook = hold_the_first_put
    consumer, _ = real_consumer(nc, store, batch=16, ack_wait=2)
    sender = await nats.connect(bus.nats_url)
    events = await announced(sender, room.room_id)
    sent = [command(n).model_copy(update={"roomId": room.room_id}) for n in range(2)]
    try:
        await consumer.loop.start()
        sender_js = sender.jetstream(timeout=10)
        for one in sent:
            await sender_js.publish(
                subjects.create_message(room.room_id), one.model_dump_json().encode()
            )
        await eventually(lambda: len(events) == len(sent), within=20)
        await asyncio.sleep(4.0)  # two more ack_waits: a second delivery would show by now
    finally:
        await consumer.loop.stop()
        await consumer.drain()
        await sender.close()
    assert [m.messageId for m in events] == [c.messageId for c in sent]
    assert store.calls["put_claim"] == 2  # a redelivery would claim again


async def test_commands_handed_to_a_dead_replica_come_back_after_ack_wait(bus: Infra) -> None:
    """A replica that dies with a pull request open: a command JetStream hands to that request
    (the replica's process gone, before the server noticed) is delivered to the live replica
    after the default ack_wait, well before the edge lets the connection's next message go
    (10 s), so that connection's order holds."""
    room = RoomMeta("room_dead_replica", ("alice", "bob"), "2024-06-16T12:36:00.000Z")
    store = InMemoryMessageStore()
    store.rooms[room.room_id] = room
    dead = await nats.connect(bus.nats_url)
    live = await nats.connect(bus.nats_url)
    sender = await nats.connect(bus.nats_url)
    events = await announced(sender, room.room_id)
    try:
        # the consumer as a replica configures it, then only the dead replica's pull request
        # open: it takes the command and never answers
        consumer, _ = real_consumer(live, store, batch=16, ack_wait=PullOptions().ack_wait)
        await consumer.loop.start()
        await consumer.loop.stop()
        taken = await dead.jetstream(timeout=10).pull_subscribe_bind(
            subjects.HISTORY_COMMANDS_CONSUMER, stream=subjects.COMMANDS_STREAM
        )
        await sender.jetstream(timeout=10).publish(
            subjects.create_message(room.room_id),
            command(1).model_copy(update={"roomId": room.room_id}).model_dump_json().encode(),
        )
        held = await taken.fetch(1, timeout=5)
        assert len(held) == 1
        await dead.close()  # the replica is gone without an ack or a nak
        started = asyncio.get_running_loop().time()
        consumer, _ = real_consumer(live, store, batch=16, ack_wait=PullOptions().ack_wait)
        await consumer.loop.start()
        await eventually(lambda: len(events) == 1, within=15)
        waited = asyncio.get_running_loop().time() - started
    finally:
        await consumer.loop.stop()
        await consumer.drain()
        await live.close()
        await sender.close()
    assert events[0].messageId == "m001"
    assert waited < 9
