"""NATS entrypoints: the GET_USERS request/reply query (queue group `users`)."""

from __future__ import annotations

import asyncio
import logging

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from pydantic import ValidationError

from contracts import subjects
from contracts.bus import GetUserQuery, GetUserReply
from users_service import handlers
from users_service.adapters.store import UserStore

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
