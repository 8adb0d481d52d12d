"""Pure rules of the users service (no I/O): user ids, page cursors, page limits."""

from __future__ import annotations

import base64
import binascii
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from contracts.common import is_identifier
from contracts.errors import ChatError, ErrorCode
from contracts.rest import User

USER_ID_PREFIX = "user_"
# Crockford base32: its characters are in ascending ASCII order, so the encoded strings sort
# like the numbers they encode.
_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
TIME_CHARS = 10  # 50 bits of milliseconds: fixed width until the year 37,000
RANDOM_CHARS = 16  # 80 random bits
_RANDOM_BITS = RANDOM_CHARS * 5
USER_ID_RE = re.compile(rf"{USER_ID_PREFIX}[{_ALPHABET}]{{{TIME_CHARS + RANDOM_CHARS}}}")

DEFAULT_LIMIT = 50
MAX_LIMIT = 200
MAX_CURSOR_LENGTH = 256
BATCH_GET_MAX = 100  # DynamoDB BatchGetItem: at most 100 keys per call


def _encode(value: int, width: int) -> str:
    chars = []
    for _ in range(width):
        chars.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(chars))


class UserIdGenerator:
    """`user_` + 10 chars of millisecond time + 16 random chars (ULID-like).

    Sorting ids as strings sorts users by creation time. Within one process the ids are also
    strictly increasing inside one millisecond (the random part is incremented), so sorting by id
    is creation order for everything this process creates.
    """

    def __init__(
        self,
        clock_ms: Callable[[], int] | None = None,
        random_bits: Callable[[int], int] | None = None,
    ) -> None:
        self._clock_ms = clock_ms or (lambda: time.time_ns() // 1_000_000)
        self._random_bits = random_bits or secrets.randbits
        self._lock = threading.Lock()
        self._last_ms = -1
        self._last_random = 0

    def __call__(self) -> str:
        with self._lock:
            now = self._clock_ms()
            if now <= self._last_ms:
                # same millisecond (or the clock stepped back): keep increasing
                now = self._last_ms
                rand = self._last_random + 1
                if rand >= 1 << _RANDOM_BITS:
                    now, rand = now + 1, self._random_bits(_RANDOM_BITS - 1)
            else:
                # leave headroom so increments within the millisecond never overflow
                rand = self._random_bits(_RANDOM_BITS - 1)
            self._last_ms, self._last_random = now, rand
        return USER_ID_PREFIX + _encode(now, TIME_CHARS) + _encode(rand, RANDOM_CHARS)


def id_floor_at(ms: int) -> str:
    """A string sorting just below every id generated at or after millisecond `ms`."""
    return USER_ID_PREFIX + _encode(max(ms, 0), TIME_CHARS)


def id_floor_of(user_id: str) -> str:
    """A string sorting just below `user_id` and every id generated after it."""
    return user_id[: len(USER_ID_PREFIX) + TIME_CHARS]


def is_user_id(value: str) -> bool:
    """True for an id this service could have generated."""
    return USER_ID_RE.fullmatch(value) is not None


def is_lookup_id(value: str) -> bool:
    """True for an id worth looking up in the store (the contract's id rule: anything else
    cannot exist, so it is not looked up)."""
    return is_identifier(value)


def encode_cursor(last_user_id: str) -> str:
    """The opaque cursor of the page after `last_user_id` (base64url, no padding)."""
    return base64.urlsafe_b64encode(last_user_id.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    """The user id a cursor stands for, else ChatError(invalid_cursor)."""
    error = ChatError(ErrorCode.INVALID_CURSOR, "cursor is not one this service issued")
    if not cursor or len(cursor) > MAX_CURSOR_LENGTH:
        raise error
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        value = raw.decode("ascii")
    except (binascii.Error, ValueError) as exc:
        raise error from exc
    if not is_user_id(value):
        raise error
    return value


def check_limit(limit: int) -> int:
    if not 1 <= limit <= MAX_LIMIT:
        raise ChatError(ErrorCode.INVALID_LIMIT, f"limit must be 1-{MAX_LIMIT}")
    return limit


@dataclass(frozen=True)
class UsersPage:
    """One page of `GET /users`: the users and the cursor of the next page (None: last page)."""

    users: list[User]
    next_cursor: str | None


def page_without(candidates: list[User], exclude_id: str, limit: int) -> UsersPage:
    """Cut one page out of `candidates` (users in id order, at least `limit + 2` when more exist).

    The caller is dropped; there is a next page exactly when more than `limit` other users are
    left, so dropping the caller never ends paging early and never yields an empty last page.
    """
    others = [u for u in candidates if u.id != exclude_id]
    if len(others) > limit:
        page = others[:limit]
        return UsersPage(page, encode_cursor(page[-1].id))
    return UsersPage(others, None)
