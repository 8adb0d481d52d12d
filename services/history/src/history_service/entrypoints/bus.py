"""NATS entrypoints: the create_message JetStream consumer, the rooms read-model consumer and
the history range responder. Each decodes a contract model, calls a handler, and acks/answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.client import JetStreamContext
from nats.js.errors import BadRequestError
from pydantic import ValidationError

from contracts import subjects
from contracts.bus import (
    CreateMessageCommand,
    HistoryRangeQuery,
    HistoryRangeReply,
    RoomCreated,
)
from contracts.errors import ErrorCode, ErrorDetail
from history_service.adapters.publisher import EventPublisher
from history_service.adapters.store import MessageStore
from history_service.domain import Unavailable
from history_service.handlers import (
    Claimed,
    CreateMessageHandler,
    RoomAccess,
    apply_room_created,
    history_range,
)
from infra.bus import ContinuousPull, adopt
from infra.metrics import COMMAND_LATENCY, ConsumerLagPoller, labelled

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PullOptions:
    batch: int = 64
    ack_wait: float = 5.0
    nak_delay: float = 2.0


async def ensure_consumer(
    js: JetStreamContext, stream: str, durable: str, filter_subject: str, ack_wait: float
) -> None:
    """Create the durable pull consumer, or bring an existing one to this configuration
    (the server creates or updates; settings it cannot change, e.g. the filter, raise
    BadRequest and the consumer is kept as it is). Concurrent starts are fine."""
    config = ConsumerConfig(
        name=durable,
        durable_name=durable,
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=ack_wait,
        max_deliver=-1,
        filter_subject=filter_subject,
        max_ack_pending=10_000,
    )
    try:
        await js.add_consumer(stream, config=config)
    except BadRequestError as exc:  # a setting the server cannot change: keep it
        log.warning("consumer %s kept as is: %s", durable, exc)


class ConsumeLoop:
    """A durable pull consumer (created if missing) whose messages are handed over one by one
    as they arrive (no fetch barrier): `infra.bus.ContinuousPull` keeps pull requests open.
    Its lag (num_pending) and unacked count are exported as Prometheus gauges."""

    def __init__(
        self,
        nc: NATS,
        js: JetStreamContext,
        stream: str,
        durable: str,
        filter_subject: str,
        options: PullOptions,
        on_message: Callable[[Msg], Awaitable[None]],
    ) -> None:
        self._js = js
        self._stream = stream
        self._durable = durable
        self._filter = filter_subject
        self._options = options
        self._pull = ContinuousPull(nc, stream, durable, on_message, batch=options.batch * 4)
        self._lag = ConsumerLagPoller(js.consumer_info, [(stream, durable)])

    async def start(self) -> None:
        await ensure_consumer(
            self._js, self._stream, self._durable, self._filter, self._options.ack_wait
        )
        await self._pull.start()
        self._lag.start()

    async def stop(self) -> None:
        await self._lag.stop()
        await self._pull.stop()


LOOKAHEAD = 16  # a room's queued commands whose claims are made ahead of their turn


@dataclass
class _Queued:
    """A command waiting for its room's earlier ones, and its claim once started."""

    msg: Msg
    command: CreateMessageCommand
    prepared: asyncio.Task[Claimed] | None = None
    told: float = 0.0  # when JetStream last heard of it (delivery, or a progress signal)


def _retrieved(task: asyncio.Task[Claimed]) -> None:
    if not task.cancelled():
        task.exception()  # the command is redelivered: what its claim met is not news


async def _nak(msg: Msg, delay: float) -> None:
    with contextlib.suppress(Exception):
        await msg.nak(delay=delay)


