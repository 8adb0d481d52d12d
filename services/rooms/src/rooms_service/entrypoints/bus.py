"""NATS entrypoints of the rooms service.

- `chat.cmd.create_room` (request/reply, queue group `rooms`): CreateRoomCommand ->
  CreateRoomReply with the room or an error (an undecodable payload gets `validation_error`).
- `chat.q.rooms.get`: GetRoomQuery -> GetRoomReply (room or null).
- `chat.q.rooms.of_user`: UserRoomsQuery -> UserRoomsReply (every room id of the user).
  An undecodable query is answered with the empty reply plus an `error` member; when the store
  fails a query gets no answer at all, so the asker times out and treats rooms as unavailable
  (a null room would wrongly mean "no such room").
- JetStream durable consumer `rooms-user-created` on CHAT_EVENTS, filtered to
  `chat.evt.user_created`: feeds the users read model.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.client import JetStreamContext
from pydantic import ValidationError

from contracts import subjects
from contracts.bus import (
    CreateRoomCommand,
    CreateRoomReply,
    GetRoomQuery,
    GetRoomReply,
    UserCreated,
    UserRoomsQuery,
    UserRoomsReply,
)
from contracts.errors import ChatError, ErrorCode, ErrorDetail
from rooms_service import handlers

Handler = Callable[[Msg], Awaitable[None]]
log = logging.getLogger(__name__)

USER_FETCH_BATCH = 100
USER_FETCH_WAIT_SECONDS = 5.0


def _error_json(code: ErrorCode, message: str) -> dict[str, str]:
    return {"code": str(code), "message": message}


class BusEntrypoints:
    """Subscribes the handlers to NATS; `start()` in the lifespan, `stop()` on the way out."""

    def __init__(self, nc: NATS, deps: handlers.Deps, concurrency: int = 256) -> None:
        self._nc = nc
        self._deps = deps
        self._slots = asyncio.Semaphore(concurrency)
        self._subs: list[Subscription] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._consumer: asyncio.Task[None] | None = None

    async def start(self) -> None:
        routes: list[tuple[str, Handler]] = [
            (subjects.CREATE_ROOM, self._on_create_room),
            (subjects.GET_ROOM, self._on_get_room),
            (subjects.USER_ROOMS, self._on_user_rooms),
        ]
        for subject, handler in routes:
            self._subs.append(
                await self._nc.subscribe(subject, queue=subjects.Q_ROOMS, cb=self._spawner(handler))
            )
        self._consumer = asyncio.create_task(self._consume_user_created(), name="user-created")

    async def stop(self) -> None:
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self._subs.clear()
        if self._consumer is not None:
            self._consumer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._consumer
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)

    # --- request/reply ------------------------------------------------------------------------

    def _spawner(
        self, handler: Callable[[Msg], Awaitable[None]]
    ) -> Callable[[Msg], Awaitable[None]]:
        """Handle each message in its own task, at most `concurrency` at once (backpressure)."""

        async def spawn(msg: Msg) -> None:
            await self._slots.acquire()
            task = asyncio.create_task(self._guarded(handler, msg))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        return spawn

    async def _guarded(self, handler: Handler, msg: Msg) -> None:
        try:
            await handler(msg)
        except Exception:
            log.exception("bus handler failed on %s", msg.subject)
        finally:
            self._slots.release()

    @staticmethod
    async def _reply(msg: Msg, payload: str) -> None:
        if msg.reply:
            await msg.respond(payload.encode())

    async def _on_create_room(self, msg: Msg) -> None:
        try:
            command = CreateRoomCommand.model_validate_json(msg.data)
        except ValidationError as exc:
            detail = ErrorDetail(code=ErrorCode.VALIDATION_ERROR, message=_first_error(exc))
            await self._reply(msg, CreateRoomReply(error=detail).model_dump_json())
            return
        try:
            room = await handlers.create_room(self._deps, command)
            reply = CreateRoomReply(room=room, correlationId=command.correlationId)
        except ChatError as exc:
            detail = ErrorDetail(code=str(exc.code), message=exc.message)
            reply = CreateRoomReply(error=detail, correlationId=command.correlationId)
        except Exception:
            log.exception("create_room failed")
            detail = ErrorDetail(
                code=ErrorCode.UNAVAILABLE, message="temporarily unavailable, retry"
            )
            reply = CreateRoomReply(error=detail, correlationId=command.correlationId)
        await self._reply(msg, reply.model_dump_json(exclude_none=True))

    async def _on_get_room(self, msg: Msg) -> None:
        try:
            query = GetRoomQuery.model_validate_json(msg.data)
        except ValidationError as exc:
            body = GetRoomReply().model_dump(mode="json")
            body["error"] = _error_json(ErrorCode.VALIDATION_ERROR, _first_error(exc))
            await self._reply(msg, _dumps(body))
            return
        room = await handlers.get_room(self._deps, query.roomId)
        reply = GetRoomReply(room=room, correlationId=query.correlationId)
        await self._reply(msg, reply.model_dump_json())

    async def _on_user_rooms(self, msg: Msg) -> None:
        try:
            query = UserRoomsQuery.model_validate_json(msg.data)
        except ValidationError as exc:
            body = UserRoomsReply(roomIds=[]).model_dump(mode="json")
            body["error"] = _error_json(ErrorCode.VALIDATION_ERROR, _first_error(exc))
            await self._reply(msg, _dumps(body))
            return
        room_ids = await handlers.user_room_ids(self._deps, query.userId)
        reply = UserRoomsReply(roomIds=room_ids, correlationId=query.correlationId)
        await self._reply(msg, reply.model_dump_json())

    # --- UserCreated -> read model ------------------------------------------------------------

    async def _consume_user_created(self) -> None:
        """Durable pull consumer; retries forever (stream missing, NATS down, store down).

        A batch the store refuses is nak'd with the current backoff as its delay and fetched
        again on the same subscription (no waiting out the 30 s ack wait); only a failing
        subscription is made anew.
        """
        js = self._nc.jetstream()
        config = ConsumerConfig(
            durable_name=subjects.ROOMS_USERS_CONSUMER,
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=30.0,
            max_ack_pending=1000,
        )
        backoff = Backoff()
        while True:
            sub: JetStreamContext.PullSubscription | None = None
            try:
                sub = await js.pull_subscribe(
                    subjects.USER_CREATED,
                    durable=subjects.ROOMS_USERS_CONSUMER,
                    stream=subjects.EVENTS_STREAM,
                    config=config,
                )
                backoff.reset()
                while True:
                    try:
                        batch = await sub.fetch(USER_FETCH_BATCH, timeout=USER_FETCH_WAIT_SECONDS)
                    except TimeoutError:  # nats' own TimeoutError is one too
                        continue
                    if await self._apply_user_created(batch, backoff.delay):
                        backoff.reset()
                    else:
                        await backoff.wait()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self._nc.is_closed:
                    # nats-py turns a cancellation into ConnectionClosedError once the
                    # connection is closed: there is nothing to retry, and the cancel must win
                    return
                log.warning("user-created consumer: %s; retrying in %.1fs", exc, backoff.delay)
                await backoff.wait()
            finally:
                # the inbox goes with the loop: a retry would otherwise leave one behind, and on
                # stop the connection's drain waited out its bound on a cancelled fetch's leftovers
                if sub is not None:
                    with contextlib.suppress(Exception):
                        await sub.unsubscribe()

    async def _apply_user_created(self, batch: list[Msg], retry_delay: float) -> bool:
        """Store the batch's users and ack it; False (batch nak'd) when the store failed."""
        events: list[UserCreated] = []
        good: list[Msg] = []
        for msg in batch:
            try:
                events.append(UserCreated.model_validate_json(msg.data))
                good.append(msg)
            except ValidationError as exc:
                log.error("dropping undecodable UserCreated: %s", _first_error(exc))
                await msg.term()
        try:
            await handlers.user_created(self._deps, events)
        except Exception as exc:
            log.warning(
                "%d UserCreated not stored (%s); redelivered in %.1fs", len(good), exc, retry_delay
            )
            for msg in good:
                await msg.nak(delay=retry_delay)
            return False
        for msg in good:
            await msg.ack()
        return True


class Backoff:
    """Doubling waits from 0.5 s up to 10 s; back to 0.5 s after a success."""

    FIRST, LAST = 0.5, 10.0

    def __init__(self) -> None:
        self.delay = self.FIRST

    def reset(self) -> None:
        self.delay = self.FIRST

    async def wait(self) -> None:
        await asyncio.sleep(self.delay)
        self.delay = min(self.delay * 2, self.LAST)


def _first_error(exc: ValidationError) -> str:
    errors = exc.errors()
    if not errors:
        return "invalid payload"
    first = errors[0]
    field = ".".join(str(p) for p in first.get("loc", ()))
    text = str(first.get("msg", "invalid value"))
    return (f"{field}: {text}" if field else text)[:300]


def _dumps(body: dict[str, object]) -> str:
    return json.dumps(body, separators=(",", ":"))
