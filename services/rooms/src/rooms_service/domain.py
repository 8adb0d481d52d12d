"""Pure rules of the rooms service: participants, room ids, item keys. No I/O."""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable, Sequence

from contracts.common import is_identifier
from contracts.errors import ChatError, ErrorCode
from contracts.rest import Room, RoomParticipant

ROOM_ID_PREFIX = "room_"
# Room ids go into keys and NATS subjects: never '.', '*', '>', spaces or line ends.
_ROOM_ID_RE = re.compile(r"room_[A-Za-z0-9_\-]{1,64}")


def new_room_id() -> str:
    """An unguessable room id, safe as a NATS subject token (url-safe base64: [A-Za-z0-9_-])."""
    return ROOM_ID_PREFIX + secrets.token_urlsafe(16)


def is_room_id(value: str) -> bool:
    return _ROOM_ID_RE.fullmatch(value) is not None


def normalize_participants(caller: str, participants: Iterable[str], limit: int) -> list[str]:
    """Drop duplicates (first occurrence wins), add the caller first if missing, enforce the limit.

    The limit applies after dedupe and after the caller was added (CONTRACT.md section 3).
    """
    result: list[str] = []
    seen: set[str] = set()
    for user_id in participants:
        if not isinstance(user_id, str) or not is_identifier(user_id):
            raise ChatError(
                ErrorCode.INVALID_PARTICIPANTS,
                "participants must be user ids (1-128 characters from letters, digits and _-.:)",
            )
        if user_id not in seen:
            seen.add(user_id)
            result.append(user_id)
    if caller not in seen:
        result.insert(0, caller)
    if len(result) > limit:
        raise ChatError(
            ErrorCode.TOO_MANY_PARTICIPANTS,
            f"a room has at most {limit} participants (caller included, duplicates dropped); "
            f"got {len(result)}",
        )
    return result


def unknown_users_error(missing: list[str]) -> ChatError:
    shown = ", ".join(missing[:20]) + (", ..." if len(missing) > 20 else "")
    return ChatError(ErrorCode.UNKNOWN_USER, f"unknown user ids: {shown}")


def build_room(room_id: str, created_at: str, ids: list[str], names: dict[str, str]) -> Room:
    """The room as the contract shows it; participants in the normalized order."""
    return Room(
        id=room_id,
        participants=[RoomParticipant(id=uid, name=names[uid]) for uid in ids],
        createdAt=created_at,
    )


# --- item keys of the rooms table -----------------------------------------------------------------


def room_pk(room_id: str) -> str:
    return f"room#{room_id}"


ROOM_SK = "meta"


def member_pk(user_id: str) -> str:
    return f"member#{user_id}"


def member_sk(created_at: str, room_id: str) -> str:
    """Sorts a user's memberships by room creation time (ISO-8601 UTC sorts as text)."""
    return f"{created_at}#{room_id}"


def room_id_of_member_sk(sk: str) -> str:
    return sk.rsplit("#", 1)[1]


def user_pk(user_id: str) -> str:
    return f"user#{user_id}"


USER_SK = "profile"
OUTBOX_PK = "outbox"


def key_pk(user_id: str) -> str:
    """A caller's creation keys (`Idempotency-Key`): one partition per caller, so that two
    users' keys never meet."""
    return f"key#{user_id}"


def same_participants(first: Sequence[str], again: Sequence[str]) -> bool:
    """Two creations under one key are the same creation when they name the same people
    (normalized, caller included; in any order)."""
    return sorted(first) == sorted(again)
