"""Unit tests of the pure rules: command checks, claim hashes, paging math."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from contracts.bus import CreateMessageCommand
from contracts.errors import ChatError, ErrorCode
from contracts.rest import Message
from history_service.domain import (
    BoundedCache,
    Direction,
    PageRequest,
    check_command,
    claim_hash,
    legacy_claim_hash,
    make_page,
    parse_page,
    same_message,
)


def command(**changes: str) -> CreateMessageCommand:
    values = {
        "userId": "u1",
        "roomId": "r1",
        "messageId": "msg_001",
        "content": "Hello!",
        "createdAt": "2024-06-16T12:34:56.789Z",
    }
    values.update(changes)
    return CreateMessageCommand(**values)  # type: ignore[arg-type]


def messages(seqs: range) -> list[Message]:
    return [
        Message(roomId="r", messageId=f"m{s}", content="x", senderId="u", createdAt="t", seq=s)
        for s in seqs
    ]


def test_claim_hash_is_sender_and_content() -> None:
    """The claim hash changes with sender and content only (createdAt is not what makes a
    resend another message); claims made with the older hash, which had createdAt too, are
    still recognised when the resend keeps its createdAt."""
    base = claim_hash("u", "c")
    assert base == claim_hash("u", "c")
    assert base != claim_hash("v", "c")
    assert base != claim_hash("u", "d")
    assert claim_hash("a", "bc") != claim_hash("ab", "c")
    assert same_message(base, "u", "c", "t")
    assert same_message(base, "u", "c", "another time")
    assert not same_message(base, "u", "d", "t")
    assert not same_message(base, "v", "c", "t")
    legacy = legacy_claim_hash("u", "c", "t")
    assert legacy != base
    assert same_message(legacy, "u", "c", "t")
    assert not same_message(legacy, "u", "c", "s")
    assert not same_message(legacy, "u", "d", "t")


def test_valid_command_passes() -> None:
    """The seed's message passes the checks."""
    check_command(command())


@pytest.mark.parametrize(
    ("field", "value", "code"),
    [
        ("content", "   ", ErrorCode.INVALID_CONTENT),
        ("content", "x" * 4001, ErrorCode.INVALID_CONTENT),
        ("messageId", "bad id", ErrorCode.INVALID_MESSAGE_ID),
        ("roomId", "", ErrorCode.INVALID_ROOM_ID),
        ("createdAt", "yesterday", ErrorCode.INVALID_CREATED_AT),
        ("createdAt", "2024-06-16T12:34:56", ErrorCode.INVALID_CREATED_AT),
    ],
)
def test_bad_fields_are_refused(field: str, value: str, code: ErrorCode) -> None:
    """Each broken field rule is refused with its contract code."""
    with pytest.raises(ChatError) as info:
        check_command(command(**{field: value}))
    assert info.value.code == code


def test_created_at_more_than_five_minutes_ahead_is_refused() -> None:
    """createdAt beyond now + 5 minutes is invalid_created_at; just within is fine."""
    now = datetime.now(UTC)
    ahead = (now + timedelta(minutes=6)).isoformat()
    with pytest.raises(ChatError) as info:
        check_command(command(createdAt=ahead), now)
    assert info.value.code == ErrorCode.INVALID_CREATED_AT
    check_command(command(createdAt=(now + timedelta(minutes=4)).isoformat()), now)


def test_parse_page_defaults_and_cursors() -> None:
    """No parameters: the latest 50; before/after set the direction."""
    assert parse_page(None, None, None) == PageRequest(50, Direction.OLDER, None)
    assert parse_page("10", "71", None) == PageRequest(10, Direction.OLDER, 71)
    assert parse_page("200", None, "0") == PageRequest(200, Direction.NEWER, 0)


@pytest.mark.parametrize(
    ("limit", "before", "after", "code"),
    [
        ("0", None, None, ErrorCode.INVALID_LIMIT),
        ("201", None, None, ErrorCode.INVALID_LIMIT),
        ("abc", None, None, ErrorCode.INVALID_LIMIT),
        ("-1", None, None, ErrorCode.INVALID_LIMIT),
        (None, "1", "2", ErrorCode.INVALID_CURSOR),
        (None, "x", None, ErrorCode.INVALID_CURSOR),
        (None, None, "-5", ErrorCode.INVALID_CURSOR),
        (None, None, "1.5", ErrorCode.INVALID_CURSOR),
        (None, str(2**60), None, ErrorCode.INVALID_CURSOR),
    ],
)
def test_parse_page_refusals(
    limit: str | None, before: str | None, after: str | None, code: ErrorCode
) -> None:
    """Out-of-range limits and malformed or conflicting cursors are 400s with their codes."""
    with pytest.raises(ChatError) as info:
        parse_page(limit, before, after)
    assert info.value.code == code
    assert info.value.status == 400


def test_a_cursor_too_long_is_named_as_such() -> None:
    """A non-negative number of more than 20 digits is refused with a message saying why."""
    with pytest.raises(ChatError) as info:
        parse_page(None, "9" * 23, None)
    assert info.value.message == "before must be a non-negative integer of at most 20 digits"


def test_make_page_older_with_more() -> None:
    """A descending read of limit+1 rows gives the page oldest first and a before cursor."""
    rows = list(reversed(messages(range(70, 121))))  # 51 rows, newest first
    page = make_page(PageRequest(50, Direction.OLDER, None), rows)
    assert [m.seq for m in page.messages] == list(range(71, 121))
    assert page.next_cursor == ("before", 71)


def test_make_page_older_at_the_start() -> None:
    """The oldest page has no next cursor."""
    rows = list(reversed(messages(range(1, 21))))
    page = make_page(PageRequest(50, Direction.OLDER, 21), rows)
    assert [m.seq for m in page.messages] == list(range(1, 21))
    assert page.next_cursor is None


def test_make_page_newer() -> None:
    """An ascending read gives an after cursor only when more newer messages exist."""
    page = make_page(PageRequest(20, Direction.NEWER, 100), messages(range(101, 122)))
    assert [m.seq for m in page.messages] == list(range(101, 121))
    assert page.next_cursor == ("after", 120)
    last = make_page(PageRequest(20, Direction.NEWER, 100), messages(range(101, 121)))
    assert last.next_cursor is None


def test_make_page_empty() -> None:
    """An empty room gives an empty page without a cursor."""
    page = make_page(PageRequest(50, Direction.OLDER, None), [])
    assert page.messages == []
    assert page.next_cursor is None


def test_bounded_cache_evicts_least_recently_used() -> None:
    """The per-process caches stay within their size."""
    cache: BoundedCache[str, int] = BoundedCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1
    cache.put("c", 3)
    assert cache.get("b") is None
    assert cache.get("a") == 1
    assert len(cache) == 2


@pytest.mark.parametrize("limit", ["0", "201", "abc", "-1", "1.5", "", "٣"])
def test_every_bad_limit_gets_the_same_message(limit: str) -> None:
    """Whatever is wrong with `limit`, the message names the accepted range."""
    with pytest.raises(ChatError) as info:
        parse_page(limit, None, None)
    assert info.value.message == "limit must be an integer from 1 to 200"
