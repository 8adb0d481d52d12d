"""Asking the users service for users missing from our read model (request/reply on NATS)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError
from pydantic import ValidationError

from contracts import subjects
from contracts.bus import GetUserQuery, GetUserReply
from contracts.rest import User

log = logging.getLogger(__name__)


class UsersUnavailable(Exception):
    """The users service did not answer (timeout, no responders, bad reply)."""


class UserDirectory(Protocol):
    """The owner of users, asked on a read-model miss."""

    async def lookup(self, user_ids: Sequence[str]) -> list[User]:
        """The existing users among `user_ids`; raises UsersUnavailable when users is silent."""
        ...


class NatsUserDirectory:
    """`UserDirectory` over NATS request/reply on `chat.q.users.get`."""

    def __init__(self, nc: NATS, timeout: float) -> None:
        self._nc = nc
        self._timeout = timeout

    async def lookup(self, user_ids: Sequence[str]) -> list[User]:
        query = GetUserQuery(userIds=list(user_ids))
        try:
            msg = await self._nc.request(
                subjects.GET_USERS, query.model_dump_json().encode(), timeout=self._timeout
            )
        except (TimeoutError, NatsError) as exc:
            raise UsersUnavailable(f"users did not answer: {type(exc).__name__}") from exc
        try:
            reply = GetUserReply.model_validate_json(msg.data)
        except ValidationError as exc:
            log.warning("undecodable GetUserReply: %s", str(exc)[:200])
            raise UsersUnavailable("users sent an undecodable reply") from exc
        return reply.users
