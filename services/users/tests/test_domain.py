"""Unit tests of the users service's pure rules (ids, cursors, pages)."""

from __future__ import annotations

import pytest

from contracts.common import _ID_RE
from contracts.errors import ChatError, ErrorCode
from contracts.rest import User
from users_service.domain import (
    UserIdGenerator,
    check_limit,
    decode_cursor,
    encode_cursor,
    id_floor_at,
    id_floor_of,
    is_lookup_id,
    is_user_id,
    page_without,
)


def test_ids_have_the_documented_shape() -> None:
    """Generated ids are `user_` + 26 base32 chars and valid contract identifiers."""
    new_id = UserIdGenerator()
    value = new_id()
    assert value.startswith("user_")
    assert len(value) == 5 + 26
    assert is_user_id(value)
    assert not is_user_id(value + "\n")
    assert _ID_RE.fullmatch(value)


def test_ids_sort_by_creation_time_across_milliseconds() -> None:
    """Ids made at later milliseconds sort after earlier ones, whatever the random part."""
    clock = iter([1, 2, 10, 1_000, 10**12, 10**13])
    randoms = iter([2**79 - 1, 0, 2**78, 5, 2**79 - 1, 0])
    new_id = UserIdGenerator(clock_ms=lambda: next(clock), random_bits=lambda _b: next(randoms))
    ids = [new_id() for _ in range(6)]
    assert ids == sorted(ids)
    assert len(set(ids)) == 6


def test_ids_increase_within_one_millisecond_and_when_the_clock_steps_back() -> None:
    """Within one millisecond (or a clock step back) ids still strictly increase."""
    clock = iter([5, 5, 5, 4, 6])
    new_id = UserIdGenerator(clock_ms=lambda: next(clock), random_bits=lambda _b: 2**79 - 1)
    ids = [new_id() for _ in range(5)]
    assert ids == sorted(ids)
    assert len(set(ids)) == 5


def test_many_real_ids_are_unique_and_ordered() -> None:
    """Ten thousand ids from the real clock are unique and already in sorted order."""
    new_id = UserIdGenerator()
    ids = [new_id() for _ in range(10_000)]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)


def test_cursor_round_trip() -> None:
    """A cursor decodes to the user id it was made from and is URL-safe."""
    user_id = UserIdGenerator()()
    cursor = encode_cursor(user_id)
    assert "=" not in cursor
    assert decode_cursor(cursor) == user_id


@pytest.mark.parametrize(
    "cursor",
    ["", "!!!", "a", encode_cursor("not-a-user"), encode_cursor("user_123"), "x" * 300, "é"],
)
def test_bad_cursors_are_invalid_cursor(cursor: str) -> None:
    """Anything but a cursor this service issued is refused with invalid_cursor."""
    with pytest.raises(ChatError) as info:
        decode_cursor(cursor)
    assert info.value.code == ErrorCode.INVALID_CURSOR
    assert info.value.status == 400


@pytest.mark.parametrize("limit", [0, -1, 201, 10_000])
def test_limit_out_of_range_is_invalid_limit(limit: int) -> None:
    """A page size outside 1..200 is refused with invalid_limit."""
    with pytest.raises(ChatError) as info:
        check_limit(limit)
    assert info.value.code == ErrorCode.INVALID_LIMIT


def test_lookup_ids() -> None:
    """Only bounded ids of safe characters are looked up in the store."""
    assert is_lookup_id("user_123")
    assert not is_lookup_id("")
    assert not is_lookup_id("x" * 129)
    assert not is_lookup_id("user 1")
    assert not is_lookup_id("user_123\n")


def _users(*ids: str) -> list[User]:
    return [User(id=i, name=i) for i in ids]


def test_page_without_caller_in_the_middle_keeps_full_pages() -> None:
    """Dropping the caller from the candidates still yields a full page and a next cursor."""
    page = page_without(_users("a", "me", "b", "c"), "me", 2)
    assert [u.id for u in page.users] == ["a", "b"]
    assert page.next_cursor == encode_cursor("b")


def test_page_without_caller_last_ends_paging() -> None:
    """When only the caller is left after the page, there is no next page."""
    page = page_without(_users("a", "b", "me"), "me", 2)
    assert [u.id for u in page.users] == ["a", "b"]
    assert page.next_cursor is None


def test_page_without_short_last_page() -> None:
    """Fewer users than the limit make the last page."""
    page = page_without(_users("a"), "me", 2)
    assert [u.id for u in page.users] == ["a"]
    assert page.next_cursor is None


def test_id_floors_sort_just_below_their_ids() -> None:
    """A floor sorts below ids of its millisecond and later, above ids of earlier ones."""
    clock = iter([1_000, 2_000, 3_000])
    new_id = UserIdGenerator(clock_ms=lambda: next(clock))
    early, middle, late = new_id(), new_id(), new_id()
    assert early < id_floor_at(2_000) < middle < late
    assert early < id_floor_of(middle) < middle
    assert id_floor_of(middle) == id_floor_at(2_000)
    assert id_floor_at(-5) < early