class CreateMessageConsumer:
    """`chat.cmd.create_message.*` from CHAT_COMMANDS (durable `history-create-message`).

    Pipelined: fetched commands go to a per-room queue at once and the next fetch starts, so a
    command waits for nothing but its own room's earlier commands. Rooms run concurrently, each
    room's commands one after the other, in stream order (a connection's messages keep their
    order); the up to `LOOKAHEAD` commands queued behind a room's current one make their
    checks and claims meanwhile, so in turn each waits only for its put. At most
    `max_in_flight` commands are held (backpressure on fetching). A command is acked only
    after its store write, in the same write to NATS as its event and after it
    (`EventPublisher.settle`: the server cannot take the ack without the event); a store or
    rooms outage naks it with a delay (JetStream keeps it; it is applied once when they are
    back), and the room's queued commands with it, to keep their order.

    `ack_wait` is short (5 s by default) so that what a crashed replica had fetched comes back
    soon (before the edge lets a connection's next message go, twice its bus timeout: 10 s,
    which keeps the connection's order); a command held here (waiting for a slot, queued or
    being handled) is reported in progress (`+WPI`) every quarter of it, so a slow store or a
    long queue does not get it delivered twice. Beyond `max_in_flight`, up to 4 pull batches
    wait in the client unseen and may come again after `ack_wait` (duplicates, found as such);
    the edges' one command in flight per connection and room keeps that rare.
    """

    def __init__(
        self,
        nc: NATS,
        js: JetStreamContext,
        handler: CreateMessageHandler,
        publisher: EventPublisher,
        options: PullOptions,
        max_in_flight: int = 2048,
    ) -> None:
        self.handler = handler
        self.publisher = publisher
        self.options = options
        self._slots = asyncio.Semaphore(max_in_flight)
        self._queues: dict[str, deque[_Queued]] = {}
        self._heads: dict[str, str] = {}  # room -> messageId of the command being handled
        self._failing: set[str] = set()  # rooms whose queued commands are being sent back
        self._forgotten: set[asyncio.Task[Claimed]] = set()  # their claims, still out
        self._workers: set[asyncio.Task[None]] = set()
        self._held: dict[int, _Queued] = {}  # id(msg) -> every command not acked or naked yet
        self._keepalive: asyncio.Task[None] | None = None
        self.loop = ConsumeLoop(
            nc,
            js,
            subjects.COMMANDS_STREAM,
            subjects.HISTORY_COMMANDS_CONSUMER,
            subjects.CREATE_MESSAGE_ALL,
            options,
            self.accept,
        )

    async def accept(self, msg: Msg) -> None:
        """One command as it arrives from the bus."""
        await self.process([msg])

    async def process(self, msgs: list[Msg]) -> None:
        """Queue a fetched batch per room (returns as soon as there is room in flight)."""
        for msg in msgs:
            try:
                command = CreateMessageCommand.model_validate_json(msg.data)
            except ValidationError as exc:
                log.warning("undecodable create_message on %s dropped: %s", msg.subject, exc)
                with contextlib.suppress(Exception):
                    await msg.term()
                continue
            loop = asyncio.get_running_loop()
            item = _Queued(msg, command, told=loop.time())
            self._held[id(msg)] = item  # kept alive while it waits for a slot too
            if self._keepalive is None:
                self._keepalive = loop.create_task(self._keep_alive(), name="commands-wip")
            await self._slots.acquire()
            queue = self._queues.get(command.roomId)
            if queue is not None:  # behind the room's earlier commands: claim it meanwhile
                queue.append(item)
                if len(queue) <= LOOKAHEAD:
                    self._look_ahead(command.roomId, queue)
                continue
            self._queues[command.roomId] = deque([item])
            worker = loop.create_task(self._room(command.roomId))
            self._workers.add(worker)
            worker.add_done_callback(self._workers.discard)

    async def drain(self) -> None:
        """Wait until every queued command was handled (shutdown); the keep-alive stops
        however the wait ends (a bounded drain is cancelled)."""
        try:
            while self._workers or self._forgotten:
                await asyncio.wait(self._workers | self._forgotten)
        finally:
            keepalive, self._keepalive = self._keepalive, None
            if keepalive is not None:
                keepalive.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await keepalive

    def _release(self, item: _Queued) -> None:
        """The command was acked or naked: its slot is free and it is no longer kept alive."""
        self._held.pop(id(item.msg), None)
        self._slots.release()

    async def _keep_alive(self) -> None:
        """Every quarter of `ack_wait`, tell JetStream that each command held for a quarter of
        it or more is still being worked on (so it is not delivered again meanwhile): each is
        told within half of ack_wait, which leaves the other half for a busy loop's delays."""
        loop = asyncio.get_running_loop()
        period = self.options.ack_wait / 4
        while True:
            await asyncio.sleep(period)
            now = loop.time()
            for key, item in list(self._held.items()):
                if now - item.told >= period and key in self._held:  # (not acked meanwhile)
                    item.told = now
                    with contextlib.suppress(Exception):  # at worst it is delivered again
                        await item.msg.in_progress()

    def _forget(self, task: asyncio.Task[Claimed] | None) -> None:
        """Let a claim made ahead for a command that goes back to the stream finish on its
        own (its redelivery finds the claim, if it was made, and goes on from it)."""
        if task is None:
            return
        task.add_done_callback(_retrieved)
        if not task.done():
            self._forgotten.add(task)
            task.add_done_callback(self._forgotten.discard)

    async def _room(self, room_id: str) -> None:
        queue = self._queues[room_id]
        try:
            while queue:
                item = queue.popleft()
                self._heads[room_id] = item.command.messageId
                self._look_ahead(room_id, queue)
                try:
                    ok = await self._one(item)
                finally:
                    self._release(item)
                if not ok:  # (the room is in _failing: no more claims ahead, they all go back)
                    self._heads.pop(room_id, None)
                    while queue:  # keep the room's order: its later commands come back too
                        later = queue.popleft()
                        self._forget(later.prepared)
                        await _nak(later.msg, self.options.nak_delay)
                        self._release(later)
        finally:
            del self._queues[room_id]
            self._heads.pop(room_id, None)
            self._failing.discard(room_id)

    def _look_ahead(self, room_id: str, queue: deque[_Queued]) -> None:
        """Start the checks and claims of the room's next commands not started yet, so that
        they are made while the command before them is placed (a claim takes one store round
        trip and needs nothing from earlier commands; placing does, see `MessageWriter`).

        A command whose messageId an earlier one of the room still holds is claimed only at
        its turn: the first in the stream must be the one whose content a reused messageId
        keeps (the later one is the `conflict`, or the retry)."""
        if room_id in self._failing:
            return
        loop = asyncio.get_running_loop()
        earlier = {self._heads.get(room_id)}
        for item in itertools.islice(queue, LOOKAHEAD):
            message_id = item.command.messageId
            if item.prepared is None and message_id not in earlier:
                item.prepared = loop.create_task(self._prepare(item))
            earlier.add(message_id)

    async def _prepare(self, item: _Queued) -> Claimed:
        adopt(item.command, item.msg.headers)
        return await self.handler.prepare(item.command)

    async def _one(self, item: _Queued) -> bool:
        msg, command = item.msg, item.command
        adopt(command, msg.headers)
        started = time.perf_counter()
        try:
            await self.handler.handle(command, item.prepared)
        except Unavailable as exc:
            log.warning("create_message postponed: %s", exc, extra={"room_id": command.roomId})
            self._failing.add(command.roomId)  # before anything can arrive for the room
            await _nak(msg, self.options.nak_delay)
            return False
        except Exception:
            log.exception("create_message failed", extra={"room_id": command.roomId})
            self._failing.add(command.roomId)
            await _nak(msg, self.options.nak_delay)
            return False
        labelled(COMMAND_LATENCY, "create_message").observe(time.perf_counter() - started)
        log.debug("create_message stored", extra={"room_id": command.roomId})
        try:
            # at once, before anything else can run: the ack joins the event's write
            await self.publisher.settle(msg.ack)
        except Exception as exc:  # the event may not have left: redeliver (it is published again)
            log.warning("ack failed, command will be redelivered: %s", exc)
            await _nak(msg, self.options.nak_delay)
        return True  # stored: the room's later commands need not wait for the redelivery


