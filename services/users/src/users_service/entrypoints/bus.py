"""NATS entrypoints: the GET_USERS request/reply query (queue group `users`) and the
re-publishing of UserCreated from the store (on start and after a failed publish)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from pydantic import ValidationError

from contracts import subjects
from contracts.bus import GetUserQuery, GetUserReply
from users_service import handlers
from users_service.adapters.publisher import EventPublisher
from users_service.adapters.store import UserStore
from users_service.domain import id_floor_at, id_floor_of

log = logging.getLogger(__name__)


class UsersQueryResponder:
    """Answers GetUserQuery with GetUserReply; a bad payload gets an empty list.

    A store failure gets no answer at all (the asker times out and retries or refuses with
    `unavailable`): an empty list would wrongly say the users do not exist.
    """

    def __init__(self, nc: NATS, store: UserStore, max_concurrency: int = 64) -> None:
        self._nc = nc
        self._store = store
        self._slots = asyncio.Semaphore(max_concurrency)
        self._tasks: set[asyncio.Task[None]] = set()
        self._sub: Subscription | None = None

    async def start(self) -> None:
        self._sub = await self._nc.subscribe(
            subjects.GET_USERS, queue=subjects.Q_USERS, cb=self._on_message
        )

    async def stop(self) -> None:
        if self._sub is not None:
            try:
                await self._sub.unsubscribe()
            except Exception as exc:  # closed connection: nothing left to stop
                log.debug("unsubscribe: %s", exc)
            self._sub = None
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)

    async def _on_message(self, msg: Msg) -> None:
        # Answer concurrently (bounded): the subscription's callback runs one message at a time.
        await self._slots.acquire()
        task = asyncio.create_task(self._answer(msg))
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._slots.release()

    async def _answer(self, msg: Msg) -> None:
        if not msg.reply:
            return
        try:
            reply = await answer(self._store, msg.data)
        except Exception:
            log.exception("GET_USERS query failed")
            return
        try:
            await msg.respond(reply)
        except Exception:
            log.exception("GET_USERS reply not sent")


async def answer(store: UserStore, data: bytes) -> bytes:
    """The encoded reply to one encoded GetUserQuery (an empty list for a bad payload)."""
    try:
        query = GetUserQuery.model_validate_json(data)
    except ValidationError as exc:
        log.warning("bad GET_USERS payload: %s", str(exc)[:200])
        return GetUserReply(users=[]).model_dump_json(exclude_none=True).encode()
    reply = await handlers.get_users(store, query)
    return reply.model_dump_json(exclude_none=True).encode()


class EventRecovery:
    """Re-publishes UserCreated from the store when a publish failed, and once on start.

    The users table is the outbox: ids sort by creation time, so "every user created since X"
    is one range query. On start the users of the last `window_seconds` are re-announced (a
    crash between a write and its publish loses nothing); after a failed publish every user
    since the failed one is re-announced, retried with backoff until the bus acknowledges.
    Re-publishing is harmless: the same `Nats-Msg-Id` dedupes on the stream and consumers are
    idempotent.
    """

    def __init__(
        self,
        store: UserStore,
        publisher: EventPublisher,
        window_seconds: int,
        max_users: int,
        clock_ms: Callable[[], int] | None = None,
        retry_seconds: float = 1.0,
    ) -> None:
        self._store = store
        self._publisher = publisher
        self._window_ms = window_seconds * 1000
        self._max_users = max_users
        self._clock_ms = clock_ms or (lambda: time.time_ns() // 1_000_000)
        self._retry = retry_seconds
        self._floor: str | None = None
        self._startup_pending = window_seconds > 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def note_failure(self, user_id: str) -> None:
        """A user's UserCreated was not acknowledged: re-publish from it on."""
        floor = id_floor_of(user_id)
        self._floor = floor if self._floor is None else min(self._floor, floor)
        self._wake.set()

    @property
    def pending(self) -> bool:
        return self._startup_pending or self._floor is not None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="users-event-recovery")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task], timeout=5)
            self._task = None

    async def run_once(self) -> None:
        """One recovery pass (raises if the bus or the store failed; state kept for a retry)."""
        if self._startup_pending:
            floor = id_floor_at(self._clock_ms() - self._window_ms)
            count = await handlers.republish_since(
                self._store, self._publisher, floor, self._max_users
            )
            self._startup_pending = False
            log.info("re-published UserCreated of %d recent users", count)
        floor_now = self._floor
        if floor_now is not None:
            count = await handlers.republish_since(self._store, self._publisher, floor_now)
            if self._floor == floor_now:
                self._floor = None
            log.info("re-published UserCreated of %d users after a failed publish", count)

    async def _run(self) -> None:
        delay = self._retry
        while True:
            if not self.pending:
                await self._wake.wait()
            self._wake.clear()
            try:
                await self.run_once()
                delay = self._retry
            except Exception as exc:
                log.warning("UserCreated recovery failed, retrying in %.1fs: %s", delay, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
