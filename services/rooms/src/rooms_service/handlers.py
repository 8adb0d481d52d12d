"""One handler per command, query and event of the rooms service; dependencies passed in.

Both entrypoints (NATS request/reply and HTTP) call the same `create_room`.

Idempotent creation: with a key (HTTP `Idempotency-Key`, WS `idempotencyKey`), the first
creation under (caller, key) records the room id and time it will use, conditionally; any later
one with the same participants answers that room (finishing its writes if they were cut short),
and one with other participants is a `conflict`.

Publish after write without loss (the outbox): `create_room` writes an outbox item holding the
RoomCreated JSON *before* the room and membership items, publishes once those are stored, then
deletes the outbox item. `relay_outbox` (on start and every few seconds) redoes the writes of
every outbox item left behind (idempotent puts) and publishes it again, so a crash between any
two steps still ends with the room stored and its event on the bus. JetStream deduplicates the
re-publish by `Nats-Msg-Id` = room id; consumers are idempotent beyond the dedupe window.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from contracts.bus import CreateRoomCommand, RoomCreated, UserCreated
from contracts.common import utc_now_iso
from contracts.errors import ChatError, ErrorCode
from contracts.rest import Room, User
from infra.limits import RecentBuckets
from rooms_service import domain
from rooms_service.adapters.publisher import EventPublisher, encode_event
from rooms_service.adapters.store import KeyClaim, OutboxEntry, RoomStore
from rooms_service.adapters.users import UserDirectory, UsersUnavailable

log = logging.getLogger(__name__)


@dataclass
class Deps:
    """What the handlers use; `app.py` wires real adapters, the unit tests fakes."""

    store: RoomStore
    publisher: EventPublisher
    users: UserDirectory
    max_participants: int = 100
    outbox_min_age_seconds: float = 2.0
    # rooms a user may create: a burst, then a rate (None: unlimited, the unit tests' default)
    creations: RecentBuckets | None = None
    # rooms a user may be in (None: unlimited, the unit tests' default)
    max_rooms_per_user: int | None = None
    clock: Callable[[], float] = field(default=time.time)
    new_room_id: Callable[[], str] = field(default=domain.new_room_id)
    now_iso: Callable[[], str] = field(default=utc_now_iso)


def unavailable(what: str) -> ChatError:
    return ChatError(ErrorCode.UNAVAILABLE, f"{what} temporarily unavailable, retry", 503)


# --- users --------------------------------------------------------------------------------------


async def resolve_users(deps: Deps, user_ids: Sequence[str]) -> dict[str, str]:
    """Names of `user_ids` from our read model; misses are asked of users and cached.

    Raises `unknown_user` naming the ids users does not know either, 503 when users is silent.
    """
    names = await deps.store.get_users(user_ids)
    missing = [u for u in user_ids if u not in names]
    if not missing:
        return names
    try:
        found = await deps.users.lookup(missing)
    except UsersUnavailable as exc:
        log.warning("users lookup failed for %d ids: %s", len(missing), exc)
        raise unavailable("the users service is") from exc
    wanted = set(missing)
    found = [u for u in found if u.id in wanted]
    if found:
        await deps.store.put_users(found)
        names.update({u.id: u.name for u in found})
    still_missing = [u for u in missing if u not in names]
    if still_missing:
        raise domain.unknown_users_error(still_missing)
    return names


async def user_created(deps: Deps, events: Sequence[UserCreated]) -> None:
    """Feed the read model from UserCreated events (idempotent put)."""
    users: list[User] = [e.user for e in events]
    if users:
        await deps.store.put_users(users)


# --- rooms --------------------------------------------------------------------------------------


async def create_room(deps: Deps, command: CreateRoomCommand) -> Room:
    """Create a room for `command.userId` (the token's subject) and announce it (RoomCreated).

    A creator past their rate is refused with `rate_limited` (429) before anything is read or
    written: creating rooms puts other users in them, and every room a user is in adds to their
    room list, their syncs and their event streams' resumes (a new user's audit made 3,000 rooms
    for 99 others in 29 s). Retries with an Idempotency-Key take from the same budget.
    """
    if deps.creations is not None and not deps.creations.take(command.userId, time.monotonic()):
        raise ChatError(ErrorCode.RATE_LIMITED, "too many rooms created; slow down", 429)
    ids = domain.normalize_participants(command.userId, command.participants, deps.max_participants)
    names = await resolve_users(deps, ids)
    await check_room_counts(deps, command, ids)
    room_id, created_at = deps.new_room_id(), deps.now_iso()
    if command.idempotencyKey:
        # 0. the caller's key decides the room before anything is written: a retry (the
        # answer was lost, the page timed out) gets the same room, and finishes it if the first
        # attempt stopped half way (every later write is an idempotent put of the same items).
        claim = KeyClaim(command.userId, command.idempotencyKey, room_id, created_at, tuple(ids))
        first = await deps.store.claim_key(claim)
        if first is not None:
            if not domain.same_participants(first.participants, ids):
                raise ChatError(
                    ErrorCode.CONFLICT,
                    "this idempotency key was used to create a room with other participants",
                    409,
                )
            existing = await deps.store.get_room(first.room_id)
            if existing is not None:
                return existing
            room_id, created_at, ids = first.room_id, first.created_at, list(first.participants)
    room = domain.build_room(room_id, created_at, ids, names)
    event = RoomCreated(
        room=room,
        creatorId=command.userId,
        origin=command.origin,
        correlationId=command.correlationId,
    )
    event_json = encode_event(event)
    # 1. outbox first: from here on the relay finishes the job whatever happens to us
    await deps.store.put_outbox(OutboxEntry(room.id, event_json, deps.clock()))
    # 2. room + memberships (batch writes)
    await deps.store.save_room(room, command.userId)
    # 3. publish after the write; a failure leaves the outbox item for the relay
    try:
        await deps.publisher.room_created(event_json, room.id)
    except Exception as exc:
        log.warning("RoomCreated publish failed for %s (outbox keeps it): %s", room.id, exc)
        raise unavailable("the message bus is") from exc
    # 4. done: drop the outbox item (if this fails, the relay re-publishes: deduplicated)
    try:
        await deps.store.delete_outbox(room.id)
    except Exception as exc:
        log.warning("outbox delete failed for %s (relay will retry): %s", room.id, exc)
    return room


async def check_room_counts(deps: Deps, command: CreateRoomCommand, user_ids: list[str]) -> None:
    """Refuse a new room when one of its participants is already in the most rooms a user may
    be in (`too_many_rooms`, 409, naming them), before its key is recorded (so a refusal does
    not use the key up). Others can put a user in rooms without asking, and every room of a
    user is loaded and followed by each of their connections, so the count is bounded.
    Creations racing each other can each pass the check: the bound is exceeded by at most the
    rooms being created with that user at the same moment. A retry under a key already
    recorded passed this check the first time (and may be what filled the count): it goes on
    to answer, or finish, that room."""
    cap = deps.max_rooms_per_user
    if cap is None:
        return
    counts = await asyncio.gather(*(deps.store.count_rooms(u, cap) for u in user_ids))
    full = [u for u, count in zip(user_ids, counts, strict=True) if count >= cap]
    if not full:
        return
    key = command.idempotencyKey
    if key and await deps.store.key_used(command.userId, key):
        return
    shown = ", ".join(full[:5]) + (f" and {len(full) - 5} more" if len(full) > 5 else "")
    raise ChatError(
        ErrorCode.TOO_MANY_ROOMS, f"already in {cap} rooms, the most a user can be in: {shown}", 409
    )


async def relay_outbox(deps: Deps, min_age_seconds: float | None = None) -> int:
    """Finish every outbox item older than the minimum age: write, publish, delete.

    Returns how many events were (re)published. Each item is independent: one failing does
    not stop the others, and it stays for the next run.
    """
    min_age = deps.outbox_min_age_seconds if min_age_seconds is None else min_age_seconds
    now = deps.clock()
    published = 0
    for entry in await deps.store.list_outbox():
        if now - entry.written_at < min_age:
            continue  # probably still in the hands of the request that wrote it
        try:
            event = RoomCreated.model_validate_json(entry.event)
        except ValueError:
            log.error("dropping undecodable outbox item %s", entry.room_id)
            await deps.store.delete_outbox(entry.room_id)
            continue
        try:
            await deps.store.save_room(event.room, event.creatorId)
            await deps.publisher.room_created(entry.event, entry.room_id)
            await deps.store.delete_outbox(entry.room_id)
        except Exception as exc:
            log.warning("outbox relay: %s not finished yet: %s", entry.room_id, exc)
            continue
        published += 1
        log.info("outbox relay published RoomCreated for %s", entry.room_id)
    return published


async def list_rooms(deps: Deps, user_id: str) -> list[Room]:
    """The caller's rooms, newest first (by creation time)."""
    room_ids = await deps.store.room_ids_of_user(user_id)
    if not room_ids:
        return []
    return await deps.store.get_rooms(room_ids)


async def get_room(deps: Deps, room_id: str) -> Room | None:
    """A room by id, or None (also for ids that cannot be room ids)."""
    if not domain.is_room_id(room_id):
        return None
    return await deps.store.get_room(room_id)


async def user_room_ids(deps: Deps, user_id: str) -> list[str]:
    """Every room id of a user, newest first."""
    return await deps.store.room_ids_of_user(user_id)