class RoomCreatedConsumer:
    """`chat.evt.room_created` from CHAT_EVENTS (durable `history-room-created`) -> read model."""

    def __init__(
        self, nc: NATS, js: JetStreamContext, rooms: RoomAccess, options: PullOptions
    ) -> None:
        self.rooms = rooms
        self.options = options
        self.loop = ConsumeLoop(
            nc,
            js,
            subjects.EVENTS_STREAM,
            subjects.HISTORY_ROOMS_CONSUMER,
            subjects.ROOM_CREATED,
            options,
            self.accept,
        )

    async def accept(self, msg: Msg) -> None:
        """One RoomCreated as it arrives from the bus."""
        await self.process([msg])

    async def process(self, msgs: list[Msg]) -> None:
        for msg in msgs:
            try:
                event = RoomCreated.model_validate_json(msg.data)
            except ValidationError as exc:
                log.warning("undecodable RoomCreated dropped: %s", exc)
                with contextlib.suppress(Exception):
                    await msg.term()
                continue
            try:
                await apply_room_created(self.rooms, event)
            except Exception as exc:
                log.warning("RoomCreated postponed: %s", exc)
                await _nak(msg, self.options.nak_delay)
                continue
            with contextlib.suppress(Exception):
                await msg.ack()


def fit_reply(reply: HistoryRangeReply, max_bytes: int) -> bytes:
    """Encode a range reply within the bus's payload limit: the largest room lists are cut
    (oldest kept, marked truncated) until it fits; the client pages on over HTTP."""
    data = reply.model_dump_json(exclude_none=True).encode()
    while len(data) > max_bytes:
        biggest = max(reply.rooms.values(), key=lambda r: len(r.messages), default=None)
        if biggest is None or not biggest.messages:
            error = ErrorDetail(code=str(ErrorCode.VALIDATION_ERROR), message="too many rooms")
            return HistoryRangeReply(rooms={}, error=error).model_dump_json().encode()
        biggest.messages = biggest.messages[: len(biggest.messages) // 2]
        biggest.truncated = True
        data = reply.model_dump_json(exclude_none=True).encode()
    return data


class RangeResponder:
    """`chat.q.history.range` (queue group `history`): requests are answered concurrently."""

    def __init__(self, nc: NATS, store: MessageStore, max_in_flight: int = 64) -> None:
        self._nc = nc
        self._store = store
        self._gate = asyncio.Semaphore(max_in_flight)
        self._tasks: set[asyncio.Task[None]] = set()
        self._sub: object | None = None

    async def start(self) -> None:
        self._sub = await self._nc.subscribe(
            subjects.HISTORY_RANGE, queue=subjects.Q_HISTORY, cb=self._on_request
        )

    async def stop(self) -> None:
        sub = self._sub
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()  # type: ignore[attr-defined]
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)

    async def _on_request(self, msg: Msg) -> None:
        task = asyncio.create_task(self._answer(msg))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def answer(self, data: bytes) -> HistoryRangeReply:
        try:
            query = HistoryRangeQuery.model_validate_json(data)
        except ValidationError as exc:
            message = str(exc.errors()[0].get("msg", "invalid query")) if exc.errors() else ""
            error = ErrorDetail(code=str(ErrorCode.VALIDATION_ERROR), message=message[:300])
            return HistoryRangeReply(rooms={}, error=error)
        try:
            return await history_range(self._store, query)
        except Exception as exc:
            log.warning("history range failed: %s", exc)
            error = ErrorDetail(code=str(ErrorCode.UNAVAILABLE), message="store unavailable")
            return HistoryRangeReply(rooms={}, error=error, correlationId=query.correlationId)

    async def _answer(self, msg: Msg) -> None:
        async with self._gate:
            reply = await self.answer(msg.data)
            if not msg.reply:
                return
            try:
                await msg.respond(fit_reply(reply, max(1024, self._nc.max_payload - 4096)))
            except Exception as exc:
                log.warning("history range reply failed: %s", exc)
