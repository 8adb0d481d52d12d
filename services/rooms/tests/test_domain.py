"""Unit tests of the rooms service's pure rules."""

from __future__ import annotations

import pytest

from contracts.errors import ChatError, ErrorCode
from rooms_service import domain


def test_dedupe_keeps_first_occurrence_and_adds_caller_first() -> None:
    """Duplicates are dropped and a missing caller is put first."""
    assert domain.normalize_participants("u1", ["u2", "u3", "u2"], 100) == ["u1", "u2", "u3"]


def test_caller_already_listed_is_not_added_twice() -> None:
    """A caller in the list keeps its place and appears once."""
    assert domain.normalize_participants("u2", ["u1", "u2", "u2"], 100) == ["u1", "u2"]


def test_empty_list_is_a_room_of_the_caller() -> None:
    """No participants given: the caller alone."""
    assert domain.normalize_participants("u1", [], 100) == ["u1"]


def test_limit_applies_after_dedupe() -> None:
    """150 entries that dedupe to 100 (caller included) are accepted."""
    ids = [f"u{i}" for i in range(1, 100)] * 2
    assert len(domain.normalize_participants("u0", ids, 100)) == 100


def test_limit_counts_the_added_caller() -> None:
    """100 other users plus the caller make 101: refused with too_many_participants."""
    ids = [f"u{i}" for i in range(1, 101)]
    with pytest.raises(ChatError) as info:
        domain.normalize_participants("u0", ids, 100)
    assert info.value.code == ErrorCode.TOO_MANY_PARTICIPANTS
    assert info.value.status == 400


@pytest.mark.parametrize("bad", ["", "a b", "x" * 129, "a*b", "a>b", "u1\n"])
def test_malformed_ids_are_refused(bad: str) -> None:
    """Ids outside the identifier rules are invalid_participants."""
    with pytest.raises(ChatError) as info:
        domain.normalize_participants("u0", [bad], 100)
    assert info.value.code == ErrorCode.INVALID_PARTICIPANTS


def test_room_ids_are_unguessable_and_subject_safe() -> None:
    """Room ids carry 128 random bits and none of NATS's special characters."""
    ids = {domain.new_room_id() for _ in range(1000)}
    assert len(ids) == 1000
    for room_id in ids:
        assert room_id.startswith("room_")
        assert len(room_id) >= len("room_") + 22
        assert not any(ch in room_id for ch in ".*> #")
        assert domain.is_room_id(room_id)
        assert not domain.is_room_id(room_id + "\n")  # a line end would end a NATS command


def test_membership_sort_key_round_trips_the_room_id() -> None:
    """The membership sort key sorts by time and gives back the room id."""
    sk = domain.member_sk("2024-06-16T12:36:00.000Z", "room_abc-_1")
    assert domain.room_id_of_member_sk(sk) == "room_abc-_1"
    assert domain.member_sk("2024-06-16T12:36:00.000Z", "room_a") < domain.member_sk(
        "2024-06-16T12:36:00.001Z", "room_a"
    )


def test_unknown_users_error_names_the_ids() -> None:
    """unknown_user lists the missing ids."""
    err = domain.unknown_users_error(["ghost1", "ghost2"])
    assert err.code == ErrorCode.UNKNOWN_USER
    assert "ghost1" in err.message
    assert "ghost2" in err.message
